// Pillow's resampling is reproduced here rather than approximated with cv::resize: models are
// trained on torchvision's PIL pipeline, and OpenCV's filters (no antialiasing for
// INTER_LINEAR / INTER_CUBIC, box averaging for INTER_AREA) differ from it by a few levels per
// pixel, enough to move scores near a decision threshold. The code follows Pillow 9's
// libImaging/Resample.c (precompute_coeffs, the 8-bit passes) and its nearest-neighbour path
// (ImagingScaleAffine) step for step, so the pixels are identical.
#include "vitrine/image/transform.h"

#include "vitrine/core/error.h"

#include <ATen/ops/empty.h>
#include <opencv2/core/utility.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstring>

namespace vitrine::image {
namespace {

constexpr int64_t kMaxSide = 65536;  ///< largest resize / crop size accepted
constexpr int kPrecisionBits = 32 - 8 - 2;  ///< Pillow's: 8 result bits, 2 for negative lobes

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;  // Pillow's (and Keys's) choice; OpenCV's INTER_CUBIC uses -0.75
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/// Resampling weights along one axis for the outputs [first, first + count): output i reads
/// inputs start[i] .. start[i] + taps[i] - 1 with fixed-point weights k[i * ksize + j].
struct AxisWeights {
  int ksize = 0;
  std::vector<int> start;
  std::vector<int> taps;
  std::vector<int32_t> k;
};

AxisWeights axis_weights(int in_size, int out_size, int first, int count,
                         Interpolation interpolation) {
  const bool cubic = interpolation == Interpolation::kBicubic;
  double (*filter)(double) = cubic ? &bicubic_filter : &bilinear_filter;
  // Pillow takes the input extent from float box coordinates.
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  // Shrinking widens the filter by the reduction factor: this is the antialiasing.
  const double filterscale = std::max(scale, 1.0);
  const double support = (cubic ? 2.0 : 1.0) * filterscale;
  AxisWeights w;
  w.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  w.start.resize(count);
  w.taps.resize(count);
  w.k.assign(static_cast<size_t>(count) * w.ksize, 0);
  std::vector<double> kk(w.ksize);
  const double ss = 1.0 / filterscale;
  for (int i = 0; i < count; ++i) {
    const int xx = first + i;
    const double center = (xx + 0.5) * scale;
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      kk[x] = filter((x + xmin - center + 0.5) * ss);
      ww += kk[x];
    }
    int32_t* k = &w.k[static_cast<size_t>(i) * w.ksize];
    for (int x = 0; x < xmax; ++x) {
      const double v = (ww != 0.0 ? kk[x] / ww : kk[x]) * (1 << kPrecisionBits);
      k[x] = static_cast<int32_t>(v < 0 ? v - 0.5 : v + 0.5);
    }
    w.start[i] = xmin;
    w.taps[i] = xmax;
  }
  return w;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;  // arithmetic shift, as Pillow
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

/// Runs body(begin, end) over row stripes on OpenCV's pool (TBB here, which composes with
/// callers' own threads), as cv::resize does; small images stay on the calling thread.
template <typename Body>
void for_rows(int rows, double work_per_row, const Body& body) {
  const double stripes = std::min<double>(rows, std::max(1.0, rows * work_per_row / 262144.0));
  if (stripes <= 1.0) {
    body(0, rows);
    return;
  }
  cv::parallel_for_(
      cv::Range(0, rows), [&](const cv::Range& r) { body(r.start, r.end); }, stripes);
}

template <int CN>
void horizontal_pass(const cv::Mat& src, int row0, const AxisWeights& w, cv::Mat& dst) {
  const int out_w = dst.cols;
  for_rows(dst.rows, double(out_w) * w.ksize * CN, [&](int begin, int end) {
    for (int y = begin; y < end; ++y) {
      const uint8_t* in = src.ptr<uint8_t>(row0 + y);
      uint8_t* out = dst.ptr<uint8_t>(y);
      for (int xx = 0; xx < out_w; ++xx) {
        const uint8_t* p = in + static_cast<size_t>(w.start[xx]) * CN;
        const int32_t* k = &w.k[static_cast<size_t>(xx) * w.ksize];
        int32_t ss[CN];
        for (int c = 0; c < CN; ++c) ss[c] = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < w.taps[xx]; ++x, p += CN) {
          for (int c = 0; c < CN; ++c) ss[c] += p[c] * k[x];
        }
        for (int c = 0; c < CN; ++c) out[xx * CN + c] = clip8(ss[c]);
      }
    }
  });
}

/// Row-wise accumulation keeps Pillow's per-pixel order of the sums (so the same integers)
/// while letting the compiler vectorise across the row.
void vertical_pass(const cv::Mat& src, const AxisWeights& w, int row0, cv::Mat& dst) {
  const int n = dst.cols * dst.channels();
  for_rows(dst.rows, double(n) * w.ksize, [&](int begin, int end) {
    std::vector<int32_t> acc(n);
    for (int y = begin; y < end; ++y) {
      std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
      const int32_t* k = &w.k[static_cast<size_t>(y) * w.ksize];
      for (int t = 0; t < w.taps[y]; ++t) {
        const uint8_t* in = src.ptr<uint8_t>(w.start[y] - row0 + t);
        const int32_t kt = k[t];
        for (int i = 0; i < n; ++i) acc[i] += in[i] * kt;
      }
      uint8_t* out = dst.ptr<uint8_t>(y);
      for (int i = 0; i < n; ++i) out[i] = clip8(acc[i]);
    }
  });
}

/// Pillow's nearest neighbour: output x reads input floor((x + 0.5) * in / out), with the
/// position accumulated step by step in double as Pillow does (so its rounding too); -1 marks
/// a position past the input, which Pillow fills with zeros.
std::vector<int> nearest_index(int in_size, int out_size, int count) {
  const double step = static_cast<double>(static_cast<float>(in_size)) / out_size;
  std::vector<int> index(count);
  double pos = step * 0.5;
  for (int i = 0; i < count; ++i, pos += step) {
    const int v = pos < 0.0 ? -1 : static_cast<int>(pos);
    index[i] = v < in_size ? v : -1;
  }
  return index;
}

cv::Mat resample_nearest(const cv::Mat& src, int out_w, int out_h, const cv::Rect& roi) {
  const std::vector<int> xs = nearest_index(src.cols, out_w, roi.x + roi.width);
  const std::vector<int> ys = nearest_index(src.rows, out_h, roi.y + roi.height);
  const size_t pixel = src.elemSize();
  cv::Mat out = cv::Mat::zeros(roi.height, roi.width, src.type());
  for (int y = 0; y < roi.height; ++y) {
    const int yi = ys[roi.y + y];
    if (yi < 0) continue;
    const uint8_t* in = src.ptr<uint8_t>(yi);
    uint8_t* o = out.ptr<uint8_t>(y);
    for (int x = 0; x < roi.width; ++x) {
      const int xi = xs[roi.x + x];
      if (xi >= 0) std::memcpy(o + x * pixel, in + xi * pixel, pixel);
    }
  }
  return out;
}

template <int CN>
cv::Mat resample_cn(const cv::Mat& src, int out_w, int out_h, const cv::Rect& roi,
                    Interpolation interpolation) {
  const bool need_h = out_w != src.cols;
  const bool need_v = out_h != src.rows;
  AxisWeights vw;
  int row0 = roi.y;
  int rows = roi.height;
  if (need_v) {
    vw = axis_weights(src.rows, out_h, roi.y, roi.height, interpolation);
    row0 = vw.start.front();
    rows = vw.start.back() + vw.taps.back() - row0;
  }
  cv::Mat horizontal;
  if (need_h) {
    horizontal.create(rows, roi.width, src.type());
    horizontal_pass<CN>(src, row0,
                        axis_weights(src.cols, out_w, roi.x, roi.width, interpolation),
                        horizontal);
  } else {
    horizontal = src(cv::Rect(roi.x, row0, roi.width, rows));
  }
  if (!need_v) return need_h ? horizontal : horizontal.clone();
  cv::Mat out(roi.height, roi.width, src.type());
  vertical_pass(horizontal, vw, row0, out);
  return out;
}

/// Pillow's resize of `src` to out_w x out_h, computing only the output pixels in `roi` (those
/// a following crop keeps); the result is roi-sized. Pixels outside the roi do not influence
/// those inside, so this equals resizing fully and cropping afterwards.
cv::Mat resample(const cv::Mat& src, int out_w, int out_h, const cv::Rect& roi,
                 Interpolation interpolation) {
  if (interpolation == Interpolation::kNearest) return resample_nearest(src, out_w, out_h, roi);
  switch (src.channels()) {
    case 1:
      return resample_cn<1>(src, out_w, out_h, roi, interpolation);
    case 2:
      return resample_cn<2>(src, out_w, out_h, roi, interpolation);
    case 3:
      return resample_cn<3>(src, out_w, out_h, roi, interpolation);
    default:
      return resample_cn<4>(src, out_w, out_h, roi, interpolation);
  }
}

void check_u8_image(const cv::Mat& image, const char* what) {
  VT_CHECK(!image.empty(), what, ": the image is empty; decode an image first");
  VT_CHECK(image.depth() == CV_8U && image.channels() >= 1 && image.channels() <= 4, what,
           ": expected an 8-bit image with 1 to 4 channels, got OpenCV type ", image.type(),
           "; decode with vitrine::image::decode, which returns 8-bit RGB");
}

void check_side(int64_t size, const char* what) {
  VT_CHECK(size > 0 && size <= kMaxSide, what, " ", size, " is out of range; use a size from 1 to ",
           kMaxSide, " pixels");
}

/// torchvision's Resize(int) output size, as (width, height).
cv::Size shorter_side_size(int width, int height, int64_t size) {
  const bool portrait = width <= height;
  const int64_t short_side = portrait ? width : height;
  const int64_t long_side = portrait ? height : width;
  // Python's int(size * long / short): a correctly rounded double quotient, truncated.
  const auto new_long = static_cast<int64_t>(static_cast<double>(size * long_side) /
                                             static_cast<double>(short_side));
  VT_CHECK(new_long <= INT_MAX, "resizing a ", width, "x", height, " image to a shorter side of ",
           size, " gives a longer side of ", new_long, " pixels, too many; crop the image to a "
           "less extreme aspect ratio first");
  return portrait ? cv::Size(static_cast<int>(size), static_cast<int>(new_long))
                  : cv::Size(static_cast<int>(new_long), static_cast<int>(size));
}

/// CenterCrop along one axis: the source window and the zero padding around it.
struct AxisCrop {
  int start;
  int length;
  int pad_before;
  int pad_after;
};

AxisCrop axis_crop(int side, int64_t crop) {
  const int c = static_cast<int>(crop);
  if (c > side) return {0, side, (c - side) / 2, (c - side + 1) / 2};
  const int d = side - c;
  int start = d / 2;
  if (d % 2 == 1 && start % 2 == 1) ++start;  // Python's round(d / 2.0): half to even
  return {start, c, 0, 0};
}

cv::Mat pad(const cv::Mat& image, const AxisCrop& x, const AxisCrop& y) {
  if (x.pad_before + x.pad_after + y.pad_before + y.pad_after == 0) return image;
  cv::Mat out;
  cv::copyMakeBorder(image, out, y.pad_before, y.pad_after, x.pad_before, x.pad_after,
                     cv::BORDER_CONSTANT, cv::Scalar::all(0));
  return out;
}

void check_normalize(size_t channels, const std::vector<float>& mean,
                     const std::vector<float>& std) {
  VT_CHECK((mean.size() == channels || mean.size() == 1) &&
               (std.size() == channels || std.size() == 1),
           "normalisation has ", mean.size(), " mean and ", std.size(), " std values for a ",
           channels, "-channel image; give one value per channel (or one for all)");
  for (const float s : std) {
    VT_CHECK(s != 0.0f && std::isfinite(s), "normalisation std ", s,
             " would divide by zero or give non-finite values; use positive std values");
  }
}

}  // namespace

