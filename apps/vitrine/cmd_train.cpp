// `vitrine train` and `vitrine eval`: fine-tuning and evaluation on labelled photos.
#include "commands.h"
#include "progress.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/json.h"
#include "vitrine/core/threads.h"
#include "vitrine/data/dataset.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"
#include "vitrine/train/evaluate.h"
#include "vitrine/train/trainer.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <arpa/inet.h>
#include <filesystem>
#include <sstream>
#include <type_traits>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace vitrine::cli {

namespace fs = std::filesystem;

data::DataSplits open_data_logged(const data::DataOptions& options) {
  data::DataSplits splits = data::open_data(options);
  for (const auto& w : splits.warnings) spdlog::warn("{}", w);
  return splits;
}

std::shared_ptr<data::Dataset> pick_split(const data::DataSplits& s, const std::string& split) {
  std::shared_ptr<data::Dataset> d = split == "train" ? s.train : split == "val" ? s.val : s.test;
  VT_CHECK(d && d->size() > 0, "the data has no '", split, "' split (or it is empty); choose "
           "another with --split", split == "train" ? "" : ", or split one off a root without "
           "a " + split + "/ folder with --" + split + "-split as the model's train run did");
  return d;
}

void adopt_training_split(const CLI::App* cmd, const std::string& model_dir,
                          const std::string& source, double& val_split, double& test_split,
                          uint64_t& seed, double applied_val_split) {
  std::error_code ec;
  if (!fs::is_regular_file(fs::path(model_dir) / "config.json", ec)) return;  // loading names it
  const auto p = nlohmann::json::parse(models::load_model_config(model_dir).provenance_json,
                                       nullptr, false);
  if (!p.is_object() || !p.contains("data") || !p["data"].is_string()) return;
  // The same data however it is named: "shop", "./shop" and "/abs/shop" are one folder.
  const std::string trained_on = p["data"].get<std::string>();
  if (!same_data(trained_on, p.value("data_path", std::string()), source)) return;
  std::string taken, differ;  ///< flags adopted; flags given that differ from the run's
  // `unrecorded`: what a model that did not record `key` was trained with; the value given
  // where nothing can be said (older models recorded no fractions).
  const auto take = [&](const char* flag, const char* key, auto& value, auto unrecorded) {
    using T = std::decay_t<decltype(value)>;
    // Compared as given: an unset --val-split (-1) is 0.1 on a folder of class folders but
    // no split at all beside a train/ folder, so -1 and 0.1 are not the same setting.
    const T trained = p.contains(key) && p[key].is_number() ? p[key].get<T>() : T(unrecorded);
    if (trained == value) return;
    std::ostringstream s;
    s << flag << " ";
    if (trained < T(0)) {
      s << "unset";
    } else {
      s << trained;
    }
    const bool given = cmd == nullptr || cmd->count(flag) > 0;
    (given ? differ : taken) += (s.str() + " ");
    if (!given) value = trained;
  };
  const bool recorded_unset = p.contains("val_split") && p["val_split"].is_number() &&
                              p["val_split"].get<double>() < 0;
  if (val_split < 0 && applied_val_split >= 0 && !recorded_unset) val_split = applied_val_split;
  // Models record their seed when not 0.
  take("--val-split", "val_split", val_split, val_split);
  take("--test-split", "test_split", test_split, test_split);
  take("--data-seed", "data_seed", seed, 0);
  if (!taken.empty()) {
    taken.pop_back();
    spdlog::info("{} was trained on {} with {}: its val/test photos are taken the same way "
                 "(give the flags to choose others)", model_dir, source, taken);
  }
  if (!differ.empty()) {
    differ.pop_back();
    spdlog::warn("{} was trained on {} with {}: where val/test photos are carved out of the "
                 "training photos, other settings hold photos it learnt from", model_dir,
                 source, differ);
  }
}

