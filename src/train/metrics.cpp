#include "vitrine/train/metrics.h"

#include "vitrine/core/error.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>

namespace vitrine::train {

namespace {

using ordered_json = nlohmann::ordered_json;

// A float softmax underflows to exactly 0 for a confidently wrong prediction; flooring the
// true-class probability at float's epsilon (as scikit-learn's log_loss does for float32
// input) keeps one such sample from making the mean loss infinite.
constexpr double kProbabilityFloor = std::numeric_limits<float>::epsilon();
// Softmax rows sum to 1 up to rounding; bf16 outputs round each value to 2^-9 relative, so
// allow 1e-2 before deciding the caller passed logits or sigmoid outputs.
constexpr double kRowSumTolerance = 1e-2;
constexpr double kRangeTolerance = 1e-6;

std::string shape_of(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

double ratio(double num, double den) {
  return den > 0 ? num / den : 0.0;
}

double f1_of(double precision, double recall) {
  return precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
}

/// F1 from counts: 2 TP / (2 TP + FP + FN), 0 when nothing is positive or predicted.
double f1_of_counts(int64_t tp, int64_t fp, int64_t fn) {
  return ratio(2.0 * static_cast<double>(tp), static_cast<double>(2 * tp + fp + fn));
}

/// The double whose shortest decimal is the float's: 0.7f is written 0.7, not
/// 0.699999988079071, and still reads back as 0.7f.
double shortest_double(float v) {
  char buf[32];
  const char* end = std::to_chars(buf, buf + sizeof(buf), v).ptr;
  double out = v;
  std::from_chars(buf, end, out);  // locale-independent, unlike strtod
  return out;
}

std::vector<std::string> names_or_indices(const std::vector<std::string>& names, size_t n,
                                          const char* what) {
  if (names.empty()) {
    std::vector<std::string> out;
    for (size_t i = 0; i < n; ++i) out.push_back(std::to_string(i));
    return out;
  }
  VT_CHECK(names.size() == n, "got ", names.size(), " ", what, " names for metrics over ", n, " ",
           what, "s; pass one name per ", what, " in index order, or none");
  return names;
}

}  // namespace

// ------------------------------------------------------------------------- single-label

ClassificationAccumulator::ClassificationAccumulator(int64_t num_classes)
    : num_classes_(num_classes) {
  VT_CHECK(num_classes >= 1,
           "a classifier needs at least one class, got num_classes = ", num_classes);
  top_k_ = std::min<int64_t>(5, num_classes);
  confusion_.assign(static_cast<size_t>(num_classes * num_classes), 0);
  bin_count_.assign(kCalibrationBins, 0);
  bin_confidence_.assign(kCalibrationBins, 0.0);
  bin_correct_.assign(kCalibrationBins, 0);
}

void ClassificationAccumulator::add(const at::Tensor& probabilities, const at::Tensor& targets) {
  const int64_t K = num_classes_;
  VT_CHECK(probabilities.defined() && targets.defined(),
           "classification metrics need both probabilities and targets; got an undefined tensor");
  VT_CHECK(probabilities.dim() == 2 && probabilities.size(1) == K,
           "probabilities must have shape (N, ", K, ") for ", K, " classes, got ",
           shape_of(probabilities));
  VT_CHECK(at::isFloatingType(probabilities.scalar_type()),
           "probabilities must be floating point (softmax outputs), got ",
           probabilities.scalar_type());
  const int64_t n = probabilities.size(0);
  VT_CHECK(targets.dim() == 1 && targets.size(0) == n, "targets must have shape (", n,
           ") to match probabilities ", shape_of(probabilities), ", got ", shape_of(targets));
  VT_CHECK(at::isIntegralType(targets.scalar_type(), /*includeBool=*/false),
           "targets must hold integer class indices, got ", targets.scalar_type(),
           "; for multi-hot targets use MultiLabelAccumulator");
  if (n == 0) return;

  const at::Tensor p_t = probabilities.detach().to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor y_t = targets.detach().to(at::kCPU, at::kLong).contiguous();
  const auto p = p_t.accessor<double, 2>();
  const auto y = y_t.accessor<int64_t, 1>();

  // Validate the whole batch first so that a rejected batch leaves the totals untouched.
  for (int64_t i = 0; i < n; ++i) {
    VT_CHECK(y[i] >= 0 && y[i] < K, "target ", y[i], " of sample ", i,
             " is not a class index in [0, ", K, "); check the label mapping");
    double sum = 0;
    for (int64_t j = 0; j < K; ++j) {
      const double v = p[i][j];
      VT_CHECK(v >= -kRangeTolerance && v <= 1 + kRangeTolerance, "probability ", v, " (sample ", i,
               ", class ", j, ") is not in [0, 1]; pass softmax outputs, not logits");
      sum += v;
    }
    VT_CHECK(std::abs(sum - 1) <= kRowSumTolerance, "probabilities of sample ", i, " sum to ", sum,
             ", not 1; pass softmax outputs (not logits or sigmoid scores)");
  }

  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = y[i];
    const double p_true = p[i][t];
    int64_t pred = 0;
    int64_t rank = 0;  // classes ranked above the true one; ties go to the lower index
    for (int64_t j = 0; j < K; ++j) {
      if (p[i][j] > p[i][pred]) pred = j;
      if (p[i][j] > p_true || (p[i][j] == p_true && j < t)) ++rank;
    }
    const bool correct = pred == t;
    VT_DCHECK(correct == (rank == 0));
    ++count_;
    top1_hits_ += correct ? 1 : 0;
    top_k_hits_ += rank < top_k_ ? 1 : 0;
    loss_sum_ -= std::log(std::max(p_true, kProbabilityFloor));
    ++confusion_[static_cast<size_t>(t * K + pred)];

    // Bins are (b/15, (b+1)/15], the convention of Guo et al. (2017).
    const double confidence = p[i][pred];
    const int bin = std::clamp(static_cast<int>(std::ceil(confidence * kCalibrationBins)) - 1, 0,
                               kCalibrationBins - 1);
    ++bin_count_[bin];
    bin_confidence_[bin] += confidence;
    bin_correct_[bin] += correct ? 1 : 0;
  }
}

ClassificationMetrics ClassificationAccumulator::compute() const {
  const int64_t K = num_classes_;
  ClassificationMetrics m;
  m.count = count_;
  const auto n = static_cast<double>(count_);
  m.top1 = ratio(static_cast<double>(top1_hits_), n);
  m.top5 = ratio(static_cast<double>(top_k_hits_), n);
  m.loss = ratio(loss_sum_, n);

  double ece = 0;
  for (int b = 0; b < kCalibrationBins; ++b) {
    // |accuracy - confidence| weighted by the bin's share: n_b cancels out.
    ece += std::abs(static_cast<double>(bin_correct_[b]) - bin_confidence_[b]);
  }
  m.ece = ratio(ece, n);

  m.confusion.assign(K, std::vector<int64_t>(K, 0));
  std::vector<int64_t> predicted(K, 0);
  for (int64_t t = 0; t < K; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      const int64_t c = confusion_[static_cast<size_t>(t * K + j)];
      m.confusion[t][j] = c;
      predicted[j] += c;
    }
  }
  double f1_sum = 0;
  int64_t f1_classes = 0;
  for (int64_t c = 0; c < K; ++c) {
    ClassMetrics cm;
    const int64_t tp = m.confusion[c][c];
    for (int64_t j = 0; j < K; ++j) cm.support += m.confusion[c][j];
    cm.precision = ratio(static_cast<double>(tp), static_cast<double>(predicted[c]));
    cm.recall = ratio(static_cast<double>(tp), static_cast<double>(cm.support));
    cm.f1 = f1_of(cm.precision, cm.recall);
    // A class absent from both the data and the predictions says nothing about the model.
    if (cm.support > 0 || predicted[c] > 0) {
      f1_sum += cm.f1;
      ++f1_classes;
    }
    m.per_class.push_back(cm);
  }
  m.macro_f1 = ratio(f1_sum, static_cast<double>(f1_classes));
  return m;
}

