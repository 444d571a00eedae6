#include "vitrine/train/ssl.h"

#include "vitrine/core/error.h"
#include "vitrine/models/predictor.h"

#include <ATen/ATen.h>

#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace vitrine::train {

namespace nn = torch::nn;

at::Tensor nt_xent_loss(const at::Tensor& z1, const at::Tensor& z2, double temperature,
                        double* top1) {
  VT_CHECK(z1.dim() == 2 && z1.sizes() == z2.sizes() && z1.size(0) >= 1, "NT-Xent needs two N x D ",
           "projections of the same shape, got ", z1.sizes(), " and ", z2.sizes());
  VT_CHECK(temperature > 0, "the NT-Xent temperature must be positive, got ", temperature);
  const int64_t n = z1.size(0);
  const at::Tensor z = at::cat({z1, z2}).to(at::kFloat);
  const at::Tensor unit = models::l2_normalized(z);
  at::Tensor sim = at::mm(unit, unit.t()) / temperature;
  // A view is never its own candidate.
  sim = sim.masked_fill(at::eye(2 * n, sim.options().dtype(at::kBool)),
                        -std::numeric_limits<float>::infinity());
  const at::Tensor first = at::arange(n, at::kLong);
  const at::Tensor partner = at::cat({first + n, first});
  if (top1) *top1 = sim.detach().argmax(1).eq(partner).to(at::kFloat).mean().item<double>();
  return at::cross_entropy_loss(sim, partner);
}

ProjectionHeadImpl::ProjectionHeadImpl(int64_t in, int64_t hidden, int64_t out) {
  VT_CHECK(in > 0 && hidden > 0 && out > 0, "projection head sizes must be positive (", in, ", ",
           hidden, ", ", out, ")");
  fc1_ = register_module("fc1", nn::Linear(nn::LinearOptions(in, hidden).bias(false)));
  bn_ = register_module("bn", nn::BatchNorm1d(hidden));
  fc2_ = register_module("fc2", nn::Linear(hidden, out));
}

at::Tensor ProjectionHeadImpl::forward(const at::Tensor& x) {
  return fc2_(at::relu(bn_(fc1_(x))));
}

at::Tensor mae_keep(int64_t n, int64_t patches, double mask_ratio) {
  VT_CHECK(mask_ratio > 0 && mask_ratio < 1, "--mask-ratio must be in (0, 1), got ", mask_ratio);
  VT_CHECK(n >= 1 && patches >= 2, "MAE masking needs images of at least 2 patches, got ",
           patches);
  // At least one patch seen and one hidden: with none hidden the loss is 0 and nothing learns.
  const int64_t keep = std::clamp<int64_t>(
      std::llround(static_cast<double>(patches) * (1.0 - mask_ratio)), 1, patches - 1);
  // A random permutation per image (the order of uniform noise, as MAE draws it).
  return at::rand({n, patches})
      .argsort(/*dim=*/1, /*descending=*/false)
      .narrow(1, 0, keep)
      .contiguous();
}

at::Tensor patchify(const at::Tensor& images, int64_t patch) {
  VT_CHECK(images.dim() == 4 && patch > 0 && images.size(2) % patch == 0 &&
               images.size(3) % patch == 0,
           "patchify needs (N, C, H, W) images whose sides divide by the patch side ", patch,
           ", got ", images.sizes());
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2) / patch,
                w = images.size(3) / patch;
  return images.reshape({n, c, h, patch, w, patch})
      .permute({0, 2, 4, 3, 5, 1})
      .reshape({n, h * w, patch * patch * c});
}

at::Tensor mae_loss(const at::Tensor& pred, const at::Tensor& images, const at::Tensor& keep,
                    int64_t patch, bool norm_pix) {
  at::Tensor target = patchify(images.to(at::kFloat), patch);
  VT_CHECK(pred.sizes() == target.sizes(), "MAE predictions ", pred.sizes(),
           " do not match the images' patches ", target.sizes());
  if (norm_pix) {
    const at::Tensor mean = target.mean(-1, /*keepdim=*/true);
    const at::Tensor var = target.var(-1, /*unbiased=*/true, /*keepdim=*/true);
    target = (target - mean) / (var + 1e-6).sqrt();
  }
  const at::Tensor per_patch = (pred.to(at::kFloat) - target).pow(2).mean(-1);
  const at::Tensor hidden = at::ones_like(per_patch).scatter(1, keep, 0.0);
  return (per_patch * hidden).sum() / hidden.sum().clamp_min(1.0);
}

