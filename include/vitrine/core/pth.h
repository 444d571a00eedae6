// Reading PyTorch checkpoints (torch.save files) without running their pickles.
#pragma once

#include <string>

#include "vitrine/core/state_dict.h"

namespace vitrine {

/// Reads the tensors of a torch.save'd checkpoint (zip format, PyTorch >= 1.6).
/// Accepts a state_dict (OrderedDict or dict of tensors), or a training checkpoint dict
/// wrapping one under "state_dict", "model", "model_state_dict", "module" or "model_ema"
/// (first found in that order); a "module." prefix (DataParallel) is stripped.
///
/// The checkpoint's pickle may only name tensor and container types: anything else (a
/// pickled nn.Module, numpy arrays, arbitrary callables) is refused without being run.
/// Tensors come back contiguous, on the CPU, in the file's key order, owning their
/// memory. Throws vitrine::Error naming the file and the problem on any bad input.
StateDict pth_load(const std::string& path);

}  // namespace vitrine
