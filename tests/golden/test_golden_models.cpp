// Golden tests: Vitrine's models against torchvision's, on weights, inputs and
// outputs exported by scripts/make_test_data.py with Debian's python3-torch
// (random weights, fixed seed, every zero-initialised tensor redrawn so that a
// misplaced tensor changes the outputs).
#include "test_util.h"

#include "vitrine/core/error.h"
#include "vitrine/core/pth.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/predictor.h"
#include "vitrine/models/registry.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

using namespace vitrine;
using namespace vitrine::models;
using test::data_dir;
using test::load_tensor;
using test::max_abs_diff;
namespace fs = std::filesystem;

namespace {

constexpr double kTolerance = 1e-4;  ///< fp32 max-abs, the issue's bar

struct Reference {
  at::Tensor input, features, logits;
};

Reference reference(const std::string& arch) {
  const std::string f = data_dir("models/" + arch + "/ref.safetensors");
  return {load_tensor(f, "input"), load_tensor(f, "features"), load_tensor(f, "logits")};
}

VisionModel import(Source source, const std::string& arch, const std::string& weights,
                   LoadReport* report = nullptr) {
  ImportOptions o;
  o.source = source;
  o.arch = arch;
  o.weights = weights;
  VisionModel model = import_checkpoint(o, report);
  model->eval();
  return model;
}

void expect_matches(VisionModel& model, const Reference& ref, double tolerance = kTolerance) {
  at::NoGradGuard no_grad;
  const at::Tensor f = model->forward_features(ref.input);
  const at::Tensor l = model->forward_head(f);
  EXPECT_LT(max_abs_diff(f, ref.features), tolerance) << "features";
  EXPECT_LT(max_abs_diff(l, ref.logits), tolerance) << "logits";
  EXPECT_TRUE(at::equal(l.argmax(1), ref.logits.argmax(1)));
}

}  // namespace

class TorchvisionGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TorchvisionGolden, FeaturesAndLogitsMatchPyTorch) {
  const std::string arch = GetParam();
  LoadReport report;
  VisionModel model =
      import(Source::kTorchvision, arch, data_dir("models/" + arch + "/weights.pth"), &report);
  EXPECT_TRUE(report.ok()) << report.summary();
  EXPECT_TRUE(report.adapted.empty()) << report.summary();
  expect_matches(model, reference(arch));
}

TEST_P(TorchvisionGolden, InferencePathMatchesPyTorch) {
  const std::string arch = GetParam();
  const Reference ref = reference(arch);
  Predictor predictor(import(Source::kTorchvision, arch,
                             data_dir("models/" + arch + "/weights.pth")),
                      Precision::kFp32);
  // Folding batch norms into the convolutions reorders float sums: resnet50's 50 layers
  // accumulate up to ~1.3e-4 of rounding on values of order 1.
  const double tolerance = arch == "resnet50" ? 5e-4 : kTolerance;
  EXPECT_LT(max_abs_diff(predictor.embeddings(ref.input), ref.features), tolerance);
  EXPECT_LT(max_abs_diff(predictor.logits(ref.input), ref.logits), tolerance);
}

TEST_P(TorchvisionGolden, TimmLayoutLoadsToTheSameLogits) {
  const std::string arch = GetParam();
  VisionModel model =
      import(Source::kTimm, arch, data_dir("models/" + arch + "/timm.safetensors"));
  expect_matches(model, reference(arch));
}

INSTANTIATE_TEST_SUITE_P(Models, TorchvisionGolden,
                         ::testing::Values("resnet18", "resnet50", "vit_b_16"),
                         [](const auto& info) { return info.param; });

