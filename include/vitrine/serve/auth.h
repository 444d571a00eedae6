// API keys: stored as SHA-256 digests in a text file (one key per line:
// `<sha256-hex> <name> <scope>[,<scope>...]`, # comments), never in the clear. A request
// presents its key as `Authorization: Bearer <key>`. Scopes: read (classify, embed, search,
// products listing), write (products), admin (reload). Keys are 32 random bytes (hex), so a
// plain digest is as strong as a salted one.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

namespace vitrine::serve {

struct ApiKey {
  std::string name;
  std::set<std::string> scopes;
};

class KeyStore {
 public:
  /// Reads the key file; malformed lines are an error naming the line.
  static KeyStore load(const std::string& path);
  /// The key's entry, or none when it is unknown.
  std::optional<ApiKey> find(const std::string& presented) const;
  size_t size() const { return keys_.size(); }
  bool has_name(const std::string& name) const;

 private:
  std::map<std::string, ApiKey> keys_;  ///< by digest
};

/// A new key ("vt_" + 64 hex digits) and the line to append to the key file.
struct NewKey {
  std::string key;
  std::string line;
};
NewKey generate_key(const std::string& name, const std::set<std::string>& scopes);

/// Per-key token buckets: `rate` requests a second on average, bursts of up to `burst`.
class RateLimiter {
 public:
  RateLimiter(double rate, double burst) : rate_(rate), burst_(burst) {}
  /// True when the request may go on; otherwise the seconds until one would be allowed.
  bool allow(const std::string& who, double* retry_after_s);

 private:
  struct Bucket {
    double tokens;
    std::chrono::steady_clock::time_point at;
  };
  double rate_, burst_;
  std::mutex mu_;
  std::map<std::string, Bucket> buckets_;
};

}  // namespace vitrine::serve
