#include "vitrine/train/trainer.h"

#include "vitrine/core/csv.h"
#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/json.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/core/text.h"
#include "vitrine/data/duplicates.h"
#include "vitrine/data/loader.h"
#include "vitrine/image/transform.h"
#include "vitrine/models/adapter.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"
#include "vitrine/models/registry.h"
#include "vitrine/train/autocast.h"
#include "vitrine/train/evaluate.h"
#include "vitrine/train/loop.h"
#include "vitrine/train/loss.h"
#include "vitrine/train/metrics.h"
#include "vitrine/train/report.h"
#include "vitrine/train/run_files.h"
#include "vitrine/train/run_state.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <spdlog/spdlog.h>
#include <torch/serialize.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <utility>

namespace vitrine::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

/// A backbone `vitrine pretrain` made has seen, without labels, every photo its pretraining
/// did not leave out: where this run's test split holds such photos, its test score is
/// optimistic. Found by reading the pretraining's data as it read it and comparing files,
/// whatever the sources are called (a folder and a manifest of its photos, a path relative
/// to another directory).
void warn_if_backbone_saw_test_photos(const std::string& provenance, const std::string& init_dir,
                                      const data::DataOptions& options,
                                      const data::DataSplits& splits, bool say) {
  if (!splits.test || splits.test->size() == 0) return;
  const json p = json::parse(provenance, nullptr, false);
  if (!p.is_object() || p.value("source", "") != "vitrine pretrain") return;
  // Where it was read: the absolute path recorded since, or the name as given then.
  std::string source = p.value("data_path", std::string());
  if (source.empty()) source = p.value("data", std::string());
  if (source.empty()) return;
  // Fashion-MNIST's test set is never a pretraining photo, and its items are no one's files.
  if (source == "fashion-mnist" || options.source == "fashion-mnist") return;
  data::DataOptions d = options;
  d.source = source;
  d.val_split = p.value("val_split", -1.0);
  d.test_split = p.value("test_split", 0.0);
  d.seed = p.value("data_seed", uint64_t{0});
  d.labels_per_class = 0;
  d.label_fraction = 1.0;
  // A photo's file as one name however it is reached (relative, "./", through a link): its
  // folder resolved once (a catalogue has few), then its name.
  std::map<std::string, std::string> folders;
  const auto file = [&folders](const std::string& name) {
    const fs::path path(name);
    const std::string parent = path.parent_path().string();
    auto it = folders.find(parent);
    if (it == folders.end()) it = folders.emplace(parent, canonical_path(parent)).first;
    return (fs::path(it->second) / path.filename()).string();
  };
  std::set<std::string> tested;  // the test split is the smaller side
  for (int64_t i = 0; i < splits.test->size(); ++i) tested.insert(file(splits.test->name(i)));
  int64_t overlap = 0;
  try {
    const auto pre = data::open_pretraining_data(d);
    for (const auto& split : {pre.train, pre.val}) {
      for (int64_t i = 0; split && i < split->size(); ++i) {
        overlap += tested.count(file(split->name(i)));
      }
    }
  } catch (const std::exception&) {
    return;  // the data as it was then cannot be read now: nothing to compare
  }
  if (overlap == 0 || !say) return;
  const std::string advice =
      options.test_split > 0
          ? fmt::format("pretrain on {} with this run's --test-split {} and --data-seed {}, or "
                        "give the data a test/ folder", options.source, options.test_split,
                        options.seed)
          : std::string("pretrain on photos without this run's test photos (a root with "
                        "train/ and test/ folders leaves test/ out)");
  // Backbones made before the split settings were recorded are taken to have left none out.
  const char* unsure = p.contains("test_split") ? "" : " (if it left none out: it predates "
                                                       "the record of that)";
  spdlog::warn("{} of the {} test photos were pretraining photos of {}{} (seen without their "
               "labels): the test score is optimistic. To keep them out, {}",
               overlap, splits.test->size(), init_dir, unsure, advice);
}

/// Validation or test photos that are byte-for-byte training photos (a copy under another
/// name, one photo for two products) are scored as new but were learned: said with a count
/// and one pair, as the scores they inflate are the ones a user trusts.
void warn_of_photos_in_two_splits(const data::DataSplits& splits, bool say) {
  const std::pair<const char*, const std::shared_ptr<data::Dataset>*> sides[] = {
      {"validation", &splits.val}, {"test", &splits.test}};
  for (const auto& [side, split] : sides) {
    if (!*split || (*split)->size() == 0) continue;
    const auto repeats = data::repeated_files(*splits.train, **split);
    if (repeats.empty() || !say) continue;
    const bool test = std::string(side) == "test";
    spdlog::warn("{} of the {} {} photos have the bytes of a training photo (e.g. {} and {}): "
                 "{}. Keep each photo, and each product's photos, in one split",
                 repeats.size(), (*split)->size(), side,
                 (*split)->name(repeats.front().first),
                 splits.train->name(repeats.front().second),
                 test ? "the test score counts them as unseen and is optimistic"
                      : "validation counts them as unseen, which favours the models that "
                        "memorise when it picks the best epoch and stops early");
  }
}

/// Test metrics as written to test_metrics.json: the figures and which photos they are of
/// (the digest of their paths within the data's folder, which stays when it moves), so that
/// `vitrine compare` can tell runs tested on other photos of the same count.
std::string test_metrics_json(const std::string& figures, const data::Dataset& photos,
                              const std::string& source) {
  json j = json::parse(figures);
  j["photos_sha256"] = data::items_digest(photos, source);
  return json_text(j);
}

/// Settings a resumed run takes as given: kept in the state, and warned about when a resume
/// changes them (the run then goes on as neither setting's run would).
std::vector<ResumedSetting> resumable_settings(const TrainOptions& o) {
  const auto& a = o.augment;
  auto settings = optimisation_settings(o.optim.lr, o.optim.weight_decay, o.warmup_epochs);
  settings.insert(settings.end(),
                  {{"--label-smoothing", "label_smoothing", o.label_smoothing},
                   {"--drop", "dropout", o.dropout},
                   {"--drop-path", "drop_path", o.drop_path},
                   {"--mixup", "mixup", o.mixup},
                   {"--cutmix", "cutmix", o.cutmix},
                   {"--scale (its lower bound)", "scale_min", a.scale[0]},
                   {"--hflip", "hflip", a.hflip},
                   {"--color-jitter", "color_jitter", a.brightness},
                   {"--rotation", "rotation", a.rotation},
                   {"--reprob", "random_erasing", a.random_erasing}});
  return settings;
}

// Bumped when the resumable state's layout changes.
constexpr int kStateVersion = 2;

/// "qkv,proj,fc1": names as --lora-targets takes them.
std::string comma_list(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ",") + n;
  return out;
}

double beta_sample(double alpha, std::mt19937_64& rng) {
  std::gamma_distribution<double> g(alpha, 1.0);
  const double a = g(rng), b = g(rng);
  return a / (a + b);
}

// KL(target || softmax(logits / t)) averaged over the batch: distillation's term.
at::Tensor kl_from(const at::Tensor& target, const at::Tensor& logits, double t) {
  const at::Tensor log_p = at::log_softmax(logits.to(at::kFloat) / t, 1);
  return (target * (target.clamp_min(1e-12).log() - log_p)).sum(1).mean();
}

}  // namespace

std::string EpochRecord::to_json() const {
  json j{{"epoch", epoch},           {"lr", lr},
         {"train_loss", train_loss}, {"train_top1", train_top1},
         {"seconds", seconds},       {"img_per_s", img_per_s},
         {"skipped_images", skipped}};
  if (unlabelled_confident >= 0) j["unlabelled_confident"] = unlabelled_confident;
  if (has_val && multi_label) {
    j["val_map"] = val_map;
    j["val_micro_f1"] = val_micro_f1;
    j["val_macro_f1"] = val_macro_f1;
    j["best"] = best;
  } else if (has_val) {
    j["val_loss"] = val_loss;
    j["val_top1"] = val_top1;
    // null with five classes or fewer, where top-5 is 1 by definition (as eval writes it)
    j["val_top5"] = std::isnan(val_top5) ? json(nullptr) : json(val_top5);
    j["val_macro_f1"] = val_macro_f1;
    if (val_robust_top1 >= 0) j["val_robust_top1"] = val_robust_top1;
    j["best"] = best;
  }
  return j.dump();
}

EpochRecord EpochRecord::from_json(const std::string& text) {
  const json r = json::parse(text);
  EpochRecord e;
  e.epoch = r.at("epoch");
  e.lr = r.at("lr");
  e.train_loss = r.at("train_loss");
  e.train_top1 = r.at("train_top1");
  e.seconds = r.value("seconds", 0.0);
  e.img_per_s = r.value("img_per_s", 0.0);
  e.skipped = r.value("skipped_images", int64_t{0});
  e.unlabelled_confident = r.value("unlabelled_confident", -1.0);
  e.multi_label = r.contains("val_map");
  e.has_val = r.contains("val_top1") || e.multi_label;
  if (e.multi_label) {
    e.val_map = r.at("val_map");
    e.val_micro_f1 = r.at("val_micro_f1");
    e.val_macro_f1 = r.at("val_macro_f1");
    e.best = r.at("best");
  } else if (e.has_val) {
    e.val_loss = r.at("val_loss");
    e.val_top1 = r.at("val_top1");
    e.val_top5 = r.at("val_top5").is_null() ? std::nan("") : r.at("val_top5").get<double>();
    e.val_macro_f1 = r.at("val_macro_f1");
    e.val_robust_top1 = r.value("val_robust_top1", -1.0);
    e.best = r.at("best");
  }
  return e;
}

