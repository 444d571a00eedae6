// Self-supervised pretraining pieces: SimCLR's loss and projection head, MAE's masking,
// loss and decoder, and the k-nearest-neighbour monitor that tells, without training a
// classifier, how well embeddings separate classes.
#pragma once

#include "vitrine/data/dataset.h"
#include "vitrine/models/model.h"
#include "vitrine/train/evaluate.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

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

/// MAE (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners") draws, for
/// each of `n` images of `patches` patches, the patches its encoder sees: a uniformly random
/// round(patches * (1 - mask_ratio)) of them (at least one), from libtorch's generator.
/// (n, K) int64 patch indices.
at::Tensor mae_keep(int64_t n, int64_t patches, double mask_ratio);

/// Images (N, C, H, W) as rows of patch values (N, L, p * p * C): the patches of side `patch`
/// row by row, each patch's values in (row, column, channel) order, as MAE's patchify.
at::Tensor patchify(const at::Tensor& images, int64_t patch);

/// MAE's loss: the mean squared error between the predicted patch values `pred` (N, L, P)
/// and the images' own, over the patches the encoder did not see (those not in `keep`).
/// With `norm_pix` (MAE's default) each true patch is first normalised by its own mean and
/// variance, so the loss rewards structure, not brightness.
at::Tensor mae_loss(const at::Tensor& pred, const at::Tensor& images, const at::Tensor& keep,
                    int64_t patch, bool norm_pix = true);

/// MAE's decoder, trained with the encoder and then thrown away: the encoder's tokens
/// projected to its width, a learned mask token in every place the encoder did not see,
/// fixed 2-D sine-cosine positions, pre-norm transformer blocks, and a linear layer that
/// predicts each patch's values.
class MaeDecoderImpl : public torch::nn::Module {
 public:
  /// `grid`: patches per side; `patch_values`: p * p * channels; `width` divisible by 4
  /// and by `heads`.
  MaeDecoderImpl(int64_t encoder_width, int64_t grid, int64_t patch_values, int64_t width,
                 int64_t depth, int64_t heads);
  /// `latent`: the encoder's tokens (N, 1 + K, encoder width), class token first, for the
  /// patches `keep` (N, K). Returns predicted values of every patch (N, grid^2, patch values).
  at::Tensor forward(const at::Tensor& latent, const at::Tensor& keep);

 private:
  struct Block {
    torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
    torch::nn::Linear qkv{nullptr}, proj{nullptr}, fc1{nullptr}, fc2{nullptr};
  };
  int64_t heads_;
  torch::nn::Linear embed_{nullptr}, pred_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
  at::Tensor mask_token_, pos_;
  std::vector<Block> blocks_;
};
TORCH_MODULE(MaeDecoder);

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
