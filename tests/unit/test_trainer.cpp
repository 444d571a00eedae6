// The training loop end to end on small synthetic image folders.
#include "test_util.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/models/adapter.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"
#include "vitrine/models/registry.h"
#include "vitrine/train/evaluate.h"
#include "vitrine/train/loop.h"
#include "vitrine/train/loss.h"
#include "vitrine/train/run_state.h"
#include "vitrine/train/trainer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

using namespace vitrine;
namespace fs = std::filesystem;

namespace {

// Class c draws a square of its own colour at a random place on a noisy background.
void write_image_folder(const std::string& root, const std::vector<int>& per_class,
                        uint64_t seed, double noise = 20, size_t first_class = 0) {
  static const cv::Scalar kColours[] = {{255, 40, 40}, {40, 255, 40}, {40, 40, 255},
                                        {230, 230, 40}};
  std::mt19937_64 rng(seed);
  cv::theRNG().state = seed;  // cv::randn draws from it: the same photos in any test order
  for (size_t c = first_class; c < first_class + per_class.size(); ++c) {
    const std::string dir = root + "/class_" + std::to_string(c);
    fs::create_directories(dir);
    for (int i = 0; i < per_class[c - first_class]; ++i) {
      cv::Mat img(32, 32, CV_8UC3, cv::Scalar(128, 128, 128));
      cv::Mat n(32, 32, CV_8UC3);
      cv::randn(n, 0, noise);
      img += n;
      const int x = std::uniform_int_distribution<int>(0, 16)(rng);
      const int y = std::uniform_int_distribution<int>(0, 16)(rng);
      cv::rectangle(img, cv::Rect(x, y, 14, 14), kColours[c], cv::FILLED);
      cv::imwrite(dir + "/" + std::to_string(i) + ".png", img);
    }
  }
}

train::TrainOptions small_run(const std::string& data, const std::string& out) {
  train::TrainOptions o;
  o.arch = "resnet18";
  o.image_size = 32;
  o.eval_crop_pct = 1.0;
  o.data.source = data;
  // A root of class folders gives a quarter to validation; a train/ folder alone keeps all.
  o.data.val_split = fs::exists(data + "/train") ? -1 : 0.25;
  o.batch_size = 8;
  o.workers = 2;
  o.out_dir = out;
  o.augment.scale = {1.0, 1.0};
  o.augment.ratio = {1.0, 1.0};
  o.augment.hflip = 0;
  o.optim.lr = 2e-3;
  o.optim.weight_decay = 0;
  o.epochs = 3;
  o.seed = 1;
  return o;
}

}  // namespace

TEST(Trainer, OverfitsThirtyTwoImages) {
  const std::string dir = test::temp_dir("overfit");
  write_image_folder(dir + "/data/train", {8, 8, 8, 8}, 3);
  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  // No batch norm: at 32 pixels ResNet's last norms see 1x1 maps, and their running
  // statistics lag the batch ones for many steps.
  o.arch = "vit_ti_16";
  o.epochs = 15;
  o.optim.lr = 1e-3;
  o.schedule = "constant";
  train::Trainer trainer(o);
  const auto result = trainer.run();
  ASSERT_EQ(result.history.size(), 15u);
  auto model = models::load_model(result.last_dir);
  data::DataOptions d;
  d.source = dir + "/data";
  const auto splits = data::open_data(d);
  const auto m = train::evaluate(*model, splits.train);
  EXPECT_EQ(m.count, 32);
  EXPECT_DOUBLE_EQ(m.top1, 1.0) << "train top-1 in the last epoch: "
                                << result.history.back().train_top1;
  // Classes are matched by name: one the model lacks is an error, not a shifted matrix...
  fs::copy(dir + "/data", dir + "/renamed", fs::copy_options::recursive);
  fs::rename(dir + "/renamed/train/class_3", dir + "/renamed/train/apple");
  d.source = dir + "/renamed";
  EXPECT_CONTAINS(test::error_of([&] { train::evaluate(*model, data::open_data(d).train); }),
                  "does not know 1 of the data's 4 classes ('apple')");
  // ... while data with none of its names (ImageNet's folder ids) is matched by position.
  for (int c = 0; c < 3; ++c) {
    fs::rename(dir + "/renamed/train/class_" + std::to_string(c),
               dir + "/renamed/train/n0" + std::to_string(c));
  }
  fs::rename(dir + "/renamed/train/apple", dir + "/renamed/train/n03");
  EXPECT_DOUBLE_EQ(train::evaluate(*model, data::open_data(d).train).top1, 1.0);
  // A split none of whose photos can be read has no score, not a top-1 of 0.
  fs::create_directories(dir + "/broken/train/class_0");
  fs::create_directories(dir + "/broken/train/class_1");
  for (const char* f : {"class_0/a.png", "class_0/b.png", "class_1/c.png"}) {
    std::ofstream(dir + "/broken/train/" + f) << "not a photo";
  }
  d.source = dir + "/broken";
  const std::string broken =
      test::error_of([&] { train::evaluate(*model, data::open_data(d).train); });
  EXPECT_CONTAINS(broken, "none of the 3 images to evaluate could be read (first: ");
  EXPECT_CONTAINS(broken, "a.png");
  EXPECT_LT(result.history.back().train_loss, result.history.front().train_loss);
  EXPECT_TRUE(fs::exists(result.report));
  EXPECT_TRUE(fs::exists(dir + "/run/loss.svg"));
  // Under mixup and CutMix a step's top-1 is scored against each image's larger share. With
  // alpha 0.05 an image is nearly all one photo, which the fitted model (not moved: lr 1e-12)
  // knows: scored against the unmixed labels, the batches mostly their partner's score 0.
  train::TrainOptions mix = o;
  mix.arch.clear();
  mix.init_dir = result.last_dir;
  mix.out_dir = dir + "/mixed";
  mix.optim.lr = 1e-12;
  mix.epochs = 3;
  mix.mixup = 0.05;
  mix.cutmix = 0.05;
  const auto mixed = train::Trainer(mix).run();
  for (const auto& e : mixed.history) EXPECT_GE(e.train_top1, 0.8) << "epoch " << e.epoch;
  fs::remove_all(dir);
}

TEST(Evaluate, ClassesMatchByNameOrByPositionAsEvalAndOptimizeMatchThem) {
  models::ModelConfig c;
  c.arch = "resnet18";
  c.num_classes = 3;
  c.labels = {"bag", "coat", "shoe"};
  using train::ClassMatch;
  EXPECT_EQ(train::match_classes(c, {"shoe", "bag"}), ClassMatch::kByName);
  EXPECT_EQ(train::match_classes(c, {"n01", "n02", "n03"}), ClassMatch::kByPosition);
  // Other classes altogether, in another number: no mapping scores it; a linear probe does.
  const std::string other = test::error_of([&] { train::match_classes(c, {"n01", "n02"}); });
  EXPECT_CONTAINS(other, "resnet18 classifies 3 classes of its own ('bag', 'coat', 'shoe'), "
                         "none of them the data's 2 ('n01', 'n02')");
  EXPECT_CONTAINS(other, "--freeze backbone");
  EXPECT_CONTAINS(test::error_of([&] { train::match_classes(c, {"bag", "hat"}); }),
                  "does not know 1 of the data's 2 classes ('hat')");
  // A model without class names matches by position, when the counts agree.
  c.labels.clear();
  EXPECT_EQ(train::match_classes(c, {"a", "b", "c"}), ClassMatch::kByPosition);
  EXPECT_CONTAINS(test::error_of([&] { train::match_classes(c, {"a", "b"}); }),
                  "resnet18 has 3 classes but the data has 2");
}