namespace {

/// MAE's fixed positions: for a grid x grid of patches, half the width encodes the row
/// and half the column, each as sines and cosines of geometrically spaced frequencies;
/// the class token's position is zero. (1 + grid^2, width).
at::Tensor sincos_positions(int64_t width, int64_t grid) {
  const int64_t quarter = width / 4;
  const at::Tensor omega =
      at::pow(10000.0, -at::arange(quarter, at::kDouble) / static_cast<double>(quarter));
  const at::Tensor coord = at::arange(grid, at::kDouble);
  const auto axis = [&](const at::Tensor& pos) {  // (L) -> (L, width / 2)
    const at::Tensor angle = pos.unsqueeze(1) * omega.unsqueeze(0);
    return at::cat({angle.sin(), angle.cos()}, 1);
  };
  const at::Tensor rows = coord.repeat_interleave(grid), cols = coord.repeat({grid});
  const at::Tensor grid_pos = at::cat({axis(rows), axis(cols)}, 1);
  return at::cat({at::zeros({1, width}, at::kDouble), grid_pos}).to(at::kFloat);
}

}  // namespace

MaeDecoderImpl::MaeDecoderImpl(int64_t encoder_width, int64_t grid, int64_t patch_values,
                               int64_t width, int64_t depth, int64_t heads)
    : heads_(heads) {
  VT_CHECK(encoder_width > 0 && grid > 0 && patch_values > 0 && depth >= 1,
           "MAE decoder sizes must be positive");
  VT_CHECK(width > 0 && width % 4 == 0 && heads > 0 && width % heads == 0,
           "--decoder-width must divide by 4 and by --decoder-heads, got ", width, " and ",
           heads);
  embed_ = register_module("embed", nn::Linear(encoder_width, width));
  mask_token_ = register_parameter("mask_token", at::zeros({1, 1, width}));
  pos_ = register_buffer("pos", sincos_positions(width, grid).unsqueeze(0));
  for (int64_t i = 0; i < depth; ++i) {
    auto m = register_module("blocks_" + std::to_string(i), std::make_shared<nn::Module>());
    Block b;
    b.ln_1 = m->register_module("ln_1", nn::LayerNorm(nn::LayerNormOptions({width}).eps(1e-6)));
    b.qkv = m->register_module("qkv", nn::Linear(width, 3 * width));
    b.proj = m->register_module("proj", nn::Linear(width, width));
    b.ln_2 = m->register_module("ln_2", nn::LayerNorm(nn::LayerNormOptions({width}).eps(1e-6)));
    b.fc1 = m->register_module("fc1", nn::Linear(width, 4 * width));
    b.fc2 = m->register_module("fc2", nn::Linear(4 * width, width));
    blocks_.push_back(b);
  }
  norm_ = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({width}).eps(1e-6)));
  pred_ = register_module("pred", nn::Linear(width, patch_values));
  // MAE's initialisation: Xavier-uniform matrices, zero biases, a small mask token.
  at::NoGradGuard no_grad;
  for (auto& p : named_parameters()) {
    if (p.key().find("weight") != std::string::npos && p.value().dim() == 2) {
      nn::init::xavier_uniform_(p.value());
    } else if (p.key().find("bias") != std::string::npos) {
      nn::init::zeros_(p.value());
    }
  }
  nn::init::normal_(mask_token_, 0.0, 0.02);
}

