// CPU autocast to bf16 for a forward pass and its loss, scoped as Python's
// `with torch.autocast("cpu", dtype=torch.bfloat16)`: backward runs outside, with the
// dtypes the forward recorded. Leaving the scope drops the cached bf16 copies of the
// weights, which the optimiser step is about to make stale (the autograd graph keeps
// its own references, so backward still finds them).
#pragma once

namespace vitrine::train {

class AutocastScope {
 public:
  explicit AutocastScope(bool enabled);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
};

}  // namespace vitrine::train