TEST(Evaluate, AnEmptyClassFolderNeedNotBeOneOfTheModelsClasses) {
  const std::string dir = test::temp_dir("empty_class");
  write_image_folder(dir + "/held_out", {2, 0, 2}, 1);  // class_1: an empty folder
  data::DataOptions d;
  d.source = dir + "/held_out";
  d.val_split = 0;
  const auto photos = data::open_data(d).train;
  ASSERT_EQ(photos->classes().size(), 3u);
  EXPECT_EQ(data::classes_with_items(*photos), (std::vector<std::string>{"class_0", "class_2"}));
  models::ModelConfig c;
  c.arch = "resnet18";
  c.num_classes = 3;
  c.labels = {"class_0", "class_2", "class_3"};
  train::ClassMatch how = train::ClassMatch::kByPosition;
  const auto scored = train::scored_as(c, photos, &how);
  EXPECT_EQ(how, train::ClassMatch::kByName);
  EXPECT_EQ(scored->classes(), c.labels);
  std::multiset<int64_t> labels;
  for (int64_t i = 0; i < scored->size(); ++i) labels.insert(scored->labels(i).at(0));
  EXPECT_EQ(labels, (std::multiset<int64_t>{0, 0, 1, 1}));
  // A class the model lacks that has photos is still an error naming it.
  c.labels = {"class_0", "class_1", "class_3"};
  EXPECT_CONTAINS(test::error_of([&] { train::scored_as(c, photos); }),
                  "does not know 1 of the data's 3 classes ('class_2')");
  // No name in common (or no names at all): by position over every folder, the empty one
  // included, as torchvision's ImageFolder numbers them.
  for (const auto& names : {std::vector<std::string>{"n01", "n02", "n03"},
                            std::vector<std::string>{}}) {
    c.labels = names;
    how = train::ClassMatch::kByName;
    const auto by_position = train::scored_as(c, photos, &how);
    EXPECT_EQ(how, train::ClassMatch::kByPosition);
    std::multiset<int64_t> positions;
    for (int64_t i = 0; i < by_position->size(); ++i) {
      positions.insert(by_position->labels(i).at(0));
    }
    EXPECT_EQ(positions, (std::multiset<int64_t>{0, 0, 2, 2}));
  }
}

TEST(Trainer, EarlyStoppingStopsWhenValidationStalls) {
  const std::string dir = test::temp_dir("early");
  write_image_folder(dir + "/data", {8, 8}, 4);
  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  o.optim.lr = 1e-12;  // nothing can improve...
  o.freeze = "backbone";  // ...not even the batch-norm statistics
  o.epochs = 10;
  o.patience = 2;
  train::Trainer trainer(o);
  const auto result = trainer.run();
  EXPECT_TRUE(result.stopped_early);
  EXPECT_EQ(result.history.size(), 3u);  // best at 1, then two epochs without gain
  EXPECT_EQ(result.best_epoch, 1);
  EXPECT_TRUE(fs::exists(result.best_dir + "/model.safetensors"));
  // Resumed, it stays stopped (a wrapper that always passes --resume trains no further)...
  o.resume = true;
  const auto again = train::Trainer(o).run();
  EXPECT_TRUE(again.stopped_early);
  EXPECT_EQ(again.history.size(), 3u);
  // ... also without --patience...
  o.patience = 0;
  EXPECT_EQ(train::Trainer(o).run().history.size(), 3u);
  // ... unless given more patience.
  o.patience = 4;
  const auto more = train::Trainer(o).run();
  EXPECT_TRUE(more.stopped_early);
  EXPECT_EQ(more.history.size(), 5u);
  // A run whose patience runs out in its last epoch ran every epoch: not an early stop.
  o.resume = false;
  o.overwrite = true;
  o.epochs = 3;
  o.patience = 2;
  const auto full = train::Trainer(o).run();
  EXPECT_EQ(full.history.size(), 3u);
  EXPECT_FALSE(full.stopped_early);
  fs::remove_all(dir);
}

TEST(Trainer, BatchesOfOneTrainModelsWithoutBatchNormsAndAreRefusedForOthers) {
  const std::string dir = test::temp_dir("batch1");
  write_image_folder(dir + "/data", {4, 4}, 4);
  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  o.batch_size = 1;
  o.epochs = 1;
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer{o}; }),
                  "--batch-size 1 cannot train resnet18: its batch norms need at least 2 images "
                  "a batch");
  o.freeze = "until:fc";  // every batch norm frozen: one photo a step trains
  const auto frozen = train::Trainer(o).run();
  ASSERT_EQ(frozen.history.size(), 1u);
  EXPECT_GT(frozen.history[0].train_loss, 0);  // a batch of one was skipped: loss 0
  o.freeze = "none";
  o.arch = "vit_ti_16";  // layer norms alone
  o.overwrite = true;
  const auto r = train::Trainer(o).run();
  ASSERT_EQ(r.history.size(), 1u);
  EXPECT_GT(r.history[0].train_loss, 0);
  fs::remove_all(dir);
}

TEST(Trainer, OneClassIsRefusedAndAModelIsScoredOnlyOnDataOfItsTask) {
  const std::string dir = test::temp_dir("one_class");
  write_image_folder(dir + "/data", {6}, 4);
  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer{o}; }),
                  "has one class ('class_0'): a classifier needs two or more");
  // A multi-label model's sigmoids are not scored as a softmax.
  models::ModelConfig c = models::model_preset("resnet18");
  models::set_image_size(c, 32);
  c.num_classes = 1;
  c.labels = {"class_0"};
  c.task = "multi_label";
  auto model = models::create_model(c);
  data::DataOptions d;
  d.source = dir + "/data";
  d.val_split = 0;
  EXPECT_CONTAINS(test::error_of([&] { train::evaluate(*model, data::open_data(d).train); }),
                  "the model is multi-label (a sigmoid a class) but the data is single-label");
  fs::remove_all(dir);
}

TEST(Trainer, AdversarialStepsLeaveFrozenBatchNormsAlone) {
  const std::string dir = test::temp_dir("adv_freeze");
  write_image_folder(dir + "/data", {8, 8}, 4);
  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  o.epochs = 1;
  o.freeze = "until:layer3";
  o.adv = "fgsm";
  const auto r = train::Trainer(o).run();
  auto model = models::load_model(r.last_dir);
  auto buffer = [&](const std::string& name) {
    for (const auto& b : model->named_buffers()) {
      if (b.key() == name) return b.value().clone();
    }
    ADD_FAILURE() << "no buffer " << name;
    return at::Tensor();
  };
  // A fresh batch norm's statistics: mean 0, variance 1. The attack put the model in eval
  // mode and back; the frozen ones must not have learnt from the batches since.
  EXPECT_TRUE(at::equal(buffer("layer1.0.bn1.running_mean"), at::zeros({64})));
  EXPECT_TRUE(at::equal(buffer("layer2.0.bn1.running_var"), at::ones({128})));
  EXPECT_FALSE(at::equal(buffer("layer3.0.bn1.running_mean"), at::zeros({256})));
  fs::remove_all(dir);
}

