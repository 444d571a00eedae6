// Decoding (formats by content, EXIF orientation, alpha, 16-bit, grey, header checks and
// refusals) and the eval transform's geometry and values. Images are made in memory.
#include "vitrine/core/error.h"
#include "vitrine/image/decode.h"
#include "vitrine/image/transform.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

using vitrine::test::error_of;

namespace {

using vitrine::image::decode;
using vitrine::image::DecodeOptions;
using vitrine::image::Format;
using vitrine::image::Interpolation;
using Bytes = std::vector<uint8_t>;

Bytes encode(const cv::Mat& bgr, const std::string& ext, const std::vector<int>& params = {}) {
  Bytes out;
  EXPECT_TRUE(cv::imencode(ext, bgr, out, params)) << ext;
  return out;
}

/// Left half red, right half blue (given to OpenCV in BGR order).
cv::Mat red_blue(int w, int h) {
  cv::Mat m(h, w, CV_8UC3, cv::Scalar(0, 0, 255));
  m(cv::Rect(w / 2, 0, w - w / 2, h)).setTo(cv::Scalar(255, 0, 0));
  return m;
}

cv::Mat noise(int w, int h, int channels, unsigned seed) {
  cv::Mat m(h, w, CV_8UC(channels));
  cv::RNG rng(seed);
  rng.fill(m, cv::RNG::UNIFORM, 0, 256);
  return m;
}

void expect_rgb(const cv::Mat& m, int x, int y, int r, int g, int b, int tol = 0) {
  const cv::Vec3b p = m.at<cv::Vec3b>(y, x);
  EXPECT_NEAR(p[0], r, tol) << "R at " << x << "," << y;
  EXPECT_NEAR(p[1], g, tol) << "G at " << x << "," << y;
  EXPECT_NEAR(p[2], b, tol) << "B at " << x << "," << y;
}


cv::Mat decode_bytes(const Bytes& b, const DecodeOptions& o = {}) {
  return decode(b.data(), b.size(), o);
}

void put_be16(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void put_be32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}
void put_le32(Bytes& b, uint32_t v) {
  for (int s = 0; s <= 24; s += 8) b.push_back(static_cast<uint8_t>(v >> s));
}
void append(Bytes& b, const char* s, size_t n) { b.insert(b.end(), s, s + n); }

/// EXIF data: a TIFF structure whose first directory holds only the orientation tag.
Bytes exif_tiff(uint16_t orientation, bool big_endian) {
  Bytes t;
  const auto u16 = [&](uint32_t v) {
    const auto hi = static_cast<uint8_t>(v >> 8);
    const auto lo = static_cast<uint8_t>(v);
    t.insert(t.end(), big_endian ? std::initializer_list<uint8_t>{hi, lo}
                                 : std::initializer_list<uint8_t>{lo, hi});
  };
  const auto u32 = [&](uint32_t v) {
    u16(big_endian ? v >> 16 : v & 0xFFFF);
    u16(big_endian ? v & 0xFFFF : v >> 16);
  };
  append(t, big_endian ? "MM" : "II", 2);
  u16(42);
  u32(8);            // first directory right after the header
  u16(1);            // one entry
  u16(0x0112);       // Orientation
  u16(3);            // SHORT
  u32(1);            // one value
  u16(orientation);  // value, left-aligned in the 4-byte field
  u16(0);
  u32(0);  // no next directory
  return t;
}

/// A JPEG with an APP1 Exif segment inserted right after SOI.
Bytes with_jpeg_exif(const Bytes& jpeg, uint16_t orientation, bool big_endian) {
  Bytes seg = {0xFF, 0xE1, 0, 0};
  append(seg, "Exif\0\0", 6);
  const Bytes tiff = exif_tiff(orientation, big_endian);
  seg.insert(seg.end(), tiff.begin(), tiff.end());
  put_be16(&seg[2], static_cast<uint32_t>(seg.size() - 2));
  Bytes out(jpeg.begin(), jpeg.begin() + 2);
  out.insert(out.end(), seg.begin(), seg.end());
  out.insert(out.end(), jpeg.begin() + 2, jpeg.end());
  return out;
}

uint32_t crc32(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

/// A PNG with an eXIf chunk inserted right after IHDR.
Bytes with_png_exif(const Bytes& png, uint16_t orientation) {
  const Bytes tiff = exif_tiff(orientation, false);
  Bytes chunk;
  put_be32(chunk, static_cast<uint32_t>(tiff.size()));
  append(chunk, "eXIf", 4);
  chunk.insert(chunk.end(), tiff.begin(), tiff.end());
  put_be32(chunk, crc32(chunk.data() + 4, chunk.size() - 4));
  Bytes out(png.begin(), png.begin() + 33);  // signature (8) + IHDR (25)
  out.insert(out.end(), chunk.begin(), chunk.end());
  out.insert(out.end(), png.begin() + 33, png.end());
  return out;
}

/// A simple (VP8L) WebP rewrapped in the extended format with an EXIF chunk.
Bytes with_webp_exif(const Bytes& webp, int w, int h, uint16_t orientation) {
  Bytes body;
  append(body, "WEBP", 4);
  append(body, "VP8X", 4);
  put_le32(body, 10);
  body.push_back(0x08);  // EXIF present
  body.insert(body.end(), {0, 0, 0});
  for (const int v : {w - 1, h - 1}) {
    body.push_back(static_cast<uint8_t>(v)), body.push_back(static_cast<uint8_t>(v >> 8));
    body.push_back(static_cast<uint8_t>(v >> 16));
  }
  body.insert(body.end(), webp.begin() + 12, webp.end());  // the image chunk as it was
  const Bytes tiff = exif_tiff(orientation, true);
  append(body, "EXIF", 4);
  put_le32(body, static_cast<uint32_t>(tiff.size()));
  body.insert(body.end(), tiff.begin(), tiff.end());
  if (tiff.size() % 2) body.push_back(0);
  Bytes out;
  append(out, "RIFF", 4);
  put_le32(out, static_cast<uint32_t>(body.size()));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

/// Offset of the first SOF0..SOF2 marker of a JPEG.
size_t find_sof(const Bytes& jpeg) {
  size_t pos = 2;
  while (pos + 4 < jpeg.size()) {
    const uint8_t m = jpeg[pos + 1];
    if (m >= 0xC0 && m <= 0xC2) return pos;
    pos += 2 + ((jpeg[pos + 2] << 8) | jpeg[pos + 3]);
  }
  ADD_FAILURE() << "no SOF";
  return 0;
}

/// A temporary directory, removed with its files.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            ("vitrine_test_image_" + std::to_string(::getpid()) + "_" +
             std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string write(const std::string& name, const Bytes& b) const {
    const std::string p = (path_ / name).string();
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
    return p;
  }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// ---------------------------------------------------------------------------------------
// decode

TEST(ImageDecode, RoundTripsEachFormatAsRgb) {
  const cv::Mat bgr = red_blue(40, 30);
  struct Case {
    const char* ext;
    std::vector<int> params;
    int tol;
  };
  const std::vector<Case> cases = {
      {".png", {}, 0},
      {".bmp", {}, 0},
      {".webp", {}, 0},  // OpenCV writes lossless WebP by default
      {".webp", {cv::IMWRITE_WEBP_QUALITY, 90}, 12},
      {".jpg", {cv::IMWRITE_JPEG_QUALITY, 95}, 6},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.ext);
    const cv::Mat rgb = decode_bytes(encode(bgr, c.ext, c.params));
    ASSERT_EQ(rgb.type(), CV_8UC3);
    ASSERT_TRUE(rgb.isContinuous());
    EXPECT_EQ(rgb.cols, 40);
    EXPECT_EQ(rgb.rows, 30);
    expect_rgb(rgb, 5, 15, 255, 0, 0, c.tol);  // red decodes as R = 255
    expect_rgb(rgb, 35, 15, 0, 0, 255, c.tol);
  }
}

TEST(ImageDecode, LosslessFormatsAreExact) {
  const cv::Mat bgr = noise(33, 17, 3, 1);
  cv::Mat rgb_expected;
  cv::cvtColor(bgr, rgb_expected, cv::COLOR_BGR2RGB);
  for (const char* ext : {".png", ".bmp", ".webp"}) {
    const cv::Mat rgb = decode_bytes(encode(bgr, ext));
    EXPECT_EQ(cv::norm(rgb, rgb_expected, cv::NORM_INF), 0.0) << ext;
  }
}

TEST(ImageDecode, EncodePngKeepsItsInputAndRoundTrips) {
  cv::Mat rgb(5, 7, CV_8UC3);
  cv::randu(rgb, cv::Scalar::all(0), cv::Scalar::all(255));
  const cv::Mat before = rgb.clone();
  const auto png = vitrine::image::encode_png(rgb);
  EXPECT_EQ(cv::norm(rgb, before, cv::NORM_INF), 0) << "the caller's pixels were changed";
  const cv::Mat back = decode_bytes(png);
  EXPECT_EQ(cv::norm(back, before, cv::NORM_INF), 0);
}

TEST(ImageDecode, ByContentNotByName) {
  TempDir dir;
  const std::string png_as_jpg = dir.write("photo.jpg", encode(red_blue(32, 24), ".png"));
  const std::string jpg_as_png = dir.write("photo.png", encode(red_blue(32, 24), ".jpg"));
  const std::string no_ext = dir.write("photo", encode(red_blue(32, 24), ".webp"));
  for (const std::string& p : {png_as_jpg, jpg_as_png, no_ext}) {
    const cv::Mat rgb = vitrine::image::decode_file(p);
    EXPECT_EQ(rgb.size(), cv::Size(32, 24)) << p;
    expect_rgb(rgb, 2, 12, 255, 0, 0, 6);
  }
  const Bytes bytes = vitrine::image::read_file(png_as_jpg);
  EXPECT_EQ(vitrine::image::probe(bytes.data(), bytes.size()).format, Format::kPng);
}

TEST(ImageDecode, FileErrorsNameThePath) {
  TempDir dir;
  const std::string missing = dir.path() + "/missing.jpg";
  EXPECT_CONTAINS(error_of([&] { vitrine::image::decode_file(missing); }), "does not exist");
  EXPECT_CONTAINS(error_of([&] { vitrine::image::read_file(missing); }), missing);
  EXPECT_CONTAINS(error_of([&] { vitrine::image::read_file(dir.path()); }), "is a directory");
  const std::string bad = dir.write("bad.jpg", Bytes(100, 0x42));
  const std::string msg = error_of([&] { vitrine::image::decode_file(bad); });
  EXPECT_EQ(msg.rfind(bad + ": ", 0), 0u) << msg;
  EXPECT_CONTAINS(msg, "unrecognised image data");
  EXPECT_CONTAINS(error_of([&] { vitrine::image::read_file(""); }), "no image path");
  // A file beyond what the decoders take is refused before it is read (this one is sparse:
  // it takes no disk).
  const std::string huge = dir.path() + "/video.jpg";
  std::ofstream(huge).close();
  std::filesystem::resize_file(huge, (uintmax_t{1} << 31) + 1);
  EXPECT_CONTAINS(error_of([&] { vitrine::image::read_file(huge); }),
                  "is more than the 2 GiB the decoders accept");
}

TEST(ImageDecode, AppliesJpegExifOrientation) {
  const Bytes jpeg = encode(red_blue(40, 20), ".jpg", {cv::IMWRITE_JPEG_QUALITY, 95});
  for (const bool big_endian : {true, false}) {
    SCOPED_TRACE(big_endian ? "MM" : "II");
    const Bytes rotated = with_jpeg_exif(jpeg, 6, big_endian);
    const auto info = vitrine::image::probe(rotated.data(), rotated.size());
    EXPECT_EQ(info.width, 40);  // the header's size, as stored
    EXPECT_EQ(info.height, 20);
    const cv::Mat rgb = decode_bytes(rotated);
    ASSERT_EQ(rgb.size(), cv::Size(20, 40));  // rotated 90 degrees clockwise
    expect_rgb(rgb, 10, 5, 255, 0, 0, 6);     // the left (red) half is now on top
    expect_rgb(rgb, 10, 35, 0, 0, 255, 6);
  }
  const cv::Mat flipped = decode_bytes(with_jpeg_exif(jpeg, 3, true));  // 180 degrees
  ASSERT_EQ(flipped.size(), cv::Size(40, 20));
  expect_rgb(flipped, 5, 10, 0, 0, 255, 6);
  const cv::Mat upright = decode_bytes(with_jpeg_exif(jpeg, 1, true));
  expect_rgb(upright, 5, 10, 255, 0, 0, 6);
}

TEST(ImageDecode, AppliesPngAndWebpExifOrientation) {
  const cv::Mat bgr = red_blue(40, 20);
  const cv::Mat png = decode_bytes(with_png_exif(encode(bgr, ".png"), 6));
  ASSERT_EQ(png.size(), cv::Size(20, 40));
  expect_rgb(png, 10, 5, 255, 0, 0);
  expect_rgb(png, 10, 35, 0, 0, 255);

  const cv::Mat png8 = decode_bytes(with_png_exif(encode(bgr, ".png"), 8));  // counter-clockwise
  ASSERT_EQ(png8.size(), cv::Size(20, 40));
  expect_rgb(png8, 10, 35, 255, 0, 0);

  const Bytes webp = with_webp_exif(encode(bgr, ".webp"), 40, 20, 6);
  const auto info = vitrine::image::probe(webp.data(), webp.size());
  EXPECT_EQ(info.format, Format::kWebp);
  EXPECT_EQ(info.width, 40);
  EXPECT_EQ(info.height, 20);
  const cv::Mat rgb = decode_bytes(webp);
  ASSERT_EQ(rgb.size(), cv::Size(20, 40));
  expect_rgb(rgb, 10, 5, 255, 0, 0);
  expect_rgb(rgb, 10, 35, 0, 0, 255);
}

// Every orientation, on a photo without any symmetry (four quadrants of four colours and a
// noise patch): a mirror taken for a rotation shows.
TEST(ImageDecode, EachOfTheEightExifOrientationsIsUndoneExactly) {
  cv::Mat bgr(20, 40, CV_8UC3);
  bgr(cv::Rect(0, 0, 20, 10)).setTo(cv::Scalar(0, 0, 255));
  bgr(cv::Rect(20, 0, 20, 10)).setTo(cv::Scalar(0, 255, 0));
  bgr(cv::Rect(0, 10, 20, 10)).setTo(cv::Scalar(255, 0, 0));
  bgr(cv::Rect(20, 10, 20, 10)).setTo(cv::Scalar(255, 255, 255));
  noise(7, 5, 3, 4).copyTo(bgr(cv::Rect(2, 1, 7, 5)));
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  const Bytes png = encode(bgr, ".png");
  for (int orientation = 1; orientation <= 8; ++orientation) {
    SCOPED_TRACE("orientation " + std::to_string(orientation));
    cv::Mat expected;  // as PIL's ImageOps.exif_transpose turns it
    switch (orientation) {
      case 1: expected = rgb.clone(); break;
      case 2: cv::flip(rgb, expected, 1); break;
      case 3: cv::flip(rgb, expected, -1); break;
      case 4: cv::flip(rgb, expected, 0); break;
      case 5: cv::transpose(rgb, expected); break;
      case 6: cv::rotate(rgb, expected, cv::ROTATE_90_CLOCKWISE); break;
      case 7: cv::transpose(rgb, expected); cv::flip(expected, expected, -1); break;
      default: cv::rotate(rgb, expected, cv::ROTATE_90_COUNTERCLOCKWISE); break;
    }
    const cv::Mat got = decode_bytes(with_png_exif(png, orientation));
    ASSERT_EQ(got.size(), expected.size());
    EXPECT_EQ(cv::norm(got, expected, cv::NORM_INF), 0);
  }
}

TEST(ImageDecode, FlattensAlphaOntoWhite) {
  cv::Mat bgra(2, 3, CV_8UC4);
  bgra.at<cv::Vec4b>(0, 0) = {0, 0, 0, 0};        // transparent black -> white
  bgra.at<cv::Vec4b>(0, 1) = {0, 0, 255, 255};    // opaque red
  bgra.at<cv::Vec4b>(0, 2) = {0, 0, 255, 128};    // half-transparent red
  bgra.at<cv::Vec4b>(1, 0) = {200, 100, 50, 51};  // 20 % opaque
  bgra.at<cv::Vec4b>(1, 1) = {10, 20, 30, 255};
  bgra.at<cv::Vec4b>(1, 2) = {255, 255, 255, 0};
  for (const char* ext : {".png", ".webp"}) {
    SCOPED_TRACE(ext);
    const cv::Mat rgb = decode_bytes(encode(bgra, ext));
    ASSERT_EQ(rgb.type(), CV_8UC3);
    expect_rgb(rgb, 0, 0, 255, 255, 255);
    expect_rgb(rgb, 1, 0, 255, 0, 0);
    expect_rgb(rgb, 2, 0, 255, 127, 127);  // 255 * 127 / 255
    // c * 0.2 + 255 * 0.8: 50 -> 214, 100 -> 224, 200 -> 244
    expect_rgb(rgb, 0, 1, 214, 224, 244);
    expect_rgb(rgb, 1, 1, 30, 20, 10);
    expect_rgb(rgb, 2, 1, 255, 255, 255);
  }
}

// A grey PNG may mark one grey level transparent (tRNS): those pixels go on white, as a
// palette or RGB colour key and an alpha channel do.
TEST(ImageDecode, AGreyPngsTransparentLevelIsPutOnWhite) {
  cv::Mat grey(4, 6, CV_8UC1, cv::Scalar(100));
  grey(cv::Rect(0, 0, 3, 4)).setTo(40);
  const Bytes png = encode(grey, ".png");
  Bytes chunk;
  put_be32(chunk, 2);
  append(chunk, "tRNS", 4);
  chunk.push_back(0);
  chunk.push_back(100);  // grey level 100 is transparent
  put_be32(chunk, crc32(chunk.data() + 4, chunk.size() - 4));
  Bytes keyed(png.begin(), png.begin() + 33);  // signature (8) + IHDR (25)
  keyed.insert(keyed.end(), chunk.begin(), chunk.end());
  keyed.insert(keyed.end(), png.begin() + 33, png.end());
  const cv::Mat rgb = decode_bytes(keyed);
  expect_rgb(rgb, 1, 1, 40, 40, 40);
  expect_rgb(rgb, 4, 2, 255, 255, 255);
  expect_rgb(decode_bytes(png), 4, 2, 100, 100, 100);  // without the chunk: opaque
}

TEST(ImageDecode, SixteenBitPngIsRoundedToEightBits) {
  cv::Mat bgr16(1, 4, CV_16UC3);
  bgr16.at<cv::Vec3w>(0, 0) = {0, 32896, 65535};  // 128 * 257 -> 128
  bgr16.at<cv::Vec3w>(0, 1) = {300, 385, 386};    // v / 257 = 1.17, 1.498, 1.502
  bgr16.at<cv::Vec3w>(0, 2) = {128, 129, 65407};  // 0.498 -> 0, 0.502 -> 1, 254.5 -> 255
  bgr16.at<cv::Vec3w>(0, 3) = {257, 514, 771};
  const cv::Mat rgb = decode_bytes(encode(bgr16, ".png"));
  ASSERT_EQ(rgb.type(), CV_8UC3);
  expect_rgb(rgb, 0, 0, 255, 128, 0);
  expect_rgb(rgb, 1, 0, 2, 1, 1);
  expect_rgb(rgb, 2, 0, 255, 1, 0);
  expect_rgb(rgb, 3, 0, 3, 2, 1);

  cv::Mat grey16(1, 2, CV_16UC1);
  grey16.at<uint16_t>(0, 0) = 25700;  // 100 * 257
  grey16.at<uint16_t>(0, 1) = 65535;
  const cv::Mat g = decode_bytes(encode(grey16, ".png"));
  expect_rgb(g, 0, 0, 100, 100, 100);
  expect_rgb(g, 1, 0, 255, 255, 255);

  cv::Mat bgra16(1, 2, CV_16UC4);
  bgra16.at<cv::Vec4w>(0, 0) = {0, 0, 0, 0};
  bgra16.at<cv::Vec4w>(0, 1) = {0, 0, 65535, 32768};  // half red on white
  const cv::Mat a = decode_bytes(encode(bgra16, ".png"));
  expect_rgb(a, 0, 0, 255, 255, 255);
  expect_rgb(a, 1, 0, 255, 127, 127);
}

TEST(ImageDecode, GreyBecomesThreeEqualChannels) {
  cv::Mat grey(5, 7, CV_8UC1, cv::Scalar(77));
  grey.at<uint8_t>(2, 3) = 200;
  for (const char* ext : {".png", ".bmp", ".jpg"}) {
    SCOPED_TRACE(ext);
    const cv::Mat rgb = decode_bytes(encode(grey, ext, {cv::IMWRITE_JPEG_QUALITY, 100}));
    ASSERT_EQ(rgb.type(), CV_8UC3);
    for (int y = 0; y < rgb.rows; ++y) {
      for (int x = 0; x < rgb.cols; ++x) {
        const cv::Vec3b p = rgb.at<cv::Vec3b>(y, x);
        EXPECT_EQ(p[0], p[1]);
        EXPECT_EQ(p[1], p[2]);
      }
    }
    if (std::string(ext) != ".jpg") {
      expect_rgb(rgb, 0, 0, 77, 77, 77);
      expect_rgb(rgb, 3, 2, 200, 200, 200);
    }
  }
}

TEST(ImageDecode, ProbeReadsEachHeader) {
  const cv::Mat bgr = noise(123, 45, 3, 2);
  struct Case {
    const char* ext;
    std::vector<int> params;
    Format format;
  };
  const std::vector<Case> cases = {
      {".jpg", {}, Format::kJpeg},
      {".jpg", {cv::IMWRITE_JPEG_PROGRESSIVE, 1}, Format::kJpeg},
      {".png", {}, Format::kPng},
      {".webp", {}, Format::kWebp},                            // VP8L
      {".webp", {cv::IMWRITE_WEBP_QUALITY, 80}, Format::kWebp},  // VP8
      {".bmp", {}, Format::kBmp},
  };
  for (const Case& c : cases) {
    const Bytes b = encode(bgr, c.ext, c.params);
    const auto info = vitrine::image::probe(b.data(), b.size());
    EXPECT_EQ(info.format, c.format) << c.ext;
    EXPECT_EQ(info.width, 123) << c.ext;
    EXPECT_EQ(info.height, 45) << c.ext;
  }
  // VP8X (extended WebP): the canvas size.
  const Bytes vp8x = with_webp_exif(encode(bgr, ".webp"), 123, 45, 1);
  EXPECT_EQ(vitrine::image::probe(vp8x.data(), vp8x.size()).width, 123);

  // GIF: the logical screen.
  const Bytes gif = {'G', 'I', 'F', '8', '9', 'a', 0x2C, 0x01, 0xC8, 0x00, 0x80, 0, 0};
  const auto g = vitrine::image::probe(gif.data(), gif.size());
  EXPECT_EQ(g.format, Format::kGif);
  EXPECT_EQ(g.width, 300);
  EXPECT_EQ(g.height, 200);

  // TIFF: width and length in the first directory (little endian, SHORT and LONG).
  Bytes tiff = {'I', 'I', 42, 0, 8, 0, 0, 0, 2, 0,
                0, 1, 3, 0, 1, 0, 0, 0, 0x40, 0x01, 0, 0,   // ImageWidth = 320 (SHORT)
                1, 1, 4, 0, 1, 0, 0, 0, 0xF0, 0, 0, 0,      // ImageLength = 240 (LONG)
                0, 0, 0, 0};
  const auto t = vitrine::image::probe(tiff.data(), tiff.size());
  EXPECT_EQ(t.format, Format::kTiff);
  EXPECT_EQ(t.width, 320);
  EXPECT_EQ(t.height, 240);

  // A top-down BMP (negative height).
  Bytes bmp = encode(bgr, ".bmp");
  bmp[22] = 0xD3, bmp[23] = 0xFF, bmp[24] = 0xFF, bmp[25] = 0xFF;  // -45
  EXPECT_EQ(vitrine::image::probe(bmp.data(), bmp.size()).height, 45);

  EXPECT_STREQ(vitrine::image::format_name(Format::kWebp), "WebP");
  EXPECT_STREQ(vitrine::image::format_name(Format::kUnknown), "unknown");
}

TEST(ImageDecode, RefusesHugeImagesFromTheHeader) {
  Bytes jpeg = encode(noise(64, 48, 3, 3), ".jpg");
  const size_t sof = find_sof(jpeg);
  put_be16(&jpeg[sof + 5], 50000);  // height
  put_be16(&jpeg[sof + 7], 50000);  // width
  const auto info = vitrine::image::probe(jpeg.data(), jpeg.size());
  EXPECT_EQ(info.width, 50000);
  // Refused by the header check: imdecode would allocate 7.5 GB or fail with its own message.
  const std::string msg = error_of([&] { decode_bytes(jpeg); });
  EXPECT_CONTAINS(msg, "50000x50000");
  EXPECT_CONTAINS(msg, "2500 megapixels");
  EXPECT_CONTAINS(msg, "limit of 100 megapixels");
  EXPECT_CONTAINS(msg, "--max-pixels");

  const Bytes small = encode(noise(40, 30, 3, 4), ".png");
  DecodeOptions tight;
  tight.max_pixels = 1000;
  EXPECT_CONTAINS(error_of([&] { decode_bytes(small, tight); }),
                  "40x30 (1200 pixels), over the limit of 1000 pixels");
  tight.max_pixels = 1200;
  EXPECT_EQ(decode_bytes(small, tight).cols, 40);
  tight.max_pixels = 0;  // no limit of ours
  EXPECT_EQ(decode_bytes(small, tight).cols, 40);
}

TEST(ImageDecode, RefusesTruncatedJpeg) {
  const Bytes jpeg = encode(noise(64, 64, 3, 5), ".jpg");
  for (const double keep : {0.9, 0.6, 0.3}) {
    const Bytes cut(jpeg.begin(), jpeg.begin() + static_cast<long>(jpeg.size() * keep));
    EXPECT_CONTAINS(error_of([&] { decode_bytes(cut); }), "truncated") << keep;
  }
  const Bytes no_eoi(jpeg.begin(), jpeg.end() - 2);
  EXPECT_CONTAINS(error_of([&] { decode_bytes(no_eoi); }), "end-of-image");
  const Bytes header_only(jpeg.begin(), jpeg.begin() + 20);
  EXPECT_CONTAINS(error_of([&] { decode_bytes(header_only); }), "truncated");

  // Bytes after EOI (some cameras append data) are fine; so is a progressive JPEG.
  Bytes trailing = jpeg;
  trailing.insert(trailing.end(), {0x00, 0x11, 0xFF, 0xD8, 0x42});
  EXPECT_EQ(decode_bytes(trailing).cols, 64);
  const Bytes progressive =
      encode(noise(64, 64, 3, 5), ".jpg", {cv::IMWRITE_JPEG_PROGRESSIVE, 1});
  EXPECT_EQ(decode_bytes(progressive).cols, 64);
}

TEST(ImageDecode, RefusesNonImagesClearly) {
  EXPECT_CONTAINS(error_of([] { decode(nullptr, 0); }), "empty (0 bytes)");
  const Bytes five = {1, 2, 3, 4, 5};
  EXPECT_CONTAINS(error_of([&] { decode_bytes(five); }), "too short");

  Bytes random(4096);
  std::mt19937 rng(7);
  for (auto& b : random) b = static_cast<uint8_t>(rng());
  random[0] = 0x17;
  const std::string r = error_of([&] { decode_bytes(random); });
  EXPECT_CONTAINS(r, "unrecognised image data");
  EXPECT_CONTAINS(r, "starts with bytes 17");
  EXPECT_CONTAINS(r, "JPEG, PNG, WebP and BMP");

  const std::string html = "<!DOCTYPE html><html><body>Not found</body></html>";
  const std::string t =
      error_of([&] { decode(reinterpret_cast<const uint8_t*>(html.data()), html.size()); });
  EXPECT_CONTAINS(t, "starts with text \"<!DOCTYPE html><\"");
  EXPECT_CONTAINS(t, "web page");

  // A recognised format with a corrupt or cut header.
  Bytes png = encode(noise(8, 8, 3, 6), ".png");
  const Bytes png_short(png.begin(), png.begin() + 12);
  EXPECT_CONTAINS(error_of([&] { decode_bytes(png_short); }), "PNG header is truncated");
  png[16] = png[17] = png[18] = png[19] = 0;  // width 0
  EXPECT_CONTAINS(error_of([&] { decode_bytes(png); }), "corrupt PNG");

  // A valid header over corrupt pixel data.
  Bytes webp = encode(noise(32, 32, 3, 8), ".webp");
  for (size_t i = 30; i < webp.size(); ++i) webp[i] = static_cast<uint8_t>(i * 31);
  EXPECT_CONTAINS(error_of([&] { decode_bytes(webp); }), "cannot decode the WebP image");
}

TEST(ImageDecode, UnsupportedFormatsNameTheSupportedOnes) {
  // The smallest GIF: 1x1, global colour table of two entries, one image.
  const Bytes gif = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0, 0x80, 0, 0, 0, 0, 0, 0xFF,
                     0xFF, 0xFF, 0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 0x01, 0, 0x3B};
  const std::string g = error_of([&] { decode_bytes(gif); });
  EXPECT_CONTAINS(g, "GIF images are not supported");
  EXPECT_CONTAINS(g, "JPEG, PNG, WebP and BMP");
  const Bytes tiff = {'M', 'M', 0, 42, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_CONTAINS(error_of([&] { decode_bytes(tiff); }), "TIFF images are not supported");
}

// ---------------------------------------------------------------------------------------
// transform

TEST(ImageTransform, ParsesInterpolationNames) {
  EXPECT_EQ(vitrine::image::parse_interpolation("bilinear"), Interpolation::kBilinear);
  EXPECT_EQ(vitrine::image::parse_interpolation("BICUBIC"), Interpolation::kBicubic);
  EXPECT_EQ(vitrine::image::parse_interpolation("nearest"), Interpolation::kNearest);
  EXPECT_STREQ(vitrine::image::interpolation_name(Interpolation::kBicubic), "bicubic");
  const std::string msg = error_of([] { vitrine::image::parse_interpolation("lanczos"); });
  EXPECT_CONTAINS(msg, "'lanczos'");
  EXPECT_CONTAINS(msg, "nearest, bilinear or bicubic");
}

TEST(ImageTransform, ResizeShorterMatchesTorchvisionSizes) {
  struct Case {
    int w, h;
    int64_t size;
    int ew, eh;
  };
  // Longer side: int(size * long / short), truncated.
  const std::vector<Case> cases = {
      {640, 480, 256, 341, 256}, {300, 500, 256, 256, 426}, {180, 120, 256, 384, 256},
      {100, 100, 256, 256, 256}, {333, 257, 256, 331, 256}, {257, 333, 256, 256, 331},
      {1, 7, 3, 3, 21},          {200, 3, 256, 17066, 256},
  };
  for (const Case& c : cases) {
    for (const Interpolation i :
         {Interpolation::kNearest, Interpolation::kBilinear, Interpolation::kBicubic}) {
      const cv::Mat out = vitrine::image::resize_shorter(noise(c.w, c.h, 3, 9), c.size, i);
      EXPECT_EQ(out.size(), cv::Size(c.ew, c.eh)) << c.w << "x" << c.h;
    }
  }
  // Shorter side already right: no resampling at all.
  const cv::Mat same = noise(256, 300, 3, 10);
  EXPECT_EQ(vitrine::image::resize_shorter(same, 256, Interpolation::kBicubic).data, same.data);
}

TEST(ImageTransform, ResizeMatchesPillowPixels) {
  // Pillow 9.4's Image.resize on this 8x6 image, to (5, 4) and (from its top-left 3x2) to
  // (7, 5): the values are Pillow's own output.
  cv::Mat img(6, 8, CV_8UC3);
  for (int y = 0; y < 6; ++y) {
    for (int x = 0; x < 8; ++x) {
      for (int c = 0; c < 3; ++c) {
        img.at<cv::Vec3b>(y, x)[c] =
            static_cast<uint8_t>((x * 37 + y * 11 + c * 50 + (x * y * 13) % 29) % 256);
      }
    }
  }
  const std::vector<int> bilinear = {
      21,  71,  121, 83,  133, 183, 140, 190, 185, 197, 180, 70,  101, 46,  96,
      43,  93,  143, 112, 162, 212, 166, 208, 138, 214, 110, 65,  110, 67,  117,
      57,  107, 157, 123, 173, 207, 171, 213, 107, 134, 81,  84,  47,  85,  135,
      72,  122, 172, 137, 187, 189, 195, 165, 53,  134, 66,  99,  56,  106, 156};
  const std::vector<int> bicubic = {
      17,  67,  117, 79,  129, 184, 139, 197, 196, 208, 190, 61,  98,  37,  94,
      39,  89,  139, 112, 162, 226, 167, 221, 139, 235, 104, 52,  113, 62,  119,
      55,  105, 157, 123, 172, 218, 179, 230, 101, 125, 69,  80,  35,  83,  139,
      68,  118, 175, 137, 195, 198, 207, 167, 36,  131, 56,  101, 52,  109, 161};
  const std::vector<int> nearest = {
      0,   50,  100, 74,  124, 174, 148, 198, 248, 185, 235, 29,  3,   53,  103,
      22,  72,  122, 119, 169, 219, 187, 237, 31,  221, 15,  65,  33,  83,  133,
      33,  83,  133, 127, 177, 227, 192, 242, 36,  239, 33,  83,  48,  98,  148,
      55,  105, 155, 143, 193, 243, 231, 25,  75,  246, 40,  90,  78,  128, 178};
  const auto expect_pixels = [](const cv::Mat& m, const std::vector<int>& want) {
    ASSERT_EQ(m.total() * m.channels(), want.size());
    const cv::Mat flat = m.clone().reshape(1, 1);
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(flat.at<uint8_t>(0, static_cast<int>(i)), want[i]) << "value " << i;
    }
  };
  expect_pixels(vitrine::image::resize_shorter(img, 4, Interpolation::kBilinear), bilinear);
  expect_pixels(vitrine::image::resize_shorter(img, 4, Interpolation::kBicubic), bicubic);
  expect_pixels(vitrine::image::resize_shorter(img, 4, Interpolation::kNearest), nearest);

  const std::vector<int> bilinear_up = {
      0,  50,  100, 5,  55,  105, 21, 71,  121, 37,  87,  137, 53,  103, 153, 69,  119, 169,
      74, 124, 174, 1,  51,  101, 6,  56,  106, 23,  73,  123, 39,  89,  139, 56,  106, 156,
      72, 122, 172, 78, 128, 178, 6,  56,  106, 12,  62,  112, 31,  81,  131, 49,  99,  149,
      68, 118, 168, 87, 137, 187, 93, 143, 193, 10,  60,  110, 17,  67,  117, 38,  88,  138,
      59, 109, 159, 79, 129, 179, 101, 151, 201, 107, 157, 207, 11, 61, 111, 18, 68, 118,
      40, 90,  140, 61, 111, 161, 82, 132, 182, 104, 154, 204, 111, 161, 211};
  const std::vector<int> bicubic_up = {
      0,  45,  95,  2,  52,  102, 16, 66,  116, 35,  85,  135, 53,  103, 153, 67,  117, 167,
      74, 124, 174, 0,  47,  97,  4,  54,  104, 19,  69,  119, 39,  89,  139, 58,  108, 158,
      73, 123, 173, 80, 130, 180, 3,  51,  101, 9,   59,  109, 27,  77,  127, 49,  99,  149,
      71, 121, 171, 89, 139, 189, 97, 147, 197, 6,   55,  105, 14,  64,  114, 35,  85,  135,
      59, 109, 159, 84, 134, 184, 105, 155, 205, 114, 164, 214, 7, 57, 107, 16, 66, 116,
      38, 88,  138, 63, 113, 163, 89, 139, 189, 111, 161, 211, 120, 170, 220};
  const cv::Mat small = img(cv::Rect(0, 0, 3, 2));  // a view: rows are not contiguous
  expect_pixels(vitrine::image::resize_shorter(small, 5, Interpolation::kBilinear), bilinear_up);
  expect_pixels(vitrine::image::resize_shorter(small, 5, Interpolation::kBicubic), bicubic_up);
}

TEST(ImageTransform, ResizeKeepsFlatImagesFlat) {
  for (const Interpolation i : {Interpolation::kBilinear, Interpolation::kBicubic}) {
    for (const auto& [w, h, size] : std::vector<std::tuple<int, int, int>>{
             {640, 480, 256}, {50, 70, 256}, {1000, 999, 17}}) {
      const cv::Mat flat(h, w, CV_8UC3, cv::Scalar(12, 130, 251));
      const cv::Mat out = vitrine::image::resize_shorter(flat, size, i);
      EXPECT_EQ(cv::norm(out, cv::Mat(out.size(), CV_8UC3, cv::Scalar(12, 130, 251)),
                         cv::NORM_INF),
                0.0);
    }
  }
}

/// An image whose pixel is its own coordinates, to read crop windows off.
cv::Mat coordinates(int w, int h) {
  cv::Mat m(h, w, CV_32SC1);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) m.at<int>(y, x) = (y + 1) * 100000 + (x + 1);
  }
  return m;
}