// A timm hub folder (model.safetensors + config.json): its pretrained_cfg is the eval
// transform, its label_names the labels; flags given override them.
TEST(TimmHub, PretrainedCfgGivesTheEvalTransformAndFlagsOverrideIt) {
  const std::string dir = test::temp_dir("timm_hub");
  fs::create_symlink(fs::absolute(data_dir("models/resnet18/timm.safetensors")),
                     dir + "/model.safetensors");
  nlohmann::json labels = nlohmann::json::array();
  for (int i = 0; i < 1000; ++i) labels.push_back("class " + std::to_string(i));
  const nlohmann::json config{
      {"architecture", "resnet18"},
      {"num_classes", 1000},
      {"label_names", labels},
      {"pretrained_cfg",
       {{"input_size", {3, 160, 160}}, {"crop_pct", 0.8}, {"crop_mode", "center"},
        {"interpolation", "bilinear"}, {"mean", {0.1, 0.2, 0.3}}, {"std", {0.4, 0.5, 0.6}}}}};
  std::ofstream(dir + "/config.json") << config.dump();
  ImportOptions o;
  o.source = Source::kTimm;
  o.arch = "resnet18";
  o.weights = dir;
  VisionModel model = import_checkpoint(o);
  const auto& p = model->config().preprocess;
  EXPECT_EQ(model->config().image_size, 160);
  EXPECT_EQ(p.crop, 160);
  EXPECT_EQ(p.resize, 200);  // 160 / 0.8
  EXPECT_EQ(p.interpolation, image::Interpolation::kBilinear);
  EXPECT_EQ(p.mean, (std::vector<float>{0.1f, 0.2f, 0.3f}));
  EXPECT_EQ(p.std, (std::vector<float>{0.4f, 0.5f, 0.6f}));
  ASSERT_EQ(model->config().labels.size(), 1000u);
  EXPECT_EQ(model->config().labels[7], "class 7");
  model->eval();
  expect_matches(model, reference("resnet18"));
  // Asked for on the command line: over the folder's.
  o.eval_crop_pct = 1.0;
  o.interpolation = "bicubic";
  o.mean = std::vector<float>{0.5f};
  o.image_size = 224;
  VisionModel asked = import_checkpoint(o);
  const auto& q = asked->config().preprocess;
  EXPECT_EQ(q.crop, 224);
  EXPECT_EQ(q.resize, 224);
  EXPECT_EQ(q.interpolation, image::Interpolation::kBicubic);
  EXPECT_EQ(q.mean, (std::vector<float>{0.5f, 0.5f, 0.5f}));
  EXPECT_EQ(q.std, (std::vector<float>{0.4f, 0.5f, 0.6f}));
  // Statistics that cannot normalise are refused, naming where they came from.
  o.mean = std::vector<float>{0.1f, 0.2f};
  EXPECT_CONTAINS(test::error_of([&] { import_checkpoint(o); }),
                  "--mean takes 3 values (R G B) or 1, got 2");
  o.mean.reset();
  o.std = std::vector<float>{0.0f};
  EXPECT_CONTAINS(test::error_of([&] { import_checkpoint(o); }),
                  "the normalisation std must be positive (0 given by --std)");
  o.std.reset();
  nlohmann::json zero = config;
  zero["pretrained_cfg"]["std"] = {0.4, 0.0, 0.6};
  std::ofstream(dir + "/config.json") << zero.dump();
  const std::string from_config = test::error_of([&] { import_checkpoint(o); });
  EXPECT_CONTAINS(from_config, "the normalisation std must be positive (0 given by ");
  EXPECT_CONTAINS(from_config, "config.json");
  // A config.json that is not JSON is named, not passed over.
  std::ofstream(dir + "/config.json") << "{\"pretrained_cfg\": {";
  EXPECT_CONTAINS(test::error_of([&] { import_checkpoint(o); }), dir + "/config.json");
  fs::remove_all(dir);
}

TEST(HuggingFaceGolden, ViTForImageClassificationMatches) {
  ImportOptions o;
  o.source = Source::kHuggingFace;
  o.weights = data_dir("models/vit_b_16/hf");
  VisionModel model = import_checkpoint(o);
  model->eval();
  const ModelConfig& c = model->config();
  EXPECT_EQ(c.arch, "vit_b_16");
  EXPECT_DOUBLE_EQ(c.vit.layer_norm_eps, 1e-6);
  ASSERT_EQ(c.labels.size(), 1000u);
  EXPECT_EQ(c.labels[7], "label_7");
  expect_matches(model, reference("vit_b_16"));
}

TEST(HuggingFaceGolden, ViTModelGivesTheSameFeatures) {
  ImportOptions o;
  o.source = Source::kHuggingFace;
  o.weights = data_dir("models/vit_b_16/hf_base");
  LoadReport report;
  VisionModel model = import_checkpoint(o, &report);
  model->eval();
  EXPECT_EQ(model->config().num_classes, 0);
  EXPECT_EQ(report.ignored.size(), 2u) << report.summary();  // the pooler
  at::NoGradGuard no_grad;
  const Reference ref = reference("vit_b_16");
  EXPECT_LT(max_abs_diff(model->forward_features(ref.input), ref.features), kTolerance);
}

TEST(HuggingFaceGolden, ConfigFieldsAreHonoured) {
  // The same weights with another layer_norm_eps and activation must give other outputs:
  // the config is read, not assumed.
  const std::string src = data_dir("models/vit_b_16/hf");
  const std::string dir = test::temp_dir("hf-eps");
  std::filesystem::copy(src + "/model.safetensors", dir + "/model.safetensors");
  nlohmann::json config = nlohmann::json::parse(std::ifstream(src + "/config.json"));
  config["layer_norm_eps"] = 1e-1;
  config["hidden_act"] = "gelu_new";
  std::ofstream(dir + "/config.json") << config.dump();
  ImportOptions o;
  o.source = Source::kHuggingFace;
  o.weights = dir;
  VisionModel model = import_checkpoint(o);
  model->eval();
  EXPECT_DOUBLE_EQ(model->config().vit.layer_norm_eps, 1e-1);
  EXPECT_EQ(model->config().vit.hidden_act, "gelu_new");
  at::NoGradGuard no_grad;
  const Reference ref = reference("vit_b_16");
  EXPECT_GT(max_abs_diff(model->forward(ref.input.slice(0, 0, 1)), ref.logits.slice(0, 0, 1)),
            1e-3);
  std::filesystem::remove_all(dir);
}

