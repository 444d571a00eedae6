#include "vitrine/models/config.h"

#include "vitrine/core/error.h"

#include "vitrine/core/fs.h"
#include "vitrine/core/json.h"
#include "vitrine/core/text.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <sstream>

namespace vitrine::models {
namespace {

using json = nlohmann::json;

// Bumped when config.json changes in a way older readers would misread: 2 adds per-block
// sizes (pruned models), written only by models that have them.
constexpr int kFormatVersion = 2;

template <typename T>
void read_opt(const json& j, const char* key, T& out) {
  if (!j.contains(key) || j.at(key).is_null()) return;
  try {
    out = j.at(key).get<T>();
  } catch (const json::exception& e) {
    VT_FAIL("'", key, "' has the wrong type (", j.at(key).type_name(), "): ", e.what());
  }
}

}  // namespace

std::vector<std::string> read_labels_file(const std::string& path) {
  std::string text = read_text_file(path);
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);  // a byte-order mark
  VT_CHECK(valid_utf8(text), path, ": not UTF-8 text; save the labels file as UTF-8");
  std::istringstream in(text);
  std::vector<std::string> labels;
  std::map<std::string, int> line_of;
  int number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    line = nfc(line);  // names compare composed, as the data's class names do
    // Some published lists repeat a name (ImageNet's has two 'crane' and two 'maillot'):
    // kept, so the head's rows keep their meaning, but said, since eval, --teacher and
    // --append-classes match classes by name.
    const auto [it, fresh] = line_of.emplace(line, number);
    if (!fresh) {
      spdlog::warn("{} line {}: the label '{}' is also on line {}; classes are matched by "
                   "name (eval, --teacher, --append-classes): rename one to tell them apart",
                   path, number, line, it->second);
    }
    labels.push_back(line);
  }
  VT_CHECK(!labels.empty(), path, ": no labels found (expected one label per line)");
  return labels;
}

std::vector<int64_t> ResNetConfig::widths_of(size_t i, int64_t planes) const {
  if (i < block_widths.size()) return block_widths[i];
  return bottleneck ? std::vector<int64_t>{planes, planes} : std::vector<int64_t>{planes};
}

int64_t ViTConfig::heads_of(size_t layer) const {
  return layer < layer_heads.size() ? layer_heads[layer] : num_attention_heads;
}

int64_t ViTConfig::intermediate_of(size_t layer) const {
  return layer < layer_intermediate_sizes.size() ? layer_intermediate_sizes[layer]
                                                 : intermediate_size;
}

int64_t tome_merges(int64_t tokens, int64_t r) {
  return std::max<int64_t>(0, std::min(r, (tokens - 1) / 2));
}

const char* family_name(Family family) {
  return family == Family::kResNet ? "resnet" : "vit";
}

int64_t ModelConfig::embedding_dim() const {
  if (family == Family::kViT) return vit.hidden_size;
  return resnet.bottleneck ? 2048 : 512;
}

std::string ModelConfig::label(int64_t i) const {
  if (i >= 0 && i < static_cast<int64_t>(labels.size()) && !labels[i].empty()) return labels[i];
  return "class_" + std::to_string(i);
}

// Upper bounds on sizes read from a config.json: far above any real model's, low enough that
// a corrupt or hostile file fails here instead of allocating or looping without end (and
// that products of sizes stay far from overflowing).
constexpr int64_t kMaxClasses = 1 << 20;
constexpr int64_t kMaxPixels = 1 << 14;  ///< image_size, resize, crop
constexpr int64_t kMaxWidth = 1 << 16;   ///< ViT widths, ResNet block widths
constexpr int64_t kMaxDepth = 1 << 10;   ///< ViT layers, ResNet blocks per stage