TEST(ImageTransform, CenterCropMatchesTorchvisionGeometry) {
  struct Case {
    int w, h, crop;
    int left, top;  // first source pixel kept: int(round((side - crop) / 2.0))
  };
  const std::vector<Case> cases = {
      {341, 256, 224, 58, 16},  // round(58.5) = 58 (half to even)
      {256, 426, 224, 16, 101},
      {225, 227, 224, 0, 2},  // round(0.5) = 0, round(1.5) = 2
      {229, 231, 224, 2, 4},  // round(2.5) = 2, round(3.5) = 4
      {224, 224, 224, 0, 0},
  };
  for (const Case& c : cases) {
    const cv::Mat out = vitrine::image::center_crop(coordinates(c.w, c.h), c.crop);
    ASSERT_EQ(out.size(), cv::Size(c.crop, c.crop));
    EXPECT_EQ(out.at<int>(0, 0), (c.top + 1) * 100000 + (c.left + 1)) << c.w << "x" << c.h;
  }
}

TEST(ImageTransform, CenterCropPadsSmallImagesWithZeros) {
  struct Case {
    int w, h, crop;
    int pad_left, pad_top, src_left, src_top;
  };
  // Padding: (crop - side) // 2 before, the rest after; a larger side is still cropped.
  const std::vector<Case> cases = {
      {100, 50, 224, 62, 87, 0, 0},
      {101, 51, 224, 61, 86, 0, 0},
      {300, 100, 224, 0, 62, 38, 0},  // landscape: width cropped, height padded
      {99, 301, 224, 62, 0, 0, 38},   // portrait: round(77 / 2.0) = round(38.5) = 38
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::to_string(c.w) + "x" + std::to_string(c.h));
    const cv::Mat out = vitrine::image::center_crop(coordinates(c.w, c.h), c.crop);
    ASSERT_EQ(out.size(), cv::Size(c.crop, c.crop));
    EXPECT_EQ(out.at<int>(c.pad_top, c.pad_left), (c.src_top + 1) * 100000 + c.src_left + 1);
    const int kept_w = std::min(c.w, c.crop);
    const int kept_h = std::min(c.h, c.crop);
    EXPECT_EQ(cv::countNonZero(out), kept_w * kept_h);
    EXPECT_EQ(cv::countNonZero(out(cv::Rect(c.pad_left, c.pad_top, kept_w, kept_h))),
              kept_w * kept_h);
  }
}

