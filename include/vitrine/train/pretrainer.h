// Self-supervised pretraining: the loop behind `vitrine pretrain`. SimCLR (two augmented
// views of each image, a projection head, the NT-Xent loss) or, for ViTs, MAE (the encoder
// sees a quarter of each image's patches, a small decoder paints the rest) teaches a
// backbone from unlabelled photos; a k-NN monitor on a few labelled images, when the data
// has labels, shows each epoch how well the embeddings already separate the classes. The
// result is a model directory without a head that `vitrine train --init` fine-tunes.
#pragma once

#include "vitrine/data/dataset.h"
#include "vitrine/image/augment.h"
#include "vitrine/train/loop.h"
#include "vitrine/train/optim.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace vitrine::train {

/// MAE's augmentation: random-resized crop (0.2-1 of the area) and flip, nothing else.
image::TrainTransform mae_augment();

/// SimCLR's augmentation for images of `image_size` (0: unknown): random-resized crop
/// (0.2-1 of the area), flip, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale with
/// p 0.2 and, for photos of 96 px and more, Gaussian blur with p 0.5.
image::TrainTransform simclr_augment(int64_t image_size);

struct PretrainOptions {
  // Model: a registered architecture from scratch, or a model directory to pretrain
  // further (domain adaptation of an imported backbone).
  std::string arch;
  std::string init_dir;
  int64_t image_size = 0;   ///< 0: the architecture's (or the init model's)
  int64_t in_channels = 0;  ///< 0: from the data
  std::string resnet_stem;  ///< --arch ResNets: imagenet | small | cifar
  double drop_path = -1;    ///< < 0: the model's
  double eval_crop_pct = 0; ///< the saved model's eval crop; 0 as in `train`

  data::DataOptions data;
  int64_t batch_size = 256;  ///< images per step (2x as many views)
  int workers = 0;
  bool strict = false;

  std::string method = "simclr";
  /// size, mean, std and channels come from the model; blur is set for the image size
  /// unless `blur_set`
  image::TrainTransform augment = simclr_augment(0);
  bool blur_set = false;
  double temperature = 0.2;  ///< simclr
  int64_t proj_hidden = 0;   ///< simclr: 0 for the embedding width
  int64_t proj_dim = 128;    ///< simclr
  double mask_ratio = 0.75;  ///< mae: the share of each image's patches the encoder never sees
  int64_t decoder_width = 256, decoder_depth = 4, decoder_heads = 8;  ///< mae

  OptimizerOptions optim;  ///< AdamW, lr 1e-3, weight decay 0.05 (not on norms and biases)
  std::string schedule = "cosine";
  double warmup_epochs = 1;
  double min_lr = 0;
  double clip_grad = 0;
  std::string amp = "none";  ///< none | bf16

  int64_t epochs = 100;
  /// k-NN monitor: a bank of this many labelled training images per class, queried with
  /// up to knn_queries validation images; 0 turns it off.
  int64_t knn_bank_per_class = 100;
  int64_t knn_queries = 2000;
  int64_t knn_k = 20;

  std::string out_dir;
  uint64_t seed = 0;
  bool resume = false;
  bool overwrite = false;  ///< replace a run already in out_dir (check_run_dir)
  int64_t save_every_steps = 0;  ///< also save the resumable state every N steps
  std::string command;           ///< the command line, for the model's provenance
};

/// One line of the pretraining log (metrics.jsonl).
struct PretrainEpoch {
  int64_t epoch = 0;
  double lr = 0, loss = 0, seconds = 0, img_per_s = 0;
  double contrast_top1 = -1;  ///< simclr: the share of views that found their partner
  double knn_top1 = -1;  ///< < 0: no monitor
  int64_t skipped = 0;
  std::string to_json() const;
  /// Parses a to_json() line; throws (nlohmann::json's errors) on a malformed one.
  static PretrainEpoch from_json(const std::string& text);
};

struct PretrainResult {
  std::vector<PretrainEpoch> history;
  std::string last_dir;  ///< the backbone after the last epoch (a model directory)
  double seconds = 0;    ///< this invocation's wall time
};

class Pretrainer {
 public:
  explicit Pretrainer(PretrainOptions options);
  ~Pretrainer();

  /// Pretrains; StepInfo::top1 is, for SimCLR, the share of views whose most similar view is
  /// their pair (0 for MAE).
  PretrainResult run(const std::function<void(const StepInfo&)>& on_step = {},
                     const std::function<void(const PretrainEpoch&)>& on_epoch = {});

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace vitrine::train
