// The fused inference path: ResNet and ViT forward passes as chains of oneDNN primitives
// (the library libtorch itself uses on CPU), with weights pre-packed once per layout the
// kernels ask for, batch norm folded into the convolutions, and bias, activation and the
// residual sum applied as post-ops of the matrix product or convolution that precedes
// them, so activations are written once per layer and never reordered between layers.
// fp32 libtorch stays the reference (tests/unit/test_fused.cpp holds the two together).
//
// Primitives are made per input shape on first use and kept; weights are shared between
// shapes. Calls may run concurrently: every call has its own activations and scratchpad.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

namespace vitrine::models::onednn {

/// Whether this build has the fused path (built against Debian's libdnnl-dev).
bool available();
/// Whether the fused path runs bf16 on this CPU: Debian's oneDNN 2.6 has bf16 kernels for
/// AVX-512 only, and elsewhere fails when a bf16 layer is built.
bool bf16_available();

/// The rate (GFLOP/s, 2 per multiply-add) of one size x size x size matrix product on this
/// machine's best oneDNN kernel for `precision` (fp32, bf16 or int8: u8 x s8 -> s32): the
/// peak the fused path's figures are measured against.
double matmul_peak_gflops(const std::string& precision, int64_t size = 2048, int iters = 5);

/// The int8 scale (real value per integer step) of a range measured by calibration: 127
/// steps for signed values, 255 for the non-negative outputs of a ReLU.
float int8_scale(double range, bool is_signed);

/// A convolution with its batch norm folded in: fp32 weight (O, I, k, k) and bias (O).
struct Conv {
  at::Tensor weight, bias;
  int64_t stride = 1, padding = 0;
};

/// A residual block: conv1, conv2[, conv3] on the main path, `down` on the shortcut when
/// the block changes shape (undefined weight otherwise).
struct ResNetBlock {
  std::vector<Conv> convs;
  Conv down;
};

struct ResNetWeights {
  Conv stem;
  bool stem_pool = true;  ///< 3x3 stride-2 max pool after the stem
  std::vector<ResNetBlock> blocks;
};

class ResNet {
 public:
  /// `dtype` is the activation and weight type: kFloat or kBFloat16.
  ResNet(ResNetWeights weights, at::ScalarType dtype);
  /// Static int8: weights quantised per output channel, activations with the scales
  /// (real value per integer step) a ResNetCalibrator measured.
  ResNet(ResNetWeights weights, const std::vector<float>& activation_scales);
  /// How many activation scales int8 needs: the images, the stem's output, and per block
  /// each inner convolution's output, the shortcut convolution's (when present) and the
  /// block's output.
  static size_t calibration_points(const ResNetWeights& weights);
  /// Images (N, C, H, W) fp32 -> the last stage's feature map, globally average-pooled in
  /// fp32: (N, D).
  at::Tensor features(const at::Tensor& images) const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

/// The activation ranges of a ResNet's int8 quantisation points over calibration
/// batches (the fp32 forward pass on libtorch's operators): each point's scale is its
/// largest magnitude, averaged over batches, per integer step (255 for the non-negative
/// outputs of a ReLU, 127 for signed ones).
class ResNetCalibrator {
 public:
  explicit ResNetCalibrator(ResNetWeights weights);
  void observe(const at::Tensor& images);
  int64_t images() const { return images_; }
  std::vector<float> scales() const;

 private:
  void record(size_t point, const at::Tensor& t);
  ResNetWeights weights_;
  std::vector<double> max_sum_;
  std::vector<bool> is_signed_;
  int64_t batches_ = 0, images_ = 0;
};

/// One pre-norm encoder block's weights in fp32 (adapters already merged), as
/// torchvision's vision_transformer lays them out.
struct ViTBlock {
  at::Tensor ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
};

struct ViTWeights {
  std::vector<ViTBlock> blocks;
  int64_t head_dim = 64;  ///< width per head; each block's heads follow from its qkv_w
  int64_t tome_r = 0;     ///< Token Merging: pairs merged after each block's attention
  double eps = 1e-6;
  std::string hidden_act = "gelu";  ///< gelu | gelu_new | gelu_pytorch_tanh | quick_gelu | relu
};

/// The encoder blocks of a ViT (patch embedding, class token and the final norm stay with
/// the model: they are a few percent of the work). Blocks may differ in heads and MLP width
/// (pruned models); with Token Merging, each block's MLP and the blocks after it see fewer
/// tokens.
class ViTEncoder {
 public:
  ViTEncoder(ViTWeights weights, at::ScalarType dtype);
  /// int8 products (weights per output column; inputs with these scales, four per block:
  /// ln_1's, attention's, ln_2's and the activation's outputs); the token stream, norms and
  /// attention stay fp32.
  ViTEncoder(ViTWeights weights, const std::vector<float>& activation_scales);
  /// Tokens (N, T, D) in the encoder's dtype (fp32 for int8) -> tokens after the last
  /// block (N, T', D): T' = T unless Token Merging is on; the class token stays first.
  at::Tensor forward(const at::Tensor& tokens) const;
  /// fp32 encoders: forward() that also adds each block's largest magnitudes at the four
  /// int8 points to `maxima` (resized to 4 per block): calibration.
  at::Tensor forward_recording(const at::Tensor& tokens, std::vector<double>& maxima) const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace vitrine::models::onednn
