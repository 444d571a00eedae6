// `vitrine models`, `vitrine init`, `vitrine import`: the model zoo and model directories.
#include "commands.h"

#include "vitrine/core/error.h"
#include "vitrine/core/json.h"
#include "vitrine/models/adapter.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/registry.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <iostream>

namespace vitrine::cli {

void check_output_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::exists(dir)) return;
  VT_CHECK(fs::is_directory(dir), dir, " exists and is not a directory; choose another --out");
  const bool empty = fs::directory_iterator(dir) == fs::directory_iterator();
  VT_CHECK(empty || fs::exists(fs::path(dir) / "config.json"), dir,
           " is a non-empty directory that holds no model; choose another --out");
  if (!empty) spdlog::warn("replacing the model in {}", dir);
}

namespace {

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

namespace {

// The configuration `vitrine init --arch` asks for.
template <typename Args>
models::ModelConfig new_config(const Args& a, bool num_classes_given) {
  models::ModelConfig c = models::new_model_config(a.arch, a.in_channels, a.stem);
  if (a.arch == "resnet_custom") {
    c.resnet.layers = a.layers;
    c.resnet.bottleneck = a.block == "bottleneck";
  }
  if (a.arch == "vit_custom") {
    c.vit.patch_size = a.patch_size;
    c.vit.hidden_size = a.width;
    c.vit.num_hidden_layers = a.depth;
    c.vit.num_attention_heads = a.heads;
    c.vit.intermediate_size = static_cast<int64_t>(a.width * a.mlp_ratio);
  }
  models::set_image_size(c, a.image_size);
  c.num_classes = a.num_classes;
  if (!a.labels.empty()) {
    c.labels = models::read_labels_file(a.labels);
    VT_CHECK(!num_classes_given || a.num_classes == static_cast<int64_t>(c.labels.size()),
             a.labels, " has ", c.labels.size(), " labels but --num-classes is ", a.num_classes,
             "; give one of them");
    c.num_classes = static_cast<int64_t>(c.labels.size());
  }
  return c;
}

}  // namespace

void add_merge_adapter_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "merge-adapter", "Apply a LoRA adapter file to its backbone: a model directory again");
  struct Args {
    std::string base, adapter, out;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--base", a->base, "The backbone's model directory")->required();
  cmd->add_option("--adapter", a->adapter, "adapter.safetensors (vitrine train --save-adapter)")
      ->required();
  cmd->add_option("--out", a->out, "Model directory to write (adapters merged)")->required();
  cmd->callback([a, &status] {
    const auto model = models::apply_adapter(a->base, a->adapter);
    check_output_dir(a->out);
    models::save_model(*model, a->out);
    spdlog::info("wrote {} ({} classes, adapters merged) to {}", model->config().arch,
                 model->config().num_classes, a->out);
    status = kExitOk;
  });
}

