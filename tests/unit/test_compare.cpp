// Runs side by side: reading run directories, the terminal table and the HTML report.
#include "test_util.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/train/compare.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

using namespace vitrine;
namespace fs = std::filesystem;

namespace {

// A run directory as `vitrine train` leaves it: two epochs and test metrics.
void write_run(const std::string& dir, double top1, bool with_test = true) {
  fs::create_directories(dir);
  std::ofstream log(dir + "/metrics.jsonl");
  for (int e = 1; e <= 2; ++e) {
    train::EpochRecord r;
    r.epoch = e;
    r.lr = 1e-3;
    r.train_loss = 1.0 / e;
    r.train_top1 = 0.5;
    r.seconds = 10;
    r.has_val = true;
    r.val_top1 = top1 - 0.1 / e;
    log << r.to_json() << "\n";
  }
  if (with_test) {
    const nlohmann::json test{{"count", 4},      {"top1", top1},
                              {"top5", nullptr}, {"macro_f1", top1 - 0.01},
                              {"ece", 0.05},     {"loss", 0.4},
                              {"classes", {"bag", "shoe"}},
                              {"confusion", {{2, 0}, {1, 1}}},
                              {"photos_sha256", "5eed"}};
    std::ofstream(dir + "/test_metrics.json") << test.dump(2);
  }
}

// A multi-label run: validation mAP per epoch and test mAP / F1.
void write_multi_label_run(const std::string& dir, double map) {
  fs::create_directories(dir);
  std::ofstream log(dir + "/metrics.jsonl");
  for (int e = 1; e <= 2; ++e) {
    train::EpochRecord r;
    r.epoch = e;
    r.train_loss = 1.0 / e;
    r.seconds = 10;
    r.has_val = true;
    r.multi_label = true;
    r.val_map = map - 0.1 / e;
    r.val_micro_f1 = 0.5;
    log << r.to_json() << "\n";
  }
  const nlohmann::json test{{"count", 4},         {"mean_ap", map},
                            {"micro_f1", 0.625},  {"macro_f1", 0.5},
                            {"per_label", nlohmann::json::array()}};
  std::ofstream(dir + "/test_metrics.json") << test.dump(2);
}

}  // namespace

TEST(Compare, MultiLabelRunsAreScoredByMapAndF1) {
  const std::string dir = test::temp_dir("compare_multi");
  write_multi_label_run(dir + "/a", 0.8125);
  write_multi_label_run(dir + "/b", 0.6875);
  const std::vector<train::RunSummary> runs = {train::read_run("tags a", dir + "/a"),
                                               train::read_run("tags b", dir + "/b")};
  ASSERT_TRUE(runs[0].has_test);
  EXPECT_TRUE(runs[0].multi_label);
  EXPECT_DOUBLE_EQ(runs[0].test_map, 0.8125);
  const std::string table = train::comparison_table(runs);
  EXPECT_CONTAINS(table, "test mAP");
  EXPECT_CONTAINS(table, "81.25%");
  EXPECT_CONTAINS(table, "0.6250");
  EXPECT_EQ(table.find("top-1"), std::string::npos) << table;

  const std::string page = dir + "/report.html";
  train::write_comparison_report(page, "tags", runs, {});
  const std::string html = read_text_file(page);
  EXPECT_CONTAINS(html, "Validation mAP");
  EXPECT_CONTAINS(html, "81.25%");
  EXPECT_EQ(html.find("top-1"), std::string::npos);
  EXPECT_EQ(html.find("Confusion"), std::string::npos);

  // A multi-label run with neither validation nor test metrics is one by its model.
  write_multi_label_run(dir + "/d", 0.5);
  fs::remove(dir + "/d/test_metrics.json");
  std::ofstream(dir + "/d/metrics.jsonl") << "{\"epoch\":1,\"lr\":0.001,\"train_loss\":1,"
                                             "\"train_top1\":0.5,\"seconds\":1,"
                                             "\"img_per_s\":1}\n";
  fs::create_directories(dir + "/d/last");
  std::ofstream(dir + "/d/last/config.json") << R"({"task": "multi_label"})";
  const auto untested = train::read_run("untested", dir + "/d");
  EXPECT_FALSE(untested.has_test);
  EXPECT_TRUE(untested.multi_label);
  const std::string with_dashes = train::comparison_table({runs[0], untested});
  EXPECT_CONTAINS(with_dashes, "untested");
  EXPECT_CONTAINS(with_dashes, " - ");
  EXPECT_CONTAINS(with_dashes, "-: no test split in the run");
  EXPECT_CONTAINS(with_dashes, "untested: vitrine eval --model " + dir + "/d/last --data");
  EXPECT_EQ(train::comparison_table({runs[0]}).find("no test split"), std::string::npos);

  // A single-label run beside them has no score in common.
  write_run(dir + "/c", 0.75);
  const std::vector<train::RunSummary> mixed = {runs[0], train::read_run("classes", dir + "/c")};
  EXPECT_CONTAINS(test::error_of([&] { train::comparison_table(mixed); }),
                  "'tags a' is a multi-label run and 'classes' a single-label one");
  EXPECT_CONTAINS(test::error_of([&] { train::write_comparison_report(page, "t", mixed, {}); }),
                  "compare runs of one kind");
  fs::remove_all(dir);
}

