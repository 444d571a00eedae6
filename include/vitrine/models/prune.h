// Structured pruning: whole channels, attention heads and MLP units removed, so the smaller
// network runs faster on any kernel (no sparse formats). The widths between blocks stay
// (ResNet's residual stream, ViT's token width): every block of a stage adds into them, so
// pruning them would tie all blocks together; the widths inside each block are free.
#pragma once

#include "vitrine/models/model.h"

#include <string>

namespace vitrine::models {

struct PruneOptions {
  /// Share of each block's inner width removed: ResNet channels inside each residual
  /// block; ViT attention heads and MLP units of each block. In [0, 1).
  double ratio = 0.3;
  /// Kept widths are rounded up to a multiple of this (when the width allows), which the
  /// matrix kernels run fastest on.
  int64_t multiple = 8;
};

struct PruneResult {
  VisionModel model;
  int64_t params_before = 0, params_after = 0;
  std::string summary;  ///< kept widths, in words
};

/// A pruned copy of `model` (adapters merged, int8 scales dropped: they belong to the old
/// weights). Which units go is decided by an importance score computed from the weights
/// alone:
///  - a ResNet channel, by the root mean square of its output after batch norm and ReLU
///    (batch norm fixes the pre-activation's mean to beta and spread to |gamma|; the ReLU
///    of a normal N(beta, gamma^2) has a closed-form second moment), times the norm of the
///    weights that read it in the next convolution;
///  - a ViT MLP unit, by the norm of its input weights (scaled by ln_2's weight) and bias,
///    times the norm of its output weights;
///  - a ViT head, by the norm of its value rows (scaled by ln_1's weight) and biases, times
///    the norm of its columns of the output projection (what the head writes, whatever it
///    attends to).
/// A unit whose output is always zero scores 0 and goes first, so the pruned model
/// computes exactly what the original did when only such units are removed.
PruneResult prune_model(const VisionModelImpl& model, const PruneOptions& options);

}  // namespace vitrine::models
