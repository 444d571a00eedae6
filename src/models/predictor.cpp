#include "vitrine/models/predictor.h"

#include "onednn.h"

#include "vitrine/core/error.h"
#include "vitrine/image/transform.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>

namespace vitrine::models {

Precision parse_precision(const std::string& name) {
  if (name == "auto") return Precision::kAuto;
  if (name == "fp32") return Precision::kFp32;
  if (name == "bf16") return Precision::kBf16;
  if (name == "int8") return Precision::kInt8;
  VT_FAIL("unknown precision '", name, "'; use auto, fp32, bf16 or int8");
}

const char* precision_name(Precision precision) {
  switch (precision) {
    case Precision::kAuto: return "auto";
    case Precision::kFp32: return "fp32";
    case Precision::kBf16: return "bf16";
    case Precision::kInt8: return "int8";
  }
  return "?";
}

bool fused_engine_built() { return onednn::available(); }
bool bf16_runs_here() { return !onednn::available() || onednn::bf16_available(); }

Engine parse_engine(const std::string& name) {
  if (name == "auto") return Engine::kAuto;
  if (name == "fused") return Engine::kFused;
  if (name == "libtorch") return Engine::kLibtorch;
  VT_FAIL("unknown inference engine '", name, "'; use auto, fused or libtorch");
}

const char* engine_name(Engine engine) {
  switch (engine) {
    case Engine::kAuto: return "auto";
    case Engine::kFused: return "fused";
    case Engine::kLibtorch: return "libtorch";
  }
  return "?";
}

at::Tensor l2_normalized(const at::Tensor& rows) {
  return rows / rows.norm(2, 1, true).clamp_min(1e-12);
}

Predictor::Predictor(VisionModel model, Precision precision, Engine engine)
    : model_(std::move(model)), precision_(precision) {
  VT_CHECK(model_ != nullptr, "no model given");
  VT_CHECK(engine != Engine::kFused || onednn::available(),
           "this build has no fused inference path: install libdnnl-dev, rebuild, or use the "
           "libtorch engine");
  const bool fused = engine == Engine::kFused || (engine == Engine::kAuto && onednn::available());
  if (precision_ == Precision::kAuto) {
    precision_ = fused && !config().int8_scales.empty() ? Precision::kInt8 : Precision::kFp32;
    if (!fused && !config().int8_scales.empty()) {
      spdlog::info("{} is calibrated for int8, which runs on the fused engine only: it runs in "
                   "fp32 on the libtorch engine", config().arch);
    }
  }
  VT_CHECK(!(fused && precision_ == Precision::kBf16) || onednn::bf16_available(),
           "bf16 on the fused engine needs a CPU with AVX-512, which this one lacks: use fp32 "
           "(or int8), or --engine libtorch");
  const at::ScalarType dtype = precision_ == Precision::kBf16   ? at::kBFloat16
                               : precision_ == Precision::kInt8 ? at::kQUInt8
                                                                : at::kFloat;
  model_->prepare_inference(dtype, fused);
}

at::Tensor Predictor::preprocess(const cv::Mat& rgb) const {
  return image::eval_transform(rgb, config().preprocess);
}

at::Tensor Predictor::logits(const at::Tensor& batch) const {
  c10::InferenceMode guard;
  return model_->forward_inference(batch);
}

at::Tensor Predictor::embeddings(const at::Tensor& batch) const {
  c10::InferenceMode guard;
  return model_->forward_features_inference(batch).to(at::kFloat);
}

at::Tensor Predictor::scores(const at::Tensor& batch) const {
  VT_CHECK(config().num_classes > 0, config().arch,
           ": the model has no classification head (it is a backbone); import it with --num-classes or "
           "fine-tune it with `vitrine train` to classify");
  const at::Tensor l = logits(batch);
  c10::InferenceMode guard;
  return config().task == "multi_label" ? at::sigmoid(l) : at::softmax(l, 1);
}

std::pair<at::Tensor, at::Tensor> Predictor::embeddings_and_scores(const at::Tensor& batch) const {
  const at::Tensor features = embeddings(batch);
  if (config().num_classes <= 0) return {features, at::Tensor()};
  c10::InferenceMode guard;
  // The head in fp32 from the training weights (the prepared path keeps them untouched).
  const at::Tensor l = model_->forward_head(features);
  return {features, config().task == "multi_label" ? at::sigmoid(l) : at::softmax(l, 1)};
}

at::Tensor Predictor::grad_cam(const at::Tensor& image, int64_t target) const {
  VT_CHECK(image.dim() == 4 && image.size(0) == 1, "grad_cam takes one image (1, C, H, W)");
  VT_CHECK(target >= 0 && target < config().num_classes, "no class ", target, " to explain");
  // Autograd on, gradients taken with respect to the map only: nothing accumulates in the
  // shared parameters, so concurrent requests do not disturb each other.
  c10::AutoGradMode grad_on(true);
  auto [map, logits] = model_->forward_with_feature_map(image.to(at::kFloat));
  const auto grads = torch::autograd::grad({logits.select(1, target).sum()}, {map});
  c10::InferenceMode guard;
  const at::Tensor weights = grads[0].mean({2, 3}, /*keepdim=*/true);
  at::Tensor cam = at::relu((weights * map.detach()).sum(1, /*keepdim=*/true));
  cam = at::upsample_bilinear2d(cam, {image.size(2), image.size(3)}, /*align_corners=*/false);
  const at::Tensor top = cam.max();
  cam = top.item<float>() > 0 ? cam / top : cam;
  return cam[0][0].contiguous();
}

std::vector<std::vector<Scored>> Predictor::above_threshold(const at::Tensor& scores) const {
  const auto& t = config().thresholds;
  const auto s = scores.accessor<float, 2>();
  std::vector<std::vector<Scored>> out(scores.size(0));
  for (int64_t i = 0; i < scores.size(0); ++i) {
    for (int64_t j = 0; j < scores.size(1); ++j) {
      const float threshold = t.empty() ? 0.5f : t[j];
      if (s[i][j] >= threshold) out[i].push_back({j, config().label(j), s[i][j]});
    }
    std::sort(out[i].begin(), out[i].end(),
              [](const Scored& a, const Scored& b) { return a.score > b.score; });
  }
  return out;
}

std::vector<std::vector<Scored>> Predictor::top_k(const at::Tensor& scores, int64_t k) const {
  VT_CHECK(k > 0, "top-k must be positive, got ", k);
  k = std::min<int64_t>(k, scores.size(1));
  const auto [values, indices] = scores.topk(k, 1);
  const auto v = values.accessor<float, 2>();
  const auto ix = indices.accessor<int64_t, 2>();
  std::vector<std::vector<Scored>> out(scores.size(0));
  for (int64_t i = 0; i < scores.size(0); ++i) {
    for (int64_t j = 0; j < k; ++j) out[i].push_back({ix[i][j], config().label(ix[i][j]), v[i][j]});
  }
  return out;
}

}  // namespace vitrine::models
