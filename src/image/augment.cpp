// Training augmentations after torchvision 0.14 (transforms.py, autoaugment.py and
// functional_pil.py), on OpenCV images. The operations follow Pillow 9's C code (Geometry.c,
// Convert.c, Filter.c, ImageEnhance, ImageOps) down to its float/double mix and fixed-point
// steps, so they equal torchvision's on PIL images byte for byte; only the crop's resize uses
// OpenCV. The random draws are made in torchvision's order with our own uniform and integer
// helpers rather than <random>'s distributions, whose algorithms differ between standard
// libraries: a seed then gives the same sample on every platform.
#include "vitrine/image/augment.h"

#include "vitrine/core/random.h"

#include "vitrine/core/error.h"

#include <ATen/ops/empty.h>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

namespace vitrine::image {
namespace {

constexpr int64_t kMaxSide = 65536;  ///< as the eval transform's limit
constexpr int kBins = 31;            ///< torchvision's num_magnitude_bins
constexpr double kPi = 3.14159265358979323846;
constexpr double kDegToRad = kPi / 180.0;  ///< as Python's math.radians multiplies
constexpr double kRadToDeg = 180.0 / kPi;  ///< as math.degrees


/// Python's round(): half to even (the default floating-point rounding mode).
int64_t round_even(double x) {
  return static_cast<int64_t>(std::nearbyint(x));
}

uint8_t clip_truncate(float v) {
  // Pillow's blend: clip, then truncate toward zero.
  if (v <= 0.0f) return 0;
  if (v >= 255.0f) return 255;
  return static_cast<uint8_t>(v);
}

// ---- geometry ---------------------------------------------------------------------------

/// cv::resize with a filter per axis: area averaging where an axis shrinks (the antialiasing
/// that Pillow's resize has and INTER_LINEAR lacks), interpolation where it grows.
cv::Mat resize_to(const cv::Mat& src, int width, int height, Interpolation interpolation) {
  if (src.cols == width && src.rows == height) return src.clone();
  cv::Mat out;
  const cv::Size size(width, height);
  if (interpolation == Interpolation::kNearest) {
    cv::resize(src, out, size, 0, 0, cv::INTER_NEAREST);
    return out;
  }
  const int grow = interpolation == Interpolation::kBicubic ? cv::INTER_CUBIC : cv::INTER_LINEAR;
  const bool shrink_x = width <= src.cols;
  const bool shrink_y = height <= src.rows;
  if (shrink_x == shrink_y) {
    cv::resize(src, out, size, 0, 0, shrink_x ? cv::INTER_AREA : grow);
    return out;
  }
  cv::Mat tmp;
  cv::resize(src, tmp, cv::Size(width, src.rows), 0, 0, shrink_x ? cv::INTER_AREA : grow);
  cv::resize(tmp, out, size, 0, 0, shrink_y ? cv::INTER_AREA : grow);
  return out;
}

/// torchvision's RandomResizedCrop.get_params: up to 10 draws of an area fraction and a
/// log-uniform aspect ratio, then a centre crop clamped to the ratio range.
cv::Rect random_crop_window(int width, int height, const TrainTransform& t, std::mt19937_64& rng) {
  const double area = static_cast<double>(width) * height;
  const double log_r0 = std::log(t.ratio[0]);
  const double log_r1 = std::log(t.ratio[1]);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * uniform(rng, t.scale[0], t.scale[1]);
    const double aspect = std::exp(uniform(rng, log_r0, log_r1));
    const int64_t w = round_even(std::sqrt(target_area * aspect));
    const int64_t h = round_even(std::sqrt(target_area / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const int64_t top = randint(rng, height - h + 1);
      const int64_t left = randint(rng, width - w + 1);
      return cv::Rect(static_cast<int>(left), static_cast<int>(top), static_cast<int>(w),
                      static_cast<int>(h));
    }
  }
  const double in_ratio = static_cast<double>(width) / height;
  int64_t w = width;
  int64_t h = height;
  if (in_ratio < t.ratio[0]) {
    h = std::clamp<int64_t>(round_even(w / t.ratio[0]), 1, height);
  } else if (in_ratio > t.ratio[1]) {
    w = std::clamp<int64_t>(round_even(h * t.ratio[1]), 1, width);
  }
  return cv::Rect(static_cast<int>((width - w) / 2), static_cast<int>((height - h) / 2),
                  static_cast<int>(w), static_cast<int>(h));
}

/// Pillow's nearest-neighbour affine transform (Geometry.c, ImagingTransformAffine and the
/// two paths it takes for our matrices): `a` maps the corner-based centre (x + 0.5, y + 0.5)
/// of each output pixel to input coordinates; outside the input is black. A pure shift takes
/// the pre-tabulated "scale" path, anything else the 16.16 fixed-point one (the float path is
/// for coordinates beyond 32768). Following Pillow's arithmetic, not just its geometry, makes
/// the ops equal torchvision's on PIL images, pixel for pixel.
cv::Mat pil_affine_nearest(const cv::Mat& src, const std::array<double, 6>& a) {
  const int w = src.cols;
  const int h = src.rows;
  const size_t px = src.elemSize();
  cv::Mat out = cv::Mat::zeros(src.size(), src.type());
  const auto coord = [](double v) { return v < 0.0 ? -1 : static_cast<int>(v); };
  const auto copy = [&](int y, int x, int yin, int xin) {
    if (xin >= 0 && xin < w && yin >= 0 && yin < h) {
      std::memcpy(out.ptr<uint8_t>(y) + x * px, src.ptr<uint8_t>(yin) + xin * px, px);
    }
  };
  if (a[1] == 0 && a[3] == 0) {
    std::vector<int> xin(w);
    double xo = a[2] + a[0] * 0.5;
    for (int x = 0; x < w; ++x, xo += a[0]) xin[x] = coord(xo);
    double yo = a[5] + a[4] * 0.5;
    for (int y = 0; y < h; ++y, yo += a[4]) {
      const int yin = coord(yo);
      for (int x = 0; x < w; ++x) copy(y, x, yin, xin[x]);
    }
    return out;
  }
  const auto fits = [&](int x, int y) {
    return std::fabs(x * a[0] + y * a[1] + a[2]) < 32768.0 &&
           std::fabs(x * a[3] + y * a[4] + a[5]) < 32768.0;
  };
  if (fits(0, 0) && fits(w, h) && fits(0, h) && fits(w, 0)) {
    const auto fix = [](double v) { return static_cast<int32_t>(std::floor(v * 65536.0 + 0.5)); };
    const int32_t a0 = fix(a[0]), a1 = fix(a[1]), a3 = fix(a[3]), a4 = fix(a[4]);
    int32_t a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5);
    int32_t a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
    for (int y = 0; y < h; ++y, a2 += a1, a5 += a4) {
      int32_t xx = a2;
      int32_t yy = a5;
      for (int x = 0; x < w; ++x, xx += a0, yy += a3) copy(y, x, yy >> 16, xx >> 16);
    }
    return out;
  }
  double xo = a[2] + a[1] * 0.5 + a[0] * 0.5;
  double yo = a[5] + a[4] * 0.5 + a[3] * 0.5;
  for (int y = 0; y < h; ++y, xo += a[1], yo += a[4]) {
    double xx = xo;
    double yy = yo;
    for (int x = 0; x < w; ++x, xx += a[0], yy += a[3]) copy(y, x, coord(yy), coord(xx));
  }
  return out;
}

/// Python's round(x, 15), as Pillow rounds its rotation matrix.
double round15(double x) {
  return std::round(x * 1e15) / 1e15;
}

/// Pillow's Image.rotate(degrees) without expand: counter-clockwise about (w / 2, h / 2);
/// multiples of 90 degrees (on a square image) as exact transpositions, as Pillow does.
cv::Mat rotate(const cv::Mat& src, double degrees) {
  double angle = std::fmod(degrees, 360.0);
  if (angle < 0) angle += 360.0;
  cv::Mat out;
  if (angle == 0) return src.clone();
  if (angle == 180) {
    cv::rotate(src, out, cv::ROTATE_180);
    return out;
  }
  if ((angle == 90 || angle == 270) && src.cols == src.rows) {
    cv::rotate(src, out, angle == 90 ? cv::ROTATE_90_COUNTERCLOCKWISE : cv::ROTATE_90_CLOCKWISE);
    return out;
  }
  const double r = -(angle * kDegToRad);
  std::array<double, 6> a = {round15(std::cos(r)),  round15(std::sin(r)), 0.0,
                             round15(-std::sin(r)), round15(std::cos(r)), 0.0};
  const double cx = src.cols / 2.0;
  const double cy = src.rows / 2.0;
  a[2] = a[0] * -cx + a[1] * -cy + cx;
  a[5] = a[3] * -cx + a[4] * -cy + cy;
  return pil_affine_nearest(src, a);
}

/// torchvision's _get_inverse_affine_matrix (scale 1): output -> input for F.affine.
std::array<double, 6> inverse_affine(double cx, double cy, double angle_deg, double tx, double ty,
                                     double shear_x_deg, double shear_y_deg) {
  const double rot = angle_deg * kDegToRad;
  const double sx = shear_x_deg * kDegToRad;
  const double sy = shear_y_deg * kDegToRad;
  const double a = std::cos(rot - sy) / std::cos(sy);
  const double b = -std::cos(rot - sy) * std::tan(sx) / std::cos(sy) - std::sin(rot);
  const double c = std::sin(rot - sy) / std::cos(sy);
  const double d = -std::sin(rot - sy) * std::tan(sx) / std::cos(sy) + std::cos(rot);
  std::array<double, 6> m = {d, -b, 0.0, -c, a, 0.0};
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
  m[2] += cx;
  m[5] += cy;
  return m;
}

/// torchvision's ShearX op: F.affine with shear [degrees(atan(m)), 0] about the top-left
/// corner (center [0, 0]).
cv::Mat shear_x(const cv::Mat& src, double m) {
  return pil_affine_nearest(src, inverse_affine(0, 0, 0, 0, 0, std::atan(m) * kRadToDeg, 0));
}

cv::Mat shear_y(const cv::Mat& src, double m) {
  return pil_affine_nearest(src, inverse_affine(0, 0, 0, 0, 0, 0, std::atan(m) * kRadToDeg));
}

/// torchvision's Translate ops: F.affine with translate [dx, dy] about the image centre.
cv::Mat translate(const cv::Mat& src, int64_t dx, int64_t dy) {
  return pil_affine_nearest(
      src, inverse_affine(src.cols * 0.5, src.rows * 0.5, 0, static_cast<double>(dx),
                          static_cast<double>(dy), 0, 0));
}

// ---- colour (Pillow's ImageEnhance and ImageOps) ----------------------------------------

/// Pillow's Image.blend(degenerate, image, factor): degenerate + factor (image - degenerate)
/// in float, clipped and truncated.
cv::Mat blend(const cv::Mat& degenerate, const cv::Mat& image, double factor) {
  const float f = static_cast<float>(factor);
  cv::Mat out(image.size(), image.type());
  const int n = image.cols * image.channels();
  for (int y = 0; y < image.rows; ++y) {
    const uint8_t* d = degenerate.ptr<uint8_t>(y);
    const uint8_t* p = image.ptr<uint8_t>(y);
    uint8_t* o = out.ptr<uint8_t>(y);
    for (int i = 0; i < n; ++i) {
      o[i] = clip_truncate(static_cast<float>(d[i]) + f * (static_cast<float>(p[i]) - d[i]));
    }
  }
  return out;
}

cv::Mat grey_of(const cv::Mat& image) {
  return image.channels() == 1 ? image : to_grey(image);
}

cv::Mat adjust_brightness(const cv::Mat& image, double factor) {
  return blend(cv::Mat::zeros(image.size(), image.type()), image, factor);
}

/// Blends towards the image's own grey version: no change on a grey image, as in Pillow.
cv::Mat adjust_saturation(const cv::Mat& image, double factor) {
  if (image.channels() == 1) return image.clone();
  cv::Mat grey_rgb;
  cv::cvtColor(to_grey(image), grey_rgb, cv::COLOR_GRAY2RGB);
  return blend(grey_rgb, image, factor);
}

/// Blends towards the mean grey level, rounded as Pillow's int(mean + 0.5).
cv::Mat adjust_contrast(const cv::Mat& image, double factor) {
  const int mean = static_cast<int>(cv::mean(grey_of(image))[0] + 0.5);
  return blend(cv::Mat(image.size(), image.type(), cv::Scalar::all(mean)), image, factor);
}

/// Blends towards Pillow's SMOOTH filter (3 x 3, centre 5, the rest 1, over 13), whose
/// border pixels are the original ones.
cv::Mat adjust_sharpness(const cv::Mat& image, double factor) {
  if (image.rows < 3 || image.cols < 3) return image.clone();
  cv::Mat_<float> kernel = (cv::Mat_<float>(3, 3) << 1, 1, 1, 1, 5, 1, 1, 1, 1);
  kernel /= 13.0f;
  cv::Mat smooth;
  cv::filter2D(image, smooth, -1, kernel, cv::Point(-1, -1), 0, cv::BORDER_REPLICATE);
  const cv::Rect inner(1, 1, image.cols - 2, image.rows - 2);
  cv::Mat degenerate = image.clone();
  smooth(inner).copyTo(degenerate(inner));
  return blend(degenerate, image, factor);
}

/// Pillow's RGB -> HSV of one pixel (Convert.c rgb2hsv_row, after colorsys), 0-255 each.
void rgb_to_hsv(const uint8_t* rgb, uint8_t* hsv) {
  const uint8_t r = rgb[0], g = rgb[1], b = rgb[2];
  const uint8_t maxc = std::max({r, g, b});
  const uint8_t minc = std::min({r, g, b});
  hsv[2] = maxc;
  if (minc == maxc) {
    hsv[0] = hsv[1] = 0;
    return;
  }
  // Pillow's mix of float and double steps, kept so that the bytes agree.
  const auto cr = static_cast<float>(maxc - minc);
  const float s = cr / static_cast<float>(maxc);
  const float rc = static_cast<float>(maxc - r) / cr;
  const float gc = static_cast<float>(maxc - g) / cr;
  const float bc = static_cast<float>(maxc - b) / cr;
  float h = bc - gc;
  if (r != maxc) h = static_cast<float>(g == maxc ? 2.0 + rc - bc : 4.0 + gc - rc);
  h = static_cast<float>(std::fmod(h / 6.0 + 1.0, 1.0));
  hsv[0] = static_cast<uint8_t>(std::clamp(static_cast<int>(h * 255.0), 0, 255));
  hsv[1] = static_cast<uint8_t>(std::clamp(static_cast<int>(s * 255.0), 0, 255));
}

/// Pillow's HSV -> RGB of one pixel (Convert.c hsv2rgb).
void hsv_to_rgb(const uint8_t* hsv, uint8_t* rgb) {
  const uint8_t h = hsv[0], s = hsv[1], v = hsv[2];
  if (s == 0) {
    rgb[0] = rgb[1] = rgb[2] = v;
    return;
  }
  const int i = static_cast<int>(std::floor(static_cast<float>(h) * 6.0 / 255.0));
  const auto f = static_cast<float>(static_cast<float>(h) * 6.0 / 255.0 - static_cast<float>(i));
  const auto fs = static_cast<float>(static_cast<float>(s) / 255.0);
  const auto level = [v](double x) {
    return static_cast<uint8_t>(std::clamp(static_cast<int>(std::round(v * x)), 0, 255));
  };
  const uint8_t p = level(1.0 - fs);
  const uint8_t q = level(1.0 - fs * f);
  const uint8_t t = level(1.0 - fs * (1.0 - f));
  const uint8_t table[6][3] = {{v, t, p}, {q, v, p}, {p, v, t}, {p, q, v}, {t, p, v}, {v, p, q}};
  std::memcpy(rgb, table[i % 6], 3);
}

/// Pillow's hue shift as torchvision does it: H (0-255) plus int(factor * 255), wrapping.
cv::Mat adjust_hue(const cv::Mat& image, double factor) {
  if (image.channels() == 1) return image.clone();
  const int shift = static_cast<int>(factor * 255.0);
  cv::Mat out(image.size(), image.type());
  for (int y = 0; y < image.rows; ++y) {
    const uint8_t* p = image.ptr<uint8_t>(y);
    uint8_t* o = out.ptr<uint8_t>(y);
    for (int x = 0; x < image.cols; ++x) {
      uint8_t hsv[3];
      rgb_to_hsv(p + 3 * x, hsv);
      hsv[0] = static_cast<uint8_t>((hsv[0] + shift) & 255);
      hsv_to_rgb(hsv, o + 3 * x);
    }
  }
  return out;
}

cv::Mat apply_lut(const cv::Mat& image, const std::array<uint8_t, 256>& table) {
  const cv::Mat lut(1, 256, CV_8UC1, const_cast<uint8_t*>(table.data()));
  cv::Mat out;
  cv::LUT(image, lut, out);
  return out;
}

cv::Mat posterize(const cv::Mat& image, int bits) {
  const int mask = ~((1 << (8 - bits)) - 1);
  std::array<uint8_t, 256> table;
  for (int i = 0; i < 256; ++i) table[i] = static_cast<uint8_t>(i & mask);
  return apply_lut(image, table);
}

cv::Mat solarize(const cv::Mat& image, double threshold) {
  std::array<uint8_t, 256> table;
  for (int i = 0; i < 256; ++i) table[i] = static_cast<uint8_t>(i < threshold ? i : 255 - i);
  return apply_lut(image, table);
}

/// Applies a per-channel lookup table built from that channel's histogram.
template <typename MakeTable>
cv::Mat per_channel(const cv::Mat& image, const MakeTable& make_table) {
  std::vector<cv::Mat> planes;
  cv::split(image, planes);
  for (cv::Mat& plane : planes) {
    std::array<int64_t, 256> hist{};
    for (int y = 0; y < plane.rows; ++y) {
      const uint8_t* p = plane.ptr<uint8_t>(y);
      for (int x = 0; x < plane.cols; ++x) ++hist[p[x]];
    }
    plane = apply_lut(plane, make_table(hist));
  }
  cv::Mat out;
  cv::merge(planes, out);
  return out;
}

/// ImageOps.autocontrast(cutoff=0): each channel stretched to 0-255, truncating.
cv::Mat autocontrast(const cv::Mat& image) {
  return per_channel(image, [](const std::array<int64_t, 256>& hist) {
    int lo = 0;
    while (lo < 255 && hist[lo] == 0) ++lo;
    int hi = 255;
    while (hi > 0 && hist[hi] == 0) --hi;
    std::array<uint8_t, 256> table;
    for (int i = 0; i < 256; ++i) table[i] = static_cast<uint8_t>(i);
    if (hi <= lo) return table;
    const double scale = 255.0 / (hi - lo);
    const double offset = -lo * scale;
    for (int i = 0; i < 256; ++i) {
      const int v = static_cast<int>(i * scale + offset);
      table[i] = static_cast<uint8_t>(std::clamp(v, 0, 255));
    }
    return table;
  });
}

/// ImageOps.equalize: Pillow's step (sum of the histogram without its last non-zero bin, over
/// 255) and running sum.
cv::Mat equalize(const cv::Mat& image) {
  return per_channel(image, [](const std::array<int64_t, 256>& hist) {
    std::array<uint8_t, 256> table;
    for (int i = 0; i < 256; ++i) table[i] = static_cast<uint8_t>(i);
    int64_t total = 0;
    int64_t last = 0;
    int nonzero = 0;
    for (const int64_t h : hist) {
      if (h == 0) continue;
      total += h;
      last = h;
      ++nonzero;
    }
    if (nonzero <= 1) return table;
    const int64_t step = (total - last) / 255;
    if (step == 0) return table;
    int64_t n = step / 2;
    for (int i = 0; i < 256; ++i) {
      table[i] = static_cast<uint8_t>(std::min<int64_t>(n / step, 255));
      n += hist[i];
    }
    return table;
  });
}

/// ColorJitter: the four adjustments in a random order (torch.randperm(4)), each factor drawn
/// after the order, in brightness, contrast, saturation, hue order.
cv::Mat color_jitter(const cv::Mat& image, const TrainTransform& t, std::mt19937_64& rng) {
  int order[4] = {0, 1, 2, 3};
  for (int i = 3; i > 0; --i) std::swap(order[i], order[randint(rng, i + 1)]);
  auto factor = [&](double amount) {
    return amount > 0 ? uniform(rng, std::max(0.0, 1.0 - amount), 1.0 + amount) : 1.0;
  };
  const double b = factor(t.brightness);
  const double c = factor(t.contrast);
  const double s = factor(t.saturation);
  const double h = t.hue > 0 ? uniform(rng, -t.hue, t.hue) : 0.0;
  cv::Mat out = image;
  for (const int op : order) {
    if (op == 0 && t.brightness > 0) out = adjust_brightness(out, b);
    if (op == 1 && t.contrast > 0) out = adjust_contrast(out, c);
    if (op == 2 && t.saturation > 0) out = adjust_saturation(out, s);
    if (op == 3 && t.hue > 0) out = adjust_hue(out, h);
  }
  return out;
}

// ---- TrivialAugmentWide and RandAugment --------------------------------------------------

/// torchvision's op list, in its order (the order matters: ops are drawn by index).
enum class Op {
  kIdentity,
  kShearX,
  kShearY,
  kTranslateX,
  kTranslateY,
  kRotate,
  kBrightness,
  kColor,
  kContrast,
  kSharpness,
  kPosterize,
  kSolarize,
  kAutoContrast,
  kEqualize,
};
constexpr int kOpCount = 14;
constexpr const char* kOpNames[kOpCount] = {
    "Identity", "ShearX",   "ShearY",    "TranslateX", "TranslateY", "Rotate",       "Brightness",
    "Color",    "Contrast", "Sharpness", "Posterize",  "Solarize",   "AutoContrast", "Equalize"};

bool has_magnitudes(Op op) {
  return op != Op::kIdentity && op != Op::kAutoContrast && op != Op::kEqualize;
}

bool is_signed(Op op) {
  return op != Op::kIdentity && op != Op::kPosterize && op != Op::kSolarize &&
         op != Op::kAutoContrast && op != Op::kEqualize;
}

/// The magnitude of bin `bin` of the op's range: TrivialAugmentWide's wide ranges when `wide`,
/// RandAugment's otherwise (whose translation is relative to the image size).
double op_magnitude(Op op, int bin, bool wide, int width, int height) {
  const auto lin = [bin](double hi) { return hi * bin / (kBins - 1); };
  switch (op) {
    case Op::kShearX:
    case Op::kShearY:
      return lin(wide ? 0.99 : 0.3);
    case Op::kTranslateX:
      return lin(wide ? 32.0 : 150.0 / 331.0 * width);
    case Op::kTranslateY:
      return lin(wide ? 32.0 : 150.0 / 331.0 * height);
    case Op::kRotate:
      return lin(wide ? 135.0 : 30.0);
    case Op::kBrightness:
    case Op::kColor:
    case Op::kContrast:
    case Op::kSharpness:
      return lin(wide ? 0.99 : 0.9);
    case Op::kPosterize:
      return 8.0 - static_cast<double>(round_even(bin / (wide ? 5.0 : 7.5)));
    case Op::kSolarize:
      return 255.0 - lin(255.0);
    default:
      return 0.0;
  }
}

/// torchvision's _apply_op with nearest-neighbour sampling and a black fill.
cv::Mat apply_op(const cv::Mat& img, Op op, double m) {
  switch (op) {
    case Op::kIdentity:
      return img;
    case Op::kShearX:
      return shear_x(img, m);
    case Op::kShearY:
      return shear_y(img, m);
    case Op::kTranslateX:
      return translate(img, static_cast<int64_t>(m), 0);
    case Op::kTranslateY:
      return translate(img, 0, static_cast<int64_t>(m));
    case Op::kRotate:
      return rotate(img, m);
    case Op::kBrightness:
      return adjust_brightness(img, 1.0 + m);
    case Op::kColor:
      return adjust_saturation(img, 1.0 + m);
    case Op::kContrast:
      return adjust_contrast(img, 1.0 + m);
    case Op::kSharpness:
      return adjust_sharpness(img, 1.0 + m);
    case Op::kPosterize:
      return posterize(img, static_cast<int>(m));
    case Op::kSolarize:
      return solarize(img, m);
    case Op::kAutoContrast:
      return autocontrast(img);
    case Op::kEqualize:
      return equalize(img);
  }
  return img;
}

/// One op drawn as torchvision draws it: the op, then (TrivialAugmentWide) a bin, then the
/// sign of a signed op.
cv::Mat random_op(const cv::Mat& img, bool wide, int64_t fixed_bin, std::mt19937_64& rng) {
  const auto op = static_cast<Op>(randint(rng, kOpCount));
  double m = 0.0;
  if (has_magnitudes(op)) {
    const int bin = static_cast<int>(wide ? randint(rng, kBins) : fixed_bin);
    m = op_magnitude(op, bin, wide, img.cols, img.rows);
  }
  if (is_signed(op) && randint(rng, 2) == 1) m = -m;
  return apply_op(img, op, m);
}

// ---- on the tensor ----------------------------------------------------------------------

/// torchvision's RandomErasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0) once its
/// probability has fired: 10 tries at a rectangle strictly inside the image, else no change.
/// Writes the tensor directly (no ATen kernels), so loader threads stay off the intra-op pool.
void random_erase(at::Tensor& x, std::mt19937_64& rng) {
  const int64_t channels = x.size(0);
  const int64_t height = x.size(1);
  const int64_t width = x.size(2);
  const double area = static_cast<double>(height) * width;
  const double log_r0 = std::log(0.3);
  const double log_r1 = std::log(3.3);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double erase_area = area * uniform(rng, 0.02, 0.33);
    const double aspect = std::exp(uniform(rng, log_r0, log_r1));
    const int64_t h = round_even(std::sqrt(erase_area * aspect));
    const int64_t w = round_even(std::sqrt(erase_area / aspect));
    if (!(h < height && w < width)) continue;
    const int64_t top = randint(rng, height - h + 1);
    const int64_t left = randint(rng, width - w + 1);
    float* base = x.data_ptr<float>();
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t y = top; y < top + h; ++y) {
        float* row = base + (c * height + y) * width + left;
        std::fill(row, row + w, 0.0f);
      }
    }
    return;
  }
}

