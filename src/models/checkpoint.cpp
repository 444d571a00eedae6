#include "vitrine/models/checkpoint.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/json.h"
#include "vitrine/core/pth.h"
#include "vitrine/core/safetensors.h"
#include "vitrine/models/registry.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <tuple>

namespace vitrine::models {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

/// One renaming rule. `part` >= 0 marks one of the three row blocks (query, key,
/// value) of a fused in_proj tensor; `ignore` drops tensors with no use here.
struct KeyRule {
  std::regex from;
  std::string to;
  int part = -1;
  bool ignore = false;
};

KeyRule rule(const char* from, const char* to, int part = -1) {
  return {std::regex(from), to, part, false};
}
KeyRule ignore(const char* from) { return {std::regex(from), "", -1, true}; }

// Hugging Face transformers' ViTModel / ViTForImageClassification.
const std::vector<KeyRule>& hf_vit_rules() {
  static const std::vector<KeyRule> rules = {
      rule(R"(^(?:vit\.)?embeddings\.cls_token$)", "class_token"),
      rule(R"(^(?:vit\.)?embeddings\.position_embeddings$)", "encoder.pos_embedding"),
      rule(R"(^(?:vit\.)?embeddings\.patch_embeddings\.projection\.(weight|bias)$)",
           "conv_proj.$1"),
      rule(R"(^(?:vit\.)?encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.ln_1.$2"),
      rule(R"(^(?:vit\.)?encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.self_attention.in_proj_$2", 0),
      rule(R"(^(?:vit\.)?encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.self_attention.in_proj_$2", 1),
      rule(R"(^(?:vit\.)?encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.self_attention.in_proj_$2", 2),
      rule(R"(^(?:vit\.)?encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.self_attention.out_proj.$2"),
      rule(R"(^(?:vit\.)?encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.ln_2.$2"),
      rule(R"(^(?:vit\.)?encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.mlp.0.$2"),
      rule(R"(^(?:vit\.)?encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.mlp.3.$2"),
      rule(R"(^(?:vit\.)?layernorm\.(weight|bias)$)", "encoder.ln.$1"),
      rule(R"(^classifier\.(weight|bias)$)", "heads.head.$1"),
      // The pooler (tanh dense layer) and mask token serve pretraining tasks, not features.
      ignore(R"(^(?:vit\.)?pooler\.)"),
      ignore(R"(^(?:vit\.)?embeddings\.mask_token$)"),
  };
  return rules;
}

// timm's VisionTransformer (class-token models; timm fuses q, k, v as torchvision does).
const std::vector<KeyRule>& timm_vit_rules() {
  static const std::vector<KeyRule> rules = {
      rule(R"(^cls_token$)", "class_token"),
      rule(R"(^pos_embed$)", "encoder.pos_embedding"),
      rule(R"(^patch_embed\.proj\.(weight|bias)$)", "conv_proj.$1"),
      rule(R"(^blocks\.(\d+)\.norm1\.(weight|bias)$)", "encoder.layers.encoder_layer_$1.ln_1.$2"),
      rule(R"(^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.self_attention.in_proj_$2"),
      rule(R"(^blocks\.(\d+)\.attn\.proj\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.self_attention.out_proj.$2"),
      rule(R"(^blocks\.(\d+)\.norm2\.(weight|bias)$)", "encoder.layers.encoder_layer_$1.ln_2.$2"),
      rule(R"(^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.mlp.0.$2"),
      rule(R"(^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$)",
           "encoder.layers.encoder_layer_$1.mlp.3.$2"),
      rule(R"(^norm\.(weight|bias)$)", "encoder.ln.$1"),
      rule(R"(^head\.(weight|bias)$)", "heads.head.$1"),
  };
  return rules;
}

// torchvision's layout is Vitrine's; timm's ResNets use the same keys.
const std::vector<KeyRule>& identity_rules() {
  static const std::vector<KeyRule> rules;
  return rules;
}

const std::vector<KeyRule>& rules_for(Source source, Family family) {
  switch (source) {
    case Source::kHuggingFace:
      VT_CHECK(family == Family::kViT,
               "Hugging Face import supports ViT (ViTModel, ViTForImageClassification); for "
               "ResNets use torchvision or timm weights");
      return hf_vit_rules();
    case Source::kTimm:
      return family == Family::kViT ? timm_vit_rules() : identity_rules();
    case Source::kTorchvision:
    case Source::kVitrine:
      return identity_rules();
  }
  return identity_rules();
}

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The side of the square patch grid behind `tokens` position embeddings (a class token
// first), or 0 when they are no such grid.
int64_t patch_grid_side(int64_t tokens) {
  const auto side = static_cast<int64_t>(std::lround(std::sqrt(std::max<int64_t>(0, tokens - 1))));
  return side > 0 && side * side == tokens - 1 ? side : 0;
}

// The patch grid of position embeddings resized bicubically, the class token's embedding
// kept: as torchvision's interpolate_embeddings (align_corners), Hugging Face's
// interpolate_pos_encoding (not) or timm's resample_abs_pos_embed (not, antialiased).
at::Tensor interpolate_pos_embedding(const at::Tensor& pos, int64_t new_tokens,
                                     const LoadOptions& options) {
  const int64_t d = pos.size(2);
  const int64_t old_grid = patch_grid_side(pos.size(1));
  const int64_t new_grid = patch_grid_side(new_tokens);
  VT_CHECK(old_grid > 0 && new_grid > 0,
           "position embeddings of ", pos.size(1), " tokens cannot be interpolated to ",
           new_tokens, " tokens (square patch grids plus a class token expected)");
  const at::Tensor token = pos.slice(1, 0, 1);
  at::Tensor grid = pos.slice(1, 1).permute({0, 2, 1}).reshape({1, d, old_grid, old_grid});
  grid = grid.to(at::kFloat);
  grid = options.pos_antialias
             ? at::_upsample_bicubic2d_aa(grid, {new_grid, new_grid}, options.pos_align_corners,
                                          c10::nullopt, c10::nullopt)
             : at::upsample_bicubic2d(grid, {new_grid, new_grid}, options.pos_align_corners,
                                      c10::nullopt, c10::nullopt);
  grid = grid.reshape({1, d, new_grid * new_grid}).permute({0, 2, 1});
  return at::cat({token.to(at::kFloat), grid}, 1);
}

std::string now_iso8601() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// A Hugging Face ViT config.json onto a ModelConfig (sizes, eps, activation, labels).
ModelConfig config_from_hf(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  const json j = parse_json(read_text_file(path), path);
  const std::string model_type = j.value("model_type", "");
  VT_CHECK(model_type != "resnet", path, ": Hugging Face's ResNets (microsoft/resnet-*) are "
           "not yet supported; import torchvision's or timm's ResNet weights instead (--from "
           "torchvision or --from timm with --arch resnet50, ...)");
  VT_CHECK(model_type == "vit", path, ": model_type '", model_type,
           "' is not supported for Hugging Face import (supported: vit; other architectures "
           "from their torchvision or timm weights)");
  ModelConfig c = model_preset("vit_custom");
  try {
    c.vit.hidden_size = j.value("hidden_size", 768);
    c.vit.num_hidden_layers = j.value("num_hidden_layers", 12);
    c.vit.num_attention_heads = j.value("num_attention_heads", 12);
    c.vit.intermediate_size = j.value("intermediate_size", 3072);
    c.vit.hidden_act = j.value("hidden_act", "gelu");
    c.vit.layer_norm_eps = j.value("layer_norm_eps", 1e-12);
    c.vit.patch_size = j.value("patch_size", 16);
    c.vit.qkv_bias = j.value("qkv_bias", true);
    c.in_channels = j.value("num_channels", 3);
    set_image_size(c, j.value("image_size", 224));
    if (j.contains("id2label")) {
      const auto& m = j["id2label"];
      std::map<int64_t, std::string> by_id;
      for (const auto& [k, v] : m.items()) by_id[std::stoll(k)] = v.get<std::string>();
      for (const auto& [id, label] : by_id) {
        VT_CHECK(id == static_cast<int64_t>(c.labels.size()), path,
                 ": id2label must number classes 0..N-1 without gaps");
        c.labels.push_back(label);
      }
    }
  } catch (const json::exception& e) {
    VT_FAIL(path, ": malformed ViT config: ", e.what());
  } catch (const std::logic_error& e) {
    VT_FAIL(path, ": malformed id2label: ", e.what());
  }
  // Name the preset when the sizes are one, so users see "vit_b_16", not "vit_custom".
  for (const char* name : {"vit_ti_16", "vit_s_16", "vit_b_16", "vit_b_32", "vit_l_16"}) {
    const ModelConfig p = model_preset(name);
    if (p.vit.patch_size == c.vit.patch_size && p.vit.hidden_size == c.vit.hidden_size &&
        p.vit.num_hidden_layers == c.vit.num_hidden_layers &&
        p.vit.num_attention_heads == c.vit.num_attention_heads &&
        p.vit.intermediate_size == c.vit.intermediate_size) {
      c.arch = name;
    }
  }
  // Hugging Face's image processor (ViTImageProcessor): resize straight to the model's
  // size, mean = std = 0.5 unless the directory's preprocessor_config.json says otherwise.
  c.preprocess.squash = true;
  c.preprocess.mean.assign(static_cast<size_t>(c.in_channels), 0.5f);
  c.preprocess.std.assign(static_cast<size_t>(c.in_channels), 0.5f);
  const fs::path pre = fs::path(dir) / "preprocessor_config.json";
  if (fs::exists(pre)) {
    try {
      const json p = parse_json(read_text_file(pre.string()), pre.string());
      if (p.contains("image_mean")) c.preprocess.mean = p["image_mean"].get<std::vector<float>>();
      if (p.contains("image_std")) c.preprocess.std = p["image_std"].get<std::vector<float>>();
      // PIL's filter numbers: 0 nearest, 2 bilinear, 3 bicubic.
      const int resample = p.value("resample", 2);
      c.preprocess.interpolation = resample == 3   ? image::Interpolation::kBicubic
                                   : resample == 0 ? image::Interpolation::kNearest
                                                   : image::Interpolation::kBilinear;
    } catch (const json::exception& e) {
      VT_FAIL(pre.string(), ": malformed preprocessor config: ", e.what());
    }
    VT_CHECK(c.preprocess.mean.size() == static_cast<size_t>(c.in_channels) &&
                 c.preprocess.std.size() == static_cast<size_t>(c.in_channels),
             pre.string(), ": image_mean and image_std need one value per channel (",
             c.in_channels, ", config.json's num_channels)");
  }
  return c;
}

// Which known layout a set of keys follows, for the error message of a failed load.
std::string guess_layout(const std::vector<std::string>& names) {
  struct Pattern {
    const char* key;
    const char* layout;
  };
  static const Pattern kPatterns[] = {
      {"encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
       "a torchvision ViT (--from torchvision --arch vit_*)"},
      {"blocks.0.attn.qkv.weight", "a timm ViT (--from timm --arch vit_*)"},
      {"vit.encoder.layer.0.attention.attention.query.weight",
       "a Hugging Face ViTForImageClassification (--from hf)"},
      {"encoder.layer.0.attention.attention.query.weight", "a Hugging Face ViTModel (--from hf)"},
      {"layer1.0.conv3.weight", "a ResNet with bottleneck blocks (resnet50/101/152)"},
      {"layer1.0.conv2.weight", "a ResNet with basic blocks (resnet18/34)"},
  };
  for (const auto& p : kPatterns) {
    if (std::find(names.begin(), names.end(), p.key) != names.end()) return p.layout;
  }
  return "";
}

std::string hf_weights_file(const std::string& dir) {
  for (const char* name : {"model.safetensors", "pytorch_model.bin"}) {
    const fs::path p = fs::path(dir) / name;
    if (fs::exists(p)) return p.string();
  }
  VT_FAIL(dir, ": no model.safetensors or pytorch_model.bin; a Hugging Face model directory "
               "holds config.json and one of them");
}

/// timm's Hugging Face hub layout: config.json beside the weights, whose pretrained_cfg is
/// the eval transform the weights were made for (null when there is none).
json timm_hub_config(const std::string& weights_path) {
  const fs::path path = fs::path(weights_path).parent_path() / "config.json";
  if (!fs::is_regular_file(path)) return nullptr;
  const json j = parse_json(read_text_file(path.string()), path.string());
  if (!j.is_object() || !j.contains("pretrained_cfg") || !j["pretrained_cfg"].is_object()) {
    return nullptr;
  }
  return j;
}

/// Three channel statistics from a pretrained_cfg member, or none.
std::optional<std::vector<float>> channel_stats(const json& cfg, const char* key) {
  if (!cfg.contains(key) || !cfg[key].is_array() || cfg[key].size() != 3) return std::nullopt;
  std::vector<float> out;
  for (const auto& v : cfg[key]) {
    if (!v.is_number()) return std::nullopt;
    out.push_back(v.get<float>());
  }
  return out;
}

/// The image size a ViT checkpoint's position embeddings were trained at (their patch grid
/// times the patch size), or 0 when they do not say.
int64_t pos_embedding_image_size(const StateDict& state, int64_t patch_size) {
  for (const auto& [name, t] : state) {
    if (name == "encoder.pos_embedding" && t.dim() == 3) {
      return patch_grid_side(t.size(1)) * patch_size;
    }
  }
  return 0;
}

}  // namespace

Source parse_source(const std::string& name) {
  if (name == "torchvision") return Source::kTorchvision;
  if (name == "hf" || name == "huggingface") return Source::kHuggingFace;
  if (name == "timm") return Source::kTimm;
  if (name == "vitrine") return Source::kVitrine;
  VT_FAIL("unknown checkpoint source '", name, "'; use torchvision, hf or timm");
}

const char* source_name(Source source) {
  switch (source) {
    case Source::kTorchvision: return "torchvision";
    case Source::kHuggingFace: return "hf";
    case Source::kTimm: return "timm";
    case Source::kVitrine: return "vitrine";
  }
  return "?";
}

std::string LoadReport::summary(size_t max_items) const {
  std::ostringstream os;
  auto list = [&](const char* what, const std::vector<std::string>& items) {
    if (items.empty()) return;
    os << "\n  " << items.size() << " " << what << ":";
    for (size_t i = 0; i < items.size() && i < max_items; ++i) os << "\n    " << items[i];
    if (items.size() > max_items) os << "\n    ... and " << items.size() - max_items << " more";
  };
  list("missing from the checkpoint", missing);
  list("unexpected in the checkpoint", unexpected);
  list("with another shape", mismatched);
  list("adapted", adapted);
  list("ignored", ignored);
  return os.str();
}

StateDict map_keys(const StateDict& state, Source source, Family family, LoadReport& report) {
  const auto& rules = rules_for(source, family);
  StateDict out;
  std::map<std::string, std::array<at::Tensor, 3>> parts;
  std::vector<std::string> part_order;
  for (const auto& [name, tensor] : state) {
    const KeyRule* hit = nullptr;
    for (const auto& r : rules) {
      if (std::regex_search(name, r.from)) {
        hit = &r;
        break;
      }
    }
    if (hit == nullptr) {
      out.emplace_back(name, tensor);
    } else if (hit->ignore) {
      report.ignored.push_back(name);
    } else {
      const std::string target = std::regex_replace(name, hit->from, hit->to);
      if (hit->part < 0) {
        out.emplace_back(target, tensor);
      } else {
        if (!parts.count(target)) part_order.push_back(target);
        parts[target][hit->part] = tensor;
      }
    }
  }
  static const char* kPartNames[] = {"query", "key", "value"};
  for (const auto& target : part_order) {
    const auto& p = parts[target];
    for (int i = 0; i < 3; ++i) {
      VT_CHECK(p[i].defined(), "checkpoint has no ", kPartNames[i], " tensor for ", target,
               "; the attention weights are incomplete");
    }
    out.emplace_back(target, at::cat({p[0], p[1], p[2]}, 0));
  }
  return out;
}

int64_t VisionModelImpl::add_lora(const LoraOptions&) {
  VT_FAIL("LoRA adapters are not yet supported for ", config_.arch,
          "; they are for ViT models (vit_*)");
}

at::Tensor VisionModelImpl::forward_visible(const at::Tensor&, const at::Tensor&) {
  VT_FAIL("masked-image modelling needs patch tokens, which ", config_.arch,
          " has not; use a ViT (vit_*), or --method simclr");
}

StateDict VisionModelImpl::deployable_state_dict() const { return model_state_dict(*this); }

bool VisionModelImpl::use_channels_last_for_training() {
  if (config_.family != Family::kResNet) return false;
  at::NoGradGuard no_grad;
  const auto to_nhwc = [](at::Tensor& t) {
    if (t.defined() && t.dim() == 4) t.set_data(t.data().contiguous(at::MemoryFormat::ChannelsLast));
  };
  for (auto& p : parameters()) to_nhwc(p);
  for (auto& b : buffers()) to_nhwc(b);
  return true;
}

void VisionModelImpl::check_int8_ready(bool fused) const {
  VT_CHECK(fused, "int8 runs on the fused path only; use the fused engine");
  VT_CHECK(!config_.int8_scales.empty(), config_.arch,
           ": the model has no int8 calibration; make one with `vitrine optimize --int8 "
           "--calib DATA`");
}

std::vector<float> VisionModelImpl::calibrate_int8(const std::function<at::Tensor()>&) {
  VT_FAIL("int8 quantisation is not yet supported for ", config_.arch,
          "; it is for ResNets (resnet*); use --precision bf16 or fp32");
}

StateDict model_state_dict(const VisionModelImpl& model) {
  StateDict out;
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    const std::string prefix = item.key().empty() ? "" : item.key() + ".";
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) {
      out.emplace_back(prefix + p.key(), p.value());
    }
    for (const auto& b : item.value()->named_buffers(/*recurse=*/false)) {
      out.emplace_back(prefix + b.key(), b.value());
    }
  }
  return out;
}

