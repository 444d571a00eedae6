// The fused inference path (src/models/onednn.h) against libtorch's fp32 operators, the
// reference: every registered architecture end to end, single blocks of each kind, every
// ViT activation, LoRA-merged weights, several batch sizes and concurrent callers.
#include "models/onednn.h"
#include "test_util.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"
#include "vitrine/models/registry.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>

#include <thread>

using namespace vitrine::models;

namespace {

ModelConfig small_config(const std::string& arch) {
  ModelConfig c = model_preset(arch);
  set_image_size(c, c.family == Family::kViT ? 2 * c.vit.patch_size : 64);
  c.num_classes = 7;
  return c;
}

/// Batch-norm statistics, norm scales and biases away from their initial 1 and 0, so that
/// folding and the norms' scale and shift are exercised.
void perturb(VisionModelImpl& model) {
  at::NoGradGuard no_grad;
  for (auto& item : model.named_buffers()) {
    const std::string& name = item.key();
    at::Tensor& b = item.value();
    if (name.find("running_mean") != std::string::npos) b.uniform_(-0.3, 0.3);
    if (name.find("running_var") != std::string::npos) b.uniform_(0.5, 2.0);
  }
  for (auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    at::Tensor& p = item.value();
    if (p.dim() != 1) continue;
    if (name.size() > 6 && name.compare(name.size() - 6, 6, "weight") == 0) {
      p.uniform_(0.5, 1.5);
    } else {
      p.uniform_(-0.2, 0.2);
    }
  }
}

/// max |a - b| relative to the reference's largest magnitude.
double relative_error(const at::Tensor& a, const at::Tensor& ref) {
  return (a - ref).abs().max().item<double>() / (ref.abs().max().item<double>() + 1e-12);
}

at::Tensor reference(VisionModelImpl& model, const at::Tensor& x) {
  at::NoGradGuard no_grad;
  model.eval();
  return model.forward(x);
}

}  // namespace

class FusedContract : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!onednn::available()) GTEST_SKIP() << "built without oneDNN";
  }
};

TEST_P(FusedContract, EndToEndMatchesLibtorchFp32) {
  at::manual_seed(3);
  const ModelConfig config = small_config(GetParam());
  VisionModel model = create_model(config);
  perturb(*model);
  const at::Tensor x = at::randn({3, 3, config.image_size, config.image_size});
  const at::Tensor ref = reference(*model, x);
  const Predictor fp32(model, Precision::kFp32, Engine::kFused);
  ASSERT_EQ(fp32.engine(), Engine::kFused);
  const at::Tensor out = fp32.logits(x);
  EXPECT_EQ(out.sizes(), ref.sizes());
  EXPECT_LT(relative_error(out, ref), 1e-4) << GetParam();
  // Embeddings come from the same path.
  at::Tensor ref_features;
  {
    at::NoGradGuard no_grad;
    ref_features = model->forward_features(x);
  }
  EXPECT_LT(relative_error(fp32.embeddings(x), ref_features), 1e-4);

  const Predictor bf16(model, Precision::kBf16, Engine::kFused);
  const at::Tensor low = bf16.logits(x);
  EXPECT_EQ(low.scalar_type(), at::kFloat);
  // bf16 keeps 8 bits of mantissa; through a whole random network the logits stay
  // within a few percent of the fp32 ones.
  EXPECT_LT(relative_error(low, ref), 0.05) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Registry, FusedContract, ::testing::ValuesIn(model_names()),
                         [](const auto& info) { return info.param; });

TEST(Fused, EachResNetBlockKindMatches) {
  if (!onednn::available()) GTEST_SKIP() << "built without oneDNN";
  // The fewest blocks a ResNet has: two in the first stage (the second with an identity
  // shortcut), one in the others (stride-2 shortcut convolutions); basic and bottleneck,
  // each stem. Few layers: a mistake in one cannot hide behind the rest.
  for (const bool bottleneck : {false, true}) {
    for (const std::string stem : {"imagenet", "small", "cifar"}) {
      ModelConfig c = small_config(bottleneck ? "resnet50" : "resnet18");
      c.resnet.stem = stem;
      c.resnet.layers = {2, 1, 1, 1};
      set_image_size(c, 20);  // odd sizes after the stride-2 stem
      at::manual_seed(bottleneck ? 5 : 6);
      VisionModel model = create_model(c);
      perturb(*model);
      const at::Tensor x = at::randn({2, 3, 20, 20});
      const at::Tensor ref = reference(*model, x);
      const Predictor p(model, Precision::kFp32, Engine::kFused);
      EXPECT_LT(relative_error(p.logits(x), ref), 1e-5) << stem << " bottleneck " << bottleneck;
    }
  }
}

