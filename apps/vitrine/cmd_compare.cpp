// `vitrine compare`: training runs side by side, as a table and one HTML report.
#include "commands.h"

#include "vitrine/core/error.h"
#include "vitrine/core/threads.h"
#include "vitrine/data/dataset.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/train/compare.h"
#include "vitrine/train/evaluate.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <iostream>
#include <memory>

namespace vitrine::cli {

void add_compare_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "compare", "Set training runs side by side: a table and one HTML report");
  struct Args {
    std::vector<std::string> runs;
    std::string out, title = "Vitrine: runs compared", data;
    int64_t samples = 24;
    double val_split = data::DataOptions{}.val_split, test_split = data::DataOptions{}.test_split;
    uint64_t data_seed = 0;
    std::string fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";
    int threads = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--run", a->runs, "NAME=RUN_DIR of a `vitrine train` run (repeat; in order)")
      ->required();
  cmd->add_option("--out", a->out, "The HTML report to write")->required();
  cmd->add_option("--title", a->title, "The report's title");
  cmd->add_option("--data", a->data,
                  "The runs' data: its test photos are shown with each best model's prediction");
  cmd->add_option("--val-split", a->val_split,
                  "Validation fraction of a --data root without val/ (default: the first run's)");
  cmd->add_option("--test-split", a->test_split,
                  "Test fraction of a --data root without test/ (default: the first run's)");
  cmd->add_option("--data-seed", a->data_seed,
                  "Seed of the carved splits of --data (as the runs were trained)")
      ->capture_default_str();
  cmd->add_option("--samples", a->samples, "How many test photos to show")
      ->check(CLI::Range(0, 200));
  cmd->add_option("--fashion-mnist-dir", a->fashion_mnist_dir, "Where the IDX files are");
  cmd->add_option("--threads", a->threads, "Compute threads (default: all cores)");
  cmd->callback([a, cmd, &status] {
    set_threads(a->threads);
    std::vector<train::RunSummary> runs;
    for (const auto& spec : a->runs) {
      const auto eq = spec.find('=');
      VT_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < spec.size(), "--run '", spec,
               "' is not NAME=RUN_DIR (e.g. --run \"from scratch=runs/scratch\")");
      runs.push_back(train::read_run(spec.substr(0, eq), spec.substr(eq + 1)));
    }
    train::check_one_kind(runs);
    if (const auto differ = train::test_set_difference(runs); !differ.empty()) {
      spdlog::warn("{}", differ);
    }
    std::vector<train::ComparedSample> samples;
    std::string heading = "Test photos";
    if (!a->data.empty() && a->samples > 0) {
      // The first run's own splits where the command line gives none, as eval takes them.
      adopt_training_split(cmd, (std::filesystem::path(runs.front().dir) / "best").string(),
                           a->data, a->val_split, a->test_split, a->data_seed);
      data::DataOptions d;
      d.source = a->data;
      d.val_split = a->val_split;
      d.test_split = a->test_split;
      d.seed = a->data_seed;
      d.fashion_mnist_dir = a->fashion_mnist_dir;
      const data::DataSplits splits = open_data_logged(d);
      const bool tested = splits.test && splits.test->size() > 0;
      const auto shown = tested ? splits.test : splits.val;
      VT_CHECK(shown && shown->size() > 0 && !splits.multi_label, a->data,
               " has no single-label test or validation photos to show; drop --data");
      if (!tested) {
        heading = "Validation photos (no test split: the best models were chosen on these)";
        spdlog::warn("{} has no test split (give --test-split as the runs were trained): the "
                     "report shows validation photos, on which each run chose its best model",
                     a->data);
      }
      // Spread over the split; an unreadable photo is passed over for the next one.
      const int64_t n = std::min<int64_t>(a->samples, shown->size());
      std::vector<int64_t> indices;
      for (int64_t k = 0; k < n; ++k) {
        for (int64_t i = std::max(k * shown->size() / n,
                                  indices.empty() ? int64_t{0} : indices.back() + 1);
             i < shown->size(); ++i) {
          try {
            train::ComparedSample sample;
            sample.image_png_base64 = train::png_base64(shown->image(i));
            sample.truth = splits.classes[shown->labels(i).at(0)];
            samples.push_back(std::move(sample));
            indices.push_back(i);
            break;
          } catch (const Error& e) {
            spdlog::warn("not shown: {}", e.what());
          }
        }
      }
      for (const auto& run : runs) {
        const std::string best = (std::filesystem::path(run.dir) / "best").string();
        auto model = models::load_model(best);
        VT_CHECK(model->config().labels == splits.classes, best, " does not predict the classes of ",
                 a->data, "; compare runs trained on this data");
        const auto predictions = train::predict_items(*model, *shown, indices);
        for (size_t k = 0; k < indices.size(); ++k) {
          const auto [pred, score] = predictions[k];
          samples[k].predicted.push_back(pred >= 0 ? splits.classes[pred] : "(unreadable)");
          samples[k].score.push_back(score);
        }
      }
    }
    train::write_comparison_report(a->out, a->title, runs, samples, heading);
    std::cout << train::comparison_table(runs);
    spdlog::info("report: {}", a->out);
    status = kExitOk;
  });
}

}  // namespace vitrine::cli