TEST(ImageTransform, ToTensorNormalisesExactly) {
  cv::Mat rgb(2, 3, CV_8UC3);
  const uint8_t values[] = {0, 1, 2, 127, 128, 129, 255, 254, 253, 10, 20, 30, 40, 50, 60, 70,
                            80, 90};
  std::memcpy(rgb.data, values, sizeof values);
  const std::vector<float> mean = {0.485f, 0.456f, 0.406f};
  const std::vector<float> std = {0.229f, 0.224f, 0.225f};
  const at::Tensor t = vitrine::image::to_tensor(rgb, mean, std);
  ASSERT_EQ(t.dtype(), at::kFloat);
  ASSERT_EQ(t.sizes(), (at::IntArrayRef{3, 2, 3}));
  ASSERT_TRUE(t.is_contiguous());
  const auto a = t.accessor<float, 3>();
  for (int y = 0; y < 2; ++y) {
    for (int x = 0; x < 3; ++x) {
      for (int c = 0; c < 3; ++c) {
        const uint8_t v = values[(y * 3 + x) * 3 + c];
        // ToTensor then Normalize, step by step in float32 as torchvision computes them.
        const float want = (static_cast<float>(v) / 255.0f - mean[c]) / std[c];
        EXPECT_EQ(a[c][y][x], want) << c << "," << y << "," << x;
        EXPECT_NEAR(a[c][y][x], (v / 255.0 - mean[c]) / std[c], 1e-6);
      }
    }
  }
  // The same as libtorch's own ops on the HWC bytes.
  const at::Tensor hwc = at::from_blob(rgb.data, {2, 3, 3}, at::kByte);
  const at::Tensor ref = hwc.permute({2, 0, 1}).to(at::kFloat).div(255)
                             .sub(at::tensor(mean).view({3, 1, 1}))
                             .div(at::tensor(std).view({3, 1, 1}));
  EXPECT_TRUE(at::equal(t, ref));

  // A view with padded rows, and one mean/std for all channels.
  const cv::Mat big = noise(10, 8, 3, 11);
  const cv::Mat view = big(cv::Rect(2, 1, 5, 4));
  const at::Tensor v = vitrine::image::to_tensor(view, {0.5f}, {0.25f});
  EXPECT_EQ(v[1][3][4].item<float>(),
            (static_cast<float>(view.at<cv::Vec3b>(3, 4)[1]) / 255.0f - 0.5f) / 0.25f);

  EXPECT_CONTAINS(error_of([&] { vitrine::image::to_tensor(rgb, {0.5f, 0.5f}, std); }),
                  "one value per channel");
  EXPECT_CONTAINS(error_of([&] { vitrine::image::to_tensor(rgb, mean, {1.f, 0.f, 1.f}); }),
                  "divide by zero");
}