TEST(Trainer, AFreshRunDoesNotReplaceAnotherWithoutOverwrite) {
  const std::string dir = test::temp_dir("overwrite");
  write_image_folder(dir + "/data", {8, 8}, 4);
  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  o.epochs = 2;
  train::Trainer(o).run();
  write_file_atomic(dir + "/run/notes.txt", "mine");
  const auto line_count = [&] {
    const std::string log = read_text_file(dir + "/run/metrics.jsonl");
    return std::count(log.begin(), log.end(), '\n');
  };
  ASSERT_EQ(line_count(), 2);
  o.epochs = 1;
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer{o}; }), "already holds a run");
  EXPECT_EQ(line_count(), 2);  // untouched
  o.overwrite = true;
  train::Trainer(o).run();
  EXPECT_EQ(line_count(), 1);
  EXPECT_EQ(read_text_file(dir + "/run/notes.txt"), "mine");  // not a file of the run
  fs::remove_all(dir);
}

TEST(Trainer, ResumedRunEqualsUninterruptedRun) {
  const std::string dir = test::temp_dir("resume");
  write_image_folder(dir + "/data", {6, 6, 6}, 5);
  train::TrainOptions o = small_run(dir + "/data", dir + "/full");
  o.epochs = 4;
  o.augment.hflip = 0.5;  // randomness that must be replayed
  o.augment.scale = {0.5, 1.0};
  o.dropout = 0.2;
  train::Trainer(o).run();

  o.out_dir = dir + "/killed";
  try {
    // "Killed" after its second epoch: the state of epoch 2 is on disk.
    train::Trainer(o).run({}, [](const train::EpochRecord& r) {
      if (r.epoch == 2) throw std::runtime_error("killed");
    });
    FAIL() << "the run should have been interrupted";
  } catch (const std::runtime_error&) {
  }
  o.resume = true;
  const auto resumed = train::Trainer(o).run();
  EXPECT_EQ(resumed.history.size(), 4u);
  test::expect_identical_tensors(dir + "/full/last/model.safetensors",
                                 dir + "/killed/last/model.safetensors");
  // Other photos would not continue the same run; the same photos moved do.
  write_image_folder(dir + "/other", {9, 9, 9}, 5);
  o.data.source = dir + "/other";
  const std::string other = test::error_of([&] { train::Trainer(o).run(); });
  EXPECT_CONTAINS(other, "--resume on other data would not continue the same run");
  EXPECT_CONTAINS(other, "training photos, 3 classes");
  fs::copy(dir + "/data", dir + "/moved", fs::copy_options::recursive);
  o.data.source = dir + "/moved";
  EXPECT_EQ(train::Trainer(o).run().history.size(), 4u);
  // As many photos of the same classes, one of them another photo: refused too.
  fs::copy(dir + "/data", dir + "/renamed", fs::copy_options::recursive);
  fs::rename(dir + "/renamed/class_0/0.png", dir + "/renamed/class_0/9.png");
  o.data.source = dir + "/renamed";
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer(o).run(); }),
                  "as the run had, but not the same photos");
  o.data.source = dir + "/moved";
  // Another batch size, optimiser, schedule or layer decay would be another run.
  o.batch_size = 4;
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer(o).run(); }),
                  "killed was trained with --batch-size 8 (now 4); resume it with the same");
  o.batch_size = 8;
  o.optim.name = "sgd";
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer(o).run(); }),
                  "was trained with --opt adamw (now sgd)");
  o.optim.name = "adamw";
  o.schedule = "constant";
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer(o).run(); }),
                  "was trained with --sched cosine (now constant)");
  o.schedule = "cosine";
  o.optim.layer_decay = 0.75;
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer(o).run(); }),
                  "was trained with --layer-decay 1 (now 0.75)");
  o.optim.layer_decay = 1;
  // Left out, --image-size would rebuild the model at the architecture's 224.
  o.image_size = 0;
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer(o).run(); }),
                  "was trained with --image-size 32 (now 224)");
  o.image_size = 32;
  // Other split fractions give other training photos: named as the cause.
  o.data.val_split = 0.5;
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer(o).run(); }),
                  "it was trained with --val-split 0.25 (now --val-split 0.5), which gave 12 "
                  "training photos");
  o.data.val_split = 0.25;
  EXPECT_EQ(train::Trainer(o).run().history.size(), 4u);  // all as the run had: it resumes
  fs::remove_all(dir);
}

TEST(Trainer, DataOfNamesThatAreNotUtf8SavesItsStateAndResumes) {
  // A Latin-1 folder and class name (an old export): the state records them all the same.
  const std::string dir = test::temp_dir("resume-latin1");
  write_image_folder(dir + "/caf\xe9", {6, 6, 6}, 5);
  fs::rename(dir + "/caf\xe9/class_0", dir + "/caf\xe9/th\xe9");
  train::TrainOptions o = small_run(dir + "/caf\xe9", dir + "/run");
  o.epochs = 1;
  train::Trainer(o).run();
  o.epochs = 2;
  o.resume = true;
  const auto result = train::Trainer(o).run();
  EXPECT_EQ(result.history.size(), 2u);
  // The class is named in UTF-8 (read as Windows-1252), and the model scores its own data.
  const auto model = models::load_model(result.last_dir);
  EXPECT_EQ(model->config().labels.back(), "th\xc3\xa9");
  data::DataOptions d;
  d.source = dir + "/caf\xe9";
  EXPECT_EQ(train::evaluate(*model, data::open_data(d).train).count, 15);
  fs::remove_all(dir);
}

TEST(Trainer, EachDataParallelRankDrawsItsOwnRandomStreams) {
  // Two draws from each stream: libtorch's (dropout, drop-path) and the epoch's (mixing).
  auto draws = [](std::mt19937_64& rng) {
    return std::make_pair(at::rand({4}), std::vector<uint64_t>{rng(), rng()});
  };
  train::EpochPlan plan;
  plan.seed = 5;
  plan.epoch = 2;
  std::mt19937_64 rng;
  train::seed_epoch(plan, {}, rng);
  const auto rank0 = draws(rng);
  // Rank 0 draws what a run of one process has always drawn for (seed, epoch).
  at::manual_seed(5 * 1000003 + 2);
  std::mt19937_64 one(5 * 7919 + 2);
  const auto alone = draws(one);
  EXPECT_TRUE(at::equal(rank0.first, alone.first));
  EXPECT_EQ(rank0.second, alone.second);
  plan.rank = 1;
  train::seed_epoch(plan, {}, rng);
  const auto rank1 = draws(rng);
  EXPECT_FALSE(at::equal(rank0.first, rank1.first)) << "ranks share dropout masks";
  EXPECT_NE(rank0.second, rank1.second) << "ranks share mixing draws";
  train::seed_epoch(plan, {}, rng);
  EXPECT_TRUE(at::equal(draws(rng).first, rank1.first)) << "a rank's streams are not repeatable";

  // Resumed mid-epoch from the lead's saved state: rank 0 goes on exactly, rank 1 on a
  // stream of its own, the same on every resume.
  plan.rank = 0;
  train::seed_epoch(plan, {}, rng);
  draws(rng);
  train::EpochProgress saved;
  saved.next_batch = 3;
  saved.rng = train::capture_rng(rng);
  const auto lead_next = draws(rng);
  train::seed_epoch(plan, saved, rng);
  const auto lead_resumed = draws(rng);
  EXPECT_TRUE(at::equal(lead_resumed.first, lead_next.first));
  EXPECT_EQ(lead_resumed.second, lead_next.second);
  plan.rank = 1;
  train::seed_epoch(plan, saved, rng);
  const auto other = draws(rng);
  EXPECT_FALSE(at::equal(other.first, lead_next.first));
  EXPECT_NE(other.second, lead_next.second);
  train::seed_epoch(plan, saved, rng);
  EXPECT_EQ(draws(rng).second, other.second);
}

