// Fine-tuning: the training loop behind `vitrine train`. One pass of the loop is
// data -> (mixup/cutmix) -> forward -> loss -> backward -> clip -> schedule -> step
// -> EMA; an epoch ends with validation, checkpoints and early stopping. Each stage
// is a member function, so adversarial batches, adapters or gradient all-reduce
// slot in without changing the rest.
#pragma once

#include "vitrine/data/dataset.h"
#include "vitrine/image/augment.h"
#include "vitrine/models/model.h"
#include "vitrine/train/adversarial.h"
#include "vitrine/train/distributed.h"
#include "vitrine/train/loop.h"
#include "vitrine/train/optim.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace vitrine::train {

struct TrainOptions {
  // Model: a registered architecture from scratch, or a model directory.
  std::string arch;
  std::string init_dir;
  int64_t image_size = 0;    ///< 0: the architecture's (or the init model's)
  int64_t in_channels = 0;   ///< 0: from the data (1 for grey data sets) for --arch
  std::string resnet_stem;   ///< --arch ResNets: imagenet | small | cifar; empty: imagenet
  bool reinit_head = false;  ///< --init with another class count gets a new head
  double dropout = -1;       ///< < 0: the model's
  double drop_path = -1;     ///< < 0: the model's
  /// Eval resize = image_size / crop_pct. 0: the --init model's own transform, or
  /// torchvision's 224/256 for a new model or a new image size.
  double eval_crop_pct = 0;

  data::DataOptions data;
  int64_t batch_size = 64;
  int workers = 0;
  bool strict = false;  ///< a bad image stops training instead of being skipped

  image::TrainTransform augment;  ///< size, mean, std, channels come from the model
  double mixup = 0;   ///< Beta(alpha, alpha) mixing of pairs; 0 = off
  double cutmix = 0;  ///< Beta(alpha, alpha) box pasting; 0 = off (both: half the batches each)

  OptimizerOptions optim;
  std::string schedule = "cosine";
  double warmup_epochs = 0;
  double min_lr = 0;
  std::vector<int64_t> lr_milestones;  ///< epochs, for the step schedule
  double lr_gamma = 0.1;
  double clip_grad = 0;         ///< max gradient norm; 0 = off
  std::string amp = "none";     ///< none | bf16 (CPU autocast of forward and loss)
  double label_smoothing = 0;
  double ema_decay = 0;         ///< model EMA; 0 = off
  std::string class_weights = "none";  ///< none | balanced (inverse class frequency)
  /// random (each image once per epoch) | balanced (draws with replacement, every class
  /// equally likely: torch's WeightedRandomSampler with inverse class frequency)
  std::string sampler = "random";
  std::string freeze = "none";  ///< none | backbone | until:<module>
  /// Adversarial training: none | fgsm | pgd. The first `adv_ratio` of each batch is
  /// replaced by adversarial versions made against the current weights (in eval mode).
  std::string adv = "none";
  AttackOptions adv_attack;  ///< budget, steps, step size (the method comes from `adv`)
  double adv_ratio = 1;      ///< share of each batch made adversarial, in (0, 1]
  /// LoRA (ViT): 0 = off; otherwise adapters of this rank on `lora.targets`, and only they
  /// and the head train. Saved models have them merged; `save_adapter` also writes
  /// adapter.safetensors (adapters and head alone) beside each saved model.
  int64_t lora_rank = 0;
  /// Continual fine-tuning: with --init a model that has a head, classes of the data it does
  /// not know are appended to the head (its rows for the known classes kept).
  bool append_classes = false;
  /// > 0: mix up to this many photos of the --init model's stored replay sample (its
  /// replay/ folder) into the training data, and store a class-balanced sample of this many
  /// training photos (replayed ones included) with each saved model.
  int64_t replay = 0;
  /// Data-parallel training: each of dist.world_size processes takes batch_size images of
  /// every step (the effective batch is batch_size x world_size); rank 0 saves and logs.
  DistOptions dist;
  models::LoraOptions lora;
  bool save_adapter = false;
  /// Knowledge distillation (Hinton et al. 2015): a model directory (any architecture, the
  /// same classes by name) whose softened predictions on each training batch the model also
  /// learns; empty: off. The loss is (1 - alpha) x the label loss + alpha x T^2 x
  /// KL(teacher || model), both distributions softened by temperature T.
  std::string teacher_dir;
  double distill_alpha = 0.5;
  double distill_temperature = 2.0;
  /// Semi-supervised learning from unlabelled photos (FixMatch, Sohn et al. 2020): a source
  /// as `pretrain --data` takes (its labels, where it has them, unused; for the training data
  /// itself its validation photos are left out); empty: off. Each step also draws
  /// `unlabelled_ratio` x batch_size of its photos in two views: where the model's prediction
  /// on the weak view (the training augmentation) reaches `pseudo_threshold`, its top class
  /// becomes the target for the strong view (RandAugment and random erasing on top), a
  /// cross-entropy averaged over all the unlabelled photos and weighted by `unlabelled_weight`.
  std::string unlabelled;
  int64_t unlabelled_ratio = 7;
  double pseudo_threshold = 0.95;
  double unlabelled_weight = 1.0;
  /// Where the unlabelled photos' targets come from: "self" (FixMatch, above) or "teacher":
  /// the `teacher_dir` model's predictions on the weak view, softened by
  /// `distill_temperature`, for every photo (no threshold), learnt by the model on the strong
  /// view as T^2 x KL(teacher || model) (Noisy Student, Xie et al. 2020; SimCLRv2's
  /// distillation step, Chen et al. 2020: a fine-tuned model teaches its unlabelled photos).
  std::string unlabelled_targets = "self";

