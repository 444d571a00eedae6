// LoRA adapters on the ViT: the unmerged forward (W x + s B A x) against the merged weights
// that saved models and the inference path use.
#include "test_util.h"

#include "vitrine/models/checkpoint.h"
#include "vitrine/models/registry.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

using namespace vitrine;

namespace {

std::set<std::string> names(const StateDict& s) {
  std::set<std::string> out;
  for (const auto& [n, t] : s) out.insert(n);
  return out;
}

}  // namespace

TEST(Lora, MergedLogitsEqualUnmergedOnes) {
  at::manual_seed(5);
  const auto cfg = test::tiny_vit_config(3);
  auto model = models::create_model(cfg);
  model->eval();
  const at::Tensor x = at::randn({4, 3, 32, 32});
  at::NoGradGuard no_grad;
  const at::Tensor before = model->forward(x);
  const StateDict plain = models::model_state_dict(*model);

  models::LoraOptions o;
  o.rank = 4;
  o.alpha = 8;
  EXPECT_EQ(model->add_lora(o), 3 * 4);  // 3 blocks x (qkv, proj, fc1, fc2)
  EXPECT_DOUBLE_EQ(model->lora_scale(), 2.0);
  // B starts at zero: the adapted model is the model.
  EXPECT_EQ(test::max_abs_diff(model->forward(x), before), 0.0);
  int64_t adapters = 0;
  for (auto& item : model->named_parameters()) {
    if (item.key().find("lora_") == std::string::npos) continue;
    ++adapters;
    if (item.key().back() == 'B') item.value().normal_(0, 0.05);  // as if trained
  }
  EXPECT_EQ(adapters, 3 * 4 * 2);
  const at::Tensor unmerged = model->forward(x);
  EXPECT_GT(test::max_abs_diff(unmerged, before), 1e-3) << "the adapters changed nothing";

  // Saved weights: adapters merged, adapter tensors gone, the plain model's keys.
  const StateDict deployable = model->deployable_state_dict();
  EXPECT_EQ(names(deployable), names(plain));
  auto merged = models::create_model(cfg);
  models::load_state_dict(*merged, deployable);
  merged->eval();
  EXPECT_LT(test::max_abs_diff(merged->forward(x), unmerged), 1e-5);
  // The live model's own weights are untouched by merging.
  for (const auto& [n, t] : models::model_state_dict(*model)) {
    for (const auto& [pn, pt] : plain) {
      if (pn == n) {
        EXPECT_TRUE(at::equal(t, pt)) << n;
      }
    }
  }
  // The inference path merges them too.
  model->prepare_inference(at::kFloat, /*fused=*/false);
  EXPECT_LT(test::max_abs_diff(model->forward_inference(x), unmerged), 1e-5);
}

TEST(Lora, TargetsAndBadSettings) {
  auto model = models::create_model(test::tiny_vit_config(2));
  models::LoraOptions o;
  o.rank = 2;
  o.targets = {"qkv"};
  EXPECT_EQ(model->add_lora(o), 2);
  int64_t a = 0;
  for (auto& item : model->named_parameters()) {
    if (item.key().find("lora_") != std::string::npos) {
      EXPECT_NE(item.key().find("self_attention.lora_qkv_"), std::string::npos) << item.key();
      ++a;
    }
  }
  EXPECT_EQ(a, 4);
  EXPECT_CONTAINS(test::error_of([&] { model->add_lora(o); }), "already has LoRA");
  auto fresh = models::create_model(test::tiny_vit_config(2));
  o.targets = {"query"};
  EXPECT_CONTAINS(test::error_of([&] { fresh->add_lora(o); }), "unknown 'query'");
  o.targets = {"qkv"};
  o.rank = 0;
  EXPECT_CONTAINS(test::error_of([&] { fresh->add_lora(o); }), "--lora-rank");
  o.rank = 4096;
  EXPECT_CONTAINS(test::error_of([&] { fresh->add_lora(o); }), "low rank");
  auto resnet = models::create_model(models::model_preset("resnet18"));
  o.rank = 4;
  EXPECT_CONTAINS(test::error_of([&] { resnet->add_lora(o); }), "not yet supported for resnet18");
}
