// Decoding and preprocessing many files at once, in parallel, keeping going past
// the bad ones.
#pragma once

#include "vitrine/image/decode.h"
#include "vitrine/image/transform.h"

#include <string>
#include <vector>

namespace vitrine::image {

struct LoadedImage {
  std::string path;
  at::Tensor tensor;  ///< C x crop x crop float, undefined when `error` is set
  std::string error;  ///< what went wrong and what to do; empty when ok
  bool ok() const { return error.empty(); }
};

/// Reads, decodes and transforms each file on libtorch's worker threads. A file that
/// fails gets its error message; the others are unaffected. Order is kept.
std::vector<LoadedImage> load_images(const std::vector<std::string>& paths,
                                     const EvalTransform& transform,
                                     const DecodeOptions& options = {});

/// Expands directories into the files below them whose extension names an image format
/// (sorted; GIF and TIFF included, so they are reported as unsupported rather than
/// skipped); files stay as given, entries the system keeps for itself (is_system_entry) are
/// passed over. Folders that cannot be read are skipped and named in
/// `warnings`.
std::vector<std::string> expand_image_paths(const std::vector<std::string>& paths,
                                            std::vector<std::string>* warnings = nullptr);

/// The extensions expand_image_paths takes from folders, as a list to show ("jpg, jpeg, ...").
const std::string& folder_image_extensions();

/// The warning that `count` hidden image files (is_system_entry) in `folder` were skipped.
std::string hidden_photos_warning(int64_t count, const std::string& folder);

}  // namespace vitrine::image