TEST(Compare, ReadsRunsAndTabulatesThem) {
  const std::string dir = test::temp_dir("compare");
  write_run(dir + "/a", 0.75);
  write_run(dir + "/b", 0.875);
  write_run(dir + "/c", 0.5, /*with_test=*/false);
  const std::vector<train::RunSummary> runs = {train::read_run("from scratch", dir + "/a"),
                                               train::read_run("pretrained", dir + "/b"),
                                               train::read_run("no test", dir + "/c")};
  EXPECT_EQ(runs[0].history.size(), 2u);
  EXPECT_DOUBLE_EQ(runs[0].train_seconds, 20);
  EXPECT_TRUE(runs[1].has_test);
  EXPECT_DOUBLE_EQ(runs[1].test_top1, 0.875);
  EXPECT_TRUE(std::isnan(runs[1].test_top5));  // two classes: no top-5 figure
  EXPECT_EQ(runs[1].test_photos, "5eed");
  EXPECT_EQ(runs[1].confusion, (std::vector<std::vector<int64_t>>{{2, 0}, {1, 1}}));
  EXPECT_FALSE(runs[2].has_test);

  const std::string table = train::comparison_table(runs);
  EXPECT_CONTAINS(table, "from scratch");
  EXPECT_CONTAINS(table, "75.00%");
  EXPECT_CONTAINS(table, "87.50%");
  // The header, three runs, what the untested run's dashes mean and how to score it.
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 6);
  EXPECT_CONTAINS(table, "-: no test split in the run");
  EXPECT_EQ(train::test_set_difference(runs), "");
  auto other = runs;
  other[1].test_count = 6;
  EXPECT_CONTAINS(train::test_set_difference(other), "'from scratch' was tested on 4 photos "
                                                     "and 'pretrained' on 6");
  other[1].test_count = 4;
  other[1].classes = {"shoe", "bag"};  // the same classes in another order
  EXPECT_EQ(train::test_set_difference(other), "");
  other[1].classes = {"bag", "hat"};
  EXPECT_CONTAINS(train::test_set_difference(other),
                  "'from scratch' and 'pretrained' were tested on other classes: their test "
                  "figures do not compare");
  // As many photos of the same classes, but others (another --data-seed): said where both
  // runs recorded which photos.
  other[1].classes = runs[0].classes;
  other[0].test_photos = "aaaa";
  other[1].test_photos = "bbbb";
  EXPECT_CONTAINS(train::test_set_difference(other),
                  "'from scratch' and 'pretrained' were tested on other photos");
  other[1].test_photos = "";  // an older run: nothing to tell
  EXPECT_EQ(train::test_set_difference(other), "");

  train::ComparedSample s;
  s.image_png_base64 =  // a 1x1 grey PNG
      "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==";
  s.truth = "shoe";
  s.predicted = {"bag", "shoe", "shoe"};
  s.score = {0.6, 0.9, 0.7};
  const std::string page = dir + "/report.html";
  train::write_comparison_report(page, "A & B", runs, {s});
  const std::string html = read_text_file(page);
  EXPECT_CONTAINS(html, "A &amp; B");
  EXPECT_CONTAINS(html, "data-series=\"pretrained\"");
  EXPECT_CONTAINS(html, "✗ from scratch: bag");
  EXPECT_CONTAINS(html, "✓ pretrained: shoe");
  // One confusion matrix per run with test metrics.
  size_t matrices = 0;
  for (size_t at = html.find("<h3>"); at != std::string::npos; at = html.find("<h3>", at + 1)) {
    ++matrices;
  }
  EXPECT_EQ(matrices, 2u);

  s.predicted.pop_back();
  EXPECT_CONTAINS(test::error_of([&] { train::write_comparison_report(page, "t", runs, {s}); }),
                  "one per run");
  fs::remove_all(dir);
}

TEST(Compare, BadRunDirectoriesAreExplained) {
  const std::string dir = test::temp_dir("compare_bad");
  fs::create_directories(dir + "/empty");
  EXPECT_CONTAINS(test::error_of([&] { train::read_run("x", dir + "/empty"); }),
                  "not a training run");
  write_run(dir + "/run", 0.5);
  fs::create_directories(dir + "/run/best");
  std::ofstream(dir + "/run/best/config.json") << "{}";
  EXPECT_CONTAINS(test::error_of([&] { train::read_run("x", dir + "/run/best/"); }),
                  "is a model of the run " + dir + "/run; give the run's folder");
  write_run(dir + "/broken", 0.5);
  std::ofstream(dir + "/broken/metrics.jsonl", std::ios::app) << "{\"epoch\": 3}\n";
  EXPECT_CONTAINS(test::error_of([&] { train::read_run("x", dir + "/broken"); }),
                  "metrics.jsonl:3");
  EXPECT_CONTAINS(test::error_of([&] { train::write_comparison_report(dir + "/r.html", "t", {}, {}); }),
                  "at least one run");
  fs::remove_all(dir);
}