bool finite_in(double v, double lo, double hi) {
  return std::isfinite(v) && v >= lo && v <= hi;
}

}  // namespace

cv::Mat apply_augment_op(const cv::Mat& image, const std::string& op, double magnitude) {
  VT_CHECK(!image.empty(), "augment op ", op, ": the image is empty; decode an image first");
  VT_CHECK(image.depth() == CV_8U && (image.channels() == 1 || image.channels() == 3),
           "augment op ", op, ": expected an 8-bit RGB or grey image, got OpenCV type ",
           image.type());
  VT_CHECK(std::isfinite(magnitude), "augment op ", op, ": the magnitude ", magnitude,
           " is not finite; give a number");
  int k = 0;
  while (k < kOpCount && op != kOpNames[k]) ++k;
  if (k == kOpCount) {
    std::string names;
    for (const char* n : kOpNames) names += std::string(names.empty() ? "" : ", ") + n;
    VT_FAIL("unknown augment op '", op, "'; use one of ", names);
  }
  const auto which = static_cast<Op>(k);
  VT_CHECK(which != Op::kPosterize || (magnitude >= 0 && magnitude <= 8), "Posterize keeps ",
           magnitude, " bits; use 0 to 8");
  const cv::Mat out = apply_op(image, which, magnitude);
  return out.data == image.data ? out.clone() : out;
}

