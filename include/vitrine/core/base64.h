// Base64 (RFC 4648, standard alphabet, padded), for images inside HTML and JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vitrine {

std::string base64_encode(const uint8_t* data, size_t size);
inline std::string base64_encode(const std::vector<uint8_t>& bytes) {
  return base64_encode(bytes.data(), bytes.size());
}
inline std::string base64_encode(const std::string& bytes) {
  return base64_encode(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

/// Decodes base64 as clients send it: the standard or URL-safe alphabet, padding optional,
/// whitespace ignored, a `data:<type>;base64,` prefix allowed. Anything else throws
/// vitrine::Error naming the offending character's position.
std::vector<uint8_t> base64_decode(const std::string& text);

}  // namespace vitrine
