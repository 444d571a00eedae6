// Training throughput of one model in one precision: full steps (forward in train mode,
// label-smoothed cross-entropy, zero_grad, backward, AdamW step) on random inputs, as a
// JSON line with img/s and ms per step. bench/train_speed.py runs it beside PyTorch eager
// in the same run and prints the ratios.
#include "vitrine/core/threads.h"
#include "vitrine/models/registry.h"
#include "vitrine/train/loss.h"
#include "vitrine/train/optim.h"

#include "vitrine/train/autocast.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <string>

namespace {

constexpr int64_t kNumClasses = 10;
constexpr double kLabelSmoothing = 0.1;


}  // namespace

int main(int argc, char** argv) {
  std::string arch = "resnet18", precision = "fp32";
  int64_t image_size = 0, batch = 64, iters = 3, warmup = 1;
  int threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--arch") arch = v;
    else if (k == "--image-size") image_size = std::stoll(v);
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
  if (precision != "fp32" && precision != "bf16") {
    std::cerr << "--precision must be fp32 or bf16, got " << precision << "\n";
    return 2;
  }
  if (iters < 1 || batch < 1) {
    std::cerr << "--iters and --batch must be at least 1\n";
    return 2;
  }
  nlohmann::json out{{"arch", arch}, {"precision", precision}, {"batch", batch}};
  try {
    threads = vitrine::set_threads(threads);
    out["threads"] = threads;
    at::manual_seed(0);
    auto config = vitrine::models::model_preset(arch);
    if (image_size > 0) vitrine::models::set_image_size(config, image_size);
    config.num_classes = kNumClasses;
    out["image_size"] = config.image_size;
    auto model = vitrine::models::create_model(config);
    model->train();
    const vitrine::train::OptimizerOptions options;  // AdamW, lr 1e-3, weight decay 0.05
    const auto groups = vitrine::train::param_groups(*model, options);
    auto optimizer = vitrine::train::make_optimizer(groups, options);

    const at::Tensor x =
        at::randn({batch, config.in_channels, config.image_size, config.image_size});
    const at::Tensor soft = vitrine::train::smoothed_targets(
        at::randint(kNumClasses, {batch}, at::kLong), kNumClasses, kLabelSmoothing);
    const bool bf16 = precision == "bf16";
    at::ScalarType logits_dtype = at::kFloat;
    double loss_value = 0;
    const auto step = [&] {
      at::Tensor loss;
      {
        vitrine::train::AutocastScope autocast(bf16);
        const at::Tensor logits = model->forward(x);
        logits_dtype = logits.scalar_type();
        loss = vitrine::train::soft_cross_entropy(logits, soft);
      }
      optimizer->zero_grad();
      loss.backward();
      optimizer->step();
      loss_value = loss.item<double>();
    };

    for (int64_t i = 0; i < warmup; ++i) step();
    double best = 1e30, total = 0;
    for (int64_t i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      step();
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, s);
      total += s;
    }
    // A bf16 figure only counts if autocast really ran the model in bf16, and a step that
    // diverges at once points at a broken kernel rather than a fast one.
    if (bf16 && logits_dtype != at::kBFloat16) {
      out["error"] = std::string("autocast left the logits in ") + c10::toString(logits_dtype) +
                     "; the model did not run in bf16";
    } else if (!std::isfinite(loss_value)) {
      out["error"] = "the loss is not finite after " + std::to_string(warmup + iters) + " steps";
    } else {
      out["ms_per_step"] = 1000 * total / iters;
      out["best_ms_per_step"] = 1000 * best;
      out["img_per_s"] = batch * iters / total;
      out["loss"] = loss_value;
    }
  } catch (const c10::Error& e) {
    out["error"] = e.what_without_backtrace();
  } catch (const std::exception& e) {
    out["error"] = e.what();
  }
  std::cout << out.dump() << std::endl;
  return out.contains("error") ? 1 : 0;
}
