// Training augmentations, named and parameterised as torchvision names them: RandomResizedCrop,
// RandomHorizontalFlip, RandomRotation, ColorJitter, TrivialAugmentWide, RandAugment,
// Normalize, RandomErasing. Every random draw comes from the generator passed in, so one seed
// per sample reproduces the sample exactly, whatever thread runs it.
#pragma once

#include "vitrine/image/transform.h"

#include <ATen/core/Tensor.h>
#include <opencv2/core.hpp>

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace vitrine::image {

/// The training transform. Defaults are torchvision's reference recipe without the optional
/// parts: RandomResizedCrop(224), RandomHorizontalFlip(0.5), ImageNet Normalize.
struct TrainTransform {
  int64_t size = 224;                             ///< output side
  std::array<double, 2> scale{0.08, 1.0};         ///< RandomResizedCrop area fraction
  std::array<double, 2> ratio{3.0 / 4, 4.0 / 3};  ///< RandomResizedCrop aspect ratio (w / h)
  double hflip = 0.5;                             ///< RandomHorizontalFlip probability
  double rotation = 0.0;                          ///< RandomRotation degrees (+-), 0 = off
  /// ColorJitter amounts: factors drawn from [max(0, 1 - a), 1 + a]; hue from [-hue, hue].
  double brightness = 0, contrast = 0, saturation = 0, hue = 0;
  double jitter_prob = 1.0;  ///< RandomApply([ColorJitter], p): SimCLR uses 0.8
  double grayscale = 0.0;    ///< RandomGrayscale probability (RGB output stays 3 channels)
  /// GaussianBlur probability: kernel about a tenth of the side, sigma from [0.1, 2] (SimCLR)
  double blur = 0.0;
  std::string auto_augment = "none";  ///< none | trivialaugment | randaugment
  /// RandAugment num_ops and magnitude (a bin of 0-30, as torchvision's num_magnitude_bins 31).
  int64_t randaugment_ops = 2, randaugment_magnitude = 9;
  double random_erasing = 0.0;  ///< RandomErasing probability (on the tensor)
  /// Normalize: one value per channel (or one for all).
  std::vector<float> mean{0.485f, 0.456f, 0.406f}, std{0.229f, 0.224f, 0.225f};
  Interpolation interpolation = Interpolation::kBilinear;  ///< for resizing the crop
  int64_t channels = 3;                                    ///< 3, or 1 (grey)
};

/// Throws vitrine::Error naming the first bad field of `t` and its valid range.
void check_train_transform(const TrainTransform& t);

/// The 8-bit part of train_transform: random-resized crop, flip, rotation, colour jitter and
/// auto-augment of an 8-bit RGB (CV_8UC3) or grey (CV_8UC1) image, converted first to
/// t.channels (grey -> RGB repeats the plane; RGB -> grey uses PIL's weights, see to_grey).
/// Returns a new size x size image with t.channels channels; `image` is never modified.
///
/// Order: crop, flip, rotation, jitter, grayscale, blur, auto-augment (timm's order, with
/// SimCLR's grayscale and blur after the jitter; torchvision's presets have no rotation or
/// jitter). A probability of 1 (jitter_prob) or 0 (grayscale, blur) draws nothing. Given the
/// same crop and draws, every step after the resize but the blur equals torchvision 0.14 on a
/// PIL image (Pillow 9) byte for byte: rotations, shears and
/// translations with nearest-neighbour sampling and a black fill (torchvision's defaults for
/// RandomRotation and the auto-augment ops), colour operations as ImageEnhance / ImageOps.
/// What differs:
/// - The crop is resized with cv::resize, not Pillow's filters (pixels differ by a few
///   levels): INTER_AREA along an axis that shrinks, INTER_LINEAR (bilinear) or INTER_CUBIC
///   (bicubic) along one that grows, INTER_NEAREST for nearest.
/// - The draws follow torchvision's sequence (same number and order of uniform and integer
///   draws) but come from std::mt19937_64, not torch's generator.
/// - The Gaussian blur is OpenCV's (8-bit fixed-point weights, reflected border), not
///   torchvision's float kernel: the same kernel size and sigma; pixels may differ by a level.
cv::Mat train_augment(const cv::Mat& image, const TrainTransform& t, std::mt19937_64& rng);

/// One TrivialAugmentWide / RandAugment operation by torchvision's name (Identity, ShearX,
/// ShearY, TranslateX, TranslateY, Rotate, Brightness, Color, Contrast, Sharpness, Posterize,
/// Solarize, AutoContrast, Equalize) with a signed magnitude, as torchvision's _apply_op
/// applies it to a PIL image: translations in pixels (truncated), rotation in degrees
/// counter-clockwise, enhance factors 1 + magnitude, Posterize bits, Solarize threshold. For an
/// 8-bit RGB or grey image; returns a new image of the same size and type.
cv::Mat apply_augment_op(const cv::Mat& image, const std::string& op, double magnitude);

/// Random-resized crop (torchvision's sampling: 10 tries then the centre-crop fallback), flip,
/// rotation, colour jitter, auto-augment, ToTensor + Normalize, random erasing (torchvision's
/// defaults: scale 0.02-0.33, ratio 0.3-3.3, value 0 after normalisation) -> C x size x size
/// float32. Equal to to_tensor(train_augment(...)) followed by the erasing draw.
at::Tensor train_transform(const cv::Mat& image, const TrainTransform& t, std::mt19937_64& rng);

}  // namespace vitrine::image