void ModelConfig::validate() const {
  VT_CHECK(num_classes >= 0 && num_classes <= kMaxClasses, arch, ": num_classes must be in "
           "0..", kMaxClasses, " (0 means no head), got ", num_classes);
  VT_CHECK(in_channels == 1 || in_channels == 3, arch, ": in_channels must be 1 or 3, got ",
           in_channels);
  VT_CHECK(image_size > 0 && image_size <= kMaxPixels, arch, ": image_size must be in 1..",
           kMaxPixels, ", got ", image_size);
  VT_CHECK(dropout >= 0 && dropout < 1, arch, ": dropout must be in [0, 1), got ", dropout);
  VT_CHECK(drop_path >= 0 && drop_path < 1, arch, ": drop_path must be in [0, 1), got ",
           drop_path);
  VT_CHECK(labels.empty() || static_cast<int64_t>(labels.size()) == num_classes, arch, ": ",
           labels.size(), " labels for ", num_classes,
           " classes; give one label per class (or none)");
  VT_CHECK(task == "single_label" || task == "multi_label", arch, ": task must be single_label "
           "or multi_label, got '", task, "'");
  VT_CHECK(thresholds.empty() || static_cast<int64_t>(thresholds.size()) == num_classes, arch,
           ": ", thresholds.size(), " thresholds for ", num_classes, " labels");
  for (const float t : thresholds) {
    VT_CHECK(t >= 0 && t <= 1, arch, ": thresholds must lie in [0, 1], got ", t);
  }
  VT_CHECK(preprocess.resize > 0 && preprocess.crop > 0 && preprocess.resize <= kMaxPixels &&
               preprocess.crop <= kMaxPixels,
           arch, ": preprocessing resize and crop must be in 1..", kMaxPixels, ", got ",
           preprocess.resize, " and ", preprocess.crop);
  VT_CHECK(static_cast<int64_t>(preprocess.mean.size()) == in_channels &&
               static_cast<int64_t>(preprocess.std.size()) == in_channels,
           arch, ": preprocessing mean/std need ", in_channels, " values each");
  for (const float s : preprocess.std) VT_CHECK(s > 0, arch, ": preprocessing std must be > 0");
  if (family == Family::kViT) {
    const auto& v = vit;
    VT_CHECK(v.patch_size > 0 && image_size % v.patch_size == 0, arch, ": image_size ",
             image_size, " must be a multiple of patch_size ", v.patch_size);
    VT_CHECK(v.hidden_size > 0 && v.num_attention_heads > 0 &&
                 v.hidden_size % v.num_attention_heads == 0,
             arch, ": hidden_size ", v.hidden_size, " must be a multiple of num_attention_heads ",
             v.num_attention_heads);
    VT_CHECK(v.hidden_size <= kMaxWidth && v.intermediate_size <= kMaxWidth, arch,
             ": hidden_size and intermediate_size must be at most ", kMaxWidth);
    VT_CHECK(v.num_hidden_layers > 0 && v.num_hidden_layers <= kMaxDepth &&
                 v.intermediate_size > 0,
             arch, ": num_hidden_layers must be in 1..", kMaxDepth,
             " and intermediate_size positive");
    VT_CHECK(v.layer_norm_eps > 0, arch, ": layer_norm_eps must be positive");
    VT_CHECK(v.hidden_act == "gelu" || v.hidden_act == "gelu_new" ||
                 v.hidden_act == "gelu_pytorch_tanh" || v.hidden_act == "quick_gelu" ||
                 v.hidden_act == "relu",
             arch, ": hidden_act '", v.hidden_act,
             "' is not supported (gelu, gelu_new, gelu_pytorch_tanh, quick_gelu, relu)");
    const auto per_layer = [&](const std::vector<int64_t>& sizes, const char* name) {
      VT_CHECK(sizes.empty() || static_cast<int64_t>(sizes.size()) == v.num_hidden_layers, arch,
               ": ", name, " has ", sizes.size(), " entries for ", v.num_hidden_layers,
               " layers");
      for (const int64_t s : sizes) {
        VT_CHECK(s > 0 && s <= kMaxWidth, arch, ": ", name, " must be in 1..", kMaxWidth);
      }
    };
    per_layer(v.layer_heads, "layer_heads");
    per_layer(v.layer_intermediate_sizes, "layer_intermediate_sizes");
    VT_CHECK(v.tome_r >= 0, arch, ": tome_r must be >= 0, got ", v.tome_r);
  } else {
    VT_CHECK(resnet.layers.size() == 4, arch, ": a ResNet needs 4 stages, got ",
             resnet.layers.size());
    for (const int64_t n : resnet.layers) {
      VT_CHECK(n > 0 && n <= kMaxDepth, arch, ": a ResNet stage needs 1..", kMaxDepth,
               " blocks, got ", n);
    }
    VT_CHECK(resnet.stem == "imagenet" || resnet.stem == "small" || resnet.stem == "cifar", arch,
             ": unknown ResNet stem '", resnet.stem, "' (imagenet, small or cifar)");
    int64_t blocks = 0;
    for (const int64_t n : resnet.layers) blocks += n;
    VT_CHECK(resnet.block_widths.empty() ||
                 static_cast<int64_t>(resnet.block_widths.size()) == blocks,
             arch, ": block_widths has ", resnet.block_widths.size(), " entries for ", blocks,
             " blocks");
    for (const auto& w : resnet.block_widths) {
      VT_CHECK(w.size() == (resnet.bottleneck ? 2U : 1U), arch, ": block_widths entries need ",
               resnet.bottleneck ? 2 : 1, " widths");
      for (const int64_t x : w) {
        VT_CHECK(x > 0 && x <= kMaxWidth, arch, ": block_widths must be in 1..", kMaxWidth);
      }
    }
  }
}

