#include "vitrine/core/text.h"

namespace vitrine {

std::string quoted_list(const std::vector<std::string>& names, const std::string& quote,
                        size_t max_chars) {
  std::string out;
  for (const auto& n : names) {
    if (out.size() > max_chars) return out + ", ...";
    out += (out.empty() ? "" : ", ") + quote + n + quote;
  }
  return out;
}

}  // namespace vitrine
