// LoRA adapter files: what `vitrine train --lora-rank ... --save-adapter` writes beside each
// saved model (the adapters and the head alone, a few hundred KB for a shared backbone), and
// `vitrine merge-adapter`, which applies one to its backbone again.
#pragma once

#include "vitrine/models/model.h"

#include <string>

namespace vitrine::models {

/// Writes `model`'s adapter tensors (names holding "lora_") and its head to `path`, with the
/// adapter settings, the model's configuration and the SHA-256 of the backbone's weights
/// (`base_dir`/model.safetensors) in the metadata.
void save_adapter(const VisionModelImpl& model, const LoraOptions& lora,
                  const std::string& base_dir, const std::string& path);

/// The backbone in `base_dir` with the adapter file applied: its configuration (classes,
/// preprocessing), its head and its adapters, which save_model merges into the weights.
/// Throws when the file is no adapter, or was trained on other backbone weights.
VisionModel apply_adapter(const std::string& base_dir, const std::string& adapter_path);

}  // namespace vitrine::models