struct Trainer::State {
  TrainOptions o;
  data::DataSplits data;
  models::VisionModel model, ema;
  bool channels_last = false;  ///< the model trains in channels-last layout
  bool batch_norms = false;    ///< the model has batch norms
  /// Batch norms that learn from batches: not frozen, in a model that is not a linear probe.
  bool training_batch_norms = false;
  bool batch_norms_train() const { return training_batch_norms && o.freeze != "backbone"; }
  std::vector<ParamGroup> groups;
  std::vector<at::Tensor> trainable;  ///< every group's parameters, for gradient clipping
  /// (EMA tensor, model tensor) pairs; load_state_dict copies in place, so they stay valid.
  std::vector<std::pair<at::Tensor, at::Tensor>> ema_pairs;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  ScheduleOptions schedule;
  at::Tensor class_weights;
  int64_t steps_per_epoch = 0;
  int64_t step = 0;
  int64_t start_epoch = 0;
  TrainResult result;
  std::set<std::string> reported;  ///< unreadable training photos already named
  mutable std::string items_digest;  ///< of data.train, once computed (state_header)
  int64_t bad_epochs = 0;
  EpochProgress resume_progress;  ///< set by load_state when the state is mid-epoch
  bool replaces_run = false;      ///< --overwrite and out_dir holds a run: removed in run()
  std::unique_ptr<ProcessGroup> group;  ///< data-parallel runs only
  /// Distillation: the teacher (inference path) and, per data class, its logit column.
  std::unique_ptr<models::Predictor> teacher;
  at::Tensor teacher_columns;
  void load_teacher();
  at::Tensor teacher_logits(const at::Tensor& images) const;
  /// FixMatch: the unlabelled photos, their loader (two views per photo) and the position of
  /// its next batch, a function of the optimisation step (so a resumed run draws the same).
  std::shared_ptr<data::Dataset> unlabelled;
  std::unique_ptr<data::Loader> unlabelled_loader;
  int64_t unlabelled_epoch = -1, unlabelled_next = 0;
  size_t unlabelled_errors_seen = 0;  ///< of the unlabelled loader's epoch, already looked at
  double confident_sum = 0;  ///< this epoch: the share of unlabelled photos given a target,
  int64_t confident_steps = 0;  ///< summed over its steps
  void open_unlabelled();
  data::SampleTransform weak_and_strong_views() const;
  data::Batch next_unlabelled();
  bool lead() const { return !group || group->rank() == 0; }
  void average_gradients();

  std::string path(const std::string& name) const { return (fs::path(o.out_dir) / name).string(); }
  void build_model();
  void build_optimizer();
  /// The --augment settings at the model's size, normalisation and channels.
  image::TrainTransform augmentation() const;
  data::SampleTransform train_transform() const;
  at::Tensor train_step(data::Batch& batch, std::mt19937_64& rng, double& top1);
  at::Tensor adversarial_batch(const at::Tensor& images, const at::Tensor& targets);
  void update_ema();
  void save_state(int64_t epochs_done, const EpochProgress& progress = {});
  /// The state file's header: counters, and what the run learns from.
  StateHeader state_header(int64_t epochs_done, const EpochProgress& progress) const;
  void write_run_report();
  void add_replay();
  void store_replay(const std::string& dir) const;
  /// A model directory (adapters merged) and, with --save-adapter, adapter.safetensors.
  void save_model_dir(const models::VisionModelImpl& m, const std::string& dir) const;
  /// The saved models' provenance: this run's settings, and the --init model's own
  /// provenance under init_provenance (so a fine-tuned backbone keeps its pretraining).
  void set_provenance();
  void load_state();
  bool improved(double value) const;
  std::vector<double> balanced_sample_weights() const;
};

std::vector<double> Trainer::State::balanced_sample_weights() const {
  const int64_t n = data.train->size();
  std::vector<int64_t> counts(data.classes.size(), 0);
  for (int64_t i = 0; i < n; ++i) ++counts[data.train->labels(i).at(0)];
  std::vector<double> weights(n);
  for (int64_t i = 0; i < n; ++i) weights[i] = 1.0 / counts[data.train->labels(i).at(0)];
  return weights;
}

void Trainer::State::build_model() {
  const int64_t classes = static_cast<int64_t>(data.classes.size());
  // A softmax over one class is 1 whatever the photo: the loss is 0 and nothing is learnt.
  VT_CHECK(classes >= 2 || data.multi_label, o.data.source, " has one class ('",
           data.classes.empty() ? "" : data.classes.front(), "'): a classifier needs two or more; "
           "is --data one folder too deep? (ImageFolder: ROOT/<class>/photo.jpg)");
  models::ModelConfig cfg;
  StateDict init_weights;
  bool init_has_head = false;
  int64_t init_classes = 0;
  cfg = starting_config(o.arch, o.init_dir, o.resnet_stem, o.in_channels,
                        [&] { return grey_data(*data.train); });
  if (!o.init_dir.empty()) {
    init_has_head = cfg.num_classes > 0;
    init_classes = cfg.num_classes;
    init_weights = safetensors_load((fs::path(o.init_dir) / "model.safetensors").string()).tensors;
    // A backbone without a head (pretrained, or imported with --num-classes 0) gets one.
    VT_CHECK(cfg.num_classes == classes || cfg.num_classes == 0 || o.reinit_head ||
                 o.append_classes,
             o.init_dir, " has a head of ", cfg.num_classes, " classes but the data has ",
             classes, "; pass --reinit-head to train a new head, or --append-classes to add the "
             "new classes to it (continual fine-tuning)");
  }
  // The --init model's own size given again is no new size: its eval transform (a timm
  // checkpoint's crop 0.9, say) stays.
  const bool new_size = o.image_size > 0 && o.image_size != cfg.image_size;
  if (new_size) models::set_image_size(cfg, o.image_size);
  // A model directory keeps the eval transform its weights came with, unless asked.
  const double crop_pct = o.eval_crop_pct > 0 ? o.eval_crop_pct
                          : o.init_dir.empty() || new_size ? 0.875
                                                           : 0.0;
  VT_CHECK(crop_pct >= 0 && crop_pct <= 1, "--eval-crop-pct must be in (0, 1]");
  if (crop_pct > 0) models::set_eval_crop(cfg, crop_pct);
  if (o.dropout >= 0) cfg.dropout = o.dropout;
  if (o.drop_path >= 0) cfg.drop_path = o.drop_path;
  cfg.num_classes = classes;
  cfg.labels = data.classes;
  cfg.task = data.multi_label ? "multi_label" : "single_label";
  cfg.thresholds.clear();
  model = models::create_model(cfg);
  if (!init_weights.empty()) {
    const bool append = o.append_classes && !o.reinit_head && init_has_head && init_classes != classes;
    models::LoadOptions lo;
    lo.reinit_head = o.reinit_head || !init_has_head || append;
    if (o.reinit_head) {
      // A new head asked for is new whatever its shape: with as many classes as before, the
      // old rows would be loaded, each under another class's name.
      const std::string head = model->head_name() + ".";
      init_weights.erase(std::remove_if(init_weights.begin(), init_weights.end(),
                                        [&](const auto& t) { return t.first.rfind(head, 0) == 0; }),
                         init_weights.end());
    }
    auto report = models::load_state_dict(*model, init_weights, lo);
    if (append) {  // the head's rows are carried over below, not re-initialised
      const std::string head = model->head_name() + ".";
      auto& a = report.adapted;
      a.erase(std::remove_if(a.begin(), a.end(),
                             [&](const std::string& e) { return e.rfind(head, 0) == 0; }),
              a.end());
    }
    if (!report.adapted.empty()) spdlog::info("initialised from {}:{}", o.init_dir, report.summary());
    if (append) {
      // The known classes come first in the data's class list (see the constructor): their
      // rows of the head are the old ones.
      at::NoGradGuard no_grad;
      const std::string head = model->head_name() + ".";
      for (auto& item : model->named_parameters()) {
        if (item.key().rfind(head, 0) != 0) continue;
        for (const auto& [name, t] : init_weights) {
          if (name == item.key()) item.value().narrow(0, 0, init_classes).copy_(t);
        }
      }
      spdlog::info("appended {} classes to the head of {} ({} kept)", classes - init_classes,
                   o.init_dir, init_classes);
    }
  }
  if (o.lora_rank > 0) {
    VT_CHECK(o.ema_decay == 0, "--model-ema-decay with LoRA is not yet supported");
    VT_CHECK(o.freeze == "none", "LoRA freezes the backbone itself; drop --freeze");
    VT_CHECK(!o.save_adapter || !o.init_dir.empty(), "--save-adapter saves what LoRA adds to "
             "a base model, which `merge-adapter` checks by its weights: give that base with "
             "--init (a --model of random weights is no base to add it to)");
    models::LoraOptions lo = o.lora;
    lo.rank = o.lora_rank;
    const int64_t adapted = model->add_lora(lo);
    spdlog::info("LoRA: rank {} (alpha {}) on {} matrices ({})", lo.rank, lo.alpha, adapted,
                 comma_list(lo.targets));
  } else {
    VT_CHECK(!o.save_adapter, "--save-adapter needs LoRA (--lora-rank)");
  }
  channels_last = model->use_channels_last_for_training();
  batch_norms = has_batch_norms(*model);
  if (o.ema_decay > 0) {
    VT_CHECK(o.ema_decay < 1, "--model-ema-decay must be in (0, 1)");
    ema = models::create_model(cfg);
    const StateDict src = models::model_state_dict(*model);
    load_state_dict(*ema, src);
    ema->use_channels_last_for_training();
    for (auto& p : ema->parameters()) p.set_requires_grad(false);
    const StateDict dst = models::model_state_dict(*ema);
    for (size_t i = 0; i < dst.size(); ++i) ema_pairs.emplace_back(dst[i].second, src[i].second);
  }
}