TEST(ImageTransform, GreyUsesPilWeights) {
  cv::Mat rgb(1, 3, CV_8UC3);
  rgb.at<cv::Vec3b>(0, 0) = {10, 200, 30};
  rgb.at<cv::Vec3b>(0, 1) = {255, 255, 255};
  rgb.at<cv::Vec3b>(0, 2) = {255, 0, 0};
  const cv::Mat grey = vitrine::image::to_grey(rgb);
  ASSERT_EQ(grey.type(), CV_8UC1);
  EXPECT_EQ(grey.at<uint8_t>(0, 0), (10 * 19595 + 200 * 38470 + 30 * 7471 + 0x8000) >> 16);
  EXPECT_EQ(grey.at<uint8_t>(0, 1), 255);
  EXPECT_EQ(grey.at<uint8_t>(0, 2), 76);  // PIL: Image.new("RGB", (1, 1), "red").convert("L")

  vitrine::image::EvalTransform t;
  t.channels = 1;
  t.mean = {0.5f};
  t.std = {0.5f};
  t.resize = 32;
  t.crop = 28;
  const cv::Mat photo = noise(60, 40, 3, 12);
  const at::Tensor out = vitrine::image::eval_transform(photo, t);
  ASSERT_EQ(out.sizes(), (at::IntArrayRef{1, 28, 28}));
  const cv::Mat expected = vitrine::image::center_crop(
      vitrine::image::resize_shorter(vitrine::image::to_grey(photo), 32, t.interpolation), 28);
  EXPECT_TRUE(at::equal(out, vitrine::image::to_tensor(expected, t.mean, t.std)));

  t.mean = {0.485f, 0.456f, 0.406f};
  EXPECT_CONTAINS(error_of([&] { vitrine::image::eval_transform(photo, t); }),
                  "one value per channel");
}

