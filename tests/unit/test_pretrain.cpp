// Self-supervised pretraining on small synthetic photo sets: the loss falls, a killed run
// resumes exactly, the k-NN monitor counts right, and the backbone fine-tunes; SimCLR and
// MAE (its masking, loss and the encoder pass over kept patches alone).
#include "test_util.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/data/dataset.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/registry.h"
#include "vitrine/train/pretrainer.h"
#include "vitrine/train/run_state.h"
#include "vitrine/train/ssl.h"
#include "vitrine/train/trainer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <filesystem>
#include <random>

using namespace vitrine;
namespace fs = std::filesystem;

namespace {

// Photos of three kinds of "product": a disc, a bar or a cross, in random colours, sizes
// and places. With `class_folders` they sit in a folder per kind, else all in one folder.
void write_shapes(const std::string& root, int per_class, uint64_t seed, bool class_folders) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> colour(60, 255), pos(10, 22), size(5, 9);
  for (int c = 0; c < 3; ++c) {
    const std::string dir = class_folders ? root + "/kind_" + std::to_string(c) : root;
    fs::create_directories(dir);
    for (int i = 0; i < per_class; ++i) {
      cv::Mat img(32, 32, CV_8UC3, cv::Scalar(30, 30, 30));
      const cv::Scalar col(colour(rng), colour(rng), colour(rng));
      const cv::Point p(pos(rng), pos(rng));
      const int s = size(rng);
      if (c == 0) cv::circle(img, p, s, col, cv::FILLED);
      if (c == 1) cv::rectangle(img, cv::Rect(p.x - s, p.y - 2, 2 * s, 4), col, cv::FILLED);
      if (c == 2) {
        cv::rectangle(img, cv::Rect(p.x - s, p.y - 1, 2 * s, 3), col, cv::FILLED);
        cv::rectangle(img, cv::Rect(p.x - 1, p.y - s, 3, 2 * s), col, cv::FILLED);
      }
      cv::imwrite(dir + "/" + std::to_string(c) + "_" + std::to_string(i) + ".png", img);
    }
  }
}

train::PretrainOptions small_pretrain(const std::string& data, const std::string& out) {
  train::PretrainOptions o;
  o.arch = "resnet18";
  o.resnet_stem = "small";
  o.image_size = 32;
  o.eval_crop_pct = 1.0;
  o.data.source = data;
  o.data.val_split = 0.25;
  o.batch_size = 16;
  o.workers = 2;
  o.epochs = 2;
  o.warmup_epochs = 0;
  o.knn_bank_per_class = 4;
  o.out_dir = out;
  o.seed = 3;
  return o;
}

/// MAE on a two-block ViT of 8-pixel patches (16 per 32-pixel photo), from a model
/// directory written at `dir`/init.
train::PretrainOptions small_mae(const std::string& data, const std::string& dir) {
  models::ModelConfig c = test::tiny_vit_config(2);
  c.num_classes = 0;
  models::save_model(*models::create_model(c), dir + "/init");
  train::PretrainOptions o = small_pretrain(data, dir + "/run");
  o.arch.clear();
  o.resnet_stem.clear();
  o.init_dir = dir + "/init";
  o.method = "mae";
  o.augment = train::mae_augment();
  o.decoder_width = 32;
  o.decoder_depth = 1;
  o.decoder_heads = 4;
  return o;
}

}  // namespace

