// Classification losses.
#pragma once

#include <ATen/core/Tensor.h>

namespace vitrine::train {

/// Soft targets from class indices: (1 - smoothing) one-hot + smoothing / K, as
/// PyTorch's cross_entropy(label_smoothing=...) defines them.
at::Tensor smoothed_targets(const at::Tensor& targets, int64_t num_classes, double smoothing);

/// Mean cross-entropy of logits (N, K) against soft targets (N, K), optionally weighting
/// each class's term (class weights of shape K). With `classes`, the class index of each
/// row (soft targets that are smoothed one-hots, not mixed), the weighted mean divides by the
/// rows' class weights, as PyTorch's cross_entropy(weight=..., label_smoothing=...) does;
/// without, by N, as it does for probability targets.
at::Tensor soft_cross_entropy(const at::Tensor& logits, const at::Tensor& soft_targets,
                              const at::Tensor& class_weights = {},
                              const at::Tensor& classes = {});

}  // namespace vitrine::train
