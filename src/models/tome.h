// Token Merging (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023), as the
// authors' reference (facebookresearch/ToMe, tome/merge.py) does it: after a block's
// attention, tokens alternate into two sets; each token of the first set is paired with
// its most similar token of the second (cosine similarity of the attention keys averaged
// over heads); the r most similar pairs are merged by a size-weighted average. The class
// token is never merged and stays first. Attention in the following blocks adds log(size)
// to the scores ("proportional attention"), so a merged token weighs as the tokens it
// stands for: merging exact duplicates changes nothing.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

namespace vitrine::models::tome {

/// Merges `r` pairs (at most models::tome_merges(T, r)) of the token stream `x` (N, T, D). `size`
/// (N, T, 1, fp32) counts the original tokens each token stands for (undefined: ones); `keys` (N,
/// T, d) is the similarity metric. Returns the merged stream (N, T - r, D; x's dtype) and its
/// sizes.
std::pair<at::Tensor, at::Tensor> merge(const at::Tensor& x, const at::Tensor& size,
                                        const at::Tensor& keys, int64_t r);

/// Proportional attention: adds log(size) of each key to the scores (N, heads, T, T), in
/// place. No-op for undefined `size` (no merge has happened yet).
void add_log_size(const at::Tensor& scores, const at::Tensor& size);

}  // namespace vitrine::models::tome
