// Loading weights into models: key maps from each checkpoint source onto
// Vitrine's (torchvision's) module paths, strict loading that explains itself, and
// import of the checkpoints users bring (torchvision .pth, Hugging Face directories,
// timm safetensors).
#pragma once

#include "vitrine/core/state_dict.h"
#include "vitrine/models/config.h"
#include "vitrine/models/model.h"

#include <optional>
#include <string>
#include <vector>

namespace vitrine::models {

enum class Source { kTorchvision, kHuggingFace, kTimm, kVitrine };
Source parse_source(const std::string& name);  ///< torchvision | hf | timm | vitrine
const char* source_name(Source source);

/// What a load did: every missing, unexpected and mis-shaped tensor by name, and
/// each deliberate adaptation (interpolated position embeddings, ...).
struct LoadReport {
  std::vector<std::string> missing;
  std::vector<std::string> unexpected;
  std::vector<std::string> mismatched;  ///< "name: model [..] vs checkpoint [..]"
  std::vector<std::string> ignored;     ///< source tensors with no use here (HF pooler)
  std::vector<std::string> adapted;
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  /// Each list shows at most `max_items` names.
  std::string summary(size_t max_items = 12) const;
};

struct LoadOptions {
  bool strict = true;        ///< throw when anything is missing, unexpected or mis-shaped
  bool reinit_head = false;  ///< a head of another class count is re-initialised, not an error
  /// The advice closing a strict failure.
  std::string hint = "check --arch and --from, or the class count (--num-classes)";
  /// How position embeddings of another grid are resized (bicubic): torchvision's
  /// interpolate_embeddings aligns corners; Hugging Face's interpolate_pos_encoding does
  /// not, nor does timm's resample_abs_pos_embed, which also antialiases when shrinking.
  bool pos_align_corners = true;
  bool pos_antialias = false;
};

/// Renames a checkpoint from `source`'s layout to Vitrine's for `family` (one table of
/// rules per source; Hugging Face's separate query/key/value are fused into in_proj).
StateDict map_keys(const StateDict& state, Source source, Family family, LoadReport& report);

/// Copies `state` (Vitrine layout) into `model`, converting dtypes. Adapts, and says so:
/// position embeddings of another grid (bicubic, as the checkpoint's source resizes them),
/// an RGB stem into a 1-channel model (summed over channels), a head of another size
/// (only with reinit_head). Strict mode throws with the full report.
LoadReport load_state_dict(VisionModelImpl& model, const StateDict& state,
                           const LoadOptions& options = {});

/// Parameters and buffers under their checkpoint keys, in PyTorch's state_dict order.
StateDict model_state_dict(const VisionModelImpl& model);

/// Reads a .pth (zip) or .safetensors file, by content.
StateDict read_weights(const std::string& path);

struct ImportOptions {
  Source source = Source::kTorchvision;
  std::string arch;                      ///< required except for Hugging Face directories
  std::string weights;                   ///< file, or directory for Hugging Face
  std::string labels_file;               ///< one label per line (optional)
  std::optional<int64_t> num_classes;    ///< default: the checkpoint's head
  std::optional<int64_t> image_size;     ///< default: the checkpoint's
  std::optional<int64_t> in_channels;    ///< default 3; 1 adapts an RGB stem
  /// The eval transform, over what the checkpoint's source implies (a timm hub folder's
  /// config.json pretrained_cfg, else the source's usual one): resize = size / crop_pct.
  std::optional<double> eval_crop_pct;
  std::optional<std::string> interpolation;  ///< nearest | bilinear | bicubic
  std::optional<std::vector<float>> mean, std;
  bool strict = true;
  std::string command;                   ///< recorded in provenance
};

/// Builds the model a checkpoint describes and loads it. `report` receives what happened.
VisionModel import_checkpoint(const ImportOptions& options, LoadReport* report = nullptr);

}  // namespace vitrine::models