std::string config_to_json(const ModelConfig& c) {
  json j;
  // Format 2: per-block sizes, or token merging, which a reader of format 1 would ignore
  // (and run another network than the one measured).
  const bool per_block =
      c.family == Family::kViT ? c.vit.pruned() || c.vit.tome_r > 0
                               : !c.resnet.block_widths.empty();
  j["vitrine_format"] = per_block ? kFormatVersion : 1;
  j["arch"] = c.arch;
  j["family"] = family_name(c.family);
  j["num_classes"] = c.num_classes;
  j["in_channels"] = c.in_channels;
  j["image_size"] = c.image_size;
  j["dropout"] = c.dropout;
  j["drop_path"] = c.drop_path;
  if (c.family == Family::kResNet) {
    j["resnet"] = {{"bottleneck", c.resnet.bottleneck}, {"layers", c.resnet.layers},
                   {"stem", c.resnet.stem}};
    if (!c.resnet.block_widths.empty()) j["resnet"]["block_widths"] = c.resnet.block_widths;
  } else {
    const auto& v = c.vit;
    j["vit"] = {{"patch_size", v.patch_size},
                {"hidden_size", v.hidden_size},
                {"num_hidden_layers", v.num_hidden_layers},
                {"num_attention_heads", v.num_attention_heads},
                {"intermediate_size", v.intermediate_size},
                {"layer_norm_eps", v.layer_norm_eps},
                {"hidden_act", v.hidden_act},
                {"qkv_bias", v.qkv_bias},
                {"attention_dropout", v.attention_dropout}};
    if (!v.layer_heads.empty()) j["vit"]["layer_heads"] = v.layer_heads;
    if (!v.layer_intermediate_sizes.empty()) {
      j["vit"]["layer_intermediate_sizes"] = v.layer_intermediate_sizes;
    }
    if (v.tome_r > 0) j["vit"]["tome_r"] = v.tome_r;
  }
  j["task"] = c.task;
  if (!c.thresholds.empty()) j["thresholds"] = c.thresholds;
  j["labels"] = c.labels;
  const auto& p = c.preprocess;
  j["preprocess"] = {{"resize", p.resize},
                     {"crop", p.crop},
                     {"mean", p.mean},
                     {"std", p.std},
                     {"interpolation", image::interpolation_name(p.interpolation)},
                     {"resize_mode", p.squash ? "squash" : "shorter_side"}};
  json prov = json::parse(c.provenance_json, nullptr, /*allow_exceptions=*/false);
  j["provenance"] = prov.is_discarded() ? json::object() : prov;
  if (!c.int8_scales.empty()) {
    json report = json::parse(c.int8_report_json, nullptr, /*allow_exceptions=*/false);
    j["quantization"] = {{"int8",
                          {{"activation_scales", c.int8_scales},
                           {"report", report.is_discarded() ? json::object() : report}}}};
  }
  return json_text(j, 2) + "\n";
}

