// The `vitrine` binary end to end: import, predict on a folder of good and bad
// files, exit statuses and error messages.
#include "test_util.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/image/decode.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

using namespace vitrine;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

using test::json_lines;
using test::q;

// One imported model shared by the tests of this file.
const std::string& model_dir() {
  static const std::string dir = [] {
    const std::string d = test::temp_dir("cli-model");
    const auto r = test::run_command(
        q(test::vitrine_bin()) + " import --from torchvision --arch resnet18 --weights " +
        q(test::data_dir("models/resnet18/weights.pth")) + " --out " + q(d + "/m"));
    EXPECT_EQ(r.status, 0) << r.err;
    return d + "/m";
  }();
  return dir;
}

// An ImageFolder of `splits`, each with 4 photos of two classes (a blue or a red disc).
void write_two_class_folders(const std::string& root, const std::vector<std::string>& splits) {
  for (int c = 0; c < 2; ++c) {
    for (const auto& split : splits) {
      const std::string dir = root + "/" + split + "/class_" + std::to_string(c);
      fs::create_directories(dir);
      for (int i = 0; i < 4; ++i) {
        cv::Mat img(32, 32, CV_8UC3, cv::Scalar(40, 40, 40));
        cv::circle(img, {8 + 4 * i, 16}, 6, c ? cv::Scalar(0, 0, 255) : cv::Scalar(255, 0, 0),
                   cv::FILLED);
        cv::imwrite(dir + "/" + std::to_string(i) + ".png", img);
      }
    }
  }
}

}  // namespace

TEST(Cli, PredictBadInputFolderReportsEachFileAndGoesOn) {
  const std::string bad = test::data_dir("images/bad");
  const auto expected = json::parse(std::ifstream(bad + "/expected.json"));
  const auto r = test::run_command(q(test::vitrine_bin()) + " predict --model " +
                                   q(model_dir()) + " --topk 3 --batch-size 4 " + q(bad));
  EXPECT_EQ(r.status, 1) << "some files fail, so the exit status is 1\n" << r.err;
  std::map<std::string, json> by_name;
  for (const auto& line : json_lines(r.out)) {
    by_name[fs::path(line["image"].get<std::string>()).filename().string()] = line;
  }
  int good = 0, refused = 0;
  for (const auto& [name, want] : expected.items()) {
    ASSERT_TRUE(by_name.count(name)) << name << " has no output line";
    const json& got = by_name[name];
    if (want["ok"].get<bool>()) {
      ASSERT_TRUE(got.contains("top")) << name << ": " << got.dump();
      EXPECT_EQ(got["top"].size(), 3u);
      EXPECT_TRUE(got["top"][0].contains("label"));
      ++good;
    } else {
      ASSERT_TRUE(got.contains("error")) << name << ": " << got.dump();
      EXPECT_NE(got["error"].get<std::string>().find(name), std::string::npos)
          << "the error names the file: " << got.dump();
      ++refused;
    }
  }
  EXPECT_GE(good, 9);
  EXPECT_GE(refused, 5);
  EXPECT_NE(by_name["huge.png"]["error"].get<std::string>().find("megapixels"), std::string::npos);
  EXPECT_NE(by_name["truncated.jpg"]["error"].get<std::string>().find("truncated"),
            std::string::npos);
  EXPECT_NE(by_name["empty.jpg"]["error"].get<std::string>().find("empty"), std::string::npos);
  EXPECT_CONTAINS(by_name["anim.gif"]["error"].get<std::string>(), "GIF");
}

TEST(Cli, BadInputFilesDecodeAsPilDoes) {
  const std::string bad = test::data_dir("images/bad");
  const auto expected = json::parse(std::ifstream(bad + "/expected.json"));
  const auto refs = safetensors_load(bad + "/rgb.safetensors").tensors;
  std::map<std::string, at::Tensor> ref;
  for (const auto& [k, v] : refs) ref[k] = v;
  for (const auto& [name, want] : expected.items()) {
    if (!want["ok"].get<bool>()) {
      EXPECT_THROW(image::decode_file(bad + "/" + name), Error) << name;
      continue;
    }
    const cv::Mat rgb = image::decode_file(bad + "/" + name);
    EXPECT_EQ(rgb.cols, want["width"].get<int>()) << name;
    EXPECT_EQ(rgb.rows, want["height"].get<int>()) << name;
    // 16-bit files have an 8-bit twin; PIL itself clamps them, so it is no reference.
    const std::string key = ref.count(name + ":8bit") ? name + ":8bit" : name;
    if (!ref.count(key)) continue;
    const at::Tensor ours = at::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, at::kByte);
    // CMYK JPEGs too: converted to RGB with Pillow's formula (OpenCV's lands a level lower).
    EXPECT_EQ(test::max_abs_diff(ours, ref[key]), 0.0) << name;
  }
}

TEST(Cli, PredictAllGoodExitsZeroWithOneLinePerImage) {
  const std::string samples = test::data_dir("images/sample");
  const auto r = test::run_command(q(test::vitrine_bin()) + " predict --model " + q(model_dir()) +
                                   " --precision bf16 --threads 2 " + q(samples));
  EXPECT_EQ(r.status, 0) << r.err;
  const auto lines = json_lines(r.out);
  EXPECT_EQ(lines.size(), 4u);
  for (const auto& l : lines) {
    EXPECT_EQ(l["top"].size(), 5u);
    double prev = 2.0;
    for (const auto& t : l["top"]) {
      const double s = t["score"];
      EXPECT_LE(s, prev);  // sorted
      EXPECT_GE(s, 0.0);
      prev = s;
    }
  }
  // A copy of the folder from a Mac: its "._" twins and __MACOSX are passed over, and said.
  const std::string d = test::temp_dir("cli-predict-hidden");
  fs::copy(samples, d + "/photos", fs::copy_options::recursive);
  std::ofstream(d + "/photos/._one.jpg") << "resource fork";
  fs::create_directories(d + "/photos/__MACOSX");
  std::ofstream(d + "/photos/__MACOSX/._two.jpg") << "resource fork";
  const auto mac = test::run_command(q(test::vitrine_bin()) + " predict --model " +
                                     q(model_dir()) + " --threads 2 " + q(d + "/photos"));
  EXPECT_EQ(mac.status, 0) << mac.err;
  EXPECT_EQ(json_lines(mac.out).size(), 4u);
  EXPECT_CONTAINS(mac.err, "1 hidden image file in " + d + "/photos was skipped");
  // Linked folders are followed (as training's folder reader does), a loop only once.
  fs::create_directories(d + "/tree");
  fs::create_directory_symlink(fs::absolute(samples), d + "/tree/linked");
  fs::create_directory_symlink(".", d + "/tree/self");
  const auto linked = test::run_command(q(test::vitrine_bin()) + " predict --model " +
                                        q(model_dir()) + " --threads 2 " + q(d + "/tree"));
  EXPECT_EQ(linked.status, 0) << linked.err;
  EXPECT_EQ(json_lines(linked.out).size(), 4u) << linked.out;
  fs::remove_all(d);
}

TEST(Cli, MissingModelIsAClearError) {
  const auto r = test::run_command(q(test::vitrine_bin()) + " predict --model /nonexistent/m x.jpg");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("vitrine import"), std::string::npos) << r.err;
}