// A validation or test photo with a training photo's bytes (a copy under another name, one
// photo for two products) is learned yet scored as unseen: the run says so.
TEST(Trainer, PhotosInTwoSplitsAreWarnedAbout) {
  const std::string dir = test::temp_dir("repeats");
  write_image_folder(dir + "/data/train", {6, 6}, 40);
  write_image_folder(dir + "/data/val", {2, 2}, 41);
  write_image_folder(dir + "/data/test", {3, 3}, 42);
  fs::copy_file(dir + "/data/train/class_0/0.png", dir + "/data/test/class_1/same photo.png");
  fs::copy_file(dir + "/data/train/class_1/5.png", dir + "/data/val/class_1/5 copy.png");
  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  o.epochs = 1;
  test::LogCapture log;
  train::Trainer(o).run();
  EXPECT_CONTAINS(log.text(), "1 of the 7 test photos have the bytes of a training photo");
  EXPECT_CONTAINS(log.text(), "same photo.png and ");
  EXPECT_CONTAINS(log.text(), "1 of the 5 validation photos have the bytes");
  EXPECT_CONTAINS(log.text(), "picks the best epoch");
  fs::remove_all(dir);
}

TEST(Trainer, RunKilledMidEpochResumesExactly) {
  const std::string dir = test::temp_dir("resume_mid");
  write_image_folder(dir + "/data", {6, 6, 6}, 5);
  train::TrainOptions o = small_run(dir + "/data", dir + "/full");
  o.batch_size = 4;  // 13 training images: 3 steps an epoch
  o.augment.hflip = 0.5;
  o.augment.scale = {0.5, 1.0};
  o.dropout = 0.2;
  const auto full = train::Trainer(o).run();

  o.out_dir = dir + "/killed";
  o.save_every_steps = 2;
  // Killed at step 5, the second of epoch 2: the state saved after step 4 is on disk,
  // so step 5 is lost and must be redone identically.
  test::run_killed_at(1, 2, [&](const auto& on_step) { train::Trainer(o).run(on_step); });
  ASSERT_TRUE(fs::exists(dir + "/killed/state/rng.safetensors"));  // a mid-epoch state
  o.resume = true;
  const auto resumed = train::Trainer(o).run();
  ASSERT_EQ(resumed.history.size(), full.history.size());
  // The epoch's running loss continued from the saved sums.
  EXPECT_DOUBLE_EQ(resumed.history[1].train_loss, full.history[1].train_loss);
  test::expect_identical_tensors(dir + "/full/last/model.safetensors",
                                 dir + "/killed/last/model.safetensors");
  fs::remove_all(dir);
}

// The unlabelled batches are drawn by the optimisation step, so a run killed mid-epoch
// resumes bit-identically, with FixMatch's own targets or with a teacher's.
TEST(Trainer, SemiSupervisedRunResumesExactly) {
  const std::string dir = test::temp_dir("fixmatch_resume");
  write_image_folder(dir + "/data", {6, 6, 6}, 5);
  write_image_folder(dir + "/unlabelled", {5, 5, 5}, 6);  // 15 photos, class folders unused
  train::TrainOptions o = small_run(dir + "/data", dir + "/full");
  o.batch_size = 4;  // 13 training images: 3 steps an epoch; 8 unlabelled photos a step
  o.augment.hflip = 0.5;
  o.augment.scale = {0.5, 1.0};
  o.unlabelled = dir + "/unlabelled";
  o.unlabelled_ratio = 2;
  // A threshold some weak views reach and others do not, so each epoch's logged share
  // depends on every one of its steps.
  o.pseudo_threshold = 0.7;
  const auto full = train::Trainer(o).run();
  ASSERT_EQ(full.history.size(), 3u);
  const double interrupted_share = full.history.at(1).unlabelled_confident;
  EXPECT_GT(interrupted_share, 0.0);
  EXPECT_LT(interrupted_share, 1.0);

  o.out_dir = dir + "/killed";
  o.save_every_steps = 2;
  test::run_killed_at(1, 2, [&](const auto& on_step) { train::Trainer(o).run(on_step); });
  o.resume = true;
  const auto resumed = train::Trainer(o).run();
  test::expect_identical_tensors(dir + "/full/last/model.safetensors",
                                 dir + "/killed/last/model.safetensors");
  // The epoch killed in its middle logs the share over all its steps, not only the last.
  ASSERT_EQ(resumed.history.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_DOUBLE_EQ(resumed.history[i].unlabelled_confident,
                     full.history[i].unlabelled_confident) << "epoch " << i + 1;
  }

  // The teacher's targets: a fixed teacher, so a resumed run is as exact.
  o.unlabelled_targets = "teacher";
  o.teacher_dir = dir + "/full/last";
  o.distill_alpha = 0;
  o.resume = false;
  o.save_every_steps = 0;
  o.out_dir = dir + "/taught";
  train::Trainer(o).run();
  o.out_dir = dir + "/taught_killed";
  o.save_every_steps = 2;
  test::run_killed_at(1, 2, [&](const auto& on_step) { train::Trainer(o).run(on_step); });
  o.resume = true;
  train::Trainer(o).run();
  test::expect_identical_tensors(dir + "/taught/last/model.safetensors",
                                 dir + "/taught_killed/last/model.safetensors");

  o.out_dir = dir + "/empty";
  o.resume = false;
  o.unlabelled_targets = "self";
  o.teacher_dir.clear();
  fs::create_directories(dir + "/nothing");
  EXPECT_CONTAINS(test::error_of([&] {
                    o.unlabelled = dir + "/nothing";
                    train::Trainer{o};
                  }),
                  "nothing");
  fs::remove_all(dir);
}

// Only weak views whose top class reaches the threshold become targets: a network just
// initialised is nowhere near 99.9% sure of three classes, and a trained one is 80% sure of
// most photos. The share is what each epoch logs.
TEST(Trainer, SemiSupervisedLearnsFromConfidentPhotosOnly) {
  const std::string dir = test::temp_dir("fixmatch_threshold");
  write_image_folder(dir + "/data", {8, 8, 8}, 31);
  write_image_folder(dir + "/photos", {8, 8, 8}, 32);
  train::TrainOptions o = small_run(dir + "/data", dir + "/fresh");
  o.data.val_split = 0;
  o.epochs = 1;
  o.unlabelled = dir + "/photos";
  o.unlabelled_ratio = 2;
  o.pseudo_threshold = 0.999;
  o.optim.lr = 1e-7;  // the network stays as initialised through the epoch
  const auto fresh = train::Trainer(o).run();
  EXPECT_LT(fresh.history.at(0).unlabelled_confident, 0.2);

  o.out_dir = dir + "/trained";
  o.unlabelled.clear();
  o.optim.lr = 2e-3;
  o.epochs = 6;
  const auto trained = train::Trainer(o).run();
  o.arch.clear();
  o.init_dir = trained.last_dir;
  o.out_dir = dir + "/semi";
  o.unlabelled = dir + "/photos";
  o.pseudo_threshold = 0.8;
  o.optim.lr = 1e-4;
  o.epochs = 1;
  // An unreadable unlabelled photo is skipped and named.
  std::ofstream(dir + "/photos/class_0/broken.png") << "not a photo";
  test::LogCapture log;
  const auto semi = train::Trainer(o).run();
  EXPECT_CONTAINS(log.text(), "skipped (--unlabelled): ");
  EXPECT_CONTAINS(log.text(), "broken.png");
  EXPECT_GT(semi.history.at(0).unlabelled_confident, 0.6);
  // metrics.jsonl carries it.
  EXPECT_CONTAINS(read_text_file(dir + "/semi/metrics.jsonl"), "\"unlabelled_confident\"");
  // Its report and its provenance say what else it learnt from, and how.
  const std::string report = read_text_file(semi.report);
  EXPECT_CONTAINS(report, "unlabelled photos");
  EXPECT_CONTAINS(report, "FixMatch, confidence");
  const auto provenance =
      nlohmann::json::parse(models::load_model_config(semi.last_dir).provenance_json);
  EXPECT_EQ(provenance["pseudo_threshold"], 0.8);
  EXPECT_EQ(provenance["unlabelled_ratio"], 2);
  fs::remove_all(dir);
}

