#include "vitrine/search/embedder.h"

#include "vitrine/core/error.h"
#include "vitrine/core/hash.h"
#include "vitrine/image/decode.h"
#include "vitrine/image/transform.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <filesystem>

namespace vitrine::search {

struct Embedder::Impl {
  models::Predictor predictor;
  EmbedderOptions options;
  std::vector<std::string> labels;

  /// Embeds the preprocessed inputs of the items marked ok in `out`.
  void run(const std::vector<at::Tensor>& inputs, std::vector<Embedded>& out) const {
    if (inputs.empty()) return;
    auto [features, scores] = predictor.embeddings_and_scores(at::stack(inputs));
    c10::InferenceMode guard;
    // Unit length: inner product = cosine similarity.
    features = models::l2_normalized(features).contiguous();
    std::vector<std::vector<models::Scored>> tops;
    if (scores.defined()) tops = predictor.top_k(scores, options.top_classes);
    const int64_t dim = features.size(1);
    const float* f = features.data_ptr<float>();
    int64_t row = 0;
    for (auto& e : out) {
      if (!e.ok()) continue;
      e.embedding.assign(f + row * dim, f + (row + 1) * dim);
      if (!tops.empty()) {
        for (const auto& s : tops[static_cast<size_t>(row)]) e.top.push_back({s.label, s.score});
      }
      ++row;
    }
  }
};

ModelStamp read_model_stamp(const std::string& model_dir) {
  const auto config = models::load_model_config(model_dir);
  const auto weights = std::filesystem::path(model_dir) / "model.safetensors";
  const auto& p = config.preprocess;
  std::string contract = sha256_file(weights.string()) + " " + std::to_string(p.resize) + " " +
                         std::to_string(p.crop) + " " + std::to_string(p.channels) + " " +
                         image::interpolation_name(p.interpolation) + (p.squash ? " squash" : "");
  for (const float v : p.mean) contract += " " + std::to_string(v);
  for (const float v : p.std) contract += " " + std::to_string(v);
  auto dir = std::filesystem::path(model_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();  // "runs/best/"
  const std::string name = dir.filename().string();
  return {config.arch + "/" + (name.empty() ? std::string("model") : name), sha256_hex(contract),
          config.embedding_dim()};
}

Embedder::Embedder(const std::string& model_dir, const EmbedderOptions& options) {
  auto model = models::load_model(model_dir);
  const auto& config = model->config();
  impl_ = std::make_unique<Impl>(
      Impl{models::Predictor(model, models::parse_precision(options.precision)), options, {}});
  for (int64_t i = 0; i < config.num_classes; ++i) impl_->labels.push_back(config.label(i));
  stamp_ = read_model_stamp(model_dir);
}

Embedder::~Embedder() = default;

const std::vector<std::string>& Embedder::labels() const { return impl_->labels; }

std::vector<Embedded> Embedder::embed_files(const std::vector<std::string>& paths) const {
  std::vector<Embedded> out(paths.size());
  std::vector<at::Tensor> inputs(paths.size());
  image::DecodeOptions decode;
  decode.max_pixels = impl_->options.max_pixels;
  at::parallel_for(0, static_cast<int64_t>(paths.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      auto& e = out[static_cast<size_t>(i)];
      const std::string& path = paths[static_cast<size_t>(i)];
      std::vector<uint8_t> bytes;
      try {
        bytes = image::read_file(path);  // its errors name the file
      } catch (const std::exception& ex) {
        e.error = ex.what();
        continue;
      }
      try {
        e.content_hash = sha256_hex(bytes.data(), bytes.size());
        const cv::Mat rgb = image::decode(bytes.data(), bytes.size(), decode);
        if (impl_->options.pixel_hashes) {
          e.pixel_hashes.push_back(sha256_hex(rgb.data, rgb.total() * rgb.elemSize()));
          std::vector<cv::Mat> channels;
          cv::split(rgb, channels);
          if (cv::countNonZero(channels[0] != channels[1]) == 0 &&
              cv::countNonZero(channels[0] != channels[2]) == 0) {  // grey: as packed sets
            e.pixel_hashes.push_back(sha256_hex(channels[0].data, channels[0].total()));
          }
          if (impl_->options.png_hash) {
            const auto png = image::encode_png(rgb);
            e.pixel_hashes.push_back(sha256_hex(png.data(), png.size()));
          }
        }
        inputs[static_cast<size_t>(i)] = impl_->predictor.preprocess(rgb);
      } catch (const c10::Error& ex) {
        e.error = path + ": " + ex.what_without_backtrace();
      } catch (const std::exception& ex) {
        e.error = path + ": " + ex.what();
      }
    }
  });
  std::vector<at::Tensor> good;
  for (size_t i = 0; i < paths.size(); ++i) {
    if (out[i].ok()) good.push_back(inputs[i]);
  }
  impl_->run(good, out);
  return out;
}

std::vector<Embedded> Embedder::embed_images(const std::vector<cv::Mat>& images) const {
  std::vector<Embedded> out(images.size());
  std::vector<at::Tensor> inputs;
  inputs.reserve(images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    try {
      inputs.push_back(impl_->predictor.preprocess(images[i]));
    } catch (const std::exception& ex) {
      out[i].error = ex.what();
    }
  }
  impl_->run(inputs, out);
  return out;
}

}  // namespace vitrine::search