void add_data_options(CLI::App* cmd, data::DataOptions& d) {
  cmd->add_option("--data", d.source,
                  "ImageFolder root, CSV manifest (path,label[,split]) or fashion-mnist")
      ->required();
  cmd->add_option("--val-split", d.val_split,
                  "Validation fraction carved out of training photos where there is no val/ "
                  "(default 0.1; a train/ folder alone, or a CSV split column, keeps all its "
                  "photos unless given)")
      ->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--test-split", d.test_split,
                  "Test fraction carved out of training photos where there is no test/")
      ->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--labels-per-class", d.labels_per_class,
                  "Keep this many labelled training images per class");
  cmd->add_option("--label-fraction", d.label_fraction,
                  "Keep this fraction of the labelled training images");
  cmd->add_option("--data-seed", d.seed,
                  "Seed of the carved val/test splits and of the label subsample; evaluate "
                  "with the seed the model was trained with")
      ->capture_default_str();
  cmd->add_option("--fashion-mnist-dir", d.fashion_mnist_dir, "Where the IDX files are");
  cmd->add_option("--max-pixels", d.max_pixels,
                  "Skip photos with more pixels (checked from the header)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
}

void add_model_options(CLI::App* cmd, ModelChoice c) {
  cmd->add_option("--model", *c.arch, "Architecture to train from scratch (see `vitrine models`)");
  cmd->add_option("--init", *c.init_dir, "Model directory to start from (imported or trained)");
  cmd->add_option("--image-size", *c.image_size, "Input side (default: the model's)")
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--in-channels", *c.in_channels,
                  "1 or 3 with --model (default: from the data)")
      ->check(CLI::IsMember({1, 3}));
  cmd->add_option("--stem", *c.stem,
                  "ResNet stem with --model: imagenet (/4), small (/2, 32-96 px), cifar (/1)")
      ->check(CLI::IsMember({"imagenet", "small", "cifar"}));
  cmd->add_option("--eval-crop-pct", *c.eval_crop_pct,
                  "Eval centre-crop fraction (default: the --init model's, or 0.875)")
      ->check(CLI::Range(0.0, 1.0));
}

void add_loop_options(CLI::App* cmd, LoopFlags f) {
  // The recipe's defaults are shown in --help ("[1e-3]").
  cmd->add_option("--epochs", *f.epochs, "Epochs")->capture_default_str();
  cmd->add_option("--batch-size,-b", *f.batch_size, "Images per step")->capture_default_str();
  cmd->add_option("--opt", f.optim->name, "adamw | sgd")
      ->check(CLI::IsMember({"adamw", "sgd"}))
      ->capture_default_str();
  cmd->add_option("--lr", f.optim->lr, "Peak learning rate")->capture_default_str();
  cmd->add_option("--weight-decay", f.optim->weight_decay,
                  "Weight decay, not on biases, norms, embeddings (AdamW: decoupled; SGD: L2, "
                  "as PyTorch)")
      ->capture_default_str();
  cmd->add_option("--momentum", f.optim->momentum, "SGD momentum")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_flag("--nesterov", f.optim->nesterov, "SGD with Nesterov momentum");
  cmd->add_option("--sched", *f.schedule, "cosine | step | constant")
      ->check(CLI::IsMember({"cosine", "step", "constant"}))
      ->capture_default_str();
  cmd->add_option("--warmup-epochs", *f.warmup_epochs, "Linear warm-up (may be fractional)")
      ->check(non_negative())
      ->capture_default_str();
  cmd->add_option("--min-lr", *f.min_lr, "Floor of the cosine schedule")
      ->check(non_negative())
      ->capture_default_str();
  cmd->add_option("--clip-grad", *f.clip_grad, "Max gradient norm (0 = off)")
      ->check(non_negative())
      ->capture_default_str();
  cmd->add_option("--amp", *f.amp, "none | bf16: mixed precision (CPU autocast)")
      ->check(CLI::IsMember({"none", "bf16"}));
  cmd->add_option("--seed", *f.seed,
                  "Random seed (data order, augmentation, initialisation; the splits: "
                  "--data-seed)");
  cmd->add_option("--workers", *f.workers, "Image decoding threads (0 = all cores)");
  cmd->add_option("--threads", *f.threads, "Compute threads (default: all cores)");
  cmd->add_flag("--resume", *f.resume, "Continue the run in --out from its saved state");
  cmd->add_flag("--overwrite", *f.overwrite,
                "Replace the run already in --out (without it, such a --out is refused)")
      ->excludes("--resume");
  cmd->add_option("--save-every", *f.save_every,
                  "Also save the resumable state every N steps (0: at epoch ends)")
      ->check(non_negative());
  cmd->add_flag("--strict", *f.strict, "Stop at the first unreadable image instead of skipping");
}

