#include "vitrine/models/model_dir.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/registry.h"

#include <algorithm>
#include <filesystem>

namespace vitrine::models {
namespace fs = std::filesystem;

void save_model(const VisionModelImpl& model, const std::string& dir,
                const std::function<void(const std::string& folder)>& extra) {
  // The weights and config.json are written into a fresh directory beside `dir` that then
  // takes its place: a reader or a crash never sees the new weights with the old config.
  std::string dest = fs::path(dir).lexically_normal().string();
  while (dest.size() > 1 && dest.back() == '/') dest.pop_back();
  VT_CHECK(!dest.empty() && dest != "." && dest != "/", "cannot save a model as ", dir,
           ": name a directory for it");
  std::error_code ec;
  // A link is followed without needing its target to exist (an interrupted save may have
  // left the target as <target>.old), and stays a link to the new weights.
  for (int hops = 0; fs::is_symlink(dest, ec); ++hops) {
    VT_CHECK(hops < 40, dir, ": too many levels of symbolic links");
    const fs::path target = fs::read_symlink(dest);
    dest = (target.is_absolute() ? target : fs::path(dest).parent_path() / target)
               .lexically_normal()
               .string();
    while (dest.size() > 1 && dest.back() == '/') dest.pop_back();
  }
  restore_interrupted_dir(dest);  // its other files are carried over below
  const fs::path fresh = dest + ".saving";
  fs::remove_all(fresh, ec);
  fs::create_directories(fresh, ec);
  VT_CHECK(!ec && fs::is_directory(fresh), "cannot create model directory ", fresh.string(),
           ": ", ec.message());
  try {
    // Adapters (LoRA) are merged into the weights they adapt: inference pays nothing for them.
    safetensors_save((fresh / "model.safetensors").string(), model.deployable_state_dict(),
                     {{"format", "pt"}, {"arch", model.config().arch}});
    write_file_atomic((fresh / "config.json").string(), config_to_json(model.config()));
    // Whatever else the directory held (a replay sample, an adapter, notes) stays: linked,
    // or copied where links are not possible, so the old directory is whole until replaced.
    if (fs::is_directory(dest)) {
      for (const auto& e : fs::directory_iterator(dest)) {
        const auto name = e.path().filename();
        if (name == "model.safetensors" || name == "config.json") continue;
        const auto opts = fs::copy_options::recursive | fs::copy_options::copy_symlinks;
        fs::copy(e.path(), fresh / name, opts | fs::copy_options::create_hard_links, ec);
        if (ec) {
          fs::remove_all(fresh / name);
          fs::copy(e.path(), fresh / name, opts);
        }
      }
    }
    if (extra) extra(fresh.string());
    replace_dir(fresh.string(), dest);
  } catch (...) {
    fs::remove_all(fresh, ec);
    throw;
  }
}

ModelConfig load_model_config(const std::string& dir) {
  VT_CHECK(fs::is_directory(dir) || !fs::is_directory(fs::path(dir).string() + ".old"), dir,
           " is missing, but ", dir, ".old holds the model an interrupted save replaced: "
           "rename it back to ", dir);
  VT_CHECK(fs::is_directory(dir), dir,
           ": not a model directory; make one with `vitrine import` (or train one)");
  const fs::path config = fs::path(dir) / "config.json";
  if (!fs::exists(config)) {
    // A training run's folder holds its models one level down.
    for (const char* sub : {"best", "last"}) {
      VT_CHECK(!fs::exists(fs::path(dir) / sub / "config.json"), dir, " is a training run, "
               "not a model directory: give its model, ", (fs::path(dir) / sub).string(),
               " (best/ is the best validation epoch's, last/ the last epoch's)");
    }
    VT_FAIL(dir, ": no config.json; is this a model directory?");
  }
  ModelConfig c = config_from_json(read_text_file(config.string()), config.string());
  // A registered name promises its sizes; a config that says otherwise was edited by hand.
  const auto names = model_names();
  VT_CHECK(std::find(names.begin(), names.end(), c.arch) != names.end(), config.string(),
           ": unknown arch '", c.arch, "' (see `vitrine models`)");
  if (c.arch != "vit_custom" && c.arch != "resnet_custom") {
    const ModelConfig p = model_preset(c.arch);
    const bool same =
        p.family == c.family &&
        (c.family == Family::kResNet
             ? p.resnet.bottleneck == c.resnet.bottleneck && p.resnet.layers == c.resnet.layers
             : p.vit.patch_size == c.vit.patch_size && p.vit.hidden_size == c.vit.hidden_size &&
                   p.vit.num_hidden_layers == c.vit.num_hidden_layers &&
                   p.vit.num_attention_heads == c.vit.num_attention_heads &&
                   p.vit.intermediate_size == c.vit.intermediate_size);
    VT_CHECK(same, config.string(), ": arch '", c.arch,
             "' does not match the sizes in the file; restore config.json or re-import the model");
  }
  return c;
}

VisionModel load_model(const std::string& dir) {
  const ModelConfig config = load_model_config(dir);
  const fs::path weights = fs::path(dir) / "model.safetensors";
  VT_CHECK(fs::exists(weights), dir, ": no model.safetensors next to config.json");
  VisionModel model = create_model(config);
  try {
    LoadOptions options;
    options.hint = "the weights do not fit config.json; re-import or re-train the model";
    load_state_dict(*model, safetensors_load(weights.string()).tensors, options);
  } catch (const Error& e) {
    VT_FAIL(dir, ": ", e.what());
  }
  model->eval();
  return model;
}

}  // namespace vitrine::models