at::Tensor MaeDecoderImpl::forward(const at::Tensor& latent, const at::Tensor& keep) {
  const int64_t n = latent.size(0), k = keep.size(1), patches = pos_.size(1) - 1;
  VT_CHECK(latent.dim() == 3 && latent.size(1) == 1 + k && keep.size(0) == n && k <= patches,
           "the MAE decoder needs (N, 1 + K, D) tokens for (N, K) kept patches, got ",
           latent.sizes(), " and ", keep.sizes());
  at::Tensor x = embed_(latent);
  const int64_t d = x.size(2), hd = d / heads_;
  // Every patch the encoder did not see gets the mask token; the seen ones go back in place.
  // (In the embedding's type, bf16 under autocast; the fp32 positions bring the residual
  // stream back to fp32, which the layer norms need.)
  const at::Tensor grid = mask_token_.to(x.scalar_type())
                              .expand({n, patches, d})
                              .scatter(1, keep.unsqueeze(-1).expand({n, k, d}), x.narrow(1, 1, k));
  x = at::cat({x.narrow(1, 0, 1), grid}, 1) + pos_;
  const int64_t t = x.size(1);
  for (Block& b : blocks_) {
    const auto qkv =
        b.qkv(b.ln_1(x)).view({n, t, 3, heads_, hd}).permute({2, 0, 3, 1, 4}).unbind(0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    const at::Tensor attn = at::softmax(at::matmul(qkv[0], qkv[1].transpose(-2, -1)) * scale, -1);
    x = x + b.proj(at::matmul(attn, qkv[2]).transpose(1, 2).reshape({n, t, d}));
    x = x + b.fc2(at::gelu(b.fc1(b.ln_2(x))));
  }
  return pred_(norm_(x)).narrow(1, 1, patches);
}

Embeddings embed(models::VisionModelImpl& model, const std::shared_ptr<data::Dataset>& data,
                 const EvalOptions& options, std::vector<std::string>* errors) {
  std::vector<at::Tensor> vectors;
  std::vector<int64_t> labels;
  EvalOptions images_only = options;
  images_only.targets = false;  // labels come from the data set, where it has them
  for_each_eval_batch(model, data, images_only, errors, [&](const data::Batch& batch) {
    const at::Tensor f = model.forward_features(batch.images);
    vectors.push_back(models::l2_normalized(f));
    for (const int64_t i : batch.indices) {
      const auto l = data->labels(i);
      labels.push_back(l.empty() ? -1 : l[0]);
    }
  });
  VT_CHECK(!vectors.empty(), "no image of the data set could be read");
  return {at::cat(vectors), at::tensor(labels, at::kLong)};
}

at::Tensor knn_predict(const Embeddings& bank, const at::Tensor& queries, int64_t num_classes,
                       int64_t k, double temperature) {
  VT_CHECK(bank.vectors.dim() == 2 && queries.dim() == 2 && bank.vectors.size(1) == queries.size(1),
           "k-NN: bank and queries must be N x D of the same D");
  VT_CHECK(bank.vectors.size(0) > 0 && queries.size(0) > 0, "k-NN: empty bank or queries");
  VT_CHECK(num_classes > 0 && k > 0 && temperature > 0, "k-NN: bad parameters");
  VT_CHECK(bank.labels.min().item<int64_t>() >= 0 &&
               bank.labels.max().item<int64_t>() < num_classes,
           "k-NN: every bank item needs a label from 0 to ", num_classes - 1);
  const int64_t kk = std::min<int64_t>(k, bank.vectors.size(0));
  std::vector<at::Tensor> out;
  // In chunks, so a large bank never needs a queries x bank matrix at once.
  const int64_t chunk = 512;
  for (int64_t start = 0; start < queries.size(0); start += chunk) {
    const at::Tensor q = queries.slice(0, start, start + chunk);
    const auto [sim, idx] = at::topk(at::mm(q, bank.vectors.t()), kk, 1);
    const at::Tensor votes = at::zeros({q.size(0), num_classes}, at::kFloat);
    votes.scatter_add_(1, bank.labels.index_select(0, idx.flatten()).view_as(idx).clamp_min(0),
                       (sim / temperature).exp());
    out.push_back(votes.argmax(1));
  }
  return at::cat(out);
}

double knn_top1(const Embeddings& bank, const Embeddings& queries, int64_t num_classes, int64_t k,
                double temperature) {
  const at::Tensor predicted = knn_predict(bank, queries.vectors, num_classes, k, temperature);
  return predicted.eq(queries.labels).sum().item<double>() /
         static_cast<double>(queries.vectors.size(0));
}

}  // namespace vitrine::train
