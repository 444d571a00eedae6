// Photos repeated across splits: the same file's bytes in training and in test (a copy under
// another name, a shop's photo reused for two products) is scored as a new photo but was
// learned, and makes the score optimistic.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace vitrine::data {

class Dataset;

/// Items of `other` whose file holds the same bytes as an item of `reference`, as pairs
/// (index in `other`, index in `reference`), in `other`'s order. Files are compared by size,
/// then by SHA-256 among those of equal size, so most are never read; items that are not
/// readable files (Fashion-MNIST's, a file gone) are passed over.
std::vector<std::pair<int64_t, int64_t>> repeated_files(const Dataset& reference,
                                                        const Dataset& other);

}  // namespace vitrine::data