TEST(PositionEmbeddings, InterpolatedAsTorchvision) {
  const std::string dir = data_dir("models/vit_small_interp");
  const auto meta = nlohmann::json::parse(std::ifstream(dir + "/meta.json"));
  ModelConfig c = model_preset("vit_custom");
  c.vit.patch_size = meta["patch_size"];
  c.vit.hidden_size = meta["hidden_dim"];
  c.vit.num_hidden_layers = meta["num_layers"];
  c.vit.num_attention_heads = meta["num_heads"];
  c.vit.intermediate_size = meta["mlp_dim"];
  c.num_classes = meta["num_classes"];
  set_image_size(c, meta["image_size"]);
  VisionModel model = create_model(c);
  model->eval();
  const LoadReport report = load_state_dict(*model, pth_load(dir + "/weights.pth"));
  ASSERT_EQ(report.adapted.size(), 1u) << report.summary();
  const std::string ref_file = dir + "/ref.safetensors";
  for (const auto& [name, t] : model_state_dict(*model)) {
    if (name == "encoder.pos_embedding") {
      EXPECT_LT(max_abs_diff(t, load_tensor(ref_file, "pos_embedding")), 1e-6);
    }
  }
  expect_matches(model, {load_tensor(ref_file, "input"), load_tensor(ref_file, "features"),
                         load_tensor(ref_file, "logits")});
  // Hugging Face's and timm's own resizing (corners not aligned; timm antialiased, which
  // matters when the grid shrinks).
  struct Case {
    const char* ref;
    int64_t image_size;
    bool antialias;
  };
  for (const Case& k : {Case{"pos_embedding_hf", 96, false}, Case{"pos_embedding_timm", 96, true},
                        Case{"pos_embedding_timm_small", 32, true}}) {
    SCOPED_TRACE(k.ref);
    ModelConfig other = c;
    set_image_size(other, k.image_size);
    VisionModel m = create_model(other);
    LoadOptions lo;
    lo.pos_align_corners = false;
    lo.pos_antialias = k.antialias;
    const LoadReport r = load_state_dict(*m, pth_load(dir + "/weights.pth"), lo);
    EXPECT_NE(r.summary().find(k.antialias ? "antialiased" : "bicubic)"), std::string::npos)
        << r.summary();
    for (const auto& [name, t] : model_state_dict(*m)) {
      if (name == "encoder.pos_embedding") {
        EXPECT_LT(max_abs_diff(t, load_tensor(ref_file, k.ref)), 1e-6);
      }
    }
  }
}

class ResNetStemGolden : public ::testing::TestWithParam<std::string> {};

// The small-photo stems against torchvision's resnet18 with conv1 (and maxpool) swapped
// the way CIFAR-style code does it.
TEST_P(ResNetStemGolden, MatchesTorchvisionWithTheSameStem) {
  const std::string stem = GetParam();
  const std::string dir = data_dir("models/resnet18_stems");
  ModelConfig c = model_preset("resnet18");
  c.resnet.stem = stem;
  c.in_channels = 1;
  c.preprocess.mean = {0.5f};
  c.preprocess.std = {0.5f};
  c.preprocess.channels = 1;
  c.num_classes = 10;
  set_image_size(c, 32);
  VisionModel model = create_model(c);
  model->eval();
  const LoadReport report =
      load_state_dict(*model, safetensors_load(dir + "/" + stem + ".safetensors").tensors);
  EXPECT_TRUE(report.ok() && report.adapted.empty()) << report.summary();
  const std::string ref_file = dir + "/" + stem + "_ref.safetensors";
  const Reference ref{load_tensor(ref_file, "input"), load_tensor(ref_file, "features"),
                      load_tensor(ref_file, "logits")};
  expect_matches(model, ref);
  // The folded inference path keeps the stem's geometry too.
  model->prepare_inference(at::kFloat, /*fused=*/false);
  {
    at::NoGradGuard no_grad;
    EXPECT_LT(max_abs_diff(model->forward_inference(ref.input), ref.logits), kTolerance);
  }
  // Grad-CAM of the first image's top class, as computed with hooks in PyTorch.
  const Predictor predictor(model, Precision::kFp32);
  const int64_t target = load_tensor(ref_file, "gradcam_target").item<int64_t>();
  const at::Tensor cam = predictor.grad_cam(ref.input.narrow(0, 0, 1), target);
  const at::Tensor want = load_tensor(ref_file, "gradcam");
  ASSERT_EQ(cam.sizes(), want.sizes());
  EXPECT_LT(max_abs_diff(cam, want), 1e-4);
  EXPECT_FLOAT_EQ(cam.max().item<float>(), 1.0f);
}

INSTANTIATE_TEST_SUITE_P(Stems, ResNetStemGolden, ::testing::Values("small", "cifar"),
                         [](const auto& info) { return info.param; });

TEST(Import, WrongArchitectureIsExplained) {
  ImportOptions o;
  o.source = Source::kTorchvision;
  o.arch = "resnet34";
  o.weights = data_dir("models/resnet18/weights.pth");
  try {
    import_checkpoint(o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("missing from the checkpoint"), std::string::npos) << msg;
    EXPECT_NE(msg.find("layer1.2.conv1.weight"), std::string::npos) << msg;
  }
}
