#include "vitrine/train/loop.h"

#include "vitrine/core/error.h"
#include "vitrine/core/state_dict.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/registry.h"
#include "vitrine/train/evaluate.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/optimizer.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace vitrine::train {
namespace {

constexpr const char* kAdvice = ". Lower --lr, add --clip-grad or --warmup-epochs";

}  // namespace

data::LoaderOptions training_loader_options(int64_t batch_size, int64_t split_size, uint64_t seed,
                                            int workers, bool strict) {
  data::LoaderOptions lo;
  lo.batch_size = batch_size;
  lo.shuffle = true;
  lo.drop_last = split_size >= batch_size;
  lo.seed = seed;
  lo.workers = workers;
  lo.strict = strict;
  return lo;
}

void seed_epoch(const EpochPlan& plan, const EpochProgress& resume, std::mt19937_64& rng) {
  // Everything random in an epoch derives from (seed, epoch, rank): a resumed run repeats it.
  constexpr uint64_t kRankStride = 0x9E3779B97F4A7C15ULL;  // odd: distinct seeds per rank
  const uint64_t rank = static_cast<uint64_t>(plan.rank);
  if (resume.next_batch == 0) {
    at::manual_seed(plan.seed * 1000003 + plan.epoch + rank * kRankStride);
    rng.seed(plan.seed * 7919 + plan.epoch + rank * kRankStride);
    return;
  }
  restore_rng(resume.rng, rng);
  if (rank == 0) return;
  rng.seed(rng() + rank * kRankStride);  // the state restored is the lead's
  at::manual_seed(rng());
}

EpochSummary run_epoch(data::Loader& loader, const EpochPlan& plan, EpochProgress resume,
                       Optimisation& opt, const EpochHooks& hooks) {
  std::mt19937_64 rng;
  seed_epoch(plan, resume, rng);
  loader.start_epoch(plan.epoch, resume.next_batch);
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now() - std::chrono::duration_cast<clock::duration>(
                                     std::chrono::duration<double>(resume.seconds));
  auto seconds = [&] { return std::chrono::duration<double>(clock::now() - t0).count(); };
  EpochProgress sums = resume;
  sums.next_batch = 0;
  data::Batch batch;
  int64_t expected_batch = resume.next_batch;
  while (loader.next(batch)) {
    const int64_t bs = batch.images.size(0);
    VT_CHECK(!plan.distributed || (bs >= plan.min_batch && batch.batch_index == expected_batch),
             "unreadable images cost this process its batch ", expected_batch + 1, " of epoch ",
             plan.epoch + 1, ", and with several processes each must take every step: remove "
             "the images named above from the data, or train with one process");
    expected_batch = batch.batch_index + 1;
    if (bs < plan.min_batch) continue;
    double top1 = 0;
    const at::Tensor loss = hooks.loss(batch, rng, top1);
    const double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value)) {
      VT_FAIL("the loss became ", loss_value, " at epoch ", plan.epoch + 1,
              "; the last good checkpoint is in ", plan.last_good, kAdvice);
    }
    opt.optimizer.zero_grad();
    loss.backward();
    if (hooks.after_backward) hooks.after_backward();
    if (opt.clip_grad > 0) torch::nn::utils::clip_grad_norm_(opt.trainable, opt.clip_grad);
    apply_schedule(opt.optimizer, opt.groups, opt.options, opt.schedule, opt.step);
    opt.optimizer.step();
    if (hooks.after_step) hooks.after_step();
    ++opt.step;
    ++sums.batches;
    sums.seen += bs;
    sums.loss_sum += loss_value * bs;
    sums.top1_sum += top1 * bs;
    if (plan.save_every > 0 && opt.step % plan.save_every == 0 &&
        batch.batch_index + 1 < loader.batches_per_epoch()) {
      EpochProgress at_step = sums;
      at_step.next_batch = batch.batch_index + 1;
      at_step.seconds = seconds();
      at_step.rng = capture_rng(rng);
      hooks.save(at_step);
    }
    if (hooks.on_step) {
      const double secs = seconds();
      hooks.on_step({plan.epoch, plan.epochs, sums.batches, plan.steps_per_epoch, loss_value, top1,
                     lr_at(opt.schedule, opt.step - 1, opt.options.lr),
                     sums.seen / std::max(secs, 1e-9), secs});
    }
  }
  for (const auto& [name, p] : models::model_state_dict(opt.model)) {
    if (!p.is_floating_point()) continue;
    VT_CHECK(at::isfinite(p).all().item<bool>(), "the weights (", name,
             ") became non-finite in epoch ", plan.epoch + 1, "; the last good checkpoint is in ",
             plan.last_good, kAdvice);
  }
  EpochSummary out;
  out.lr = lr_at(opt.schedule, std::max<int64_t>(0, opt.step - 1), opt.options.lr);
  out.seconds = seconds();
  if (sums.seen > 0) {
    out.loss = sums.loss_sum / static_cast<double>(sums.seen);
    out.top1 = sums.top1_sum / static_cast<double>(sums.seen);
  }
  out.img_per_s = static_cast<double>(sums.seen) / std::max(out.seconds, 1e-9);
  const auto errors = loader.errors();
  out.skipped = static_cast<int64_t>(errors.size());
  int64_t named_before = 0;
  for (const auto& e : errors) {
    if (plan.reported && !plan.reported->insert(e).second) {
      ++named_before;
    } else {
      spdlog::warn("skipped: {}", e);
    }
  }
  if (named_before > 0) {
    spdlog::warn("skipped {} unreadable photo{} named in an earlier epoch", named_before,
                 named_before == 1 ? "" : "s");
  }
  return out;
}