void add_crop_flip_jitter_options(CLI::App* cmd, image::TrainTransform& a) {
  cmd->add_option("--scale", a.scale, "Random-resized-crop area range (min max)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--ratio", a.ratio, "Random-resized-crop aspect range (min max)")
      ->check(positive());
  cmd->add_option("--hflip", a.hflip, "Horizontal flip probability")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--color-jitter", a.brightness,
                  "Colour jitter strength (brightness = contrast = saturation)")
      ->check(non_negative());
}

/// --adv-eps, --adv-steps, --adv-alpha: an attack's budget, as training and eval take it.
void add_attack_options(CLI::App* cmd, train::AttackOptions& a) {
  cmd->add_option_function<std::string>(
         "--adv-eps", [&a](const std::string& v) { a.eps = train::parse_epsilon(v); },
         "L-inf budget in pixel units before normalisation, e.g. 8/255 (default 8/255)");
  cmd->add_option("--adv-steps", a.steps, "PGD steps (default 10)");
  cmd->add_option_function<std::string>(
         "--adv-alpha", [&a](const std::string& v) { a.alpha = train::parse_epsilon(v); },
         "PGD step size, e.g. 2/255 (default 2.5 * eps / steps)");
}

namespace {

/// A free TCP port on the loopback interface (for a local rendezvous).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  VT_CHECK(fd >= 0, "cannot open a socket to find a free port");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  close(fd);
  VT_CHECK(ok, "cannot find a free port on 127.0.0.1; give --master-port");
  return ntohs(addr.sin_port);
}

/// `vitrine train ... --nproc N`: this command line N times, as ranks 0..N-1 of one run on
/// this host; when one fails the others are stopped. Returns the exit status.
int launch_local(int nproc, int port, int timeout_s) {
  std::vector<std::string> args;
  const auto& given = command_args();
  for (size_t i = 1; i < given.size(); ++i) {
    if (given[i] == "--nproc") {
      ++i;  // and its value
      continue;
    }
    if (given[i].rfind("--nproc=", 0) == 0) continue;
    args.push_back(given[i]);
  }
  std::vector<pid_t> children;
  for (int rank = 0; rank < nproc; ++rank) {
    std::vector<std::string> mine = args;
    for (const std::string& a :
         {std::string("--world-size"), std::to_string(nproc), std::string("--rank"),
          std::to_string(rank), std::string("--master-addr"), std::string("127.0.0.1"),
          std::string("--master-port"), std::to_string(port), std::string("--dist-timeout"),
          std::to_string(timeout_s)}) {
      mine.push_back(a);
    }
    const pid_t pid = fork();
    VT_CHECK(pid >= 0, "cannot start process ", rank, " of ", nproc);
    if (pid == 0) {
      std::vector<char*> argv{const_cast<char*>(given[0].c_str())};
      for (auto& a : mine) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv("/proc/self/exe", argv.data());
      _exit(127);
    }
    children.push_back(pid);
  }
  int status = kExitOk;
  for (size_t left = children.size(); left > 0; --left) {
    int st = 0;
    const pid_t done = wait(&st);
    if (done < 0) break;
    const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (code != 0 && status == kExitOk) {
      status = code;
      spdlog::error("a training process exited with status {}; stopping the others", code);
      for (const pid_t p : children) {
        if (p != done) kill(p, SIGTERM);
      }
    }
  }
  return status;
}

}  // namespace

