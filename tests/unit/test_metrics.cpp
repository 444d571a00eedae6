#include "vitrine/core/error.h"
#include "vitrine/train/metrics.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

using namespace vitrine;
using namespace vitrine::train;

namespace {

at::Tensor rows_of(const std::vector<std::vector<double>>& rows, at::ScalarType dtype) {
  const auto n = static_cast<int64_t>(rows.size());
  const auto k = static_cast<int64_t>(rows.at(0).size());
  at::Tensor t = at::empty({n, k}, at::kDouble);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) t[i][j] = rows[i][j];
  }
  return t.to(dtype);
}

at::Tensor longs(const std::vector<int64_t>& v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong));
}

/// Whether `f` throws vitrine::Error with `needle` in its message.
bool throws_with(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    return std::string(e.what()).find(needle) != std::string::npos;
  }
  return false;
}

// Seven samples over seven classes. Class 5 has two samples and is never predicted, class 6
// neither occurs nor is predicted, and sample 6 ties classes 3 and 4 (the lower index wins).
// Probabilities are double so that every expected value below is exact arithmetic.
struct HandCase {
  std::vector<std::vector<double>> probs = {
      {0.70, 0.10, 0.05, 0.05, 0.05, 0.05, 0.00},  // true 0, predicted 0
      {0.10, 0.60, 0.10, 0.10, 0.05, 0.05, 0.00},  // true 1, predicted 1
      {0.50, 0.05, 0.20, 0.10, 0.10, 0.05, 0.00},  // true 2, predicted 0, rank 1
      {0.05, 0.40, 0.20, 0.15, 0.12, 0.08, 0.00},  // true 5, predicted 1, rank 4: in top 5
      {0.30, 0.25, 0.20, 0.10, 0.10, 0.05, 0.00},  // true 5, predicted 0, rank 5: not in top 5
      {0.05, 0.05, 0.10, 0.45, 0.35, 0.00, 0.00},  // true 3, predicted 3
      {0.00, 0.00, 0.00, 0.40, 0.40, 0.20, 0.00},  // true 4, predicted 3 (tie), rank 1
  };
  std::vector<int64_t> targets = {0, 1, 2, 5, 5, 3, 4};
  std::vector<double> p_true = {0.70, 0.60, 0.20, 0.08, 0.05, 0.45, 0.40};
};

ClassificationMetrics hand_metrics() {
  HandCase c;
  ClassificationAccumulator acc(7);
  acc.add(rows_of(c.probs, at::kDouble), longs(c.targets));
  return acc.compute();
}

}  // namespace

// ------------------------------------------------------------------------- single-label

TEST(ClassificationMetrics, TopKOnAHandComputedCase) {
  const ClassificationMetrics m = hand_metrics();
  EXPECT_EQ(m.count, 7);
  EXPECT_DOUBLE_EQ(m.top1, 3.0 / 7);  // samples 0, 1, 5
  EXPECT_DOUBLE_EQ(m.top5, 6.0 / 7);  // all but sample 4
}

TEST(ClassificationMetrics, ConfusionMatrixIsTrueByPredicted) {
  const ClassificationMetrics m = hand_metrics();
  std::vector<std::vector<int64_t>> expected(7, std::vector<int64_t>(7, 0));
  expected[0][0] = 1;
  expected[1][1] = 1;
  expected[2][0] = 1;
  expected[5][1] = 1;
  expected[5][0] = 1;
  expected[3][3] = 1;
  expected[4][3] = 1;
  EXPECT_EQ(m.confusion, expected);
}

TEST(ClassificationMetrics, PerClassAndMacroF1) {
  const ClassificationMetrics m = hand_metrics();
  ASSERT_EQ(m.per_class.size(), 7u);
  struct Row {
    double precision, recall, f1;
    int64_t support;
  };
  // Predicted counts: class 0 three times, classes 1 and 3 twice, the rest never.
  // clang-format off
  const std::vector<Row> expected = {
      {1.0 / 3, 1.0, 0.5, 1},
      {0.5, 1.0, 2.0 / 3, 1},
      {0.0, 0.0, 0.0, 1},  // never predicted: precision 0 by convention
      {0.5, 1.0, 2.0 / 3, 1},
      {0.0, 0.0, 0.0, 1},
      {0.0, 0.0, 0.0, 2},  // never predicted, two samples missed
      {0.0, 0.0, 0.0, 0},  // absent everywhere
  };
  // clang-format on
  for (size_t c = 0; c < expected.size(); ++c) {
    SCOPED_TRACE("class " + std::to_string(c));
    EXPECT_DOUBLE_EQ(m.per_class[c].precision, expected[c].precision);
    EXPECT_DOUBLE_EQ(m.per_class[c].recall, expected[c].recall);
    EXPECT_DOUBLE_EQ(m.per_class[c].f1, expected[c].f1);
    EXPECT_EQ(m.per_class[c].support, expected[c].support);
  }
  // Classes 0..5 count (support or predictions); class 6 is left out: 11/6 over 6 classes.
  EXPECT_DOUBLE_EQ(m.macro_f1, 11.0 / 36);
}