LoadReport load_state_dict(VisionModelImpl& model, const StateDict& state,
                           const LoadOptions& options) {
  LoadReport report;
  std::map<std::string, at::Tensor> given;
  for (const auto& [name, t] : state) {
    VT_CHECK(!given.count(name), "checkpoint has two tensors named '", name, "'");
    given[name] = t;
  }
  const ModelConfig& cfg = model.config();
  const std::string head = model.head_name() + ".";
  const std::string stem = model.stem_weight_name();
  std::set<std::string> used;
  at::NoGradGuard no_grad;
  for (auto& [name, target] : model_state_dict(model)) {
    auto it = given.find(name);
    if (it == given.end()) {
      // PyTorch itself accepts checkpoints without batch-norm step counters.
      if (name.rfind(head, 0) == 0 && options.reinit_head) {
        report.adapted.push_back(name + ": newly initialised (not in the checkpoint)");
      } else if (!ends_with(name, "num_batches_tracked")) {
        report.missing.push_back(name);
      }
      continue;
    }
    used.insert(name);
    at::Tensor src = it->second;
    if (src.sizes() != target.sizes()) {
      const std::string mismatch =
          name + ": model " + shape_str(target.sizes()) + " vs checkpoint " + shape_str(src.sizes());
      if (name == "encoder.pos_embedding" && src.dim() == 3 && src.size(2) == target.size(2)) {
        src = interpolate_pos_embedding(src, target.size(1), options);
        report.adapted.push_back(
            name + ": interpolated from " + std::to_string(it->second.size(1)) + " to " +
            std::to_string(target.size(1)) + " tokens (bicubic" +
            (options.pos_align_corners ? ", corners aligned" : "") +
            (options.pos_antialias ? ", antialiased" : "") + ")");
      } else if (name == stem && cfg.in_channels == 1 && src.dim() == 4 && src.size(1) == 3 &&
                 src.size(0) == target.size(0)) {
        // An RGB filter applied to a grey image sees the same value in each channel.
        src = src.sum(1, /*keepdim=*/true);
        report.adapted.push_back(name + ": RGB filters summed for 1-channel input");
      } else if (name.rfind(head, 0) == 0 && options.reinit_head) {
        report.adapted.push_back(name + ": re-initialised (" + mismatch + ")");
        continue;
      } else {
        report.mismatched.push_back(mismatch);
        continue;
      }
    }
    target.copy_(src.to(target.scalar_type()));
  }
  const std::string ckpt_head = cfg.family == Family::kViT ? "heads.head." : "fc.";
  for (const auto& [name, t] : state) {
    if (used.count(name)) continue;
    if (options.reinit_head && name.rfind(ckpt_head, 0) == 0) {
      // A backbone (no head) made from a classifier: its head is dropped on purpose.
      report.adapted.push_back(name + ": dropped (the model has no head)");
    } else {
      report.unexpected.push_back(name);
    }
  }
  if (options.strict && !report.ok()) {
    std::vector<std::string> names;
    for (const auto& [name, t] : state) names.push_back(name);
    const std::string looks = guess_layout(names);
    VT_FAIL("checkpoint does not fit ", cfg.arch, report.summary(),
            looks.empty() ? "" : "\n  the checkpoint's keys look like " + looks,
            "\n  ", options.hint);
  }
  return report;
}