void add_train_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand("train", "Fine-tune (or train from scratch) a classifier");
  auto o = std::make_shared<train::TrainOptions>();
  auto threads = std::make_shared<int>(0);
  add_model_options(cmd, {&o->arch, &o->init_dir, &o->image_size, &o->in_channels,
                          &o->resnet_stem, &o->eval_crop_pct});
  cmd->add_option("--out", o->out_dir, "Run directory: best/, last/, metrics.jsonl, state/")
      ->required();
  add_data_options(cmd, o->data);
  cmd->add_flag("--reinit-head", o->reinit_head, "New head when --init has another class count");
  add_loop_options(cmd, {&o->epochs, &o->batch_size, &o->optim, &o->schedule, &o->warmup_epochs,
                         &o->min_lr, &o->clip_grad, &o->amp, &o->seed, &o->workers, threads.get(),
                         &o->resume, &o->overwrite, &o->save_every_steps, &o->strict});
  cmd->add_option("--layer-decay", o->optim.layer_decay,
                  "Layer-wise LR decay: each block below the head gets this times the rate of "
                  "the one above (ViT blocks, ResNet residual blocks; 1 = off)");
  cmd->add_option("--decay-milestones", o->lr_milestones,
                  "Epochs where step decay applies (--sched step)");
  cmd->add_option("--decay-rate", o->lr_gamma, "Step decay factor")->check(positive());
  cmd->add_option("--label-smoothing", o->label_smoothing, "Label smoothing")
      ->capture_default_str();
  cmd->add_option("--drop", o->dropout, "Dropout rate (default: the model's)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--drop-path", o->drop_path, "Stochastic depth rate (default: the model's)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--model-ema-decay", o->ema_decay,
                  "Keep an EMA of the weights (e.g. 0.999; warmed up over the first steps)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--class-weights", o->class_weights, "none | balanced")
      ->check(CLI::IsMember({"none", "balanced"}));
  cmd->add_option("--sampler", o->sampler,
                  "random | balanced (every class drawn equally often, with replacement)")
      ->check(CLI::IsMember({"random", "balanced"}));
  cmd->add_option("--freeze", o->freeze, "none | backbone | until:<module>");
  cmd->add_option("--patience", o->patience, "Early stopping patience in epochs (0 = off)")
      ->check(non_negative());
  cmd->add_option("--monitor", o->monitor,
                  "val_top1 | val_loss | val_macro_f1 | val_robust_top1 | val_map (default: "
                  "val_top1; val_robust_top1 with --adv; val_map for multi-label data)");
  auto& a = o->augment;
  add_crop_flip_jitter_options(cmd, a);
  cmd->add_option("--rotation", a.rotation, "Random rotation, degrees")
      ->check(CLI::Range(0.0, 180.0));
  cmd->add_option("--aa", a.auto_augment, "none | trivialaugment | randaugment")
      ->check(CLI::IsMember({"none", "trivialaugment", "randaugment"}));
  cmd->add_option("--reprob", a.random_erasing, "Random erasing probability")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--mixup", o->mixup, "Mixup alpha (0 = off)")->check(non_negative());
  cmd->add_option("--cutmix", o->cutmix, "CutMix alpha (0 = off)")->check(non_negative());
  cmd->add_option("--adv", o->adv, "Adversarial training: none | fgsm | pgd")
      ->check(CLI::IsMember({"none", "fgsm", "pgd"}));
  add_attack_options(cmd, o->adv_attack);
  cmd->add_option("--lora-rank", o->lora_rank,
                  "LoRA adapters of this rank (ViT); only they and the head train (0 = off)")
      ->check(CLI::Range(int64_t{0}, int64_t{4096}));
  cmd->add_option("--lora-alpha", o->lora.alpha, "LoRA scale numerator: scale = alpha / rank")
      ->check(positive());
  cmd->add_option("--lora-targets", o->lora.targets,
                  "Matrices that get adapters: qkv proj fc1 fc2 (default: all four)")
      ->delimiter(',');
  cmd->add_flag("--append-classes", o->append_classes,
                "Continual fine-tuning: add the data's new classes to the --init model's head");
  cmd->add_option("--replay", o->replay,
                  "Replay up to N photos stored with the --init model, and store N with this one")
      ->check(non_negative());
  cmd->add_flag("--save-adapter", o->save_adapter,
                "Also write adapter.safetensors (adapters and head alone) beside each model");
  cmd->add_option("--teacher", o->teacher_dir,
                  "Distil from this model directory (any architecture, the same classes): the "
                  "model also learns its softened predictions");
  cmd->add_option("--distill-alpha", o->distill_alpha,
                  "Weight of the teacher's term; 1 - it weighs the labels (default 0.5)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--distill-temperature", o->distill_temperature,
                  "Softens teacher and model predictions (default 2)")
      ->check(positive());
  cmd->add_option("--unlabelled", o->unlabelled,
                  "Semi-supervised (FixMatch): also learn from these unlabelled photos (a "
                  "folder, ImageFolder, CSV or fashion-mnist; labels unused)");
  cmd->add_option("--unlabelled-ratio", o->unlabelled_ratio,
                  "Unlabelled photos per labelled photo in each step (default 7)")
      ->check(CLI::Range(1, 64));
  cmd->add_option("--pseudo-threshold", o->pseudo_threshold,
                  "Confidence a weak view's prediction needs to become a target (default 0.95)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--unlabelled-weight", o->unlabelled_weight,
                  "Weight of the unlabelled photos' loss (default 1)")
      ->check(non_negative());
  cmd->add_option("--unlabelled-targets", o->unlabelled_targets,
                  "Targets of the unlabelled photos: self (FixMatch: the model's own confident "
                  "predictions) or teacher (the --teacher's softened predictions, every photo)")
      ->check(CLI::IsMember({"self", "teacher"}));
  auto nproc = std::make_shared<int>(1);
  cmd->add_option("--nproc", *nproc, "Data-parallel processes on this host (each takes a batch)")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--world-size", o->dist.world_size, "Processes in a multi-host run");
  cmd->add_option("--rank", o->dist.rank, "This process's rank (0 saves and logs)");
  cmd->add_option("--master-addr", o->dist.master_addr, "Address of rank 0's host");
  cmd->add_option("--master-port", o->dist.master_port, "Rendezvous port on rank 0's host");
  cmd->add_option("--dist-timeout", o->dist.timeout_s,
                  "Seconds to wait for the others (rendezvous, each step)");
  cmd->add_option("--adv-ratio", o->adv_ratio,
                  "Share of each batch made adversarial (the rest stays clean; default 1)");
  cmd->callback([cmd, o, threads, nproc, &status] {
    o->augment.contrast = o->augment.saturation = o->augment.brightness;
    // Options of a mode not asked for would be taken and do nothing.
    const auto unused = [&](const char* flag, const char* why) {
      if (cmd->count(flag) > 0) spdlog::warn("{} has no effect {}", flag, why);
    };
    if (o->unlabelled.empty()) {
      for (const char* flag : {"--unlabelled-ratio", "--pseudo-threshold", "--unlabelled-weight",
                               "--unlabelled-targets"}) {
        unused(flag, "without --unlabelled (the unlabelled photos to learn from)");
      }
    } else if (o->unlabelled_targets == "teacher") {
      unused("--pseudo-threshold", "with --unlabelled-targets teacher: every photo's target is "
             "the teacher's softened prediction");
    }
    if (o->teacher_dir.empty()) {
      unused("--distill-alpha", "without --teacher");
      unused("--distill-temperature", "without --teacher");
    }
    if (*nproc > 1) {
      VT_CHECK(o->dist.world_size == 1, "give either --nproc (one host) or --world-size/--rank");
      status = launch_local(*nproc, free_port(), o->dist.timeout_s);
      return;
    }
    set_threads(*threads);
    o->command = command_line();
    train::Trainer trainer(*o);
    EpochBar bar("acc");
    const auto result = trainer.run(
        [&](const train::StepInfo& s) { bar.step(s); },
        [&](const train::EpochRecord& r) {
          bar.end_epoch();
          if (r.has_val && r.multi_label) {
            spdlog::info("epoch {}: train loss {:.4f} | val mAP {:.4f} micro-F1 {:.4f} macro-F1 "
                         "{:.4f}{} ({:.0f}s)",
                         r.epoch, r.train_loss, r.val_map, r.val_micro_f1, r.val_macro_f1,
                         r.best ? " *" : "", r.seconds);
          } else if (r.has_val) {
            spdlog::info("epoch {}: train loss {:.4f} top-1 {:.4f} | val loss {:.4f} top-1 {:.4f} "
                         "macro-F1 {:.4f}{}{} ({:.0f}s)",
                         r.epoch, r.train_loss, r.train_top1, r.val_loss, r.val_top1,
                         r.val_macro_f1,
                         r.val_robust_top1 >= 0
                             ? fmt::format(" robust top-1 {:.4f}", r.val_robust_top1)
                             : std::string(),
                         r.best ? " *" : "", r.seconds);
          } else {  // a multi-label run's training accuracy is per label
            spdlog::info("epoch {}: train loss {:.4f} {} {:.4f} ({:.0f}s)", r.epoch,
                         r.train_loss, r.multi_label ? "label accuracy" : "top-1", r.train_top1,
                         r.seconds);
          }
        });
    if (o->dist.rank != 0) return;  // rank 0 reports
    if (o->lora_rank > 0) {
      spdlog::info("LoRA: {} trainable weights of {}; saved models have the adapters merged",
                   result.trainable_params, result.total_params);
    }
    if (result.best_epoch >= 0) {
      spdlog::info("best model: {} (epoch {}), last: {}", result.best_dir, result.best_epoch,
                   result.last_dir);
    } else {
      spdlog::info("model: {} (no validation split to pick a best epoch by: the last one)",
                   result.last_dir);
    }
    const auto skipped_note = [](int64_t n) {
      return n > 0 ? fmt::format("; {} unreadable test images skipped", n) : std::string();
    };
    const char* tested = result.best_epoch >= 0 ? "best model" : "last model";
    if (result.has_test && result.test_multi_label) {
      spdlog::info("test: mAP {:.4f}, micro-F1 {:.4f}, macro-F1 {:.4f} ({}){}",
                   result.test_map, result.test_micro_f1, result.test_macro_f1, tested,
                   skipped_note(result.test_skipped));
    } else if (result.has_test) {
      spdlog::info("test: top-1 {:.4f}, macro-F1 {:.4f} ({}){}", result.test_top1,
                   result.test_macro_f1, tested, skipped_note(result.test_skipped));
    }
    spdlog::info("report: {}", result.report);
    status = kExitOk;
  });
}

