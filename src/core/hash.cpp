#include "vitrine/core/hash.h"

#include "vitrine/core/error.h"

#include <openssl/evp.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

namespace vitrine {
namespace {

struct DigestDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    VT_CHECK(ctx_ && EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1,
             "OpenSSL could not start a SHA-256 digest");
  }
  void update(const void* data, size_t size) {
    VT_CHECK(EVP_DigestUpdate(ctx_.get(), data, size) == 1, "OpenSSL SHA-256 update failed");
  }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    VT_CHECK(EVP_DigestFinal_ex(ctx_.get(), digest, &length) == 1, "OpenSSL SHA-256 failed");
    static const char kHex[] = "0123456789abcdef";
    std::string out(2 * length, '0');
    for (unsigned int i = 0; i < length; ++i) {
      out[2 * i] = kHex[digest[i] >> 4];
      out[2 * i + 1] = kHex[digest[i] & 15];
    }
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, DigestDeleter> ctx_;
};

}  // namespace

std::string sha256_hex(const void* data, size_t size) {
  Sha256 digest;
  digest.update(data, size);
  return digest.hex();
}

std::string sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  VT_CHECK(in, "cannot read ", path, ": ", std::strerror(errno));
  Sha256 digest;
  std::vector<char> chunk(1 << 20);
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    if (in.gcount() > 0) digest.update(chunk.data(), static_cast<size_t>(in.gcount()));
  }
  VT_CHECK(in.eof(), "error while reading ", path);
  return digest.hex();
}

}  // namespace vitrine
