// Inference throughput of one model in one precision: prints a JSON line with
// img/s and ms per batch. bench/inference.py runs it beside PyTorch eager in the
// same run and prints the ratios.
#include "vitrine/core/threads.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"
#include "vitrine/models/registry.h"

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  std::string arch = "resnet50", precision = "fp32", model_dir;
  int64_t batch = 32, iters = 5, warmup = 2;
  int threads = 0;
  CLI::App app("Vitrine inference throughput (see bench/inference.py)");
  app.add_option("--arch", arch, "Architecture, randomly initialised");
  app.add_option("--model", model_dir, "A model directory instead of --arch");
  app.add_option("--precision", precision, "fp32 | bf16")->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--batch", batch, "Images per batch")->check(CLI::PositiveNumber);
  app.add_option("--iters", iters, "Timed batches")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "Untimed batches first")->check(CLI::NonNegativeNumber);
  app.add_option("--threads", threads, "Compute threads (0: all cores)");
  CLI11_PARSE(app, argc, argv);
  try {
    threads = vitrine::set_threads(threads);
    at::manual_seed(0);
    auto model = model_dir.empty() ? vitrine::models::create_model(vitrine::models::model_preset(arch))
                                   : vitrine::models::load_model(model_dir);
    vitrine::models::Predictor predictor(model, vitrine::models::parse_precision(precision));
    const int64_t size = predictor.config().image_size;
    const at::Tensor x = at::randn({batch, predictor.config().in_channels, size, size});
    for (int64_t i = 0; i < warmup; ++i) predictor.logits(x);
    double best = 1e30, total = 0;
    for (int64_t i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      predictor.logits(x);
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, s);
      total += s;
    }
    std::cout << nlohmann::json{{"arch", predictor.config().arch},
                                {"precision", precision},
                                {"batch", batch},
                                {"threads", threads},
                                {"ms_per_batch", 1000 * total / iters},
                                {"best_ms_per_batch", 1000 * best},
                                {"img_per_s", batch * iters / total}}
                     .dump()
              << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
