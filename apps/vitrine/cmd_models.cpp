// `vitrine models`, `vitrine init`, `vitrine import`: the model zoo and model directories.
#include "commands.h"

#include "vitrine/core/error.h"
#include "vitrine/core/json.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/registry.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <iostream>

namespace vitrine::cli {
namespace {

// A model directory may be replaced; any other non-empty directory is left alone.
void check_output_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::exists(dir)) return;
  VT_CHECK(fs::is_directory(dir), dir, " exists and is not a directory; choose another --out");
  const bool empty = fs::directory_iterator(dir) == fs::directory_iterator();
  VT_CHECK(empty || fs::exists(fs::path(dir) / "config.json"), dir,
           " is a non-empty directory that holds no model; choose another --out");
  if (!empty) spdlog::warn("replacing the model in {}", dir);
}

int64_t parameter_count(const models::VisionModelImpl& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

}  // namespace

void add_models_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand("models", "List the registered architectures");
  cmd->callback([&status] {
    for (const auto& name : models::model_names()) {
      const auto c = models::model_preset(name);
      std::cout << nlohmann::json{{"arch", name},
                                  {"family", models::family_name(c.family)},
                                  {"embedding_dim", c.embedding_dim()},
                                  {"image_size", c.image_size}}
                       .dump()
                << "\n";
    }
    status = kExitOk;
  });
}

void add_init_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "init", "Write a randomly initialised model directory for an architecture");
  struct Args {
    std::string arch, out, labels;
    int64_t num_classes = 1000, in_channels = 3, image_size = 224;
    int64_t patch_size = 16, width = 768, depth = 12, heads = 12;
    double mlp_ratio = 4.0;
    uint64_t seed = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--arch", a->arch, "Architecture (see `vitrine models`)")->required();
  cmd->add_option("--out", a->out, "Model directory to write")->required();
  cmd->add_option("--num-classes", a->num_classes, "Classes of the head (0: no head)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--labels", a->labels, "File with one label per line (sets --num-classes)");
  cmd->add_option("--in-channels", a->in_channels, "Input channels: 3, or 1 for grey images")
      ->check(CLI::IsMember({1, 3}));
  cmd->add_option("--image-size", a->image_size, "Input image side in pixels")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--patch-size", a->patch_size, "vit_custom: patch side");
  cmd->add_option("--width", a->width, "vit_custom: embedding width");
  cmd->add_option("--depth", a->depth, "vit_custom: encoder blocks");
  cmd->add_option("--heads", a->heads, "vit_custom: attention heads");
  cmd->add_option("--mlp-ratio", a->mlp_ratio, "vit_custom: MLP width / embedding width");
  cmd->add_option("--seed", a->seed, "Random seed of the initialisation");
  auto* num_classes = cmd->get_option("--num-classes");
  cmd->callback([a, num_classes, &status] {
    check_output_dir(a->out);
    models::ModelConfig c = models::model_preset(a->arch);
    if (a->arch == "vit_custom") {
      c.vit.patch_size = a->patch_size;
      c.vit.hidden_size = a->width;
      c.vit.num_hidden_layers = a->depth;
      c.vit.num_attention_heads = a->heads;
      c.vit.intermediate_size = static_cast<int64_t>(a->width * a->mlp_ratio);
    }
    models::set_image_size(c, a->image_size);
    c.num_classes = a->num_classes;
    if (!a->labels.empty()) {
      c.labels = models::read_labels_file(a->labels);
      VT_CHECK(num_classes->count() == 0 || a->num_classes == static_cast<int64_t>(c.labels.size()),
               a->labels, " has ", c.labels.size(), " labels but --num-classes is ", a->num_classes,
               "; give one of them");
      c.num_classes = static_cast<int64_t>(c.labels.size());
    }
    c.in_channels = a->in_channels;
    if (c.in_channels == 1) {
      c.preprocess.mean = {0.5f};
      c.preprocess.std = {0.5f};
    }
    c.preprocess.channels = c.in_channels;
    c.provenance_json = json_text(nlohmann::json{{"source", "init"},
                                       {"seed", a->seed},
                                       {"command", command_line()},
                                       {"note", "random weights, not trained"}});
    at::manual_seed(a->seed);
    auto model = models::create_model(c);
    models::save_model(*model, a->out);
    spdlog::info("wrote {} ({}, {} parameters, random weights) to {}", c.arch,
                 models::family_name(c.family), parameter_count(*model), a->out);
    status = kExitOk;
  });
}

void add_import_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "import", "Import a torchvision, Hugging Face or timm checkpoint as a model directory");
  struct Args {
    std::string from = "torchvision", arch, weights, labels, out;
    int64_t num_classes = -1, image_size = -1, in_channels = -1;
    bool allow_partial = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--from", a->from, "Checkpoint source: torchvision | hf | timm")
      ->required()
      ->check(CLI::IsMember({"torchvision", "hf", "timm"}));
  cmd->add_option("--arch", a->arch, "Architecture (see `vitrine models`); hf reads config.json");
  cmd->add_option("--weights", a->weights,
                  "torchvision .pth, timm .safetensors/.pth, or a Hugging Face directory")
      ->required();
  cmd->add_option("--labels", a->labels, "File with one class label per line");
  cmd->add_option("--out", a->out, "Model directory to write")->required();
  cmd->add_option("--num-classes", a->num_classes,
                  "New head with this many classes, 0 for none (default: the checkpoint's)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--image-size", a->image_size,
                  "Input size; ViT position embeddings are interpolated to it")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--in-channels", a->in_channels, "1 adapts an RGB checkpoint to grey input")
      ->check(CLI::IsMember({1, 3}));
  cmd->add_flag("--allow-partial", a->allow_partial,
                "Import even when tensors are missing or unexpected (listed in the log)");
  cmd->callback([a, &status] {
    models::ImportOptions o;
    o.source = models::parse_source(a->from);
    o.arch = a->arch;
    o.weights = a->weights;
    o.labels_file = a->labels;
    if (a->num_classes >= 0) o.num_classes = a->num_classes;
    if (a->image_size > 0) o.image_size = a->image_size;
    if (a->in_channels > 0) o.in_channels = a->in_channels;
    o.strict = !a->allow_partial;
    o.command = command_line();
    check_output_dir(a->out);
    models::LoadReport report;
    auto model = models::import_checkpoint(o, &report);
    if (!report.ok() || !report.adapted.empty() || !report.ignored.empty()) {
      spdlog::warn("import report:{}", report.summary());
    }
    models::save_model(*model, a->out);
    const auto& c = model->config();
    spdlog::info("imported {} from {} ({} classes, {} parameters) into {}", c.arch, a->from,
                 c.num_classes, parameter_count(*model), a->out);
    status = kExitOk;
  });
}

}  // namespace vitrine::cli
