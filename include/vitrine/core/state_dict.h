// A checkpoint's tensors by name, in file order.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace vitrine {

/// Named tensors in the order the file holds them (state_dict order).
using StateDict = std::vector<std::pair<std::string, at::Tensor>>;

}  // namespace vitrine
