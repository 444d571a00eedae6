// `vitrine pretrain`: self-supervised pretraining of a backbone on unlabelled photos.
#include "commands.h"
#include "progress.h"

#include "vitrine/core/threads.h"
#include "vitrine/data/dataset.h"
#include "vitrine/train/pretrainer.h"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>

namespace vitrine::cli {

void add_pretrain_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "pretrain", "Pretrain a backbone on unlabelled photos (self-supervised, SimCLR)");
  auto o = std::make_shared<train::PretrainOptions>();
  auto threads = std::make_shared<int>(0);
  add_model_options(cmd, {&o->arch, &o->init_dir, &o->image_size, &o->in_channels,
                          &o->resnet_stem, &o->eval_crop_pct});
  cmd->add_option("--out", o->out_dir, "Run directory: last/ (the backbone), metrics.jsonl, state/")
      ->required();
  add_data_options(cmd, o->data);
  cmd->add_option("--method", o->method, "simclr (contrastive learning of two augmented views)");
  add_loop_options(cmd, {&o->epochs, &o->batch_size, &o->optim, &o->schedule, &o->warmup_epochs,
                         &o->min_lr, &o->clip_grad, &o->amp, &o->seed, &o->workers, threads.get(),
                         &o->resume, &o->save_every_steps, &o->strict});
  cmd->add_option("--temperature", o->temperature, "NT-Xent temperature");
  cmd->add_option("--proj-dim", o->proj_dim, "Projection output size");
  cmd->add_option("--proj-hidden", o->proj_hidden, "Projection hidden size (0: the embedding's)");
  cmd->add_option("--drop-path", o->drop_path, "Stochastic depth rate");
  auto& a = o->augment;
  add_crop_flip_jitter_options(cmd, a);
  cmd->add_option("--jitter-prob", a.jitter_prob, "Probability of the colour jitter");
  cmd->add_option("--grayscale", a.grayscale, "Random grayscale probability");
  auto* blur = cmd->add_option("--blur", a.blur,
                               "Gaussian blur probability (default: 0.5 for 96 px and more)");
  cmd->add_option("--knn-bank", o->knn_bank_per_class,
                  "k-NN monitor: labelled training images per class (0 = off)");
  cmd->add_option("--knn-queries", o->knn_queries, "k-NN monitor: validation queries");
  cmd->add_option("--knn-k", o->knn_k, "k-NN monitor: neighbours that vote");
  cmd->callback([o, threads, blur, &status] {
    o->augment.contrast = o->augment.saturation = o->augment.brightness;
    o->blur_set = blur->count() > 0;
    o->command = command_line();
    set_threads(*threads);
    train::Pretrainer pretrainer(*o);
    EpochBar bar("pair-acc");
    const auto result = pretrainer.run(
        [&](const train::StepInfo& s) { bar.step(s); },
        [&](const train::PretrainEpoch& r) {
          bar.end_epoch();
          if (r.knn_top1 >= 0) {
            spdlog::info("epoch {}: loss {:.4f} pair-acc {:.3f} | k-NN top-1 {:.4f} ({:.0f}s)",
                         r.epoch, r.loss, r.contrast_top1, r.knn_top1, r.seconds);
          } else {
            spdlog::info("epoch {}: loss {:.4f} pair-acc {:.3f} ({:.0f}s)", r.epoch, r.loss,
                         r.contrast_top1, r.seconds);
          }
        });
    spdlog::info("backbone: {} (fine-tune it with `vitrine train --init {}`)", result.last_dir,
                 result.last_dir);
    status = kExitOk;
  });
}

}  // namespace vitrine::cli