nlohmann::json ClassificationMetrics::top5_json() const {
  return has_top5() ? nlohmann::json(top5) : nlohmann::json(nullptr);
}

std::string ClassificationMetrics::to_json(const std::vector<std::string>& classes) const {
  const std::vector<std::string> names = names_or_indices(classes, per_class.size(), "class");
  ordered_json j;
  j["count"] = count;
  j["top1"] = top1;
  j["top5"] = top5_json();
  j["macro_f1"] = macro_f1;
  j["ece"] = ece;
  j["loss"] = loss;
  ordered_json rows = ordered_json::array();
  for (size_t c = 0; c < per_class.size(); ++c) {
    ordered_json r;
    r["class"] = names[c];
    r["precision"] = per_class[c].precision;
    // A class without samples has no recall: null, as the report's "n/a", not a 0 that reads
    // as a class the model never finds.
    const bool held = per_class[c].support > 0;
    r["recall"] = held ? ordered_json(per_class[c].recall) : ordered_json(nullptr);
    r["f1"] = held ? ordered_json(per_class[c].f1) : ordered_json(nullptr);
    r["support"] = per_class[c].support;
    rows.push_back(std::move(r));
  }
  j["per_class"] = std::move(rows);
  j["classes"] = names;
  j["confusion"] = confusion;  // rows: true class, columns: predicted class
  return j.dump(2);
}

