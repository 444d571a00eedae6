// Small building blocks shared by the model files.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace vitrine::models {

/// Stochastic depth (Huang et al. 2016): drops the residual branch per sample with
/// probability `p` while training, scaling the kept ones by 1/(1-p).
inline at::Tensor drop_path(const at::Tensor& x, double p, bool training) {
  if (!training || p <= 0.0) return x;
  const double keep = 1.0 - p;
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = x.size(0);
  at::Tensor mask = at::empty(shape, x.options()).bernoulli_(keep);
  return x * mask / keep;
}

/// The activation functions Hugging Face configs name in `hidden_act`.
inline at::Tensor activation(const at::Tensor& x, const std::string& name) {
  if (name == "gelu") return at::gelu(x);
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (name == "quick_gelu") return x * at::sigmoid(1.702 * x);
  return at::relu(x);  // validated to be "relu" by ModelConfig::validate
}

}  // namespace vitrine::models
