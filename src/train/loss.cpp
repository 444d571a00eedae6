#include "vitrine/train/loss.h"

#include "vitrine/core/error.h"

#include <ATen/ATen.h>

namespace vitrine::train {

at::Tensor smoothed_targets(const at::Tensor& targets, int64_t num_classes, double smoothing) {
  VT_CHECK(smoothing >= 0 && smoothing < 1, "label smoothing must be in [0, 1), got ", smoothing);
  return at::one_hot(targets, num_classes).to(at::kFloat) * (1.0 - smoothing) +
         smoothing / num_classes;
}

at::Tensor soft_cross_entropy(const at::Tensor& logits, const at::Tensor& soft_targets,
                              const at::Tensor& class_weights, const at::Tensor& classes) {
  VT_DCHECK(logits.sizes() == soft_targets.sizes());
  at::Tensor per_class = -soft_targets * at::log_softmax(logits, 1);
  if (!class_weights.defined()) return per_class.sum(1).mean();
  per_class = per_class * class_weights;
  // PyTorch's weighted mean over class indices divides by the weights of the targets, so
  // that a batch's make-up does not scale the loss; over probabilities, by the batch size.
  if (classes.defined()) return per_class.sum() / class_weights.index_select(0, classes).sum();
  return per_class.sum(1).mean();
}

}  // namespace vitrine::train
