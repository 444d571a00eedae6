// `vitrine bench`: inference speed of a model at the batch sizes, thread counts and
// precisions a user is choosing between (random images of the model's input shape).
#include "commands.h"

#include "vitrine/core/error.h"
#include "vitrine/core/json.h"
#include "vitrine/core/threads.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

namespace vitrine::cli {

void add_bench_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "bench", "Inference speed of a model: img/s and latency per batch size, threads, precision");
  struct Args {
    std::string model;
    std::vector<int64_t> batches{1, 32};
    std::vector<int> threads{0};
    std::vector<std::string> precisions{"fp32", "bf16"};
    std::vector<std::string> engines{"auto"};
    int64_t iters = 10, warmup = 2;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Model directory")->required();
  cmd->add_option("--batch", a->batches, "Batch sizes (default: 1 32)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  cmd->add_option("--threads", a->threads, "Compute thread counts (0: all cores; default 0)");
  auto* precision_opt =
      cmd->add_option("--precision", a->precisions,
                      "fp32, bf16 and/or int8 (default: fp32 and bf16, and int8 for a model "
                      "`vitrine optimize --int8` calibrated)")
          ->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  cmd->add_option("--engine", a->engines,
                  "fused (oneDNN, pre-packed and fused), libtorch (the reference) or auto "
                  "(fused where built); several to compare (default: auto)")
      ->check(CLI::IsMember({"auto", "fused", "libtorch"}));
  cmd->add_option("--iters", a->iters, "Timed batches per setting")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
  cmd->add_option("--warmup", a->warmup, "Untimed batches first")
      ->check(CLI::Range(int64_t{0}, int64_t{1000}));
  cmd->callback([a, precision_opt, &status] {
    auto model = models::load_model(a->model);
    const auto& cfg = model->config();
    const bool calibrated = !cfg.int8_scales.empty();
    if (precision_opt->count() == 0 && calibrated) a->precisions.push_back("int8");
    // Settings that cannot run are refused or skipped before anything is measured.
    std::vector<std::pair<std::string, std::string>> settings;  // engine, precision
    bool skipped = false;
    for (const auto& e : a->engines) {
      for (const auto& p : a->precisions) {
        if (p == "int8") {
          VT_CHECK(calibrated, a->model, " has no int8 calibration; make one with `vitrine "
                   "optimize --int8 --calib DATA`, or bench fp32 and bf16 only");
          // auto is libtorch where the fused engine is not built
          if (e == "libtorch" || (e == "auto" && !models::fused_engine_built())) {
            skipped = true;
            continue;
          }
        }
        // The default bf16 where the fused engine has no bf16 kernels (no AVX-512) is left
        // out; asked for, it is an error naming the CPU.
        if (p == "bf16" && precision_opt->count() == 0 && e != "libtorch" &&
            !models::bf16_runs_here()) {
          spdlog::info("bf16 is not measured on the {} engine: it runs bf16 on AVX-512 CPUs "
                       "only", e);
          continue;
        }
        settings.emplace_back(e, p);
      }
    }
    if (skipped) {
      VT_CHECK(!settings.empty(), "int8 runs on the fused engine only; use --engine fused");
      spdlog::info("int8 runs on the fused engine only: the libtorch engine is measured in the "
                   "other precisions");
    }
    std::fprintf(stderr, "%-9s %-9s %6s %8s %10s %12s %12s\n", "engine", "precision", "batch",
                 "threads", "img/s", "p50 ms", "p90 ms");
    for (const auto& [engine_arg, precision] : settings) {
      for (const int requested : a->threads) {
        const int threads = set_threads(requested);
        // Prepared for the precision once a thread count: oneDNN fixes a primitive's threads
        // when it is built, so a predictor of another count would run with that one.
        models::Predictor predictor(model, models::parse_precision(precision),
                                    models::parse_engine(engine_arg));
        const char* engine = models::engine_name(predictor.engine());
        for (const int64_t batch : a->batches) {
          at::manual_seed(0);
          const at::Tensor x = at::randn({batch, cfg.in_channels, cfg.image_size, cfg.image_size});
          for (int64_t i = 0; i < a->warmup; ++i) predictor.logits(x);
          std::vector<double> ms;
          for (int64_t i = 0; i < a->iters; ++i) {
            const auto t0 = std::chrono::steady_clock::now();
            predictor.logits(x);
            ms.push_back(1000 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
          }
          double total = 0;
          for (const double m : ms) total += m;
          std::sort(ms.begin(), ms.end());
          const auto at = [&](double q) {
            return ms[std::min(ms.size() - 1, static_cast<size_t>(q * static_cast<double>(ms.size())))];
          };
          const double img_s = 1000.0 * static_cast<double>(batch * a->iters) / total;
          std::fprintf(stderr, "%-9s %-9s %6lld %8d %10.1f %12.2f %12.2f\n", engine,
                       precision.c_str(),
                       static_cast<long long>(batch), threads, img_s, at(0.5), at(0.9));
          std::cout << json_text(nlohmann::json{{"model", a->model},
                                                {"arch", cfg.arch},
                                                {"engine", engine},
                                                {"precision", precision},
                                                {"batch", batch},
                                                {"threads", threads},
                                                {"img_per_s", img_s},
                                                {"p50_ms", at(0.5)},
                                                {"p90_ms", at(0.9)},
                                                {"iters", a->iters}})
                    << std::endl;
        }
      }
    }
    set_threads(0);
    status = kExitOk;
  });
}

}  // namespace vitrine::cli
