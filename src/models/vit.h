// Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", 2020),
// in torchvision's layout (vision_transformer.py): conv_proj, class_token,
// encoder.pos_embedding, encoder.layers.encoder_layer_<i>.{ln_1, self_attention.
// {in_proj_weight, in_proj_bias, out_proj}, ln_2, mlp.0, mlp.3}, encoder.ln,
// heads.head. Hugging Face and timm checkpoints are renamed onto these keys on import.
#pragma once

#include "vitrine/models/model.h"

#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <functional>
#include <memory>
#include <vector>

namespace vitrine::models {
namespace onednn {
class ViTEncoder;
struct ViTWeights;
}  // namespace onednn

/// A LoRA adapter of one matrix: A (rank x in), B (out x rank); undefined when none.
struct LoraPair {
  at::Tensor a, b;
  bool defined() const { return a.defined(); }
};

/// One encoder block's tensors: either the trained parameters (with their adapters) or
/// their inference copies (adapters merged).
struct ViTBlockWeights {
  at::Tensor ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w,
      fc2_b;
  LoraPair qkv_lora, proj_lora, fc1_lora, fc2_lora;
  double lora_scale = 0;
};

class ViTAttentionImpl : public torch::nn::Module {
 public:
  /// `inner`: heads x width per head (the model's width unless heads were pruned).
  ViTAttentionImpl(int64_t dim, int64_t inner, bool qkv_bias);
  at::Tensor in_proj_weight, in_proj_bias;
  torch::nn::Linear out_proj{nullptr};
  LoraPair qkv_lora, proj_lora;  ///< lora_qkv_{A,B}, lora_proj_{A,B} when added
};
TORCH_MODULE(ViTAttention);

class ViTMlpImpl : public torch::nn::Module {
 public:
  ViTMlpImpl(int64_t dim, int64_t hidden);
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};  ///< keys mlp.0 and mlp.3, as torchvision
  LoraPair fc1_lora, fc2_lora;  ///< lora_fc1_{A,B}, lora_fc2_{A,B} when added
};
TORCH_MODULE(ViTMlp);

class ViTBlockImpl : public torch::nn::Module {
 public:
  ViTBlockImpl(const ViTConfig& c, size_t layer, double drop_path);
  /// The block's tensors; `lora_scale` is the model's adapter scale (0: none).
  ViTBlockWeights weights(double lora_scale) const;
  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  ViTAttention self_attention{nullptr};
  ViTMlp mlp{nullptr};
  double drop_path_rate;
};
TORCH_MODULE(ViTBlock);

class ViTImpl : public VisionModelImpl {
 public:
  explicit ViTImpl(ModelConfig config);

  at::Tensor forward_features(const at::Tensor& images) override;
  at::Tensor forward_head(const at::Tensor& features) override;
  std::pair<at::Tensor, at::Tensor> forward_with_feature_map(const at::Tensor& images) override;
  std::string head_name() const override { return "heads.head"; }
  std::string stem_weight_name() const override { return "conv_proj.weight"; }
  void reset_head(int64_t num_classes) override;
  int64_t add_lora(const LoraOptions& options) override;
  double lora_scale() const override { return lora_scale_; }
  at::Tensor forward_visible(const at::Tensor& images, const at::Tensor& keep) override;
  StateDict deployable_state_dict() const override;
  void prepare_inference(at::ScalarType dtype, bool fused) override;
  bool fused_inference() const override { return fused_ != nullptr; }
  std::vector<float> calibrate_int8(const std::function<at::Tensor()>& next_batch) override;
  at::Tensor forward_inference(const at::Tensor& images) override;
  at::Tensor forward_features_inference(const at::Tensor& images) override;

 private:
  struct Weights {
    at::Tensor patch_w, patch_b, cls, pos, ln_w, ln_b, head_w, head_b;
    std::vector<ViTBlockWeights> blocks;
  };
  Weights trained_weights() const;
  /// The encoder blocks' weights in fp32, adapters merged, for the fused path.
  onednn::ViTWeights fused_weights() const;
  /// Patch embedding, class token and position embedding: the tokens entering the encoder.
  at::Tensor embed(const at::Tensor& images, const Weights& w, bool training) const;
  /// `onednn` routes the fp32 matrix products to oneDNN (inference only: no autograd).
  /// `before_last_block`, when given, maps the tokens entering the last block (Grad-CAM
  /// takes them there).
  /// Token Merging applies unless `before_last_block` is given (it needs the full grid).
  at::Tensor features(const at::Tensor& images, const Weights& w, bool training, bool onednn,
                      const std::function<at::Tensor(const at::Tensor&)>& before_last_block =
                          {}) const;
  /// One block. With Token Merging on (`merge` > 0 pairs), the stream leaves with fewer
  /// tokens and `size` (undefined before the first merge) counts what each stands for.
  at::Tensor block(const at::Tensor& x, const ViTBlockWeights& w, double drop_path,
                   bool training, bool onednn, int64_t merge, at::Tensor& size) const;

  torch::nn::Conv2d conv_proj_{nullptr};
  at::Tensor class_token_, pos_embedding_;
  std::vector<ViTBlock> blocks_;
  torch::nn::LayerNorm ln_{nullptr};
  torch::nn::Module* heads_ = nullptr;
  torch::nn::Linear head_{nullptr};

  double lora_scale_ = 0;
  bool prepared_ = false;
  at::ScalarType inference_dtype_ = at::kFloat;
  Weights inference_;
  std::shared_ptr<const onednn::ViTEncoder> fused_;  ///< the encoder blocks, fused path
};
TORCH_MODULE(ViT);

}  // namespace vitrine::models
