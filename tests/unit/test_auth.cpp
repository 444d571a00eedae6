// API keys (hashed key file, scopes) and the per-key rate limiter of `vitrine serve`.
#include "test_util.h"

#include "vitrine/core/error.h"
#include "vitrine/core/hash.h"
#include "vitrine/serve/auth.h"

#include <gtest/gtest.h>

#include <fstream>

using namespace vitrine;
using namespace vitrine::serve;

namespace {

std::string write(const std::string& name, const std::string& text) {
  const std::string path = test::temp_dir("auth") + "/" + name;
  std::ofstream(path) << text;
  return path;
}

std::string error_of(const std::string& path) {
  return test::error_of([&] { KeyStore::load(path); });
}

}  // namespace

TEST(Auth, GeneratedKeysAreFoundByTheirDigestOnly) {
  const auto reader = generate_key("reader", {"read"});
  const auto admin = generate_key("ops", {"admin", "read"});
  EXPECT_EQ(reader.key.rfind("vt_", 0), 0u);
  EXPECT_EQ(reader.key.size(), 3u + 64u);
  EXPECT_NE(reader.key, admin.key);
  // The file holds the digest, never the key.
  EXPECT_EQ(reader.line.find(reader.key), std::string::npos);
  EXPECT_EQ(reader.line, sha256_hex(reader.key) + " reader read");
  EXPECT_EQ(admin.line, sha256_hex(admin.key) + " ops admin,read");

  const auto path = write("keys.txt", "# keys of the shop\n\n" + reader.line + "\r\n  " +
                                          admin.line + "\n");
  const auto store = KeyStore::load(path);
  EXPECT_EQ(store.size(), 2u);
  const auto r = store.find(reader.key);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->name, "reader");
  EXPECT_EQ(r->scopes, (std::set<std::string>{"read"}));
  const auto a = store.find(admin.key);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->scopes, (std::set<std::string>{"admin", "read"}));
  EXPECT_FALSE(store.find(sha256_hex(reader.key)));  // the digest itself is no key
  EXPECT_FALSE(store.find(""));
  EXPECT_FALSE(store.find(reader.key + "x"));
}

TEST(Auth, MalformedKeyFilesNameTheLine) {
  const auto good = generate_key("a", {"read"}).line;
  const std::string digest = good.substr(0, 64);
  EXPECT_NE(error_of(write("short.txt", good + "\nabc123 b read\n")).find("short.txt:2"),
            std::string::npos);
  EXPECT_NE(error_of(write("noscope.txt", digest + " b\n")).find("noscope.txt:1"),
            std::string::npos);
  EXPECT_NE(error_of(write("extra.txt", good + " more\n")).find("extra.txt:1"),
            std::string::npos);
  const auto upper = error_of(write("upper.txt", "ABCDEF" + digest.substr(6) + " b read\n"));
  EXPECT_NE(upper.find("upper.txt:1"), std::string::npos);
  const auto scope = error_of(write("scope.txt", "# c\n" + digest + " b read,delete\n"));
  EXPECT_NE(scope.find("scope.txt:2"), std::string::npos) << scope;
  EXPECT_NE(scope.find("unknown scope 'delete'"), std::string::npos) << scope;
  const auto missing = error_of(test::temp_dir("auth") + "/none.txt");
  EXPECT_NE(missing.find("none.txt"), std::string::npos) << missing;
  // Two keys of one name would share a rate limit and read as one in the log.
  const auto twice = error_of(write("twice.txt", good + "\n" + generate_key("a", {"write"}).line + "\n"));
  EXPECT_NE(twice.find("twice.txt:2: the name 'a' is already used on line 1"), std::string::npos)
      << twice;
  // A clear message also says how to make keys.
  EXPECT_NE(error_of(write("bad.txt", "key\n")).find("vitrine keys add"), std::string::npos);
}

TEST(Auth, BadKeyRequestsAreRefused) {
  EXPECT_THROW(generate_key("two words", {"read"}), Error);
  EXPECT_THROW(generate_key("", {"read"}), Error);
  EXPECT_THROW(generate_key("x", {}), Error);
  EXPECT_THROW(generate_key("x", {"root"}), Error);
}

TEST(Auth, RateLimiterAllowsTheBurstThenRefusesWithAWait) {
  RateLimiter limiter(0.5, 3);  // one request every 2 s, bursts of 3
  double wait = 0;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(limiter.allow("a", &wait)) << i;
  EXPECT_FALSE(limiter.allow("a", &wait));
  EXPECT_GT(wait, 0.0);
  EXPECT_LE(wait, 2.0 + 1e-9);
  // Buckets are per key.
  EXPECT_TRUE(limiter.allow("b", &wait));
  RateLimiter unlimited(0, 0);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(unlimited.allow("a", nullptr));
}