TEST(ClassificationMetrics, LossIsMeanNegativeLogOfTrueClassProbability) {
  const ClassificationMetrics m = hand_metrics();
  double expected = 0;
  for (double p : HandCase().p_true) expected -= std::log(p);
  EXPECT_NEAR(m.loss, expected / 7, 1e-12);
}

TEST(ClassificationMetrics, LossFloorsZeroProbabilityAtFloatEpsilon) {
  ClassificationAccumulator acc(2);
  acc.add(rows_of({{1.0, 0.0}}, at::kFloat), longs({1}));
  const ClassificationMetrics m = acc.compute();
  EXPECT_TRUE(std::isfinite(m.loss));
  EXPECT_NEAR(m.loss, -std::log(static_cast<double>(std::numeric_limits<float>::epsilon())), 1e-9);
}

TEST(ClassificationMetrics, ExpectedCalibrationErrorOnAConstructedCase) {
  // Bin (13/15, 14/15]: confidences 0.88, 0.90, 0.92, two right: |2 - 2.70| = 0.70.
  // Bin (8/15, 9/15]: confidences 0.55, 0.58, both right: |2 - 1.13| = 0.87.
  // ECE = sum of |correct - confidence| per bin / N = 1.57 / 5.
  ClassificationAccumulator acc(2);
  acc.add(
      rows_of({{0.88, 0.12}, {0.10, 0.90}, {0.92, 0.08}, {0.45, 0.55}, {0.58, 0.42}}, at::kDouble),
      longs({0, 0, 0, 1, 0}));
  const ClassificationMetrics m = acc.compute();
  EXPECT_DOUBLE_EQ(m.top1, 4.0 / 5);
  EXPECT_NEAR(m.ece, 1.57 / 5, 1e-12);

  // Perfectly calibrated: confidence 0.75 (one bin), three of four right.
  ClassificationAccumulator calibrated(2);
  calibrated.add(rows_of({{0.75, 0.25}, {0.75, 0.25}, {0.75, 0.25}, {0.75, 0.25}}, at::kDouble),
                 longs({0, 0, 0, 1}));
  EXPECT_NEAR(calibrated.compute().ece, 0.0, 1e-12);
}

TEST(ClassificationMetrics, TopFiveWithFewerClassesIsTopK) {
  ClassificationAccumulator acc(3);
  acc.add(rows_of({{0.5, 0.3, 0.2}, {0.5, 0.3, 0.2}}, at::kFloat), longs({2, 1}));
  const ClassificationMetrics m = acc.compute();
  EXPECT_DOUBLE_EQ(m.top1, 0.0);
  EXPECT_DOUBLE_EQ(m.top5, 1.0);  // top-3 of 3 classes
  // ... which says nothing, so JSON carries null; with seven classes the figure.
  EXPECT_TRUE(nlohmann::json::parse(m.to_json({})).at("top5").is_null());
  EXPECT_DOUBLE_EQ(nlohmann::json::parse(hand_metrics().to_json({})).at("top5").get<double>(),
                   6.0 / 7);
}

TEST(ClassificationMetrics, EmptyAccumulatorGivesZeros) {
  ClassificationAccumulator acc(4);
  acc.add(at::empty({0, 4}), at::empty({0}, at::kLong));
  const ClassificationMetrics m = acc.compute();
  EXPECT_EQ(m.count, 0);
  EXPECT_EQ(m.top1, 0.0);
  EXPECT_EQ(m.loss, 0.0);
  EXPECT_EQ(m.macro_f1, 0.0);
  EXPECT_EQ(m.per_class.size(), 4u);
}

