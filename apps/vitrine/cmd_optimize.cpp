// `vitrine optimize`: a model made faster for deployment: structured pruning with a short
// recovery fine-tune (distilled from the original), Token Merging for ViTs, and static int8
// quantisation calibrated on a sample of the user's own images. The accuracy change and the
// speed-up are measured against the original in the same run and written into the
// optimised model's config.
#include "commands.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/json.h"
#include "vitrine/core/threads.h"
#include "vitrine/data/dataset.h"
#include "vitrine/data/loader.h"
#include "progress.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"
#include "vitrine/models/prune.h"
#include "vitrine/train/evaluate.h"
#include "vitrine/train/ssl.h"
#include "vitrine/train/trainer.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <filesystem>
#include <optional>
#include <set>
#include <cstdio>
#include <iostream>

namespace vitrine::cli {
namespace {

struct Args {
  std::string model, out, calib, eval_data, split = "test";
  std::string final_out;  ///< --out as given (out is where the model is written meanwhile)
  bool int8 = false;
  double prune = 0;
  int64_t tome = 0;
  int64_t recover_epochs = 2;
  int64_t recover_batch_size = 0;  ///< 0: the model's own training batch size
  double recover_lr = 3e-4;
  int64_t calib_images = 512, eval_images = 0, knn_bank = 10000, batch_size = 64;
  uint64_t seed = 0;
  int threads = 0, workers = 0;
  /// --data's splits as `train` made them (the same fractions and split seed, so "test" is
  /// the run's test split, never photos it trained on).
  double val_split = data::DataOptions{}.val_split, test_split = data::DataOptions{}.test_split;
  uint64_t data_seed = 0;
  bool changes_weights() const { return prune > 0 || tome > 0; }
  data::DataOptions eval_options() const {
    data::DataOptions d;
    d.source = eval_data;
    d.val_split = val_split;
    d.test_split = test_split;
    d.seed = data_seed;
    return d;
  }
};

/// `limit` items of `d` spread over it by a seeded permutation (all when limit <= 0).
std::shared_ptr<data::Dataset> sample(std::shared_ptr<data::Dataset> d, int64_t limit,
                                      uint64_t seed) {
  if (limit <= 0 || limit >= d->size()) return d;
  auto order = data::permutation(d->size(), seed);
  order.resize(static_cast<size_t>(limit));
  return data::subset(d, std::move(order));
}

/// What each precision predicts for the images of `d`: the class of a classifier (N), or
/// the L2-normalised embedding of a backbone without a head (N x D); and the labels.
struct Outputs {
  std::vector<at::Tensor> per_variant;
  at::Tensor labels;
};

Outputs outputs_on(const Args& a, const std::shared_ptr<data::Dataset>& d,
                   const std::vector<models::Predictor>& variants, models::VisionModelImpl& any,
                   bool classifier) {
  std::vector<std::vector<at::Tensor>> parts(variants.size());
  std::vector<at::Tensor> labels;
  std::vector<std::string> errors;
  train::EvalOptions eo;
  eo.batch_size = a.batch_size;
  eo.workers = a.workers;
  train::for_each_eval_batch(any, d, eo, &errors, [&](const data::Batch& b) {
    for (size_t i = 0; i < variants.size(); ++i) {
      parts[i].push_back(classifier ? variants[i].logits(b.images).argmax(1)
                                    : models::l2_normalized(variants[i].embeddings(b.images)));
    }
    labels.push_back(b.targets);
  });
  for (const auto& e : errors) spdlog::warn("skipped: {}", e);
  VT_CHECK(!labels.empty(), "no readable images to measure the accuracy change on");
  Outputs out;
  for (auto& p : parts) out.per_variant.push_back(at::cat(p));
  out.labels = at::cat(labels);
  return out;
}

/// Top-1 of each variant and how often it agrees with the optimised model's fp32 (and, when
/// pruning or merging changed the network, with the original's fp32): for a classifier its
/// own top-1; for a backbone without a head a weighted 20-NN vote among embeddings of a
/// labelled sample of the training split, made by the same variant (as a catalogue indexed
/// by that model would be). fp32 runs on libtorch (the reference), bf16 and int8 fused.
nlohmann::json compare_on(const Args& a, const data::DataSplits& splits,
                          const std::shared_ptr<data::Dataset>& d) {
  auto reference = models::load_model(a.out);
  const bool classifier = reference->config().num_classes > 0;
  std::vector<models::Predictor> variants;
  std::vector<std::string> names;
  if (a.changes_weights()) {
    variants.emplace_back(models::load_model(a.model), models::Precision::kFp32,
                          models::Engine::kLibtorch);
    names.emplace_back("original");
  }
  const size_t fp32 = variants.size();
  variants.emplace_back(reference, models::Precision::kFp32, models::Engine::kLibtorch);
  names.emplace_back("fp32");
  if (models::bf16_runs_here()) {
    variants.emplace_back(models::load_model(a.out), models::Precision::kBf16,
                          models::Engine::kAuto);  // fused where this build has it
    names.emplace_back("bf16");
  } else {
    spdlog::info("bf16 is not measured: the fused engine runs it on AVX-512 CPUs only");
  }
  if (a.int8) {
    variants.emplace_back(models::load_model(a.out), models::Precision::kInt8,
                          models::Engine::kFused);
    names.emplace_back("int8");
  }

  const Outputs q = outputs_on(a, d, variants, *reference, classifier);
  std::vector<at::Tensor> predicted = q.per_variant;
  nlohmann::json out{{"data", a.eval_data}, {"split", a.split}, {"images", q.labels.size(0)}};
  if (!classifier) {
    const auto bank_data = sample(splits.train, a.knn_bank, a.seed + 1);
    const Outputs bank = outputs_on(a, bank_data, variants, *reference, false);
    const auto classes = static_cast<int64_t>(splits.classes.size());
    for (size_t i = 0; i < variants.size(); ++i) {
      predicted[i] =
          train::knn_predict({bank.per_variant[i], bank.labels}, q.per_variant[i], classes);
    }
    out["task"] =
        "weighted 20-NN among " + std::to_string(bank.labels.size(0)) + " labelled training images";
  } else {
    out["task"] = "classification";
  }
  const auto n = static_cast<double>(q.labels.size(0));
  const auto share = [n](const at::Tensor& x) { return x.sum().item<double>() / n; };
  const double top1_base = share(predicted[0].eq(q.labels));
  for (size_t i = 0; i < variants.size(); ++i) {
    const double top1 = share(predicted[i].eq(q.labels));
    nlohmann::json row{{"top1", top1},
                       {"top1_change", top1 - top1_base},
                       {"agreement_with_fp32", share(predicted[i].eq(predicted[fp32]))}};
    if (fp32 > 0) row["agreement_with_original"] = share(predicted[i].eq(predicted[0]));
    out[names[i]] = row;
  }
  out["variants"] = names;
  return out;
}

/// Images per second of `p` on random batches of `batch` (after a warm-up call, for at least
/// `seconds`), and the time of one call.
std::pair<double, double> throughput(const models::Predictor& p, int64_t batch, double seconds) {
  const auto& c = p.config();
  const at::Tensor x = at::randn({batch, c.in_channels, c.image_size, c.image_size});
  p.logits(x);
  int64_t calls = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double elapsed = 0;
  while (calls < 2 || elapsed < seconds) {
    p.logits(x);
    ++calls;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return {static_cast<double>(calls * batch) / elapsed, elapsed / static_cast<double>(calls)};
}

/// A variant's name for people: "fp32" is the optimised model's own where pruning or merging
/// changed the network (the original is "original").
std::string variant_label(const Args& a, const std::string& name) {
  return a.changes_weights() && name != "original" ? "optimised " + name : name;
}

/// The optimised model's speed against the original's, fused engine, same batches.
nlohmann::json speed_of(const Args& a, int threads) {
  std::vector<std::pair<std::string, models::Predictor>> runs;
  runs.emplace_back("original_fp32", models::Predictor(models::load_model(a.model),
                                                       models::Precision::kFp32));
  if (a.changes_weights()) {
    runs.emplace_back("fp32", models::Predictor(models::load_model(a.out),
                                                models::Precision::kFp32));
  }
  if (a.int8) {
    runs.emplace_back("int8", models::Predictor(models::load_model(a.out),
                                                models::Precision::kInt8));
  }
  nlohmann::json out{{"engine", models::engine_name(runs.front().second.engine())},
                     {"batch", a.batch_size},
                     {"threads", threads}};
  double base = 0;
  std::string slower;
  for (const auto& [name, p] : runs) {
    const auto [rate, latency] = throughput(p, a.batch_size, 2.0);
    if (base == 0) base = rate;
    out[name] = {{"img_per_s", rate}, {"ms_per_batch", latency * 1e3}, {"speedup", rate / base}};
    const std::string shown = name == "original_fp32" ? "original fp32" : variant_label(a, name);
    spdlog::info("  {}: {:.1f} img/s at batch {} ({:.2f}x the original)", shown, rate,
                 a.batch_size, rate / base);
    if (name != "original_fp32" && rate < base) slower += (slower.empty() ? "" : ", ") + shown;
  }
  if (!slower.empty()) {
    spdlog::warn("{} measured slower than the original. Two seconds a variant on a machine "
                 "busy with other work is noise: measure again with `vitrine bench --model {}` "
                 "when it is idle (fewer --threads than busy cores steadies it)",
                 slower, a.final_out);
  }
  return out;
}

/// Structured pruning, then (with labelled --data and a classifier) a short fine-tune that
/// learns from the labels and from the original model's predictions (distillation).
models::VisionModel prune_and_recover(const Args& a, const models::VisionModel& original,
                                      nlohmann::json& report) {
  models::PruneOptions po;
  po.ratio = a.prune;
  auto pruned = models::prune_model(*original, po);
  spdlog::info("pruned {:.0f}%: {} ({} -> {} weights)", a.prune * 100, pruned.summary,
               pruned.params_before, pruned.params_after);
  nlohmann::json r{{"ratio", a.prune},
                   {"kept", pruned.summary},
                   {"params_before", pruned.params_before},
                   {"params_after", pruned.params_after},
                   {"importance",
                    "weights only: ReLU'd batch-norm output RMS x read-out norm (ResNet "
                    "channels), input x output weight norms (ViT heads, MLP units)"}};
  const bool can_recover =
      !a.eval_data.empty() && a.recover_epochs > 0 && original->config().num_classes > 0;
  if (!can_recover) {
    const char* why = a.eval_data.empty()          ? "no --data"
                      : a.recover_epochs == 0      ? "--recover-epochs 0"
                                                   : "the model has no head to train";
    spdlog::warn("no recovery fine-tune ({}): the pruned model keeps the original's weights "
                 "for its remaining units",
                 why);
    r["recovery"] = why;
    report["prune"] = r;
    return pruned.model;
  }
  const std::string pruned_dir = a.out + "/pruned";
  models::save_model(*pruned.model, pruned_dir);
  train::TrainOptions o;
  o.init_dir = pruned_dir;
  o.teacher_dir = a.model;
  o.data = a.eval_options();
  o.seed = a.seed;
  o.epochs = a.recover_epochs;
  // The batch the model was trained with (a small data set's photos are mostly in full
  // batches), not --batch-size, the inference batch.
  o.batch_size = a.recover_batch_size;
  if (o.batch_size == 0) {
    const auto p = nlohmann::json::parse(original->config().provenance_json, nullptr, false);
    o.batch_size = p.is_object() && p.contains("batch_size") && p["batch_size"].is_number_integer()
                       ? std::max<int64_t>(1, p["batch_size"].get<int64_t>())
                       : 32;
  }
  o.workers = a.workers;
  o.optim.lr = a.recover_lr;
  o.warmup_epochs = std::min(0.2, static_cast<double>(a.recover_epochs) / 4);
  o.augment.scale = {0.25, 1.0};  // a short fine-tune: milder crops than pretraining's
  o.out_dir = a.out + "/recovery";
  spdlog::info("recovery: {} epochs on {} at lr {}, batch {}, distilled from {}", o.epochs,
               a.eval_data, o.optim.lr, o.batch_size, a.model);
  train::Trainer trainer(o);
  EpochBar bar("acc");
  const auto result = trainer.run([&](const train::StepInfo& s) { bar.step(s); },
                                  [&](const train::EpochRecord& e) {
                                    bar.end_epoch();
                                    if (e.has_val) {
                                      spdlog::info("recovery epoch {}: val top-1 {:.4f}",
                                                   e.epoch, e.val_top1);
                                    } else {
                                      spdlog::info("recovery epoch {}: train loss {:.4f} (no "
                                                   "validation split: the last epoch is kept)",
                                                   e.epoch, e.train_loss);
                                    }
                                  });
  r["recovery"] = {{"epochs", o.epochs},
                   {"batch_size", o.batch_size},
                   {"lr", o.optim.lr},
                   {"data", a.eval_data},
                   {"teacher", a.model},
                   {"distill_alpha", o.distill_alpha},
                   {"run", a.final_out + "/recovery"},
                   {"best_epoch", result.best_epoch},
                   {"best_val_top1", result.best_value}};
  if (result.best_epoch < 0) {  // no validation split: the last epoch's model
    r["recovery"].erase("best_epoch");
    r["recovery"].erase("best_val_top1");
    r["recovery"]["kept"] = "the last epoch (no validation split)";
  }
  report["prune"] = r;
  // The optimiser's state resumes training, which the deployed model never needs.
  std::error_code ec;
  std::filesystem::remove_all(o.out_dir + "/state", ec);
  auto model = models::load_model(result.best_dir);
  // It names where it was initialised as that folder will be, not as it is while written.
  auto prov = nlohmann::json::parse(model->config().provenance_json, nullptr, false);
  if (prov.is_object() && prov.contains("init")) {
    prov["init"] = a.final_out + "/pruned";
    model->mutable_config().provenance_json = json_text(prov);
  }
  return model;
}

/// Calibrates `model`'s int8 scales on --calib and stores them in its config.
void calibrate(const Args& a, const std::shared_ptr<data::Dataset>& calib,
               models::VisionModelImpl& model, nlohmann::json& report) {
  auto& cfg = model.mutable_config();
  data::LoaderOptions lo;
  lo.batch_size = 64;  // not --batch-size: the scales depend on the photos alone
  lo.workers = a.workers;
  lo.targets = false;
  data::Loader loader(calib, train::eval_sample_transform(cfg), lo);
  loader.start_epoch(0);
  const auto t0 = std::chrono::steady_clock::now();
  const auto skipped = [&loader] {
    for (const auto& e : loader.errors()) spdlog::warn("calibration image skipped: {}", e);
    return static_cast<int64_t>(loader.errors().size());
  };
  try {
    cfg.int8_scales = model.calibrate_int8([&loader] {
      data::Batch b;
      return loader.next(b) ? b.images : at::Tensor();
    });
  } catch (const Error&) {
    const int64_t unreadable = skipped();
    VT_CHECK(unreadable < calib->size(), "none of the ", calib->size(),
             " calibration images of ", a.calib, " could be read (each is named above); give "
             "--calib photos like those the model will serve, in JPEG, PNG, WebP or BMP");
    throw;
  }
  skipped();
  const double calib_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t used = calib->size() - static_cast<int64_t>(loader.errors().size());
  spdlog::info("calibrated {} activation scales on {} images in {:.1f} s", cfg.int8_scales.size(),
               used, calib_s);
  if (used < 100) {
    spdlog::warn("int8 scales from {} images: the activations of photos unlike these may be "
                 "clipped; give --calib 100 or more photos like those it will serve (512 are "
                 "used by default)", used);
  }
  report["int8"] = {
      {"method", cfg.family == models::Family::kViT
                     ? "static int8 products: weights symmetric per output column, "
                       "inputs per tensor (s8); token stream, norms and attention fp32"
                     : "static int8: weights symmetric per output channel, activations "
                       "per tensor (u8 after ReLU, s8 otherwise)"},
      {"calibration",
       {{"data", a.calib},
        {"images", used},
        {"seed", a.seed},
        {"statistic", "largest magnitude, mean over batches"}}}};
}

/// Removes a directory being written unless it was finished (a failed run leaves nothing that
/// looks like a model).
class PartialDir {
 public:
  explicit PartialDir(std::string path) : path_(std::move(path)) {
    std::filesystem::remove_all(path_);
  }
  ~PartialDir() {
    std::error_code ec;
    if (!done_) std::filesystem::remove_all(path_, ec);
  }
  PartialDir(const PartialDir&) = delete;
  PartialDir& operator=(const PartialDir&) = delete;
  /// Moves it to `dest`, replacing what was there.
  void finish(const std::string& dest) {
    replace_dir(path_, dest);
    done_ = true;
  }

 private:
  std::string path_;
  bool done_ = false;
};

void run_into(const Args& a);

void run(const Args& a) {
  VT_CHECK(a.int8 || a.changes_weights(),
           "nothing to do: choose an optimisation (--prune, --tome, --int8)");
  VT_CHECK(!a.int8 || !a.calib.empty(), "--int8 needs calibration images: add --calib DIR "
           "(a sample of the photos the model will see)");
  // Everything is written beside --out and moved there once measured.
  const std::string out = std::filesystem::path(a.out).lexically_normal().string();
  VT_CHECK(!out.empty() && out != "." && out != "/", "--out must name a directory for the model");
  std::error_code ec;
  VT_CHECK(!std::filesystem::equivalent(a.model, a.out, ec), "--out ", a.out, " is --model "
           "itself; write the optimised model elsewhere (the original stays the reference)");
  check_output_dir(a.out);
  // --out is replaced as a whole once done: a model inside it would go with it.
  const auto model_path = std::filesystem::weakly_canonical(a.model, ec);
  auto out_path = std::filesystem::weakly_canonical(a.out, ec);
  if (!out_path.has_filename()) out_path = out_path.parent_path();  // "dir/"
  const bool inside = std::mismatch(out_path.begin(), out_path.end(), model_path.begin(),
                                    model_path.end()).first == out_path.end();
  VT_CHECK(ec || !inside, "--model ", a.model, " lies inside --out ", a.out, ", which is "
           "replaced once the optimised model is measured; write it elsewhere");
  Args partial = a;
  partial.final_out = a.out;
  partial.out = (out.back() == '/' ? out.substr(0, out.size() - 1) : out) + ".partial";
  PartialDir dir(partial.out);
  run_into(partial);
  dir.finish(a.out);
  spdlog::info("saved {}: `vitrine predict/index/serve --model {}` run it{}", a.out, a.out,
               a.int8 ? " in int8" : "");
}

/// Calibration photos that are also evaluation photos: scales fitted to the very photos the
/// int8 accuracy is measured on make it look a little better than on new photos.
void warn_of_shared_photos(const data::Dataset& calib, const data::Dataset& eval,
                           const std::string& split) {
  const auto key = [](const std::string& name) {
    std::error_code ec;
    const std::filesystem::path p = std::filesystem::absolute(name, ec);
    return (ec ? std::filesystem::path(name) : p).lexically_normal().string();
  };
  std::set<std::string> evaluated;
  for (int64_t i = 0; i < eval.size(); ++i) evaluated.insert(key(eval.name(i)));
  int64_t shared = 0;
  std::string example;
  for (int64_t i = 0; i < calib.size(); ++i) {
    if (evaluated.count(key(calib.name(i))) == 0) continue;
    if (shared++ == 0) example = calib.name(i);
  }
  if (shared == 0) return;
  spdlog::warn("{} of the {} calibration photos are {} photos the accuracy is measured on "
               "(e.g. {}): the int8 figures run a little high; give --calib the training "
               "photos (e.g. DATA/train) or others like them", shared, calib.size(), split,
               example);
}

void run_into(const Args& a) {
  const int threads = set_threads(a.threads);
  VT_CHECK(!a.int8 || models::fused_engine_built(), "--int8 runs on the fused engine "
           "(oneDNN), which this build lacks: install libdnnl-dev and build again");
  // The data first: a bad --data, --split or --calib fails before any work is done.
  std::optional<data::DataSplits> splits;
  if (!a.eval_data.empty()) {
    splits = open_data_logged(a.eval_options());
    VT_CHECK(!splits->multi_label,
             "measuring on multi-label data is not yet supported; leave out --data");
    pick_split(*splits, a.split);
    // The recovery fine-tune trains on the data's classes, which must be the model's own.
    if (a.prune > 0 && a.recover_epochs > 0) {
      const auto cfg = models::load_model_config(a.model);
      VT_CHECK(cfg.num_classes <= 0 ||
                   static_cast<int64_t>(splits->classes.size()) == cfg.num_classes,
               "--prune recovers on --data's training photos, which hold ",
               splits->classes.size(), " classes; ", a.model, " has ", cfg.num_classes,
               ": give data of all its classes, or --recover-epochs 0 to prune without "
               "recovery");
    }
  }
  std::shared_ptr<data::Dataset> calib;
  if (a.int8) {
    data::DataOptions calib_opts;
    calib_opts.source = a.calib;
    calib_opts.seed = a.seed;
    calib_opts.val_split = 0;
    calib = sample(data::open_pretraining_data(calib_opts).train, a.calib_images, a.seed);
  }
  const auto original = models::load_model(a.model);
  VT_CHECK(a.tome == 0 || original->config().family == models::Family::kViT,
           "--tome merges ViT tokens; ", original->config().arch, " is a ResNet (use --prune)");
  // A classifier is scored among its own classes, matched as `eval` matches them.
  if (splits && original->config().num_classes > 0) {
    train::scored_as(original->config(), pick_split(*splits, a.split));
  }
  const bool had_scales = !original->config().int8_scales.empty();
  nlohmann::json report = nlohmann::json::object();
  models::VisionModel model = a.prune > 0 ? prune_and_recover(a, original, report)
                                          : models::load_model(a.model);
  auto& cfg = model->mutable_config();
  if (a.tome > 0) {
    cfg.vit.tome_r = a.tome;
    int64_t t = (cfg.image_size / cfg.vit.patch_size) * (cfg.image_size / cfg.vit.patch_size) + 1;
    const int64_t t0 = t;
    for (int64_t i = 0; i < cfg.vit.num_hidden_layers; ++i) t -= models::tome_merges(t, a.tome);
    spdlog::info("Token Merging: {} pairs per block, {} tokens in, {} leave the last block",
                 a.tome, t0, t);
    report["tome"] = {{"r", a.tome}, {"tokens_in", t0}, {"tokens_out", t}};
  }
  if (a.int8) {
    calibrate(a, calib, *model, report);
  } else if (had_scales) {
    // Scales belong to the weights and token counts they were measured on.
    cfg.int8_scales.clear();
    cfg.int8_report_json = "{}";
    spdlog::warn("{}'s int8 scales do not fit the changed network and are dropped; add --int8 "
                 "--calib DIR to calibrate it again",
                 a.model);
  }
  models::save_model(*model, a.out);

  if (splits) {
    // A classifier is scored among its own classes (the data may hold some of them).
    const auto base = pick_split(*splits, a.split);
    const auto d = sample(cfg.num_classes > 0 ? train::scored_as(cfg, base) : base,
                          a.eval_images, a.seed);
    if (calib) warn_of_shared_photos(*calib, *d, a.split);
    report["accuracy"] = compare_on(a, *splits, d);
    const auto& acc = report["accuracy"];
    spdlog::info("{} images of {} ({}):", acc["images"].get<int64_t>(), a.eval_data,
                 acc["task"].get<std::string>());
    for (const auto& p : acc["variants"]) {
      const auto& row = acc[p.get<std::string>()];
      spdlog::info("  {}: top-1 {:.4f} ({:+.4f}), agreement with {} {:.4f}{}",
                   variant_label(a, p.get<std::string>()), row["top1"].get<double>(),
                   row["top1_change"].get<double>(), variant_label(a, "fp32"),
                   row["agreement_with_fp32"].get<double>(),
                   row.contains("agreement_with_original")
                       ? fmt::format(", with the original {:.4f}",
                                     row["agreement_with_original"].get<double>())
                       : std::string());
    }
    // A top-1 measured on few photos moves by whole photos: say how far chance reaches, as
    // Wilson's 95% interval (right at 0 and 1 too, where p(1-p)/n says nothing).
    const auto n = acc["images"].get<double>();
    if (n < 1000 && n > 0) {
      std::string ranges;
      for (const auto& p : acc["variants"]) {
        const double top1 = acc[p.get<std::string>()]["top1"].get<double>();
        const double z = 1.96, shrink = 1 + z * z / n;
        const double centre = (top1 + z * z / (2 * n)) / shrink;
        const double half =
            z * std::sqrt(top1 * (1 - top1) / n + z * z / (4 * n * n)) / shrink;
        ranges += fmt::format("{}{} {:.4f} ({:.3f} to {:.3f})", ranges.empty() ? "" : ", ",
                              variant_label(a, p.get<std::string>()), top1,
                              std::max(0.0, centre - half), std::min(1.0, centre + half));
      }
      spdlog::warn("measured on {} images, each top-1 is known only within a range (95%): {}; "
                   "smaller changes say little; give --data a split of 1,000 photos or more",
                   n, ranges);
    }
  } else {
    spdlog::warn("no --data given: the accuracy change is not measured");
  }
  spdlog::info("speed ({} threads):", threads);
  report["speed"] = speed_of(a, threads);

  // The report goes with the weights: under quantization.int8 for an int8 model, under
  // provenance.optimize for a pruned or merged one.
  if (a.int8) cfg.int8_report_json = json_text(report);
  if (a.changes_weights()) {
    auto prov = nlohmann::json::parse(cfg.provenance_json, nullptr, false);
    if (!prov.is_object()) prov = nlohmann::json::object();
    prov["optimize"] = report;
    prov["optimize"]["from"] = a.model;
    cfg.provenance_json = json_text(prov);
  }
  models::save_model(*model, a.out);
  std::cout << json_text(nlohmann::json{{"model", a.final_out}, {"report", report}}) << "\n";
}

}  // namespace

void add_optimize_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "optimize",
      "Make a model faster to serve: structured pruning (--prune), Token Merging (--tome), "
      "static int8 (--int8); accuracy and speed measured against the original");
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Model directory to optimise")->required();
  cmd->add_option("--out", a->out, "Where to write the optimised model directory")->required();
  cmd->add_option("--prune", a->prune,
                  "Structured pruning: remove this share of each block's inner width (ResNet "
                  "channels, ViT heads and MLP units), e.g. 0.3")
      ->check(CLI::Range(0.0, 0.95));
  cmd->add_option("--recover-epochs", a->recover_epochs,
                  "After --prune: epochs of fine-tuning on --data, distilled from the original "
                  "(default 2; 0: none)")
      ->check(CLI::Range(int64_t{0}, int64_t{1000}));
  cmd->add_option("--recover-lr", a->recover_lr, "Peak learning rate of that fine-tune (AdamW)")
      ->check(positive());
  cmd->add_option("--recover-batch-size", a->recover_batch_size,
                  "Batch size of that fine-tune (default: the one the model was trained with, "
                  "else 32)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  cmd->add_option("--tome", a->tome,
                  "ViT Token Merging: merge this many token pairs after each block's "
                  "attention (training-free), e.g. 8")
      ->check(CLI::Range(int64_t{0}, int64_t{100000}));
  cmd->add_flag("--int8", a->int8,
                "Static int8: per-channel int8 weights, activation scales from --calib");
  cmd->add_option("--calib", a->calib,
                  "Calibration images for --int8: a folder of photos, an ImageFolder root, a "
                  "CSV manifest or fashion-mnist (labels unused)");
  cmd->add_option("--calib-images", a->calib_images,
                  "Calibration sample size, spread over --calib (default 512; 0: all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  cmd->add_option("--data", a->eval_data,
                  "Labelled data (as train/eval take it): the accuracy change is measured on "
                  "its --split, and --prune recovers on its training split");
  cmd->add_option("--split", a->split, "Split of --data: train | val | test")
      ->check(CLI::IsMember({"train", "val", "test"}));
  cmd->add_option("--val-split", a->val_split,
                  "Validation fraction of a --data root without val/ (as the model's train run)");
  cmd->add_option("--test-split", a->test_split,
                  "Test fraction of a --data root without test/ (as the model's train run)");
  cmd->add_option("--data-seed", a->data_seed,
                  "Seed of the carved splits of --data (as the model's train run)")
      ->capture_default_str();
  cmd->add_option("--eval-images", a->eval_images, "Measure on this many images (0: all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  cmd->add_option("--knn-bank", a->knn_bank,
                  "A backbone without a head is measured by k-NN among this many labelled "
                  "training images (default 10000; 0: all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  cmd->add_option("--batch-size,-b", a->batch_size, "Images per forward pass")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  cmd->add_option("--seed", a->seed, "Seed of the calibration and evaluation samples");
  cmd->add_option("--threads", a->threads, "Compute threads (default: all cores)");
  cmd->add_option("--workers", a->workers, "Image decoding threads (0 = all cores)");
  cmd->callback([a, cmd, &status] {
    if (!a->eval_data.empty()) {
      adopt_training_split(cmd, a->model, a->eval_data, a->val_split, a->test_split,
                           a->data_seed);
    }
    run(*a);
    status = kExitOk;
  });
}

}  // namespace vitrine::cli