bool grey_data(const data::Dataset& data) {
  const int64_t n = std::min<int64_t>(data.size(), 16);
  for (int64_t i = 0; i < n; ++i) {
    try {
      return data.image(i).channels() == 1;
    } catch (const std::exception&) {
    }
  }
  return false;
}

std::vector<std::pair<std::string, std::string>> model_settings(const models::ModelConfig& cfg) {
  std::vector<std::pair<std::string, std::string>> s = {
      {"--model", cfg.arch},
      {"--image-size", std::to_string(cfg.image_size)},
      {"--in-channels", std::to_string(cfg.in_channels)}};
  if (cfg.family == models::Family::kResNet) s.emplace_back("--stem", cfg.resnet.stem);
  return s;
}

models::ModelConfig starting_config(const std::string& arch, const std::string& init_dir,
                                    const std::string& stem, int64_t in_channels,
                                    const std::function<bool()>& grey_data) {
  if (init_dir.empty()) {
    VT_CHECK(!arch.empty(), "give --model ARCH (from scratch) or --init DIR (a model directory)");
    // Data stored grey (Fashion-MNIST) trains 1-channel models; decoded photos have 3.
    return models::new_model_config(arch, in_channels > 0 ? in_channels : grey_data() ? 1 : 3,
                                    stem);
  }
  VT_CHECK(arch.empty(), "give either --model ARCH (from scratch) or --init DIR, not both");
  VT_CHECK(stem.empty(), "--stem applies to a new model (--model); the --init model keeps its "
           "own");
  auto cfg = models::load_model_config(init_dir);
  VT_CHECK(in_channels == 0 || in_channels == cfg.in_channels, init_dir, " takes ",
           cfg.in_channels, "-channel images; --in-channels applies to a new model (--model): "
           "drop it (photos are converted to the model's channels either way)");
  // A grey model (the shipped Fashion-MNIST backbone) takes colour photos without a word,
  // and a task told apart by colour then learns nothing.
  if (cfg.in_channels == 1 && !grey_data()) {
    spdlog::warn("{} reads grey images (1 channel, {} px): these colour photos lose their "
                 "colour, so products told apart by colour cannot be learnt. For colour photos "
                 "start from a model of 3 channels: an imported ResNet/ViT checkpoint "
                 "(docs/models.md) or one pretrained on your photos (vitrine pretrain)",
                 init_dir, cfg.image_size);
  }
  cfg.int8_scales.clear();
  cfg.int8_report_json = "{}";
  return cfg;
}

data::SampleTransform one_view(image::TrainTransform t) {
  return [t](const cv::Mat& img, std::mt19937_64& rng) {
    return image::train_transform(with_channels(img, t.channels), t, rng);
  };
}

data::SampleTransform two_views(image::TrainTransform first, image::TrainTransform second) {
  return [first, second](const cv::Mat& img, std::mt19937_64& rng) {
    const cv::Mat m = with_channels(img, first.channels);
    const at::Tensor a = image::train_transform(m, first, rng);
    const at::Tensor b = image::train_transform(m, second, rng);
    return at::stack({a, b});
  };
}

}  // namespace vitrine::train
