#include "resnet.h"

#include "layers.h"
#include "onednn.h"
#include "vitrine/core/error.h"

#include <torch/nn/functional/pooling.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/pooling.h>

#include <cmath>

namespace vitrine::models {
namespace {

namespace nn = torch::nn;

nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding).bias(false));
}

FoldedConv fold_conv_bn(const nn::Conv2d& conv, const nn::BatchNorm2d& bn,
                        at::ScalarType dtype, bool channels_last) {
  at::NoGradGuard no_grad;
  const auto& opt = conv->options;
  const at::Tensor scale = bn->weight / at::sqrt(bn->running_var + bn->options.eps());
  FoldedConv f;
  f.weight = (conv->weight * scale.view({-1, 1, 1, 1})).to(dtype);
  if (channels_last) f.weight = f.weight.contiguous(at::MemoryFormat::ChannelsLast);
  f.bias = (bn->bias - bn->running_mean * scale).to(dtype);
  f.stride = (*opt.stride())[0];
  // Every convolution here pads to keep "same" geometry: (kernel - 1) / 2.
  f.padding = ((*opt.kernel_size())[0] - 1) / 2;
  return f;
}

}  // namespace

at::Tensor FoldedConv::operator()(const at::Tensor& x) const {
  return at::conv2d(x, weight, bias, {stride, stride}, {padding, padding});
}

ResNetBlockImpl::ResNetBlockImpl(int64_t in_planes, int64_t planes, int64_t stride,
                                 bool bottleneck, double drop_path,
                                 const std::vector<int64_t>& widths)
    : bottleneck_(bottleneck), drop_path_(drop_path) {
  const int64_t expansion = bottleneck ? 4 : 1;
  const int64_t w1 = widths.at(0);
  if (bottleneck) {
    const int64_t w2 = widths.at(1);
    conv1_ = register_module("conv1", conv(in_planes, w1, 1, 1, 0));
    bn1_ = register_module("bn1", nn::BatchNorm2d(w1));
    conv2_ = register_module("conv2", conv(w1, w2, 3, stride, 1));
    bn2_ = register_module("bn2", nn::BatchNorm2d(w2));
    conv3_ = register_module("conv3", conv(w2, planes * expansion, 1, 1, 0));
    bn3_ = register_module("bn3", nn::BatchNorm2d(planes * expansion));
  } else {
    conv1_ = register_module("conv1", conv(in_planes, w1, 3, stride, 1));
    bn1_ = register_module("bn1", nn::BatchNorm2d(w1));
    conv2_ = register_module("conv2", conv(w1, planes, 3, 1, 1));
    bn2_ = register_module("bn2", nn::BatchNorm2d(planes));
  }
  if (stride != 1 || in_planes != planes * expansion) {
    // The Sequential holds the same modules, so their keys are downsample.0 and .1.
    down_conv_ = conv(in_planes, planes * expansion, 1, stride, 0);
    down_bn_ = nn::BatchNorm2d(planes * expansion);
    downsample_ = register_module("downsample", nn::Sequential(down_conv_, down_bn_));
  }
}

at::Tensor ResNetBlockImpl::forward(const at::Tensor& x) {
  at::Tensor out = at::relu(bn1_(conv1_(x)));
  if (bottleneck_) {
    out = at::relu(bn2_(conv2_(out)));
    out = bn3_(conv3_(out));
  } else {
    out = bn2_(conv2_(out));
  }
  const at::Tensor identity = downsample_ ? downsample_->forward(x) : x;
  return at::relu(drop_path(out, drop_path_, is_training()) + identity);
}

void ResNetBlockImpl::fold(at::ScalarType dtype, bool channels_last) {
  folded_.clear();
  folded_.push_back(fold_conv_bn(conv1_, bn1_, dtype, channels_last));
  folded_.push_back(fold_conv_bn(conv2_, bn2_, dtype, channels_last));
  if (bottleneck_) folded_.push_back(fold_conv_bn(conv3_, bn3_, dtype, channels_last));
  if (downsample_) folded_.push_back(fold_conv_bn(down_conv_, down_bn_, dtype, channels_last));
}

