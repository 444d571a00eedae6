// Self-supervised pretraining on small synthetic photo sets: the loss falls, a killed run
// resumes exactly, the k-NN monitor counts right, and the backbone fine-tunes.
#include "test_util.h"

#include "vitrine/core/error.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/data/dataset.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/train/pretrainer.h"
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

}  // namespace

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
  try {
    // Killed at step 8 (the last of epoch 2) before the epoch's end was saved: the state
    // saved mid-epoch after step 6 is on disk, and steps 7 and 8 must be redone alike.
    train::Pretrainer(o).run([](const train::StepInfo& s) {
      if (s.epoch == 1 && s.step_in_epoch == 4) throw std::runtime_error("killed");
    });
    FAIL() << "the run should have been interrupted";
  } catch (const std::runtime_error&) {
  }
  ASSERT_TRUE(fs::exists(dir + "/killed/state/rng.safetensors"));  // a mid-epoch state
  o.resume = true;
  const auto resumed = train::Pretrainer(o).run();
  ASSERT_EQ(resumed.history.size(), 3u);
  EXPECT_DOUBLE_EQ(resumed.history[1].loss, full.history[1].loss);
  EXPECT_DOUBLE_EQ(resumed.history[2].knn_top1, full.history[2].knn_top1);
  for (const std::string file : {"state/model.safetensors", "state/projector.safetensors"}) {
    test::expect_identical_tensors(dir + "/full/" + file, dir + "/killed/" + file);
  }
  // A different seed is not the same run.
  o.seed = 4;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer(o).run(); }), "another --seed");
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
  fs::remove_all(dir);
}

TEST(Pretrain, BadOptionsAreExplained) {
  const std::string dir = test::temp_dir("pretrain_bad");
  write_shapes(dir + "/photos", 2, 4, /*class_folders=*/false);
  train::PretrainOptions o = small_pretrain(dir + "/photos", dir + "/run");
  o.method = "mae";
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "not supported yet");
  o = small_pretrain(dir + "/photos", dir + "/run");
  o.temperature = 0;
  EXPECT_CONTAINS(test::error_of([&] { train::Pretrainer t(o); }), "--temperature");
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
  fs::remove_all(dir);
}