void Trainer::State::build_optimizer() {
  const int64_t frozen = apply_freeze(*model, o.freeze);
  if (frozen > 0) spdlog::info("froze {} tensors ({})", frozen, o.freeze);
  if (o.lora_rank > 0) {
    // Only the adapters and the head learn.
    const std::string head = model->head_name() + ".";
    for (auto& item : model->named_parameters()) {
      item.value().set_requires_grad(item.key().find("lora_") != std::string::npos ||
                                     item.key().rfind(head, 0) == 0);
    }
  }
  for (const auto& item : model->named_parameters()) {
    const int64_t n = item.value().numel();
    result.total_params += item.key().find("lora_") == std::string::npos ? n : 0;
    result.trainable_params += item.value().requires_grad() ? n : 0;
  }
  spdlog::info("trainable weights: {} of {} ({:.2f}%)", result.trainable_params,
               result.total_params,
               100.0 * static_cast<double>(result.trainable_params) /
                   static_cast<double>(std::max<int64_t>(1, result.total_params)));
  training_batch_norms = has_training_batch_norms(*model);
  groups = param_groups(*model, o.optim);
  for (const auto& g : groups) trainable.insert(trainable.end(), g.params.begin(), g.params.end());
  optimizer = make_optimizer(groups, o.optim);
  schedule.name = o.schedule;
  schedule.total_steps = std::max<int64_t>(1, steps_per_epoch * o.epochs);
  schedule.warmup_steps = static_cast<int64_t>(std::llround(o.warmup_epochs * steps_per_epoch));
  schedule.min_lr = o.min_lr;
  schedule.gamma = o.lr_gamma;
  for (const int64_t e : o.lr_milestones) schedule.milestones.push_back(e * steps_per_epoch);
}

void Trainer::State::open_unlabelled() {
  VT_CHECK(!data.multi_label, "--unlabelled (FixMatch) is for single-label data; these labels "
           "are multi-label, so train without --unlabelled");
  VT_CHECK(o.unlabelled_ratio >= 1, "--unlabelled-ratio must be at least 1, got ",
           o.unlabelled_ratio);
  VT_CHECK(o.pseudo_threshold >= 0 && o.pseudo_threshold <= 1,
           "--pseudo-threshold must be in [0, 1], got ", o.pseudo_threshold);
  VT_CHECK(o.unlabelled_weight >= 0, "--unlabelled-weight must not be negative, got ",
           o.unlabelled_weight);
  data::DataOptions d;
  d.source = o.unlabelled;
  d.seed = o.data.seed;
  d.fashion_mnist_dir = o.data.fashion_mnist_dir;
  // The training data's own photos (however the path is written): the same split keeps its
  // validation and test photos out.
  std::error_code ec;
  const bool same = o.unlabelled == o.data.source ||
                    (o.data.source != "fashion-mnist" && fs::exists(o.unlabelled, ec) &&
                     fs::equivalent(o.unlabelled, o.data.source, ec));
  d.val_split = same ? o.data.val_split : 0.0;
  d.test_split = same ? o.data.test_split : 0.0;
  d.max_pixels = o.data.max_pixels;
  data::DataSplits u = same ? data::open_data(d) : data::open_pretraining_data(d);
  for (const auto& w : u.warnings) spdlog::warn("--unlabelled: {}", w);
  VT_CHECK(u.train && u.train->size() > 0, "--unlabelled ", o.unlabelled, " holds no photos");
  unlabelled = u.train;
  if (!same && o.data.source != "fashion-mnist") {
    // Another source may still hold the val/test photos (a catalogue folder of which the
    // labelled photos are a part, a manifest's photo folder): learnt from, they would make
    // the val/test scores optimistic. Left out by file.
    std::set<std::string> held_out;
    for (const auto& split : {data.val, data.test}) {
      for (int64_t i = 0; split && i < split->size(); ++i) {
        held_out.insert(canonical_path(split->name(i)));
      }
    }
    if (!held_out.empty()) {
      std::vector<int64_t> keep;
      for (int64_t i = 0; i < unlabelled->size(); ++i) {
        if (!held_out.count(canonical_path(unlabelled->name(i)))) keep.push_back(i);
      }
      const auto dropped = unlabelled->size() - static_cast<int64_t>(keep.size());
      if (dropped > 0) {
        spdlog::info("--unlabelled: {} of its photos are validation or test photos of --data, "
                     "left out", dropped);
        VT_CHECK(!keep.empty(), "--unlabelled ", o.unlabelled, " holds only validation and "
                 "test photos of --data");
        unlabelled = data::subset(unlabelled, std::move(keep));
      }
    }
  }
  // Label smoothing teaches the model never to be surer than 1 - e + e / K.
  const double k = static_cast<double>(data.classes.size());
  const double surest = 1.0 - o.label_smoothing + o.label_smoothing / k;
  if (o.unlabelled_targets == "self" && o.pseudo_threshold > surest) {
    spdlog::warn("--label-smoothing {} keeps the model's confidence near {:.3f}, below "
                 "--pseudo-threshold {}: few unlabelled photos will get a target; drop label "
                 "smoothing or lower the threshold",
                 o.label_smoothing, surest, o.pseudo_threshold);
  }
  if (o.unlabelled_targets == "teacher") {
    spdlog::info("semi-supervised (the teacher's targets): {} unlabelled photos, {} per labelled "
                 "photo, weight {}",
                 unlabelled->size(), o.unlabelled_ratio, o.unlabelled_weight);
  } else {
    spdlog::info("semi-supervised (FixMatch): {} unlabelled photos, {} per labelled photo, "
                 "threshold {}, weight {}",
                 unlabelled->size(), o.unlabelled_ratio, o.pseudo_threshold, o.unlabelled_weight);
  }
}

data::SampleTransform Trainer::State::weak_and_strong_views() const {
  // FixMatch's weak view: the geometry alone (crop, flip, rotation), whatever else the
  // training augmentation adds; a target read off a photo the strong augmentation already
  // changed would be a guess about another photo.
  image::TrainTransform weak = augmentation();
  weak.brightness = weak.contrast = weak.saturation = weak.hue = 0;
  weak.grayscale = 0;
  weak.blur = 0;
  weak.auto_augment = "none";
  weak.random_erasing = 0;
  // The strong view: the training augmentation, with RandAugment and Cutout (here random
  // erasing) on top.
  image::TrainTransform strong = augmentation();
  if (strong.auto_augment == "none") strong.auto_augment = "randaugment";
  strong.random_erasing = 1.0;
  image::check_train_transform(strong);
  return two_views(weak, strong);
}

data::Batch Trainer::State::next_unlabelled() {
  const int64_t per_epoch = unlabelled_loader->batches_per_epoch();
  const int64_t epoch = step / per_epoch, index = step % per_epoch;
  if (epoch != unlabelled_epoch || index != unlabelled_next) {
    unlabelled_loader->start_epoch(epoch, index);
    unlabelled_epoch = epoch;
    unlabelled_errors_seen = 0;
  }
  data::Batch b;
  if (!unlabelled_loader->next(b)) {
    // The epoch's last batches all failed to decode: the next epoch's first batch.
    unlabelled_loader->start_epoch(++unlabelled_epoch, 0);
    unlabelled_errors_seen = 0;
    VT_CHECK(unlabelled_loader->next(b), "none of the --unlabelled photos could be read");
  }
  unlabelled_next = b.batch_index + 1;
  // Unreadable unlabelled photos are named once each, as labelled ones are (by the lead
  // process, which logs).
  if (lead()) {
    const auto errors = unlabelled_loader->errors();
    for (size_t i = unlabelled_errors_seen; i < errors.size(); ++i) {
      if (reported.insert("--unlabelled: " + errors[i]).second) {
        spdlog::warn("skipped (--unlabelled): {}", errors[i]);
      }
    }
    unlabelled_errors_seen = errors.size();
  }
  return b;
}