TEST(Cli, ImportOfMismatchedWeightsFailsAndListsTensors) {
  const std::string d = test::temp_dir("cli-mismatch");
  const auto r = test::run_command(
      q(test::vitrine_bin()) + " import --from torchvision --arch resnet50 --weights " +
      q(test::data_dir("models/resnet18/weights.pth")) + " --out " + q(d + "/m"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("with another shape"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d + "/m/model.safetensors")) << "nothing written on failure";
  fs::remove_all(d);
}

TEST(Cli, ImportHuggingFaceThenPredictUsesItsLabels) {
  const std::string d = test::temp_dir("cli-hf");
  auto r = test::run_command(q(test::vitrine_bin()) + " import --from hf --weights " +
                             q(test::data_dir("models/vit_b_16/hf")) + " --out " + q(d + "/m"));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto config = json::parse(std::ifstream(d + "/m/config.json"));
  EXPECT_EQ(config["arch"], "vit_b_16");
  EXPECT_EQ(config["labels"].size(), 1000u);
  EXPECT_EQ(config["provenance"]["source"], "hf");
  r = test::run_command(q(test::vitrine_bin()) + " predict --topk 1 --model " + q(d + "/m") + " " +
                        q(test::data_dir("images/sample/bag.jpg")));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["top"][0]["label"].get<std::string>().rfind("label_", 0), 0u);
  fs::remove_all(d);
}