// ------------------------------------------------------------------------- multi-label

MultiLabelAccumulator::MultiLabelAccumulator(int64_t num_labels) : num_labels_(num_labels) {
  VT_CHECK(num_labels >= 1,
           "multi-label metrics need at least one label, got num_labels = ", num_labels);
}

void MultiLabelAccumulator::add(const at::Tensor& scores, const at::Tensor& targets) {
  const int64_t K = num_labels_;
  VT_CHECK(scores.defined() && targets.defined(),
           "multi-label metrics need both scores and targets; got an undefined tensor");
  VT_CHECK(scores.dim() == 2 && scores.size(1) == K, "scores must have shape (N, ", K, ") for ", K,
           " labels, got ", shape_of(scores));
  VT_CHECK(at::isFloatingType(scores.scalar_type()),
           "scores must be floating point (sigmoid outputs), got ", scores.scalar_type());
  VT_CHECK(targets.sizes() == scores.sizes(), "targets must be multi-hot with the shape of scores ",
           shape_of(scores), ", got ", shape_of(targets));
  const int64_t n = scores.size(0);
  if (n == 0) return;

  const at::Tensor s_t = scores.detach().to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor y_t = targets.detach().to(at::kCPU, at::kDouble).contiguous();
  const auto s = s_t.accessor<float, 2>();
  const auto y = y_t.accessor<double, 2>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      VT_CHECK(s[i][k] >= 0.0f && s[i][k] <= 1.0f, "score ", s[i][k], " (sample ", i, ", label ", k,
               ") is not in [0, 1]; pass sigmoid outputs, not logits");
      VT_CHECK(y[i][k] == 0.0 || y[i][k] == 1.0, "target ", y[i][k], " (sample ", i, ", label ", k,
               ") is not 0 or 1; targets must be multi-hot");
    }
  }
  scores_.reserve(scores_.size() + static_cast<size_t>(n * K));
  targets_.reserve(targets_.size() + static_cast<size_t>(n * K));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < K; ++k) {
      scores_.push_back(s[i][k]);
      targets_.push_back(y[i][k] != 0.0 ? 1 : 0);
    }
  }
  count_ += n;
}

std::vector<MultiLabelAccumulator::Ranked> MultiLabelAccumulator::ranked(int64_t k) const {
  std::vector<Ranked> out;
  out.reserve(static_cast<size_t>(count_));
  for (int64_t i = 0; i < count_; ++i) {
    const auto at = static_cast<size_t>(i * num_labels_ + k);
    out.push_back({scores_[at], targets_[at] != 0});
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const Ranked& a, const Ranked& b) { return a.score > b.score; });
  return out;
}