image::TrainTransform Trainer::State::augmentation() const {
  image::TrainTransform t = o.augment;
  const auto& cfg = model->config();
  t.size = cfg.image_size;
  t.mean = cfg.preprocess.mean;
  t.std = cfg.preprocess.std;
  t.channels = cfg.in_channels;
  t.interpolation = cfg.preprocess.interpolation;
  return t;
}

data::SampleTransform Trainer::State::train_transform() const {
  return one_view(augmentation());
}

at::Tensor Trainer::State::train_step(data::Batch& batch, std::mt19937_64& rng, double& top1) {
  const int64_t k = model->config().num_classes;
  at::Tensor images =
      channels_last ? batch.images.contiguous(at::MemoryFormat::ChannelsLast) : batch.images;
  const at::Tensor hard = batch.targets;
  const bool multi = data.multi_label;
  // Multi-label targets are smoothed towards 1/2 per label: each label is a two-class problem
  // of its own. (timm's BinaryCrossEntropy, made for one-hot targets, smooths towards 1/K.)
  at::Tensor soft = multi ? hard.to(at::kFloat) * (1.0 - o.label_smoothing) + o.label_smoothing / 2
                          : smoothed_targets(hard, k, o.label_smoothing);
  const bool use_mixup = o.mixup > 0, use_cutmix = o.cutmix > 0;
  const bool mixed = (use_mixup || use_cutmix) && images.size(0) > 1;
  // What a step's top-1 is scored against: with mixup or CutMix, the label with the larger
  // share of each mixed image (the unmixed label is wrong for an image mostly its partner).
  at::Tensor scored = hard;
  if (mixed) {
    const bool cut = use_cutmix && (!use_mixup || std::bernoulli_distribution(0.5)(rng));
    double lam = beta_sample(cut ? o.cutmix : o.mixup, rng);
    // Pair each sample with its neighbour in the reversed batch, as timm does.
    const at::Tensor flipped = images.flip(0);
    if (cut) {
      const int64_t h = images.size(2), w = images.size(3);
      const double r = std::sqrt(1.0 - lam);
      const int64_t ch = static_cast<int64_t>(h * r), cw = static_cast<int64_t>(w * r);
      const int64_t cy = std::uniform_int_distribution<int64_t>(0, h - 1)(rng);
      const int64_t cx = std::uniform_int_distribution<int64_t>(0, w - 1)(rng);
      const int64_t y0 = std::max<int64_t>(0, cy - ch / 2), y1 = std::min(h, cy + ch / 2);
      const int64_t x0 = std::max<int64_t>(0, cx - cw / 2), x1 = std::min(w, cx + cw / 2);
      images = images.clone();
      images.slice(2, y0, y1).slice(3, x0, x1).copy_(flipped.slice(2, y0, y1).slice(3, x0, x1));
      lam = 1.0 - static_cast<double>((y1 - y0) * (x1 - x0)) / (h * w);
    } else {
      images = images * lam + flipped * (1.0 - lam);
    }
    soft = soft * lam + soft.flip(0) * (1.0 - lam);
    if (lam < 0.5) scored = hard.flip(0);
  }
  // Attacks raise the loss the step is about to lower, on the targets it uses.
  if (o.adv != "none") images = adversarial_batch(images, soft);
  AutocastScope autocast(o.amp == "bf16");
  // FixMatch: with batch norms, the labelled images, the weak views and the strong views in
  // one forward pass (one batch for the batch norms, whose running statistics move once a
  // step, as FixMatch's; the weak views shape the batch statistics, and their detached
  // predictions are the targets). Without batch norms the weak views' predictions come
  // from a forward of their own without gradients (less memory, the same targets). With the
  // teacher's targets: its softened predictions on the weak views, for every photo, and
  // the model sees the strong views only.
  at::Tensor weak, weak_logits, strong, pseudo, confident, taught;
  if (unlabelled_loader) {
    data::Batch u = next_unlabelled();
    const auto layout =
        channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    weak = u.images.select(1, 0).contiguous(layout);
    strong = u.images.select(1, 1).contiguous(layout);
    if (o.unlabelled_targets == "teacher") {
      taught = at::softmax(teacher_logits(weak) / o.distill_temperature, 1);
      weak = at::Tensor();
    } else if (!batch_norms) {
      at::NoGradGuard no_grad;
      weak_logits = model->forward(weak);
      weak = at::Tensor();
    }
  }
  const int64_t labelled = images.size(0);
  std::vector<at::Tensor> parts{images};
  if (weak.defined()) parts.push_back(weak);
  if (strong.defined()) parts.push_back(strong);
  at::Tensor logits = model->forward(parts.size() > 1 ? at::cat(parts) : images);
  at::Tensor strong_logits;
  if (strong.defined()) {
    const int64_t n = strong.size(0);
    strong_logits = logits.narrow(0, logits.size(0) - n, n).to(at::kFloat);
  }
  if (weak.defined()) weak_logits = logits.narrow(0, labelled, weak.size(0)).detach();
  if (weak_logits.defined()) {
    const at::Tensor probs = at::softmax(weak_logits.to(at::kFloat), 1);
    const auto best = probs.max(1);
    confident = std::get<0>(best).ge(o.pseudo_threshold).to(at::kFloat);
    pseudo = std::get<1>(best);
    confident_sum += confident.mean().item<double>();
    ++confident_steps;
  }
  logits = logits.narrow(0, 0, labelled);
  VT_DCHECK(logits.size(1) == k);
  if (multi) {
    // "Accuracy" of a multi-label step: the share of right yes/no decisions at 0.5.
    top1 = logits.gt(0).eq(hard.gt(0.5)).to(at::kFloat).mean().item<double>();
    return at::binary_cross_entropy_with_logits(logits.to(at::kFloat), soft);
  }
  at::Tensor loss =
      soft_cross_entropy(logits.to(at::kFloat), soft, class_weights, mixed ? at::Tensor() : hard);
  top1 = logits.argmax(1).eq(scored).to(at::kFloat).mean().item<double>();
  if (teacher && o.distill_alpha > 0) {
    // The teacher sees what the model sees (mixed, cut or attacked images included).
    const double t = o.distill_temperature;
    const at::Tensor kl = kl_from(at::softmax(teacher_logits(images) / t, 1), logits, t);
    loss = (1 - o.distill_alpha) * loss + o.distill_alpha * t * t * kl;
  }
  if (taught.defined()) {
    const double t = o.distill_temperature;
    loss = loss + o.unlabelled_weight * t * t * kl_from(taught, strong_logits, t);
  } else if (strong_logits.defined()) {
    const at::Tensor per_photo = at::cross_entropy_loss(strong_logits, pseudo, {},
                                                        at::Reduction::None);
    loss = loss + o.unlabelled_weight * (per_photo * confident).mean();
  }
  return loss;
}

void Trainer::State::load_teacher() {
  VT_CHECK(!data.multi_label, "--teacher is for single-label data");
  VT_CHECK(o.distill_alpha >= 0 && o.distill_alpha <= 1, "--distill-alpha must be in [0, 1], got ",
           o.distill_alpha);
  VT_CHECK(o.distill_temperature > 0, "--distill-temperature must be positive, got ",
           o.distill_temperature);
  auto t = models::load_model(o.teacher_dir);
  const auto& c = t->config();
  VT_CHECK(c.num_classes > 0, o.teacher_dir, " has no classification head: a teacher must "
                              "classify the data's classes");
  std::vector<int64_t> columns;
  for (const auto& name : data.classes) {
    int64_t found = -1;
    for (int64_t j = 0; j < c.num_classes; ++j) {
      if (c.label(j) == name) found = j;
    }
    VT_CHECK(found >= 0, "the teacher ", o.teacher_dir, " does not know the class '", name,
             "' of the data; a teacher must classify the same classes (by name)");
    columns.push_back(found);
  }
  teacher_columns = at::tensor(columns, at::kLong);
  teacher = std::make_unique<models::Predictor>(t, models::Precision::kFp32);
  spdlog::info("distilling from {} ({}, {} engine), alpha {}, temperature {}", o.teacher_dir,
               c.arch, models::engine_name(teacher->engine()), o.distill_alpha,
               o.distill_temperature);
}

at::Tensor Trainer::State::teacher_logits(const at::Tensor& images) const {
  const auto& s = model->config().preprocess;
  const auto& t = teacher->config();
  at::Tensor x;
  {
    c10::InferenceMode guard;
    const auto stats = [](const std::vector<float>& v) {
      return at::tensor(v).view({1, -1, 1, 1});
    };
    // Back to pixels, into the teacher's channels, size and normalisation.
    x = images.detach().to(at::kFloat) * stats(s.std) + stats(s.mean);
    if (x.size(1) == 1 && t.in_channels == 3) {
      x = x.expand({-1, 3, -1, -1});
    } else if (x.size(1) == 3 && t.in_channels == 1) {
      // ITU-R 601 luma, as torchvision's Grayscale.
      x = (x * at::tensor({0.299f, 0.587f, 0.114f}).view({1, 3, 1, 1})).sum(1, true);
    }
    if (x.size(2) != t.image_size || x.size(3) != t.image_size) {
      x = at::upsample_bilinear2d(x, {t.image_size, t.image_size}, /*align_corners=*/false);
    }
    x = (x - stats(t.preprocess.mean)) / stats(t.preprocess.std);
  }
  // Outside inference mode: a plain tensor the loss may keep for its backward pass.
  return teacher->logits(x).index_select(1, teacher_columns).clone();
}

