// Smaller and cheaper models: structured pruning (include/vitrine/models/prune.h) and Token
// Merging (src/models/tome.h). Both are checked where the answer is known exactly: removing
// units whose output is always zero, and merging tokens that are exact duplicates, must not
// change what the network computes.
#include "models/onednn.h"
#include "models/tome.h"
#include "test_util.h"
#include "vitrine/core/fs.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"
#include "vitrine/models/prune.h"
#include "vitrine/models/registry.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

using namespace vitrine::models;

namespace {

double relative_error(const at::Tensor& a, const at::Tensor& ref) {
  return (a - ref).abs().max().item<double>() / (ref.abs().max().item<double>() + 1e-12);
}

at::Tensor logits(VisionModelImpl& model, const at::Tensor& x) {
  at::NoGradGuard no_grad;
  model.eval();
  return model.forward(x);
}

/// The parameter or buffer `name` (a handle on the model's own storage).
at::Tensor param(VisionModelImpl& m, const std::string& name) {
  const auto params = m.named_parameters();
  if (const auto* p = params.find(name)) return *p;
  const auto buffers = m.named_buffers();
  if (const auto* b = buffers.find(name)) return *b;
  ADD_FAILURE() << "no tensor " << name;
  return at::empty({0});
}

/// Indices 0..n-1 of which a seeded random `share` are picked.
std::vector<int64_t> pick(int64_t n, double share, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor order = at::randperm(n);
  const auto k = static_cast<int64_t>(static_cast<double>(n) * share);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < k; ++i) out.push_back(order[i].item<int64_t>());
  return out;
}

/// Batch-norm statistics and affine parameters away from 0 and 1, so that every channel
/// carries signal.
void perturb_norms(VisionModelImpl& model) {
  at::NoGradGuard no_grad;
  for (auto& item : model.named_buffers()) {
    if (item.key().find("running_mean") != std::string::npos) item.value().uniform_(-0.3, 0.3);
    if (item.key().find("running_var") != std::string::npos) item.value().uniform_(0.5, 2.0);
  }
  for (auto& item : model.named_parameters()) {
    if (item.key().find(".bn") == std::string::npos && item.key().find("bn1") == std::string::npos)
      continue;
    if (item.key().find("weight") != std::string::npos) item.value().uniform_(0.5, 1.5);
    if (item.key().find("bias") != std::string::npos) item.value().uniform_(-0.2, 0.2);
  }
}

}  // namespace

TEST(Prune, RemovingDeadResNetChannelsChangesNothing) {
  for (const std::string arch : {"resnet18", "resnet50"}) {
    ModelConfig c = model_preset(arch);
    set_image_size(c, 64);
    c.num_classes = 5;
    at::manual_seed(1);
    VisionModel model = create_model(c);
    perturb_norms(*model);
    // 40% of each block's inner channels output zero (gamma = beta = 0 after the ReLU), so
    // pruning 30% can only remove dead ones.
    const int64_t inner = c.resnet.bottleneck ? 2 : 1;
    int64_t block = 0;
    {
      at::NoGradGuard no_grad;
      for (size_t stage = 0; stage < c.resnet.layers.size(); ++stage) {
        for (int64_t b = 0; b < c.resnet.layers[stage]; ++b, ++block) {
          for (int64_t k = 1; k <= inner; ++k) {
            const std::string bn = "layer" + std::to_string(stage + 1) + "." + std::to_string(b) +
                                   ".bn" + std::to_string(k) + ".";
            at::Tensor gamma = param(*model, bn + "weight");
            for (const int64_t i : pick(gamma.size(0), 0.4, 100 * block + k)) {
              gamma[i].zero_();
              param(*model, bn + "bias")[i].zero_();
            }
          }
        }
      }
    }
    const at::Tensor x = at::randn({2, 3, 64, 64});
    const at::Tensor before = logits(*model, x);
    PruneOptions o;
    o.ratio = 0.3;
    const PruneResult r = prune_model(*model, o);
    EXPECT_LT(r.params_after, r.params_before) << arch;
    const auto& widths = r.model->config().resnet.block_widths;
    ASSERT_EQ(static_cast<int64_t>(widths.size()), block) << arch;
    // Stage 1's 64 inner channels: 45 kept, rounded up to a multiple of 8.
    EXPECT_EQ(widths[0][0], 48) << arch;
    EXPECT_LT(relative_error(logits(*r.model, x), before), 1e-5) << arch << ": " << r.summary;
  }
}

