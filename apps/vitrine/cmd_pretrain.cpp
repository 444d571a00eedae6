// `vitrine pretrain`: self-supervised pretraining of a backbone on unlabelled photos.
#include "commands.h"
#include "progress.h"

#include "vitrine/core/threads.h"
#include "vitrine/data/dataset.h"
#include "vitrine/train/pretrainer.h"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <initializer_list>
#include <memory>

namespace vitrine::cli {

void add_pretrain_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "pretrain",
      "Pretrain a backbone on unlabelled photos (self-supervised: SimCLR, or MAE for ViTs)");
  auto o = std::make_shared<train::PretrainOptions>();
  auto threads = std::make_shared<int>(0);
  add_model_options(cmd, {&o->arch, &o->init_dir, &o->image_size, &o->in_channels,
                          &o->resnet_stem, &o->eval_crop_pct});
  cmd->add_option("--out", o->out_dir, "Run directory: last/ (the backbone), metrics.jsonl, state/")
      ->required();
  add_data_options(cmd, o->data);
  cmd->add_option("--method", o->method,
                  "simclr (contrastive learning of two augmented views) | mae (masked "
                  "autoencoder, ViTs: the encoder sees a few patches, a decoder paints the rest)")
      ->check(CLI::IsMember({"simclr", "mae"}));
  add_loop_options(cmd, {&o->epochs, &o->batch_size, &o->optim, &o->schedule, &o->warmup_epochs,
                         &o->min_lr, &o->clip_grad, &o->amp, &o->seed, &o->workers, threads.get(),
                         &o->resume, &o->overwrite, &o->save_every_steps, &o->strict});
  cmd->add_option("--temperature", o->temperature, "simclr: NT-Xent temperature");
  cmd->add_option("--proj-dim", o->proj_dim, "simclr: projection output size");
  cmd->add_option("--proj-hidden", o->proj_hidden,
                  "simclr: projection hidden size (0: the embedding's)");
  cmd->add_option("--mask-ratio", o->mask_ratio,
                  "mae: share of each image's patches hidden from the encoder (default 0.75)");
  cmd->add_option("--decoder-width", o->decoder_width, "mae: decoder width (default 256)");
  cmd->add_option("--decoder-depth", o->decoder_depth, "mae: decoder blocks (default 4)");
  cmd->add_option("--decoder-heads", o->decoder_heads, "mae: decoder attention heads (default 8)");
  cmd->add_option("--drop-path", o->drop_path, "Stochastic depth rate");
  auto& a = o->augment;
  add_crop_flip_jitter_options(cmd, a);
  auto* jitter = cmd->get_option("--color-jitter");
  auto* jitter_prob = cmd->add_option("--jitter-prob", a.jitter_prob,
                                      "Probability of the colour jitter (simclr default 0.8)");
  auto* grayscale = cmd->add_option("--grayscale", a.grayscale,
                                    "Random grayscale probability (simclr default 0.2)");
  auto* blur = cmd->add_option(
      "--blur", a.blur, "Gaussian blur probability (simclr default: 0.5 for 96 px and more)");
  cmd->add_option("--knn-bank", o->knn_bank_per_class,
                  "k-NN monitor: labelled training images per class (0 = off)");
  cmd->add_option("--knn-queries", o->knn_queries, "k-NN monitor: validation queries");
  cmd->add_option("--knn-k", o->knn_k, "k-NN monitor: neighbours that vote");
  cmd->callback([cmd, o, threads, jitter, jitter_prob, grayscale, blur, &status] {
    auto& a = o->augment;
    // Another method's options would be taken and do nothing.
    const auto other_methods = [&](const char* method,
                                   std::initializer_list<const char*> flags) {
      if (o->method == method) return;
      for (const char* flag : flags) {
        if (cmd->count(flag) > 0) {
          spdlog::warn("{} is for --method {} and has no effect with --method {}", flag, method,
                       o->method);
        }
      }
    };
    other_methods("simclr", {"--temperature", "--proj-dim", "--proj-hidden"});
    other_methods("mae", {"--mask-ratio", "--decoder-width", "--decoder-depth",
                          "--decoder-heads"});
    if (o->method == "mae") {
      // MAE's views are crops and flips: colour changes stay off unless asked for.
      if (jitter->count() == 0) a.brightness = a.hue = 0;
      // --color-jitter alone turns the jitter on, with SimCLR's probability.
      if (jitter_prob->count() == 0) a.jitter_prob = jitter->count() > 0 ? 0.8 : 0;
      if (grayscale->count() == 0) a.grayscale = 0;
      if (blur->count() == 0) a.blur = 0;
    }
    // SimCLR's colour jitter of strength s: 0.8 s brightness, contrast and saturation and
    // 0.2 s hue; 0 turns all four off.
    a.contrast = a.saturation = a.brightness;
    a.hue = 0.25 * a.brightness;
    o->blur_set = blur->count() > 0;
    o->command = command_line();
    set_threads(*threads);
    train::Pretrainer pretrainer(*o);
    EpochBar bar(o->method == "mae" ? "" : "pair-acc");
    const auto result = pretrainer.run(
        [&](const train::StepInfo& s) { bar.step(s); },
        [&](const train::PretrainEpoch& r) {
          bar.end_epoch();
          std::string line = fmt::format("epoch {}: loss {:.4f}", r.epoch, r.loss);
          if (r.contrast_top1 >= 0) line += fmt::format(" pair-acc {:.3f}", r.contrast_top1);
          if (r.knn_top1 >= 0) line += fmt::format(" | k-NN top-1 {:.4f}", r.knn_top1);
          spdlog::info("{} ({:.0f}s)", line, r.seconds);
        });
    spdlog::info("backbone: {} (fine-tune it with `vitrine train --init {}`)", result.last_dir,
                 result.last_dir);
    status = kExitOk;
  });
}

}  // namespace vitrine::cli
