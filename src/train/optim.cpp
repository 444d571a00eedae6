#include "vitrine/train/optim.h"

#include "vitrine/core/error.h"

#include <torch/nn/modules/batchnorm.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <regex>

namespace vitrine::train {
namespace {

bool no_decay(const std::string& name, const at::Tensor& p) {
  // timm's rule: 1-d tensors (biases, norm scales) and the token/position embeddings.
  return p.dim() <= 1 || name == "class_token" || name == "encoder.pos_embedding";
}

// Depth of a ViT parameter for layer-wise decay: 0 for the embeddings, i + 1 for encoder
// block i, depth + 1 for the final norm and the head (as BEiT/timm assign them).
int64_t vit_layer_id(const std::string& name, int64_t depth) {
  static const std::regex block(R"(^encoder\.layers\.encoder_layer_(\d+)\.)");
  std::smatch m;
  if (std::regex_search(name, m, block)) return std::stoll(m[1]) + 1;
  if (name == "class_token" || name == "encoder.pos_embedding" || name.rfind("conv_proj", 0) == 0) {
    return 0;
  }
  return depth + 1;
}

// Depth of a ResNet parameter, as timm groups a ResNet for layer-wise decay: 0 for the stem
// (conv1, bn1), one depth per residual block in order (layer1.0 is 1), and depth + 1 (depth:
// the blocks in all) for the head.
int64_t resnet_layer_id(const std::string& name, const std::vector<int64_t>& stages,
                        int64_t depth) {
  static const std::regex block(R"(^layer(\d+)\.(\d+)\.)");
  std::smatch m;
  if (std::regex_search(name, m, block)) {
    const auto stage = static_cast<size_t>(std::stoll(m[1]));
    int64_t id = std::stoll(m[2]) + 1;
    for (size_t i = 0; i + 1 < stage && i < stages.size(); ++i) id += stages[i];
    return id;
  }
  if (name.rfind("conv1.", 0) == 0 || name.rfind("bn1.", 0) == 0) return 0;
  return depth + 1;
}

}  // namespace

double lr_at(const ScheduleOptions& s, int64_t step, double base_lr) {
  VT_CHECK(s.total_steps > 0, "the schedule needs a positive number of steps");
  if (step < s.warmup_steps) return base_lr * static_cast<double>(step + 1) / s.warmup_steps;
  if (s.name == "constant") return base_lr;
  if (s.name == "step") {
    double lr = base_lr;
    for (const int64_t m : s.milestones) {
      if (step >= m) lr *= s.gamma;
    }
    return lr;
  }
  VT_CHECK(s.name == "cosine", "unknown schedule '", s.name, "'; use cosine, step or constant");
  const int64_t span = std::max<int64_t>(1, s.total_steps - s.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - s.warmup_steps) / span);
  return s.min_lr + 0.5 * (base_lr - s.min_lr) * (1.0 + std::cos(M_PI * progress));
}

std::vector<ParamGroup> param_groups(const models::VisionModelImpl& model,
                                     const OptimizerOptions& o) {
  VT_CHECK(o.layer_decay > 0 && o.layer_decay <= 1, "--layer-decay must be in (0, 1], got ",
           o.layer_decay);
  const auto& config = model.config();
  const bool vit = config.family == models::Family::kViT;
  const bool layered = o.layer_decay < 1.0;
  int64_t depth = config.vit.num_hidden_layers;
  if (!vit) {
    depth = 0;
    for (const int64_t n : config.resnet.layers) depth += n;
  }
  std::map<std::pair<int64_t, bool>, ParamGroup> groups;  // (layer, decay) -> group
  for (const auto& item : model.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    const bool decay = !no_decay(item.key(), item.value());
    int64_t layer = 0;
    if (layered) {
      layer = vit ? vit_layer_id(item.key(), depth)
                  : resnet_layer_id(item.key(), config.resnet.layers, depth);
    }
    ParamGroup& g = groups[{layer, decay}];
    g.params.push_back(item.value());
    g.names.push_back(item.key());
    g.weight_decay = decay ? o.weight_decay : 0.0;
    g.lr_scale = layered ? std::pow(o.layer_decay, static_cast<double>(depth + 1 - layer)) : 1.0;
  }
  std::vector<ParamGroup> out;
  for (auto& [key, g] : groups) out.push_back(std::move(g));
  VT_CHECK(!out.empty(), "nothing to train: every parameter is frozen");
  return out;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::vector<ParamGroup>& groups,
                                                        const OptimizerOptions& o) {
  VT_CHECK(o.lr > 0, "--lr must be positive, got ", o.lr);
  VT_CHECK(o.weight_decay >= 0, "--weight-decay must be >= 0, got ", o.weight_decay);
  if (o.name == "adamw") {
    std::vector<torch::optim::OptimizerParamGroup> pg;
    for (const auto& g : groups) {
      auto opt = std::make_unique<torch::optim::AdamWOptions>(o.lr * g.lr_scale);
      opt->betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(g.weight_decay);
      pg.emplace_back(g.params, std::move(opt));
    }
    return std::make_unique<torch::optim::AdamW>(std::move(pg),
                                                 torch::optim::AdamWOptions(o.lr));
  }
  VT_CHECK(o.name == "sgd", "unknown optimizer '", o.name, "'; use adamw or sgd");
  VT_CHECK(!o.nesterov || o.momentum > 0, "--nesterov needs --momentum > 0");
  std::vector<torch::optim::OptimizerParamGroup> pg;
  for (const auto& g : groups) {
    auto opt = std::make_unique<torch::optim::SGDOptions>(o.lr * g.lr_scale);
    opt->momentum(o.momentum).nesterov(o.nesterov).weight_decay(g.weight_decay);
    pg.emplace_back(g.params, std::move(opt));
  }
  return std::make_unique<torch::optim::SGD>(std::move(pg), torch::optim::SGDOptions(o.lr));
}

