#include "vitrine/models/model_dir.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/registry.h"

#include <filesystem>

namespace vitrine::models {
namespace fs = std::filesystem;

void save_model(const VisionModelImpl& model, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  VT_CHECK(!ec && fs::is_directory(dir), "cannot create model directory ", dir, ": ",
           ec.message());
  // Weights first: a config next to stale weights would describe the wrong model.
  safetensors_save((fs::path(dir) / "model.safetensors").string(), model_state_dict(model),
                   {{"format", "pt"}, {"arch", model.config().arch}});
  write_file_atomic((fs::path(dir) / "config.json").string(), config_to_json(model.config()));
}

ModelConfig load_model_config(const std::string& dir) {
  VT_CHECK(fs::is_directory(dir), dir,
           ": not a model directory; make one with `vitrine import` (or train one)");
  const fs::path config = fs::path(dir) / "config.json";
  VT_CHECK(fs::exists(config), dir, ": no config.json; is this a model directory?");
  return config_from_json(read_text_file(config.string()), config.string());
}

VisionModel load_model(const std::string& dir) {
  const ModelConfig config = load_model_config(dir);
  const fs::path weights = fs::path(dir) / "model.safetensors";
  VT_CHECK(fs::exists(weights), dir, ": no model.safetensors next to config.json");
  VisionModel model = create_model(config);
  try {
    load_state_dict(*model, safetensors_load(weights.string()).tensors);
  } catch (const Error& e) {
    VT_FAIL(dir, ": ", e.what());
  }
  model->eval();
  return model;
}

}  // namespace vitrine::models
