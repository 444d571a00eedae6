#include "vitrine/models/registry.h"

#include "resnet.h"
#include "vit.h"
#include "vitrine/core/error.h"

#include <cmath>
#include <functional>

namespace vitrine::models {
namespace {

struct Entry {
  const char* name;
  std::function<void(ModelConfig&)> set;
};

std::function<void(ModelConfig&)> resnet(bool bottleneck, std::vector<int64_t> layers) {
  return [=](ModelConfig& c) {
    c.family = Family::kResNet;
    c.resnet.bottleneck = bottleneck;
    c.resnet.layers = layers;
  };
}

std::function<void(ModelConfig&)> vit(int64_t patch, int64_t width, int64_t depth,
                                      int64_t heads, int64_t mlp) {
  return [=](ModelConfig& c) {
    c.family = Family::kViT;
    c.vit.patch_size = patch;
    c.vit.hidden_size = width;
    c.vit.num_hidden_layers = depth;
    c.vit.num_attention_heads = heads;
    c.vit.intermediate_size = mlp;
  };
}

const std::vector<Entry>& registry() {
  static const std::vector<Entry> entries = {
      {"resnet18", resnet(false, {2, 2, 2, 2})},
      {"resnet34", resnet(false, {3, 4, 6, 3})},
      {"resnet50", resnet(true, {3, 4, 6, 3})},
      {"resnet101", resnet(true, {3, 4, 23, 3})},
      {"resnet152", resnet(true, {3, 8, 36, 3})},
      {"resnet_custom", resnet(false, {2, 2, 2, 2})},
      // ViT-Ti and ViT-S are DeiT's sizes (Touvron et al. 2021), the rest the paper's.
      {"vit_ti_16", vit(16, 192, 12, 3, 768)},
      {"vit_s_16", vit(16, 384, 12, 6, 1536)},
      {"vit_b_16", vit(16, 768, 12, 12, 3072)},
      {"vit_b_32", vit(32, 768, 12, 12, 3072)},
      {"vit_l_16", vit(16, 1024, 24, 16, 4096)},
      {"vit_custom", vit(16, 768, 12, 12, 3072)},
  };
  return entries;
}

}  // namespace

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& e : registry()) names.emplace_back(e.name);
  return names;
}

void set_image_size(ModelConfig& config, int64_t image_size) {
  VT_CHECK(image_size > 0, "image size must be positive, got ", image_size);
  config.image_size = image_size;
  config.preprocess.crop = image_size;
  config.preprocess.resize = image_size * 256 / 224;
}

ModelConfig model_preset(const std::string& name) {
  for (const auto& e : registry()) {
    if (name == e.name) {
      ModelConfig c;
      c.arch = name;
      e.set(c);
      set_image_size(c, 224);
      return c;
    }
  }
  std::string known;
  for (const auto& n : model_names()) known += (known.empty() ? "" : ", ") + n;
  VT_FAIL("unknown architecture '", name, "'; known: ", known);
}

ModelConfig new_model_config(const std::string& arch, int64_t in_channels,
                             const std::string& stem) {
  ModelConfig cfg = model_preset(arch);
  VT_CHECK(in_channels == 1 || in_channels == 3, "--in-channels must be 1 or 3, got ", in_channels);
  cfg.in_channels = in_channels;
  if (in_channels == 1) {
    cfg.preprocess.mean = {0.5f};
    cfg.preprocess.std = {0.5f};
  }
  cfg.preprocess.channels = in_channels;
  if (!stem.empty()) {
    VT_CHECK(cfg.family == Family::kResNet, "--stem is for ResNets; ", arch, " is a ",
             family_name(cfg.family));
    cfg.resnet.stem = stem;
  }
  return cfg;
}

void set_eval_crop(ModelConfig& config, double crop_pct) {
  VT_CHECK(crop_pct > 0 && crop_pct <= 1, "the eval crop fraction must be in (0, 1], got ",
           crop_pct);
  config.preprocess.resize =
      static_cast<int64_t>(std::floor(config.image_size / crop_pct + 1e-9));
}

VisionModel create_model(const ModelConfig& config) {
  config.validate();
  if (config.family == Family::kViT) return ViT(config).ptr();
  return ResNet(config).ptr();
}

}  // namespace vitrine::models