  int64_t epochs = 10;
  int64_t patience = 0;         ///< early stopping after this many epochs without gain; 0 = off
  /// val_top1 | val_loss | val_macro_f1 | val_robust_top1 (single-label; the last with
  /// --adv), val_map | val_macro_f1 (multi-label); empty: val_top1, val_robust_top1 for
  /// adversarial training (Rice et al. 2020: robust accuracy peaks and then falls while clean
  /// accuracy does not tell), or val_map for multi-label data.
  std::string monitor;
  std::string out_dir;
  uint64_t seed = 0;
  bool resume = false;
  bool overwrite = false;  ///< replace a run already in out_dir (check_run_dir)
  /// The command line, for the saved models' provenance (empty: not recorded).
  std::string command;
  /// Also save the resumable state every N optimisation steps (0: at epoch ends only),
  /// so a long epoch killed mid-way loses at most N steps.
  int64_t save_every_steps = 0;
};

/// One line of the metrics log (metrics.jsonl).
struct EpochRecord {
  int64_t epoch = 0;
  double lr = 0, train_loss = 0, train_top1 = 0, seconds = 0, img_per_s = 0;
  double val_loss = 0, val_top1 = 0, val_top5 = 0, val_macro_f1 = 0;
  /// Adversarial training (single-label): top-1 on validation photos under the training
  /// attack; < 0 when not measured.
  double val_robust_top1 = -1;
  double val_map = 0, val_micro_f1 = 0;  ///< multi-label
  /// Semi-supervised runs: the share of unlabelled photos whose weak view was confident
  /// enough to become a target (FixMatch's mask rate); < 0 when there are none.
  double unlabelled_confident = -1;
  bool has_val = false, best = false, multi_label = false;
  int64_t skipped = 0;
  std::string to_json() const;
  /// Parses a to_json() line; throws (nlohmann::json's errors) on a malformed one.
  static EpochRecord from_json(const std::string& text);
};

struct TrainResult {
  std::vector<EpochRecord> history;
  int64_t best_epoch = -1;
  double best_value = 0;
  bool stopped_early = false;
  std::string best_dir, last_dir;
  std::vector<std::string> warnings;
  bool has_test = false;        ///< the data has a test split, evaluated with the best model
  double test_top1 = 0, test_macro_f1 = 0;
  bool test_multi_label = false;  ///< test_map and test_macro_f1 are set, not test_top1
  double test_map = 0;        ///< multi-label data: mean average precision on the test split
  double test_micro_f1 = 0;   ///< multi-label data: micro-F1 on the test split
  int64_t test_skipped = 0;   ///< test images that could not be read
  std::string report;           ///< report.html of the run
  int64_t trainable_params = 0, total_params = 0;  ///< numbers of weights
};

class Trainer {
 public:
  explicit Trainer(TrainOptions options);
  ~Trainer();

  /// Trains, validates, checkpoints; `on_step` and `on_epoch` feed progress displays.
  TrainResult run(const std::function<void(const StepInfo&)>& on_step = {},
                  const std::function<void(const EpochRecord&)>& on_epoch = {});

  const models::VisionModelImpl& model() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace vitrine::train
