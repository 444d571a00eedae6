// Evaluation preprocessing equal to torchvision's on PIL images: Resize(int) of the shorter
// side with Pillow's antialiasing resampling, CenterCrop, ToTensor, Normalize.
#pragma once

#include <ATen/core/Tensor.h>
#include <opencv2/core.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace vitrine::image {

/// Resampling filters, as Pillow (and so torchvision on PIL images) implements them.
enum class Interpolation { kNearest, kBilinear, kBicubic };

/// "nearest", "bilinear" or "bicubic" (any case); anything else is a clear error.
Interpolation parse_interpolation(const std::string& name);
/// "nearest", "bilinear" or "bicubic".
const char* interpolation_name(Interpolation i);

/// The eval transform of torchvision/timm: Resize(resize) of the shorter side, CenterCrop(crop),
/// ToTensor, Normalize(mean, std). channels == 1 converts to grey first (PIL "L" weights).
struct EvalTransform {
  int64_t resize = 256;
  int64_t crop = 224;
  std::vector<float> mean{0.485f, 0.456f, 0.406f};
  std::vector<float> std{0.229f, 0.224f, 0.225f};
  Interpolation interpolation = Interpolation::kBilinear;
  int64_t channels = 3;  ///< 3 (RGB) or 1 (grey); mean and std hold one value per channel
  /// Resize both sides straight to crop x crop (ignoring `resize`, no crop), as Hugging
  /// Face's image processors do; distorts the aspect ratio of non-square photos.
  bool squash = false;
};

/// torchvision's Resize(size) on an 8-bit image (1 to 4 channels): the shorter side becomes
/// `size`, the longer int(size * long / short); an image whose shorter side already is `size`
/// is returned as is. Pixels equal Pillow's resize: separable filters whose support widens by
/// the reduction factor (antialiasing), fixed-point coefficients, an 8-bit intermediate.
cv::Mat resize_shorter(const cv::Mat& rgb, int64_t size, Interpolation interpolation);

/// PIL's convert("L") of an 8-bit RGB image: (19595 R + 38470 G + 7471 B + 2^15) >> 16, the
/// ITU-R 601-2 luma in PIL's fixed point (OpenCV's RGB2GRAY rounds differently).
cv::Mat to_grey(const cv::Mat& rgb);

/// torchvision's CenterCrop(crop): the window starts at int(round((side - crop) / 2.0)) (round
/// half to even); a side smaller than `crop` is padded with zeros, (crop - side) / 2 before and
/// the rest after. Shares pixels with `image` when no padding is needed (clone() to own them).
cv::Mat center_crop(const cv::Mat& image, int64_t crop);

/// ToTensor + Normalize: an 8-bit H x W x C image to a C x H x W float32 tensor of
/// (v / 255 - mean[c]) / std[c], computed with the same float32 operations as torchvision, in
/// one pass. `mean` and `std` hold C values (or one, used for every channel).
at::Tensor to_tensor(const cv::Mat& image_u8, const std::vector<float>& mean,
                     const std::vector<float>& std);

/// The whole eval transform of an 8-bit RGB image (or grey when t.channels == 1) to a
/// channels x crop x crop float32 tensor. Equal to
/// to_tensor(center_crop(resize_shorter(...))), but resamples only the pixels the crop keeps.
at::Tensor eval_transform(const cv::Mat& rgb, const EvalTransform& t);

}  // namespace vitrine::image
