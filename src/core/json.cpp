#include "vitrine/core/json.h"

#include "vitrine/core/error.h"

namespace vitrine {

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    }
    i += n;
  }
  return true;
}

namespace {
struct TooDeep {};
}  // namespace

nlohmann::json parse_json(const std::string& text, const std::string& what) {
  // The callback sees each value's depth as the parser reaches it, before anything deeper
  // is built; stopping there keeps the half-built document shallow.
  const auto limit = [](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    if (depth > kMaxJsonDepth) throw TooDeep{};
    return true;
  };
  try {
    return nlohmann::json::parse(text, limit);
  } catch (const TooDeep&) {
    VT_FAIL(what, ": JSON nested deeper than ", kMaxJsonDepth, " levels; nothing Vitrine reads "
            "nests that deep");
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