TEST(Mae, PatchesMaskingAndLossCountOnlyHiddenPatches) {
  at::manual_seed(0);
  const at::Tensor images = at::randn({2, 3, 8, 8});
  const at::Tensor patches = train::patchify(images, 4);  // 2 x 2 patches of 4 x 4 x 3
  ASSERT_EQ(patches.sizes(), (at::IntArrayRef{2, 4, 48}));
  // Patch 1 is the top row's right one, its values pixel by pixel, channels innermost.
  const at::Tensor top_right = images[1].slice(1, 0, 4).slice(2, 4, 8).permute({1, 2, 0});
  EXPECT_TRUE(at::equal(patches[1][1], top_right.flatten()));

  const at::Tensor keep = train::mae_keep(3, 16, 0.75);
  ASSERT_EQ(keep.sizes(), (at::IntArrayRef{3, 4}));
  for (int64_t i = 0; i < 3; ++i) {
    const auto kept = std::get<0>(at::_unique(keep[i]));
    EXPECT_EQ(kept.numel(), 4);  // four different patches
    EXPECT_GE(kept.min().item<int64_t>(), 0);
    EXPECT_LT(kept.max().item<int64_t>(), 16);
  }
  EXPECT_FALSE(at::equal(keep[0], keep[1]));  // each image its own draw
  EXPECT_EQ(train::mae_keep(1, 16, 0.99).size(1), 1);  // never nothing seen
  EXPECT_EQ(train::mae_keep(1, 16, 0.02).size(1), 15);  // never nothing hidden
  EXPECT_CONTAINS(test::error_of([] { train::mae_keep(1, 16, 1.0); }), "--mask-ratio");
  EXPECT_CONTAINS(test::error_of([] { train::mae_keep(1, 16, 0.0); }), "--mask-ratio");

  // Predictions equal to the normalised true patches where hidden, far off where seen:
  // nothing to pay. One unit off everywhere hidden: a squared error of 1.
  const at::Tensor seen = at::tensor(std::vector<int64_t>{0, 3, 2, 2}).view({2, 2});
  const at::Tensor mean = patches.mean(-1, true), var = patches.var(-1, true, true);
  const at::Tensor target = (patches - mean) / (var + 1e-6).sqrt();
  at::Tensor pred = target.clone();
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 2; ++j) pred[i][seen[i][j].item<int64_t>()] += 5.0;
  }
  EXPECT_NEAR(train::mae_loss(pred, images, seen, 4).item<double>(), 0.0, 1e-10);
  EXPECT_NEAR(train::mae_loss(target + 1.0, images, seen, 4).item<double>(), 1.0, 1e-6);
  // Without the per-patch normalisation the raw values are the target.
  EXPECT_NEAR(train::mae_loss(patches, images, seen, 4, /*norm_pix=*/false).item<double>(), 0.0,
              1e-12);
}

TEST(Mae, EncoderSeesOnlyTheKeptPatches) {
  models::ModelConfig c = test::tiny_vit_config(2);  // 16 patches of 8 x 8
  c.num_classes = 0;
  auto model = models::create_model(c);
  model->eval();
  at::NoGradGuard no_grad;
  at::manual_seed(1);
  const at::Tensor images = at::randn({2, 3, 32, 32});
  const at::Tensor keep = at::tensor(std::vector<int64_t>{5, 0, 9, 5, 6, 15}).view({2, 3});
  const at::Tensor out = model->forward_visible(images, keep);
  ASSERT_EQ(out.sizes(), (at::IntArrayRef{2, 4, 32}));
  // Patch 1 (top row, second) is hidden in both images: changing it changes nothing.
  at::Tensor other = images.clone();
  other.slice(2, 0, 8).slice(3, 8, 16).add_(3.0);
  EXPECT_TRUE(at::allclose(model->forward_visible(other, keep), out, 0, 1e-6));
  // Patch 6 is seen by image 1 only.
  other = images.clone();
  other.slice(2, 8, 16).slice(3, 16, 24).add_(3.0);
  const at::Tensor changed = model->forward_visible(other, keep);
  EXPECT_TRUE(at::allclose(changed[0], out[0], 0, 1e-6));
  EXPECT_FALSE(at::allclose(changed[1], out[1], 0, 1e-3));
  // Keeping every patch is the plain encoder: its class token is the embedding.
  const at::Tensor all = at::arange(16, at::kLong).repeat({2, 1});
  EXPECT_TRUE(at::allclose(model->forward_visible(images, all).select(1, 0),
                           model->forward_features(images), 1e-5, 1e-5));
  // A ResNet has no patches to hide.
  models::ModelConfig r = models::model_preset("resnet18");
  models::set_image_size(r, 32);
  EXPECT_CONTAINS(test::error_of([&] { models::create_model(r)->forward_visible(images, keep); }),
                  "ViT");
}

