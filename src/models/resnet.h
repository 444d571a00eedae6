// ResNet (He et al., "Deep Residual Learning for Image Recognition", 2015), in
// torchvision's layout: the stride sits on the 3x3 convolution ("ResNet v1.5") and
// module paths are torchvision's state_dict keys (conv1, bn1, layer1.0.conv1, ...,
// layer1.0.downsample.0, fc). timm's resnet* checkpoints use the same keys.
#pragma once

#include "vitrine/models/model.h"

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <vector>

namespace vitrine::models {
namespace onednn {
class ResNet;
struct ResNetBlock;
struct ResNetWeights;
}  // namespace onednn

/// A convolution with its batch norm folded in, weights in the inference dtype and layout.
struct FoldedConv {
  at::Tensor weight, bias;
  int64_t stride = 1, padding = 0;
  at::Tensor operator()(const at::Tensor& x) const;
};

class ResNetBlockImpl : public torch::nn::Module {
 public:
  /// `widths`: the inner widths ({conv1's output} basic, {conv1's, conv2's} bottleneck;
  /// `planes` each unless pruned); the block's output has planes x expansion channels.
  ResNetBlockImpl(int64_t in_planes, int64_t planes, int64_t stride, bool bottleneck,
                  double drop_path, const std::vector<int64_t>& widths);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor forward_folded(const at::Tensor& x) const;
  void fold(at::ScalarType dtype, bool channels_last);
  /// The block's convolutions with their batch norms folded in, in fp32, for the fused path.
  onednn::ResNetBlock fused_weights() const;

 private:
  bool bottleneck_;
  double drop_path_;
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr}, bn2_{nullptr}, bn3_{nullptr};
  torch::nn::Conv2d down_conv_{nullptr};
  torch::nn::BatchNorm2d down_bn_{nullptr};
  torch::nn::Sequential downsample_{nullptr};
  std::vector<FoldedConv> folded_;  ///< conv1..conv3 then downsample (when present)
};
TORCH_MODULE(ResNetBlock);

class ResNetImpl : public VisionModelImpl {
 public:
  explicit ResNetImpl(ModelConfig config);

  at::Tensor forward_features(const at::Tensor& images) override;
  at::Tensor forward_head(const at::Tensor& features) override;
  std::pair<at::Tensor, at::Tensor> forward_with_feature_map(const at::Tensor& images) override;
  std::string head_name() const override { return "fc"; }
  std::string stem_weight_name() const override { return "conv1.weight"; }
  void reset_head(int64_t num_classes) override;
  void prepare_inference(at::ScalarType dtype, bool fused) override;
  bool fused_inference() const override { return fused_ != nullptr; }
  std::vector<float> calibrate_int8(const std::function<at::Tensor()>& next_batch) override;
  at::Tensor forward_inference(const at::Tensor& images) override;
  at::Tensor forward_features_inference(const at::Tensor& images) override;

 private:
  void check_input(const at::Tensor& images) const;
  /// Every convolution with its batch norm folded in, fp32, for the fused path.
  onednn::ResNetWeights fused_weights() const;

  torch::nn::Conv2d conv1_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr};
  bool stem_pool_ = true;
  std::vector<torch::nn::ModuleList> stages_;
  std::vector<ResNetBlock> blocks_;
  torch::nn::Linear fc_{nullptr};

  // Inference path, built by prepare_inference.
  bool prepared_ = false;
  at::ScalarType inference_dtype_ = at::kFloat;
  FoldedConv stem_;
  at::Tensor fc_weight_, fc_bias_;
  std::shared_ptr<const onednn::ResNet> fused_;
};
TORCH_MODULE(ResNet);

}  // namespace vitrine::models
