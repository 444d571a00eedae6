// One optimisation epoch as fine-tuning (`train`) and pretraining (`pretrain`) share it:
// seeded generators, the loader's position, loss -> backward -> clipping -> schedule ->
// step, mid-epoch saves and progress. What differs, the loss of a batch and what follows a
// step (a model EMA), comes in as functions, so other objectives slot in the same way.
#pragma once

#include "vitrine/data/loader.h"
#include "vitrine/image/augment.h"
#include "vitrine/models/model.h"
#include "vitrine/train/optim.h"
#include "vitrine/train/run_state.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace vitrine::train {

/// What a progress display gets after every optimisation step.
struct StepInfo {
  int64_t epoch, epochs, step_in_epoch, steps_per_epoch;
  double loss;
  double top1;  ///< the step's accuracy (pretraining: the share of views that found their pair)
  double lr, img_per_s;
  double seconds;  ///< since the epoch started (a resumed epoch counts its earlier part)
};

/// The optimisation a loop drives; `step` counts optimisation steps over the whole run.
struct Optimisation {
  const models::VisionModelImpl& model;  ///< checked for non-finite weights after each epoch
  torch::optim::Optimizer& optimizer;
  const std::vector<ParamGroup>& groups;
  const OptimizerOptions& options;
  const ScheduleOptions& schedule;
  const std::vector<at::Tensor>& trainable;  ///< for gradient clipping
  double clip_grad;                          ///< max gradient norm; 0 = off
  int64_t& step;
};

struct EpochHooks {
  /// The loss of a batch (a scalar with a graph); `top1` receives the batch's accuracy.
  std::function<at::Tensor(data::Batch& batch, std::mt19937_64& rng, double& top1)> loss;
  std::function<void()> after_backward;              ///< optional, e.g. a gradient all-reduce
  std::function<void()> after_step;                  ///< optional, e.g. a model EMA
  std::function<void(const EpochProgress&)> save;    ///< the state mid-epoch
  std::function<void(const StepInfo&)> on_step;      ///< optional progress
};

struct EpochPlan {
  int64_t epoch = 0, epochs = 0;
  uint64_t seed = 0;
  int64_t steps_per_epoch = 0;
  int64_t save_every = 0;     ///< save mid-epoch every this many steps; 0 = never
  std::string last_good;      ///< the checkpoint an error message points to
  /// One of several processes that all-reduce every step: a batch it cannot take (lost to
  /// unreadable images) is an error, since skipping it would pair its steps with others'.
  bool distributed = false;
  /// Smaller batches (left by unreadable images) are skipped: a batch norm in training mode
  /// needs two images, and a contrastive loss pairs them.
  int64_t min_batch = 2;
  /// The unreadable photos named in earlier epochs (null: name every one each epoch): a bad
  /// photo is named once, and counted in the epochs after.
  std::set<std::string>* reported = nullptr;
  /// This process's rank among data-parallel ones: each draws its own dropout masks and
  /// mixing, as each holds other images.
  int rank = 0;
};

/// What an epoch did.
struct EpochSummary {
  double lr = 0;         ///< at its last step
  double loss = 0;       ///< mean over its images
  double top1 = 0;       ///< mean over its images
  double seconds = 0;    ///< wall time (a resumed epoch counts its earlier part)
  double img_per_s = 0;
  int64_t skipped = 0;   ///< images that failed to decode (each logged as a warning)
};

/// The loader of a training split: shuffled by `seed`, the last short batch dropped when
/// the split holds a full one (as timm: a few images would weigh more, and a batch of one
/// breaks batch norm).
data::LoaderOptions training_loader_options(int64_t batch_size, int64_t split_size, uint64_t seed,
                                            int workers, bool strict);

/// Whether `data` is stored grey (Fashion-MNIST), judged by its first readable image; photos
/// decoded from files have 3 channels. Unreadable images are passed over (up to 16): the
/// loader reports them.
bool grey_data(const data::Dataset& data);

/// The config a run (train or pretrain) starts from: the --init model directory's, without
/// its int8 calibration (training changes the weights it measured), or a new `arch`'s with
/// `in_channels` (0: 1 where `grey_data()` says the data is grey, else 3; asked only
/// then) and `stem`. Throws for flags that do not apply to the one given (both or neither
/// given, --stem or another --in-channels with --init).
models::ModelConfig starting_config(const std::string& arch, const std::string& init_dir,
                                    const std::string& stem, int64_t in_channels,
                                    const std::function<bool()>& grey_data);

/// The settings of a run's model that its resume must keep (StateHeader::settings): the
/// architecture, input size and channels, and a ResNet's stem. Without them, a resume that
/// leaves out --image-size would rebuild the model at the architecture's default size.
std::vector<std::pair<std::string, std::string>> model_settings(const models::ModelConfig& cfg);

/// One augmentation of each photo (C x H x W), the photo first brought to `t.channels`.
data::SampleTransform one_view(image::TrainTransform t);

/// Two augmentations of each photo, drawn one after the other and stacked (2 x C x H x W),
/// the photo first brought to `first.channels`: SimCLR's two views (the same settings
/// twice), FixMatch's weak and strong ones.
data::SampleTransform two_views(image::TrainTransform first, image::TrainTransform second);

/// Seeds libtorch's default generator and `rng` for an epoch from (seed, epoch, rank), or
/// restores them from `resume` (a state saved mid-epoch, the lead's). Rank 0 draws what a
/// one-process run draws; another rank draws its own streams, also after a resume (derived
/// from the restored state and its rank, since the state saved is the lead's).
void seed_epoch(const EpochPlan& plan, const EpochProgress& resume, std::mt19937_64& rng);

/// Runs one epoch: libtorch's generator and the epoch's std::mt19937_64 seeded from (seed,
/// epoch), or restored from `resume` (then the loader starts at its position and the sums
/// continue); for each batch of two or more images (batch norm cannot normalise one, and a
/// contrastive loss needs another image): loss, backward, clipping, schedule, optimiser
/// step, after_step, then a save every `save_every` steps (not after an epoch's last batch)
/// and on_step. Throws, naming `last_good`, when the loss or, after the epoch, a weight or
/// buffer of the model (batch-norm statistics diverge too) is not finite.
EpochSummary run_epoch(data::Loader& loader, const EpochPlan& plan, EpochProgress resume,
                       Optimisation& optimisation, const EpochHooks& hooks);

}  // namespace vitrine::train
