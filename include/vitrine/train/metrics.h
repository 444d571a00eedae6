// Evaluation metrics for classifiers: single-label (softmax) and multi-label (sigmoid).
// Both accumulators take batches as they come and compute the metrics once at the end;
// accumulating in any number of batches gives the same numbers as one batch.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace vitrine::train {

/// Precision, recall and F1 of one class. A quantity whose denominator is zero is 0 (a class
/// never predicted has precision 0, one without samples has recall 0), as scikit-learn does
/// with its default `zero_division`.
struct ClassMetrics {
  double precision = 0;
  double recall = 0;
  double f1 = 0;
  int64_t support = 0;  ///< samples whose true class this is
};

struct ClassificationMetrics {
  int64_t count = 0;
  double top1 = 0, top5 = 0;  ///< fractions in [0, 1]; top5 = top-k with k = min(5, classes)
  double macro_f1 = 0;        ///< mean F1 over classes with support or predictions
  double ece = 0;             ///< expected calibration error, 15 equal-width bins of max prob
  double loss = 0;            ///< mean cross-entropy -log(max(p_true, float epsilon))
  std::vector<ClassMetrics> per_class;
  std::vector<std::vector<int64_t>> confusion;  ///< [true][predicted]

  /// Whether top5 says anything: with five classes or fewer it is 1 by definition.
  bool has_top5() const { return per_class.size() > 5; }
  /// top5 for JSON: null where !has_top5().
  nlohmann::json top5_json() const;

  /// The metrics as a JSON document; `classes` names the classes (empty: their indices).
  std::string to_json(const std::vector<std::string>& classes) const;
};

/// Accumulates single-label results over batches.
///
/// The prediction is the arg-max of each row, the lowest index winning ties; top-k ranks
/// classes the same way, so top-1 always equals the diagonal of the confusion matrix.
class ClassificationAccumulator {
 public:
  explicit ClassificationAccumulator(int64_t num_classes);

  /// probabilities (N, K) floating (softmax outputs: rows in [0, 1] summing to 1),
  /// targets (N) integral class indices in [0, K).
  void add(const at::Tensor& probabilities, const at::Tensor& targets);
  ClassificationMetrics compute() const;

  int64_t num_classes() const { return num_classes_; }
  int64_t count() const { return count_; }

 private:
  static constexpr int kCalibrationBins = 15;

  int64_t num_classes_;
  int64_t top_k_;  ///< min(5, num_classes_)
  int64_t count_ = 0;
  int64_t top1_hits_ = 0;
  int64_t top_k_hits_ = 0;
  double loss_sum_ = 0;
  std::vector<int64_t> confusion_;  ///< K x K, row-major [true][predicted]
  // Per calibration bin: samples, sum of confidences, correct predictions.
  std::vector<int64_t> bin_count_;
  std::vector<double> bin_confidence_;
  std::vector<int64_t> bin_correct_;
};

struct MultiLabelMetrics {
  int64_t count = 0;
  double mean_ap = 0;                 ///< mean over labels with positives of average precision
  double micro_f1 = 0, macro_f1 = 0;  ///< at `thresholds`; macro over labels with positives
                                      ///< or predicted positives
  std::vector<double> ap, f1;         ///< per label; 0 where undefined (see `positives`)
  std::vector<int64_t> positives;     ///< per label: samples carrying it
  std::vector<float> thresholds;      ///< per label: score >= threshold predicts the label

  /// The metrics as a JSON document; `labels` names the labels (empty: their indices).
  std::string to_json(const std::vector<std::string>& labels) const;
};

/// Accumulates multi-label results over batches. It keeps every score, since average
/// precision and threshold tuning need the full ranking: N x K floats and bytes.
class MultiLabelAccumulator {
 public:
  explicit MultiLabelAccumulator(int64_t num_labels);

  /// scores (N, K) floating in [0, 1] (sigmoid outputs), targets (N, K) multi-hot with
  /// values 0 or 1 (floating, integral or bool).
  void add(const at::Tensor& scores, const at::Tensor& targets);
  /// Metrics at per-label `thresholds` (empty: 0.5 each). Average precision follows
  /// scikit-learn's average_precision_score: sum over distinct score thresholds of
  /// (R_n - R_{n-1}) * P_n, without interpolation.
  MultiLabelMetrics compute(const std::vector<float>& thresholds = {}) const;
  /// Per-label thresholds maximising F1 on the accumulated data. Candidates are the observed
  /// scores; among equally good ones the highest wins. Labels without positives keep 0.5.
  std::vector<float> tune_thresholds() const;

  int64_t num_labels() const { return num_labels_; }
  int64_t count() const { return count_; }

 private:
  struct Ranked {
    float score;
    bool positive;
  };
  /// Label `k`'s samples sorted by decreasing score.
  std::vector<Ranked> ranked(int64_t k) const;

  int64_t num_labels_;
  int64_t count_ = 0;
  std::vector<float> scores_;     ///< N x K, row-major
  std::vector<uint8_t> targets_;  ///< N x K, row-major
};

}  // namespace vitrine::train