// FixMatch's labelled images, weak and strong views go through the network as one batch:
// the batch norms' running statistics move once a step, as without unlabelled photos.
TEST(Trainer, SemiSupervisedStepsMoveBatchNormStatisticsOnce) {
  const std::string dir = test::temp_dir("fixmatch_bn");
  write_image_folder(dir + "/data", {8, 8}, 33);
  write_image_folder(dir + "/photos", {8, 8}, 34);
  train::TrainOptions o = small_run(dir + "/data", dir + "/plain");
  o.data.val_split = 0;
  o.epochs = 1;
  const auto plain = train::Trainer(o).run();
  o.out_dir = dir + "/semi";
  o.unlabelled = dir + "/photos";
  const auto semi = train::Trainer(o).run();
  const auto tracked = [](const std::string& model_dir) {
    for (const auto& [name, t] : safetensors_load(model_dir + "/model.safetensors").tensors) {
      if (name == "bn1.num_batches_tracked") return t.item<int64_t>();
    }
    return int64_t{-1};
  };
  EXPECT_EQ(tracked(plain.last_dir), 2);  // 16 photos, batch 8
  EXPECT_EQ(tracked(semi.last_dir), tracked(plain.last_dir));
  // A network without batch norms predicts the weak views in a pass of its own; at
  // threshold 0 every one of them is a target.
  o.arch = "vit_ti_16";
  o.out_dir = dir + "/vit";
  o.pseudo_threshold = 0;
  const auto vit = train::Trainer(o).run();
  ASSERT_EQ(vit.history.size(), 1u);
  EXPECT_DOUBLE_EQ(vit.history[0].unlabelled_confident, 1.0);
  fs::remove_all(dir);
}

TEST(Trainer, InitWithOtherClassCountNeedsReinitHead) {
  const std::string dir = test::temp_dir("reinit");
  write_image_folder(dir + "/data", {4, 4, 4}, 6);
  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  o.epochs = 1;
  train::Trainer(o).run();
  write_image_folder(dir + "/data2", {4, 4}, 7);
  train::TrainOptions o2 = small_run(dir + "/data2", dir + "/run2");
  o2.arch.clear();
  o2.init_dir = dir + "/run/last";
  o2.epochs = 1;
  try {
    train::Trainer t(o2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--reinit-head"), std::string::npos) << e.what();
  }
  o2.reinit_head = true;
  const auto result = train::Trainer(o2).run();
  EXPECT_EQ(models::load_model(result.last_dir)->config().num_classes, 2);
  // With as many classes as before, --reinit-head still starts a new head (the old rows were
  // loaded, each under another class's name). An lr of 1e-12 leaves the weights as started.
  train::TrainOptions o3 = o2;
  o3.data.source = dir + "/data";
  o3.out_dir = dir + "/run3";
  o3.optim.lr = 1e-12;
  const auto again = train::Trainer(o3).run();
  const auto head_of = [](const std::string& model_dir) {
    const auto model = models::load_model(model_dir);
    for (const auto& [name, t] : safetensors_load(model_dir + "/model.safetensors").tensors) {
      if (name == model->head_name() + ".weight") return t;
    }
    return at::Tensor();
  };
  const at::Tensor before = head_of(dir + "/run/last"), after = head_of(again.last_dir);
  ASSERT_TRUE(before.defined() && after.defined());
  ASSERT_EQ(before.sizes(), after.sizes());
  EXPECT_GT((before - after).abs().max().item<float>(), 1e-3) << "the old head was kept";
  fs::remove_all(dir);
}

TEST(Trainer, DivergingLossStopsWithAClearMessage) {
  const std::string dir = test::temp_dir("nan");
  write_image_folder(dir + "/data", {4, 4}, 8);
  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  o.optim.name = "sgd";
  o.optim.lr = 1e12;
  o.epochs = 5;
  try {
    train::Trainer(o).run();
    FAIL() << "expected the run to stop";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("last good checkpoint"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Trainer, BalancedClassWeightsRaiseMinorityRecall) {
  const std::string dir = test::temp_dir("balanced");
  // 36:4 imbalance with heavy noise, so the classes overlap; validation is balanced. A
  // linear probe (a convex problem) makes the comparison about the weights alone.
  write_image_folder(dir + "/data/train", {36, 4}, 9, 70);
  write_image_folder(dir + "/data/val", {12, 12}, 10, 70);
  double recall[2];
  for (int weighted = 0; weighted < 2; ++weighted) {
    train::TrainOptions o = small_run(dir + "/data", dir + "/run" + std::to_string(weighted));
    o.epochs = 10;
    o.freeze = "backbone";
    o.optim.lr = 1e-2;
    o.class_weights = weighted ? "balanced" : "none";
    const auto result = train::Trainer(o).run();
    auto model = models::load_model(result.last_dir);
    data::DataOptions d;
    d.source = dir + "/data";
    recall[weighted] = train::evaluate(*model, data::open_data(d).val).per_class[1].recall;
  }
  EXPECT_GT(recall[1], recall[0]);

  // Class-balanced sampling instead of weights: the minority class is drawn as often.
  train::TrainOptions o = small_run(dir + "/data", dir + "/run_sampler");
  o.epochs = 10;
  o.freeze = "backbone";
  o.optim.lr = 1e-2;
  o.sampler = "balanced";
  auto model = models::load_model(train::Trainer(o).run().last_dir);
  data::DataOptions d;
  d.source = dir + "/data";
  EXPECT_GT(train::evaluate(*model, data::open_data(d).val).per_class[1].recall, recall[0]);
  fs::remove_all(dir);
}

TEST(Trainer, MultiLabelTunesThresholdsThatPredictUses) {
  const std::string dir = test::temp_dir("multilabel");
  // Each image shows some of three coloured squares; its labels name them.
  static const cv::Scalar kColours[] = {{255, 40, 40}, {40, 255, 40}, {40, 40, 255}};
  static const char* kNames[] = {"red", "green", "blue"};
  std::mt19937_64 rng(11);
  std::ofstream csv(dir + "/labels.csv");
  csv << "path,labels,split\n";
  for (int i = 0; i < 60; ++i) {
    cv::Mat img(32, 32, CV_8UC3, cv::Scalar(128, 128, 128));
    std::string labels;
    int mask = 1 + static_cast<int>(rng() % 7);  // at least one label
    for (int c = 0; c < 3; ++c) {
      if (!(mask & (1 << c))) continue;
      cv::rectangle(img, cv::Rect(2 + 10 * c, 4 + static_cast<int>(rng() % 16), 8, 8),
                    kColours[c], cv::FILLED);
      labels += (labels.empty() ? "" : "|") + std::string(kNames[c]);
    }
    const std::string name = "img" + std::to_string(i) + ".png";
    cv::imwrite(dir + "/" + name, img);
    csv << name << "," << labels << "," << (i < 44 ? "train" : i < 52 ? "val" : "test") << "\n";
  }
  std::ofstream(dir + "/broken.png") << "not a png";
  csv << "broken.png,red,test\n";  // unreadable: skipped in the test evaluation, and counted
  csv.close();
  train::TrainOptions o = small_run(dir + "/labels.csv", dir + "/run");
  o.arch = "vit_ti_16";
  o.optim.lr = 1e-3;
  o.epochs = 12;
  const auto result = train::Trainer(o).run();
  ASSERT_TRUE(result.history.back().multi_label);
  // The best model is tested on the test split, as a single-label run's is.
  ASSERT_TRUE(result.has_test);
  EXPECT_TRUE(result.test_multi_label);
  EXPECT_EQ(result.test_skipped, 1);
  const auto test = nlohmann::json::parse(read_text_file(dir + "/run/test_metrics.json"));
  EXPECT_EQ(test["count"], 8);
  EXPECT_EQ(test.value("photos_sha256", "").size(), 64u) << test;  // which photos: compare
  EXPECT_CONTAINS(read_text_file(dir + "/run/report.html"),
                  "44 train, 8 val, 9 test (1 test unreadable, not scored)");
  EXPECT_DOUBLE_EQ(test["mean_ap"].get<double>(), result.test_map);
  EXPECT_GT(result.test_map, 0.5);
  auto model = models::load_model(result.best_dir);
  EXPECT_EQ(model->config().task, "multi_label");
  ASSERT_EQ(model->config().thresholds.size(), 3u);
  for (const float t : model->config().thresholds) {
    EXPECT_GE(t, 0.0f);
    EXPECT_LE(t, 1.0f);
  }
  data::DataOptions d;
  d.source = dir + "/labels.csv";
  const auto splits = data::open_data(d);
  const auto m = train::evaluate_multi_label(*model, splits.train);
  EXPECT_GT(m.mean_ap, 0.9);
  // The F1 logged for the best epoch is the saved model's own, at the thresholds it carries.
  const auto& best_record = result.history.at(static_cast<size_t>(result.best_epoch - 1));
  const train::EvalOptions as_in_training{o.batch_size, o.workers, false, true};
  EXPECT_NEAR(train::evaluate_multi_label(*model, splits.val, as_in_training).macro_f1,
              best_record.val_macro_f1, 1e-9);
  // Robust evaluation raises the true labels' binary cross-entropy: PGD pulls the scores
  // apart from the labels, while a vanishing budget leaves the metrics as they were.
  train::AttackOptions pgd;
  pgd.eps = 32.0 / 255;
  const auto attacked = train::evaluate_multi_label_under_attack(*model, splits.train, pgd);
  EXPECT_EQ(attacked.count, m.count);
  EXPECT_LT(attacked.mean_ap, m.mean_ap - 0.2) << "clean " << m.mean_ap;
  EXPECT_LT(attacked.micro_f1, m.micro_f1 - 0.2) << "clean " << m.micro_f1;
  pgd.eps = 1e-7;
  pgd.random_start = false;
  EXPECT_NEAR(train::evaluate_multi_label_under_attack(*model, splits.train, pgd).mean_ap,
              m.mean_ap, 1e-3);
  // Predictions follow the stored thresholds: at 1.0 nothing passes, at 0.0 everything.
  model->mutable_config().thresholds = {1.0f, 1.0f, 1.0f};
  models::Predictor strict(model, models::Precision::kFp32);
  const at::Tensor x = at::randn({2, 3, 32, 32});
  for (const auto& labels : strict.above_threshold(strict.scores(x))) EXPECT_TRUE(labels.empty());
  model->mutable_config().thresholds = {0.0f, 0.0f, 0.0f};
  for (const auto& labels : strict.above_threshold(strict.scores(x))) EXPECT_EQ(labels.size(), 3u);
  // FixMatch's pseudo-labels are single labels: multi-label data with --unlabelled is refused.
  o.out_dir = dir + "/semi";
  o.unlabelled = dir;
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer{o}; }), "multi-label");
  fs::remove_all(dir);
}