at::Tensor Trainer::State::adversarial_batch(const at::Tensor& images, const at::Tensor& targets) {
  const int64_t n = images.size(0);
  const int64_t k = std::min<int64_t>(n, std::llround(o.adv_ratio * static_cast<double>(n)));
  if (k == 0) return images;
  // Eval mode, as TRADES and most robust-training code make attacks: the attack's passes
  // neither move the batch-norm statistics nor see dropout's noise.
  // Each module's mode is put back as it was: train() is recursive, and restoring the root
  // alone would wake the batch norms --freeze until: holds in eval mode.
  std::vector<std::pair<std::shared_ptr<torch::nn::Module>, bool>> modes;
  for (const auto& m : model->modules(/*include_self=*/false)) {
    modes.emplace_back(m, m->is_training());
  }
  const bool was_training = model->is_training();
  const auto restore = [&] {
    model->train(was_training);
    for (const auto& [m, on] : modes) m->train(on);  // parents first: modules() is pre-order
  };
  model->eval();
  at::Tensor adv;
  try {
    AutocastScope autocast(o.amp == "bf16");
    const auto& pre = model->config().preprocess;
    adv = attack(*model, images.slice(0, 0, k), targets.slice(0, 0, k), o.adv_attack, pre.mean,
                 pre.std);
  } catch (...) {
    restore();
    throw;
  }
  restore();
  return k == n ? adv : at::cat({adv, images.slice(0, k)});
}

void Trainer::State::average_gradients() {
  std::vector<at::Tensor> grads;
  for (auto& p : trainable) {
    // A parameter the step did not reach still takes part, so every process sends the same.
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    grads.push_back(p.grad());
  }
  group->average(grads);
}

void Trainer::State::update_ema() {
  if (!ema) return;
  at::NoGradGuard no_grad;
  // Warmed up as timm's ModelEmaV3 with use_warmup: a fixed 0.999 from the first step would
  // keep the starting weights (a random head) through a short fine-tune, and the EMA is
  // what is validated and saved. `step` counts the steps before this one.
  const auto n = static_cast<double>(step + 1);
  const double decay = std::min(o.ema_decay, (1.0 + n) / (10.0 + n));
  for (auto& [d, s] : ema_pairs) {
    if (d.is_floating_point()) {
      d.mul_(decay).add_(s, 1.0 - decay);
    } else {
      d.copy_(s);
    }
  }
}

void Trainer::State::write_run_report() {
  auto best = models::load_model(result.best_dir);
  ReportInput in;
  const auto& cfg = best->config();
  in.title = cfg.arch + " on " + o.data.source;
  in.history = result.history;
  in.classes = data.classes;
  in.multi_label = data.multi_label;
  in.facts = {{"data", o.data.source},
              {"model", o.init_dir.empty() ? cfg.arch + " (from scratch)" : o.init_dir},
              {"images", std::to_string(data.train->size()) + " train, " +
                             std::to_string(data.val ? data.val->size() : 0) + " val, " +
                             std::to_string(data.test ? data.test->size() : 0) + " test"},
              {"epochs", std::to_string(result.history.size()) + " of " +
                             std::to_string(o.epochs) + (result.stopped_early ? " (early stop)" : "")},
              {"best", result.best_epoch >= 0
                           ? "epoch " + std::to_string(result.best_epoch) + ", " + o.monitor +
                                 " " + std::to_string(result.best_value)
                           : std::string("none (no validation split: the last epoch's model)")}};
  // What else it learnt from: a report of a semi-supervised or distilled run says so.
  if (o.freeze != "none" && !o.freeze.empty()) in.facts.emplace_back("frozen", o.freeze);
  if (!o.unlabelled.empty()) {
    std::string how = o.unlabelled_targets == "teacher"
                          ? "targets from the teacher (soft, every photo)"
                          : "FixMatch, confidence >= " + setting_text(o.pseudo_threshold);
    if (!result.history.empty() && result.history.back().unlabelled_confident >= 0 &&
        o.unlabelled_targets != "teacher") {
      how += fmt::format(" ({:.0f}% confident in the last epoch)",
                         100 * result.history.back().unlabelled_confident);
    }
    in.facts.emplace_back("unlabelled photos",
                      o.unlabelled + " (" + std::to_string(unlabelled ? unlabelled->size() : 0) +
                          ", " + std::to_string(o.unlabelled_ratio) +
                          " per labelled photo): " + how);
  }
  if (!o.teacher_dir.empty()) {
    in.facts.emplace_back("teacher", o.teacher_dir + " (alpha " + setting_text(o.distill_alpha) +
                                     ", temperature " + setting_text(o.distill_temperature) +
                                     ")");
  }
  in.facts.emplace_back("seed", std::to_string(o.seed));
  in.facts.emplace_back("run directory", o.out_dir);
  ClassificationMetrics test;
  MultiLabelMetrics test_multi_label;
  const auto shown = data.test && data.test->size() > 0 ? data.test : data.val;
  if (data.test && data.test->size() > 0) {
    std::vector<std::string> errors;
    const EvalOptions eo{o.batch_size, o.workers, o.strict, true};
    result.has_test = true;
    if (data.multi_label) {
      test_multi_label = evaluate_multi_label(*best, data.test, eo, &errors);
      const auto& m = test_multi_label;
      in.test_multi_label = &m;
      result.test_multi_label = true;
      result.test_map = m.mean_ap;
      result.test_micro_f1 = m.micro_f1;
      result.test_macro_f1 = m.macro_f1;
      write_file_atomic(path(run_files::kTestMetrics),
                        test_metrics_json(m.to_json(data.classes), *data.test, o.data.source));
    } else {
      test = evaluate(*best, data.test, eo, &errors);
      in.test = &test;
      result.test_top1 = test.top1;
      result.test_macro_f1 = test.macro_f1;
      write_file_atomic(path(run_files::kTestMetrics),
                        test_metrics_json(test.to_json(data.classes), *data.test, o.data.source));
    }
    for (const auto& e : errors) spdlog::warn("test: skipped {}", e);
    result.test_skipped = static_cast<int64_t>(errors.size());
    if (!errors.empty()) {
      // The test figures are of the photos that could be read.
      for (auto& [name, value] : in.facts) {
        if (name == "images") {
          value += " (" + std::to_string(errors.size()) + " test unreadable, not scored)";
        }
      }
    }
  }
  // A grid of held-out images with the best model's predictions.
  if (!data.multi_label && shown && shown->size() > 0) {
    const int64_t n = std::min<int64_t>(24, shown->size());
    std::vector<int64_t> indices;
    for (int64_t k = 0; k < n; ++k) indices.push_back(k * shown->size() / n);  // spread out
    const auto predictions = predict_items(*best, *shown, indices);
    for (size_t k = 0; k < indices.size(); ++k) {
      const auto [pred, score] = predictions[k];
      if (pred < 0) continue;  // unreadable: nothing to show
      in.samples.push_back({png_base64(shown->image(indices[k])),
                            data.classes[shown->labels(indices[k]).at(0)], data.classes[pred],
                            score});
    }
  }
  write_report(o.out_dir, in);
  result.report = path(run_files::kReport);
}

void Trainer::State::save_model_dir(const models::VisionModelImpl& m, const std::string& dir) const {
  // The replay sample and the adapter go into the same swap as the weights they belong to.
  models::save_model(m, dir, [&](const std::string& folder) {
    if (o.replay > 0) store_replay(folder);
    if (!o.save_adapter) return;
    models::LoraOptions lora = o.lora;
    lora.rank = o.lora_rank;
    models::save_adapter(m, lora, o.init_dir, (fs::path(folder) / "adapter.safetensors").string());
  });
}

void Trainer::State::set_provenance() {
  json p{{"source", "vitrine train"},
         {"data", o.data.source},
         {"epochs", o.epochs},
         {"batch_size", o.batch_size},
         {"opt", o.optim.name},
         {"lr", o.optim.lr},
         {"weight_decay", o.optim.weight_decay},
         {"sched", o.schedule},
         {"warmup_epochs", o.warmup_epochs},
         {"seed", o.seed}};
  // Where the data was, so that `eval` and `train --init` find it from any directory.
  if (const auto path = data_path(o.data.source); !path.empty()) p["data_path"] = path;
  if (o.data.labels_per_class > 0) p["labels_per_class"] = o.data.labels_per_class;
  if (o.data.seed != 0) p["data_seed"] = o.data.seed;
  // How its val/test photos were carved, so that `eval` can tell when it is given others.
  p["val_split"] = data.val_split;  // as applied: an unset one resolved
  p["test_split"] = o.data.test_split;
  if (o.init_dir.empty()) {
    p["arch"] = o.arch;
  } else {
    p["init"] = o.init_dir;
    const json prior = json::parse(model->config().provenance_json, nullptr, false);
    if (!prior.is_discarded() && !prior.empty()) p["init_provenance"] = prior;
  }
  if (o.freeze != "none" && !o.freeze.empty()) p["freeze"] = o.freeze;
  if (!o.teacher_dir.empty()) {
    p["teacher"] = o.teacher_dir;
    p["distill_alpha"] = o.distill_alpha;
    p["distill_temperature"] = o.distill_temperature;
  }
  if (!o.unlabelled.empty()) {
    p["unlabelled"] = o.unlabelled;
    p["unlabelled_targets"] = o.unlabelled_targets;
    p["unlabelled_ratio"] = o.unlabelled_ratio;
    p["unlabelled_weight"] = o.unlabelled_weight;
    if (o.unlabelled_targets == "self") p["pseudo_threshold"] = o.pseudo_threshold;
  }
  if (!o.command.empty()) p["command"] = o.command;
  const std::string text = json_text(p);
  model->mutable_config().provenance_json = text;
  if (ema) ema->mutable_config().provenance_json = text;
}