Interpolation parse_interpolation(const std::string& name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (lower == "nearest") return Interpolation::kNearest;
  if (lower == "bilinear") return Interpolation::kBilinear;
  if (lower == "bicubic") return Interpolation::kBicubic;
  VT_FAIL("unknown interpolation '", name, "'; use nearest, bilinear or bicubic");
}

const char* interpolation_name(Interpolation i) {
  switch (i) {
    case Interpolation::kNearest:
      return "nearest";
    case Interpolation::kBilinear:
      return "bilinear";
    case Interpolation::kBicubic:
      return "bicubic";
  }
  return "unknown";
}

cv::Mat to_grey(const cv::Mat& rgb) {
  check_u8_image(rgb, "to_grey");
  VT_CHECK(rgb.channels() == 3, "to_grey: expected an RGB image (3 channels), got ",
           rgb.channels(), " channels");
  cv::Mat grey(rgb.rows, rgb.cols, CV_8UC1);
  for (int y = 0; y < rgb.rows; ++y) {
    const uint8_t* p = rgb.ptr<uint8_t>(y);
    uint8_t* o = grey.ptr<uint8_t>(y);
    for (int x = 0; x < rgb.cols; ++x, p += 3) {
      o[x] = static_cast<uint8_t>((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16);
    }
  }
  return grey;
}

cv::Mat resize_shorter(const cv::Mat& rgb, int64_t size, Interpolation interpolation) {
  check_u8_image(rgb, "resize_shorter");
  check_side(size, "resize size");
  const cv::Size out = shorter_side_size(rgb.cols, rgb.rows, size);
  if (out == rgb.size()) return rgb;
  return resample(rgb, out.width, out.height, cv::Rect(0, 0, out.width, out.height),
                  interpolation);
}

cv::Mat center_crop(const cv::Mat& image, int64_t crop) {
  VT_CHECK(!image.empty(), "center_crop: the image is empty; decode an image first");
  check_side(crop, "crop size");
  const AxisCrop x = axis_crop(image.cols, crop);
  const AxisCrop y = axis_crop(image.rows, crop);
  return pad(image(cv::Rect(x.start, y.start, x.length, y.length)), x, y);
}

at::Tensor to_tensor(const cv::Mat& image_u8, const std::vector<float>& mean,
                     const std::vector<float>& std) {
  check_u8_image(image_u8, "to_tensor");
  const int cn = image_u8.channels();
  check_normalize(cn, mean, std);
  // One table per channel holding torchvision's own float32 steps, x / 255 (ToTensor), then
  // (x - mean) / std (Normalize): bit-identical values and a lookup per sample.
  std::vector<float> table(static_cast<size_t>(cn) * 256);
  for (int c = 0; c < cn; ++c) {
    const float m = mean.size() == 1 ? mean[0] : mean[c];
    const float s = std.size() == 1 ? std[0] : std[c];
    for (int v = 0; v < 256; ++v) {
      const float x = static_cast<float>(v) / 255.0f;
      table[c * 256 + v] = (x - m) / s;
    }
  }
  const int rows = image_u8.rows;
  const int cols = image_u8.cols;
  at::Tensor out = at::empty({cn, rows, cols}, at::TensorOptions().dtype(at::kFloat));
  float* base = out.data_ptr<float>();
  const size_t plane = static_cast<size_t>(rows) * cols;
  for (int c = 0; c < cn; ++c) {
    const float* t = &table[c * 256];
    float* o = base + c * plane;
    for (int y = 0; y < rows; ++y, o += cols) {
      const uint8_t* p = image_u8.ptr<uint8_t>(y) + c;
      for (int x = 0; x < cols; ++x) o[x] = t[p[x * cn]];
    }
  }
  return out;
}

at::Tensor eval_transform(const cv::Mat& rgb, const EvalTransform& t) {
  check_u8_image(rgb, "eval_transform");
  check_side(t.resize, "resize size");
  check_side(t.crop, "crop size");
  VT_CHECK(t.channels == 1 || t.channels == 3, "eval transform with ", t.channels,
           " channels; use 3 (RGB) or 1 (grey)");
  check_normalize(static_cast<size_t>(t.channels), t.mean, t.std);
  cv::Mat src = rgb;
  if (t.channels == 1 && rgb.channels() == 3) {
    src = to_grey(rgb);
  } else if (t.channels == 3 && rgb.channels() == 1) {
    cv::cvtColor(rgb, src, cv::COLOR_GRAY2RGB);  // a grey photo for an RGB model, as decode does
  } else {
    VT_CHECK(rgb.channels() == t.channels, "eval transform for ", t.channels,
             "-channel input got an image with ", rgb.channels(),
             " channels; pass the 8-bit RGB image that decode returns");
  }
  const cv::Size size = t.squash ? cv::Size(static_cast<int>(t.crop), static_cast<int>(t.crop))
                                 : shorter_side_size(src.cols, src.rows, t.resize);
  const AxisCrop x = axis_crop(size.width, t.crop);
  const AxisCrop y = axis_crop(size.height, t.crop);
  const cv::Rect roi(x.start, y.start, x.length, y.length);
  const cv::Mat kept = size == src.size()
                           ? src(roi)
                           : resample(src, size.width, size.height, roi, t.interpolation);
  return to_tensor(pad(kept, x, y), t.mean, t.std);
}

}  // namespace vitrine::image