TEST(Fused, EveryViTActivationMatches) {
  if (!onednn::available()) GTEST_SKIP() << "built without oneDNN";
  for (const std::string act : {"gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "relu"}) {
    ModelConfig c = small_config("vit_ti_16");
    c.vit.num_hidden_layers = 1;
    c.vit.hidden_act = act;
    set_image_size(c, 48);  // 9 patches and the class token
    at::manual_seed(7);
    VisionModel model = create_model(c);
    perturb(*model);
    const at::Tensor x = at::randn({2, 3, 48, 48});
    const Predictor p(model, Precision::kFp32, Engine::kFused);
    EXPECT_LT(relative_error(p.logits(x), reference(*model, x)), 1e-5) << act;
  }
}

TEST(Fused, LoraAdaptersAreMergedIntoThePackedWeights) {
  if (!onednn::available()) GTEST_SKIP() << "built without oneDNN";
  ModelConfig c = small_config("vit_ti_16");
  c.vit.num_hidden_layers = 2;
  at::manual_seed(8);
  VisionModel model = create_model(c);
  ASSERT_GT(model->add_lora(LoraOptions{}), 0);
  {
    at::NoGradGuard no_grad;
    // B starts at zero; give the adapters a real effect.
    for (auto& item : model->named_parameters()) {
      if (item.key().find("lora_") != std::string::npos) item.value().uniform_(-0.1, 0.1);
    }
  }
  const at::Tensor x = at::randn({2, 3, c.image_size, c.image_size});
  const at::Tensor ref = reference(*model, x);
  const Predictor p(model, Precision::kFp32, Engine::kFused);
  EXPECT_LT(relative_error(p.logits(x), ref), 1e-5);
}

TEST(Fused, BatchSizesAndConcurrentCallersGetTheirOwnAnswers) {
  if (!onednn::available()) GTEST_SKIP() << "built without oneDNN";
  for (const std::string arch : {"resnet18", "vit_ti_16"}) {
    at::manual_seed(9);
    const ModelConfig c = small_config(arch);
    VisionModel model = create_model(c);
    perturb(*model);
    const at::Tensor x = at::randn({5, 3, c.image_size, c.image_size});
    const at::Tensor ref = reference(*model, x);
    const Predictor p(model, Precision::kFp32, Engine::kFused);
    // Shapes in a mixed order: each row's answer does not depend on its batch.
    for (const int64_t n : {5, 1, 3, 5}) {
      EXPECT_LT(relative_error(p.logits(x.narrow(0, 0, n)), ref.narrow(0, 0, n)), 1e-4) << n;
    }
    std::vector<at::Tensor> outs(4);
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) {
      threads.emplace_back([&, i] { outs[i] = p.logits(x.narrow(0, i, 1 + i % 2)); });
    }
    for (auto& t : threads) t.join();
    for (int i = 0; i < 4; ++i) {
      EXPECT_LT(relative_error(outs[i], ref.narrow(0, i, 1 + i % 2)), 1e-4) << arch << " " << i;
    }
  }
}

TEST(Fused, TheLibtorchEngineStaysAvailable) {
  at::manual_seed(10);
  VisionModel model = create_model(small_config("resnet18"));
  const Predictor p(model, Precision::kFp32, Engine::kLibtorch);
  EXPECT_EQ(p.engine(), Engine::kLibtorch);
  EXPECT_EQ(parse_engine("fused"), Engine::kFused);
  EXPECT_THROW(parse_engine("tensorrt"), std::exception);
}

namespace {

/// The int8 scales of `model` from `batches` random batches of its input shape.
std::vector<float> calibrate(VisionModelImpl& model, int batches) {
  const auto& c = model.config();
  int left = batches;
  return model.calibrate_int8([&]() -> at::Tensor {
    if (left-- <= 0) return {};
    return at::randn({8, c.in_channels, c.image_size, c.image_size});
  });
}

double cosine(const at::Tensor& a, const at::Tensor& b) {
  return at::cosine_similarity(a, b, 1).min().item<double>();
}

}  // namespace

