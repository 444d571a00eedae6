// Several training runs side by side: `vitrine compare` reads each run directory
// (metrics.jsonl, test_metrics.json, best/) and prints a table and writes one HTML
// report with their curves, confusion matrices and the predictions each model makes on
// the same test photos. The label-efficiency study (from scratch vs pretrained vs linear
// probe) is its first user.
#pragma once

#include "vitrine/train/trainer.h"

#include <cstdint>
#include <string>
#include <vector>

namespace vitrine::train {

struct RunSummary {
  std::string name;  ///< as the user calls it, e.g. "from scratch"
  std::string dir;   ///< the run directory
  std::vector<EpochRecord> history;
  double train_seconds = 0;  ///< the epochs' wall time, summed
  bool has_test = false;     ///< test_metrics.json exists
  bool multi_label = false;  ///< scored by mAP and F1 (test_map, test_micro_f1, test_macro_f1)
  double test_top1 = 0, test_top5 = 0, test_macro_f1 = 0, test_ece = 0;
  double test_map = 0, test_micro_f1 = 0;  ///< multi-label
  int64_t test_count = 0;
  std::vector<std::vector<int64_t>> confusion;  ///< test, rows true, columns predicted
  std::vector<std::string> classes;
  std::string test_photos;  ///< a digest of which photos were tested; "" where not recorded
};

/// Reads a `vitrine train` run directory; throws naming what is missing or malformed.
RunSummary read_run(const std::string& name, const std::string& dir);

/// Throws unless all runs are single-label or all multi-label (their scores differ).
void check_one_kind(const std::vector<RunSummary>& runs);

/// Empty when every run with test metrics was tested on as many photos of the same
/// classes (the same photos, where both runs recorded which); otherwise a warning naming
/// two runs whose test sets differ (their test figures do not compare).
std::string test_set_difference(const std::vector<RunSummary>& runs);

/// A plain-text table (one row per run: test top-1, macro-F1, ECE, epochs, time; for
/// multi-label runs test mAP, micro-F1, macro-F1, epochs, time) for the terminal, with a
/// header and aligned columns. Throws when single-label and multi-label runs are mixed.
std::string comparison_table(const std::vector<RunSummary>& runs);

/// One test photo with each run's prediction.
struct ComparedSample {
  std::string image_png_base64;
  std::string truth;
  std::vector<std::string> predicted;  ///< one per run, in run order
  std::vector<double> score;           ///< the predicted class's probability, per run
};

/// Writes `path` (self-contained HTML): the table, validation top-1 and training loss of
/// every run on shared charts, each run's test confusion matrix, and the sample grid.
/// `samples_heading` names where the photos come from ("Test photos").
void write_comparison_report(const std::string& path, const std::string& title,
                             const std::vector<RunSummary>& runs,
                             const std::vector<ComparedSample>& samples,
                             const std::string& samples_heading = "Test photos");

}  // namespace vitrine::train
