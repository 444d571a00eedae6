// The contract every registered model keeps (as timm's test_models.py): finite
// outputs of the right shapes, a gradient for every parameter, valid head and
// first-layer names, and an inference path that agrees with the training forward.
#include "test_util.h"

#include "vitrine/core/error.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/config.h"
#include "vitrine/models/predictor.h"
#include "vitrine/models/registry.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

using namespace vitrine::models;

namespace {

// Small inputs keep the contract test fast; ViTs are built for that size.
ModelConfig small_config(const std::string& arch) {
  ModelConfig c = model_preset(arch);
  if (c.family == Family::kViT) {
    set_image_size(c, 2 * c.vit.patch_size);
  } else {
    set_image_size(c, 64);
  }
  c.num_classes = 7;
  return c;
}

}  // namespace

class ModelContract : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelContract, ForwardBackwardAndNames) {
  at::manual_seed(0);
  const ModelConfig config = small_config(GetParam());
  VisionModel model = create_model(config);
  model->train();
  const at::Tensor x = at::randn({2, 3, config.image_size, config.image_size});
  const at::Tensor f = model->forward_features(x);
  ASSERT_EQ(f.sizes(), (std::vector<int64_t>{2, config.embedding_dim()}));
  const at::Tensor logits = model->forward_head(f);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, 7}));
  EXPECT_TRUE(at::isfinite(logits).all().item<bool>());
  logits.pow(2).sum().backward();
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key() << " got no gradient";
    EXPECT_TRUE(at::isfinite(p.value().grad()).all().item<bool>()) << p.key();
  }
  // Head and first layer are real checkpoint keys.
  std::set<std::string> keys;
  for (const auto& [name, t] : model_state_dict(*model)) keys.insert(name);
  EXPECT_TRUE(keys.count(model->head_name() + ".weight")) << model->head_name();
  EXPECT_TRUE(keys.count(model->stem_weight_name())) << model->stem_weight_name();
  // A non-zero gradient reaches the first layer (the head does not block it).
  const auto stem = model->named_parameters()[model->stem_weight_name()];
  EXPECT_GT(stem.grad().abs().sum().item<double>(), 0.0);
}

TEST_P(ModelContract, InferencePathMatchesForward) {
  at::manual_seed(1);
  const ModelConfig config = small_config(GetParam());
  VisionModel model = create_model(config);
  model->eval();
  const at::Tensor x = at::randn({2, 3, config.image_size, config.image_size});
  at::NoGradGuard no_grad;
  const at::Tensor ref = model->forward(x);
  model->prepare_inference(at::kFloat, /*fused=*/false);
  const at::Tensor fp32 = model->forward_inference(x);
  // Randomly initialised deep ResNets reach large activations; compare relative to them.
  const double scale = ref.abs().max().item<double>() + 1e-6;
  EXPECT_LT((fp32 - ref).abs().max().item<double>() / scale, 1e-5);
  model->prepare_inference(at::kBFloat16, /*fused=*/false);
  const at::Tensor bf16 = model->forward_inference(x);
  EXPECT_EQ(bf16.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::isfinite(bf16).all().item<bool>());
  // bf16 keeps ~3 significant digits; relative to the logits' scale it stays close.
  EXPECT_LT((bf16 - ref).abs().max().item<double>() / scale, 0.1);
}

// Training layout: ResNets train channels-last. The layout changes where the numbers are
// stored and the order of some sums, not what they are: forward and gradients stay about as
// close to a float64 reference as the default layout's are (deep, randomly initialised ResNets
// in train-mode batch norm lose several digits in fp32 either way). Saving writes the
// standard layout, so the files do not depend on it.
TEST_P(ModelContract, ChannelsLastTrainingKeepsTheNumbers) {
  const ModelConfig config = small_config(GetParam());
  const auto make = [&] {
    at::manual_seed(2);
    VisionModel m = create_model(config);
    m->train();
    return m;
  };
  VisionModel nhwc = make();
  const bool changed = nhwc->use_channels_last_for_training();
  ASSERT_EQ(changed, config.family == Family::kResNet);
  if (!changed) {  // ViTs keep the default layout
    for (const auto& p : nhwc->parameters()) EXPECT_TRUE(p.is_contiguous());
    return;
  }
  VisionModel ref = make(), fp64 = make();
  fp64->to(at::kDouble);
  int64_t four_d = 0;
  for (const auto& p : nhwc->named_parameters()) {
    if (p.value().dim() != 4) continue;
    ++four_d;
    EXPECT_TRUE(p.value().is_contiguous(at::MemoryFormat::ChannelsLast)) << p.key();
    EXPECT_TRUE(p.value().equal(ref->named_parameters()[p.key()])) << p.key();
  }
  EXPECT_GT(four_d, 0);
  const at::Tensor x = at::randn({4, 3, config.image_size, config.image_size});
  const at::Tensor a = ref->forward(x);
  const at::Tensor b = nhwc->forward(x.contiguous(at::MemoryFormat::ChannelsLast));
  const at::Tensor c = fp64->forward(x.to(at::kDouble));
  const auto rel = [](const at::Tensor& t, const at::Tensor& exact) {
    return (t.to(at::kDouble) - exact).norm().item<double>() / (exact.norm().item<double>() + 1e-30);
  };
  EXPECT_LE(rel(b, c), 3 * rel(a, c) + 1e-6);
  a.pow(2).sum().backward();
  b.pow(2).sum().backward();
  c.pow(2).sum().backward();
  // All gradients as one vector: single tensors of deep networks scatter too much.
  const auto grads = [](const VisionModel& m) {
    std::vector<at::Tensor> g;
    for (const auto& p : m->parameters()) g.push_back(p.grad().to(at::kDouble).flatten());
    return at::cat(g);
  };
  const at::Tensor exact = grads(fp64);
  EXPECT_LE(rel(grads(nhwc), exact), 3 * rel(grads(ref), exact) + 1e-5);
  // Saved in the standard layout: the file loads into a default model unchanged.
  const std::string file = vitrine::test::temp_dir("channels_last_" + GetParam()) + "/m.safetensors";
  vitrine::safetensors_save(file, model_state_dict(*nhwc));
  VisionModel loaded = create_model(config);
  load_state_dict(*loaded, vitrine::safetensors_load(file).tensors);
  const auto loaded_params = loaded->named_parameters();
  for (const auto& p : nhwc->named_parameters()) {
    EXPECT_TRUE(p.value().equal(loaded_params[p.key()])) << p.key();
  }
}

