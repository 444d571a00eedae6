#include "vitrine/models/prune.h"

#include "vitrine/core/error.h"
#include "vitrine/models/checkpoint.h"
#include "vitrine/models/registry.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

namespace vitrine::models {
namespace {

using Tensors = std::map<std::string, at::Tensor>;

int64_t kept_count(int64_t width, const PruneOptions& o) {
  auto keep = static_cast<int64_t>(std::llround(static_cast<double>(width) * (1.0 - o.ratio)));
  keep = std::max<int64_t>(keep, 1);
  if (o.multiple > 1 && width >= 4 * o.multiple) {
    keep = std::min(width, (keep + o.multiple - 1) / o.multiple * o.multiple);
  }
  return keep;
}

/// The `keep` highest scores' indices, in ascending order (the kept units keep their order).
at::Tensor top_indices(const at::Tensor& scores, int64_t keep) {
  // Ties (e.g. several dead units) break by position, so the choice is deterministic.
  const at::Tensor order =
      std::get<1>(scores.to(at::kDouble).sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  return std::get<0>(order.narrow(0, 0, keep).sort());
}

/// Root mean square of ReLU(z), z ~ N(mu, sigma^2): E[ReLU(z)^2] =
/// (mu^2 + sigma^2) Phi(mu / sigma) + mu sigma phi(mu / sigma).
at::Tensor relu_rms(const at::Tensor& mu, const at::Tensor& sigma) {
  const at::Tensor s = sigma.abs().clamp_min(1e-12);
  const at::Tensor a = mu / s;
  const at::Tensor cdf = 0.5 * (1 + at::erf(a / std::sqrt(2.0)));
  const at::Tensor pdf = at::exp(-0.5 * a * a) / std::sqrt(2 * M_PI);
  const at::Tensor m2 = (mu * mu + s * s) * cdf + mu * s * pdf;
  // sigma == 0 exactly: the channel is the constant ReLU(mu).
  return at::where(sigma.abs() > 0, m2.clamp_min(0).sqrt(), mu.clamp_min(0));
}

const at::Tensor& get(const Tensors& t, const std::string& key) {
  const auto it = t.find(key);
  VT_CHECK(it != t.end(), "pruning: the model has no tensor '", key, "'");
  return it->second;
}

/// Norms of the slices of `w` along `dim` (one per index of that dimension).
at::Tensor slice_norms(const at::Tensor& w, int64_t dim) {
  return w.transpose(0, dim).reshape({w.size(dim), -1}).norm(2, {1});
}

struct Plan {
  ModelConfig config;
  Tensors out;  ///< pruned tensors by key; keys absent here are copied as they are
  std::vector<std::string> kept;
};

void prune_resnet(const Tensors& t, const PruneOptions& o, Plan& p) {
  const auto& rc = p.config.resnet;
  std::vector<std::vector<int64_t>> widths;
  int64_t index = 0;
  int64_t before = 0, after = 0;
  for (size_t stage = 0; stage < rc.layers.size(); ++stage) {
    for (int64_t b = 0; b < rc.layers[stage]; ++b, ++index) {
      const std::string pre = fmt::format("layer{}.{}.", stage + 1, b);
      const int64_t inner = rc.bottleneck ? 2 : 1;
      std::vector<int64_t> w;
      // Each inner convolution's output channels, read by the next convolution.
      for (int64_t k = 1; k <= inner; ++k) {
        const std::string conv = pre + fmt::format("conv{}.weight", k);
        const std::string bn = pre + fmt::format("bn{}.", k);
        const std::string next = pre + fmt::format("conv{}.weight", k + 1);
        const at::Tensor& gamma = get(t, bn + "weight");
        const at::Tensor& beta = get(t, bn + "bias");
        const at::Tensor reads = p.out.count(next) ? p.out.at(next) : get(t, next);
        const at::Tensor score = relu_rms(beta, gamma) * slice_norms(reads, 1);
        const int64_t width = gamma.size(0), keep = kept_count(width, o);
        const at::Tensor idx = top_indices(score, keep);
        const at::Tensor produce = p.out.count(conv) ? p.out.at(conv) : get(t, conv);
        p.out[conv] = produce.index_select(0, idx);
        for (const char* s : {"weight", "bias", "running_mean", "running_var"}) {
          p.out[bn + s] = get(t, bn + s).index_select(0, idx);
        }
        p.out[next] = reads.index_select(1, idx);
        w.push_back(keep);
        before += width;
        after += keep;
      }
      widths.push_back(w);
    }
  }
  p.config.resnet.block_widths = widths;
  p.kept.push_back(fmt::format("inner channels: {} of {} kept", after, before));
}

void prune_vit(const Tensors& t, const PruneOptions& o, Plan& p) {
  auto& v = p.config.vit;
  const int64_t hd = v.head_dim();
  std::vector<int64_t> heads, widths;
  int64_t heads_before = 0, heads_after = 0, mlp_before = 0, mlp_after = 0;
  for (int64_t i = 0; i < v.num_hidden_layers; ++i) {
    const std::string pre = fmt::format("encoder.layers.encoder_layer_{}.", i);
    // Heads: rows of Q, K and V, columns of the output projection.
    const at::Tensor& qkv_w = get(t, pre + "self_attention.in_proj_weight");
    const at::Tensor& proj_w = get(t, pre + "self_attention.out_proj.weight");
    const int64_t inner = proj_w.size(1), h = inner / hd;
    // The value rows' output spread on ln_1's normalised input, and their bias.
    const at::Tensor& ln1_w = get(t, pre + "ln_1.weight");
    at::Tensor value2 =
        (qkv_w.narrow(0, 2 * inner, inner) * ln1_w.unsqueeze(0)).pow(2).reshape({h, -1}).sum(1);
    const std::string qkv_b = pre + "self_attention.in_proj_bias";
    if (t.count(qkv_b)) {
      value2 = value2 + get(t, qkv_b).narrow(0, 2 * inner, inner).pow(2).reshape({h, -1}).sum(1);
    }
    const at::Tensor value = value2.sqrt();
    const at::Tensor writes =
        proj_w.reshape({proj_w.size(0), h, hd}).transpose(0, 1).reshape({h, -1}).norm(2, {1});
    const int64_t keep_h = std::max<int64_t>(
        1, static_cast<int64_t>(std::llround(static_cast<double>(h) * (1.0 - o.ratio))));
    const at::Tensor kept_heads = top_indices(value * writes, keep_h);
    const at::Tensor cols =
        (kept_heads.unsqueeze(1) * hd + at::arange(hd, kept_heads.options())).reshape({-1});
    const at::Tensor rows = at::cat({cols, cols + inner, cols + 2 * inner});
    p.out[pre + "self_attention.in_proj_weight"] = qkv_w.index_select(0, rows);
    if (t.count(qkv_b)) p.out[qkv_b] = get(t, qkv_b).index_select(0, rows);
    p.out[pre + "self_attention.out_proj.weight"] = proj_w.index_select(1, cols);
    heads.push_back(keep_h);
    heads_before += h;
    heads_after += keep_h;
    // MLP units: rows of fc1 (mlp.0), columns of fc2 (mlp.3).
    const at::Tensor& fc1_w = get(t, pre + "mlp.0.weight");
    const at::Tensor& fc1_b = get(t, pre + "mlp.0.bias");
    const at::Tensor& fc2_w = get(t, pre + "mlp.3.weight");
    const at::Tensor& ln2_w = get(t, pre + "ln_2.weight");
    const at::Tensor in = (fc1_w * ln2_w.unsqueeze(0)).norm(2, {1});
    const at::Tensor score = (in * in + fc1_b * fc1_b).sqrt() * slice_norms(fc2_w, 1);
    const int64_t width = fc1_w.size(0), keep = kept_count(width, o);
    const at::Tensor idx = top_indices(score, keep);
    p.out[pre + "mlp.0.weight"] = fc1_w.index_select(0, idx);
    p.out[pre + "mlp.0.bias"] = fc1_b.index_select(0, idx);
    p.out[pre + "mlp.3.weight"] = fc2_w.index_select(1, idx);
    widths.push_back(keep);
    mlp_before += width;
    mlp_after += keep;
  }
  v.layer_heads = heads;
  v.layer_intermediate_sizes = widths;
  p.kept.push_back(fmt::format("attention heads: {} of {} kept", heads_after, heads_before));
  p.kept.push_back(fmt::format("MLP units: {} of {} kept", mlp_after, mlp_before));
}

int64_t count_params(const VisionModelImpl& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

}  // namespace

PruneResult prune_model(const VisionModelImpl& model, const PruneOptions& o) {
  VT_CHECK(o.ratio >= 0 && o.ratio < 1,
           "--prune takes the share of each block's width to "
           "remove, in [0, 1) (0.3 removes 30%), got ",
           o.ratio);
  at::NoGradGuard no_grad;
  Tensors t;
  for (const auto& [name, tensor] : model.deployable_state_dict()) {
    t[name] = tensor.detach().to(at::kFloat);
  }
  Plan p{model.config(), {}, {}};
  p.config.int8_scales.clear();
  p.config.int8_report_json = "{}";
  if (p.config.family == Family::kResNet) {
    prune_resnet(t, o, p);
  } else {
    prune_vit(t, o, p);
  }
  PruneResult r;
  r.model = create_model(p.config);
  StateDict state;
  for (const auto& [name, tensor] : model_state_dict(*r.model)) {
    const auto it = p.out.find(name);
    state.emplace_back(name, it != p.out.end() ? it->second : get(t, name));
  }
  LoadOptions lo;
  lo.strict = true;
  load_state_dict(*r.model, state, lo);
  r.model->train(model.is_training());
  r.params_before = count_params(model);
  r.params_after = count_params(*r.model);
  for (const auto& k : p.kept) r.summary += (r.summary.empty() ? "" : "; ") + k;
  return r;
}

}  // namespace vitrine::models
