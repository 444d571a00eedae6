#include "vitrine/train/pretrainer.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/json.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/data/loader.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/registry.h"
#include "vitrine/train/autocast.h"
#include "vitrine/train/evaluate.h"
#include "vitrine/train/loop.h"
#include "vitrine/train/report.h"
#include "vitrine/train/run_files.h"
#include "vitrine/train/run_state.h"
#include "vitrine/train/ssl.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/serialize.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <random>
#include <set>
#include <utility>

namespace vitrine::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kStateVersion = 1;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Items of `data` per class, the first `per_class` of each class in a seeded order.
std::vector<int64_t> per_class_sample(const data::Dataset& data, int64_t per_class,
                                      uint64_t seed) {
  std::vector<int64_t> taken(data.classes().size(), 0), out;
  for (const int64_t i : data::permutation(data.size(), seed)) {
    const auto labels = data.labels(i);
    if (labels.empty()) continue;
    if (taken[labels[0]] < per_class) {
      ++taken[labels[0]];
      out.push_back(i);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

image::TrainTransform mae_augment() {
  image::TrainTransform t;
  t.scale = {0.2, 1.0};
  t.hflip = 0.5;
  return t;
}

image::TrainTransform simclr_augment(int64_t image_size) {
  image::TrainTransform t;
  t.scale = {0.2, 1.0};
  t.hflip = 0.5;
  t.brightness = t.contrast = t.saturation = 0.4;
  t.hue = 0.1;
  t.jitter_prob = 0.8;
  t.grayscale = 0.2;
  t.blur = image_size >= 96 ? 0.5 : 0.0;
  return t;
}

std::string PretrainEpoch::to_json() const {
  json j{{"epoch", epoch},
         {"lr", lr},
         {"loss", loss},
         {"seconds", seconds},
         {"img_per_s", img_per_s},
         {"skipped_images", skipped}};
  if (contrast_top1 >= 0) j["contrast_top1"] = contrast_top1;
  if (knn_top1 >= 0) j["knn_top1"] = knn_top1;
  return j.dump();
}

PretrainEpoch PretrainEpoch::from_json(const std::string& text) {
  const json r = json::parse(text);
  PretrainEpoch e;
  e.epoch = r.at("epoch");
  e.lr = r.at("lr");
  e.loss = r.at("loss");
  e.contrast_top1 = r.value("contrast_top1", -1.0);
  e.seconds = r.at("seconds");
  e.img_per_s = r.at("img_per_s");
  e.skipped = r.at("skipped_images");
  e.knn_top1 = r.value("knn_top1", -1.0);
  return e;
}

struct Pretrainer::State {
  PretrainOptions o;
  data::DataSplits data;
  std::shared_ptr<data::Dataset> images;  ///< what pretraining sees: train and val, unlabelled
  std::shared_ptr<data::Dataset> knn_bank, knn_queries;
  models::VisionModel model;
  ProjectionHead projector{nullptr};  ///< simclr
  MaeDecoder decoder{nullptr};        ///< mae
  bool channels_last = false;  ///< the backbone trains in channels-last layout
  std::vector<ParamGroup> groups;
  std::vector<at::Tensor> trainable;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  ScheduleOptions schedule;
  int64_t steps_per_epoch = 0, step = 0, start_epoch = 0;
  PretrainResult result;
  std::set<std::string> reported;  ///< unreadable training photos already named
  mutable std::string items_digest;  ///< of images, once computed (state_header)
  std::string init_provenance;  ///< the --init model's own provenance (JSON), kept in ours
  /// The command lines of the run: the one that began it, then each --resume.
  std::vector<std::string> commands;

  EpochProgress resume_progress;
  bool replaces_run = false;  ///< --overwrite and out_dir holds a run: removed in run()

  std::string path(const std::string& name) const { return (fs::path(o.out_dir) / name).string(); }
  bool mae() const { return o.method == "mae"; }
  /// What trains beside the backbone and is thrown away after: the projection head or the
  /// decoder, and the file its state is saved in.
  torch::nn::Module& aside() {
    if (mae()) return *decoder;
    return *projector;
  }
  std::string aside_file() const { return mae() ? "decoder.safetensors" : "projector.safetensors"; }
  /// Kept in the state; a resume with others is warned about.
  std::vector<ResumedSetting> resumed_settings() const {
    return optimisation_settings(o.optim.lr, o.optim.weight_decay, o.warmup_epochs);
  }
  void open_data();
  void build_model();
  void build_optimizer();
  image::TrainTransform view_transform() const;  ///< what each view of a photo goes through
  data::SampleTransform views() const;
  double knn_monitor();
  void save_backbone(const std::string& dir);
  void save_state(int64_t epochs_done, const EpochProgress& progress = {});
  /// The state file's header: counters, and what the run learns from.
  StateHeader state_header(int64_t epochs_done, const EpochProgress& progress) const;
  void load_state();
  void write_charts() const;
};

void Pretrainer::State::open_data() {
  data = data::open_pretraining_data(o.data);
  for (const auto& w : data.warnings) spdlog::warn("{}", w);
  VT_CHECK(data.train && data.train->size() > 0, "no images to pretrain on in ", o.data.source);
  // Labels are never used for learning: the validation images are pretraining images too.
  images = data.val && data.val->size() > 0 ? data::concat(data.train, data.val) : data.train;
  const bool labelled = !data.classes.empty() && !data.multi_label;
  spdlog::info("pretraining on {} photos of {}{}", images->size(), o.data.source,
               data.test && data.test->size() > 0
                   ? fmt::format(" ({} test photos left out)", data.test->size())
                   : std::string());
  // Folders below a catalogue root may be batches or dates rather than classes.
  if (labelled && o.knn_bank_per_class > 0 && fs::is_directory(o.data.source)) {
    spdlog::info("its {} folders ({}{}) are taken as classes by the k-NN monitor alone; where "
                 "they are not classes (batches, dates), its accuracy means nothing: --knn-bank "
                 "0 turns it off", data.classes.size(), data.classes.front(),
                 data.classes.size() > 1 ? ", " + data.classes[1] + (data.classes.size() > 2
                                                                         ? ", ..." : "")
                                         : std::string());
  }
  if (o.knn_bank_per_class > 0 && labelled && data.val && data.val->size() > 0) {
    // A bank of at most kMaxKnnBank photos: embedded after every epoch, 100 a class of a
    // catalogue of 5,000 product classes would be half a million photos.
    constexpr int64_t kMaxKnnBank = 10'000;
    const auto classes = static_cast<int64_t>(data.classes.size());
    const int64_t per_class =
        std::min(o.knn_bank_per_class, std::max<int64_t>(1, kMaxKnnBank / classes));
    if (per_class < o.knn_bank_per_class) {
      spdlog::info("k-NN monitor: {} photos a class of the {} classes as its bank (--knn-bank "
                   "{} would embed {} photos after every epoch)",
                   per_class, classes, o.knn_bank_per_class, o.knn_bank_per_class * classes);
    }
    std::vector<int64_t> bank = per_class_sample(*data.train, per_class, o.seed);
    if (static_cast<int64_t>(bank.size()) > kMaxKnnBank) {  // more classes than that
      std::vector<int64_t> kept;
      for (const int64_t i : data::permutation(static_cast<int64_t>(bank.size()), o.seed + 2)) {
        if (static_cast<int64_t>(kept.size()) == kMaxKnnBank) break;
        kept.push_back(bank[i]);
      }
      std::sort(kept.begin(), kept.end());
      bank = std::move(kept);
    }
    knn_bank = data::subset(data.train, std::move(bank));
    std::vector<int64_t> queries = data::permutation(data.val->size(), o.seed + 1);
    queries.resize(std::min<int64_t>(o.knn_queries, data.val->size()));
    std::sort(queries.begin(), queries.end());
    knn_queries = data::subset(data.val, std::move(queries));
    spdlog::info("k-NN monitor: {} labelled training images as the bank, {} validation queries",
                 knn_bank->size(), knn_queries->size());
  } else if (o.knn_bank_per_class > 0) {
    spdlog::info("k-NN monitor off: the data has no single-label validation split");
  }
}

void Pretrainer::State::build_model() {
  StateDict init_weights;
  auto cfg = starting_config(o.arch, o.init_dir, o.resnet_stem, o.in_channels,
                             [&] { return grey_data(*images); });
  if (!o.init_dir.empty()) {
    init_weights = safetensors_load((fs::path(o.init_dir) / "model.safetensors").string()).tensors;
    init_provenance = cfg.provenance_json;
  }
  // An --image-size equal to the --init model's own keeps its eval transform, as in train.
  const bool new_size = o.image_size > 0 && o.image_size != cfg.image_size;
  if (o.image_size > 0) models::set_image_size(cfg, o.image_size);
  const double crop_pct = o.eval_crop_pct > 0 ? o.eval_crop_pct
                          : o.init_dir.empty() || new_size ? 0.875
                                                           : 0.0;
  VT_CHECK(crop_pct >= 0 && crop_pct <= 1, "--eval-crop-pct must be in (0, 1]");
  if (crop_pct > 0) models::set_eval_crop(cfg, crop_pct);
  if (o.drop_path >= 0) cfg.drop_path = o.drop_path;
  cfg.num_classes = 0;
  cfg.labels.clear();
  cfg.task = "single_label";
  cfg.thresholds.clear();
  model = models::create_model(cfg);
  if (!init_weights.empty()) {
    // Pretraining learns the backbone alone: a classification head is left behind.
    models::LoadOptions lo;
    lo.reinit_head = true;
    models::load_state_dict(*model, init_weights, lo);
  }
  channels_last = model->use_channels_last_for_training();
  const int64_t dim = cfg.embedding_dim();
  if (!mae()) {
    projector = ProjectionHead(dim, o.proj_hidden > 0 ? o.proj_hidden : dim, o.proj_dim);
    return;
  }
  VT_CHECK(cfg.family == models::Family::kViT, "--method mae hides image patches from the "
           "encoder, so it needs a ViT (vit_*); ", cfg.arch,
           " has no patches: use --method simclr");
  const int64_t patch = cfg.vit.patch_size, grid = cfg.image_size / patch;
  decoder = MaeDecoder(dim, grid, patch * patch * cfg.in_channels, o.decoder_width,
                       o.decoder_depth, o.decoder_heads);
}

void Pretrainer::State::build_optimizer() {
  groups = param_groups(*model, o.optim);
  // The projection head or decoder: decay on its weight matrices, none on norms, biases
  // and the mask token.
  ParamGroup decay, no_decay;
  decay.weight_decay = o.optim.weight_decay;
  for (const auto& p : aside().named_parameters()) {
    ParamGroup& g = p.value().dim() > 1 && p.key() != "mask_token" ? decay : no_decay;
    g.params.push_back(p.value());
    g.names.push_back((mae() ? "decoder." : "projector.") + p.key());
  }
  groups.push_back(decay);
  groups.push_back(no_decay);
  for (const auto& g : groups) trainable.insert(trainable.end(), g.params.begin(), g.params.end());
  optimizer = make_optimizer(groups, o.optim);
  schedule.name = o.schedule;
  schedule.total_steps = std::max<int64_t>(1, steps_per_epoch * o.epochs);
  schedule.warmup_steps = static_cast<int64_t>(std::llround(o.warmup_epochs * steps_per_epoch));
  schedule.min_lr = o.min_lr;
}

image::TrainTransform Pretrainer::State::view_transform() const {
  image::TrainTransform t = o.augment;
  const auto& cfg = model->config();
  t.size = cfg.image_size;
  t.mean = cfg.preprocess.mean;
  t.std = cfg.preprocess.std;
  t.channels = cfg.in_channels;
  t.interpolation = cfg.preprocess.interpolation;
  if (!o.blur_set && !mae()) t.blur = simclr_augment(cfg.image_size).blur;
  image::check_train_transform(t);
  return t;
}

data::SampleTransform Pretrainer::State::views() const {
  const image::TrainTransform t = view_transform();
  return mae() ? one_view(t) : two_views(t, t);
}

double Pretrainer::State::knn_monitor() {
  if (!knn_bank) return -1;
  const EvalOptions eo{o.batch_size, o.workers, o.strict, true};
  const Embeddings bank = embed(*model, knn_bank, eo);
  const Embeddings queries = embed(*model, knn_queries, eo);
  return knn_top1(bank, queries, static_cast<int64_t>(data.classes.size()), o.knn_k);
}

void Pretrainer::State::save_backbone(const std::string& dir) {
  const PretrainEpoch* last = result.history.empty() ? nullptr : &result.history.back();
  json provenance{{"source", "vitrine pretrain"},
                  {"method", o.method},
                  {"data", o.data.source},
                  // What was left out of it, so that `train` can tell whether its test
                  // photos were pretrained on.
                  {"val_split", o.data.val_split},
                  {"test_split", o.data.test_split},
                  {"data_seed", o.data.seed},
                  {"images", images->size()},
                  {"epochs", last ? last->epoch : 0},
                  {"batch_size", o.batch_size},
                  {"image_size", model->config().image_size},
                  {"opt", o.optim.name},
                  {"lr", o.optim.lr},
                  {"weight_decay", o.optim.weight_decay},
                  {"sched", o.schedule},
                  {"warmup_epochs", o.warmup_epochs},
                  {"seed", o.seed}};
  // Where the data was, so that `train --init` finds it from any directory.
  if (const auto path = data_path(o.data.source); !path.empty()) provenance["data_path"] = path;
  if (o.init_dir.empty()) {
    provenance["arch"] = o.arch;
  } else {
    // Pretrained further: where it began, with that model's own provenance.
    provenance["init"] = o.init_dir;
    const json prior = json::parse(init_provenance, nullptr, false);
    if (!prior.is_discarded() && !prior.empty()) provenance["init_provenance"] = prior;
  }
  if (mae()) {
    provenance["mask_ratio"] = o.mask_ratio;
    provenance["decoder"] = {{"width", o.decoder_width},
                             {"depth", o.decoder_depth},
                             {"heads", o.decoder_heads}};
  } else {
    provenance["temperature"] = o.temperature;
  }
  const image::TrainTransform t = view_transform();
  provenance["augmentation"] = {{"scale", t.scale},
                                {"ratio", t.ratio},
                                {"hflip", t.hflip},
                                {"rotation", t.rotation},
                                {"color_jitter", {t.brightness, t.contrast, t.saturation, t.hue}},
                                {"jitter_prob", t.jitter_prob},
                                {"grayscale", t.grayscale},
                                {"blur", t.blur},
                                {"auto_augment", t.auto_augment}};
  if (!commands.empty()) {
    provenance["command"] = commands.front();
    if (commands.size() > 1) {
      provenance["resumed_with"] = std::vector<std::string>(commands.begin() + 1, commands.end());
    }
  }
  if (last && last->knn_top1 >= 0) provenance["knn_top1"] = last->knn_top1;
  double seconds = 0;
  for (const auto& r : result.history) seconds += r.seconds;
  provenance["train_seconds"] = std::round(seconds);
  model->mutable_config().provenance_json = json_text(provenance);
  models::save_model(*model, dir);
}

void Pretrainer::State::save_state(int64_t epochs_done, const EpochProgress& progress) {
  write_state_folder(o.out_dir, [&](const std::string& f) {
    safetensors_save(f + "/model.safetensors", models::model_state_dict(*model));
    StateDict head;
    for (const auto& p : aside().named_parameters()) head.emplace_back(p.key(), p.value());
    for (const auto& b : aside().named_buffers()) head.emplace_back(b.key(), b.value());
    safetensors_save(f + "/" + aside_file(), head);
    torch::save(*optimizer, f + "/optimizer.pt");
    json history = json::array();
    for (const auto& r : result.history) history.push_back(json::parse(r.to_json()));
    json extra{{"history", history}, {"epochs", o.epochs}, {"commands", commands}};
    for (const auto& setting : resumed_settings()) extra[setting.key] = setting.value;
    write_state_file(f, "pretrainer.json", state_header(epochs_done, progress),
                     // json_text: a command line may hold bytes that are not UTF-8
                     json_text(extra));
  });
}

StateHeader Pretrainer::State::state_header(int64_t epochs_done,
                                            const EpochProgress& progress) const {
  const auto n = images->size();
  StateHeader h{kStateVersion, o.seed, epochs_done, step, progress, o.data.source,
                std::to_string(n) + " photo" + (n == 1 ? "" : "s"),
                model_settings(model->config()), {}, {}};
  if (items_digest.empty()) items_digest = data::items_digest(*images, o.data.source);
  h.data_items = items_digest;
  const std::vector<std::pair<std::string, std::string>> loop = {
      {"--method", o.method},
      {"--batch-size", std::to_string(o.batch_size)},
      {"--opt", o.optim.name},
      {"--sched", o.schedule}};
  h.settings.insert(h.settings.end(), loop.begin(), loop.end());
  if (mae()) {
    h.settings.emplace_back("--mask-ratio", setting_text(o.mask_ratio));
    h.settings.emplace_back("--decoder-width", std::to_string(o.decoder_width));
    h.settings.emplace_back("--decoder-depth", std::to_string(o.decoder_depth));
    h.settings.emplace_back("--decoder-heads", std::to_string(o.decoder_heads));
  } else {
    h.settings.emplace_back("--temperature", setting_text(o.temperature));
    h.settings.emplace_back("--proj-dim", std::to_string(o.proj_dim));
    h.settings.emplace_back("--proj-hidden", std::to_string(o.proj_hidden));
  }
  return h;
}

void Pretrainer::State::load_state() {
  const std::string dir = state_folder_to_resume(o.out_dir, "pretrainer.json");
  std::string text;
  const StateHeader h = read_state_file(dir, "pretrainer.json", state_header(0, {}), text);
  models::load_state_dict(*model, safetensors_load(dir + "/model.safetensors").tensors);
  {
    at::NoGradGuard no_grad;
    auto params = aside().named_parameters();
    auto buffers = aside().named_buffers();
    const std::string file = dir + "/" + aside_file();
    VT_CHECK(fs::exists(file), dir, " has no ", aside_file(), ": it was saved by another --method;",
             " resume with the options of the original run");
    const auto saved = safetensors_load(file).tensors;
    for (const auto& [name, t] : saved) {
      at::Tensor* dst = params.find(name);
      if (!dst) dst = buffers.find(name);
      VT_CHECK(dst && dst->sizes() == t.sizes(), file, " does not fit this ",
               mae() ? "decoder" : "projection head", " (", name,
               "); resume with the options of the original run");
      dst->copy_(t);
    }
    // Every weight restored: a deeper decoder than the run's would keep fresh blocks.
    VT_CHECK(saved.size() == params.size() + buffers.size(), file, " holds ", saved.size(),
             " tensors and this ", mae() ? "decoder" : "projection head", " has ",
             params.size() + buffers.size(), "; resume with the options of the original run");
  }
  torch::load(*optimizer, dir + "/optimizer.pt");
  start_epoch = h.epochs_done;
  step = h.step;
  resume_progress = h.progress;
  const json j = json::parse(text);
  for (const auto& r : j.at("history")) result.history.push_back(PretrainEpoch::from_json(r.dump()));
  warn_changed_settings(text, o.epochs, resumed_settings());
  commands = j.value("commands", std::vector<std::string>{});
  if (!o.command.empty()) commands.push_back(o.command);
}

void Pretrainer::State::write_charts() const {
  std::vector<double> x, loss, top1, knn;
  for (const auto& r : result.history) {
    x.push_back(static_cast<double>(r.epoch));
    loss.push_back(r.loss);
    top1.push_back(100 * r.contrast_top1);
    knn.push_back(r.knn_top1 >= 0 ? 100 * r.knn_top1 : std::nan(""));
  }
  write_file_atomic(path(run_files::kLossChart),
                    svg_line_chart(mae() ? "Reconstruction loss" : "Contrastive loss", "epoch",
                                   mae() ? "MSE on hidden patches" : "NT-Xent", x,
                                   {{"train", loss}}));
  std::vector<std::pair<std::string, std::vector<double>>> accuracy;
  if (!mae()) accuracy.emplace_back("partner found (train)", top1);  // MAE has no pairs
  accuracy.emplace_back("k-NN top-1 (val)", knn);
  write_file_atomic(path(run_files::kAccuracyChart), svg_line_chart("Accuracy", "epoch", "%", x, accuracy));
}

Pretrainer::Pretrainer(PretrainOptions options) : s_(std::make_unique<State>()) {
  auto& s = *s_;
  s.o = std::move(options);
  const auto& o = s.o;
  VT_CHECK(!o.out_dir.empty(), "give --out DIR for the run's checkpoints and logs");
  VT_CHECK(o.data.labels_per_class == 0 && o.data.label_fraction == 1.0,
           "pretraining reads no labels: --labels-per-class and --label-fraction would only "
           "drop unlabelled photos; leave them to `vitrine train`");
  VT_CHECK(o.method == "simclr" || o.method == "mae", "--method ", o.method,
           " is not supported; use simclr (contrastive learning of two augmented views) or, "
           "for a ViT, mae (masked autoencoder)");
  VT_CHECK(o.mask_ratio > 0 && o.mask_ratio < 1, "--mask-ratio must be in (0, 1), got ",
           o.mask_ratio);
  VT_CHECK(o.epochs > 0, "--epochs must be positive");
  VT_CHECK(o.batch_size >= (o.method == "mae" ? 1 : 2),
           o.method == "mae" ? "--batch-size must be positive"
                             : "--batch-size must be at least 2 for simclr: each image's partner "
                               "view is told apart from the other images' views");
  VT_CHECK(o.temperature > 0, "--temperature must be positive (SimCLR uses 0.1-0.5)");
  VT_CHECK(o.proj_dim > 0, "--proj-dim must be positive, got ", o.proj_dim);
  VT_CHECK(o.proj_hidden >= 0, "--proj-hidden must be 0 (the embedding's width) or positive, got ",
           o.proj_hidden);
  VT_CHECK(o.knn_bank_per_class >= 0, "--knn-bank must be 0 (no k-NN monitor) or positive, got ",
           o.knn_bank_per_class);
  if (o.knn_bank_per_class > 0) {
    VT_CHECK(o.knn_queries > 0, "--knn-queries must be positive, got ", o.knn_queries,
             " (--knn-bank 0 turns the k-NN monitor off)");
    VT_CHECK(o.knn_k > 0, "--knn-k must be positive, got ", o.knn_k,
             " (--knn-bank 0 turns the k-NN monitor off)");
  }
  VT_CHECK(o.amp == "none" || o.amp == "bf16", "--amp must be none or bf16");
  s.replaces_run = check_run_dir(o.out_dir, o.resume, o.overwrite);
  at::manual_seed(o.seed);
  s.open_data();
  s.build_model();
  const int64_t n = s.images->size();
  VT_CHECK(n >= 2, "pretraining needs at least 2 images, ", o.data.source, " has ", n);
  s.steps_per_epoch = n >= o.batch_size ? n / o.batch_size : 1;
  s.build_optimizer();
}

Pretrainer::~Pretrainer() = default;

PretrainResult Pretrainer::run(const std::function<void(const StepInfo&)>& on_step,
                               const std::function<void(const PretrainEpoch&)>& on_epoch) {
  auto& s = *s_;
  const auto& o = s.o;
  const auto run_start = std::chrono::steady_clock::now();
  if (o.resume) {
    s.load_state();  // before anything is created: a wrong --out stays absent
  } else if (!o.command.empty()) {
    s.commands = {o.command};
  }
  if (s.replaces_run) remove_run_files(o.out_dir);
  fs::create_directories(o.out_dir);
  data::LoaderOptions lo =
      training_loader_options(o.batch_size, s.images->size(), o.seed, o.workers, o.strict);
  lo.targets = false;  // labels, where there are any, are never used for learning
  data::Loader loader(s.images, s.views(), lo);
  s.result.last_dir = s.path(run_files::kLast);
  std::string log_text;
  for (const auto& r : s.result.history) log_text += r.to_json() + "\n";

  Optimisation optimisation{*s.model,     *s.optimizer, s.groups,  o.optim,
                            s.schedule,   s.trainable,  o.clip_grad, s.step};
  EpochHooks hooks;
  hooks.loss = [&s, &o](data::Batch& batch, std::mt19937_64&, double& top1) {
    if (s.mae()) {
      const at::Tensor& images = batch.images;
      const int64_t patch = s.model->config().vit.patch_size, grid = images.size(2) / patch;
      const at::Tensor keep = mae_keep(images.size(0), grid * grid, o.mask_ratio);
      AutocastScope autocast(o.amp == "bf16");
      const at::Tensor pred = s.decoder(s.model->forward_visible(images, keep), keep);
      top1 = 0;
      return mae_loss(pred.to(at::kFloat), images, keep, patch);
    }
    // N x 2 x C x H x W -> the first views of all images, then the second views.
    at::Tensor views = batch.images.transpose(0, 1).flatten(0, 1);
    if (s.channels_last) views = views.contiguous(at::MemoryFormat::ChannelsLast);
    AutocastScope autocast(o.amp == "bf16");
    const at::Tensor z = s.projector(s.model->forward_features(views)).to(at::kFloat);
    const auto halves = z.chunk(2);
    return nt_xent_loss(halves[0], halves[1], o.temperature, &top1);
  };
  hooks.on_step = on_step;
  for (int64_t epoch = s.start_epoch; epoch < o.epochs; ++epoch) {
    s.model->train();
    s.aside().train();
    hooks.save = [&s, epoch](const EpochProgress& p) { s.save_state(epoch, p); };
    EpochPlan plan{epoch, o.epochs, o.seed, s.steps_per_epoch, o.save_every_steps,
                   s.result.last_dir};
    plan.reported = &s.reported;
    const EpochSummary e =
        run_epoch(loader, plan, std::exchange(s.resume_progress, {}), optimisation, hooks);
    PretrainEpoch rec;
    rec.epoch = epoch + 1;
    rec.lr = e.lr;
    rec.loss = e.loss;
    rec.contrast_top1 = s.mae() ? -1.0 : e.top1;
    rec.seconds = e.seconds;
    rec.img_per_s = e.img_per_s;
    rec.skipped = e.skipped;
    // The epoch is saved whatever befalls the monitor.
    try {
      rec.knn_top1 = s.knn_monitor();
    } catch (const std::exception& e) {
      spdlog::warn("k-NN monitor of epoch {} failed ({}); the epoch is saved without it",
                   rec.epoch, e.what());
    }
    s.result.history.push_back(rec);
    s.save_backbone(s.result.last_dir);
    log_text += rec.to_json() + "\n";
    write_file_atomic(s.path(run_files::kLog), log_text);
    s.write_charts();
    s.save_state(epoch + 1);
    if (on_epoch) on_epoch(rec);
  }
  s.result.seconds = seconds_since(run_start);
  return s.result;
}

}  // namespace vitrine::train