namespace {

void check_probability(double p, const char* what) {
  VT_CHECK(std::isfinite(p) && p >= 0.0 && p <= 1.0, what, " ", p,
           " is out of range; use a probability from 0 to 1");
}

}  // namespace

void check_train_transform(const TrainTransform& t) {
  VT_CHECK(t.size > 0 && t.size <= kMaxSide, "train transform size ", t.size,
           " is out of range; use a size from 1 to ", kMaxSide, " pixels");
  VT_CHECK(finite_in(t.scale[0], 0.0, 1.0) && finite_in(t.scale[1], 0.0, 1.0) && t.scale[0] > 0.0 &&
               t.scale[0] <= t.scale[1],
           "random-resized-crop scale (", t.scale[0], ", ", t.scale[1],
           ") is invalid; give area fractions with 0 < min <= max <= 1 (default 0.08, 1)");
  VT_CHECK(std::isfinite(t.ratio[0]) && std::isfinite(t.ratio[1]) && t.ratio[0] > 0.0 &&
               t.ratio[0] <= t.ratio[1],
           "random-resized-crop ratio (", t.ratio[0], ", ", t.ratio[1],
           ") is invalid; give aspect ratios (width / height) with 0 < min <= max "
           "(default 0.75, 1.333)");
  check_probability(t.hflip, "horizontal flip probability");
  VT_CHECK(finite_in(t.rotation, 0.0, 180.0), "rotation ", t.rotation,
           " degrees is out of range; use 0 (off) to 180 degrees");
  VT_CHECK(finite_in(t.brightness, 0.0, 1e6), "colour jitter brightness ", t.brightness,
           " is invalid; use a non-negative amount (0 = off, 0.4 is common)");
  VT_CHECK(finite_in(t.contrast, 0.0, 1e6), "colour jitter contrast ", t.contrast,
           " is invalid; use a non-negative amount (0 = off, 0.4 is common)");
  VT_CHECK(finite_in(t.saturation, 0.0, 1e6), "colour jitter saturation ", t.saturation,
           " is invalid; use a non-negative amount (0 = off, 0.4 is common)");
  VT_CHECK(finite_in(t.hue, 0.0, 0.5), "colour jitter hue ", t.hue,
           " is out of range; use 0 (off) to 0.5");
  check_probability(t.jitter_prob, "colour jitter probability");
  check_probability(t.grayscale, "grayscale probability");
  check_probability(t.blur, "blur probability");
  VT_CHECK(t.auto_augment == "none" || t.auto_augment == "trivialaugment" ||
               t.auto_augment == "randaugment",
           "unknown auto-augment policy '", t.auto_augment,
           "'; use none, trivialaugment or randaugment");
  VT_CHECK(t.randaugment_ops >= 0 && t.randaugment_ops <= 64, "RandAugment ops ", t.randaugment_ops,
           " is out of range; use 0 to 64 (default 2)");
  VT_CHECK(t.randaugment_magnitude >= 0 && t.randaugment_magnitude < kBins,
           "RandAugment magnitude ", t.randaugment_magnitude, " is out of range; use 0 to ",
           kBins - 1, " (default 9)");
  check_probability(t.random_erasing, "random erasing probability");
  VT_CHECK(t.channels == 1 || t.channels == 3, "train transform with ", t.channels,
           " channels; use 3 (RGB) or 1 (grey)");
  const auto n = static_cast<size_t>(t.channels);
  VT_CHECK((t.mean.size() == n || t.mean.size() == 1) && (t.std.size() == n || t.std.size() == 1),
           "train transform has ", t.mean.size(), " mean and ", t.std.size(), " std values for ",
           t.channels, " channels; give one value per channel (or one for all)");
  for (const float s : t.std) {
    VT_CHECK(std::isfinite(s) && s > 0.0f, "normalisation std ", s,
             " is invalid; use positive std values");
  }
}

