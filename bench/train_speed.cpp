// Training throughput of one model in one precision: full steps (forward in train mode,
// label-smoothed cross-entropy, zero_grad, backward, AdamW step) on random inputs, as a
// JSON line with img/s and ms per step. bench/train_speed.py runs it beside PyTorch eager
// in the same run and prints the ratios.
#include "vitrine/core/memory.h"
#include "vitrine/core/threads.h"
#include "vitrine/models/registry.h"
#include "vitrine/train/loss.h"
#include "vitrine/train/autocast.h"
#include "vitrine/train/optim.h"

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
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
  CLI::App app("Vitrine training throughput (see bench/train_speed.py)");
  app.add_option("--arch", arch, "Architecture, randomly initialised");
  app.add_option("--image-size", image_size, "Input side (0: the architecture's)");
  app.add_option("--precision", precision, "fp32 | bf16")->check(CLI::IsMember({"fp32", "bf16"}));
  app.add_option("--batch", batch, "Images per step")->check(CLI::PositiveNumber);
  app.add_option("--iters", iters, "Timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "Untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--threads", threads, "Compute threads (0: all cores)");
  CLI11_PARSE(app, argc, argv);
  nlohmann::json out{{"arch", arch}, {"precision", precision}, {"batch", batch}};
  try {
    out["malloc_keeps_freed_memory"] = vitrine::keep_freed_memory();  // as `vitrine` does
    threads = vitrine::set_threads(threads);
    out["threads"] = threads;
    at::manual_seed(0);
    auto config = vitrine::models::model_preset(arch);
    if (image_size > 0) vitrine::models::set_image_size(config, image_size);
    config.num_classes = kNumClasses;
    out["image_size"] = config.image_size;
    auto model = vitrine::models::create_model(config);
    model->train();
    // The layout `vitrine train` uses (channels-last for ResNets).
    const bool channels_last = model->use_channels_last_for_training();
    out["channels_last"] = channels_last;
    const vitrine::train::OptimizerOptions options;  // AdamW, lr 1e-3, weight decay 0.05
    const auto groups = vitrine::train::param_groups(*model, options);
    auto optimizer = vitrine::train::make_optimizer(groups, options);

    at::Tensor x = at::randn({batch, config.in_channels, config.image_size, config.image_size});
    if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
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