TEST(Trainer, Bf16AutocastTrains) {
  const std::string dir = test::temp_dir("amp");
  write_image_folder(dir + "/data/train", {16, 16}, 12);
  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  o.arch = "vit_ti_16";
  o.optim.lr = 1e-3;
  o.amp = "bf16";
  o.epochs = 6;
  const auto result = train::Trainer(o).run();
  ASSERT_EQ(result.history.size(), 6u);
  EXPECT_TRUE(std::isfinite(result.history.back().train_loss));
  EXPECT_LT(result.history.back().train_loss, result.history.front().train_loss);
  // The weights stay fp32: autocast only changes the compute type.
  auto model = models::load_model(result.last_dir);
  for (const auto& [name, t] : models::model_state_dict(*model)) {
    if (t.is_floating_point()) {
      EXPECT_EQ(t.scalar_type(), at::kFloat) << name;
    }
  }
  fs::remove_all(dir);
}

TEST(Trainer, ModelEmaIsWhatGetsSaved) {
  const std::string dir = test::temp_dir("ema");
  write_image_folder(dir + "/data/train", {8, 8}, 13);
  train::TrainOptions o = small_run(dir + "/data", dir + "/plain");
  o.arch = "vit_ti_16";
  o.epochs = 2;
  train::Trainer(o).run();
  o.out_dir = dir + "/ema";
  o.ema_decay = 0.9;
  train::Trainer(o).run();
  // Same seed, same steps: only the averaging differs, so the saved weights must too.
  const auto plain = safetensors_load(dir + "/plain/last/model.safetensors").tensors;
  const auto ema = safetensors_load(dir + "/ema/last/model.safetensors").tensors;
  ASSERT_EQ(plain.size(), ema.size());
  int differing = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_TRUE(at::isfinite(ema[i].second).all().item<bool>()) << ema[i].first;
    if (!at::equal(plain[i].second, ema[i].second)) ++differing;
  }
  EXPECT_GT(differing, 0);
  o.out_dir = dir + "/bad";
  o.ema_decay = 1.0;
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer t(o); }), "--model-ema-decay");
  fs::remove_all(dir);
}

// The EMA's update, warmed up as timm's ModelEmaV3: after one step the saved weights are
// d * start + (1 - d) * trained with d = min(decay, 2 / 11), batch-norm statistics too, and
// the step counters are copied.
TEST(Trainer, ModelEmaFollowsTheWarmedUpUpdate) {
  const std::string dir = test::temp_dir("ema-formula");
  write_image_folder(dir + "/data/train", {8, 8}, 21);
  models::ModelConfig cfg = models::model_preset("resnet18");
  models::set_image_size(cfg, 32);
  cfg.num_classes = 2;
  cfg.labels = {"class_0", "class_1"};
  at::manual_seed(4);
  models::save_model(*models::create_model(cfg), dir + "/init");
  train::TrainOptions o = small_run(dir + "/data", dir + "/raw");
  o.arch.clear();
  o.image_size = 0;
  o.init_dir = dir + "/init";
  o.batch_size = 16;  // one step
  o.epochs = 1;
  train::Trainer(o).run();
  o.out_dir = dir + "/ema";
  o.ema_decay = 0.999;
  train::Trainer(o).run();
  const auto start = safetensors_load(dir + "/init/model.safetensors").tensors;
  const auto raw = safetensors_load(dir + "/raw/last/model.safetensors").tensors;
  const auto ema = safetensors_load(dir + "/ema/last/model.safetensors").tensors;
  ASSERT_EQ(start.size(), ema.size());
  ASSERT_EQ(raw.size(), ema.size());
  const double d = 2.0 / 11.0;
  int checked = 0, statistics = 0;
  for (size_t i = 0; i < ema.size(); ++i) {
    ASSERT_EQ(ema[i].first, raw[i].first);
    ASSERT_EQ(ema[i].first, start[i].first);
    const at::Tensor& e = ema[i].second;
    if (!e.is_floating_point()) {
      EXPECT_TRUE(at::equal(e, raw[i].second)) << ema[i].first;
      continue;
    }
    const at::Tensor expected = start[i].second * d + raw[i].second * (1 - d);
    EXPECT_TRUE(at::allclose(e, expected, 1e-4, 1e-6)) << ema[i].first;
    if (!at::allclose(start[i].second, raw[i].second)) ++checked;  // the step moved it
    statistics += ema[i].first.find("running_mean") != std::string::npos;
  }
  EXPECT_GT(checked, 10);
  EXPECT_GT(statistics, 0);
  fs::remove_all(dir);
}

