// Self-supervised pretraining pieces: SimCLR's loss and projection head, and the
// k-nearest-neighbour monitor that tells, without training a classifier, how well
// embeddings separate classes.
#pragma once

#include "vitrine/data/dataset.h"
#include "vitrine/models/model.h"
#include "vitrine/train/evaluate.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <string>
#include <vector>

namespace vitrine::train {

/// SimCLR's NT-Xent loss (Chen et al. 2020, "A Simple Framework for Contrastive Learning
/// of Visual Representations"): z1[i] and z2[i] (N x D) project two views of image i;
/// after L2 normalisation, each of the 2N views must pick its partner out of the other
/// 2N - 1 by cosine similarity / temperature. The mean cross-entropy over the 2N views.
/// `top1`, when given, receives the share of views whose most similar view is the partner.
at::Tensor nt_xent_loss(const at::Tensor& z1, const at::Tensor& z2, double temperature,
                        double* top1 = nullptr);

/// The projection head SimCLR trains on top of the backbone and then throws away:
/// Linear(in, hidden, no bias) - BatchNorm1d - ReLU - Linear(hidden, out).
class ProjectionHeadImpl : public torch::nn::Module {
 public:
  ProjectionHeadImpl(int64_t in, int64_t hidden, int64_t out);
  at::Tensor forward(const at::Tensor& x);

 private:
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
  torch::nn::BatchNorm1d bn_{nullptr};
};
TORCH_MODULE(ProjectionHead);

/// Backbone embeddings (forward_features, eval mode, the model's eval transform),
/// L2-normalised, of `data`'s images, with their first labels (-1 when unlabelled).
/// Images that fail to decode are skipped and listed in `errors`.
struct Embeddings {
  at::Tensor vectors;  ///< N x D float
  at::Tensor labels;   ///< N int64
};
Embeddings embed(models::VisionModelImpl& model, const std::shared_ptr<data::Dataset>& data,
                 const EvalOptions& options = {}, std::vector<std::string>* errors = nullptr);

/// Weighted k-NN top-1 accuracy (Wu et al. 2018, the monitor of most self-supervised
/// work): each query's k most similar bank vectors (cosine; inputs L2-normalised) vote
/// for their labels with weight exp(similarity / temperature).
double knn_top1(const Embeddings& bank, const Embeddings& queries, int64_t num_classes,
                int64_t k = 20, double temperature = 0.07);
/// The class that weighted k-NN vote gives each query (N x D, L2-normalised): N int64.
at::Tensor knn_predict(const Embeddings& bank, const at::Tensor& queries, int64_t num_classes,
                       int64_t k = 20, double temperature = 0.07);

}  // namespace vitrine::train
