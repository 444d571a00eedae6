// A model's configuration: architecture and sizes, labels, preprocessing and
// provenance. It is what config.json holds in a model directory, and it mirrors the
// Hugging Face config where the two overlap (hidden_size, layer_norm_eps, ...).
#pragma once

#include "vitrine/image/transform.h"

#include <cstdint>
#include <string>
#include <vector>

namespace vitrine::models {

enum class Family { kResNet, kViT };

/// ResNet sizes (He et al. 2015, torchvision layout: stride on the 3x3 convolution).
struct ResNetConfig {
  bool bottleneck = true;              ///< Bottleneck blocks (resnet50+) or basic blocks
  std::vector<int64_t> layers{3, 4, 6, 3};  ///< blocks per stage
  /// The stem before layer1, by the downsampling it does:
  ///  "imagenet" 7x7 stride-2 convolution and 3x3 stride-2 max-pool (/4; torchvision, timm);
  ///  "small"    3x3 stride-1 convolution and the max-pool (/2; for photos of 32-96 px);
  ///  "cifar"    3x3 stride-1 convolution, no pool (/1; CIFAR ResNets, for 32 px and less).
  /// Only "imagenet" matches published checkpoints.
  std::string stem = "imagenet";
  /// Structured pruning (`vitrine optimize --prune`): each block's inner widths, in block
  /// order: {conv1's output} for basic blocks, {conv1's, conv2's outputs} for bottlenecks.
  /// Empty: the standard widths (64, 128, 256, 512 per stage). The widths between blocks
  /// (the residual stream) are never pruned.
  std::vector<std::vector<int64_t>> block_widths;

  /// Inner widths of block `i` of a stage of `planes` channels.
  std::vector<int64_t> widths_of(size_t i, int64_t planes) const;
};

/// ViT sizes (Dosovitskiy et al. 2020), named as in Hugging Face's ViTConfig.
struct ViTConfig {
  int64_t patch_size = 16;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  double layer_norm_eps = 1e-6;       ///< torchvision/timm 1e-6; Hugging Face's default is 1e-12
  std::string hidden_act = "gelu";    ///< gelu | gelu_new | gelu_pytorch_tanh | quick_gelu | relu
  bool qkv_bias = true;
  double attention_dropout = 0.0;
  /// Structured pruning (`vitrine optimize --prune`): attention heads and MLP width of each
  /// block; empty: num_attention_heads and intermediate_size in every block. The width per
  /// head stays hidden_size / num_attention_heads.
  std::vector<int64_t> layer_heads, layer_intermediate_sizes;
  /// Token Merging (Bolya et al., ICLR 2023): after each block's attention, the `tome_r` most
  /// similar pairs of tokens are merged (size-weighted), so later blocks see fewer tokens;
  /// attention is then proportional to the merged sizes. 0: off. Training-free.
  int64_t tome_r = 0;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t heads_of(size_t layer) const;
  int64_t intermediate_of(size_t layer) const;
  /// Whether any block's sizes differ from the uniform ones.
  bool pruned() const { return !layer_heads.empty() || !layer_intermediate_sizes.empty(); }
};

struct ModelConfig {
  std::string arch;                   ///< registry name, e.g. "resnet50", "vit_b_16", "vit_custom"
  Family family = Family::kResNet;
  int64_t num_classes = 1000;
  int64_t in_channels = 3;            ///< 1 for greyscale data
  int64_t image_size = 224;           ///< input side; ViT position embeddings follow it
  double dropout = 0.0;               ///< before the head (and inside ViT blocks)
  double drop_path = 0.0;             ///< stochastic depth rate of the last block
  ResNetConfig resnet;
  ViTConfig vit;

  std::vector<std::string> labels;    ///< class names; "class_<i>" when unknown
  std::string task = "single_label";  ///< single_label (softmax) | multi_label (sigmoid)
  /// multi_label: per-label decision thresholds tuned on validation data (empty: 0.5).
  std::vector<float> thresholds;
  image::EvalTransform preprocess;    ///< eval-time preprocessing the weights expect
  std::string provenance_json = "{}"; ///< where the weights came from (JSON object)
  /// Static int8 quantisation (`vitrine optimize --int8`): the activation scale of each
  /// quantisation point, measured on calibration images for these weights (empty: none;
  /// training clears it), and what calibration measured (JSON object).
  std::vector<float> int8_scales;
  std::string int8_report_json = "{}";

  /// Embedding size of forward_features.
  int64_t embedding_dim() const;
  /// The label of class `i` (falls back to "class_<i>").
  std::string label(int64_t i) const;
  /// Checks sizes and consistency; throws with what to fix.
  void validate() const;
};

const char* family_name(Family family);

/// Token Merging: how many pairs a ViT block merges when `tokens` tokens (class token
/// included) enter it and the model asks for r: at most half of those besides the class
/// token.
int64_t tome_merges(int64_t tokens, int64_t r);

/// Class labels from a text file, one per line (blank lines skipped).
std::vector<std::string> read_labels_file(const std::string& path);

/// config.json text <-> ModelConfig. Unknown keys are ignored; missing ones take defaults.
std::string config_to_json(const ModelConfig& config);
ModelConfig config_from_json(const std::string& text, const std::string& origin);

}  // namespace vitrine::models
