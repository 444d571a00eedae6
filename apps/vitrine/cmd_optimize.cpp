// `vitrine optimize`: a model made faster for deployment. So far: static int8 quantisation
// of ResNets and ViTs, calibrated on a sample of the user's own images, with the accuracy
// change measured on a labelled split and written into the optimised model's config.
#include "commands.h"

#include "vitrine/core/error.h"
#include "vitrine/core/json.h"
#include "vitrine/core/threads.h"
#include "vitrine/data/dataset.h"
#include "vitrine/data/loader.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"
#include "vitrine/train/evaluate.h"
#include "vitrine/train/ssl.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>

namespace vitrine::cli {
namespace {

struct Args {
  std::string model, out, calib, eval_data, split = "test";
  bool int8 = false;
  int64_t calib_images = 512, eval_images = 0, knn_bank = 10000, batch_size = 64;
  uint64_t seed = 0;
  int threads = 0, workers = 0;
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

/// Top-1 of the fp32 reference (libtorch), of bf16 and of int8 (fused path), and how often
/// each agrees with fp32: for a classifier its own top-1; for a backbone without a head a
/// weighted 20-NN vote among embeddings of a labelled sample of the training split, made
/// with the same precision (as a catalogue indexed by that model would be).
nlohmann::json compare_on(const Args& a, const data::DataSplits& splits,
                          const std::shared_ptr<data::Dataset>& d,
                          const models::VisionModel& int8_model) {
  auto reference = models::load_model(a.model);
  const bool classifier = reference->config().num_classes > 0;
  std::vector<models::Predictor> variants;
  variants.emplace_back(reference, models::Precision::kFp32, models::Engine::kLibtorch);
  variants.emplace_back(models::load_model(a.model), models::Precision::kBf16,
                        models::Engine::kFused);
  variants.emplace_back(int8_model, models::Precision::kInt8, models::Engine::kFused);
  const std::vector<std::string> names{"fp32", "bf16", "int8"};

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
  const double top1_fp32 = predicted[0].eq(q.labels).sum().item<double>() / n;
  for (size_t i = 0; i < variants.size(); ++i) {
    const double top1 = predicted[i].eq(q.labels).sum().item<double>() / n;
    out[names[i]] = {
        {"top1", top1},
        {"top1_change", top1 - top1_fp32},
        {"agreement_with_fp32", predicted[i].eq(predicted[0]).sum().item<double>() / n}};
  }
  return out;
}

void run(const Args& a) {
  VT_CHECK(a.int8, "nothing to do: choose an optimisation (--int8)");
  set_threads(a.threads);
  auto model = models::load_model(a.model);
  auto& cfg = model->mutable_config();

  // Calibration images: any --data source; labels, where present, are not used.
  data::DataOptions calib_opts;
  calib_opts.source = a.calib;
  calib_opts.seed = a.seed;
  calib_opts.val_split = 0;
  const auto calib_splits = data::open_pretraining_data(calib_opts);
  const auto calib = sample(calib_splits.train, a.calib_images, a.seed);
  data::LoaderOptions lo;
  lo.batch_size = a.batch_size;
  lo.workers = a.workers;
  lo.targets = false;
  data::Loader loader(calib, train::eval_sample_transform(cfg), lo);
  loader.start_epoch(0);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> scales = model->calibrate_int8([&loader] {
    data::Batch b;
    return loader.next(b) ? b.images : at::Tensor();
  });
  for (const auto& e : loader.errors()) spdlog::warn("calibration image skipped: {}", e);
  const double calib_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("calibrated {} activation scales on {} images in {:.1f} s", scales.size(),
               calib->size() - static_cast<int64_t>(loader.errors().size()), calib_s);
  cfg.int8_scales = scales;

  nlohmann::json report{
      {"method", cfg.family == models::Family::kViT
                     ? "static int8 products: weights symmetric per output column, "
                       "inputs per tensor (s8); token stream, norms and attention fp32"
                     : "static int8: weights symmetric per output channel, activations "
                       "per tensor (u8 after ReLU, s8 otherwise)"},
      {"calibration",
       {{"data", a.calib},
        {"images", calib->size() - static_cast<int64_t>(loader.errors().size())},
        {"seed", a.seed},
        {"statistic", "largest magnitude, mean over batches"}}}};
  if (!a.eval_data.empty()) {
    data::DataOptions eval_opts;
    eval_opts.source = a.eval_data;
    eval_opts.seed = a.seed;
    const auto splits = data::open_data(eval_opts);
    VT_CHECK(!splits.multi_label,
             "measuring int8 on multi-label data is not yet supported; "
             "leave out --data");
    // A classifier is scored among its own classes (the data may hold some of them).
    const auto base = pick_split(splits, a.split);
    const auto d = sample(cfg.num_classes > 0 ? data::with_classes(base, cfg.labels) : base,
                          a.eval_images, a.seed);
    report["accuracy"] = compare_on(a, splits, d, model);
    const auto& acc = report["accuracy"];
    spdlog::info("{} images of {} ({}):", acc["images"].get<int64_t>(), a.eval_data,
                 acc["task"].get<std::string>());
    for (const char* p : {"fp32", "bf16", "int8"}) {
      spdlog::info("  {}: top-1 {:.4f} ({:+.4f}), agreement with fp32 {:.4f}", p,
                   acc[p]["top1"].get<double>(), acc[p]["top1_change"].get<double>(),
                   acc[p]["agreement_with_fp32"].get<double>());
    }
  } else {
    spdlog::warn("no --data given: the accuracy change of int8 is not measured");
  }
  cfg.int8_report_json = json_text(report);
  models::save_model(*model, a.out);
  std::cout << json_text(nlohmann::json{{"model", a.out}, {"int8", report}}) << "\n";
  spdlog::info("saved {}: `vitrine predict/index/serve --model {}` run it in int8", a.out, a.out);
}

}  // namespace

void add_optimize_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "optimize",
      "Make a model faster to serve: static int8 quantisation, calibrated on your images");
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Model directory to optimise")->required();
  cmd->add_option("--out", a->out, "Where to write the optimised model directory")->required();
  cmd->add_flag("--int8", a->int8,
                "Static int8: per-channel int8 weights, activation scales from --calib");
  cmd->add_option("--calib", a->calib,
                  "Calibration images: a folder of photos, an ImageFolder root, a CSV manifest or "
                  "fashion-mnist (labels unused)")
      ->required();
  cmd->add_option("--calib-images", a->calib_images,
                  "Calibration sample size, spread over --calib (default 512; 0: all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  cmd->add_option("--data", a->eval_data,
                  "Labelled data to measure the accuracy change on (as train/eval take it)");
  cmd->add_option("--split", a->split, "Split of --data: train | val | test")
      ->check(CLI::IsMember({"train", "val", "test"}));
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
  cmd->callback([a, &status] {
    run(*a);
    status = kExitOk;
  });
}

}  // namespace vitrine::cli
