// Content hashes (SHA-256, OpenSSL): model versions and image identities in the
// catalogue, so a changed file is noticed and an unchanged one is not re-embedded.
#pragma once

#include <cstddef>
#include <string>

namespace vitrine {

/// Lower-case hex SHA-256 of `size` bytes.
std::string sha256_hex(const void* data, size_t size);
inline std::string sha256_hex(const std::string& data) {
  return sha256_hex(data.data(), data.size());
}
/// SHA-256 of a file's content, read in chunks; a clear error when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace vitrine
