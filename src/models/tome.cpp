#include "tome.h"

#include "vitrine/core/error.h"
#include "vitrine/models/config.h"

#include <ATen/ATen.h>

#include <limits>

namespace vitrine::models::tome {

std::pair<at::Tensor, at::Tensor> merge(const at::Tensor& x, const at::Tensor& size,
                                        const at::Tensor& keys, int64_t r) {
  VT_DCHECK(x.dim() == 3 && keys.dim() == 3 && keys.size(1) == x.size(1));
  const int64_t n = x.size(0), t = x.size(1);
  r = tome_merges(t, r);
  at::Tensor s = size.defined() ? size : at::ones({n, t, 1}, x.options().dtype(at::kFloat));
  if (r <= 0) return {x, s};
  at::Tensor unm_idx, src_idx, dst_idx;
  {
    const at::Tensor m = keys.to(at::kFloat);
    const at::Tensor metric = m / m.norm(2, {-1}, /*keepdim=*/true);
    const at::Tensor a = metric.slice(1, 0, t, 2), b = metric.slice(1, 1, t, 2);
    at::Tensor scores = at::matmul(a, b.transpose(-1, -2));
    scores.select(1, 0).fill_(-std::numeric_limits<float>::infinity());  // the class token
    const auto [node_max, node_idx] = scores.max(-1);
    const at::Tensor edge_idx =
        std::get<1>(node_max.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true)).unsqueeze(-1);
    // Unmerged tokens of the first set keep their order, so the class token stays first.
    unm_idx = std::get<0>(edge_idx.slice(1, r).sort(1));
    src_idx = edge_idx.slice(1, 0, r);
    dst_idx = node_idx.unsqueeze(-1).gather(1, src_idx);
  }
  const auto merge_sum = [&](const at::Tensor& v) {
    const int64_t w = v.size(2);
    const at::Tensor src = v.slice(1, 0, t, 2), dst = v.slice(1, 1, t, 2);
    const int64_t t1 = src.size(1);
    const at::Tensor unm = src.gather(1, unm_idx.expand({n, t1 - r, w}));
    const at::Tensor moved = src.gather(1, src_idx.expand({n, r, w}));
    return at::cat({unm, dst.scatter_add(1, dst_idx.expand({n, r, w}), moved)}, 1);
  };
  // Size-weighted average, in fp32 whatever the stream's type.
  const at::Tensor merged_size = merge_sum(s);
  const at::Tensor merged = merge_sum(x.to(at::kFloat) * s) / merged_size;
  return {merged.to(x.scalar_type()).contiguous(), merged_size};
}

void add_log_size(const at::Tensor& scores, const at::Tensor& size) {
  if (!size.defined()) return;
  scores.add_(size.log().view({size.size(0), 1, 1, size.size(1)}).to(scores.scalar_type()));
}

}  // namespace vitrine::models::tome