TEST(ClassificationMetrics, BatchesEqualOneBatch) {
  at::manual_seed(3);
  const int64_t n = 50, k = 8;
  const at::Tensor probs = at::softmax(at::randn({n, k}) * 2, 1);
  const at::Tensor targets = at::randint(k, {n}, at::kLong);
  ClassificationAccumulator whole(k);
  whole.add(probs, targets);
  ClassificationAccumulator parts(k);
  int64_t at_row = 0;
  for (int64_t size : {7, 13, 0, 30}) {
    parts.add(probs.narrow(0, at_row, size), targets.narrow(0, at_row, size));
    at_row += size;
  }
  const ClassificationMetrics a = whole.compute(), b = parts.compute();
  EXPECT_EQ(b.count, n);
  EXPECT_EQ(a.top1, b.top1);
  EXPECT_EQ(a.top5, b.top5);
  EXPECT_EQ(a.macro_f1, b.macro_f1);
  EXPECT_EQ(a.ece, b.ece);
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.confusion, b.confusion);
  EXPECT_EQ(a.to_json({}), b.to_json({}));
}

TEST(ClassificationMetrics, JsonNamesTheClasses) {
  const ClassificationMetrics m = hand_metrics();
  const std::vector<std::string> names = {"bag", "shoe", "shirt", "hat", "watch", "belt", "ring"};
  const auto j = nlohmann::json::parse(m.to_json(names));
  EXPECT_EQ(j.at("count").get<int64_t>(), 7);
  EXPECT_DOUBLE_EQ(j.at("top1").get<double>(), 3.0 / 7);
  EXPECT_DOUBLE_EQ(j.at("macro_f1").get<double>(), 11.0 / 36);
  EXPECT_EQ(j.at("classes").get<std::vector<std::string>>(), names);
  EXPECT_EQ(j.at("per_class").at(5).at("class").get<std::string>(), "belt");
  EXPECT_EQ(j.at("per_class").at(5).at("support").get<int64_t>(), 2);
  // A class never predicted but present scores 0; one without samples has no recall or F1.
  EXPECT_DOUBLE_EQ(j.at("per_class").at(5).at("recall").get<double>(), 0.0);
  EXPECT_TRUE(j.at("per_class").at(6).at("recall").is_null());
  EXPECT_TRUE(j.at("per_class").at(6).at("f1").is_null());
  EXPECT_DOUBLE_EQ(j.at("per_class").at(6).at("precision").get<double>(), 0.0);
  EXPECT_EQ(j.at("confusion").get<std::vector<std::vector<int64_t>>>(), m.confusion);
  EXPECT_EQ(nlohmann::json::parse(m.to_json({})).at("classes").at(6).get<std::string>(), "6");
  EXPECT_THROW(m.to_json({"bag"}), Error);
}

TEST(ClassificationMetrics, RejectsBadInputWithoutCountingIt) {
  ClassificationAccumulator acc(3);
  const at::Tensor ok = rows_of({{0.2, 0.3, 0.5}, {0.6, 0.2, 0.2}}, at::kFloat);
  EXPECT_THROW(ClassificationAccumulator(0), Error);
  EXPECT_TRUE(throws_with([&] { acc.add(at::rand({2, 4}), longs({0, 1})); }, "(N, 3)"));
  EXPECT_THROW(acc.add(at::rand({6}), longs({0, 1})), Error);
  EXPECT_THROW(acc.add(ok, longs({0, 1, 2})), Error);
  EXPECT_THROW(acc.add(ok, longs({0, 1}).view({2, 1})), Error);
  EXPECT_THROW(acc.add(ok, at::zeros({2})), Error);  // float targets
  EXPECT_THROW(acc.add(ok.to(at::kLong), longs({0, 1})), Error);
  EXPECT_TRUE(throws_with([&] { acc.add(ok, longs({0, 3})); }, "not a class index"));
  EXPECT_THROW(acc.add(ok, longs({-1, 0})), Error);
  EXPECT_TRUE(throws_with([&] { acc.add(ok * 4 - 1, longs({0, 1})); }, "not logits"));
  EXPECT_THROW(acc.add(ok * 0.5, longs({0, 1})), Error);  // rows sum to 0.5
  at::Tensor with_nan = ok.clone();
  with_nan[0][0] = NAN;
  EXPECT_THROW(acc.add(with_nan, longs({0, 1})), Error);
  EXPECT_EQ(acc.count(), 0);
  acc.add(ok, longs({2, 0}));
  EXPECT_EQ(acc.count(), 2);
  EXPECT_DOUBLE_EQ(acc.compute().top1, 1.0);
}

// ------------------------------------------------------------------------- multi-label