onednn::ResNetBlock ResNetBlockImpl::fused_weights() const {
  const auto plain = [](const nn::Conv2d& c, const nn::BatchNorm2d& bn) {
    const FoldedConv f = fold_conv_bn(c, bn, at::kFloat, /*channels_last=*/false);
    return onednn::Conv{f.weight, f.bias, f.stride, f.padding};
  };
  onednn::ResNetBlock b;
  b.convs.push_back(plain(conv1_, bn1_));
  b.convs.push_back(plain(conv2_, bn2_));
  if (bottleneck_) b.convs.push_back(plain(conv3_, bn3_));
  if (downsample_) b.down = plain(down_conv_, down_bn_);
  return b;
}

at::Tensor ResNetBlockImpl::forward_folded(const at::Tensor& x) const {
  const size_t n = bottleneck_ ? 3 : 2;
  at::Tensor out = folded_[0](x).relu_();
  out = folded_[1](out);
  if (bottleneck_) out = folded_[2](out.relu_());
  out += downsample_ ? folded_[n](x) : x;
  return out.relu_();
}

ResNetImpl::ResNetImpl(ModelConfig config) : VisionModelImpl(std::move(config)) {
  const auto& c = config_;
  c.validate();
  const bool imagenet_stem = c.resnet.stem == "imagenet";
  conv1_ = register_module("conv1", imagenet_stem ? conv(c.in_channels, 64, 7, 2, 3)
                                                  : conv(c.in_channels, 64, 3, 1, 1));
  stem_pool_ = c.resnet.stem != "cifar";
  bn1_ = register_module("bn1", nn::BatchNorm2d(64));
  const bool bottleneck = c.resnet.bottleneck;
  const int64_t expansion = bottleneck ? 4 : 1;
  int64_t total_blocks = 0;
  for (const int64_t n : c.resnet.layers) total_blocks += n;
  int64_t in_planes = 64, block_index = 0;
  for (size_t stage = 0; stage < c.resnet.layers.size(); ++stage) {
    const int64_t planes = 64 << stage;
    nn::ModuleList list;
    for (int64_t b = 0; b < c.resnet.layers[stage]; ++b) {
      const int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
      // Stochastic depth grows linearly with depth, as in timm.
      const double dp =
          total_blocks > 1 ? c.drop_path * block_index / (total_blocks - 1) : c.drop_path;
      ResNetBlock block(in_planes, planes, stride, bottleneck, dp,
                        c.resnet.widths_of(static_cast<size_t>(block_index), planes));
      list->push_back(block);
      blocks_.push_back(block);
      in_planes = planes * expansion;
      ++block_index;
    }
    stages_.push_back(register_module("layer" + std::to_string(stage + 1), list));
  }
  // torchvision's initialisation: He-normal (fan_out) convolutions, unit batch norms.
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* cv = m->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(cv->weight, 0.0, torch::kFanOut, torch::kReLU);
    } else if (auto* bn = m->as<nn::BatchNorm2d>()) {
      nn::init::ones_(bn->weight);
      nn::init::zeros_(bn->bias);
    }
  }
  if (c.num_classes > 0) fc_ = register_module("fc", nn::Linear(in_planes, c.num_classes));
}

void ResNetImpl::check_input(const at::Tensor& images) const {
  VT_CHECK(images.dim() == 4 && images.size(1) == config_.in_channels, config_.arch,
           ": expected images of shape (N, ", config_.in_channels, ", H, W), got ",
           images.sizes());
}

at::Tensor ResNetImpl::forward_features(const at::Tensor& images) {
  check_input(images);
  at::Tensor x = at::relu(bn1_(conv1_(images)));
  if (stem_pool_) x = at::max_pool2d(x, {3, 3}, {2, 2}, {1, 1});
  for (auto& block : blocks_) x = block(x);
  return at::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
}

std::pair<at::Tensor, at::Tensor> ResNetImpl::forward_with_feature_map(const at::Tensor& images) {
  check_input(images);
  at::Tensor x = at::relu(bn1_(conv1_(images)));
  if (stem_pool_) x = at::max_pool2d(x, {3, 3}, {2, 2}, {1, 1});
  for (auto& block : blocks_) x = block(x);
  return {x, forward_head(at::adaptive_avg_pool2d(x, {1, 1}).flatten(1))};
}