StateDict read_weights(const std::string& path) {
  VT_CHECK(fs::exists(path), path, ": no such file");
  VT_CHECK(fs::is_regular_file(path), path, ": not a file");
  unsigned char head[9] = {0};
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(head), sizeof head);
  const auto got = static_cast<size_t>(in.gcount());
  // safetensors: a little-endian u64 header length (its first byte anything, 0x80 too),
  // then the JSON header. Looked at first: a pickle's 0x80 says nothing by itself.
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | head[i];
  const bool safetensors = got == sizeof head && head[8] == '{' &&
                           header_length <= static_cast<uint64_t>(fs::file_size(path)) - 8;
  // torch.save writes a zip archive (or, before PyTorch 1.6, a bare pickle: 0x80).
  if (!safetensors && got >= 2 &&
      ((head[0] == 'P' && head[1] == 'K') || head[0] == 0x80)) {
    return pth_load(path);
  }
  // A safetensors header (or a file named so) that is cut short or malformed: its own errors.
  if (safetensors || (got == sizeof head && head[8] == '{') ||
      fs::path(path).extension() == ".safetensors") {
    return safetensors_load(path).tensors;
  }
  // What the file is instead, where its first bytes say.
  std::string is;
  if (got >= 3 && head[0] == 0xFF && head[1] == 0xD8 && head[2] == 0xFF) is = " (a JPEG image)";
  if (got >= 4 && head[0] == 0x89 && head[1] == 'P' && head[2] == 'N' && head[3] == 'G') {
    is = " (a PNG image)";
  }
  if (got >= 2 && head[0] == 0x1F && head[1] == 0x8B) is = " (gzip: unpack it first)";
  if (got >= 1 && (head[0] == '<' || head[0] == '{')) is = " (text: HTML or JSON, not weights)";
  VT_FAIL(path, ": not a checkpoint", is, ": weights come as a torch.save file (.pth/.pt/.bin: "
          "a zip archive, or a pickle of PyTorch before 1.6) or a safetensors file; give the "
          "weights file itself as --weights");
}

