// Adversarial training and robust evaluation through the CLI on a task built to tell them
// apart (Tsipras et al. 2019): a strong "robust" feature (the left half brighter or darker,
// right for 90% of the photos) and a faint "non-robust" one (every pixel shifted by 0.03,
// right for all of them). Standard training leans on the faint one, which a 16/255 attack
// reverses; adversarial training at that budget must use the strong one.
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include <filesystem>
#include <fstream>
#include <random>

using namespace vitrine;
using test::q;
namespace fs = std::filesystem;

namespace {

void write_split(const std::string& root, const std::string& split, int per_class,
                 std::mt19937_64& rng) {
  std::normal_distribution<float> noise(0.f, 0.1f);
  std::uniform_real_distribution<float> coin(0.f, 1.f);
  for (int c = 0; c < 2; ++c) {
    const std::string dir = root + "/" + split + "/c" + std::to_string(c);
    fs::create_directories(dir);
    const float s = c == 1 ? 1.f : -1.f;
    for (int i = 0; i < per_class; ++i) {
      const float robust = coin(rng) < 0.9f ? s : -s;
      cv::Mat img(16, 16, CV_8UC1);
      for (int y = 0; y < 16; ++y) {
        for (int x = 0; x < 16; ++x) {
          float v = 0.5f + 0.03f * s + noise(rng) + (x < 8 ? 0.2f * robust : 0.f);
          img.at<uint8_t>(y, x) = cv::saturate_cast<uint8_t>(std::round(255 * std::clamp(v, 0.f, 1.f)));
        }
      }
      cv::imwrite(dir + "/" + std::to_string(i) + ".png", img);
    }
  }
}

nlohmann::json eval_under_pgd(const std::string& model, const std::string& data) {
  const auto r = test::run_command(q(test::vitrine_bin()) + " eval --model " + q(model) +
                                   " --data " + q(data) + " --attack pgd --adv-eps 16/255 " +
                                   "--adv-steps 10 --json " + q(model + "/eval.json"));
  EXPECT_EQ(r.status, 0) << r.err;
  const auto lines = test::json_lines(r.out);
  return lines.empty() ? nlohmann::json() : lines[0];
}

}  // namespace

TEST(Adversarial, PgdBreaksAStandardModelAndAdversarialTrainingHoldsUp) {
  const std::string dir = test::temp_dir("adversarial");
  std::mt19937_64 rng(7);
  write_split(dir + "/data", "train", 200, rng);
  write_split(dir + "/data", "val", 50, rng);
  write_split(dir + "/data", "test", 100, rng);
  std::ofstream(dir + "/labels.txt") << "c0\nc1\n";
  const std::string vitrine = q(test::vitrine_bin());
  auto r = test::run_command(vitrine + " init --arch resnet_custom --layers 1 1 1 1 --image-size 16 "
                             "--in-channels 1 --stem small --labels " + q(dir + "/labels.txt") +
                             " --seed 0 --out " + q(dir + "/init"));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string common = " train --data " + q(dir + "/data") + " --init " + q(dir + "/init") +
                             " --epochs 8 --batch-size 32 --lr 2e-3 --scale 1 1 --ratio 1 1 "
                             "--hflip 0 --seed 0 --eval-crop-pct 1 --out ";
  r = test::run_command(vitrine + common + q(dir + "/standard"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(vitrine + common + q(dir + "/robust") +
                        " --adv pgd --adv-eps 16/255 --adv-steps 3");
  ASSERT_EQ(r.status, 0) << r.err;

  const auto standard = eval_under_pgd(dir + "/standard/best", dir + "/data");
  const auto robust = eval_under_pgd(dir + "/robust/best", dir + "/data");
  ASSERT_TRUE(standard.contains("robust_top1")) << standard;
  ASSERT_TRUE(robust.contains("robust_top1")) << robust;
  // The standard model is accurate on clean photos and falls apart under the attack.
  EXPECT_GE(standard["top1"].get<double>(), 0.95) << standard;
  EXPECT_LE(standard["robust_top1"].get<double>(), 0.3) << standard;
  // The adversarially trained one gives up some clean accuracy (the strong feature is right
  // for 90% of the photos) and keeps it under attack.
  EXPECT_GE(robust["top1"].get<double>(), 0.75) << robust;
  EXPECT_GE(robust["robust_top1"].get<double>(), 0.7) << robust;
  EXPECT_GE(robust["robust_top1"].get<double>(), standard["robust_top1"].get<double>() + 0.4);
  // Adversarial training keeps as best the epoch most accurate under its own attack on the
  // validation photos, not the cleanest one.
  std::ifstream log(dir + "/robust/metrics.jsonl");
  double best_robust = -1, max_robust = -1;
  for (std::string line; std::getline(log, line);) {
    const auto e = nlohmann::json::parse(line);
    ASSERT_TRUE(e.contains("val_robust_top1")) << line;
    const double v = e["val_robust_top1"].get<double>();
    max_robust = std::max(max_robust, v);
    if (e["best"].get<bool>()) best_robust = v;
  }
  EXPECT_EQ(best_robust, max_robust);
  std::ifstream standard_log(dir + "/standard/metrics.jsonl");
  std::string first;
  std::getline(standard_log, first);
  EXPECT_FALSE(nlohmann::json::parse(first).contains("val_robust_top1")) << first;
  // The full report holds both, and the attack's settings.
  std::ifstream in(dir + "/robust/best/eval.json");
  const auto full = nlohmann::json::parse(in);
  const auto& entry = full[dir + "/robust/best"];
  EXPECT_EQ(entry["under_attack"]["attack"]["method"], "pgd");
  EXPECT_NEAR(entry["under_attack"]["attack"]["eps"].get<double>(), 16.0 / 255, 1e-12);
  EXPECT_EQ(entry["under_attack"]["attack"]["steps"], 10);
  EXPECT_NEAR(entry["under_attack"]["top1"].get<double>(), robust["robust_top1"].get<double>(), 1e-12);
}

TEST(Adversarial, BadAttackSettingsAreRefusedClearly) {
  const std::string eval = q(test::vitrine_bin()) +
                           " eval --model /nonexistent --data fashion-mnist --attack pgd ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {eval + "--adv-eps 8/0", "8/0"},
      {eval + "--adv-eps 2", "--adv-eps must be in (0, 1]"},
      {eval + "--adv-eps eight", "8/255"},
      {eval + "--adv-steps 0", "--adv-steps"},
      {q(test::vitrine_bin()) + " train --model resnet18 --data fashion-mnist --out /tmp/x "
                                "--adv pgd --adv-ratio 0",
       "--adv-ratio"},
  };
  for (const auto& [command, message] : cases) {
    const auto r = test::run_command(command);
    EXPECT_NE(r.status, 0) << command;
    EXPECT_CONTAINS(r.err, message);
  }
}