void apply_schedule(torch::optim::Optimizer& optimizer, const std::vector<ParamGroup>& groups,
                    const OptimizerOptions& o, const ScheduleOptions& schedule, int64_t step) {
  auto& pgs = optimizer.param_groups();
  VT_DCHECK(pgs.size() == groups.size());
  for (size_t i = 0; i < pgs.size(); ++i) {
    // The whole schedule scaled, floor included (as timm and BEiT/MAE scale it): a floor
    // left unscaled would raise the lowest layers' rate towards the end and undo the decay.
    pgs[i].options().set_lr(groups[i].lr_scale * lr_at(schedule, step, o.lr));
  }
}

int64_t apply_freeze(models::VisionModelImpl& model, const std::string& spec) {
  int64_t frozen = 0;
  if (spec == "none") return 0;
  const std::string head = model.head_name() + ".";
  if (spec == "backbone") {
    for (auto& item : model.named_parameters()) {
      if (item.key().rfind(head, 0) != 0) {
        item.value().set_requires_grad(false);
        ++frozen;
      }
    }
    return frozen;
  }
  VT_CHECK(spec.rfind("until:", 0) == 0, "--freeze must be none, backbone or until:<module>, got '",
           spec, "'");
  const std::string stop = spec.substr(6);
  bool found = false;
  for (auto& item : model.named_parameters()) {
    if (item.key() == stop || item.key().rfind(stop + ".", 0) == 0) {
      found = true;
      break;
    }
    item.value().set_requires_grad(false);
    ++frozen;
  }
  VT_CHECK(found, "--freeze until:", stop, ": no such module in ", model.config().arch,
           " (module paths are checkpoint key prefixes, e.g. layer3 or "
           "encoder.layers.encoder_layer_6)");
  return frozen;
}

bool has_batch_norms(models::VisionModelImpl& model) {
  const auto modules = model.modules(/*include_self=*/false);
  return std::any_of(modules.begin(), modules.end(), [](const auto& m) {
    return m->template as<torch::nn::BatchNorm2dImpl>() ||
           m->template as<torch::nn::BatchNorm1dImpl>();
  });
}

namespace {

bool is_frozen_batch_norm(const torch::nn::Module& m) {
  const auto params = m.parameters();
  return !params.empty() && std::none_of(params.begin(), params.end(),
                                         [](const at::Tensor& p) { return p.requires_grad(); });
}

}  // namespace

void hold_frozen_batch_norms(models::VisionModelImpl& model) {
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (m->as<torch::nn::BatchNorm2dImpl>() && is_frozen_batch_norm(*m)) m->eval();
  }
}

bool has_training_batch_norms(models::VisionModelImpl& model) {
  const auto modules = model.modules(/*include_self=*/false);
  return std::any_of(modules.begin(), modules.end(), [](const auto& m) {
    return (m->template as<torch::nn::BatchNorm2dImpl>() && !is_frozen_batch_norm(*m)) ||
           m->template as<torch::nn::BatchNorm1dImpl>();
  });
}

}  // namespace vitrine::train