TEST(Int8, ABatchCountsForTheImagesItHolds) {
  if (!onednn::available()) GTEST_SKIP() << "built without oneDNN";
  // Eight images of largest magnitude 1, then one of 10: the images' scale (the first point)
  // is (8 x 1 + 1 x 10) / 9 / 127, not the plain mean of the two batches' maxima.
  {
    ModelConfig c = small_config("resnet_custom");
    VisionModel model = create_model(c);
    int call = 0;
    const auto scales = model->calibrate_int8([&]() -> at::Tensor {
      const int n = call == 0 ? 8 : 1;
      const double value = call == 0 ? 1.0 : 10.0;
      return call++ < 2 ? at::full({n, c.in_channels, c.image_size, c.image_size}, value)
                        : at::Tensor();
    });
    ASSERT_FALSE(scales.empty());
    EXPECT_NEAR(scales[0], 2.0 / 127, 1e-6);
  }
}

TEST(Int8, EveryFamilyTracksFp32) {
  if (!onednn::available()) GTEST_SKIP() << "built without oneDNN";
  for (const std::string arch :
       {"resnet18", "resnet50", "resnet_custom", "vit_ti_16", "vit_s_16"}) {
    at::manual_seed(11);
    ModelConfig c = small_config(arch);
    VisionModel model = create_model(c);
    perturb(*model);
    model->mutable_config().int8_scales = calibrate(*model, 4);
    // The images, the stem, and per block its convolutions and shortcut convolution.
    if (arch == "resnet18") {
      EXPECT_EQ(model->config().int8_scales.size(), 2u + 8 * 2 + 3);
    } else if (arch == "resnet50") {
      EXPECT_EQ(model->config().int8_scales.size(), 2u + 16 * 3 + 4);
    } else if (arch == "vit_ti_16") {
      EXPECT_EQ(model->config().int8_scales.size(), 4u * 12);  // four inputs of products a block
    }
    const at::Tensor x = at::randn({6, 3, c.image_size, c.image_size});
    at::Tensor ref;
    {
      at::NoGradGuard no_grad;
      model->eval();
      ref = model->forward_features(x);
    }
    const Predictor int8(model, Precision::kInt8, Engine::kFused);
    EXPECT_EQ(int8.precision(), Precision::kInt8);
    const at::Tensor emb = int8.embeddings(x);
    // 8-bit activations through the whole network: the embedding keeps its direction.
    EXPECT_GT(cosine(emb, ref), 0.98) << arch;
    EXPECT_LT(relative_error(emb, ref), 0.15) << arch;
    // auto picks int8 for a calibrated model.
    EXPECT_EQ(Predictor(model, Precision::kAuto).precision(), Precision::kInt8);
  }
}

TEST(Int8, CalibrationErrorsNameTheFix) {
  if (!onednn::available()) GTEST_SKIP() << "built without oneDNN";
  at::manual_seed(12);
  VisionModel resnet = create_model(small_config("resnet18"));
  try {
    Predictor p(resnet, Precision::kInt8);
    FAIL() << "int8 without calibration ran";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("vitrine optimize --int8"), std::string::npos) << e.what();
  }
  resnet->mutable_config().int8_scales = {0.1f, 0.2f};  // far too few
  try {
    Predictor p(resnet, Precision::kInt8);
    FAIL() << "a calibration of the wrong size ran";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("calibrate again"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Predictor(resnet, Precision::kInt8, Engine::kLibtorch), std::exception);
  VisionModel vit = create_model(small_config("vit_ti_16"));
  vit->mutable_config().int8_scales = std::vector<float>(47, 0.1f);  // one short
  EXPECT_THROW(Predictor(vit, Precision::kInt8), std::exception);
  // No images at all.
  EXPECT_THROW(resnet->calibrate_int8([] { return at::Tensor(); }), std::exception);
}

TEST(Int8, AQuantisedModelRoundTripsThroughSaveAndLoad) {
  if (!onednn::available()) GTEST_SKIP() << "built without oneDNN";
  at::manual_seed(13);
  VisionModel model = create_model(small_config("resnet18"));
  perturb(*model);
  model->mutable_config().int8_scales = calibrate(*model, 2);
  model->mutable_config().int8_report_json = R"({"accuracy": {"agreement": 0.995}})";
  const std::string dir = vitrine::test::temp_dir("int8_round_trip");
  save_model(*model, dir);
  VisionModel loaded = load_model(dir);
  EXPECT_EQ(loaded->config().int8_scales, model->config().int8_scales);
  EXPECT_NE(loaded->config().int8_report_json.find("0.995"), std::string::npos);
  const at::Tensor x = at::randn({3, 3, 64, 64});
  const at::Tensor a = Predictor(model, Precision::kInt8).logits(x);
  const at::Tensor b = Predictor(loaded, Precision::kInt8).logits(x);
  EXPECT_TRUE(at::equal(a, b));
}