TEST(ImageTransform, EvalTransformEqualsItsSteps) {
  // eval_transform resamples only the pixels the crop keeps; it must equal the full steps.
  const std::vector<std::pair<int, int>> sizes = {{640, 480}, {300, 500}, {180, 120}, {100, 50},
                                                  {256, 300}, {257, 257}, {223, 1000}};
  for (const auto& [w, h] : sizes) {
    const cv::Mat rgb = noise(w, h, 3, static_cast<unsigned>(w * 7 + h));
    for (const Interpolation i :
         {Interpolation::kNearest, Interpolation::kBilinear, Interpolation::kBicubic}) {
      vitrine::image::EvalTransform t;
      t.interpolation = i;
      const at::Tensor out = vitrine::image::eval_transform(rgb, t);
      ASSERT_EQ(out.sizes(), (at::IntArrayRef{3, 224, 224}));
      const cv::Mat steps =
          vitrine::image::center_crop(vitrine::image::resize_shorter(rgb, 256, i), 224);
      EXPECT_TRUE(at::equal(out, vitrine::image::to_tensor(steps, t.mean, t.std)))
          << w << "x" << h << " " << vitrine::image::interpolation_name(i);
    }
  }
}

TEST(ImageTransform, AGreyImageFeedsAnRgbModelAsItsGreyRgbCopy) {
  // Packed data sets (Fashion-MNIST) hand over 1-channel images; decode gives grey files
  // as RGB. Both must reach an RGB model the same way.
  const cv::Mat grey = noise(40, 30, 1, 5);
  cv::Mat rgb;
  cv::cvtColor(grey, rgb, cv::COLOR_GRAY2RGB);
  const vitrine::image::EvalTransform t;
  EXPECT_TRUE(at::equal(vitrine::image::eval_transform(grey, t),
                        vitrine::image::eval_transform(rgb, t)));
}

TEST(ImageTransform, RejectsBadArguments) {
  const cv::Mat rgb = noise(20, 20, 3, 13);
  vitrine::image::EvalTransform t;
  t.crop = 0;
  EXPECT_CONTAINS(error_of([&] { vitrine::image::eval_transform(rgb, t); }), "crop size 0");
  t = {};
  t.channels = 2;
  EXPECT_CONTAINS(error_of([&] { vitrine::image::eval_transform(rgb, t); }), "use 3 (RGB)");
  EXPECT_CONTAINS(error_of([] { vitrine::image::resize_shorter(cv::Mat(), 256,
                                                              Interpolation::kBilinear); }),
                  "empty");
  const cv::Mat f(4, 4, CV_32FC3);
  EXPECT_CONTAINS(error_of([&] { vitrine::image::to_tensor(f, {0.f}, {1.f}); }), "8-bit");
}

}  // namespace
