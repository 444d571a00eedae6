#include "vitrine/data/duplicates.h"

#include "vitrine/core/hash.h"
#include "vitrine/data/dataset.h"

#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <unordered_map>

namespace vitrine::data {
namespace {

/// The size of a non-empty file (an empty one is no photo, and all are alike).
std::optional<uintmax_t> file_size(const std::string& name) {
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(name, ec);
  if (ec || size == 0) return std::nullopt;
  return size;
}

std::string digest_or_empty(const std::string& name) {
  try {
    return sha256_file(name);
  } catch (const std::exception&) {  // gone or unreadable since: not compared
    return {};
  }
}

/// Reference files of one size: their digests are taken when a file of that size is asked
/// about, once.
struct SameSize {
  std::vector<int64_t> items;
  bool hashed = false;
  std::unordered_map<std::string, int64_t> by_digest;  ///< the first item of each content
};

}  // namespace

std::vector<std::pair<int64_t, int64_t>> repeated_files(const Dataset& reference,
                                                        const Dataset& other) {
  std::unordered_map<uintmax_t, SameSize> by_size;
  for (int64_t i = 0; i < reference.size(); ++i) {
    if (const auto size = file_size(reference.name(i))) by_size[*size].items.push_back(i);
  }
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t j = 0; j < other.size(); ++j) {
    const std::string name = other.name(j);
    const auto size = file_size(name);
    if (!size) continue;
    const auto group = by_size.find(*size);
    if (group == by_size.end()) continue;
    SameSize& same = group->second;
    if (!same.hashed) {
      for (const int64_t i : same.items) {
        std::string hex = digest_or_empty(reference.name(i));
        if (!hex.empty()) same.by_digest.emplace(std::move(hex), i);
      }
      same.hashed = true;
    }
    const std::string mine = digest_or_empty(name);
    const auto hit = mine.empty() ? same.by_digest.end() : same.by_digest.find(mine);
    if (hit != same.by_digest.end()) out.emplace_back(j, hit->second);
  }
  return out;
}

}  // namespace vitrine::data
