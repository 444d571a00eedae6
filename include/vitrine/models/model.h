// The interface every registered vision model implements: a backbone that maps
// images to a pooled embedding (forward_features) and a head that maps the
// embedding to logits (forward_head), as timm does. Module paths equal the
// torchvision checkpoint keys, so a torchvision state_dict loads as it is.
#pragma once

#include "vitrine/core/state_dict.h"
#include "vitrine/models/config.h"

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace vitrine::models {

/// Low-rank adapters (Hu et al., LoRA, 2021): a frozen weight W (out x in) gains
/// (alpha / rank) * B A, with A (rank x in) initialised as nn.Linear initialises weights
/// and B (out x rank) zero, so training starts from the unchanged model.
struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16;
  /// ViT: qkv (attention in-projection), proj (attention out-projection), fc1, fc2 (MLP).
  std::vector<std::string> targets{"qkv", "proj", "fc1", "fc2"};
};

class VisionModelImpl : public torch::nn::Module {
 public:
  explicit VisionModelImpl(ModelConfig config) : config_(std::move(config)) {}

  /// Images (N, C, H, W), normalised as config().preprocess says -> embeddings (N, D).
  virtual at::Tensor forward_features(const at::Tensor& images) = 0;
  /// Embeddings (N, D) -> logits (N, num_classes).
  virtual at::Tensor forward_head(const at::Tensor& features) = 0;
  at::Tensor forward(const at::Tensor& images) { return forward_head(forward_features(images)); }

  /// The last spatial feature map (N, C, h, w) that the logits depend on, and those logits,
  /// for class-activation maps (Grad-CAM): ResNet's last stage output; for ViT the patch
  /// tokens entering the last block, as a grid (the class token sees them there).
  virtual std::pair<at::Tensor, at::Tensor> forward_with_feature_map(const at::Tensor& images) = 0;

  /// Checkpoint key prefix of the classification head ("fc", "heads.head").
  virtual std::string head_name() const = 0;
  /// Checkpoint key of the first layer's weight ("conv1.weight", "conv_proj.weight").
  virtual std::string stem_weight_name() const = 0;
  /// Replaces the head with a freshly initialised one for `num_classes` classes.
  virtual void reset_head(int64_t num_classes) = 0;

  /// Prepares for inference in `dtype` (kFloat, kBFloat16, or kQUInt8 for static int8): folds batch norms into
  /// the convolutions, converts weights once, picks the memory layout the CPU kernels
  /// want. `fused` builds the fused oneDNN path (pre-packed weights, post-op fusion)
  /// instead of libtorch's operators, the reference. The parameters used for training and
  /// saving stay untouched.
  virtual void prepare_inference(at::ScalarType dtype, bool fused) = 0;
  /// Whether the prepared path is the fused one.
  virtual bool fused_inference() const { return false; }
  /// Static int8 calibration: runs the fp32 network over the batches `next_batch` returns
  /// (preprocessed images; an undefined tensor ends them) and returns the activation scales
  /// that config().int8_scales stores. prepare_inference(at::kQUInt8, true) then runs int8.
  /// Throws for architectures without an int8 path.
  virtual std::vector<float> calibrate_int8(const std::function<at::Tensor()>& next_batch);
  /// Logits through the prepared inference path (falls back to forward()).
  virtual at::Tensor forward_inference(const at::Tensor& images) { return forward(images); }
  /// Embeddings through the prepared inference path.
  virtual at::Tensor forward_features_inference(const at::Tensor& images) {
    return forward_features(images);
  }

  /// Adds LoRA adapters (parameters whose names contain "lora_") to the target matrices;
  /// returns how many matrices got one. Throws for models without LoRA support.
  virtual int64_t add_lora(const LoraOptions& options);
  /// Masked-image modelling (MAE): the encoder's pass over only the patches `keep` (N, K
  /// int64, indices into the patch grid read row by row) of each image; the class token and
  /// the K tokens after the final norm, (N, 1 + K, width). Throws for models without patch
  /// tokens.
  virtual at::Tensor forward_visible(const at::Tensor& images, const at::Tensor& keep);
  /// The adapters' scale alpha / rank; 0 without adapters.
  virtual double lora_scale() const { return 0; }
  /// The weights to deploy: the state dict with adapters merged into the matrices they
  /// adapt (W + scale * B A) and the adapter tensors left out. Without adapters, the
  /// state dict itself.
  virtual StateDict deployable_state_dict() const;

  const ModelConfig& config() const { return config_; }
  ModelConfig& mutable_config() { return config_; }

  /// Training layout. A ResNet keeps its 4-D weights and buffers channels-last, so its
  /// activations and gradients follow and oneDNN's convolutions run forward and backward
  /// without reordering them (PyTorch's own advice for CPU training); the numbers differ
  /// from the default layout by summation order only. ViTs keep theirs. Call it before
  /// the optimiser is built; returns whether the layout changed.
  bool use_channels_last_for_training();

 protected:
  /// Throws unless int8 can run: the fused path and a calibration in the config.
  void check_int8_ready(bool fused) const;

  ModelConfig config_;
};

using VisionModel = std::shared_ptr<VisionModelImpl>;

}  // namespace vitrine::models
