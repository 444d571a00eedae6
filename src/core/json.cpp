#include "vitrine/core/json.h"

#include "vitrine/core/error.h"

#include <algorithm>
#include <cstdint>
#include <utility>

namespace vitrine {

bool valid_utf8(const std::string& s) {
  // RFC 3629: no overlong forms, no UTF-16 surrogates, nothing above U+10FFFF; such bytes
  // would come back from a JSON answer as U+FFFD, not as the text that was stored.
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t code = n == 1 ? c : n == 2 ? c & 0x1Fu : n == 3 ? c & 0x0Fu : c & 0x07u;
    for (size_t k = 1; k < n; ++k) {
      const auto t = static_cast<unsigned char>(s[i + k]);
      if ((t >> 6) != 0x2) return false;
      code = (code << 6) | (t & 0x3Fu);
    }
    static constexpr uint32_t kSmallest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < kSmallest[n] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      return false;
    }
    i += n;
  }
  return true;
}

namespace {

/// The deepest nesting of arrays and objects in `text`, outside strings, and how many there
/// are: one pass, so a body of millions of values costs no more than reading it.
std::pair<int, int64_t> nesting_of(const std::string& text) {
  int depth = 0, deepest = 0;
  int64_t containers = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character, a quote perhaps
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      ++containers;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return {deepest, containers};
}

}  // namespace

nlohmann::json parse_json(const std::string& text, const std::string& what,
                          int64_t max_containers) {
  // Checked before parsing: the parser's own per-value callback would do it too, but it
  // makes parsing an array of objects quadratic (a 240 KB body took seconds).
  const auto [depth, containers] = nesting_of(text);
  VT_CHECK(depth <= kMaxJsonDepth, what, ": JSON nested deeper than ", kMaxJsonDepth,
           " levels; nothing Vitrine reads nests that deep");
  VT_CHECK(containers <= max_containers, what, ": JSON of ", containers, " arrays and objects, "
           "more than the ", max_containers, " accepted; send less at once");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 15: ..." without the
    // library's tag: the position and the reason are what a reader needs.
    std::string reason = e.what();
    if (reason.rfind("[json.exception.", 0) == 0 && reason.find("] ") != std::string::npos) {
      reason.erase(0, reason.find("] ") + 2);
    }
    VT_FAIL(what, ": not valid JSON (", reason, ")");
  }
}

}  // namespace vitrine