cv::Mat train_augment(const cv::Mat& image, const TrainTransform& t, std::mt19937_64& rng) {
  check_train_transform(t);
  VT_CHECK(!image.empty(), "train transform: the image is empty; decode an image first");
  VT_CHECK(image.depth() == CV_8U && (image.channels() == 1 || image.channels() == 3),
           "train transform: expected an 8-bit RGB or grey image, got OpenCV type ", image.type(),
           "; decode with vitrine::image::decode, which returns 8-bit RGB");
  cv::Mat img = image;
  if (t.channels == 1 && image.channels() == 3) {
    img = to_grey(image);
  } else if (t.channels == 3 && image.channels() == 1) {
    cv::cvtColor(image, img, cv::COLOR_GRAY2RGB);
  }

  const cv::Rect window = random_crop_window(img.cols, img.rows, t, rng);
  const auto side = static_cast<int>(t.size);
  // Always a new image from here on: later steps may not write into the caller's pixels.
  img = resize_to(img(window), side, side, t.interpolation);

  if (t.hflip > 0 && uniform(rng, 0.0, 1.0) < t.hflip) {
    cv::Mat flipped;
    cv::flip(img, flipped, 1);
    img = flipped;
  }
  if (t.rotation > 0) img = rotate(img, uniform(rng, -t.rotation, t.rotation));
  if ((t.brightness > 0 || t.contrast > 0 || t.saturation > 0 || t.hue > 0) &&
      (t.jitter_prob >= 1.0 || uniform(rng, 0.0, 1.0) < t.jitter_prob)) {
    img = color_jitter(img, t, rng);
  }
  if (t.grayscale > 0 && uniform(rng, 0.0, 1.0) < t.grayscale && img.channels() == 3) {
    cv::Mat rgb;
    cv::cvtColor(to_grey(img), rgb, cv::COLOR_GRAY2RGB);
    img = rgb;
  }
  if (t.blur > 0 && uniform(rng, 0.0, 1.0) < t.blur) {
    const double sigma = uniform(rng, 0.1, 2.0);
    // SimCLR's kernel: 10% of the side, odd, at least 3.
    const int k = std::max(3, static_cast<int>(t.size / 10) | 1);
    cv::Mat blurred;
    cv::GaussianBlur(img, blurred, cv::Size(k, k), sigma, sigma, cv::BORDER_REFLECT_101);
    img = blurred;
  }
  if (t.auto_augment == "trivialaugment") {
    img = random_op(img, /*wide=*/true, 0, rng);
  } else if (t.auto_augment == "randaugment") {
    for (int64_t i = 0; i < t.randaugment_ops; ++i) {
      img = random_op(img, /*wide=*/false, t.randaugment_magnitude, rng);
    }
  }
  return img;
}

at::Tensor train_transform(const cv::Mat& image, const TrainTransform& t, std::mt19937_64& rng) {
  at::Tensor x = to_tensor(train_augment(image, t, rng), t.mean, t.std);
  if (t.random_erasing > 0 && uniform(rng, 0.0, 1.0) < t.random_erasing) random_erase(x, rng);
  return x;
}

}  // namespace vitrine::image