TEST(Pretrain, MaeLowersTheReconstructionLossAndResumesExactly) {
  const std::string dir = test::temp_dir("pretrain_mae");
  write_shapes(dir + "/data", 8, 7, /*class_folders=*/true);  // 24 photos
  train::PretrainOptions o = small_mae(dir + "/data", dir);
  o.batch_size = 8;  // 3 steps an epoch
  o.epochs = 15;
  o.schedule = "constant";
  o.optim.lr = 2e-3;
  const auto result = train::Pretrainer(o).run();
  const auto& h = result.history;
  ASSERT_EQ(h.size(), 15u);
  EXPECT_LT(h[13].loss + h[14].loss, 0.8 * (h[0].loss + h[1].loss))
      << h.front().loss << " -> " << h.back().loss;
  EXPECT_LT(h.back().contrast_top1, 0);  // no pairs to find in MAE
  EXPECT_GE(h.back().knn_top1, 0.0);
  const auto cfg = models::load_model_config(result.last_dir);
  EXPECT_EQ(cfg.family, models::Family::kViT);
  EXPECT_EQ(cfg.num_classes, 0);
  const auto provenance = nlohmann::json::parse(cfg.provenance_json);
  EXPECT_EQ(provenance["method"], "mae");
  EXPECT_DOUBLE_EQ(provenance["mask_ratio"].get<double>(), 0.75);
  EXPECT_FALSE(provenance.contains("temperature"));
  EXPECT_EQ(provenance["init"], dir + "/init");  // pretrained further: from where
  EXPECT_DOUBLE_EQ(provenance["lr"].get<double>(), 2e-3);
  EXPECT_EQ(provenance["sched"], "constant");

  // Killed after step 5 (the middle of epoch 2) with the state of step 4 on disk.
  o.epochs = 3;
  o.schedule = "cosine";
  o.out_dir = dir + "/full";
  const auto full = train::Pretrainer(o).run();
  o.out_dir = dir + "/killed";
  o.save_every_steps = 4;
  o.command = "vitrine pretrain (the first)";
  test::run_killed_at(1, 2, [&](const auto& on_step) { train::Pretrainer(o).run(on_step); });
  o.resume = true;
  // A deeper decoder is another run, refused by name (its extra block would start fresh).
  o.decoder_depth = 2;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer(o).run(); }),
                  "--decoder-depth");
  o.decoder_depth = 1;
  o.command = "vitrine pretrain --resume";
  const auto resumed = train::Pretrainer(o).run();
  ASSERT_EQ(resumed.history.size(), 3u);
  EXPECT_DOUBLE_EQ(resumed.history[1].loss, full.history[1].loss);
  for (const std::string file : {"state/model.safetensors", "state/decoder.safetensors"}) {
    test::expect_identical_tensors(dir + "/full/" + file, dir + "/killed/" + file);
  }
  // The provenance names the command that began the run and the one that resumed it.
  const auto resumed_provenance =
      nlohmann::json::parse(models::load_model_config(resumed.last_dir).provenance_json);
  EXPECT_EQ(resumed_provenance["command"], "vitrine pretrain (the first)");
  EXPECT_EQ(resumed_provenance["resumed_with"],
            nlohmann::json::array({"vitrine pretrain --resume"}));
  // Another learning rate on resume is taken, and said.
  {
    test::LogCapture log;
    auto faster = o;
    faster.optim.lr = 5e-3;
    train::Pretrainer(faster).run();
    EXPECT_CONTAINS(log.text(), "the run was saved with --lr 0.002 and resumes with --lr 0.005");
  }
  // A SimCLR state is not an MAE one.
  o.method = "simclr";
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer(o).run(); }),
                  "was trained with --method mae (now simclr)");
  fs::remove_all(dir);
}

// Under bf16 autocast the decoder's tokens are bf16 and its mask token fp32: it failed on the
// first step ("scatter(): Expected self.dtype to be equal to src.dtype").
TEST(Pretrain, MaeTrainsUnderBf16Autocast) {
  const std::string dir = test::temp_dir("pretrain_mae_bf16");
  write_shapes(dir + "/data", 8, 7, /*class_folders=*/true);
  train::PretrainOptions o = small_mae(dir + "/data", dir);
  o.batch_size = 8;
  o.epochs = 1;
  o.amp = "bf16";
  // A command line with bytes that are not UTF-8 (a Latin-1 path) is saved with the state.
  o.command = "vitrine pretrain --data caf\xe9";
  const auto result = train::Pretrainer(o).run();
  ASSERT_EQ(result.history.size(), 1u);
  EXPECT_TRUE(std::isfinite(result.history[0].loss));
  EXPECT_GT(result.history[0].loss, 0.0);
  fs::remove_all(dir);
}