TEST(Trainer, LoraTrainsOnlyAdaptersAndTheHeadAndSavesThemMerged) {
  const std::string dir = test::temp_dir("lora");
  write_image_folder(dir + "/data/train", {8, 8, 8}, 5);
  // A "pretrained" backbone: a small ViT without a head.
  models::ModelConfig cfg = test::tiny_vit_config(2);
  cfg.num_classes = 0;
  at::manual_seed(9);
  auto backbone = models::create_model(cfg);
  models::save_model(*backbone, dir + "/backbone");
  const StateDict init = models::model_state_dict(*backbone);

  train::TrainOptions o = small_run(dir + "/data", dir + "/run");
  o.lora_rank = 4;
  o.save_adapter = true;
  o.arch = "vit_ti_16";  // random weights: no base for the adapter
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer t(o); }), "give that base with --init");
  o.arch.clear();
  o.image_size = 0;
  o.init_dir = dir + "/backbone";
  o.epochs = 2;
  o.lora.alpha = 8;
  train::Trainer trainer(o);
  const auto result = trainer.run();

  // Trainable: 2 blocks x 4 matrices x (A + B), and the head (3 classes x 32 + 3).
  const int64_t d = 32, h = 64, r = 4;
  const int64_t lora = 2 * ((r * d + 3 * d * r) + (r * d + d * r) + (r * d + h * r) + (r * h + d * r));
  EXPECT_EQ(result.trainable_params, lora + 3 * d + 3);
  int64_t backbone_params = 0;
  for (const auto& [n, t] : init) backbone_params += n.find("running") == std::string::npos ? t.numel() : 0;
  EXPECT_EQ(result.total_params, backbone_params + 3 * d + 3);

  // The run's state (unmerged): every backbone tensor bit-identical to the init, the
  // adapters' B moved off zero, the head trained.
  const auto state = safetensors_load(dir + "/run/state/model.safetensors").tensors;
  int64_t compared = 0, moved = 0;
  for (const auto& [n, t] : state) {
    if (n.find("lora_") != std::string::npos) {
      if (n.back() == 'B') moved += t.abs().max().item<double>() > 0;
      continue;
    }
    for (const auto& [in, it] : init) {
      if (in == n) {
        EXPECT_TRUE(at::equal(t, it)) << n << " changed although only adapters train";
        ++compared;
      }
    }
  }
  EXPECT_EQ(compared, static_cast<int64_t>(init.size()));
  EXPECT_EQ(moved, 2 * 4);
  // Saved models: adapters merged (no lora_ keys), the adapted matrices differ from the init.
  const auto best = safetensors_load(result.best_dir + "/model.safetensors").tensors;
  bool merged_differs = false;
  for (const auto& [n, t] : best) {
    EXPECT_EQ(n.find("lora_"), std::string::npos) << n;
    if (n == "encoder.layers.encoder_layer_0.self_attention.in_proj_weight") {
      for (const auto& [in, it] : init) {
        if (in == n) merged_differs = !at::equal(t, it);
      }
    }
  }
  EXPECT_TRUE(merged_differs);
  // The adapter file: adapters and head alone, with its settings.
  const auto adapter = safetensors_load(result.best_dir + "/adapter.safetensors");
  EXPECT_EQ(adapter.tensors.size(), static_cast<size_t>(2 * 4 * 2 + 2));
  EXPECT_EQ(adapter.metadata.at("lora_rank"), "4");
  // And the saved (merged) model computes what the trained (unmerged) one does.
  auto saved = models::load_model(result.best_dir);
  auto trained = models::create_model(saved->config());
  models::LoraOptions lo = o.lora;
  lo.rank = o.lora_rank;
  trained->add_lora(lo);
  models::load_state_dict(*trained, state);
  saved->eval();
  trained->eval();
  at::NoGradGuard no_grad;
  const at::Tensor x = at::randn({6, 3, 32, 32});
  EXPECT_LT(test::max_abs_diff(saved->forward(x), trained->forward(x)), 1e-5);
  // The adapter file applied to the backbone gives the saved model again.
  auto applied = models::apply_adapter(dir + "/backbone", result.best_dir + "/adapter.safetensors");
  applied->eval();
  EXPECT_EQ(applied->config().labels, saved->config().labels);
  EXPECT_LT(test::max_abs_diff(applied->forward(x), saved->forward(x)), 1e-5);
  // ... and only to that backbone.
  auto other = models::create_model(cfg);
  models::save_model(*other, dir + "/other");
  EXPECT_CONTAINS(test::error_of([&] {
                    models::apply_adapter(dir + "/other", result.best_dir + "/adapter.safetensors");
                  }),
                  "another backbone");
  fs::remove_all(dir);
}

TEST(Trainer, ContinualFineTuningAppendsClassesAndReplayForgetsLess) {
  const std::string dir = test::temp_dir("continual");
  write_image_folder(dir + "/old", {16, 16}, 11);        // class_0, class_1
  write_image_folder(dir + "/new", {16, 16}, 12, 20, 2);  // class_2, class_3
  auto run = [&](const std::string& data, const std::string& out) {
    train::TrainOptions o = small_run(data, out);
    o.arch = "vit_ti_16";  // no batch norm: tiny data sets are fine
    o.optim.lr = 1e-3;
    o.epochs = 6;
    return o;
  };
  train::TrainOptions first = run(dir + "/old", dir + "/stage1");
  first.replay = 16;
  train::Trainer(first).run();
  // The stored sample: 16 photos, 8 of each old class.
  data::DataOptions stored;
  stored.source = dir + "/stage1/best/replay/manifest.csv";
  stored.val_split = 0;
  const auto replay = data::open_data(stored);
  ASSERT_EQ(replay.train->size(), 16);
  EXPECT_EQ(replay.classes, (std::vector<std::string>{"class_0", "class_1"}));

  // Without --append-classes a head of other classes is refused.
  train::TrainOptions refused = run(dir + "/new", dir + "/refused");
  refused.arch.clear();
  refused.init_dir = dir + "/stage1/best";
  const std::string refusal = test::error_of([&] { train::Trainer{refused}; });
  EXPECT_CONTAINS(refusal, "--append-classes");
  EXPECT_CONTAINS(refusal, "'class_2'");

  std::map<int, double> old_top1, new_top1;
  for (const int replayed : {0, 1}) {
    train::TrainOptions next = run(dir + "/new", dir + "/stage2_" + std::to_string(replayed));
    next.arch.clear();
    next.image_size = 0;
    next.init_dir = dir + "/stage1/best";
    next.append_classes = true;
    next.replay = replayed ? 16 : 0;
    const auto result = train::Trainer(next).run();
    // The model at the end of the fine-tune: `best` is picked on a validation split of a
    // dozen photos, mostly of the new classes, where top-1 ties between early and late epochs.
    auto model = models::load_model(result.last_dir);
    EXPECT_EQ(model->config().labels,
              (std::vector<std::string>{"class_0", "class_1", "class_2", "class_3"}));
    data::DataOptions d;
    d.val_split = 0;
    d.source = dir + "/old";
    old_top1[replayed] = train::evaluate(*model, data::open_data(d).train).top1;
    d.source = dir + "/new";
    new_top1[replayed] = train::evaluate(*model, data::open_data(d).train).top1;
  }
  // Both learn the new classes; replay keeps the old ones, plain fine-tuning forgets them.
  EXPECT_GE(new_top1[0], 0.9);
  EXPECT_GE(new_top1[1], 0.9);
  EXPECT_GE(old_top1[1], old_top1[0] + 0.3) << "with replay " << old_top1[1] << ", without "
                                            << old_top1[0];
  EXPECT_GE(old_top1[1], 0.8) << "with replay " << old_top1[1];
  fs::remove_all(dir);
}