at::Tensor ResNetImpl::forward_head(const at::Tensor& features) {
  if (!fc_) return features;
  at::Tensor x = features;
  if (config_.dropout > 0) x = at::dropout(x, config_.dropout, is_training());
  return fc_(x);
}

void ResNetImpl::reset_head(int64_t num_classes) {
  config_.num_classes = num_classes;
  config_.labels.clear();
  const int64_t dim = config_.embedding_dim();
  if (num_classes == 0) {
    if (fc_) unregister_module("fc");
    fc_ = nullptr;
  } else if (fc_) {
    fc_ = replace_module("fc", nn::Linear(dim, num_classes));
  } else {
    fc_ = register_module("fc", nn::Linear(dim, num_classes));
  }
  prepared_ = false;
}

onednn::ResNetWeights ResNetImpl::fused_weights() const {
  onednn::ResNetWeights w;
  const FoldedConv stem = fold_conv_bn(conv1_, bn1_, at::kFloat, /*channels_last=*/false);
  w.stem = {stem.weight, stem.bias, stem.stride, stem.padding};
  w.stem_pool = stem_pool_;
  for (const auto& block : blocks_) w.blocks.push_back(block->fused_weights());
  return w;
}

std::vector<float> ResNetImpl::calibrate_int8(const std::function<at::Tensor()>& next_batch) {
  eval();
  onednn::ResNetCalibrator calibrator(fused_weights());
  for (at::Tensor batch = next_batch(); batch.defined(); batch = next_batch()) {
    check_input(batch);
    calibrator.observe(batch);
  }
  VT_CHECK(calibrator.images() > 0, "no calibration images: int8 scales need a sample of the "
                                    "images the model will see");
  return calibrator.scales();
}

void ResNetImpl::prepare_inference(at::ScalarType dtype, bool fused) {
  VT_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kQUInt8,
           "inference precision must be fp32, bf16 or int8");
  eval();
  fused_.reset();
  if (dtype == at::kQUInt8) {
    check_int8_ready(fused);
    fused_ = std::make_shared<const onednn::ResNet>(fused_weights(), config_.int8_scales);
  } else if (fused) {
    fused_ = std::make_shared<const onednn::ResNet>(fused_weights(), dtype);
  } else {
    // oneDNN's convolutions want NHWC; with it bf16 convolutions run on the matrix units.
    const bool channels_last = true;
    stem_ = fold_conv_bn(conv1_, bn1_, dtype, channels_last);
    for (auto& block : blocks_) block->fold(dtype, channels_last);
  }
  if (fc_) {
    fc_weight_ = fc_->weight.detach().clone();
    fc_bias_ = fc_->bias.detach().clone();
  }
  inference_dtype_ = dtype == at::kQUInt8 ? at::kFloat : dtype;
  prepared_ = true;
}

at::Tensor ResNetImpl::forward_features_inference(const at::Tensor& images) {
  if (!prepared_) return forward_features(images);
  check_input(images);
  if (fused_) return fused_->features(images);
  at::Tensor x = images.to(inference_dtype_).contiguous(at::MemoryFormat::ChannelsLast);
  x = stem_(x).relu_();
  if (stem_pool_) x = at::max_pool2d(x, {3, 3}, {2, 2}, {1, 1});
  for (const auto& block : blocks_) x = block->forward_folded(x);
  // Pool and classify in fp32: a bf16 mean over 49 positions and a bf16 head would
  // round away the small logit margins that decide top-1.
  return at::adaptive_avg_pool2d(x.to(at::kFloat), {1, 1}).flatten(1);
}

at::Tensor ResNetImpl::forward_inference(const at::Tensor& images) {
  if (!prepared_) return forward(images);
  const at::Tensor features = forward_features_inference(images);
  if (!fc_) return features;
  return at::linear(features, fc_weight_, fc_bias_);
}

}  // namespace vitrine::models
