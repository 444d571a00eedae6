// Inference throughput of one model in one precision: prints a JSON line with
// img/s and ms per batch. bench/inference.py runs it beside PyTorch eager in the
// same run and prints the ratios.
#include "vitrine/core/threads.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"
#include "vitrine/models/registry.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  std::string arch = "resnet50", precision = "fp32", model_dir;
  int64_t batch = 32, iters = 5, warmup = 2;
  int threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--arch") arch = v;
    else if (k == "--model") model_dir = v;
    else if (k == "--precision") precision = v;
    else if (k == "--batch") batch = std::stoll(v);
    else if (k == "--iters") iters = std::stoll(v);
    else if (k == "--warmup") warmup = std::stoll(v);
    else if (k == "--threads") threads = std::stoi(v);
    else {
      std::cerr << "unknown flag " << k << "\n";
      return 2;
    }
  }
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