TEST(Pretrain, StepsLowerTheContrastiveLoss) {
  const std::string dir = test::temp_dir("pretrain_loss");
  write_shapes(dir + "/photos", 8, 1, /*class_folders=*/false);  // 24 unlabelled photos
  train::PretrainOptions o = small_pretrain(dir + "/photos", dir + "/run");
  o.batch_size = 12;
  o.epochs = 12;
  o.schedule = "constant";
  const auto result = train::Pretrainer(o).run();
  ASSERT_EQ(result.history.size(), 12u);
  // Unlabelled: no monitor.
  EXPECT_LT(result.history.front().knn_top1, 0);
  // Mean of the first two epochs against the last two: augmentation makes single epochs noisy.
  const auto& h = result.history;
  EXPECT_LT(h[10].loss + h[11].loss, h[0].loss + h[1].loss - 0.2)
      << h.front().loss << " -> " << h.back().loss;
  // The backbone: a model directory without a head, with the run in its provenance.
  const auto cfg = models::load_model_config(result.last_dir);
  EXPECT_EQ(cfg.num_classes, 0);
  EXPECT_EQ(cfg.resnet.stem, "small");
  const auto provenance = nlohmann::json::parse(cfg.provenance_json);
  EXPECT_EQ(provenance["method"], "simclr");
  EXPECT_EQ(provenance["epochs"], 12);
  EXPECT_EQ(provenance["images"], 24);
  EXPECT_TRUE(fs::exists(dir + "/run/loss.svg"));
  fs::remove_all(dir);
}

TEST(Pretrain, KilledRunResumesExactly) {
  const std::string dir = test::temp_dir("pretrain_resume");
  write_shapes(dir + "/data", 8, 2, /*class_folders=*/true);
  train::PretrainOptions o = small_pretrain(dir + "/data", dir + "/full");
  o.batch_size = 6;  // 24 images (train and val together): 4 steps an epoch
  o.epochs = 3;
  const auto full = train::Pretrainer(o).run();
  // Labelled data: the k-NN monitor runs.
  EXPECT_GE(full.history.back().knn_top1, 0.0);

  o.out_dir = dir + "/killed";
  o.save_every_steps = 3;
  // Killed at step 8 (the last of epoch 2) before the epoch's end was saved: the state
  // saved mid-epoch after step 6 is on disk, and steps 7 and 8 must be redone alike.
  test::run_killed_at(1, 4, [&](const auto& on_step) { train::Pretrainer(o).run(on_step); });
  ASSERT_TRUE(fs::exists(dir + "/killed/state/rng.safetensors"));  // a mid-epoch state
  o.resume = true;
  const auto resumed = train::Pretrainer(o).run();
  ASSERT_EQ(resumed.history.size(), 3u);
  EXPECT_DOUBLE_EQ(resumed.history[1].loss, full.history[1].loss);
  EXPECT_DOUBLE_EQ(resumed.history[2].knn_top1, full.history[2].knn_top1);
  for (const std::string file : {"state/model.safetensors", "state/projector.safetensors"}) {
    test::expect_identical_tensors(dir + "/full/" + file, dir + "/killed/" + file);
  }
  // A different seed, batch size or temperature is not the same run.
  const uint64_t seed = o.seed;
  o.seed = seed + 1;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer(o).run(); }), "another --seed");
  o.seed = seed;
  o.batch_size = 8;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer(o).run(); }),
                  "was trained with --batch-size 6 (now 8)");
  o.batch_size = 6;
  const double temperature = o.temperature;
  o.temperature = temperature * 2;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer(o).run(); }),
                  "was trained with --temperature " + train::setting_text(temperature));
  fs::remove_all(dir);
}