ModelConfig config_from_json(const std::string& text, const std::string& origin) {
  const json j = parse_json(text, origin);
  VT_CHECK(j.is_object(), origin, ": expected a JSON object");
  ModelConfig c;
  try {
    VT_CHECK(!j.contains("vitrine_format") || j["vitrine_format"].is_number_integer(), origin,
             ": vitrine_format must be an integer");
    const int64_t version = j.value("vitrine_format", int64_t{1});
    VT_CHECK(version <= kFormatVersion, origin, ": written by a newer Vitrine (format ",
             version, ", this one reads up to ", kFormatVersion, "); upgrade Vitrine");
    VT_CHECK(j.contains("arch") && j.contains("family"), origin,
             ": not a Vitrine model config (no 'arch'/'family'); for a Hugging Face "
             "directory use `vitrine import --from hf`");
    c.arch = j.at("arch").get<std::string>();
    const auto family = j.at("family").get<std::string>();
    VT_CHECK(family == "resnet" || family == "vit", origin, ": unknown family '", family, "'");
    c.family = family == "vit" ? Family::kViT : Family::kResNet;
    read_opt(j, "num_classes", c.num_classes);
    read_opt(j, "in_channels", c.in_channels);
    read_opt(j, "image_size", c.image_size);
    read_opt(j, "dropout", c.dropout);
    read_opt(j, "drop_path", c.drop_path);
    if (j.contains("resnet")) {
      read_opt(j["resnet"], "bottleneck", c.resnet.bottleneck);
      read_opt(j["resnet"], "layers", c.resnet.layers);
      read_opt(j["resnet"], "stem", c.resnet.stem);
      read_opt(j["resnet"], "block_widths", c.resnet.block_widths);
    }
    if (j.contains("vit")) {
      const json& v = j["vit"];
      read_opt(v, "patch_size", c.vit.patch_size);
      read_opt(v, "hidden_size", c.vit.hidden_size);
      read_opt(v, "num_hidden_layers", c.vit.num_hidden_layers);
      read_opt(v, "num_attention_heads", c.vit.num_attention_heads);
      read_opt(v, "intermediate_size", c.vit.intermediate_size);
      read_opt(v, "layer_norm_eps", c.vit.layer_norm_eps);
      read_opt(v, "hidden_act", c.vit.hidden_act);
      read_opt(v, "qkv_bias", c.vit.qkv_bias);
      read_opt(v, "attention_dropout", c.vit.attention_dropout);
      read_opt(v, "layer_heads", c.vit.layer_heads);
      read_opt(v, "layer_intermediate_sizes", c.vit.layer_intermediate_sizes);
      read_opt(v, "tome_r", c.vit.tome_r);
    }
    read_opt(j, "task", c.task);
    read_opt(j, "thresholds", c.thresholds);
    read_opt(j, "labels", c.labels);
    // Composed (NFC), as data's class names are read: a model trained on a folder macOS
    // named decomposed still matches its data.
    for (auto& label : c.labels) label = nfc(label);
    if (j.contains("preprocess")) {
      const json& p = j["preprocess"];
      read_opt(p, "resize", c.preprocess.resize);
      read_opt(p, "crop", c.preprocess.crop);
      read_opt(p, "mean", c.preprocess.mean);
      read_opt(p, "std", c.preprocess.std);
      const std::string mode = p.value("resize_mode", "shorter_side");
      VT_CHECK(mode == "shorter_side" || mode == "squash", origin, ": preprocess.resize_mode '",
               mode, "' is not shorter_side or squash");
      c.preprocess.squash = mode == "squash";
      if (p.contains("interpolation")) {
        c.preprocess.interpolation =
            image::parse_interpolation(p.at("interpolation").get<std::string>());
      }
    }
    c.preprocess.channels = c.in_channels;
    if (j.contains("provenance")) c.provenance_json = json_text(j["provenance"]);
    if (j.contains("quantization") && j["quantization"].contains("int8")) {
      const json& q = j["quantization"]["int8"];
      read_opt(q, "activation_scales", c.int8_scales);
      if (q.contains("report")) c.int8_report_json = json_text(q["report"]);
    }
  } catch (const json::exception& e) {
    VT_FAIL(origin, ": malformed model config: ", e.what());
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.rfind(origin, 0) == 0) throw;
    VT_FAIL(origin, ": ", what);
  }
  try {
    c.validate();
  } catch (const Error& e) {
    VT_FAIL(origin, ": ", e.what());
  }
  return c;
}

}  // namespace vitrine::models