void add_init_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "init", "Write a randomly initialised model directory for an architecture");
  struct Args {
    std::string arch, out, labels, stem, like;
    int64_t num_classes = 1000, in_channels = 3, image_size = 224;
    int64_t patch_size = 16, width = 768, depth = 12, heads = 12;
    std::vector<int64_t> layers{2, 2, 2, 2};
    std::string block = "basic";
    double mlp_ratio = 4.0;
    uint64_t seed = 0;
  };
  auto a = std::make_shared<Args>();
  auto* arch = cmd->add_option("--arch", a->arch, "Architecture (see `vitrine models`)");
  cmd->add_option("--like", a->like,
                  "A model directory whose architecture, input and preprocessing to copy "
                  "(random weights: a from-scratch twin)")
      ->excludes(arch);
  cmd->add_option("--out", a->out, "Model directory to write")->required();
  cmd->add_option("--num-classes", a->num_classes, "Classes of the head (0: no head)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--labels", a->labels, "File with one label per line (sets --num-classes)");
  cmd->add_option("--in-channels", a->in_channels, "Input channels: 3, or 1 for grey images")
      ->check(CLI::IsMember({1, 3}));
  cmd->add_option("--image-size", a->image_size, "Input image side in pixels")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--stem", a->stem,
                  "ResNet stem: imagenet (/4), small (/2, 32-96 px photos), cifar (/1)")
      ->check(CLI::IsMember({"imagenet", "small", "cifar"}));
  const std::vector<CLI::Option*> resnet_flags{
      cmd->add_option("--layers", a->layers, "resnet_custom: blocks per stage (4 numbers)")
          ->expected(4)
          ->check(CLI::Range(int64_t{1}, int64_t{256})),
      cmd->add_option("--block", a->block,
                      "resnet_custom: basic (resnet18/34) or bottleneck (50+)")
          ->check(CLI::IsMember({"basic", "bottleneck"}))};
  const auto in_size = CLI::Range(int64_t{1}, int64_t{1} << 16);
  const std::vector<CLI::Option*> vit_flags{
      cmd->add_option("--patch-size", a->patch_size, "vit_custom: patch side")->check(in_size),
      cmd->add_option("--width", a->width, "vit_custom: embedding width")->check(in_size),
      cmd->add_option("--depth", a->depth, "vit_custom: encoder blocks")->check(in_size),
      cmd->add_option("--heads", a->heads, "vit_custom: attention heads")->check(in_size),
      cmd->add_option("--mlp-ratio", a->mlp_ratio, "vit_custom: MLP width / embedding width")
          ->check(cli::positive())};
  cmd->add_option("--seed", a->seed, "Random seed of the initialisation");
  auto* num_classes = cmd->get_option("--num-classes");
  auto* image_size = cmd->get_option("--image-size");
  std::vector<CLI::Option*> not_with_like = resnet_flags;
  not_with_like.insert(not_with_like.end(), vit_flags.begin(), vit_flags.end());
  not_with_like.push_back(cmd->get_option("--in-channels"));
  not_with_like.push_back(cmd->get_option("--stem"));
  cmd->callback([a, num_classes, image_size, resnet_flags, vit_flags, not_with_like, &status] {
    VT_CHECK(!a->arch.empty() || !a->like.empty(), "give --arch NAME (or --like DIR)");
    // Flags of another architecture would be dropped without a word: refuse them.
    const auto refuse = [](const std::vector<CLI::Option*>& flags, const std::string& why) {
      for (const auto* f : flags) VT_CHECK(f->count() == 0, f->get_name(), " ", why);
    };
    if (!a->like.empty()) {
      refuse(not_with_like, "does not apply with --like (the copy keeps the architecture)");
    } else {
      if (a->arch != "resnet_custom") refuse(resnet_flags, "is for --arch resnet_custom");
      if (a->arch != "vit_custom") refuse(vit_flags, "is for --arch vit_custom");
    }
    check_output_dir(a->out);
    nlohmann::json provenance{{"source", "init"},
                              {"seed", a->seed},
                              {"command", command_line()},
                              {"note", "random weights, not trained"}};
    models::ModelConfig c;
    if (!a->like.empty()) {
      c = models::load_model_config(a->like);
      provenance["like"] = a->like;
      if (image_size->count() > 0) models::set_image_size(c, a->image_size);
      if (num_classes->count() > 0) {
        c.num_classes = a->num_classes;
        c.labels.clear();
        c.thresholds.clear();
      }
    } else {
      c = new_config(*a, num_classes->count() > 0);
    }
    c.provenance_json = json_text(provenance);
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
    double eval_crop_pct = 0;
    std::string interpolation;
    std::vector<float> mean, std;
    bool allow_partial = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--from", a->from, "Checkpoint source: torchvision | hf | timm")
      ->required()
      ->check(CLI::IsMember({"torchvision", "hf", "timm"}));
  cmd->add_option("--arch", a->arch, "Architecture (see `vitrine models`); hf reads config.json");
  cmd->add_option("--weights", a->weights,
                  "torchvision .pth, timm .safetensors/.pth (or its hub folder), or a Hugging "
                  "Face directory")
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
  cmd->add_option("--eval-crop-pct", a->eval_crop_pct,
                  "Eval transform: resize to size / this, centre crop (default: what the "
                  "checkpoint's source uses, a timm folder's config.json pretrained_cfg)")
      ->check(CLI::Range(0.01, 1.0));
  cmd->add_option("--interpolation", a->interpolation, "Eval resize filter (default: as above)")
      ->check(CLI::IsMember({"nearest", "bilinear", "bicubic"}));
  cmd->add_option("--mean", a->mean, "Eval normalisation mean, R G B (default: as above)")
      ->expected(1, 3);
  cmd->add_option("--std", a->std, "Eval normalisation std, R G B (default: as above)")
      ->expected(1, 3);
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
    if (a->eval_crop_pct > 0) o.eval_crop_pct = a->eval_crop_pct;
    if (!a->interpolation.empty()) o.interpolation = a->interpolation;
    if (!a->mean.empty()) o.mean = a->mean;
    if (!a->std.empty()) o.std = a->std;
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