INSTANTIATE_TEST_SUITE_P(Registry, ModelContract, ::testing::ValuesIn(model_names()),
                         [](const auto& info) { return info.param; });

TEST(Models, GreyscaleInputAndNoHead) {
  ModelConfig c = small_config("resnet18");
  c.in_channels = 1;
  c.preprocess.mean = {0.5f};
  c.preprocess.std = {0.5f};
  c.num_classes = 0;
  VisionModel model = create_model(c);
  const at::Tensor out = model->forward(at::randn({3, 1, 64, 64}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{3, 512}));
  EXPECT_THROW(model->forward(at::randn({3, 3, 64, 64})), vitrine::Error);
}

TEST(Models, ViTRejectsWrongImageSize) {
  VisionModel model = create_model(small_config("vit_ti_16"));
  try {
    model->forward(at::randn({1, 3, 48, 48}));
    FAIL() << "expected an error";
  } catch (const vitrine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected images of shape"), std::string::npos);
  }
}

TEST(Models, ResetHeadChangesClassCount) {
  VisionModel model = create_model(small_config("vit_ti_16"));
  model->reset_head(3);
  EXPECT_EQ(model->forward(at::randn({1, 3, 32, 32})).size(1), 3);
  EXPECT_EQ(model->config().num_classes, 3);
}

TEST(Models, DropPathOnlyWhileTraining) {
  ModelConfig c = small_config("vit_ti_16");
  c.drop_path = 0.5;
  at::manual_seed(3);
  VisionModel model = create_model(c);
  const at::Tensor x = at::randn({4, 3, 32, 32});
  model->eval();
  EXPECT_TRUE(at::equal(model->forward(x), model->forward(x)));
  model->train();
  EXPECT_FALSE(at::allclose(model->forward(x), model->forward(x)));
}

TEST(Models, UnknownArchitectureListsKnownOnes) {
  try {
    model_preset("resnet51");
    FAIL() << "expected an error";
  } catch (const vitrine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("resnet50"), std::string::npos);
  }
}

TEST(Models, ValidateRejectsBadSizes) {
  ModelConfig c = model_preset("vit_custom");
  c.vit.hidden_size = 100;
  c.vit.num_attention_heads = 3;
  EXPECT_THROW(create_model(c), vitrine::Error);
  c = model_preset("vit_b_16");
  c.image_size = 200;  // not a multiple of 16
  EXPECT_THROW(create_model(c), vitrine::Error);
  c = model_preset("resnet18");
  c.resnet.stem = "tiny";
  EXPECT_THROW(create_model(c), vitrine::Error);
}

TEST(Models, ResNetStemSetsTheStemAndTravelsInTheConfig) {
  for (const std::string stem : {"imagenet", "small", "cifar"}) {
    ModelConfig c = small_config("resnet18");
    c.resnet.stem = stem;
    VisionModel model = create_model(c);
    const int64_t kernel = stem == "imagenet" ? 7 : 3;
    EXPECT_EQ(model->named_parameters()["conv1.weight"].sizes(),
              (std::vector<int64_t>{64, 3, kernel, kernel}));
    EXPECT_EQ(config_from_json(config_to_json(c), "test").resnet.stem, stem);
  }
  // Older config.json files have no stem: the ImageNet one.
  EXPECT_EQ(config_from_json(R"({"arch": "resnet18", "family": "resnet"})", "test").resnet.stem,
            "imagenet");
}

// Grad-CAM on a ViT: the map of the patch tokens entering the last block, one value per
// pixel in [0, 1], different for different classes (ResNet's is checked against PyTorch in
// the golden tests).
TEST(Models, ViTGradCamIsAPerPixelMapPerClass) {
  at::manual_seed(0);
  auto model = vitrine::models::create_model(vitrine::test::tiny_vit_config());
  const vitrine::models::Predictor predictor(model, vitrine::models::Precision::kFp32);
  const at::Tensor image = at::randn({1, 3, 32, 32});
  const at::Tensor a = predictor.grad_cam(image, 0), b = predictor.grad_cam(image, 1);
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{32, 32}));
  EXPECT_TRUE(a.isfinite().all().item<bool>());
  EXPECT_GE(a.min().item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(a.max().item<float>(), 1.0f);
  EXPECT_GT((a - b).abs().max().item<float>(), 1e-3) << "the class must matter";
  EXPECT_THROW(predictor.grad_cam(image, 5), vitrine::Error);
}
