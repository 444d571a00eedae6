// Image embeddings for search: a model directory's pooled features, L2-normalised, with the
// model's classifier scores beside them (one forward pass serves both) and the stamp that
// ties stored embeddings to the model that made them.
#pragma once

#include "vitrine/search/catalog.h"

#include <opencv2/core.hpp>

#include <memory>
#include <string>
#include <vector>

namespace vitrine::search {

/// A class and its probability.
struct ClassScore {
  std::string label;
  float score = 0;
};

/// The embedding of one image, or why there is none.
struct Embedded {
  std::string error;             ///< empty when ok
  std::string content_hash;      ///< SHA-256 of the file (files only)
  /// With EmbedderOptions::pixel_hashes (files only): SHA-256 of the decoded pixels (RGB),
  /// and of one channel when the photo is grey, as `vitrine index --data` hashes photos;
  /// with png_hash also of the PNG copy `serve` keeps of a photo.
  std::vector<std::string> pixel_hashes;
  std::vector<float> embedding;  ///< dim floats, unit length
  std::vector<ClassScore> top;   ///< the model's best classes (empty for a headless model)
  bool ok() const { return error.empty(); }
};

struct EmbedderOptions {
  std::string precision = "auto";  ///< auto | fp32 | bf16 | int8
  int64_t max_pixels = 100'000'000;
  int64_t top_classes = 5;
  bool pixel_hashes = false;  ///< fill Embedded::pixel_hashes
  bool png_hash = false;      ///< ... adding the hash of the photo's PNG copy (slower)
};

/// The stamp of a model directory, as Embedder::stamp() gives it, without loading the weights
/// into a model (reads config.json and hashes model.safetensors).
ModelStamp read_model_stamp(const std::string& model_dir);

class Embedder {
 public:
  explicit Embedder(const std::string& model_dir, const EmbedderOptions& options = {});
  ~Embedder();
  Embedder(const Embedder&) = delete;
  Embedder& operator=(const Embedder&) = delete;

  /// id: the model's architecture and folder name; version: SHA-256 of its weights file and
  /// preprocessing; dim: embedding width.
  const ModelStamp& stamp() const { return stamp_; }
  /// The classifier's labels (empty for a backbone without a head).
  const std::vector<std::string>& labels() const;

  /// Reads, decodes and embeds files, in one batch; a bad file gets its error, the others
  /// are unaffected.
  std::vector<Embedded> embed_files(const std::vector<std::string>& paths) const;
  /// Embeds decoded images (8-bit RGB or grey), in one batch.
  std::vector<Embedded> embed_images(const std::vector<cv::Mat>& images) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ModelStamp stamp_;
};

}  // namespace vitrine::search