void Trainer::State::add_replay() {
  const fs::path manifest = fs::path(o.init_dir) / "replay" / "manifest.csv";
  if (!fs::exists(manifest)) {
    spdlog::warn("{} stores no replay sample; nothing to replay (train the earlier model with "
                 "--replay N to keep one)", o.init_dir);
    return;
  }
  data::DataOptions d;
  d.source = manifest.string();
  d.val_split = 0;
  d.test_split = 0;
  d.max_pixels = o.data.max_pixels;
  auto stored = data::open_data(d).train;
  VT_CHECK(!stored->multi_label() && !data.multi_label, "--replay is for single-label data");
  stored = data::with_classes(stored, data.classes);
  const int64_t n = std::min<int64_t>(o.replay, stored->size());
  auto order = data::permutation(stored->size(), o.seed);
  order.resize(static_cast<size_t>(n));
  data.train = data::concat(data.train, data::subset(stored, order));
  spdlog::info("replaying {} of the {} photos stored with {}", n, stored->size(), o.init_dir);
}

void Trainer::State::store_replay(const std::string& dir) const {
  // Class-balanced: one photo of each class in turn, each class in its own random order.
  const auto& train = *data.train;
  const int64_t k = static_cast<int64_t>(data.classes.size());
  std::vector<std::vector<int64_t>> by_class(static_cast<size_t>(k));
  for (const int64_t i : data::permutation(train.size(), o.seed + 1)) {
    by_class[static_cast<size_t>(train.labels(i).at(0))].push_back(i);
  }
  std::vector<int64_t> picked;
  for (size_t round = 0; static_cast<int64_t>(picked.size()) < o.replay; ++round) {
    bool any = false;
    for (const auto& items : by_class) {
      if (round < items.size() && static_cast<int64_t>(picked.size()) < o.replay) {
        picked.push_back(items[round]);
        any = true;
      }
    }
    if (!any) break;
  }
  const fs::path folder = fs::path(dir) / "replay";
  fs::remove_all(folder);
  fs::create_directories(folder);
  std::string csv = "path,label\n";
  int64_t written = 0;
  for (const int64_t i : picked) {
    cv::Mat img;
    try {
      img = train.image(i);
    } catch (const Error&) {
      continue;  // unreadable photos were skipped in training too
    }
    if (img.channels() == 3) cv::cvtColor(img, img, cv::COLOR_RGB2BGR);
    const std::string file = std::to_string(written++) + ".png";
    VT_CHECK(cv::imwrite((folder / file).string(), img), "cannot write ", (folder / file).string());
    csv += file + "," + csv_field(data.classes[static_cast<size_t>(train.labels(i).at(0))]) + "\n";
  }
  write_file_atomic((folder / "manifest.csv").string(), csv);
}

bool Trainer::State::improved(double value) const {
  if (result.best_epoch < 0) return true;
  return o.monitor == "val_loss" ? value < result.best_value : value > result.best_value;
}

void Trainer::State::save_state(int64_t epochs_done, const EpochProgress& progress) {
  write_state_folder(o.out_dir, [&](const std::string& f) {
    safetensors_save(f + "/model.safetensors", models::model_state_dict(*model));
    if (ema) safetensors_save(f + "/ema.safetensors", models::model_state_dict(*ema));
    // libtorch's own archive holds the optimiser's moments and step counts exactly.
    torch::save(*optimizer, f + "/optimizer.pt");
    json history = json::array();
    for (const auto& r : result.history) history.push_back(json::parse(r.to_json()));
    json extra{{"best_epoch", result.best_epoch},
               {"best_value", result.best_value},
               {"bad_epochs", bad_epochs},
               {"stopped_early", result.stopped_early},
               {"history", history},
               {"confident_sum", confident_sum},
               {"confident_steps", confident_steps},
               {"epochs", o.epochs}};
    for (const auto& setting : resumable_settings(o)) extra[setting.key] = setting.value;
    write_state_file(f, "trainer.json", state_header(epochs_done, progress), extra.dump());
  });
}

StateHeader Trainer::State::state_header(int64_t epochs_done,
                                         const EpochProgress& progress) const {
  const auto n = data.train->size();
  StateHeader h{kStateVersion, o.seed, epochs_done, step, progress, o.data.source,
                std::to_string(n) + " training photo" + (n == 1 ? "" : "s") + ", " +
                    std::to_string(data.classes.size()) + " classes: " +
                    quoted_list(data.classes, "'", std::string::npos),
                model_settings(model->config()), {}, {}};
  if (items_digest.empty()) items_digest = data::items_digest(*data.train, o.data.source);
  h.data_items = items_digest;
  const std::vector<std::pair<std::string, std::string>> loop = {
      {"--batch-size", std::to_string(o.batch_size)},
      {"--opt", o.optim.name},
      {"--freeze", o.freeze},
      {"--lora-rank", std::to_string(o.lora_rank)},
      {"--model-ema-decay", setting_text(o.ema_decay)},
      {"--sched", o.schedule},
      {"--layer-decay", setting_text(o.optim.layer_decay)},
      {"--monitor", o.monitor}};  // the best value kept is of this metric
  h.settings.insert(h.settings.end(), loop.begin(), loop.end());
  if (o.lora_rank > 0) {
    h.settings.emplace_back("--lora-alpha", setting_text(o.lora.alpha));
    h.settings.emplace_back("--lora-targets", comma_list(o.lora.targets));
  }
  if (o.schedule == "step") {
    std::string milestones;
    for (const auto m : o.lr_milestones) milestones += (milestones.empty() ? "" : " ") +
                                                        std::to_string(m);
    h.settings.emplace_back("--decay-milestones", milestones);
  }
  if (!o.unlabelled.empty()) {
    h.settings.emplace_back("--unlabelled-ratio", std::to_string(o.unlabelled_ratio));
  }
  const auto& d = o.data;
  h.data_settings = {{"--val-split", d.val_split < 0 ? "default" : setting_text(d.val_split)},
                     {"--test-split", setting_text(d.test_split)},
                     {"--labels-per-class", std::to_string(d.labels_per_class)},
                     {"--label-fraction", setting_text(d.label_fraction)},
                     {"--data-seed", std::to_string(d.seed)}};
  return h;
}

void Trainer::State::load_state() {
  const std::string dir = state_folder_to_resume(o.out_dir, "trainer.json");
  std::string text;
  const StateHeader h = read_state_file(dir, "trainer.json", state_header(0, {}), text);
  const json j = json::parse(text);
  load_state_dict(*model, safetensors_load(dir + "/model.safetensors").tensors);
  if (ema) load_state_dict(*ema, safetensors_load(dir + "/ema.safetensors").tensors);
  torch::load(*optimizer, dir + "/optimizer.pt");
  start_epoch = h.epochs_done;
  step = h.step;
  resume_progress = h.progress;
  warn_changed_settings(text, o.epochs, resumable_settings(o));
  result.best_epoch = j.at("best_epoch");
  result.best_value = j.at("best_value");
  bad_epochs = j.at("bad_epochs");
  // A run that stopped early stays stopped, unless resumed with more patience.
  // (Without --patience on resume it stays stopped: a wrapper that always passes --resume
  // trains no further.)
  result.stopped_early =
      j.value("stopped_early", false) && (o.patience == 0 || bad_epochs >= o.patience);
  // An epoch interrupted in its middle goes on with its share of confident photos so far.
  confident_sum = j.value("confident_sum", 0.0);
  confident_steps = j.value("confident_steps", int64_t{0});
  for (const auto& r : j.at("history")) result.history.push_back(EpochRecord::from_json(r.dump()));
}

