// The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte
// little-endian header length, a JSON header naming each tensor's dtype, shape and
// byte range, then the raw little-endian data. Chosen over pickle because a
// checkpoint that travels between teams must not be able to run code.
#pragma once

#include "vitrine/core/state_dict.h"

#include <map>
#include <string>

namespace vitrine {

struct SafetensorsFile {
  StateDict tensors;                          ///< in file order
  std::map<std::string, std::string> metadata;  ///< the "__metadata__" entries
};

/// Reads every tensor of a .safetensors file. Throws vitrine::Error naming the
/// file and the problem for a missing, truncated or malformed file.
SafetensorsFile safetensors_load(const std::string& path);

/// Writes tensors (made contiguous, in the given order) with metadata. The file
/// is written beside `path` and renamed into place, so a crash never leaves a
/// half-written checkpoint behind.
void safetensors_save(const std::string& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace vitrine
