// Inference throughput of one model in one precision: prints a JSON line with
// img/s and ms per batch. bench/inference.py runs it beside PyTorch eager in the
// same run and prints the ratios.
#include "models/onednn.h"
#include "vitrine/core/memory.h"
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
  std::string arch = "resnet50", precision = "fp32", engine = "auto", model_dir;
  int64_t batch = 32, iters = 5, warmup = 2;
  int threads = 0;
  CLI::App app("Vitrine inference throughput (see bench/inference.py)");
  app.add_option("--arch", arch, "Architecture, randomly initialised");
  app.add_option("--model", model_dir, "A model directory instead of --arch");
  app.add_option("--precision", precision, "fp32 | bf16 | int8 (an uncalibrated model is "
                 "calibrated on random images first: speed does not depend on the scales)")
      ->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  app.add_option("--engine", engine, "auto | fused | libtorch")
      ->check(CLI::IsMember({"auto", "fused", "libtorch"}));
  app.add_option("--batch", batch, "Images per batch")->check(CLI::PositiveNumber);
  app.add_option("--iters", iters, "Timed batches")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "Untimed batches first")->check(CLI::NonNegativeNumber);
  app.add_option("--threads", threads, "Compute threads (0: all cores)");
  bool peak = false;
  app.add_flag("--peak", peak,
               "Print the rate of a 2048^3 oneDNN matrix product in fp32, bf16 and int8 instead");
  CLI11_PARSE(app, argc, argv);
  try {
    vitrine::keep_freed_memory();  // as the vitrine binary does
    threads = vitrine::set_threads(threads);
    if (peak) {
      nlohmann::json out{{"threads", threads}};
      for (const char* p : {"fp32", "bf16", "int8"}) {
        out["peak_gflops"][p] = vitrine::models::onednn::matmul_peak_gflops(p);
      }
      std::cout << out.dump() << std::endl;
      return 0;
    }
    at::manual_seed(0);
    auto model = model_dir.empty() ? vitrine::models::create_model(vitrine::models::model_preset(arch))
                                   : vitrine::models::load_model(model_dir);
    if (precision == "int8" && model->config().int8_scales.empty()) {
      const auto& c = model->config();
      int left = 2;
      model->mutable_config().int8_scales = model->calibrate_int8([&]() -> at::Tensor {
        if (left-- <= 0) return {};
        return at::randn({8, c.in_channels, c.image_size, c.image_size});
      });
    }
    vitrine::models::Predictor predictor(model, vitrine::models::parse_precision(precision),
                                         vitrine::models::parse_engine(engine));
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
                                {"engine", vitrine::models::engine_name(predictor.engine())},
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