VisionModel import_checkpoint(const ImportOptions& o, LoadReport* report_out) {
  ModelConfig config;
  std::string weights_path = o.weights;
  double timm_crop_pct = 0;
  if (o.source == Source::kHuggingFace) {
    VT_CHECK(fs::is_directory(o.weights), o.weights,
             ": --from hf expects a Hugging Face model directory (config.json + "
             "model.safetensors)");
    config = config_from_hf(o.weights);
    weights_path = hf_weights_file(o.weights);
    VT_CHECK(o.arch.empty() || o.arch == config.arch || o.arch == "vit_custom", "--arch ", o.arch,
             " does not match the Hugging Face config, which describes ", config.arch);
  } else {
    VT_CHECK(!o.arch.empty(), "--arch is required for --from ", source_name(o.source),
             " (the file holds no architecture)");
    config = model_preset(o.arch);
    if (o.source == Source::kTimm) {
      // A timm hub folder (config.json + model.safetensors) may be given as the folder.
      if (fs::is_directory(o.weights)) weights_path = hf_weights_file(o.weights);
      // timm's usual eval transforms where the weights do not say: ViTs bicubic, crop_pct
      // 0.9, mean = std = 0.5; ResNets (the a1 recipe) bicubic, crop_pct 0.95, ImageNet's.
      config.preprocess.interpolation = image::Interpolation::kBicubic;
      if (config.family == Family::kViT) {
        config.preprocess.mean = {0.5f, 0.5f, 0.5f};
        config.preprocess.std = {0.5f, 0.5f, 0.5f};
      }
      timm_crop_pct = config.family == Family::kViT ? 0.9 : 0.95;
    }
  }
  LoadReport report;
  StateDict state = map_keys(read_weights(weights_path), o.source, config.family, report);

  // What the weights were made for, where their files say (timm's pretrained_cfg).
  int64_t image_size = o.image_size.value_or(0);
  std::vector<std::string> cfg_labels;
  std::string transform_from = o.source == Source::kTimm ? "timm" : "";
  const json hub = o.source == Source::kTimm ? timm_hub_config(weights_path) : json(nullptr);
  if (!hub.is_null()) {
    const json& pc = hub["pretrained_cfg"];
    transform_from = (fs::path(weights_path).parent_path() / "config.json").string();
    if (image_size == 0 && pc.contains("input_size") && pc["input_size"].is_array() &&
        pc["input_size"].size() == 3 && pc["input_size"][1].is_number_integer()) {
      image_size = pc["input_size"][1].get<int64_t>();
      if (pc["input_size"][2] != pc["input_size"][1]) {
        spdlog::warn("{} asks for {}x{} input; Vitrine's models take square images: {} a side",
                     transform_from, pc["input_size"][1].dump(), pc["input_size"][2].dump(),
                     image_size);
      }
    }
    if (pc.contains("crop_pct") && pc["crop_pct"].is_number()) {
      timm_crop_pct = pc["crop_pct"].get<double>();
    }
    const std::string crop_mode = pc.value("crop_mode", "center");
    if (crop_mode == "squash") {
      config.preprocess.squash = true;
    } else if (crop_mode != "center") {
      spdlog::warn("{}: crop_mode '{}' is not supported; a centre crop is used", transform_from,
                   crop_mode);
    }
    if (pc.contains("interpolation") && pc["interpolation"].is_string()) {
      try {
        config.preprocess.interpolation = image::parse_interpolation(pc["interpolation"]);
      } catch (const Error&) {
        spdlog::warn("{}: interpolation '{}' is not supported; bicubic is used", transform_from,
                     pc["interpolation"].get<std::string>());
      }
    }
    if (const auto m = channel_stats(pc, "mean")) config.preprocess.mean = *m;
    if (const auto s = channel_stats(pc, "std")) config.preprocess.std = *s;
    if (hub.contains("label_names") && hub["label_names"].is_array()) {
      for (const auto& l : hub["label_names"]) {
        if (l.is_string()) cfg_labels.push_back(l.get<std::string>());
      }
    }
  }
  // A ViT's position embeddings say the size it was trained at (a 384-pixel checkpoint is
  // not shrunk to 224 unasked).
  if (image_size == 0 && config.family == Family::kViT && o.source != Source::kHuggingFace) {
    const int64_t trained = pos_embedding_image_size(state, config.vit.patch_size);
    if (trained > 0 && trained != config.image_size) {
      spdlog::info("the checkpoint's position embeddings are of a {}-pixel grid: image size "
                   "{} (--image-size resizes them)", trained, trained);
      image_size = trained;
    }
  }

  // The class count comes from the checkpoint's head unless asked otherwise.
  const std::string head_key = config.family == Family::kViT ? "heads.head.weight" : "fc.weight";
  int64_t ckpt_classes = 0;
  for (const auto& [name, t] : state) {
    if (name == head_key && t.dim() == 2) ckpt_classes = t.size(0);
  }
  config.num_classes = o.num_classes.value_or(ckpt_classes);
  if (!cfg_labels.empty()) config.labels = cfg_labels;
  if (config.labels.size() != static_cast<size_t>(config.num_classes)) config.labels.clear();
  if (!o.labels_file.empty()) config.labels = read_labels_file(o.labels_file);
  VT_CHECK(config.labels.empty() || static_cast<int64_t>(config.labels.size()) == config.num_classes,
           o.labels_file, ": ", config.labels.size(), " labels for a head of ", config.num_classes,
           " classes");
  // Asked for on the command line: over anything the checkpoint implies.
  if (o.interpolation) {
    config.preprocess.interpolation = image::parse_interpolation(*o.interpolation);
  }
  for (const auto& [given, stats, flag] :
       {std::tuple{&o.mean, &config.preprocess.mean, "--mean"},
        std::tuple{&o.std, &config.preprocess.std, "--std"}}) {
    if (!*given) continue;
    VT_CHECK((*given)->size() == 3 || (*given)->size() == 1, flag, " takes 3 values (R G B) or "
             "1, got ", (*given)->size());
    *stats = (*given)->size() == 3 ? **given : std::vector<float>(3, (**given)[0]);
  }
  for (const float s : config.preprocess.std) {
    VT_CHECK(s > 0, "the normalisation std must be positive (", s, " given by ",
             o.std ? std::string("--std")
                   : transform_from.empty() ? std::string("the checkpoint's preprocessing")
                                            : transform_from,
             ")");
  }
  if (o.in_channels) {
    config.in_channels = *o.in_channels;
    if (config.in_channels == 1) {
      // Grey input: the mean of the RGB statistics, as timm adapts them.
      float m = 0, s = 0;
      for (size_t i = 0; i < config.preprocess.mean.size(); ++i) {
        m += config.preprocess.mean[i] / config.preprocess.mean.size();
        s += config.preprocess.std[i] / config.preprocess.std.size();
      }
      config.preprocess.mean = {m};
      config.preprocess.std = {s};
    }
  }
  config.preprocess.channels = config.in_channels;
  if (image_size > 0) set_image_size(config, image_size);
  if (o.eval_crop_pct) {
    set_eval_crop(config, *o.eval_crop_pct);
  } else if (timm_crop_pct > 0) {
    set_eval_crop(config, timm_crop_pct);
  }
  if (!transform_from.empty() && !o.eval_crop_pct) {
    const bool guessed = hub.is_null();
    spdlog::info("eval transform {}: resize {}, crop {}, {}{}{}",
                 guessed ? "timm's usual one" : "from " + transform_from,
                 config.preprocess.resize, config.preprocess.crop,
                 image::interpolation_name(config.preprocess.interpolation),
                 config.preprocess.squash ? ", squashed" : "",
                 guessed ? "; weights made for another: give their hub folder (config.json "
                           "holds it) or --eval-crop-pct, --interpolation, --mean, --std"
                         : "");
  }
  config.provenance_json = json_text(json{{"source", source_name(o.source)},
                                {"weights", fs::absolute(weights_path).string()},
                                {"imported_at", now_iso8601()},
                                {"command", o.command}});
  VisionModel model = create_model(config);
  LoadOptions lo;
  lo.strict = o.strict;
  lo.reinit_head = o.num_classes.has_value() && *o.num_classes != ckpt_classes;
  // Position embeddings resized as the checkpoint's own library resizes them.
  lo.pos_align_corners = o.source != Source::kHuggingFace && o.source != Source::kTimm;
  lo.pos_antialias = o.source == Source::kTimm;
  VT_CHECK(config.num_classes >= 0, "--num-classes must be >= 0 (0: no head, a backbone)");
  LoadReport load = load_state_dict(*model, state, lo);
  load.ignored.insert(load.ignored.end(), report.ignored.begin(), report.ignored.end());
  if (report_out) *report_out = load;
  return model;
}

}  // namespace vitrine::models