namespace {

// Six samples, four labels (columns). Label 0: AP 13/18 (worked below); label 1: ties;
// label 2: no positives but predicted at 0.5; label 3: no positives, never predicted.
// clang-format off
const std::vector<std::vector<double>> kScores = {
    {0.9, 0.8, 0.60, 0.10},
    {0.8, 0.8, 0.20, 0.20},
    {0.7, 0.3, 0.70, 0.30},
    {0.6, 0.3, 0.10, 0.40},
    {0.5, 0.1, 0.30, 0.45},
    {0.4, 0.1, 0.55, 0.05},
};
// clang-format on
const std::vector<std::vector<double>> kTargets = {
    {1, 1, 0, 0}, {0, 0, 0, 0}, {1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 0, 0}, {1, 0, 0, 0},
};

MultiLabelAccumulator hand_multilabel(at::ScalarType target_dtype = at::kFloat) {
  MultiLabelAccumulator acc(4);
  acc.add(rows_of(kScores, at::kFloat), rows_of(kTargets, target_dtype));
  return acc;
}

}  // namespace

TEST(MultiLabelMetrics, AveragePrecisionFollowsScikitLearn) {
  const MultiLabelMetrics m = hand_multilabel().compute({});
  ASSERT_EQ(m.ap.size(), 4u);
  // Label 0, ranked 0.9+ 0.8- 0.7+ 0.6- 0.5- 0.4+ with 3 positives: recall steps at
  // 0.9 (P 1), 0.7 (P 2/3), 0.4 (P 1/2): AP = 1/3 * (1 + 2/3 + 1/2) = 13/18.
  EXPECT_DOUBLE_EQ(m.ap[0], 13.0 / 18);
  // Label 1, tied groups {0.8: +-} {0.3: -+} {0.1: --}: points (R 1/2, P 1/2), (R 1, P 1/2).
  EXPECT_DOUBLE_EQ(m.ap[1], 0.5);
  EXPECT_EQ(m.ap[2], 0.0);
  EXPECT_EQ(m.ap[3], 0.0);
  EXPECT_EQ(m.positives, (std::vector<int64_t>{3, 2, 0, 0}));
  EXPECT_DOUBLE_EQ(m.mean_ap, (13.0 / 18 + 0.5) / 2);  // labels 2, 3 have no positives
}

TEST(MultiLabelMetrics, AveragePrecisionOfScikitLearnsDocExample) {
  // average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333...:
  // 0.8+ (R 1/2, P 1), 0.4- , 0.35+ (R 1, P 2/3): 1/2 + 1/2 * 2/3 = 5/6.
  MultiLabelAccumulator acc(1);
  acc.add(rows_of({{0.1}, {0.4}, {0.35}, {0.8}}, at::kFloat),
          rows_of({{0}, {0}, {1}, {1}}, at::kInt));
  EXPECT_DOUBLE_EQ(acc.compute({}).mean_ap, 5.0 / 6);
}

TEST(MultiLabelMetrics, F1AtHalf) {
  const MultiLabelMetrics m = hand_multilabel().compute({});
  EXPECT_EQ(m.thresholds, std::vector<float>(4, 0.5f));
  // score >= 0.5 predicts. Label 0: TP 2 (0.9, 0.7), FP 3 (0.8, 0.6, 0.5), FN 1: 4/8.
  EXPECT_DOUBLE_EQ(m.f1[0], 0.5);
  // Label 1: TP 1, FP 1, FN 1: 2/4.
  EXPECT_DOUBLE_EQ(m.f1[1], 0.5);
  // Label 2: FP 3, no positives: 0, but counted in the macro mean; label 3 is not.
  EXPECT_EQ(m.f1[2], 0.0);
  EXPECT_EQ(m.f1[3], 0.0);
  EXPECT_DOUBLE_EQ(m.macro_f1, 1.0 / 3);
  // Micro: TP 3, FP 3 + 1 + 3, FN 1 + 1: 6 / 15.
  EXPECT_DOUBLE_EQ(m.micro_f1, 0.4);
}

TEST(MultiLabelMetrics, TunedThresholdsMaximiseF1) {
  const MultiLabelAccumulator acc = hand_multilabel();
  const std::vector<float> t = acc.tune_thresholds();
  ASSERT_EQ(t.size(), 4u);
  // Label 0: F1 2/3 at both 0.7 and 0.4; the higher wins, and the threshold goes midway to
  // the next score below (0.6). Label 1: 2/3 at 0.3, midway to 0.1.
  EXPECT_NEAR(t[0], 0.65, 1e-6);
  EXPECT_NEAR(t[1], 0.2, 1e-6);
  EXPECT_EQ(t[2], 0.5f);  // no positives
  EXPECT_EQ(t[3], 0.5f);
  const MultiLabelMetrics tuned = acc.compute(t), half = acc.compute({});
  EXPECT_DOUBLE_EQ(tuned.f1[0], 2.0 / 3);
  EXPECT_DOUBLE_EQ(tuned.f1[1], 2.0 / 3);
  EXPECT_DOUBLE_EQ(tuned.macro_f1, 4.0 / 9);
  EXPECT_DOUBLE_EQ(tuned.micro_f1, 8.0 / 15);  // TP 4, FP 1 + 2 + 3, FN 1
  EXPECT_GT(tuned.macro_f1, half.macro_f1);
  EXPECT_GT(tuned.micro_f1, half.micro_f1);
  EXPECT_EQ(tuned.mean_ap, half.mean_ap);  // AP does not depend on thresholds

  // No observed score does better than the chosen one, for every label with positives.
  for (int64_t k = 0; k < 2; ++k) {
    for (const auto& row : kScores) {
      std::vector<float> other = t;
      other[k] = static_cast<float>(row[k]);
      EXPECT_LE(acc.compute(other).f1[k], tuned.f1[k]);
    }
  }
}