namespace {

/// The settings of an attack, as the eval report records them.
nlohmann::json attack_json(const train::AttackOptions& o) {
  return {{"method", o.method},
          {"eps", o.eps},
          {"steps", o.method == "pgd" ? o.steps : 1},
          {"alpha", train::attack_step_size(o)},
          {"random_start", o.method == "pgd" && o.random_start}};
}

/// A second model (eval --compare) scored on the first's photos: a warning where it was
/// trained on this data with other split settings, which put its training photos there.
void warn_other_split(const std::string& dir, const data::DataOptions& data,
                      double applied_val_split) {
  double val = data.val_split, test = data.test_split;
  uint64_t seed = data.seed;
  adopt_training_split(nullptr, dir, data.source, val, test, seed, applied_val_split);
}

}  // namespace

void add_eval_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand("eval", "Evaluate a model on a labelled split");
  struct Args {
    std::string model, compare, split = "test", json, precision = "auto", engine = "auto";
    data::DataOptions data;
    train::EvalOptions eval;
    int threads = 0;
    std::string attack = "none";
    train::AttackOptions adv;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Model directory")->required();
  add_data_options(cmd, a->data);
  cmd->add_option("--split", a->split, "train | val | test")
      ->check(CLI::IsMember({"train", "val", "test"}));
  cmd->add_option("--compare", a->compare, "A second model directory to set beside the first");
  cmd->add_option("--json", a->json, "Write the full metrics (per class, confusion) here");
  cmd->add_option("--batch-size,-b", a->eval.batch_size, "Images per forward pass");
  cmd->add_option("--workers", a->eval.workers, "Image decoding threads (0 = all cores)");
  cmd->add_option("--threads", a->threads, "Compute threads (default: all cores)");
  add_precision_options(cmd, a->precision, &a->engine);
  cmd->add_option("--attack", a->attack,
                  "Also report robust accuracy under this attack: none | fgsm | pgd")
      ->check(CLI::IsMember({"none", "fgsm", "pgd"}));
  add_attack_options(cmd, a->adv);
  cmd->callback([a, cmd, &status] {
    set_threads(a->threads);
    const bool attacked = a->attack != "none";
    if (attacked) {
      a->adv.method = a->attack;
      train::check_attack(a->adv);
    }
    a->data.need_train = a->split == "train";  // held-out photos need no training ones
    // A run folder or a missing model is named before the data is read for it.
    for (const auto& dir : {a->model, a->compare}) {
      if (!dir.empty()) models::load_model_config(dir);
    }
    adopt_training_split(cmd, a->model, a->data.source, a->data.val_split, a->data.test_split,
                         a->data.seed);
    const data::DataSplits splits = open_data_logged(a->data);
    const auto d = pick_split(splits, a->split);
    nlohmann::json out = nlohmann::json::object();
    std::vector<std::string> dirs{a->model};
    if (!a->compare.empty()) dirs.push_back(a->compare);
    int64_t skipped = 0;  // unreadable images, over the models
    // Each model as predict and serve run it: an int8-calibrated one in int8.
    a->eval.inference = true;
    std::vector<std::string> precisions;
    const auto load = [&](const std::string& dir) {
      auto model = models::load_model(dir);
      const models::Predictor prepared(model, models::parse_precision(a->precision),
                                       models::parse_engine(a->engine));
      precisions.push_back(models::precision_name(prepared.precision()));
      spdlog::info("{}: {} on the {} engine", dir, precisions.back(),
                   models::engine_name(prepared.engine()));
      if (attacked && prepared.precision() != models::Precision::kFp32) {
        spdlog::info("{}: the attack's images are made with the gradients of its fp32 weights "
                     "and scored in {} (a transfer attack; --precision fp32 scores the attack "
                     "on the weights it was made with)", dir, precisions.back());
      }
      return model;
    };
    // Scores are among the model's classes (the data's are matched to them by name).
    const auto class_names = [&](const models::VisionModelImpl& model) {
      const auto& c = model.config();
      return static_cast<int64_t>(c.labels.size()) == c.num_classes ? c.labels : splits.classes;
    };
    if (splits.multi_label) {
      for (const auto& dir : dirs) {
        auto model = load(dir);
        if (dir != a->model) warn_other_split(dir, a->data, splits.val_split);
        std::vector<std::string> errors;
        const auto m = train::evaluate_multi_label(*model, d, a->eval, &errors);
        for (const auto& e : errors) spdlog::warn("skipped: {}", e);
        // Thresholds tuned on these very photos make F1 look better than new photos will.
        const auto p = nlohmann::json::parse(model->config().provenance_json, nullptr, false);
        if (a->split == "val" && !model->config().thresholds.empty() && p.is_object() &&
            p.contains("data") && p["data"].is_string() &&
            same_data(p["data"], p.value("data_path", std::string()), a->data.source)) {
          spdlog::warn("{}: its per-label thresholds were tuned on this split (the validation "
                       "photos of {}), so F1 here is optimistic (mAP is not); judge F1 on "
                       "--split test", dir, a->data.source);
        }
        const auto names = class_names(*model);
        out[dir] = nlohmann::json::parse(m.to_json(names));
        out[dir]["precision"] = precisions.back();
        out[dir]["skipped_images"] = errors.size();
        nlohmann::json line{{"model", dir},          {"split", a->split},
                            {"precision", precisions.back()},
                            {"images", m.count},     {"map", m.mean_ap},
                            {"micro_f1", m.micro_f1}, {"macro_f1", m.macro_f1},
                            {"skipped_images", errors.size()}};
        skipped += static_cast<int64_t>(errors.size());
        if (attacked) {
          const auto r = train::evaluate_multi_label_under_attack(*model, d, a->adv, a->eval);
          auto rj = nlohmann::json::parse(r.to_json(names));
          rj["attack"] = attack_json(a->adv);
          out[dir]["under_attack"] = rj;
          line["attack"] = a->adv.method;
          line["eps"] = a->adv.eps;
          line["robust_map"] = r.mean_ap;
          line["robust_micro_f1"] = r.micro_f1;
          line["robust_macro_f1"] = r.macro_f1;
        }
        std::cout << json_text(line) << "\n";
      }
      if (!a->json.empty()) write_file_atomic(a->json, json_text(out, 2) + "\n");
      status = skipped > 0 ? kExitSomeFailed : kExitOk;
      return;
    }
    std::vector<train::ClassificationMetrics> results, robust;
    std::vector<int64_t> skipped_of;
    for (const auto& dir : dirs) {
      auto model = load(dir);
      if (dir != a->model) warn_other_split(dir, a->data, splits.val_split);
      std::vector<std::string> errors;
      results.push_back(train::evaluate(*model, d, a->eval, &errors));
      for (const auto& e : errors) spdlog::warn("skipped: {}", e);
      const auto names = class_names(*model);
      out[dir] = nlohmann::json::parse(results.back().to_json(names));
      out[dir]["precision"] = precisions.back();
      out[dir]["skipped_images"] = errors.size();
      skipped_of.push_back(static_cast<int64_t>(errors.size()));
      skipped += skipped_of.back();
      if (attacked) {
        robust.push_back(train::evaluate_under_attack(*model, d, a->adv, a->eval));
        auto r = nlohmann::json::parse(robust.back().to_json(names));
        r["attack"] = attack_json(a->adv);
        out[dir]["under_attack"] = r;
      }
    }
    // The summary on stdout, one JSON object per model; the full detail goes to --json.
    for (size_t i = 0; i < dirs.size(); ++i) {
      const auto& m = results[i];
      nlohmann::json line{{"model", dirs[i]},   {"split", a->split},
                          {"precision", precisions[i]},
                          {"images", m.count},  {"top1", m.top1},
                          {"top5", m.top5_json()},     {"macro_f1", m.macro_f1},
                          {"ece", m.ece},       {"loss", m.loss},
                          {"skipped_images", skipped_of[i]}};
      if (attacked) {
        line["attack"] = a->adv.method;
        line["eps"] = a->adv.eps;
        line["robust_top1"] = robust[i].top1;
        line["robust_macro_f1"] = robust[i].macro_f1;
      }
      std::cout << json_text(line) << "\n";
    }
    if (attacked && robust.size() == 2) {
      spdlog::info("under {} (eps {:.4f}): top-1 {:.4f} -> {:.4f}", a->adv.method, a->adv.eps,
                   robust[0].top1, robust[1].top1);
    }
    if (results.size() == 2) {
      spdlog::info("top-1 {:.4f} -> {:.4f} ({:+.2f} points), macro-F1 {:.4f} -> {:.4f}",
                   results[0].top1, results[1].top1, 100 * (results[1].top1 - results[0].top1),
                   results[0].macro_f1, results[1].macro_f1);
    }
    if (!a->json.empty()) write_file_atomic(a->json, json_text(out, 2) + "\n");
    // Scores of the readable images; the others are named above and make the status 1.
    status = skipped > 0 ? kExitSomeFailed : kExitOk;
  });
}

}  // namespace vitrine::cli
