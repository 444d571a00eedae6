// Evaluation of a classifier on a labelled data set, shared by `vitrine train`
// (validation every epoch) and `vitrine eval`.
#pragma once

#include "vitrine/core/error.h"
#include "vitrine/data/dataset.h"
#include "vitrine/data/loader.h"
#include "vitrine/models/model.h"
#include "vitrine/train/adversarial.h"
#include "vitrine/train/metrics.h"

#include <functional>
#include <memory>
#include <string>
#include <utility>
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
  bool targets = true;  ///< false: images alone (unlabelled data); see LoaderOptions
  /// Logits through the model's prepared inference path (its precision and engine, as
  /// models::Predictor prepares them: int8, bf16, fused), the one predict and serve run;
  /// false: forward(), the training graph in fp32. Adversarial images are made with forward().
  bool inference = false;
};

/// How a data set's classes are matched to a classifier's.
enum class ClassMatch {
  kByName,      ///< the data holds some or all of the model's classes, in any order
  kByPosition,  ///< no name in common, as many classes: the data's i-th is the model's i-th
};

/// Matches `data_classes` to the classifier `config`, as `eval` and `optimize` do: by name,
/// or, when no name is shared (ImageNet's folder ids against a checkpoint's class names) or
/// the model has no class names, by position. Throws naming the data's unknown classes, or
/// the counts that differ, otherwise.
ClassMatch match_classes(const models::ModelConfig& config,
                         const std::vector<std::string>& data_classes);

/// `data` labelled in the model's classes, matched as match_classes() matches them; classes
/// without items (an empty folder) need not be the model's. `how`, when given, says how.
std::shared_ptr<data::Dataset> scored_as(const models::ModelConfig& config,
                                         std::shared_ptr<data::Dataset> data,
                                         ClassMatch* how = nullptr);

/// The model's eval transform (its config's preprocessing), converting grey data to RGB
/// models and back as needed.
data::SampleTransform eval_sample_transform(const models::ModelConfig& config);

/// Runs `consume` on each batch of `data` (the model's eval transform) with the model in
/// eval mode and gradients off; the mode is restored afterwards, also when `consume`
/// throws. Images that fail to decode are skipped and listed in `errors`.
void for_each_eval_batch(models::VisionModelImpl& model,
                         const std::shared_ptr<data::Dataset>& data, const EvalOptions& options,
                         std::vector<std::string>* errors,
                         const std::function<void(const data::Batch&)>& consume);

/// Top-1/top-5, per-class precision/recall/F1, confusion, calibration over `data`, with
/// the model in eval mode. Images that fail to decode are skipped and listed in `errors`.
ClassificationMetrics evaluate(models::VisionModelImpl& model,
                               const std::shared_ptr<data::Dataset>& data,
                               const EvalOptions& options = {},
                               std::vector<std::string>* errors = nullptr);

/// The same metrics on adversarial versions of each image, made by `attack` against the
/// model in eval mode with each image's true class (robust accuracy).
ClassificationMetrics evaluate_under_attack(models::VisionModelImpl& model,
                                            const std::shared_ptr<data::Dataset>& data,
                                            const AttackOptions& attack,
                                            const EvalOptions& options = {},
                                            std::vector<std::string>* errors = nullptr);

/// Multi-label evaluation: mAP and F1 at the model's thresholds (0.5 where it has none).
/// `tuned`, when given, receives per-label thresholds that maximise F1 on this data, and the
/// F1 scores are then those at the tuned thresholds (the ones a model saved after this
/// validation carries).
MultiLabelMetrics evaluate_multi_label(models::VisionModelImpl& model,
                                       const std::shared_ptr<data::Dataset>& data,
                                       const EvalOptions& options = {},
                                       std::vector<std::string>* errors = nullptr,
                                       std::vector<float>* tuned = nullptr);

/// The multi-label metrics on adversarial versions of each image, made by `attack` (its
/// loss: binary cross-entropy against each image's true labels) against the model in eval
/// mode, scored at the model's thresholds.
MultiLabelMetrics evaluate_multi_label_under_attack(models::VisionModelImpl& model,
                                                    const std::shared_ptr<data::Dataset>& data,
                                                    const AttackOptions& attack,
                                                    const EvalOptions& options = {},
                                                    std::vector<std::string>* errors = nullptr);

/// The model's top class and its probability for items `indices` of `data` (eval mode,
/// eval transform, one at a time: for report samples, not for throughput). An item whose
/// image fails to decode gets class -1 and a NaN probability.
std::vector<std::pair<int64_t, double>> predict_items(models::VisionModelImpl& model,
                                                      const data::Dataset& data,
                                                      const std::vector<int64_t>& indices);

/// An 8-bit RGB or grey image as a base64 PNG (for reports).
std::string png_base64(const cv::Mat& image);

/// An image converted to `channels` (1 grey or 3 RGB).
cv::Mat with_channels(const cv::Mat& image, int64_t channels);

}  // namespace vitrine::train
