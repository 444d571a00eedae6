// The names of what a run (train, pretrain) writes in its directory: one list for the
// writers and for what `--overwrite` removes.
#pragma once

namespace vitrine::train::run_files {

constexpr const char* kLog = "metrics.jsonl";          ///< one JSON line per epoch
constexpr const char* kState = "state";                ///< resumable state (folder)
constexpr const char* kBest = "best";                  ///< best model so far (folder)
constexpr const char* kLast = "last";                  ///< last model (folder)
constexpr const char* kTestMetrics = "test_metrics.json";
constexpr const char* kReport = "report.html";
constexpr const char* kLossChart = "loss.svg";
constexpr const char* kAccuracyChart = "accuracy.svg";
constexpr const char* kConfusionChart = "confusion.svg";

constexpr const char* kFiles[] = {kLog,    kTestMetrics, kReport,
                                  kLossChart, kAccuracyChart, kConfusionChart};
/// Folders, each replaced whole through siblings named with these suffixes.
constexpr const char* kFolders[] = {kState, kBest, kLast};
constexpr const char* kFolderSuffixes[] = {".new", ".old", ".saving"};

}  // namespace vitrine::train::run_files
