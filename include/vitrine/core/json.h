// JSON text that never throws on user-supplied strings: file names and labels
// need not be valid UTF-8, and a bad byte becomes U+FFFD instead of ending a run.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace vitrine {

inline std::string json_text(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

}  // namespace vitrine
