#include "test_util.h"

#include "vitrine/core/error.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/registry.h"
#include "vitrine/train/optim.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>

using namespace vitrine;
using namespace vitrine::train;

namespace {

models::ModelConfig tiny_vit() { return test::tiny_vit_config(/*depth=*/3); }

}  // namespace

TEST(Schedule, WarmupThenCosine) {
  ScheduleOptions s;
  s.total_steps = 11;
  s.warmup_steps = 3;
  EXPECT_DOUBLE_EQ(lr_at(s, 0, 1.0), 1.0 / 3);
  EXPECT_DOUBLE_EQ(lr_at(s, 2, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(s, 3, 1.0), 1.0);  // cosine starts at the peak
  EXPECT_NEAR(lr_at(s, 7, 1.0), 0.5, 1e-12);  // half way through the 8 cosine steps
  EXPECT_NEAR(lr_at(s, 6, 1.0), 0.5 * (1 + std::cos(M_PI * 3 / 8)), 1e-12);
  s.min_lr = 0.1;
  EXPECT_NEAR(lr_at(s, 11, 1.0), 0.1, 1e-12);  // floor
}

TEST(Schedule, StepAndConstant) {
  ScheduleOptions s;
  s.name = "step";
  s.total_steps = 100;
  s.milestones = {30, 60};
  EXPECT_DOUBLE_EQ(lr_at(s, 29, 1.0), 1.0);
  EXPECT_NEAR(lr_at(s, 30, 1.0), 0.1, 1e-12);
  EXPECT_NEAR(lr_at(s, 99, 1.0), 0.01, 1e-12);
  s.name = "constant";
  EXPECT_DOUBLE_EQ(lr_at(s, 99, 0.3), 0.3);
  s.name = "linear";
  EXPECT_THROW(lr_at(s, 5, 1.0), Error);
}

TEST(ParamGroups, NoDecayOnBiasesNormsAndEmbeddings) {
  auto model = models::create_model(tiny_vit());
  OptimizerOptions o;
  o.weight_decay = 0.05;
  const auto groups = param_groups(*model, o);
  std::set<std::string> decayed, plain;
  for (const auto& g : groups) {
    for (const auto& n : g.names) (g.weight_decay > 0 ? decayed : plain).insert(n);
  }
  EXPECT_TRUE(plain.count("class_token"));
  EXPECT_TRUE(plain.count("encoder.pos_embedding"));
  EXPECT_TRUE(plain.count("encoder.layers.encoder_layer_0.ln_1.weight"));
  EXPECT_TRUE(plain.count("heads.head.bias"));
  EXPECT_TRUE(decayed.count("heads.head.weight"));
  EXPECT_TRUE(decayed.count("encoder.layers.encoder_layer_0.self_attention.in_proj_weight"));
  EXPECT_EQ(decayed.size() + plain.size(), model->parameters().size());
}

TEST(ParamGroups, LayerDecayScalesDeeperLayersLess) {
  auto model = models::create_model(tiny_vit());
  OptimizerOptions o;
  o.layer_decay = 0.5;
  std::map<std::string, double> scale;
  for (const auto& g : param_groups(*model, o)) {
    for (const auto& n : g.names) scale[n] = g.lr_scale;
  }
  EXPECT_DOUBLE_EQ(scale["heads.head.weight"], 1.0);
  EXPECT_DOUBLE_EQ(scale["encoder.layers.encoder_layer_2.mlp.0.weight"], 0.5);
  EXPECT_DOUBLE_EQ(scale["encoder.layers.encoder_layer_0.mlp.0.weight"], 0.125);
  EXPECT_DOUBLE_EQ(scale["conv_proj.weight"], 0.0625);

  // The optimiser follows the schedule times each group's scale, the floor included: every
  // group keeps its ratio to the head's rate from the first step to the last.
  o.lr = 1e-3;
  const auto groups = param_groups(*model, o);
  auto optimizer = make_optimizer(groups, o);
  ScheduleOptions sched;
  sched.total_steps = 10;
  sched.warmup_steps = 2;
  sched.min_lr = 1e-4;
  for (const int64_t step : {0, 5, 10}) {
    apply_schedule(*optimizer, groups, o, sched, step);
    for (size_t i = 0; i < groups.size(); ++i) {
      EXPECT_NEAR(optimizer->param_groups()[i].options().get_lr(),
                  groups[i].lr_scale * lr_at(sched, step, o.lr), 1e-15)
          << "step " << step << ", group " << i;
    }
  }
}

TEST(ParamGroups, ResNetLayerDecayScalesEachResidualBlock) {
  models::ModelConfig c = models::model_preset("resnet18");  // 2 blocks in each of 4 stages
  models::set_image_size(c, 32);
  auto model = models::create_model(c);
  OptimizerOptions o;
  o.layer_decay = 0.5;
  std::map<std::string, double> scale;
  for (const auto& g : param_groups(*model, o)) {
    for (const auto& n : g.names) scale[n] = g.lr_scale;
  }
  // Head depth 9; layer4.1 is block 8, layer1.0 block 1, the stem 0.
  EXPECT_DOUBLE_EQ(scale.at("fc.weight"), 1.0);
  EXPECT_DOUBLE_EQ(scale.at("layer4.1.conv2.weight"), 0.5);
  EXPECT_DOUBLE_EQ(scale.at("layer4.0.downsample.0.weight"), 0.25);
  EXPECT_DOUBLE_EQ(scale.at("layer2.0.bn1.bias"), std::pow(0.5, 6));
  EXPECT_DOUBLE_EQ(scale.at("layer1.0.conv1.weight"), std::pow(0.5, 8));
  EXPECT_DOUBLE_EQ(scale.at("conv1.weight"), std::pow(0.5, 9));
  EXPECT_DOUBLE_EQ(scale.at("bn1.weight"), std::pow(0.5, 9));
  EXPECT_EQ(scale.size(), model->parameters().size());
}

TEST(Freeze, BackboneLeavesOnlyTheHead) {
  auto model = models::create_model(tiny_vit());
  const int64_t frozen = apply_freeze(*model, "backbone");
  int64_t trainable = 0;
  for (const auto& p : model->named_parameters()) {
    if (p.value().requires_grad()) {
      ++trainable;
      EXPECT_EQ(p.key().rfind("heads.head.", 0), 0u) << p.key();
    }
  }
  EXPECT_EQ(trainable, 2);
  EXPECT_EQ(frozen + trainable, static_cast<int64_t>(model->parameters().size()));
}

TEST(Freeze, UntilModuleAndErrors) {
  models::ModelConfig c = models::model_preset("resnet18");
  models::set_image_size(c, 32);
  auto model = models::create_model(c);
  apply_freeze(*model, "until:layer3");
  for (const auto& p : model->named_parameters()) {
    const bool before = p.key().rfind("layer3", 0) != 0 && p.key().rfind("layer4", 0) != 0 &&
                        p.key().rfind("fc", 0) != 0;
    EXPECT_EQ(p.value().requires_grad(), !before) << p.key();
  }
  // A training step moves the running statistics of the batch norms it trains, not of the
  // frozen ones.
  model->train();
  hold_frozen_batch_norms(*model);
  auto buffer = [&](const std::string& name) {
    for (const auto& b : model->named_buffers()) {
      if (b.key() == name) return b.value().clone();
    }
    ADD_FAILURE() << "no buffer " << name;
    return at::Tensor();
  };
  const at::Tensor frozen_before = buffer("layer1.0.bn1.running_mean");
  const at::Tensor trained_before = buffer("layer3.0.bn1.running_mean");
  model->forward(at::randn({4, 3, 32, 32}));
  EXPECT_TRUE(at::equal(buffer("layer1.0.bn1.running_mean"), frozen_before));
  EXPECT_FALSE(at::equal(buffer("layer3.0.bn1.running_mean"), trained_before));
  EXPECT_THROW(apply_freeze(*model, "until:layer9"), Error);
  EXPECT_THROW(apply_freeze(*model, "head"), Error);
}

TEST(Optimizer, FrozenTensorsStayBitIdentical) {
  auto model = models::create_model(tiny_vit());
  apply_freeze(*model, "until:encoder.layers.encoder_layer_2");
  std::vector<std::pair<std::string, at::Tensor>> before;
  for (const auto& [n, t] : models::model_state_dict(*model)) before.emplace_back(n, t.clone());
  OptimizerOptions o;
  const auto groups = param_groups(*model, o);
  auto opt = make_optimizer(groups, o);
  for (int i = 0; i < 3; ++i) {
    opt->zero_grad();
    model->forward(at::randn({4, 3, 32, 32})).pow(2).mean().backward();
    opt->step();
  }
  const auto after = models::model_state_dict(*model);
  for (size_t i = 0; i < after.size(); ++i) {
    const bool frozen = after[i].first.rfind("encoder.layers.encoder_layer_2", 0) != 0 &&
                        after[i].first.rfind("encoder.ln", 0) != 0 &&
                        after[i].first.rfind("heads", 0) != 0;
    EXPECT_EQ(at::equal(before[i].second, after[i].second), frozen) << after[i].first;
  }
}

TEST(Optimizer, SgdNesterovNeedsMomentum) {
  auto model = models::create_model(tiny_vit());
  OptimizerOptions o;
  o.name = "sgd";
  o.nesterov = true;
  o.momentum = 0;
  EXPECT_THROW(make_optimizer(param_groups(*model, o), o), Error);
  o.name = "lamb";
  EXPECT_THROW(make_optimizer(param_groups(*model, o), o), Error);
}