TEST(Pretrain, BackboneFineTunesWithoutReinitHead) {
  const std::string dir = test::temp_dir("pretrain_finetune");
  write_shapes(dir + "/data", 6, 3, /*class_folders=*/true);
  train::PretrainOptions p = small_pretrain(dir + "/data", dir + "/pre");
  const auto pre = train::Pretrainer(p).run();
  train::TrainOptions t;
  t.init_dir = pre.last_dir;
  t.data.source = dir + "/data";
  t.data.val_split = 0.25;
  t.batch_size = 6;
  t.workers = 2;
  t.epochs = 1;
  t.out_dir = dir + "/fine";
  const auto result = train::Trainer(t).run();
  const auto cfg = models::load_model_config(result.last_dir);
  EXPECT_EQ(cfg.num_classes, 3);
  EXPECT_EQ(cfg.labels, (std::vector<std::string>{"kind_0", "kind_1", "kind_2"}));
  // The backbone's weights were the starting point: the stem kept its pretrained shape.
  EXPECT_EQ(cfg.resnet.stem, "small");

  // A test split carved from the photos the backbone was pretrained on is warned about; one
  // that the pretraining left out (the same --test-split and --data-seed) is not.
  test::LogCapture log;
  t.data.test_split = 0.34;
  t.out_dir = dir + "/fine_test";
  { train::Trainer carved(t); }
  // ... also reached through a link to the folder.
  fs::create_directory_symlink(dir + "/data", dir + "/linked");
  t.data.source = dir + "/linked";
  t.out_dir = dir + "/fine_linked";
  { train::Trainer linked(t); }
  t.data.source = dir + "/data";
  p.data.test_split = 0.34;
  p.epochs = 1;
  p.out_dir = dir + "/pre_test";
  const auto kept_out = train::Pretrainer(p).run();
  t.init_dir = kept_out.last_dir;
  t.out_dir = dir + "/fine_test2";
  const auto before = log.text().size();
  { train::Trainer clean(t); }
  const std::string warned = log.text().substr(0, before), clean = log.text().substr(before);
  const std::string said = "test photos were pretraining photos of " + pre.last_dir;
  EXPECT_CONTAINS(warned, said);
  EXPECT_NE(warned.find(said, warned.find(said) + 1), std::string::npos) << warned;  // twice
  EXPECT_EQ(clean.find("were pretraining photos"), std::string::npos) << clean;
  fs::remove_all(dir);
}

TEST(Pretrain, BadOptionsAreExplained) {
  const std::string dir = test::temp_dir("pretrain_bad");
  write_shapes(dir + "/photos", 2, 4, /*class_folders=*/false);
  train::PretrainOptions o = small_pretrain(dir + "/photos", dir + "/run");
  o.method = "byol";
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "not supported");
  o.method = "simclr";
  o.data.labels_per_class = 60;  // would drop unlabelled photos
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "reads no labels");
  o.data.labels_per_class = 0;
  o.method = "mae";  // on a ResNet
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "needs a ViT");
  o = small_mae(dir + "/photos", dir + "/vit");
  o.mask_ratio = 1;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "--mask-ratio");
  o.mask_ratio = 0;  // nothing hidden: nothing to learn
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "--mask-ratio");
  o.mask_ratio = 0.75;
  o.decoder_width = 30;  // not a multiple of 4 (sine-cosine positions) nor of 4 heads
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "--decoder-width");
  o = small_pretrain(dir + "/photos", dir + "/run");
  o.temperature = 0;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "--temperature");
  o.temperature = 0.2;
  o.knn_k = 0;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "--knn-k must be positive");
  o.knn_k = 20;
  o.proj_hidden = -1;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "--proj-hidden");
  o = small_pretrain(dir + "/empty", dir + "/run");
  fs::create_directories(dir + "/empty");
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "holds no images");
  o = small_pretrain(dir + "/photos", dir + "/run");
  o.resume = true;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer(o).run(); }), "no saved state");
  fs::remove_all(dir);
}