TEST(Cli, NonUtf8FileNamesAndLabelsDoNotEndTheRun) {
  const std::string d = test::temp_dir("cli-latin1");
  const std::string name = d + "/lat\xe9.jpg";  // Latin-1 e-acute
  fs::copy_file(test::data_dir("images/sample/bag.jpg"), name);
  auto r = test::run_command(q(test::vitrine_bin()) + " predict --model " + q(model_dir()) +
                             " " + q(d));
  EXPECT_EQ(r.status, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_TRUE(lines[0].contains("top"));
  // Labels must be UTF-8: a Latin-1 file is refused before anything is written.
  std::ofstream(d + "/labels.txt") << "caf\xe9\n";
  r = test::run_command(q(test::vitrine_bin()) + " init --arch resnet18 --labels " +
                        q(d + "/labels.txt") + " --out " + q(d + "/m"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("UTF-8"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d + "/m/model.safetensors"));
  // A byte-order mark is not part of the first label.
  std::ofstream(d + "/bom.txt") << "\xEF\xBB\xBF" "shoe\nbag\n";
  r = test::run_command(q(test::vitrine_bin()) + " init --arch resnet18 --labels " +
                        q(d + "/bom.txt") + " --out " + q(d + "/m2"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json::parse(std::ifstream(d + "/m2/config.json"))["labels"][0], "shoe");
  // A label twice (ImageNet's list has two 'crane') is kept, and said, naming both lines.
  std::ofstream(d + "/twice.txt") << "shoe\nbag\n\nshoe\n";
  r = test::run_command(q(test::vitrine_bin()) + " init --arch resnet_custom --layers 1 1 1 1 "
                        "--image-size 32 --labels " + q(d + "/twice.txt") + " --out " +
                        q(d + "/m5"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "line 4: the label 'shoe' is also on line 1");
  EXPECT_EQ(json::parse(std::ifstream(d + "/m5/config.json"))["labels"].size(), 3u);
  // Flags that would be dropped without a word are refused; --like takes --image-size.
  r = test::run_command(q(test::vitrine_bin()) + " init --arch resnet18 --layers 1 1 1 1 --out " +
                        q(d + "/m3"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "--layers is for --arch resnet_custom");
  r = test::run_command(q(test::vitrine_bin()) + " init --like " + q(d + "/m2") +
                        " --in-channels 1 --out " + q(d + "/m3"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "--in-channels does not apply with --like");
  EXPECT_FALSE(fs::exists(d + "/m3/model.safetensors"));
  r = test::run_command(q(test::vitrine_bin()) + " init --like " + q(d + "/m2") +
                        " --image-size 64 --out " + q(d + "/m4"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json::parse(std::ifstream(d + "/m4/config.json"))["image_size"], 64);
  // Training flags out of range are named before any work starts.
  for (const std::string flag : {"--hflip 2", "--scale 0.5 2", "--mixup -1", "--patience -1",
                                 "--image-size 0", "--in-channels 2"}) {
    r = test::run_command(q(test::vitrine_bin()) + " train --init " + q(d + "/m2") + " --data " +
                          q(d + "/nowhere") + " --out " + q(d + "/run") + " " + flag);
    EXPECT_EQ(r.status, 2) << flag;
    EXPECT_CONTAINS(r.err, flag.substr(0, flag.find(' ')));
  }
  EXPECT_FALSE(fs::exists(d + "/run"));
  fs::remove_all(d);
}

TEST(Cli, FolderWithoutImagesIsAnError) {
  const std::string d = test::temp_dir("cli-empty");
  std::ofstream(d + "/notes.txt") << "no images here";
  const auto r =
      test::run_command(q(test::vitrine_bin()) + " predict --model " + q(model_dir()) + " " + q(d));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("no images found"), std::string::npos) << r.err;
  fs::remove_all(d);
}

TEST(Cli, ImportAsBackboneDropsTheHead) {
  const std::string d = test::temp_dir("cli-backbone");
  const auto r = test::run_command(
      q(test::vitrine_bin()) + " import --from torchvision --arch resnet18 --num-classes 0 " +
      "--weights " + q(test::data_dir("models/resnet18/weights.pth")) + " --out " + q(d + "/m"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json::parse(std::ifstream(d + "/m/config.json"))["num_classes"], 0);
  const auto keys = safetensors_load(d + "/m/model.safetensors").tensors;
  for (const auto& [name, t] : keys) EXPECT_NE(name.rfind("fc.", 0), 0u) << name;
  fs::remove_all(d);
}

TEST(Cli, WrongSourceOrFileIsExplained) {
  const std::string d = test::temp_dir("cli-wrong");
  // timm keys under --from torchvision: the message names the layout it recognises.
  auto r = test::run_command(
      q(test::vitrine_bin()) + " import --from torchvision --arch vit_b_16 --weights " +
      q(test::data_dir("models/vit_b_16/timm.safetensors")) + " --out " + q(d + "/m"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("look like a timm ViT"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("more"), std::string::npos) << "long lists are cut: " << r.err;
  std::ofstream(d + "/text.pth") << "just some text, not weights";
  r = test::run_command(q(test::vitrine_bin()) + " import --from torchvision --arch resnet18 " +
                        "--weights " + q(d + "/text.pth") + " --out " + q(d + "/m"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "text.pth: not a checkpoint: weights come as a torch.save file");
  EXPECT_EQ(r.err.find("vitrine import --from"), std::string::npos)
      << "the command given: " << r.err;
  // A photo given as the weights is named as one.
  cv::imwrite(d + "/photo.jpg", cv::Mat(8, 8, CV_8UC3, cv::Scalar(1, 2, 3)));
  r = test::run_command(q(test::vitrine_bin()) + " import --from torchvision --arch resnet18 " +
                        "--weights " + q(d + "/photo.jpg") + " --out " + q(d + "/m"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "photo.jpg: not a checkpoint (a JPEG image)");
  fs::remove_all(d);
}

TEST(Cli, HandEditedConfigThatContradictsItsArchIsRefused) {
  const std::string d = test::temp_dir("cli-edited");
  fs::copy(model_dir(), d + "/m", fs::copy_options::recursive);
  auto config = json::parse(std::ifstream(d + "/m/config.json"));
  config["arch"] = "resnet50";  // the sizes say resnet18
  std::ofstream(d + "/m/config.json") << config.dump();
  auto r = test::run_command(q(test::vitrine_bin()) + " predict --model " + q(d + "/m") + " " +
                             q(test::data_dir("images/sample/bag.jpg")));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("does not match the sizes"), std::string::npos) << r.err;
  config["arch"] = "resnet18";
  config["preprocess"]["crop"] = "224";  // a string where a number belongs
  std::ofstream(d + "/m/config.json") << config.dump();
  r = test::run_command(q(test::vitrine_bin()) + " predict --model " + q(d + "/m") + " " +
                        q(test::data_dir("images/sample/bag.jpg")));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("'crop' has the wrong type"), std::string::npos) << r.err;
  fs::remove_all(d);
}

// The label-efficient path from the command line: pretrain a backbone on the photos,
// fine-tune it (no --reinit-head needed: it has no head), then compare on the test split.
TEST(Cli, PretrainThenFineTuneThenCompare) {
  const std::string d = test::temp_dir("cli-pretrain");
  write_two_class_folders(d + "/data", {"train", "val", "test"});
  const std::string bin = q(test::vitrine_bin());
  auto r = test::run_command(bin + " pretrain --model resnet18 --stem small --image-size 32 " +
                             "--data " + q(d + "/data") + " --epochs 1 --batch-size 4 " +
                             "--knn-bank 2 --threads 2 --out " + q(d + "/pre"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("k-NN top-1"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(d + "/pre/metrics.jsonl"));
  // A from-scratch twin of the backbone: same architecture, input and preprocessing.
  r = test::run_command(bin + " init --like " + q(d + "/pre/last") + " --seed 5 --out " +
                        q(d + "/twin"));
  ASSERT_EQ(r.status, 0) << r.err;
  json backbone = json::parse(std::ifstream(d + "/pre/last/config.json"));
  // SimCLR's views by default: colour jitter, grayscale, no blur below 96 pixels.
  const json& views = backbone["provenance"]["augmentation"];
  EXPECT_EQ(views["color_jitter"], json::array({0.4, 0.4, 0.4, 0.1})) << views;
  EXPECT_EQ(views["jitter_prob"], 0.8);
  EXPECT_EQ(views["grayscale"], 0.2);
  EXPECT_EQ(views["blur"], 0.0);
  // How it was made: the command, the optimiser and the size it learnt at.
  EXPECT_EQ(backbone["provenance"]["arch"], "resnet18");
  EXPECT_EQ(backbone["provenance"]["lr"], 1e-3);
  EXPECT_EQ(backbone["provenance"]["image_size"], 32);
  EXPECT_NE(backbone["provenance"]["command"].get<std::string>().find("--epochs 1"),
            std::string::npos);
  // --color-jitter 0 turns every colour change off, hue too: colour stays a feature.
  r = test::run_command(bin + " pretrain --model resnet18 --stem small --image-size 32 " +
                        "--data " + q(d + "/data") + " --epochs 1 --batch-size 4 --knn-bank 0 " +
                        "--color-jitter 0 --threads 2 --out " + q(d + "/nojitter"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json::parse(std::ifstream(d + "/nojitter/last/config.json"))["provenance"]
                ["augmentation"]["color_jitter"],
            json::array({0.0, 0.0, 0.0, 0.0}));
  // Bad monitor settings are refused before an epoch is spent.
  r = test::run_command(bin + " pretrain --model resnet18 --data " + q(d + "/data") +
                        " --knn-queries -1 --out " + q(d + "/badknn"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--knn-queries must be positive, got -1"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d + "/badknn/metrics.jsonl"));
  json twin = json::parse(std::ifstream(d + "/twin/config.json"));
  EXPECT_EQ(twin["provenance"]["like"], d + "/pre/last");
  backbone.erase("provenance");
  twin.erase("provenance");
  EXPECT_EQ(twin, backbone);
  EXPECT_FALSE(test::run_command(bin + " init --like " + q(d + "/pre/last") + " --arch resnet18 " +
                                 "--out " + q(d + "/twin2")).status == 0);
  r = test::run_command(bin + " train --init " + q(d + "/pre/last") + " --data " +
                        q(d + "/data") + " --epochs 1 --batch-size 4 --threads 2 --out " +
                        q(d + "/fine"));
  ASSERT_EQ(r.status, 0) << r.err;
  // The fine-tuned model names its run and keeps the backbone's pretraining beneath it.
  const json fine = json::parse(std::ifstream(d + "/fine/best/config.json"))["provenance"];
  EXPECT_EQ(fine["source"], "vitrine train") << fine;
  EXPECT_EQ(fine["init"], d + "/pre/last");
  EXPECT_EQ(fine["epochs"], 1);
  EXPECT_NE(fine["command"].get<std::string>().find(" train --init "), std::string::npos);
  EXPECT_EQ(fine["init_provenance"]["source"], "vitrine pretrain");
  EXPECT_EQ(fine["init_provenance"]["method"], "simclr");
  r = test::run_command(bin + " eval --model " + q(d + "/fine/best") + " --compare " +
                        q(d + "/fine/last") + " --data " + q(d + "/data"));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_EQ(lines[0]["images"], 8);
  EXPECT_EQ(lines[1]["model"], d + "/fine/last");
  // Held-out photos alone (test/ without train/) are enough to evaluate on.
  fs::create_directories(d + "/heldout");
  fs::copy(d + "/data/test", d + "/heldout/test", fs::copy_options::recursive);
  r = test::run_command(bin + " eval --model " + q(d + "/fine/best") + " --data " +
                        q(d + "/heldout"));
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(json_lines(r.out).size(), 1u) << r.out;
  EXPECT_EQ(json_lines(r.out)[0]["images"], 8);
  EXPECT_EQ(json_lines(r.out)[0]["top1"], lines[0]["top1"]);
  EXPECT_EQ(r.err.find("none in train"), std::string::npos) << r.err;
  // Resuming with more epochs than planned goes on, and says the schedule is planned again.
  r = test::run_command(bin + " train --init " + q(d + "/pre/last") + " --data " +
                        q(d + "/data") + " --epochs 2 --batch-size 4 --threads 2 --resume --out " +
                        q(d + "/fine") + " --mixup 0.2");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "planned for 1 epochs and resumes with --epochs 2");
  // ... and other augmentation than the state was saved with is taken, and said.
  EXPECT_CONTAINS(r.err, "the run was saved with --mixup 0 and resumes with --mixup 0.2");
  // compare: the test photos with each run's prediction; an unreadable one is passed over.
  std::ofstream(d + "/data/test/class_0/0_broken.png") << "not a photo";
  r = test::run_command(bin + " compare --run " + q("größer=" + d + "/fine") + " --data " +
                        q(d + "/data") + " --threads 2 --out " + q(d + "/compare.html"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "not shown: ");
  EXPECT_CONTAINS(r.err, "0_broken.png");
  EXPECT_CONTAINS(read_text_file(d + "/compare.html"), "<h2>Test photos</h2>");
  // Names are padded by the columns they take: "größer" is 6 wide (8 bytes).
  EXPECT_CONTAINS(r.out, "run     test top-1");
  // Without a test split it shows validation photos, and says so.
  fs::create_directories(d + "/no_test");
  fs::copy(d + "/data/train", d + "/no_test/train", fs::copy_options::recursive);
  fs::copy(d + "/data/val", d + "/no_test/val", fs::copy_options::recursive);
  r = test::run_command(bin + " compare --run " + q("fine=" + d + "/fine") + " --data " +
                        q(d + "/no_test") + " --threads 2 --out " + q(d + "/compare_val.html"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "has no test split");
  EXPECT_CONTAINS(read_text_file(d + "/compare_val.html"), "<h2>Validation photos");
  // A ViT has no ResNet stem: a clear error, exit 2.
  r = test::run_command(bin + " pretrain --model vit_ti_16 --stem small --data " +
                        q(d + "/data") + " --out " + q(d + "/bad"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--stem is for ResNets"), std::string::npos) << r.err;
  fs::remove_all(d);
}

// --max-pixels on train and eval: a photo over the limit is skipped and named, the others
// train; a limit out of range is refused before any work.
TEST(Cli, PhotosOverMaxPixelsAreSkippedInTrainingAndEvaluation) {
  const std::string d = test::temp_dir("cli-max-pixels");
  write_two_class_folders(d + "/data", {"train", "test"});
  cv::imwrite(d + "/data/train/class_0/large.png", cv::Mat(64, 48, CV_8UC3, cv::Scalar(9, 9, 9)));
  const std::string bin = q(test::vitrine_bin());
  const std::string train = bin + " train --model resnet18 --stem small --image-size 32 --data " +
                            q(d + "/data") + " --epochs 2 --batch-size 3 --threads 2 ";
  auto r = test::run_command(train + "--max-pixels 2000 --out " + q(d + "/run"));
  ASSERT_EQ(r.status, 0) << r.err;
  // Named once, in the first epoch; counted in the second.
  const std::string named =
      "large.png: image is 48x64 (3072 pixels), over the limit of 2000 pixels";
  EXPECT_CONTAINS(r.err, named);
  EXPECT_EQ(r.err.find(named), r.err.rfind(named)) << r.err;
  EXPECT_CONTAINS(r.err, "skipped 1 unreadable photo named in an earlier epoch");
  const auto epochs = json_lines(read_text_file(d + "/run/metrics.jsonl"));
  ASSERT_EQ(epochs.size(), 2u);
  EXPECT_EQ(epochs[0]["skipped_images"], 1) << epochs[0];
  EXPECT_EQ(epochs[1]["skipped_images"], 1) << epochs[1];
  // Without the flag the default limit (100 MP) reads it.
  r = test::run_command(train + "--out " + q(d + "/run2"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json_lines(read_text_file(d + "/run2/metrics.jsonl"))[0]["skipped_images"], 0);
  // One unreadable test photo: the others are scored, it is counted and the status is 1.
  std::ofstream(d + "/data/test/class_1/broken.png") << "not a photo";
  r = test::run_command(bin + " eval --model " + q(d + "/run/last") + " --data " +
                        q(d + "/data"));
  EXPECT_EQ(r.status, 1) << r.err;
  ASSERT_EQ(json_lines(r.out).size(), 1u) << r.out;
  EXPECT_EQ(json_lines(r.out)[0]["images"], 8);
  EXPECT_EQ(json_lines(r.out)[0]["skipped_images"], 1);
  EXPECT_CONTAINS(r.err, "broken.png");
  fs::remove(d + "/data/test/class_1/broken.png");
  // Every test photo (32x32) over the limit: evaluation has nothing to score and says why.
  r = test::run_command(bin + " eval --model " + q(d + "/run/last") + " --data " +
                        q(d + "/data") + " --max-pixels 1000");
  EXPECT_NE(r.status, 0);
  EXPECT_CONTAINS(r.err, "over the limit of 1000 pixels");
  r = test::run_command(train + "--max-pixels 0 --out " + q(d + "/run3"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "--max-pixels");
  EXPECT_FALSE(fs::exists(d + "/run3"));
  fs::remove_all(d);
}

// MAE from the command line: a small ViT of 8-pixel patches, one epoch; a ResNet is refused.
TEST(Cli, PretrainMaskedAutoencoder) {
  const std::string d = test::temp_dir("cli-mae");
  write_two_class_folders(d + "/data", {"train", "val"});
  const std::string bin = q(test::vitrine_bin());
  auto r = test::run_command(bin + " init --arch vit_custom --patch-size 8 --width 32 --depth 1 " +
                             "--heads 2 --image-size 32 --num-classes 0 --out " + q(d + "/vit"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(bin + " pretrain --init " + q(d + "/vit") + " --method mae --data " +
                        q(d + "/data") + " --epochs 1 --batch-size 4 --knn-bank 2 " +
                        "--decoder-width 32 --decoder-depth 1 --decoder-heads 4 --threads 2 " +
                        "--out " + q(d + "/pre"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("k-NN top-1"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("pair-acc"), std::string::npos) << r.err;  // no pairs in MAE
  const auto lines = json_lines(read_text_file(d + "/pre/metrics.jsonl"));
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_FALSE(lines[0].contains("contrast_top1"));
  EXPECT_GT(lines[0]["loss"].get<double>(), 0.0);
  const json provenance = json::parse(std::ifstream(d + "/pre/last/config.json"))["provenance"];
  EXPECT_EQ(provenance["method"], "mae");
  EXPECT_EQ(provenance["decoder"]["width"], 32);
  // MAE's views are crops and flips: SimCLR's colour changes stay off unless asked for.
  const json& views = provenance["augmentation"];
  EXPECT_EQ(views["color_jitter"], json::array({0.0, 0.0, 0.0, 0.0})) << views;
  EXPECT_EQ(views["jitter_prob"], 0.0);
  EXPECT_EQ(views["grayscale"], 0.0);
  EXPECT_EQ(views["blur"], 0.0);
  EXPECT_EQ(views["hflip"], 0.5);
  EXPECT_TRUE(fs::exists(d + "/pre/state/decoder.safetensors"));
  // ... and --color-jitter alone turns the jitter on, as often as SimCLR applies it.
  r = test::run_command(bin + " pretrain --init " + q(d + "/vit") + " --method mae --data " +
                        q(d + "/data") + " --epochs 1 --batch-size 4 --knn-bank 0 " +
                        "--decoder-width 32 --decoder-depth 1 --decoder-heads 4 --threads 2 " +
                        "--color-jitter 0.3 --temperature 0.5 --out " + q(d + "/jitter"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("--temperature is for --method simclr and has no effect with --method "
                       "mae"),
            std::string::npos)
      << r.err;
  const json jittered = json::parse(std::ifstream(d + "/jitter/last/config.json"))["provenance"]
                                   ["augmentation"];
  EXPECT_EQ(jittered["color_jitter"], json::array({0.3, 0.3, 0.3, 0.075})) << jittered;
  EXPECT_EQ(jittered["jitter_prob"], 0.8) << jittered;
  EXPECT_EQ(jittered["grayscale"], 0.0);
  r = test::run_command(bin + " pretrain --model resnet18 --method mae --data " + q(d + "/data") +
                        " --out " + q(d + "/bad"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("needs a ViT"), std::string::npos) << r.err;
  fs::remove_all(d);
}

TEST(Cli, BenchReportsEverySettingAsAJsonLine) {
  const std::string dir = test::temp_dir("bench");
  auto r = test::run_command(q(test::vitrine_bin()) + " init --arch resnet_custom --layers 1 1 1 1 "
                             "--image-size 32 --num-classes 3 --seed 0 --out " + q(dir + "/m"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(q(test::vitrine_bin()) + " bench --model " + q(dir + "/m") +
                        " --batch 1 4 --threads 1 2 --precision fp32 bf16 --iters 3 --warmup 1");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 2u * 2u * 2u);  // precisions x threads x batches, in that order
  EXPECT_EQ(lines.front()["precision"], "fp32");
  EXPECT_EQ(lines.back()["precision"], "bf16");
  EXPECT_EQ(lines[0]["threads"], 1);
  EXPECT_EQ(lines[2]["threads"], 2);
  EXPECT_EQ(lines[0]["batch"], 1);
  EXPECT_EQ(lines[1]["batch"], 4);
  for (const auto& l : lines) {
    EXPECT_EQ(l["arch"], "resnet_custom");
    EXPECT_GT(l["img_per_s"].get<double>(), 0.0) << l;
    EXPECT_GT(l["p50_ms"].get<double>(), 0.0) << l;
    EXPECT_GE(l["p90_ms"].get<double>(), l["p50_ms"].get<double>()) << l;
  }
  EXPECT_CONTAINS(r.err, "img/s");  // the table for people
  r = test::run_command(q(test::vitrine_bin()) + " bench --model " + q(dir + "/none"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "not a model directory");
}

// Static int8 from the command line: calibrate on the training photos, measure the
// accuracy change on the test split, and the optimised model runs int8 by default.
TEST(Cli, OptimizeInt8CalibratesMeasuresAndRunsInt8) {
  const std::string d = test::temp_dir("cli-optimize");
  write_two_class_folders(d + "/data", {"train", "test"});
  const std::string bin = q(test::vitrine_bin());
  auto r = test::run_command(bin + " init --arch resnet_custom --layers 1 1 1 1 --image-size 32 " +
                             "--num-classes 2 --seed 0 --out " + q(d + "/init"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(bin + " train --init " + q(d + "/init") + " --data " + q(d + "/data") +
                        " --epochs 1 --batch-size 4 --threads 2 --out " + q(d + "/run"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(bin + " optimize --model " + q(d + "/run/best") + " --int8 --calib " +
                        q(d + "/data/train") + " --data " + q(d + "/data") + " --out " +
                        q(d + "/int8"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(fs::exists(d + "/int8.partial"));
  // Eight photos are few, for scales and for accuracy alike: said.
  EXPECT_CONTAINS(r.err, "int8 scales from 8 images");
  EXPECT_EQ(r.err.find("calibration photos are test photos"), std::string::npos) << r.err;
  EXPECT_CONTAINS(r.err, "measured on 8 images, each top-1 is known only within a range");
  {  // Wilson's interval: wide on 8 photos, also at a top-1 of 0 or 1.
    std::smatch m;
    const std::regex range(R"(int8 ([0-9.]+) \(([0-9.]+) to ([0-9.]+)\))");
    ASSERT_TRUE(std::regex_search(r.err, m, range)) << r.err;
    const double top1 = std::stod(m[1]), low = std::stod(m[2]), high = std::stod(m[3]);
    EXPECT_LE(low, top1);
    EXPECT_GE(high, top1);
    EXPECT_GT(high - low, 0.3) << r.err;
  }
  // A split the data lacks fails before any work, and leaves no model behind.
  const auto failed = test::run_command(
      bin + " optimize --model " + q(d + "/run/best") + " --int8 --calib " +
      q(d + "/data/train") + " --data " + q(d + "/data") + " --split val --val-split 0 --out " +
      q(d + "/bad"));
  EXPECT_EQ(failed.status, 2);
  EXPECT_NE(failed.err.find("no 'val' split"), std::string::npos) << failed.err;
  EXPECT_EQ(failed.err.find("calibrated"), std::string::npos) << failed.err;
  EXPECT_FALSE(fs::exists(d + "/bad"));
  EXPECT_FALSE(fs::exists(d + "/bad.partial"));
  // Calibrated on the photos it is scored on: said. (--calib DATA, a root with train/,
  // takes the training photos alone.)
  const auto on_test = test::run_command(
      bin + " optimize --model " + q(d + "/run/best") + " --int8 --calib " +
      q(d + "/data/./test") + " --data " + q(d + "/data") + " --out " + q(d + "/on_test"));
  EXPECT_EQ(on_test.status, 0) << on_test.err;
  EXPECT_CONTAINS(on_test.err, "8 of the 8 calibration photos are test photos the accuracy is "
                               "measured on");
  // Calibration photos none of which decodes: each named, and the whole said plainly.
  fs::create_directories(d + "/unreadable");
  std::ofstream(d + "/unreadable/a.jpg") << "not a photo";
  std::ofstream(d + "/unreadable/b.png") << "nor this";
  const auto no_calib = test::run_command(
      bin + " optimize --model " + q(d + "/run/best") + " --int8 --calib " +
      q(d + "/unreadable") + " --out " + q(d + "/bad"));
  EXPECT_EQ(no_calib.status, 2);
  EXPECT_CONTAINS(no_calib.err, "none of the 2 calibration images of");
  EXPECT_CONTAINS(no_calib.err, "calibration image skipped: " + d + "/unreadable/a.jpg");
  EXPECT_FALSE(fs::exists(d + "/bad"));
  // --out a training run (or anything but a model directory) is refused, not replaced.
  const auto onto_run = test::run_command(
      bin + " optimize --model " + q(d + "/run/best") + " --int8 --calib " +
      q(d + "/data/train") + " --out " + q(d + "/run"));
  EXPECT_EQ(onto_run.status, 2);
  EXPECT_NE(onto_run.err.find("holds no model"), std::string::npos) << onto_run.err;
  EXPECT_TRUE(fs::exists(d + "/run/metrics.jsonl"));
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  const json& acc = lines[0]["report"]["accuracy"];
  EXPECT_EQ(acc["images"], 8);
  EXPECT_EQ(acc["task"], "classification");
  for (const char* p : {"fp32", "bf16", "int8"}) {
    EXPECT_LE(acc[p]["agreement_with_fp32"].get<double>(), 1.0) << acc;
  }
  EXPECT_EQ(acc["fp32"]["agreement_with_fp32"], 1.0);
  EXPECT_GE(acc["bf16"]["agreement_with_fp32"].get<double>(), 0.75) << acc;
  EXPECT_GE(acc["int8"]["agreement_with_fp32"].get<double>(), 0.5) << acc;
  EXPECT_EQ(lines[0]["report"]["int8"]["calibration"]["images"], 8);
  EXPECT_EQ(acc["variants"], json::array({"fp32", "bf16", "int8"}));
  // Speed against the original, on the same batches.
  EXPECT_GT(lines[0]["report"]["speed"]["int8"]["img_per_s"].get<double>(), 0.0);
  // The scales and the report are in the model's config: the images, the stem, and two
  // convolutions per block plus three shortcut convolutions.
  const json config = json::parse(std::ifstream(d + "/int8/config.json"));
  EXPECT_EQ(config["quantization"]["int8"]["activation_scales"].size(), 2u + 4 * 2 + 3);
  EXPECT_EQ(config["quantization"]["int8"]["report"]["accuracy"], acc);
  // Its default precision is int8.
  r = test::run_command(bin + " bench --model " + q(d + "/int8") + " --batch 2 --iters 1 --warmup 0");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto bench = json_lines(r.out);
  ASSERT_EQ(bench.size(), 3u) << r.out;
  EXPECT_EQ(bench[2]["precision"], "int8");
  EXPECT_EQ(bench[2]["engine"], "fused");
  // Compared with the libtorch engine, which has no int8: that one runs the other precisions.
  r = test::run_command(bin + " bench --model " + q(d + "/int8") +
                        " --engine fused libtorch --batch 2 --iters 1 --warmup 0");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto both = json_lines(r.out);
  ASSERT_EQ(both.size(), 5u) << r.out;
  EXPECT_EQ(both[4]["engine"], "libtorch");
  EXPECT_EQ(both[4]["precision"], "bf16");
  EXPECT_CONTAINS(r.err, "int8 runs on the fused engine only");
  // predict on the libtorch engine runs the int8 model in fp32, and says so.
  r = test::run_command(bin + " predict --model " + q(d + "/int8") + " --engine libtorch " +
                        q(d + "/data/test"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "runs in fp32 on the libtorch engine");
  // int8 asked of a model without calibration is refused before anything is measured.
  r = test::run_command(bin + " bench --model " + q(d + "/run/best") +
                        " --precision fp32 int8 --batch 2 --iters 1 --warmup 0");
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(r.out, "");
  EXPECT_CONTAINS(r.err, "has no int8 calibration");
  r = test::run_command(bin + " predict --model " + q(d + "/int8") + " --topk 1 " +
                        q(d + "/data/test/class_1"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 4u);
  // eval scores the int8 model in int8, as optimize measured it on the same test photos;
  // --precision fp32 scores its fp32 weights, which are the original's.
  r = test::run_command(bin + " eval --model " + q(d + "/int8") + " --data " + q(d + "/data"));
  ASSERT_EQ(r.status, 0) << r.err;
  const json int8_eval = json_lines(r.out).at(0);
  EXPECT_EQ(int8_eval["precision"], "int8");
  EXPECT_EQ(int8_eval["images"], 8);
  EXPECT_DOUBLE_EQ(int8_eval["top1"].get<double>(), acc["int8"]["top1"].get<double>()) << acc;
  r = test::run_command(bin + " eval --model " + q(d + "/int8") + " --precision fp32 --compare " +
                        q(d + "/run/best") + " --data " + q(d + "/data"));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto fp32_evals = json_lines(r.out);
  ASSERT_EQ(fp32_evals.size(), 2u) << r.out;
  EXPECT_EQ(fp32_evals[0]["precision"], "fp32");
  EXPECT_NEAR(fp32_evals[0]["loss"].get<double>(), fp32_evals[1]["loss"].get<double>(), 1e-6);
  EXPECT_GT(std::abs(int8_eval["loss"].get<double>() - fp32_evals[0]["loss"].get<double>()),
            1e-6) << "int8 scored as fp32";
  // What cannot be done says so.
  r = test::run_command(bin + " optimize --model " + q(d + "/run/best") + " --calib " +
                        q(d + "/data/train") + " --out " + q(d + "/none"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "choose an optimisation");
  r = test::run_command(bin + " init --arch vit_ti_16 --image-size 32 --num-classes 2 --out " +
                        q(d + "/vit"));
  ASSERT_EQ(r.status, 0) << r.err;
  // A ViT, calibrated on a plain folder of photos, without a labelled set to measure on.
  r = test::run_command(bin + " optimize --model " + q(d + "/vit") + " --int8 --calib " +
                        q(d + "/data/train/class_0") + " --out " + q(d + "/vit8"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "the accuracy change is not measured");
  EXPECT_EQ(json::parse(std::ifstream(d + "/vit8/config.json"))["quantization"]["int8"]
                ["activation_scales"].size(), 4u * 12);
  r = test::run_command(bin + " optimize --model " + q(d + "/vit") + " --int8 --calib " +
                        q(d + "/missing") + " --out " + q(d + "/vit9"));
  EXPECT_EQ(r.status, 2);
  EXPECT_FALSE(fs::exists(d + "/vit9"));
  // A missing --calib fails before pruning and its recovery fine-tune.
  r = test::run_command(bin + " optimize --model " + q(d + "/run/best") + " --prune 0.5 " +
                        "--recover-epochs 1 --batch-size 4 --int8 --calib " + q(d + "/missing") +
                        " --data " + q(d + "/data") + " --out " + q(d + "/pruned8"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "missing");
  EXPECT_EQ(r.err.find("recovery epoch"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d + "/pruned8"));
  // Data with a class the model does not know fails before any work.
  fs::copy(d + "/data", d + "/data3", fs::copy_options::recursive);
  fs::copy(d + "/data/test/class_1", d + "/data3/test/class_2", fs::copy_options::recursive);
  fs::copy(d + "/data/train/class_1", d + "/data3/train/class_2", fs::copy_options::recursive);
  r = test::run_command(bin + " optimize --model " + q(d + "/run/best") + " --int8 --calib " +
                        q(d + "/data/train") + " --data " + q(d + "/data3") + " --out " +
                        q(d + "/three"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "does not know 1 of the data's 3 classes");
  EXPECT_CONTAINS(r.err, "'class_2'");
  EXPECT_EQ(r.err.find("calibrated"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d + "/three"));
  // A --model inside --out would be replaced with it: refused.
  // (An optimised model holds its recovery run, whose best model one may optimise again.)
  fs::copy(d + "/int8", d + "/holder", fs::copy_options::recursive);
  fs::create_directories(d + "/holder/recovery");
  fs::copy(d + "/run/best", d + "/holder/recovery/best", fs::copy_options::recursive);
  r = test::run_command(bin + " optimize --model " + q(d + "/holder/recovery/best") +
                        " --int8 --calib " + q(d + "/data/train") + " --out " + q(d + "/holder/"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "lies inside --out");
  EXPECT_TRUE(fs::exists(d + "/holder/recovery/best/model.safetensors"));
  // Pruning an int8 model drops its scales, and says so.
  r = test::run_command(bin + " optimize --model " + q(d + "/int8") + " --prune 0.5 " +
                        "--recover-epochs 0 --out " + q(d + "/pruned"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "int8 scales do not fit the changed network");
  EXPECT_FALSE(json::parse(std::ifstream(d + "/pruned/config.json")).contains("quantization"));
  fs::remove_all(d);
}

// Pruning with a recovery fine-tune and Token Merging in one go, measured against the
// original; the result is a model directory every command takes.
TEST(Cli, OptimizePrunesRecoversAndMergesTokens) {
  const std::string d = test::temp_dir("cli-prune");
  write_two_class_folders(d + "/data", {"train", "test"});
  const std::string bin = q(test::vitrine_bin());
  auto r = test::run_command(bin + " init --arch vit_custom --width 32 --depth 2 --heads 4 " +
                             "--patch-size 8 --image-size 32 --num-classes 2 --seed 0 --out " +
                             q(d + "/init"));
  ASSERT_EQ(r.status, 0) << r.err;
  // Data of other classes than the model's cannot recover it: said before any pruning.
  write_two_class_folders(d + "/more", {"train"});
  fs::rename(d + "/more/train/class_1", d + "/more/train/class_2");
  fs::copy(d + "/data/train/class_1", d + "/more/train/class_1");
  r = test::run_command(bin + " optimize --model " + q(d + "/init") + " --prune 0.5 " +
                        "--data " + q(d + "/more") + " --split train --out " + q(d + "/bad"));
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_CONTAINS(r.err, "which hold 3 classes; " + d + "/init has 2");
  EXPECT_FALSE(fs::exists(d + "/bad"));
  r = test::run_command(bin + " optimize --model " + q(d + "/init") + " --prune 0.5 " +
                        "--recover-epochs 1 --tome 2 --data " + q(d + "/data") +
                        " --batch-size 4 --out " + q(d + "/opt"));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  const json& rep = lines[0]["report"];
  EXPECT_LT(rep["prune"]["params_after"].get<int64_t>(),
            rep["prune"]["params_before"].get<int64_t>());
  EXPECT_EQ(rep["prune"]["recovery"]["epochs"], 1);
  // Not --batch-size (inference); a model that records no training batch takes 32.
  EXPECT_EQ(rep["prune"]["recovery"]["batch_size"], 32);
  EXPECT_EQ(rep["prune"]["recovery"]["teacher"], d + "/init");
  EXPECT_EQ(rep["tome"]["tokens_in"], 17);  // 16 patches and the class token
  EXPECT_EQ(rep["tome"]["tokens_out"], 13);
  const json& acc = rep["accuracy"];
  EXPECT_EQ(acc["variants"], json::array({"original", "fp32", "bf16"}));
  EXPECT_EQ(acc["images"], 8);
  EXPECT_EQ(acc["original"]["agreement_with_original"], 1.0);
  EXPECT_EQ(acc["fp32"]["agreement_with_fp32"], 1.0);
  for (const char* p : {"fp32", "bf16"}) {
    EXPECT_GE(acc[p]["agreement_with_original"].get<double>(), 0.0) << acc;
    EXPECT_LE(acc[p]["agreement_with_original"].get<double>(), 1.0) << acc;
  }
  EXPECT_GT(rep["speed"]["original_fp32"]["img_per_s"].get<double>(), 0.0);
  EXPECT_GT(rep["speed"]["fp32"]["img_per_s"].get<double>(), 0.0);
  // The sizes, the merging and the report travel with the weights.
  const json config = json::parse(std::ifstream(d + "/opt/config.json"));
  EXPECT_EQ(config["vitrine_format"], 2);
  EXPECT_EQ(config["vit"]["layer_heads"], json::array({2, 2}));
  EXPECT_EQ(config["vit"]["tome_r"], 2);
  EXPECT_EQ(config["provenance"]["optimize"]["accuracy"], acc);
  EXPECT_TRUE(fs::exists(d + "/opt/recovery/metrics.jsonl"));
  EXPECT_FALSE(fs::exists(d + "/opt/recovery/state")) << "resume state is not deployed";
  EXPECT_EQ(config["provenance"]["init"], d + "/opt/pruned");
  r = test::run_command(bin + " predict --model " + q(d + "/opt") + " --topk 1 " +
                        q(d + "/data/test/class_1"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 4u);
  // Token Merging is for ViTs.
  r = test::run_command(bin + " init --arch resnet_custom --layers 1 1 1 1 --image-size 32 " +
                        "--num-classes 2 --seed 0 --out " + q(d + "/resnet"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(bin + " optimize --model " + q(d + "/resnet") + " --tome 4 --out " +
                        q(d + "/none"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "merges ViT tokens");
  fs::remove_all(d);
}

TEST(Cli, AMistypedCommandIsNamedWithTheClosestOne) {
  const std::string bin = q(test::vitrine_bin());
  auto r = test::run_command(bin + " evaluate --model x");
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "unknown command 'evaluate'; did you mean 'eval'?");
  r = test::run_command(bin + " -v serach --db x");
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "did you mean 'search'?");
  r = test::run_command(bin + " --version");
  EXPECT_EQ(r.status, 0) << r.err;
}

TEST(Cli, OutOfRangeTrainingSettingsAreRefusedBeforeAnyWork) {
  const std::string d = test::temp_dir("cli-range");
  const std::string train = q(test::vitrine_bin()) + " train --data " + q(d + "/none") +
                            " --model resnet18 --out " + q(d + "/run");
  for (const char* bad : {"--model-ema-decay -0.5", "--model-ema-decay 1.5", "--drop 1.5",
                          "--drop-path -1", "--lora-rank -1"}) {
    const auto r = test::run_command(train + " " + bad);
    EXPECT_EQ(r.status, 2) << bad;
    EXPECT_CONTAINS(r.err, "not in range");
  }
  // Checks without an upper bound name their rule, not the largest double.
  auto r = test::run_command(train + " --patience -1");
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "--patience: must be 0 or more, got -1");
  EXPECT_LT(r.err.size(), 200u) << r.err;
  r = test::run_command(train + " --distill-temperature 0");
  EXPECT_CONTAINS(r.err, "--distill-temperature: must be above 0, got 0");
  r = test::run_command(train + " --mixup x");
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "--mixup");
  EXPECT_FALSE(fs::exists(d + "/run"));
  fs::remove_all(d);
}

TEST(Cli, AGreyModelFineTunedOnColourPhotosIsWarned) {
  // Red and blue circles of one brightness: a grey model cannot tell them apart.
  const std::string d = test::temp_dir("cli-grey-init");
  write_two_class_folders(d + "/data", {"train"});
  const std::string bin = q(test::vitrine_bin());
  for (const std::string channels : {"1", "3"}) {
    auto r = test::run_command(bin + " init --arch resnet_custom --layers 1 1 1 1 --image-size 32 "
                               "--num-classes 0 --seed 0 --in-channels " + channels + " --out " +
                               q(d + "/init" + channels));
    ASSERT_EQ(r.status, 0) << r.err;
    r = test::run_command(bin + " train --init " + q(d + "/init" + channels) + " --data " +
                          q(d + "/data/train") + " --val-split 0 --epochs 1 --batch-size 4 "
                          "--threads 2 --out " + q(d + "/run" + channels));
    EXPECT_EQ(r.status, 0) << r.err;
    if (channels == "1") {
      EXPECT_CONTAINS(r.err, "reads grey images (1 channel, 32 px): these colour photos lose "
                             "their colour");
    } else {
      EXPECT_EQ(r.err.find("reads grey images"), std::string::npos) << r.err;
    }
  }
  fs::remove_all(d);
}

TEST(Cli, UnlabelledPhotosFromAnotherFolderLeaveTheValidationPhotosOut) {
  // The labelled photos are part of the catalogue folder given as --unlabelled: its 2
  // validation photos (a quarter of 8) must not be learnt from.
  const std::string d = test::temp_dir("cli-unlabelled-leak");
  write_two_class_folders(d + "/catalogue", {"labelled"});
  const std::string bin = q(test::vitrine_bin());
  auto r = test::run_command(bin + " init --arch resnet_custom --layers 1 1 1 1 --image-size 32 "
                             "--num-classes 2 --seed 0 --out " + q(d + "/init"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(bin + " train --init " + q(d + "/init") + " --data " +
                        q(d + "/catalogue/labelled") + " --val-split 0.25 --unlabelled " +
                        q(d + "/catalogue") + " --epochs 1 --batch-size 4 --threads 2 --out " +
                        q(d + "/run"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "--unlabelled: 2 of its photos are validation or test photos of "
                         "--data, left out");
  // Options of a mode not asked for are named, not silently taken.
  r = test::run_command(bin + " train --init " + q(d + "/init") + " --data " +
                        q(d + "/catalogue/labelled") + " --val-split 0.25 --pseudo-threshold " +
                        "0.5 --distill-alpha 0.9 --epochs 1 --batch-size 4 --threads 2 --out " +
                        q(d + "/plain"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "--pseudo-threshold has no effect without --unlabelled");
  EXPECT_CONTAINS(r.err, "--distill-alpha has no effect without --teacher");
  fs::remove_all(d);
}

TEST(Cli, DataSeedDrawsTheCarvedSplitsAndEvalNamesTheOneTrainedWith) {
  const std::string d = test::temp_dir("cli-data-seed");
  write_two_class_folders(d + "/data", {"all"});
  write_two_class_folders(d + "/more", {"all"});
  for (int c = 0; c < 2; ++c) {  // 8 photos a class, from which a quarter is carved as test
    const std::string cls = "/all/class_" + std::to_string(c);
    for (int i = 0; i < 4; ++i) {
      fs::copy_file(d + "/more" + cls + "/" + std::to_string(i) + ".png",
                    d + "/data" + cls + "/x" + std::to_string(i) + ".png");
    }
  }
  const std::string bin = q(test::vitrine_bin());
  auto r = test::run_command(bin + " init --arch resnet_custom --layers 1 1 1 1 --image-size 32 " +
                             "--num-classes 2 --seed 0 --out " + q(d + "/init"));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string data = q(d + "/data/all") + " --val-split 0 --test-split 0.25";
  const auto trained_on = [&](const std::string& seed, const std::string& out) {
    r = test::run_command(bin + " train --init " + q(d + "/init") + " --data " + data +
                          " --epochs 1 --batch-size 4 --threads 2 --out " + q(d + "/" + out) +
                          seed);
    EXPECT_EQ(r.status, 0) << r.err;
    return json::parse(std::ifstream(d + "/" + out + "/state/trainer.json"))["data_items_sha256"];
  };
  const auto seed0 = trained_on("", "run0");
  const auto seed1 = trained_on(" --data-seed 1", "run1");
  const auto seed2 = trained_on(" --data-seed 2 --seed 5", "run2");
  EXPECT_NE(seed0, seed1) << "--data-seed draws other training photos";
  EXPECT_NE(seed1, seed2);
  EXPECT_EQ(seed0, trained_on(" --seed 7", "run3")) << "--seed alone keeps the split";
  const auto config = json::parse(std::ifstream(d + "/run1/last/config.json"));
  EXPECT_EQ(config["provenance"]["data_seed"], 1);
  // eval without the flags takes the run's: the same test photos as with them given.
  const std::string eval = bin + " eval --model " + q(d + "/run1/last") + " --data ";
  const auto given = test::run_command(eval + data + " --data-seed 1");
  EXPECT_EQ(given.status, 0) << given.err;
  EXPECT_EQ(given.err.find("--data-seed"), std::string::npos) << given.err;
  r = test::run_command(eval + q(d + "/data/all"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "with --val-split 0 --test-split 0.25 --data-seed 1: its val/test "
                         "photos are taken the same way");
  EXPECT_EQ(r.out, given.out);
  // Another --data-seed, given, would score photos the model learnt from: said.
  r = test::run_command(eval + data + " --data-seed 2");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "with --data-seed 1: where val/test photos are carved out");
  // ... as with other fractions.
  r = test::run_command(eval + q(d + "/data/all") +
                        " --val-split 0 --test-split 0.5 --data-seed 1");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "with --test-split 0.25: where");
  // The data named another way is the same data; a model of data seed 0 records none.
  r = test::run_command(bin + " eval --model " + q(d + "/run0/last") + " --data " +
                        q(d + "/data/./all") + " --data-seed 3");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "with --data-seed 0: where");
  EXPECT_CONTAINS(r.err, "with --val-split 0 --test-split 0.25: its val/test photos are taken");
  // Data given relative to where the run was started is known from any other directory.
  r = test::run_command("cd " + q(d) + " && " + bin + " train --init init --data data/all " +
                        "--val-split 0 --test-split 0.25 --data-seed 1 --epochs 1 --batch-size 4 "
                        "--threads 2 --out relative");
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command("cd / && " + bin + " eval --model " + q(d + "/relative/last") +
                        " --data " + q(d + "/data/all"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "with --val-split 0 --test-split 0.25 --data-seed 1: its val/test "
                         "photos are taken the same way");
  // compare takes the first run's splits too: its test photos, not a warning of none.
  r = test::run_command(bin + " compare --run " + q("one=" + d + "/run1") + " --data " +
                        q(d + "/data/all") + " --threads 2 --out " + q(d + "/compare.html"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err.find("has no test split"), std::string::npos) << r.err;
  EXPECT_CONTAINS(r.err, "with --val-split 0 --test-split 0.25 --data-seed 1: its val/test");
  EXPECT_CONTAINS(read_text_file(d + "/compare.html"), "<h2>Test photos</h2>");
  // An unset --val-split is recorded as applied (0.1 here), so the default given by its
  // value is the same setting, not one that "holds photos it learnt from".
  r = test::run_command(bin + " train --init " + q(d + "/init") + " --data " +
                        q(d + "/data/all") + " --test-split 0.25 --epochs 1 --batch-size 4 "
                        "--threads 2 --out " + q(d + "/default_val"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json::parse(std::ifstream(d + "/default_val/last/config.json"))["provenance"]
                ["val_split"], 0.1);
  r = test::run_command(bin + " eval --model " + q(d + "/default_val/last") + " --data " +
                        q(d + "/data/all") + " --val-split 0.1 --test-split 0.25");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err.find("where val/test photos are carved out"), std::string::npos) << r.err;
  // ... and so is the default left unset, for a --compare model (--model, untrained, adopts
  // nothing).
  r = test::run_command(bin + " eval --model " + q(d + "/init") + " --compare " +
                        q(d + "/default_val/last") + " --data " + q(d + "/data/all") +
                        " --test-split 0.25");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err.find("where val/test photos are carved out"), std::string::npos) << r.err;
  // A run's folder is named as such, not met with the data's missing test split.
  r = test::run_command(bin + " eval --model " + q(d + "/run1") + " --data " +
                        q(d + "/data/all"));
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_CONTAINS(r.err, "is a training run, not a model directory");
  fs::remove_all(d);
}
