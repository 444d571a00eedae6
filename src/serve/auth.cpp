#include "vitrine/serve/auth.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/hash.h"

#include <openssl/rand.h>

#include <algorithm>
#include <map>
#include <sstream>

namespace vitrine::serve {
namespace {

const std::set<std::string> kScopes = {"read", "write", "admin"};

}  // namespace

KeyStore KeyStore::load(const std::string& path) {
  KeyStore store;
  std::istringstream in(read_text_file(path));
  int line_no = 0;
  std::map<std::string, int> line_of_name;  // names key the rate limits and the logs
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    std::istringstream fields(line);
    std::string digest, name, scopes, extra;
    fields >> digest >> name >> scopes >> extra;
    VT_CHECK(digest.size() == 64 && std::all_of(digest.begin(), digest.end(), [](char c) {
               return std::isxdigit(static_cast<unsigned char>(c)) && !std::isupper(c);
             }) && !name.empty() && !scopes.empty() && extra.empty(),
             path, ":", line_no, ": expected `<sha256-hex> <name> <scopes>`; create keys with "
             "`vitrine keys add --file ", path, " --name NAME --scopes read,write`");
    const auto [named, fresh] = line_of_name.emplace(name, line_no);
    VT_CHECK(fresh, path, ":", line_no, ": the name '", name, "' is already used on line ",
             named->second, "; each key needs its own name (it keys the rate limit and the "
             "access log)");
    ApiKey key{name, {}};
    std::istringstream list(scopes);
    for (std::string s; std::getline(list, s, ',');) {
      VT_CHECK(kScopes.count(s), path, ":", line_no, ": unknown scope '", s,
               "' (read, write, admin)");
      key.scopes.insert(s);
    }
    store.keys_[digest] = key;
  }
  return store;
}

bool KeyStore::has_name(const std::string& name) const {
  return std::any_of(keys_.begin(), keys_.end(), [&](const auto& k) { return k.second.name == name; });
}

std::optional<ApiKey> KeyStore::find(const std::string& presented) const {
  const auto it = keys_.find(sha256_hex(presented));
  if (it == keys_.end()) return std::nullopt;
  return it->second;
}

NewKey generate_key(const std::string& name, const std::set<std::string>& scopes) {
  VT_CHECK(!name.empty() && name.find_first_of(" \t\n") == std::string::npos,
           "a key name is one word (no spaces), got '", name, "'");
  VT_CHECK(!scopes.empty(), "give at least one scope: read, write, admin");
  std::string list;
  for (const auto& s : scopes) {
    VT_CHECK(kScopes.count(s), "unknown scope '", s, "' (read, write, admin)");
    list += (list.empty() ? "" : ",") + s;
  }
  unsigned char bytes[32];
  VT_CHECK(RAND_bytes(bytes, sizeof bytes) == 1, "OpenSSL could not draw random bytes");
  static const char kHex[] = "0123456789abcdef";
  std::string key = "vt_";
  for (const unsigned char b : bytes) {
    key += kHex[b >> 4];
    key += kHex[b & 15];
  }
  return {key, sha256_hex(key) + " " + name + " " + list};
}

bool RateLimiter::allow(const std::string& who, double* retry_after_s) {
  if (rate_ <= 0) return true;
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = buckets_.try_emplace(who, Bucket{burst_, now});
  Bucket& b = it->second;
  if (!fresh) {
    b.tokens = std::min(burst_, b.tokens + rate_ * std::chrono::duration<double>(now - b.at).count());
    b.at = now;
  }
  if (b.tokens >= 1) {
    b.tokens -= 1;
    return true;
  }
  if (retry_after_s) *retry_after_s = (1 - b.tokens) / rate_;
  return false;
}

}  // namespace vitrine::serve
