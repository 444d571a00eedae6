// JSON at the edges: text that never throws on user-supplied strings, and a parser for
// untrusted documents (request bodies, checkpoint headers, users' files).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace vitrine {

/// JSON text of `j`: file names and labels need not be valid UTF-8, and a bad byte becomes
/// U+FFFD instead of an exception.
inline std::string json_text(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

/// Whether `s` is well-formed UTF-8 (lead and continuation bytes), enough to tell Latin-1
/// or Windows-1252 text from UTF-8.
bool valid_utf8(const std::string& s);

/// How deep an untrusted document may nest. Writing JSON out again recurses once per level,
/// so a document of a million nested brackets (a few MB) would overflow the stack later;
/// no file or request of Vitrine's nests deeper than a handful of levels.
constexpr int kMaxJsonDepth = 64;

/// How many arrays and objects an untrusted document may hold, unless told otherwise: each
/// costs some 100 bytes parsed, so 20 MB of "[{},{},...]" became half a gigabyte.
constexpr int64_t kMaxJsonContainers = 1'000'000;

/// Parses untrusted JSON text. Throws vitrine::Error naming `what` (a file, "the request
/// body") when the text is not JSON, nests deeper than kMaxJsonDepth or holds more than
/// `max_containers` arrays and objects.
nlohmann::json parse_json(const std::string& text, const std::string& what,
                          int64_t max_containers = kMaxJsonContainers);

}  // namespace vitrine