Trainer::Trainer(TrainOptions options) : s_(std::make_unique<State>()) {
  auto& s = *s_;
  s.o = std::move(options);
  const auto& o = s.o;
  VT_CHECK(!o.out_dir.empty(), "give --out DIR for the run's checkpoints and logs");
  VT_CHECK(o.epochs > 0, "--epochs must be positive");
  VT_CHECK(o.batch_size > 0, "--batch-size must be positive");
  VT_CHECK(o.label_smoothing >= 0 && o.label_smoothing < 1, "--label-smoothing must be in [0, 1)");

  VT_CHECK(o.amp == "none" || o.amp == "bf16", "--amp must be none or bf16");
  VT_CHECK(o.class_weights == "none" || o.class_weights == "balanced",
           "--class-weights must be none or balanced");
  VT_CHECK(o.sampler == "random" || o.sampler == "balanced",
           "--sampler must be random or balanced");
  VT_CHECK(o.adv == "none" || o.adv == "fgsm" || o.adv == "pgd", "--adv must be none, fgsm or pgd");
  if (o.adv != "none") {
    s.o.adv_attack.method = o.adv;
    check_attack(o.adv_attack);
    VT_CHECK(o.adv_ratio > 0 && o.adv_ratio <= 1, "--adv-ratio must be in (0, 1], got ",
             o.adv_ratio);
  }
  VT_CHECK(o.unlabelled_targets == "self" || o.unlabelled_targets == "teacher",
           "--unlabelled-targets must be self or teacher, got '", o.unlabelled_targets, "'");
  VT_CHECK(!o.unlabelled.empty() || o.unlabelled_targets == "self",
           "--unlabelled-targets ", o.unlabelled_targets, " gives targets to --unlabelled photos; "
           "name them with --unlabelled");
  VT_CHECK(o.unlabelled_targets == "self" || !o.teacher_dir.empty(),
           "--unlabelled-targets teacher needs a --teacher model directory to give the targets");
  // Rank 0 writes the run, and it alone owns the directory.
  if (o.dist.rank == 0) s.replaces_run = check_run_dir(o.out_dir, o.resume, o.overwrite);
  at::manual_seed(o.seed);
  s.o.data.strict = o.strict;
  s.data = data::open_data(o.data);
  for (const auto& w : s.data.warnings) spdlog::warn("{}", w);
  const auto count = [](const std::shared_ptr<data::Dataset>& d) { return d ? d->size() : 0; };
  spdlog::info("data: {} training photos, {} validation, {} test; {} classes{}",
               count(s.data.train), count(s.data.val), count(s.data.test),
               s.data.classes.size(), s.data.multi_label ? " (multi-label)" : "");
  s.result.warnings = s.data.warnings;
  VT_CHECK(o.replay >= 0, "--replay must not be negative");
  VT_CHECK(o.replay == 0 || !s.data.multi_label, "--replay is for single-label data");
  VT_CHECK(!o.append_classes || !o.init_dir.empty(),
           "--append-classes continues an earlier model: give --init DIR");
  std::vector<std::string> known;  ///< the --init model's classes, when its head is kept
  if (!o.init_dir.empty() && !o.reinit_head) {
    const auto c = models::load_model_config(o.init_dir);
    if (c.num_classes > 0 && static_cast<int64_t>(c.labels.size()) == c.num_classes) known = c.labels;
  }
  // Remapped: the same classes in another order, or any data with --append-classes. (Data
  // with fewer classes and no flag meets the class-count check of build_model.)
  const bool same_set = std::is_permutation(known.begin(), known.end(), s.data.classes.begin(),
                                            s.data.classes.end());
  if (!known.empty() && known != s.data.classes &&
      (same_set || o.append_classes || s.data.classes.size() >= known.size())) {
    // The data's labels by name among the model's (its head rows keep their meaning), and
    // with --append-classes the new classes after them.
    std::vector<std::string> all = known, unknown;
    for (const auto& c : s.data.classes) {
      if (std::find(all.begin(), all.end(), c) == all.end()) unknown.push_back(c);
    }
    if (!unknown.empty()) {
      VT_CHECK(o.append_classes, o.init_dir, " does not know ", unknown.size(),
               " classes of the data (", quoted_list(unknown), "); pass --append-classes to add "
               "them to its head (continual fine-tuning) or --reinit-head for a new head");
      VT_CHECK(!s.data.multi_label, "--append-classes is for single-label data");
      all.insert(all.end(), unknown.begin(), unknown.end());
    }
    s.data.classes = all;
    for (auto* split : {&s.data.train, &s.data.val, &s.data.test}) {
      if (*split) *split = data::with_classes(*split, all);
    }
  }
  if (o.replay > 0 && !o.init_dir.empty()) s.add_replay();
  if (s.o.monitor.empty()) {
    s.o.monitor = s.data.multi_label ? "val_map"
                  : o.adv != "none"  ? "val_robust_top1"
                                     : "val_top1";
  }
  s.o.adv_attack.multi_label = s.data.multi_label;
  if (s.data.multi_label) {
    VT_CHECK(o.monitor == "val_map" || o.monitor == "val_macro_f1",
             "--monitor for multi-label data must be val_map or val_macro_f1");
    VT_CHECK(o.class_weights == "none", "--class-weights is for single-label data");
    VT_CHECK(o.sampler == "random", "--sampler balanced is for single-label data");
  } else {
    VT_CHECK(o.monitor == "val_top1" || o.monitor == "val_loss" || o.monitor == "val_macro_f1" ||
                 o.monitor == "val_robust_top1",
             "--monitor must be val_top1, val_loss, val_macro_f1 or val_robust_top1 for "
             "single-label data (val_map is for multi-label data)");
    VT_CHECK(o.monitor != "val_robust_top1" || o.adv != "none",
             "--monitor val_robust_top1 measures robustness to the training attack; add --adv "
             "fgsm|pgd");
  }
  VT_CHECK(s.data.train && s.data.train->size() > 0, "no training images in ", o.data.source);
  VT_CHECK(std::is_sorted(o.lr_milestones.begin(), o.lr_milestones.end()) &&
               (o.lr_milestones.empty() || o.lr_milestones.front() > 0),
           "--decay-milestones must be positive epochs in increasing order");
  if (o.schedule == "step" && o.lr_milestones.empty()) {
    spdlog::warn("--sched step without --decay-milestones keeps the rate constant; name the "
                 "epochs where it drops (--decay-milestones 30 60)");
  } else if (o.schedule != "step" && !o.lr_milestones.empty()) {
    spdlog::warn("--decay-milestones is for --sched step; the {} schedule ignores it", o.schedule);
  }
  if (o.sampler == "balanced" && o.class_weights == "balanced") {
    spdlog::warn("--sampler balanced and --class-weights balanced each correct the class "
                 "imbalance; together they correct it twice and the rare classes outweigh the "
                 "frequent ones: use one");
  }
  if (o.patience > 0 && !(s.data.val && s.data.val->size() > 0)) {
    spdlog::warn("--patience {} has no effect: there is no validation split to stop on (give "
                 "--val-split, or a val/ folder)", o.patience);
  }
  s.build_model();
  // Flag values out of range fail here, naming the setting, not later on the first image.
  image::check_train_transform(s.augmentation());
  // Every process scans, so that all reach the rendezvous together; the lead one says it.
  const bool lead = o.dist.rank == 0;
  if (!o.init_dir.empty()) {
    warn_if_backbone_saw_test_photos(s.model->config().provenance_json, o.init_dir, o.data,
                                     s.data, lead);
  }
  warn_of_photos_in_two_splits(s.data, lead);
  s.set_provenance();
  if (!o.teacher_dir.empty()) s.load_teacher();
  if (!o.unlabelled.empty()) s.open_unlabelled();
  if (o.freeze == "backbone" && (o.dropout > 0 || o.drop_path > 0)) {
    spdlog::warn("--drop and --drop-path are not used with --freeze backbone: a linear probe "
                 "runs the whole model in eval mode, a fixed feature extractor");
  }
  const int64_t n = s.data.train->size();
  check_distributed(o.dist);
  const int64_t global_batch = o.batch_size * o.dist.world_size;
  if (o.dist.world_size > 1) {
    VT_CHECK(n >= global_batch, "data-parallel training needs one full batch of ", o.batch_size,
             " x ", o.dist.world_size, " images; the training split holds ", n);
    VT_CHECK(o.sampler == "random", "--sampler balanced with several processes is not yet "
             "supported");
  }
  s.steps_per_epoch = n >= global_batch ? n / global_batch : 1;
  if (n > global_batch && n % global_batch != 0 && o.dist.rank == 0) {
    spdlog::info("batches of {}: {} steps an epoch; each epoch leaves out the last {} photos "
                 "of its shuffle, others every epoch (full batches only, as timm trains)",
                 global_batch, s.steps_per_epoch, n % global_batch);
  }
  if (o.class_weights == "balanced") {
    // Inverse class frequency, normalised to mean 1 (sklearn's "balanced").
    const int64_t k = static_cast<int64_t>(s.data.classes.size());
    std::vector<double> counts(k, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      for (const int64_t c : s.data.train->labels(i)) counts[c] += 1;
    }
    std::vector<float> w(k);
    for (int64_t c = 0; c < k; ++c) w[c] = counts[c] > 0 ? static_cast<float>(n / (k * counts[c])) : 0.f;
    s.class_weights = at::tensor(w);
  }
  s.build_optimizer();
  if (s.batch_norms_train()) {
    VT_CHECK(o.batch_size >= 2, "--batch-size 1 cannot train ",
             o.arch.empty() ? o.init_dir : o.arch,
             ": its batch norms need at least 2 images a batch; give --batch-size 2 or more");
    VT_CHECK(n >= 2, "the training split holds ", n, " image, and batch norms need at least 2 "
             "a batch: add training images");
  }
  if (o.dist.world_size > 1) {
    s.group = std::make_unique<ProcessGroup>(o.dist);
    // Every replica starts from rank 0's weights (and batch-norm statistics).
    std::vector<at::Tensor> tensors;
    for (const auto& [name, t] : models::model_state_dict(*s.model)) {
      if (t.is_floating_point()) tensors.push_back(t);
    }
    s.group->broadcast(tensors);
    spdlog::info("rank {} of {} joined at {}:{}", o.dist.rank, o.dist.world_size,
                 o.dist.master_addr, o.dist.master_port);
  }
}

