#include "vitrine/train/ssl.h"

#include "vitrine/core/error.h"
#include "vitrine/models/predictor.h"

#include <ATen/ATen.h>

#include <algorithm>
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
