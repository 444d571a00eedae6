#include "vitrine/train/compare.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/text.h"
#include "vitrine/train/run_files.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <filesystem>
#include <sstream>

namespace vitrine::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

RunSummary read_run(const std::string& name, const std::string& dir) {
  RunSummary r;
  r.name = name;
  r.dir = dir;
  const fs::path log = fs::path(dir) / run_files::kLog;
  if (!fs::exists(log)) {
    fs::path path = fs::absolute(dir).lexically_normal();
    if (!path.has_filename()) path = path.parent_path();  // "run/best/"
    const fs::path parent = path.parent_path();
    VT_CHECK(!fs::exists(fs::path(dir) / "config.json") ||
                 !fs::exists(parent / run_files::kLog),
             dir, " is a model of the run ", parent.string(), "; give the run's folder, ",
             parent.string());
    VT_FAIL(dir, " is not a training run (no metrics.jsonl); give the --out folder of "
            "`vitrine train`");
  }
  std::istringstream lines(read_text_file(log.string()));
  int64_t line_no = 0;
  for (std::string line; std::getline(lines, line);) {
    ++line_no;
    if (line.empty()) continue;
    try {
      r.history.push_back(EpochRecord::from_json(line));
    } catch (const json::exception& e) {
      VT_FAIL(log.string(), ":", line_no, ": not a metrics line (", e.what(), ")");
    }
    r.train_seconds += r.history.back().seconds;
    r.multi_label = r.multi_label || r.history.back().multi_label;
  }
  // The run's task is its model's (a run with neither validation nor test metrics shows it
  // nowhere else).
  for (const char* model : {"best", "last"}) {
    const fs::path config = fs::path(dir) / model / "config.json";
    if (!fs::exists(config)) continue;
    const json c = json::parse(read_text_file(config.string()), nullptr, false);
    if (c.is_object() && c.contains("task")) {
      r.multi_label = c["task"] == "multi_label";
      break;
    }
  }
  const fs::path test = fs::path(dir) / run_files::kTestMetrics;
  if (fs::exists(test)) {
    try {
      const json j = json::parse(read_text_file(test.string()));
      if (j.contains("mean_ap")) {
        r.multi_label = true;
        r.test_map = j.at("mean_ap");
        r.test_micro_f1 = j.at("micro_f1");
        r.test_macro_f1 = j.at("macro_f1");
        r.test_count = j.at("count");
        r.test_photos = j.value("photos_sha256", "");
        r.has_test = true;
        return r;
      }
      r.test_top1 = j.at("top1");
      // null with five classes or fewer, where top-5 is 1 by definition
      r.test_top5 = j.at("top5").is_null() ? std::numeric_limits<double>::quiet_NaN()
                                           : j.at("top5").get<double>();
      r.test_macro_f1 = j.at("macro_f1");
      r.test_ece = j.at("ece");
      r.test_count = j.at("count");
      r.test_photos = j.value("photos_sha256", "");
      r.confusion = j.at("confusion").get<std::vector<std::vector<int64_t>>>();
      r.classes = j.at("classes").get<std::vector<std::string>>();
    } catch (const json::exception& e) {
      VT_FAIL(test.string(), " is malformed (", e.what(), "); the run writes it after "
              "training: delete it to compare the run without test figures");
    }
    r.has_test = true;
  }
  return r;
}

void check_one_kind(const std::vector<RunSummary>& runs) {
  for (const auto& r : runs) {
    VT_CHECK(r.multi_label == runs.front().multi_label, "'", runs.front().name, "' is a ",
             runs.front().multi_label ? "multi" : "single", "-label run and '", r.name,
             "' a ", r.multi_label ? "multi" : "single", "-label one: their scores do not "
             "compare; compare runs of one kind");
  }
}

std::string test_set_difference(const std::vector<RunSummary>& runs) {
  const RunSummary* first = nullptr;
  for (const auto& r : runs) {
    if (!r.has_test) continue;
    if (!first) {
      first = &r;
    } else {
      // The same classes in another order (a head kept from --init) are the same test.
      auto mine = r.classes, theirs = first->classes;
      std::sort(mine.begin(), mine.end());
      std::sort(theirs.begin(), theirs.end());
      std::string differ;
      if (r.test_count != first->test_count) {
        differ = "'" + first->name + "' was tested on " + std::to_string(first->test_count) +
                 " photos and '" + r.name + "' on " + std::to_string(r.test_count);
      } else if (mine != theirs) {
        differ = "'" + first->name + "' and '" + r.name + "' were tested on other classes";
      } else if (!r.test_photos.empty() && !first->test_photos.empty() &&
                 r.test_photos != first->test_photos) {
        // Another --data-seed or split carves other photos of the same count.
        differ = "'" + first->name + "' and '" + r.name + "' were tested on other photos";
      }
      if (!differ.empty()) {
        return differ + ": their test figures do not compare (test both on the same photos "
                        "with `vitrine eval --model A --compare B --data ...`)";
      }
    }
  }
  return {};
}

std::string comparison_table(const std::vector<RunSummary>& runs) {
  check_one_kind(runs);
  const bool multi = !runs.empty() && runs.front().multi_label;
  size_t width = 3;
  for (const auto& r : runs) width = std::max(width, display_width(r.name));
  auto row = [&](const std::string& name, const std::string& rest) {
    return pad_right(name, width) + "  " + rest + "\n";
  };
  char buf[160];
  if (multi) {
    std::snprintf(buf, sizeof buf, "%10s %9s %9s %7s %9s", "test mAP", "micro-F1", "macro-F1",
                  "epochs", "time");
  } else {
    std::snprintf(buf, sizeof buf, "%10s %9s %7s %7s %9s", "test top-1", "macro-F1", "ECE",
                  "epochs", "time");
  }
  std::string out = row("run", buf);
  for (const auto& r : runs) {
    if (r.has_test && multi) {
      std::snprintf(buf, sizeof buf, "%9.2f%% %9.4f %9.4f %7zu %8.0fs", 100 * r.test_map,
                    r.test_micro_f1, r.test_macro_f1, r.history.size(), r.train_seconds);
    } else if (multi) {
      std::snprintf(buf, sizeof buf, "%10s %9s %9s %7zu %8.0fs", "-", "-", "-", r.history.size(),
                    r.train_seconds);
    } else if (r.has_test) {
      std::snprintf(buf, sizeof buf, "%9.2f%% %9.4f %7.4f %7zu %8.0fs", 100 * r.test_top1,
                    r.test_macro_f1, r.test_ece, r.history.size(), r.train_seconds);
    } else {
      std::snprintf(buf, sizeof buf, "%10s %9s %7s %7zu %8.0fs", "-", "-", "-", r.history.size(),
                    r.train_seconds);
    }
    out += row(r.name, buf);
  }
  bool untested = false;
  for (const auto& r : runs) {
    if (r.has_test) continue;
    if (!untested) out += "-: no test split in the run (test_metrics.json); score its model:\n";
    untested = true;
    // best/ where the run had validation photos to choose it on, else its last model.
    std::error_code ec;
    const std::string model = std::filesystem::is_directory(
                                  std::filesystem::path(r.dir) / "best", ec)
                                  ? "best"
                                  : "last";
    out += "   " + r.name + ": vitrine eval --model " +
           (std::filesystem::path(r.dir) / model).string() + " --data ...\n";
  }
  return out;
}

}  // namespace vitrine::train