TEST(Prune, RemovingDeadViTHeadsAndMlpUnitsChangesNothing) {
  ModelConfig c = model_preset("vit_ti_16");  // 3 heads of 64, MLP 768
  c.vit.num_hidden_layers = 3;
  set_image_size(c, 48);
  c.num_classes = 4;
  at::manual_seed(2);
  VisionModel model = create_model(c);
  {
    at::NoGradGuard no_grad;
    for (int64_t i = 0; i < 3; ++i) {
      const std::string pre = "encoder.layers.encoder_layer_" + std::to_string(i) + ".";
      // Head i writes nothing (its value rows and biases are zero)...
      const int64_t d = 192, hd = 64;
      param(*model, pre + "self_attention.in_proj_weight").narrow(0, 2 * d + i * hd, hd).zero_();
      param(*model, pre + "self_attention.in_proj_bias").uniform_(-0.1, 0.1);
      param(*model, pre + "self_attention.in_proj_bias").narrow(0, 2 * d + i * hd, hd).zero_();
      // ...and 40% of the MLP units never fire (GELU(0) = 0).
      for (const int64_t u : pick(768, 0.4, 10 + i)) {
        param(*model, pre + "mlp.0.weight")[u].zero_();
        param(*model, pre + "mlp.0.bias")[u].zero_();
      }
    }
  }
  const at::Tensor x = at::randn({2, 3, 48, 48});
  const at::Tensor before = logits(*model, x);
  const PruneResult r = prune_model(*model, PruneOptions{0.3, 8});
  const auto& v = r.model->config().vit;
  EXPECT_EQ(v.layer_heads, (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(v.layer_intermediate_sizes, (std::vector<int64_t>{544, 544, 544}));  // 537.6 -> 544
  EXPECT_LT(relative_error(logits(*r.model, x), before), 1e-5) << r.summary;
}

TEST(Prune, PrunedModelsSaveLoadAndRunOnEveryEngine) {
  for (const std::string arch : {"resnet50", "vit_custom"}) {
    ModelConfig c = model_preset(arch);
    set_image_size(c, c.family == Family::kViT ? 48 : 64);
    if (c.family == Family::kViT) {
      c.vit = model_preset("vit_ti_16").vit;
      c.vit.num_hidden_layers = 2;
    }
    c.num_classes = 3;
    at::manual_seed(4);
    VisionModel model = create_model(c);
    perturb_norms(*model);
    const PruneResult r = prune_model(*model, PruneOptions{0.5, 8});
    const std::string dir = vitrine::test::temp_dir("pruned-" + arch);
    save_model(*r.model, dir);
    VisionModel loaded = load_model(dir);
    const at::Tensor x = at::randn({3, 3, c.image_size, c.image_size});
    const at::Tensor ref = logits(*r.model, x);
    EXPECT_TRUE(logits(*loaded, x).equal(ref)) << arch;
    if (onednn::available()) {
      const Predictor fused(loaded, Precision::kFp32, Engine::kFused);
      EXPECT_LT(relative_error(fused.logits(x), ref), 1e-4) << arch;
    }
    // A model that was not pruned keeps writing the first config format.
    const std::string plain = vitrine::test::temp_dir("plain-" + arch);
    save_model(*model, plain);
    EXPECT_EQ(load_model_config(plain).resnet.block_widths.size(), 0U);
    EXPECT_EQ(
        nlohmann::json::parse(vitrine::read_text_file(plain + "/config.json")).at("vitrine_format"),
        1);
    EXPECT_EQ(
        nlohmann::json::parse(vitrine::read_text_file(dir + "/config.json")).at("vitrine_format"),
        2);
    if (c.family == Family::kViT) {
      // Token merging alone is format 2 too: a reader of format 1 would not merge.
      ModelConfig merged = model->config();
      merged.vit.tome_r = 2;
      EXPECT_EQ(nlohmann::json::parse(config_to_json(merged)).at("vitrine_format"), 2);
    }
  }
}

TEST(Prune, RatiosOutsideTheRangeAreRefused) {
  ModelConfig c = model_preset("resnet18");
  set_image_size(c, 32);
  VisionModel model = create_model(c);
  EXPECT_CONTAINS(vitrine::test::error_of([&] {
                    prune_model(*model, PruneOptions{1.0, 8});
                  }),
                  "in [0, 1)");
}

TEST(TokenMerging, MergesTheMostSimilarPairAndKeepsTheClassTokenFirst) {
  // Tokens alternate into sets A = {cls, t2, t4} and B = {t1, t3}; t2 is closest to t3.
  const at::Tensor x =
      at::tensor({9.f, 9.f, 1.f, 0.f, 0.f, 1.f, 1.f, 0.1f, -1.f, 0.f}).view({1, 5, 2});
  const auto [merged, size] = tome::merge(x, at::Tensor(), x, 1);
  const at::Tensor expected =
      at::tensor({9.f, 9.f, -1.f, 0.f, 1.f, 0.f, 0.5f, 0.55f}).view({1, 4, 2});
  EXPECT_TRUE(at::allclose(merged, expected)) << merged;
  EXPECT_TRUE(size.view({-1}).equal(at::tensor({1.f, 1.f, 1.f, 2.f}))) << size;
  // Sizes weigh later merges: t (size 2) and u (size 1) average 2:1.
  const at::Tensor y = at::tensor({0.f, 0.f, 3.f, 0.f, 0.f, 1.f}).view({1, 3, 2});
  const at::Tensor s = at::tensor({1.f, 1.f, 2.f}).view({1, 3, 1});
  const at::Tensor keys = at::tensor({0.f, 1.f, 1.f, 0.f, 1.f, 0.f}).view({1, 3, 2});
  const auto [m2, s2] = tome::merge(y, s, keys, 1);
  EXPECT_TRUE(at::allclose(m2, at::tensor({0.f, 0.f, 1.f, 2.f / 3}).view({1, 2, 2}))) << m2;
  EXPECT_TRUE(s2.view({-1}).equal(at::tensor({1.f, 3.f})));
  // Never more than half of the tokens besides the class token.
  EXPECT_EQ(tome_merges(197, 100), 98);
  EXPECT_EQ(tome_merges(5, 1), 1);
  EXPECT_EQ(tome_merges(2, 4), 0);
}

TEST(TokenMerging, MergingDuplicateTokensChangesNothing) {
  // Without position embeddings, a photo of one flat colour makes every patch token the
  // same; merged duplicates under proportional attention must leave the class token's
  // embedding as it was.
  ModelConfig c = model_preset("vit_ti_16");
  c.vit.num_hidden_layers = 4;
  set_image_size(c, 64);  // 16 patches and the class token
  c.num_classes = 0;
  at::manual_seed(5);
  VisionModel model = create_model(c);
  {
    at::NoGradGuard no_grad;
    param(*model, "encoder.pos_embedding").zero_();
    param(*model, "class_token").normal_(0, 1);
  }
  const at::Tensor x = at::ones({2, 3, 64, 64}) * at::tensor({0.3f, -0.7f}).view({2, 1, 1, 1});
  const at::Tensor plain = logits(*model, x);
  VisionModel merged = create_model([&] {
    ModelConfig m = c;
    m.vit.tome_r = 3;  // 17 -> 14 -> 11 -> 8 -> 5 tokens
    return m;
  }());
  load_state_dict(*merged, model_state_dict(*model));
  EXPECT_LT(relative_error(logits(*merged, x), plain), 1e-5);
  if (onednn::available()) {
    const Predictor fused(merged, Precision::kFp32, Engine::kFused);
    EXPECT_LT(relative_error(fused.embeddings(x), plain), 1e-5);
  }
  // Distinct patches do change: merging is not a no-op.
  const at::Tensor photo = at::randn({2, 3, 64, 64});
  EXPECT_GT(relative_error(logits(*merged, photo), logits(*model, photo)), 1e-3);
}

TEST(TokenMerging, TheFusedPathMatchesLibtorchAndShortensTheStream) {
  ModelConfig c = model_preset("vit_ti_16");
  c.vit.num_hidden_layers = 3;
  c.vit.tome_r = 4;
  set_image_size(c, 80);  // 25 patches and the class token: 26 -> 22 -> 18 -> 14
  c.num_classes = 6;
  at::manual_seed(6);
  VisionModel model = create_model(c);
  const at::Tensor x = at::randn({3, 3, 80, 80});
  const at::Tensor ref = logits(*model, x);
  if (!onednn::available()) GTEST_SKIP() << "built without oneDNN";
  for (const Precision p : {Precision::kFp32, Precision::kBf16}) {
    const Predictor fused(model, p, Engine::kFused);
    EXPECT_LT(relative_error(fused.logits(x), ref), p == Precision::kFp32 ? 1e-4 : 5e-2);
  }
  onednn::ViTWeights w;
  w.head_dim = 8;
  w.tome_r = 4;
  for (int i = 0; i < 3; ++i) {
    w.blocks.push_back({at::ones({16}), at::zeros({16}), at::randn({48, 16}), at::randn({48}),
                        at::randn({16, 16}), at::randn({16}), at::ones({16}), at::zeros({16}),
                        at::randn({32, 16}), at::randn({32}), at::randn({16, 32}),
                        at::randn({16})});
  }
  const onednn::ViTEncoder encoder(w, at::kFloat);
  EXPECT_EQ(encoder.forward(at::randn({2, 26, 16})).sizes(), (at::IntArrayRef{2, 14, 16}));
}
