// Inference on images: preprocessing from the model's config, batched forward
// passes in the chosen precision, scores and top-k.
#pragma once

#include "vitrine/models/model.h"

#include <opencv2/core.hpp>

#include <string>
#include <vector>

namespace vitrine::models {

/// kInt8 needs a calibrated model (`vitrine optimize --int8`); kAuto takes int8 for such a
/// model on the fused path, fp32 otherwise.
enum class Precision { kAuto, kFp32, kBf16, kInt8 };
Precision parse_precision(const std::string& name);  ///< auto | fp32 | bf16 | int8
const char* precision_name(Precision precision);

/// Which operators run inference: the fused oneDNN path (pre-packed weights, bias,
/// activation and residual fused into the products) or libtorch's, the reference.
/// kAuto takes the fused path when this build has it.
enum class Engine { kAuto, kFused, kLibtorch };
Engine parse_engine(const std::string& name);  ///< auto | fused | libtorch
/// Whether this build has the fused (oneDNN) engine, which auto picks where it is.
bool fused_engine_built();
/// Whether bf16 runs on the engine `auto` picks on this machine: the fused engine (oneDNN
/// 2.6) has bf16 kernels for AVX-512 CPUs only.
bool bf16_runs_here();
const char* engine_name(Engine engine);

struct Scored {
  int64_t index;
  std::string label;
  float score;
};

/// Each row scaled to unit length (rows of zeros stay zero): inner products of the results
/// are cosine similarities.
at::Tensor l2_normalized(const at::Tensor& rows);

class Predictor {
 public:
  Predictor(VisionModel model, Precision precision, Engine engine = Engine::kAuto);

  const ModelConfig& config() const { return model_->config(); }
  /// The precision in use (never kAuto).
  Precision precision() const { return precision_; }
  /// The engine in use: kFused or kLibtorch, never kAuto.
  Engine engine() const { return model_->fused_inference() ? Engine::kFused : Engine::kLibtorch; }

  /// The model's eval transform of one decoded RGB image (C x crop x crop, float).
  at::Tensor preprocess(const cv::Mat& rgb) const;
  /// Logits (N, classes) in fp32 for a preprocessed batch (N, C, H, W).
  at::Tensor logits(const at::Tensor& batch) const;
  /// Pooled embeddings (N, D) in fp32.
  at::Tensor embeddings(const at::Tensor& batch) const;
  /// Softmax (single-label) or sigmoid (multi-label) scores.
  at::Tensor scores(const at::Tensor& batch) const;
  /// Embeddings (N, D) and scores (N, classes; undefined for a model without a head) from
  /// one forward pass through the backbone.
  std::pair<at::Tensor, at::Tensor> embeddings_and_scores(const at::Tensor& batch) const;
  /// Grad-CAM (Selvaraju et al. 2017) of class `target` for one preprocessed image
  /// (1, C, H, W): the feature map's channels weighted by their mean gradient, ReLU, scaled to
  /// [0, 1] and resized to H x W (float, H x W). Uses the fp32 training weights.
  at::Tensor grad_cam(const at::Tensor& image, int64_t target) const;
  /// Multi-label: the labels of each row whose score reaches the model's threshold
  /// (0.5 where it has none), best first.
  std::vector<std::vector<Scored>> above_threshold(const at::Tensor& scores) const;
  /// The k best classes of each row of `scores`.
  std::vector<std::vector<Scored>> top_k(const at::Tensor& scores, int64_t k) const;

 private:
  VisionModel model_;
  Precision precision_;
};

}  // namespace vitrine::models
