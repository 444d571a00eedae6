// Optimisers and learning-rate schedules, with timm's conventions: no weight decay
// on biases, norms and ViT's token/position embeddings; layer-wise LR decay for ViT;
// schedules that take explicit step counts.
#pragma once

#include "vitrine/models/model.h"

#include <torch/optim/optimizer.h>

#include <memory>
#include <string>
#include <vector>

namespace vitrine::train {

struct OptimizerOptions {
  std::string name = "adamw";  ///< adamw | sgd
  double lr = 1e-3;
  double weight_decay = 0.05;
  double momentum = 0.9;       ///< sgd
  bool nesterov = false;       ///< sgd
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  ///< adamw
  /// Layer-wise lr decay (1 = off): the head gets lr, each block below it layer_decay times
  /// the rate of the block above, the embeddings or stem the least. ViT: per encoder block;
  /// ResNet: per residual block, as timm groups them.
  double layer_decay = 1.0;
};

struct ScheduleOptions {
  std::string name = "cosine";  ///< cosine | step | constant
  int64_t total_steps = 1;
  int64_t warmup_steps = 0;     ///< linear warm-up from lr / warmup_steps to lr
  double min_lr = 0.0;          ///< cosine floor
  std::vector<int64_t> milestones;  ///< step: multiply by gamma at each of these steps
  double gamma = 0.1;
};

/// The learning rate at 0-based optimisation step `step` for a base rate `base_lr`.
double lr_at(const ScheduleOptions& schedule, int64_t step, double base_lr);

/// A parameter group as the optimiser gets it, with its base rate and decay.
struct ParamGroup {
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  double weight_decay = 0;
  double lr_scale = 1;
};

/// Groups the trainable parameters (requires_grad) of `model`: decay or not, and for
/// layer_decay < 1 one group per depth.
std::vector<ParamGroup> param_groups(const models::VisionModelImpl& model,
                                     const OptimizerOptions& options);

/// Builds the optimiser over the groups; each group's base lr is options.lr * lr_scale.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<ParamGroup>& groups,
                                                        const OptimizerOptions& options);

/// Sets every group's learning rate to its lr_scale * lr_at(schedule, step, options.lr): the
/// --min-lr floor is scaled too, as timm's layer decay scales each group's scheduled rate.
void apply_schedule(torch::optim::Optimizer& optimizer, const std::vector<ParamGroup>& groups,
                    const OptimizerOptions& options, const ScheduleOptions& schedule,
                    int64_t step);

/// Freezes parameters: "none", "backbone" (all but the head: a linear probe) or
/// "until:<module>" (everything before that module path, e.g. until:layer3 or
/// until:encoder.layers.encoder_layer_6). Returns the number of frozen tensors.
int64_t apply_freeze(models::VisionModelImpl& model, const std::string& spec);

/// Puts the batch norms whose weights are all frozen in eval mode (call after train()): their
/// running statistics stay the checkpoint's, as timm's freeze() keeps them, instead of
/// drifting towards the new data while their layer is called frozen.
void hold_frozen_batch_norms(models::VisionModelImpl& model);

/// Whether `model` has batch norms (whose statistics depend on what shares a batch).
bool has_batch_norms(models::VisionModelImpl& model);
/// Whether it has batch norms that learn from batches: those hold_frozen_batch_norms leaves in
/// training mode.
bool has_training_batch_norms(models::VisionModelImpl& model);

}  // namespace vitrine::train