TEST(KnnMonitor, VotesByWeightedNeighbours) {
  // Bank: two tight clusters on the x and y axes; class 1 also has an outlier near x.
  train::Embeddings bank;
  bank.vectors = at::tensor({1.f, 0.f, 0.99f, 0.14f, 0.f, 1.f, 0.14f, 0.99f, 0.95f, 0.31f})
                     .view({5, 2});
  bank.labels = at::tensor(std::vector<int64_t>{0, 0, 1, 1, 1});
  train::Embeddings queries;
  queries.vectors = at::tensor({0.98f, 0.2f, 0.1f, 0.995f}).view({2, 2});
  queries.labels = at::tensor(std::vector<int64_t>{0, 1});
  // k = 1: nearest neighbours decide (query 0's nearest is the class-0 item at 0.99,0.14).
  EXPECT_DOUBLE_EQ(train::knn_top1(bank, queries, 2, 1), 1.0);
  // k = 5, high temperature: plain majority, class 1 wins both.
  EXPECT_DOUBLE_EQ(train::knn_top1(bank, queries, 2, 5, 100.0), 0.5);
  // k = 5, sharp temperature: the two close class-0 items outweigh the far class-1 ones.
  EXPECT_DOUBLE_EQ(train::knn_top1(bank, queries, 2, 5, 0.05), 1.0);
  bank.labels[0] = -1;
  EXPECT_CONTAINS(test::error_of([&] { train::knn_top1(bank, queries, 2); }), "needs a label");
}

TEST(PretrainData, FlatFolderIsOneUnlabelledSplit) {
  const std::string dir = test::temp_dir("pretrain_flat");
  write_shapes(dir + "/photos", 3, 5, /*class_folders=*/false);
  data::DataOptions d;
  d.source = dir + "/photos";
  const auto splits = data::open_pretraining_data(d);
  ASSERT_TRUE(splits.train);
  EXPECT_EQ(splits.train->size(), 9);
  EXPECT_TRUE(splits.train->labels(0).empty());
  EXPECT_FALSE(splits.val);
  // A folder of class folders opens as for training.
  write_shapes(dir + "/classes", 4, 6, /*class_folders=*/true);
  d.source = dir + "/classes";
  d.val_split = 0.25;
  const auto labelled = data::open_pretraining_data(d);
  EXPECT_EQ(labelled.classes.size(), 3u);
  EXPECT_EQ(labelled.train->size() + labelled.val->size(), 12);
  const auto both = data::concat(labelled.train, labelled.val);
  EXPECT_EQ(both->size(), 12);
  EXPECT_EQ(both->name(both->size() - 1), labelled.val->name(labelled.val->size() - 1));
  // Photos in dated folders beside loose ones are all read; a hidden folder (a notebook's
  // checkpoints) is neither a class nor photos; GIFs are named, not failed every epoch.
  const std::string mixed = dir + "/mixed";
  write_shapes(mixed, 3, 5, /*class_folders=*/false);
  write_shapes(mixed + "/2024", 3, 5, /*class_folders=*/false);
  write_shapes(mixed + "/.ipynb_checkpoints", 3, 5, /*class_folders=*/false);
  write_file_atomic(mixed + "/2024/anim.gif", "GIF89a");
  write_file_atomic(mixed + "/._0.png", std::string(4096, '\0'));
  d.source = mixed;
  const auto flat = data::open_pretraining_data(d);
  EXPECT_EQ(flat.train->size(), 18);
  EXPECT_TRUE(flat.classes.empty());
  ASSERT_EQ(flat.warnings.size(), 2u);
  EXPECT_CONTAINS(flat.warnings[0], "1 hidden image file in " + mixed + " was skipped");
  EXPECT_CONTAINS(flat.warnings[1], "1 GIF or TIFF files in " + mixed + " are skipped");
  d.source = mixed + "/2024";
  fs::create_directories(d.source + "/.cache");
  EXPECT_EQ(data::open_pretraining_data(d).train->size(), 9);  // only a hidden folder beside
  // A root with train/ and val/ is split as for training, a photo beside them or not: its
  // validation photos stay out of what is learnt from.
  write_shapes(dir + "/split/train", 3, 7, /*class_folders=*/true);
  write_shapes(dir + "/split/val", 2, 8, /*class_folders=*/true);
  write_shapes(dir + "/split", 1, 9, /*class_folders=*/false);
  d.source = dir + "/split";
  const auto split = data::open_pretraining_data(d);
  EXPECT_EQ(split.train->size(), 9);
  ASSERT_TRUE(split.val);
  EXPECT_EQ(split.val->size(), 6);
  fs::remove_all(dir);
}
