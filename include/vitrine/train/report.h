// The run report of `vitrine train`: line charts of the training history, a confusion
// matrix and a self-contained HTML page. Everything is written by hand as SVG and HTML so
// the report opens in any browser, offline, years later, with nothing to install.
#pragma once

#include "vitrine/train/metrics.h"
#include "vitrine/train/trainer.h"

#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace vitrine::train {

/// Geometry of svg_line_chart, in SVG user units (the chart's viewBox is
/// `0 0 kWidth kHeight`). The plot area spans x in [kPlotLeft, kPlotRight] and y in
/// [kPlotTop, kPlotBottom]: the smallest x sits on the left edge and the largest on the
/// right edge (with a single distinct x, the points sit in the middle); the y axis runs from
/// its lowest tick on the bottom edge to its highest tick on the top edge, ticks in 1-2-5
/// steps that enclose every finite value. The legend sits right of the plot area.
struct LineChartLayout {
  static constexpr double kWidth = 560;
  static constexpr double kHeight = 340;
  static constexpr double kPlotLeft = 60;
  static constexpr double kPlotRight = 410;
  static constexpr double kPlotTop = 40;
  static constexpr double kPlotBottom = 284;
};

/// An SVG line chart: one or more named series over x (epochs), axes with ticks and labels,
/// a legend. Every series has one value per x. Non-finite values (NaN, inf) are skipped:
/// the line joins the finite points around them, and a series with none is only listed in
/// the legend. Each series is one `<polyline data-series="name">` (points "x,y" with two
/// decimals); points are also marked with circles when there are few of them.
std::string svg_line_chart(const std::string& title, const std::string& x_label,
                           const std::string& y_label, const std::vector<double>& x,
                           const std::vector<std::pair<std::string, std::vector<double>>>& series);

/// An SVG heat map of a confusion matrix (rows true, columns predicted), counts in the cells,
/// class names on both axes (rotated on x), colour by row-normalised value. Cells shrink with
/// the class count; counts that no longer fit move to the cells' tooltips, and axis labels are
/// thinned (every n-th) rather than overlapped. `classes` empty: classes are named by index.
std::string svg_confusion_matrix(const std::vector<std::vector<int64_t>>& confusion,
                                 const std::vector<std::string>& classes);

/// One test image in the report's sample grid.
struct ReportSample {
  std::string image_png_base64;  ///< a PNG, base64 (no data: prefix, no line breaks)
  std::string truth, predicted;  ///< class names
  double score = 0;              ///< the predicted class's probability, in [0, 1]
};

struct ReportInput {
  std::string title;  ///< e.g. "resnet18 on fashion-mnist"
  /// Key/value lines (command, data, model, best epoch...), shown in this order.
  std::vector<std::pair<std::string, std::string>> facts;
  std::vector<EpochRecord> history;
  std::vector<std::string> classes;
  bool multi_label = false;  ///< validation shown as mAP and F1 (val_map, val_micro_f1)
  const ClassificationMetrics* test = nullptr;  ///< optional: metrics on the held-out split
  const MultiLabelMetrics* test_multi_label = nullptr;  ///< the same, for multi-label runs
  std::vector<ReportSample> samples;            ///< optional: a grid of test images
};

/// One photo in a retrieval report: a query or a result.
struct RetrievalShown {
  std::string image_png_base64;  ///< a PNG, base64; empty when the photo could not be read
  std::string caption;           ///< e.g. the SKU and category
  double score = 0;              ///< similarity (results only)
  bool relevant = false;         ///< results: does it match the query
};

struct RetrievalExample {
  RetrievalShown query;
  std::vector<RetrievalShown> results;  ///< best first
};

struct RetrievalReport {
  std::string title;
  std::vector<std::pair<std::string, std::string>> facts;  ///< model, catalogue, queries...
  std::vector<std::pair<std::string, double>> metrics;     ///< e.g. ("mAP@10", 0.81)
  /// Per group (category): name, queries, precision@10.
  std::vector<std::tuple<std::string, int64_t, double>> groups;
  std::vector<RetrievalExample> examples;
};

/// Writes a self-contained HTML page of retrieval quality: the metrics, precision@10 per
/// category, and example queries with their results (relevant ones framed green).
void write_retrieval_report(const std::string& path, const RetrievalReport& report);

/// Writes `dir/report.html` (self-contained: inline SVG and CSS, images as data: URIs) and
/// `dir/loss.svg`, `dir/accuracy.svg`, `dir/confusion.svg` (the latter when test metrics
/// exist). Each file is written atomically (temporary file, then rename); `dir` must exist.
/// Accuracies are drawn in percent.
void write_report(const std::string& dir, const ReportInput& input);

}  // namespace vitrine::train