Trainer::~Trainer() = default;

const models::VisionModelImpl& Trainer::model() const { return *s_->model; }

TrainResult Trainer::run(const std::function<void(const StepInfo&)>& on_step,
                         const std::function<void(const EpochRecord&)>& on_epoch) {
  auto& s = *s_;
  const auto& o = s.o;
  if (o.resume) s.load_state();  // before anything is created: a wrong --out stays absent
  if (s.replaces_run) remove_run_files(o.out_dir);
  fs::create_directories(o.out_dir);
  data::LoaderOptions lo =
      training_loader_options(o.batch_size, s.data.train->size(), o.seed, o.workers, o.strict);
  if (o.sampler == "balanced") lo.sample_weights = s.balanced_sample_weights();
  if (s.group) {
    lo.shards = s.group->size();
    lo.shard = s.group->rank();
  }
  data::Loader loader(s.data.train, s.train_transform(), lo);
  if (s.unlabelled) {
    // Its own order (another seed), cut as the labelled loader's into the processes' shares.
    data::LoaderOptions ul =
        training_loader_options(o.batch_size * o.unlabelled_ratio, s.unlabelled->size(),
                                o.seed ^ 0x9e3779b97f4a7c15ULL, o.workers, o.strict);
    ul.targets = false;
    ul.shards = lo.shards;
    ul.shard = lo.shard;
    s.unlabelled_loader =
        std::make_unique<data::Loader>(s.unlabelled, s.weak_and_strong_views(), ul);
  }
  s.result.best_dir = s.path(run_files::kBest);
  s.result.last_dir = s.path(run_files::kLast);
  const std::string log_path = s.path(run_files::kLog);
  std::string log_text;
  for (const auto& r : s.result.history) log_text += r.to_json() + "\n";

  Optimisation optimisation{*s.model,     *s.optimizer, s.groups,  o.optim,
                            s.schedule,   s.trainable,  o.clip_grad, s.step};
  EpochHooks hooks;
  hooks.loss = [&s](data::Batch& batch, std::mt19937_64& rng, double& top1) {
    return s.train_step(batch, rng, top1);
  };
  hooks.after_step = [&s] { s.update_ema(); };
  if (s.group) hooks.after_backward = [&s] { s.average_gradients(); };
  // Rates count the images of all processes (each takes the same share of a step).
  const int processes = s.group ? s.group->size() : 1;
  if (s.lead() && on_step) {
    hooks.on_step = [&on_step, processes](const StepInfo& step) {
      StepInfo all = step;
      all.img_per_s *= processes;
      on_step(all);
    };
  }
  if (s.result.stopped_early) {
    spdlog::info("the run stopped early after epoch {} ({} did not improve for {} epochs): "
                 "nothing to resume; give a larger --patience to train on", s.start_epoch,
                 o.monitor, s.bad_epochs);
  }
  for (int64_t epoch = s.start_epoch; epoch < o.epochs && !s.result.stopped_early; ++epoch) {
    s.model->train();
    // A linear probe keeps the frozen backbone's batch norms on their stored statistics.
    if (o.freeze == "backbone") s.model->eval();
    hold_frozen_batch_norms(*s.model);  // and so does --freeze until:<module>
    hooks.save = [&s, epoch](const EpochProgress& p) {
      if (s.lead()) s.save_state(epoch, p);
    };
    EpochPlan plan{epoch,          o.epochs, o.seed, s.steps_per_epoch, o.save_every_steps,
                   s.result.last_dir, /*distributed=*/s.group != nullptr,
                   /*min_batch=*/s.batch_norms_train() ? 2 : 1};
    plan.reported = &s.reported;
    plan.rank = o.dist.rank;
    if (s.resume_progress.next_batch == 0) {  // not an epoch resumed in its middle
      s.confident_sum = 0;
      s.confident_steps = 0;
    }
    const EpochSummary e =
        run_epoch(loader, plan, std::exchange(s.resume_progress, {}), optimisation, hooks);
    EpochRecord rec;
    rec.epoch = epoch + 1;
    rec.lr = e.lr;
    rec.train_loss = e.loss;
    rec.train_top1 = e.top1;
    rec.seconds = e.seconds;
    rec.img_per_s = e.img_per_s * processes;
    rec.skipped = e.skipped;
    if (s.confident_steps > 0) {
      rec.unlabelled_confident = s.confident_sum / static_cast<double>(s.confident_steps);
      if (s.lead()) {
        spdlog::info("epoch {}: {:.1f}% of the unlabelled photos were confident enough to "
                     "learn from", rec.epoch, 100.0 * rec.unlabelled_confident);
      }
    }

    models::VisionModelImpl& judged = s.ema ? *s.ema : *s.model;
    bool stop = false;
    // Rank 0 validates and decides; the others follow its decision to stop (below): each
    // rank's batch-norm statistics follow its own shard, so their own validations could
    // disagree, and a rank that stopped alone would leave the others waiting.
    if (s.lead() && s.data.val && s.data.val->size() > 0) {
      std::vector<std::string> errors;
      std::vector<float> thresholds;
      const EvalOptions eo{o.batch_size, o.workers, o.strict, true};
      try {
        if (s.data.multi_label) {
          const MultiLabelMetrics m =
              evaluate_multi_label(judged, s.data.val, eo, &errors, &thresholds);
          rec.multi_label = true;
          rec.val_map = m.mean_ap;
          rec.val_micro_f1 = m.micro_f1;
          rec.val_macro_f1 = m.macro_f1;
        } else {
          const ClassificationMetrics m = evaluate(judged, s.data.val, eo, &errors);
          rec.val_loss = m.loss;
          rec.val_top1 = m.top1;
          rec.val_top5 = m.has_top5() ? m.top5 : std::nan("");
          rec.val_macro_f1 = m.macro_f1;
          if (o.adv != "none") {
            rec.val_robust_top1 =
                evaluate_under_attack(judged, s.data.val, o.adv_attack, eo, nullptr).top1;
          }
        }
      } catch (const NonFiniteOutput& e) {
        VT_FAIL(e.what(), " in epoch ", epoch + 1, "; the last good checkpoint is in ",
                s.result.last_dir, ". Lower --lr, add --clip-grad or --warmup-epochs");
      }
      for (const auto& e : errors) spdlog::warn("validation skipped: {}", e);
      // Thresholds tuned on this validation pass travel with the model saved after it.
      if (s.data.multi_label) judged.mutable_config().thresholds = thresholds;
      rec.has_val = true;
      const double value = o.monitor == "val_loss"          ? rec.val_loss
                           : o.monitor == "val_macro_f1"    ? rec.val_macro_f1
                           : o.monitor == "val_map"         ? rec.val_map
                           : o.monitor == "val_robust_top1" ? rec.val_robust_top1
                                                            : rec.val_top1;
      if (s.improved(value)) {
        s.result.best_epoch = rec.epoch;
        s.result.best_value = value;
        s.bad_epochs = 0;
        rec.best = true;
        if (s.lead()) s.save_model_dir(judged, s.result.best_dir);
      } else if (o.patience > 0 && ++s.bad_epochs >= o.patience) {
        stop = epoch + 1 < o.epochs;  // after the last epoch there is nothing to stop
      }
    }
    if (s.group && o.patience > 0) {
      at::Tensor decision = at::full({1}, stop ? 1.0f : 0.0f);
      s.group->broadcast({decision});
      stop = decision.item<float>() > 0;
    }
    s.result.history.push_back(rec);
    s.result.stopped_early = stop;  // saved with the state: a resumed run stays stopped
    if (s.lead()) {
      s.save_model_dir(judged, s.result.last_dir);
      log_text += rec.to_json() + "\n";
      write_file_atomic(log_path, log_text);
      s.save_state(epoch + 1);
      if (on_epoch) on_epoch(rec);
    }
    if (stop) {
      spdlog::info("early stop: {} did not improve for {} epochs (best {} at epoch {})", o.monitor,
                   o.patience, s.result.best_value, s.result.best_epoch);
      break;
    }
  }
  if (!s.lead()) return s.result;  // rank 0 writes the models and the report
  if (s.result.best_epoch < 0) {
    // No validation data: the last model is the best we know.
    s.save_model_dir(s.ema ? *s.ema : *s.model, s.result.best_dir);
  }
  s.write_run_report();
  return s.result;
}

}  // namespace vitrine::train