TEST(MultiLabelMetrics, TargetsMayBeFloatIntegerOrBool) {
  const std::string expected = hand_multilabel(at::kFloat).compute({}).to_json({});
  EXPECT_EQ(hand_multilabel(at::kLong).compute({}).to_json({}), expected);
  EXPECT_EQ(hand_multilabel(at::kBool).compute({}).to_json({}), expected);
}

TEST(MultiLabelMetrics, BatchesEqualOneBatch) {
  at::manual_seed(4);
  const int64_t n = 60, k = 5;
  // Rounded scores so that many tie.
  const at::Tensor scores = at::round(at::rand({n, k}) * 10) / 10;
  const at::Tensor targets = (at::rand({n, k}) < 0.3).to(at::kFloat);
  MultiLabelAccumulator whole(k);
  whole.add(scores, targets);
  MultiLabelAccumulator parts(k);
  int64_t at_row = 0;
  for (int64_t size : {1, 20, 0, 39}) {
    parts.add(scores.narrow(0, at_row, size), targets.narrow(0, at_row, size));
    at_row += size;
  }
  EXPECT_EQ(parts.count(), n);
  EXPECT_EQ(whole.tune_thresholds(), parts.tune_thresholds());
  EXPECT_EQ(whole.compute({}).to_json({}), parts.compute({}).to_json({}));
  const std::vector<float> t = whole.tune_thresholds();
  EXPECT_EQ(whole.compute(t).to_json({}), parts.compute(t).to_json({}));
}

TEST(MultiLabelMetrics, JsonNamesTheLabels) {
  const MultiLabelAccumulator acc = hand_multilabel();
  const MultiLabelMetrics m = acc.compute(acc.tune_thresholds());
  const auto j = nlohmann::json::parse(m.to_json({"red", "blue", "green", "plain"}));
  EXPECT_EQ(j.at("count").get<int64_t>(), 6);
  EXPECT_DOUBLE_EQ(j.at("mean_ap").get<double>(), 11.0 / 18);
  EXPECT_EQ(j.at("per_label").at(0).at("label").get<std::string>(), "red");
  EXPECT_EQ(j.at("per_label").at(0).at("positives").get<int64_t>(), 3);
  EXPECT_NEAR(j.at("per_label").at(0).at("threshold").get<double>(), 0.65, 1e-6);
  EXPECT_THROW(m.to_json({"red"}), Error);
}

TEST(MultiLabelMetrics, RejectsBadInputWithoutKeepingIt) {
  MultiLabelAccumulator acc(2);
  const at::Tensor scores = rows_of({{0.2, 0.9}, {0.6, 0.1}}, at::kFloat);
  const at::Tensor targets = rows_of({{0, 1}, {1, 0}}, at::kFloat);
  EXPECT_THROW(MultiLabelAccumulator(0), Error);
  EXPECT_THROW(acc.add(at::rand({2, 3}), at::zeros({2, 3})), Error);
  EXPECT_THROW(acc.add(scores, targets.view({4})), Error);
  EXPECT_THROW(acc.add(scores, targets.narrow(0, 0, 1)), Error);
  EXPECT_THROW(acc.add(scores.to(at::kLong), targets), Error);
  EXPECT_TRUE(throws_with([&] { acc.add(scores * 6 - 3, targets); }, "not logits"));
  EXPECT_TRUE(throws_with([&] { acc.add(scores, targets * 2); }, "multi-hot"));
  EXPECT_EQ(acc.count(), 0);
  acc.add(scores, targets);
  EXPECT_EQ(acc.count(), 2);
  EXPECT_THROW(acc.compute({0.5f}), Error);
  EXPECT_THROW(acc.compute({0.5f, NAN}), Error);
  EXPECT_DOUBLE_EQ(acc.compute({}).micro_f1, 1.0);
}
