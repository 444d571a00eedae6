#include "vitrine/core/text.h"

namespace vitrine {

std::string utf8_prefix(const std::string& s, size_t max_bytes) {
  if (s.size() <= max_bytes) return s;
  size_t end = max_bytes;
  // Step back over continuation bytes (10xxxxxx) to the start of the character cut.
  while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
  return s.substr(0, end);
}

std::string quoted_list(const std::vector<std::string>& names, const std::string& quote,
                        size_t max_chars) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (out.size() > max_chars) {
      return out + ", ... (" + std::to_string(names.size() - i) + " more)";
    }
    const std::string& n = names[i];
    const std::string name = n.size() > max_chars ? utf8_prefix(n, max_chars) + "..." : n;
    out += (out.empty() ? "" : ", ") + quote + name + quote;
  }
  return out;
}

}  // namespace vitrine
