// Models by name, with torchvision's names and sizes.
#pragma once

#include "vitrine/models/config.h"
#include "vitrine/models/model.h"

#include <string>
#include <vector>

namespace vitrine::models {

/// Names of every registered architecture, in a stable order.
std::vector<std::string> model_names();

/// The configuration of a registered architecture with its defaults (1000 classes,
/// 3 channels, 224 pixels, torchvision's preprocessing). "vit_custom" starts from
/// vit_b_16's sizes; set its `vit` fields. Unknown names: error listing the known ones.
ModelConfig model_preset(const std::string& name);

/// Sets the input size and the matching eval transform (resize = size * 256 / 224,
/// crop = size, as torchvision's 224/256 ratio).
void set_image_size(ModelConfig& config, int64_t image_size);

/// The configuration of a new model for training from scratch: model_preset(arch) for
/// `in_channels` (1: grey data, normalised by mean 0.5 and std 0.5) with a ResNet `stem`
/// (empty: the preset's; an error for a ViT).
ModelConfig new_model_config(const std::string& arch, int64_t in_channels,
                             const std::string& stem = "");

/// Sets the eval transform's resize to image_size / crop_pct (timm's crop_pct; 1 = no crop).
void set_eval_crop(ModelConfig& config, double crop_pct);

/// Builds a randomly initialised model from a configuration.
VisionModel create_model(const ModelConfig& config);

}  // namespace vitrine::models
