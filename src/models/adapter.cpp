#include "vitrine/models/adapter.h"

#include "vitrine/core/error.h"
#include "vitrine/core/hash.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/registry.h"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace vitrine::models {

namespace fs = std::filesystem;
using json = nlohmann::json;

void save_adapter(const VisionModelImpl& model, const LoraOptions& lora,
                  const std::string& base_dir, const std::string& path) {
  StateDict tensors;
  const std::string head = model.head_name() + ".";
  for (auto& [name, t] : model_state_dict(model)) {
    if (name.find("lora_") != std::string::npos || name.rfind(head, 0) == 0) {
      tensors.emplace_back(name, t);
    }
  }
  const std::string weights = (fs::path(base_dir) / "model.safetensors").string();
  safetensors_save(path, tensors,
                   {{"format", "vitrine-lora"},
                    {"lora_rank", std::to_string(lora.rank)},
                    {"lora_alpha", json(lora.alpha).dump()},
                    {"lora_targets", json(lora.targets).dump()},
                    {"config", config_to_json(model.config())},
                    {"base", base_dir},
                    {"base_sha256", fs::exists(weights) ? sha256_file(weights) : ""}});
}

VisionModel apply_adapter(const std::string& base_dir, const std::string& adapter_path) {
  const SafetensorsFile file = safetensors_load(adapter_path);
  const auto meta = [&](const char* key) {
    const auto it = file.metadata.find(key);
    VT_CHECK(it != file.metadata.end(), adapter_path, " is not a LoRA adapter file (no '", key,
             "' in its metadata); it is written by `vitrine train --lora-rank N --save-adapter`");
    return it->second;
  };
  VT_CHECK(meta("format") == "vitrine-lora", adapter_path, " is not a LoRA adapter file");
  const ModelConfig base = load_model_config(base_dir);
  ModelConfig cfg = config_from_json(meta("config"), adapter_path);
  VT_CHECK(cfg.arch == base.arch && cfg.image_size == base.image_size &&
               cfg.in_channels == base.in_channels,
           adapter_path, " adapts a ", cfg.arch, " at ", cfg.image_size, " px, but ", base_dir,
           " holds a ", base.arch, " at ", base.image_size, " px");
  const std::string weights = (fs::path(base_dir) / "model.safetensors").string();
  const std::string expected = meta("base_sha256");
  VT_CHECK(expected.empty() || sha256_file(weights) == expected, adapter_path,
           " was trained on another backbone (its weights' SHA-256 differs from ", weights,
           "'s); apply it to the backbone it was trained from (", meta("base"), ")");
  LoraOptions lora;
  lora.rank = std::stoll(meta("lora_rank"));
  lora.alpha = json::parse(meta("lora_alpha")).get<double>();
  lora.targets = json::parse(meta("lora_targets")).get<std::vector<std::string>>();
  VisionModel model = create_model(cfg);
  model->add_lora(lora);
  // The backbone's weights (its own head, if any, left out) and the adapter's tensors.
  StateDict state;
  const std::string head = model->head_name() + ".";
  for (auto& [name, t] : safetensors_load(weights).tensors) {
    if (name.rfind(head, 0) != 0) state.emplace_back(name, t);
  }
  for (const auto& item : file.tensors) state.push_back(item);
  LoadOptions lo;
  lo.hint = "the adapter does not fit this backbone";
  load_state_dict(*model, state, lo);
  return model;
}

}  // namespace vitrine::models