// Distillation: with all weight on the teacher, the model learns what the teacher says, not
// what the labels say. The teacher here learnt the classes swapped; a student distilled from
// it on the true labels follows it (and an undistilled one the labels). Its images come at
// another size and normalisation than the student's, as a real teacher's would.
TEST(Trainer, DistillationFollowsTheTeacher) {
  const std::string dir = test::temp_dir("distill");
  write_image_folder(dir + "/data/train", {16, 16}, 21);
  write_image_folder(dir + "/swapped/train", {16, 16}, 21);
  fs::rename(dir + "/swapped/train/class_0", dir + "/swapped/train/tmp");
  fs::rename(dir + "/swapped/train/class_1", dir + "/swapped/train/class_0");
  fs::rename(dir + "/swapped/train/tmp", dir + "/swapped/train/class_1");
  train::TrainOptions t = small_run(dir + "/swapped", dir + "/teacher");
  t.arch = "vit_ti_16";
  t.image_size = 48;
  t.data.val_split = 0;
  t.epochs = 6;
  t.optim.lr = 1e-3;
  const auto teacher = train::Trainer(t).run();

  data::DataOptions d;
  d.source = dir + "/data";
  const auto splits = data::open_data(d);
  const auto student_top1 = [&](double alpha, const std::string& out) {
    train::TrainOptions o = small_run(dir + "/data", dir + "/" + out);
    o.arch = "vit_ti_16";
    o.data.val_split = 0;
    o.epochs = 6;
    o.optim.lr = 1e-3;
    o.teacher_dir = teacher.last_dir;
    o.distill_alpha = alpha;
    o.distill_temperature = 1;
    const auto r = train::Trainer(o).run();
    auto m = models::load_model(r.last_dir);
    return train::evaluate(*m, splits.train).top1;
  };
  auto teacher_model = models::load_model(teacher.last_dir);
  ASSERT_LT(train::evaluate(*teacher_model, splits.train).top1, 0.2) << "the teacher swaps";
  EXPECT_GT(student_top1(0.0, "labels"), 0.8);
  EXPECT_LT(student_top1(1.0, "distilled"), 0.2);

  // A teacher of other classes is refused by name.
  write_image_folder(dir + "/other/train", {4, 4}, 22, 20, 2);
  train::TrainOptions o = small_run(dir + "/other", dir + "/bad");
  o.teacher_dir = teacher.last_dir;
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer{o}; }), "does not know the class 'class_2'");
  fs::remove_all(dir);
}

// --unlabelled-targets teacher: the unlabelled photos learn the teacher's predictions. A
// teacher that swaps the two classes, a few rightly labelled photos (their loss left to the
// labels, alpha 0) and many unlabelled ones weighing ten times more: the student follows the
// teacher on photos it never saw, where without the unlabelled photos it follows the labels.
TEST(Trainer, UnlabelledPhotosLearnTheTeachersTargets) {
  const std::string dir = test::temp_dir("noisy_student");
  write_image_folder(dir + "/swapped/train", {16, 16}, 41);
  fs::rename(dir + "/swapped/train/class_0", dir + "/swapped/train/tmp");
  fs::rename(dir + "/swapped/train/class_1", dir + "/swapped/train/class_0");
  fs::rename(dir + "/swapped/train/tmp", dir + "/swapped/train/class_1");
  train::TrainOptions t = small_run(dir + "/swapped", dir + "/teacher");
  t.data.val_split = 0;
  t.epochs = 6;
  const auto teacher = train::Trainer(t).run();
  write_image_folder(dir + "/data/train", {6, 6}, 42);
  write_image_folder(dir + "/photos", {24, 24}, 43);
  write_image_folder(dir + "/held_out/train", {16, 16}, 44);
  data::DataOptions d;
  d.source = dir + "/held_out";
  const auto held_out = data::open_data(d).train;
  auto teacher_model = models::load_model(teacher.last_dir);
  ASSERT_LT(train::evaluate(*teacher_model, held_out).top1, 0.2) << "the teacher swaps";

  const auto student_top1 = [&](const std::string& unlabelled, const std::string& out) {
    train::TrainOptions o = small_run(dir + "/data", dir + "/" + out);
    o.data.val_split = 0;
    o.batch_size = 4;
    o.epochs = 12;
    o.unlabelled = unlabelled;
    o.unlabelled_ratio = 3;
    o.unlabelled_weight = 10;
    o.unlabelled_targets = unlabelled.empty() ? "self" : "teacher";
    o.teacher_dir = teacher.last_dir;
    o.distill_alpha = 0;  // the labelled photos learn their labels alone
    o.distill_temperature = 1;
    const auto r = train::Trainer(o).run();
    return train::evaluate(*models::load_model(r.last_dir), held_out).top1;
  };
  EXPECT_GT(student_top1("", "labels"), 0.8);
  EXPECT_LT(student_top1(dir + "/photos", "taught"), 0.3);

  train::TrainOptions o = small_run(dir + "/data", dir + "/bad");
  o.unlabelled = dir + "/photos";
  o.unlabelled_targets = "teacher";
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer{o}; }), "needs a --teacher");
  o.unlabelled.clear();
  o.teacher_dir = teacher.last_dir;
  EXPECT_CONTAINS(test::error_of([&] { train::Trainer{o}; }), "name them with --unlabelled");
  fs::remove_all(dir);
}

// Reference: torch.nn.functional.cross_entropy(logits, y, weight=w[, label_smoothing=0.1])
// in python3-torch 1.13 on these numbers.
TEST(Loss, ClassWeightedCrossEntropyEqualsPyTorch) {
  const at::Tensor logits = at::tensor({1.0f, -0.5f, 0.25f, 0.3f, 0.2f, -1.0f, -0.7f, 1.5f, 0.1f,
                                        0.0f, 0.4f, 2.0f})
                                .view({4, 3});
  const at::Tensor y = at::tensor({0, 0, 1, 2}, at::kLong);
  const at::Tensor w = at::tensor({0.5f, 2.0f, 1.0f});
  EXPECT_NEAR(train::soft_cross_entropy(logits, train::smoothed_targets(y, 3, 0.1), w, y)
                  .item<double>(),
              0.5048940181732178, 1e-6);
  EXPECT_NEAR(
      train::soft_cross_entropy(logits, train::smoothed_targets(y, 3, 0.0), w, y).item<double>(),
      0.38869765400886536, 1e-6);
}