MultiLabelMetrics MultiLabelAccumulator::compute(const std::vector<float>& thresholds) const {
  const int64_t K = num_labels_;
  MultiLabelMetrics m;
  m.count = count_;
  m.thresholds = thresholds.empty() ? std::vector<float>(K, 0.5f) : thresholds;
  VT_CHECK(static_cast<int64_t>(m.thresholds.size()) == K, "got ", m.thresholds.size(),
           " thresholds for ", K, " labels; pass one per label, or none for 0.5 each");
  for (float t : m.thresholds) {
    VT_CHECK(std::isfinite(t), "threshold ", t, " is not a finite number");
  }

  double ap_sum = 0, f1_sum = 0;
  int64_t ap_labels = 0, f1_labels = 0;
  int64_t tp_all = 0, fp_all = 0, fn_all = 0;
  for (int64_t k = 0; k < K; ++k) {
    const std::vector<Ranked> r = ranked(k);
    int64_t positives = 0;
    for (const Ranked& e : r) positives += e.positive ? 1 : 0;
    m.positives.push_back(positives);

    // Average precision: one precision/recall point per distinct score, reached after
    // taking every sample tied at that score.
    double ap = 0, prev_recall = 0;
    int64_t tp = 0, fp = 0;
    if (positives > 0) {
      for (size_t i = 0; i < r.size();) {
        const float score = r[i].score;
        for (; i < r.size() && r[i].score == score; ++i) (r[i].positive ? tp : fp) += 1;
        const double recall = static_cast<double>(tp) / static_cast<double>(positives);
        const double precision = static_cast<double>(tp) / static_cast<double>(tp + fp);
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
      }
      ap_sum += ap;
      ++ap_labels;
    }
    m.ap.push_back(ap);

    tp = fp = 0;
    for (const Ranked& e : r) {
      if (e.score >= m.thresholds[k]) (e.positive ? tp : fp) += 1;
    }
    const int64_t fn = positives - tp;
    const double f1 = f1_of_counts(tp, fp, fn);
    m.f1.push_back(f1);
    if (positives > 0 || tp + fp > 0) {
      f1_sum += f1;
      ++f1_labels;
    }
    tp_all += tp;
    fp_all += fp;
    fn_all += fn;
  }
  m.mean_ap = ratio(ap_sum, static_cast<double>(ap_labels));
  m.macro_f1 = ratio(f1_sum, static_cast<double>(f1_labels));
  m.micro_f1 = f1_of_counts(tp_all, fp_all, fn_all);
  return m;
}

std::vector<float> MultiLabelAccumulator::tune_thresholds() const {
  std::vector<float> out(static_cast<size_t>(num_labels_), 0.5f);
  for (int64_t k = 0; k < num_labels_; ++k) {
    const std::vector<Ranked> r = ranked(k);
    int64_t positives = 0;
    for (const Ranked& e : r) positives += e.positive ? 1 : 0;
    if (positives == 0) continue;
    // Lowering the threshold through the scores in decreasing order adds one tie group of
    // predictions at a time; strict improvement keeps the highest of equally good cuts. The
    // threshold goes midway between that group and the next score below it, not on the
    // group's own score: a new photo scoring a little under the lowest validation positive
    // then still gets the label.
    double best = -1;
    int64_t tp = 0, fp = 0;
    for (size_t i = 0; i < r.size();) {
      const float score = r[i].score;
      for (; i < r.size() && r[i].score == score; ++i) (r[i].positive ? tp : fp) += 1;
      const double f1 = f1_of_counts(tp, fp, positives - tp);
      if (f1 > best) {
        best = f1;
        float cut = score;
        if (i < r.size()) {
          cut = static_cast<float>((static_cast<double>(score) + r[i].score) / 2);
          if (!(cut > r[i].score)) cut = score;  // adjacent floats: no midpoint between
        }
        out[static_cast<size_t>(k)] = cut;
      }
    }
  }
  return out;
}

std::string MultiLabelMetrics::to_json(const std::vector<std::string>& labels) const {
  const size_t n = ap.size();
  VT_CHECK(f1.size() == n && positives.size() == n && thresholds.size() == n,
           "multi-label metrics with per-label vectors of different lengths (ap ", n, ", f1 ",
           f1.size(), ", positives ", positives.size(), ", thresholds ", thresholds.size(),
           "); use the metrics MultiLabelAccumulator::compute returns");
  const std::vector<std::string> names = names_or_indices(labels, n, "label");
  ordered_json j;
  j["count"] = count;
  j["mean_ap"] = mean_ap;
  j["micro_f1"] = micro_f1;
  j["macro_f1"] = macro_f1;
  ordered_json rows = ordered_json::array();
  for (size_t k = 0; k < n; ++k) {
    ordered_json r;
    r["label"] = names[k];
    r["positives"] = positives[k];
    r["ap"] = ap[k];
    r["f1"] = f1[k];
    r["threshold"] = shortest_double(thresholds[k]);
    rows.push_back(std::move(r));
  }
  j["per_label"] = std::move(rows);
  return j.dump(2);
}

}  // namespace vitrine::train
