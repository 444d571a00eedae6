// Evaluation of a classifier on a labelled data set, shared by `vitrine train`
// (validation every epoch) and `vitrine eval`.
#pragma once

#include "vitrine/core/error.h"
#include "vitrine/data/dataset.h"
#include "vitrine/data/loader.h"
#include "vitrine/models/model.h"
#include "vitrine/train/metrics.h"

#include <memory>
#include <string>
#include <vector>

namespace vitrine::train {

/// Thrown when a model's outputs are not finite: its weights have diverged.
class NonFiniteOutput : public Error {
 public:
  using Error::Error;
};

struct EvalOptions {
  int64_t batch_size = 64;
  int workers = 0;
  bool strict = false;
};

/// The model's eval transform (its config's preprocessing), converting grey data to RGB
/// models and back as needed.
data::SampleTransform eval_sample_transform(const models::ModelConfig& config);

/// Top-1/top-5, per-class precision/recall/F1, confusion, calibration over `data`, with
/// the model in eval mode. Images that fail to decode are skipped and listed in `errors`.
ClassificationMetrics evaluate(models::VisionModelImpl& model,
                               const std::shared_ptr<data::Dataset>& data,
                               const EvalOptions& options = {},
                               std::vector<std::string>* errors = nullptr);

/// Multi-label evaluation: mAP and F1 at the model's thresholds (0.5 where it has none).
/// `tuned`, when given, receives per-label thresholds that maximise F1 on this data.
MultiLabelMetrics evaluate_multi_label(models::VisionModelImpl& model,
                                       const std::shared_ptr<data::Dataset>& data,
                                       const EvalOptions& options = {},
                                       std::vector<std::string>* errors = nullptr,
                                       std::vector<float>* tuned = nullptr);

/// An image converted to `channels` (1 grey or 3 RGB).
cv::Mat with_channels(const cv::Mat& image, int64_t channels);

}  // namespace vitrine::train
