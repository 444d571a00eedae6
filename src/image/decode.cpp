#include "vitrine/image/decode.h"

#include "vitrine/core/error.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <jpeglib.h>

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <memory>
#include <sstream>
#include <system_error>

namespace vitrine::image {
namespace {

constexpr const char* kSupported = "JPEG, PNG, WebP and BMP";

uint32_t be16(const uint8_t* p) { return (uint32_t{p[0]} << 8) | p[1]; }
uint32_t be32(const uint8_t* p) { return (be16(p) << 16) | be16(p + 2); }
uint64_t be64(const uint8_t* p) { return (uint64_t{be32(p)} << 32) | be32(p + 4); }
uint32_t le16(const uint8_t* p) { return uint32_t{p[0]} | (uint32_t{p[1]} << 8); }
uint32_t le24(const uint8_t* p) { return le16(p) | (uint32_t{p[2]} << 16); }
uint32_t le32(const uint8_t* p) { return le16(p) | (le16(p + 2) << 16); }
uint64_t le64(const uint8_t* p) { return uint64_t{le32(p)} | (uint64_t{le32(p + 4)} << 32); }

bool has_prefix(const uint8_t* data, size_t size, const char* magic, size_t n) {
  return size >= n && std::memcmp(data, magic, n) == 0;
}

bool is_bmp_info_header_size(uint32_t n) {
  // BITMAPCOREHEADER, OS/2 2.x (short and full), BITMAPINFOHEADER, the V2/V3 variants, V4, V5.
  return n == 12 || n == 16 || n == 40 || n == 52 || n == 56 || n == 64 || n == 108 || n == 124;
}

Format sniff(const uint8_t* d, size_t n) {
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return Format::kJpeg;
  if (has_prefix(d, n, "\x89PNG\r\n\x1a\n", 8)) return Format::kPng;
  if (n >= 12 && has_prefix(d, n, "RIFF", 4) && std::memcmp(d + 8, "WEBP", 4) == 0) {
    return Format::kWebp;
  }
  if (has_prefix(d, n, "GIF87a", 6) || has_prefix(d, n, "GIF89a", 6)) return Format::kGif;
  if (has_prefix(d, n, "II*\0", 4) || has_prefix(d, n, "MM\0*", 4) ||
      has_prefix(d, n, "II+\0", 4) || has_prefix(d, n, "MM\0+", 4)) {
    return Format::kTiff;
  }
  // "BM" alone is too weak a signature (text can start with it): the info header size must
  // also be one of the known ones.
  if (n >= 18 && d[0] == 'B' && d[1] == 'M' && is_bmp_info_header_size(le32(d + 14))) {
    return Format::kBmp;
  }
  return Format::kUnknown;
}

bool is_supported(Format f) {
  return f == Format::kJpeg || f == Format::kPng || f == Format::kWebp || f == Format::kBmp;
}

/// The first bytes, for an error message: as text when they are text (a saved web page or an
/// error response is the usual "image" that is not one), otherwise in hex.
std::string describe_start(const uint8_t* d, size_t n) {
  const size_t k = std::min<size_t>(n, 16);
  bool text = true;
  for (size_t i = 0; i < k; ++i) {
    const uint8_t c = d[i];
    text = text && ((c >= 0x20 && c < 0x7F) || c == '\t' || c == '\n' || c == '\r');
  }
  std::ostringstream os;
  if (text) {
    os << "starts with text \"";
    for (size_t i = 0; i < k; ++i) {
      const char c = static_cast<char>(d[i]);
      os << (c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : std::string(1, c));
    }
    os << "\"";
  } else {
    os << "starts with bytes" << std::hex << std::setfill('0');
    for (size_t i = 0; i < k; ++i) os << ' ' << std::setw(2) << int{d[i]};
  }
  return os.str();
}

Format sniff_checked(const uint8_t* data, size_t size) {
  VT_CHECK(size > 0, "image data is empty (0 bytes); the file was not written or downloaded "
                     "completely: fetch it again");
  VT_CHECK(data != nullptr, "image data pointer is null for ", size, " bytes; pass the buffer");
  const Format format = sniff(data, size);
  if (format != Format::kUnknown) return format;
  const std::string start = describe_start(data, size);
  VT_CHECK(size >= 16, "image data is only ", size, " bytes, too short to be an image (", start,
           "); the file is truncated or not an image: fetch it again");
  if (start.rfind("starts with text", 0) == 0) {
    VT_FAIL("unrecognised image data (", size, " bytes, ", start,
            "): this is text, not an image (often a saved web page or a server's error "
            "response); download the image itself (supported formats: ", kSupported, ")");
  }
  VT_FAIL("unrecognised image data (", size, " bytes, ", start, "): not a supported format (",
          kSupported, "); check that the file is an image and convert it to one of these");
}

[[noreturn]] void fail_truncated_header(Format f, size_t size) {
  VT_FAIL(format_name(f), " header is truncated (the data ends after ", size,
          " bytes); the file was cut short: fetch or export it again");
}

void check_size(Format f, int64_t w, int64_t h) {
  VT_CHECK(w > 0 && h > 0 && w <= INT_MAX && h <= INT_MAX, "corrupt ", format_name(f),
           " header: it gives a size of ", w, "x", h, "; the file is damaged: export it again");
}

bool is_jpeg_sof(uint8_t m) {
  // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
  return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
}

/// Skips to the next marker code at or after `pos`: junk before the 0xFF (which libjpeg also
/// tolerates) and fill bytes are passed over. Returns the position of the code, or `n`.
size_t next_jpeg_marker(const uint8_t* d, size_t n, size_t pos) {
  while (pos < n) {
    const void* ff = std::memchr(d + pos, 0xFF, n - pos);
    if (ff == nullptr) return n;
    pos = static_cast<size_t>(static_cast<const uint8_t*>(ff) - d);
    while (pos < n && d[pos] == 0xFF) ++pos;
    if (pos < n) return pos;
  }
  return n;
}

ImageInfo probe_jpeg(const uint8_t* d, size_t n) {
  size_t pos = 2;
  for (;;) {
    pos = next_jpeg_marker(d, n, pos);
    if (pos >= n) fail_truncated_header(Format::kJpeg, n);
    const uint8_t m = d[pos++];
    if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // markers without a length
    VT_CHECK(m != 0xD9 && m != 0xDA && m != 0xD8 && m != 0x00,
             "corrupt JPEG: ", (m == 0xDA ? "scan data" : "an unexpected marker"),
             " before the frame header (SOF); the file is damaged: export it again");
    if (n - pos < 2) fail_truncated_header(Format::kJpeg, n);
    const size_t len = be16(d + pos);
    VT_CHECK(len >= 2, "corrupt JPEG: a segment has length ", len,
             "; the file is damaged: export it again");
    if (is_jpeg_sof(m)) {
      // length(2) precision(1) height(2) width(2)
      if (n - pos < 7) fail_truncated_header(Format::kJpeg, n);
      VT_CHECK(len >= 8, "corrupt JPEG: frame header of ", len,
               " bytes; the file is damaged: export it again");
      const int64_t h = be16(d + pos + 3);
      const int64_t w = be16(d + pos + 5);
      VT_CHECK(h != 0, "JPEG leaves its height to a DNL marker, which the decoder does not "
                       "support; re-save the image with a standard encoder");
      check_size(Format::kJpeg, w, h);
      return {Format::kJpeg, w, h, n - pos >= 8 ? d[pos + 7] : 0};
    }
    pos += len;
  }
}

/// Whether an EOI marker follows the scans. libjpeg decodes a cut-off file without an error
/// and paints the missing rows grey, so this walk is where truncation is seen. Entropy-coded
/// data needs no parsing: inside it 0xFF is followed only by 0x00 (stuffing) or RSTn.
bool jpeg_has_eoi(const uint8_t* d, size_t n) {
  size_t pos = 2;
  for (;;) {
    pos = next_jpeg_marker(d, n, pos);
    if (pos >= n) return false;
    const uint8_t m = d[pos++];
    if (m == 0xD9) return true;
    if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) continue;
    if (n - pos < 2) return false;
    const size_t len = be16(d + pos);
    if (len < 2) return false;
    pos += len;
  }
}

ImageInfo probe_png(const uint8_t* d, size_t n) {
  if (n < 24) fail_truncated_header(Format::kPng, n);
  VT_CHECK(be32(d + 8) == 13 && std::memcmp(d + 12, "IHDR", 4) == 0,
           "corrupt PNG: the first chunk is not a 13-byte IHDR; the file is damaged: export it "
           "again");
  const int64_t w = be32(d + 16);
  const int64_t h = be32(d + 20);
  check_size(Format::kPng, w, h);
  return {Format::kPng, w, h};
}

ImageInfo probe_webp(const uint8_t* d, size_t n) {
  if (n < 20) fail_truncated_header(Format::kWebp, n);
  const uint8_t* chunk = d + 12;
  const uint8_t* payload = d + 20;
  const size_t avail = n - 20;
  int64_t w = 0;
  int64_t h = 0;
  if (std::memcmp(chunk, "VP8 ", 4) == 0) {
    // Lossy: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height.
    if (avail < 10) fail_truncated_header(Format::kWebp, n);
    VT_CHECK(payload[3] == 0x9D && payload[4] == 0x01 && payload[5] == 0x2A,
             "corrupt WebP: the VP8 start code is missing; the file is damaged: export it "
             "again");
    w = le16(payload + 6) & 0x3FFF;
    h = le16(payload + 8) & 0x3FFF;
  } else if (std::memcmp(chunk, "VP8L", 4) == 0) {
    // Lossless: signature 0x2f, then (width - 1) and (height - 1) in 14 bits each.
    if (avail < 5) fail_truncated_header(Format::kWebp, n);
    VT_CHECK(payload[0] == 0x2F, "corrupt WebP: bad VP8L signature; the file is damaged: "
                                 "export it again");
    const uint32_t bits = le32(payload + 1);
    w = int64_t{bits & 0x3FFF} + 1;
    h = int64_t{(bits >> 14) & 0x3FFF} + 1;
  } else if (std::memcmp(chunk, "VP8X", 4) == 0) {
    // Extended: flags(1) reserved(3) (canvas width - 1)(3) (canvas height - 1)(3).
    if (avail < 10) fail_truncated_header(Format::kWebp, n);
    w = int64_t{le24(payload + 4)} + 1;
    h = int64_t{le24(payload + 7)} + 1;
  } else {
    VT_FAIL("corrupt WebP: unknown first chunk '", std::string(chunk, chunk + 4),
            "' (expected VP8, VP8L or VP8X); the file is damaged: export it again");
  }
  check_size(Format::kWebp, w, h);
  return {Format::kWebp, w, h};
}

bool webp_is_animated(const uint8_t* d, size_t n) {
  return n >= 21 && std::memcmp(d + 12, "VP8X", 4) == 0 && (d[20] & 0x02) != 0;
}

ImageInfo probe_bmp(const uint8_t* d, size_t n) {
  const uint32_t header = le32(d + 14);
  int64_t w = 0;
  int64_t h = 0;
  if (header == 12) {
    if (n < 22) fail_truncated_header(Format::kBmp, n);
    w = le16(d + 18);
    h = le16(d + 20);
  } else {
    if (n < 26) fail_truncated_header(Format::kBmp, n);
    w = static_cast<int32_t>(le32(d + 18));
    h = static_cast<int32_t>(le32(d + 22));
    if (h < 0) h = -h;  // a negative height marks rows stored top-down
  }
  check_size(Format::kBmp, w, h);
  return {Format::kBmp, w, h};
}

ImageInfo probe_gif(const uint8_t* d, size_t n) {
  if (n < 10) fail_truncated_header(Format::kGif, n);
  const int64_t w = le16(d + 6);
  const int64_t h = le16(d + 8);
  check_size(Format::kGif, w, h);
  return {Format::kGif, w, h};
}

/// The value of a SHORT, LONG (or BigTIFF LONG8) tag in the first IFD of a TIFF structure,
/// which is also the layout of EXIF data. False when absent or malformed.
bool tiff_tag(const uint8_t* d, size_t n, uint16_t tag, uint64_t* value) {
  if (n < 8) return false;
  bool little;
  if (d[0] == 'I' && d[1] == 'I') {
    little = true;
  } else if (d[0] == 'M' && d[1] == 'M') {
    little = false;
  } else {
    return false;
  }
  const auto u16 = [&](size_t off) { return little ? le16(d + off) : be16(d + off); };
  const auto u32 = [&](size_t off) { return little ? le32(d + off) : be32(d + off); };
  const auto u64 = [&](size_t off) { return little ? le64(d + off) : be64(d + off); };
  const uint32_t magic = u16(2);
  if (magic != 42 && magic != 43) return false;
  const bool big = magic == 43;
  if (big && (n < 16 || u16(4) != 8)) return false;
  const uint64_t ifd = big ? u64(8) : u32(4);
  const size_t count_bytes = big ? 8 : 2;
  const size_t entry_bytes = big ? 20 : 12;
  if (ifd > n || n - ifd < count_bytes) return false;
  const uint64_t count = big ? u64(ifd) : u16(ifd);
  size_t pos = static_cast<size_t>(ifd) + count_bytes;
  for (uint64_t i = 0; i < count; ++i, pos += entry_bytes) {
    if (pos > n || n - pos < entry_bytes) return false;
    if (u16(pos) != tag) continue;
    const size_t at = pos + (big ? 12 : 8);  // single values are stored in the entry itself
    switch (u16(pos + 2)) {
      case 3:
        *value = u16(at);
        return true;
      case 4:
        *value = u32(at);
        return true;
      case 16:
        if (!big) return false;
        *value = u64(at);
        return true;
      default:
        return false;
    }
  }
  return false;
}

ImageInfo probe_tiff(const uint8_t* d, size_t n) {
  uint64_t w = 0;
  uint64_t h = 0;
  VT_CHECK(tiff_tag(d, n, 256, &w) && tiff_tag(d, n, 257, &h),
           "corrupt TIFF header: no image width and length in the first directory; the file "
           "is damaged or truncated: export it again");
  VT_CHECK(w <= INT_MAX && h <= INT_MAX, "corrupt TIFF header: it gives a size of ", w, "x", h,
           "; the file is damaged: export it again");
  check_size(Format::kTiff, static_cast<int64_t>(w), static_cast<int64_t>(h));
  return {Format::kTiff, static_cast<int64_t>(w), static_cast<int64_t>(h)};
}

ImageInfo probe_known(Format format, const uint8_t* d, size_t n) {
  switch (format) {
    case Format::kJpeg:
      return probe_jpeg(d, n);
    case Format::kPng:
      return probe_png(d, n);
    case Format::kWebp:
      return probe_webp(d, n);
    case Format::kBmp:
      return probe_bmp(d, n);
    case Format::kGif:
      return probe_gif(d, n);
    case Format::kTiff:
      return probe_tiff(d, n);
    case Format::kUnknown:
      break;
  }
  VT_DCHECK(false);
  return {};
}

/// EXIF orientation (1..8) from EXIF data (a TIFF structure, optionally behind the
/// "Exif\0\0" header that JPEG's APP1 uses and some writers copy). 1 when absent or invalid.
int exif_orientation(const uint8_t* p, size_t n) {
  if (has_prefix(p, n, "Exif\0\0", 6)) {
    p += 6;
    n -= 6;
  }
  uint64_t v = 1;
  if (!tiff_tag(p, n, 0x0112, &v) || v < 1 || v > 8) return 1;
  return static_cast<int>(v);
}

int png_orientation(const uint8_t* d, size_t n) {
  size_t pos = 8;
  while (pos <= n && n - pos >= 12) {
    const size_t len = be32(d + pos);
    const uint8_t* type = d + pos + 4;
    if (len > n - pos - 12) break;
    if (std::memcmp(type, "eXIf", 4) == 0) return exif_orientation(d + pos + 8, len);
    if (std::memcmp(type, "IEND", 4) == 0) break;
    pos += 12 + len;
  }
  return 1;
}

/// A grey PNG's transparent grey level (its tRNS chunk), scaled as the decoder expands
/// 1-, 2- and 4-bit samples to 8 bits; -1 when it has none. OpenCV keeps such a PNG one
/// channel without alpha, where palette and RGB colour keys become an alpha channel.
int png_grey_key(const uint8_t* d, size_t n) {
  if (n < 33 || std::memcmp(d + 12, "IHDR", 4) != 0 || d[25] != 0) return -1;  // grey only
  const int depth = d[24];
  size_t pos = 8;
  while (pos <= n && n - pos >= 12) {
    const size_t len = be32(d + pos);
    const uint8_t* type = d + pos + 4;
    if (len > n - pos - 12) break;
    if (std::memcmp(type, "tRNS", 4) == 0 && len >= 2) {
      const int key = (d[pos + 8] << 8) | d[pos + 9];
      if (depth >= 8) return key;
      const int top = (1 << depth) - 1;
      return key > top ? -1 : key * (255 / top);
    }
    if (std::memcmp(type, "IDAT", 4) == 0 || std::memcmp(type, "IEND", 4) == 0) break;
    pos += 12 + len;
  }
  return -1;
}

int webp_orientation(const uint8_t* d, size_t n) {
  size_t pos = 12;
  while (pos <= n && n - pos >= 8) {
    const size_t len = le32(d + pos + 4);
    if (len > n - pos - 8) break;
    if (std::memcmp(d + pos, "EXIF", 4) == 0) return exif_orientation(d + pos + 8, len);
    pos += 8 + len + (len & 1);  // chunks are padded to an even size
  }
  return 1;
}

cv::Mat apply_orientation(const cv::Mat& m, int orientation) {
  cv::Mat out;
  switch (orientation) {
    case 2:
      cv::flip(m, out, 1);
      break;
    case 3:
      cv::rotate(m, out, cv::ROTATE_180);
      break;
    case 4:
      cv::flip(m, out, 0);
      break;
    case 5:
      cv::transpose(m, out);
      break;
    case 6:
      cv::rotate(m, out, cv::ROTATE_90_CLOCKWISE);
      break;
    case 7:
      cv::transpose(m, out);
      cv::flip(out, out, -1);
      break;
    case 8:
      cv::rotate(m, out, cv::ROTATE_90_COUNTERCLOCKWISE);
      break;
    default:
      return m;
  }
  return out;
}

/// A JPEG's EXIF orientation (its first APP1 Exif segment before the first scan), 1 when
/// none: for the JPEGs decoded here rather than by OpenCV, which applies it itself.
int jpeg_orientation(const uint8_t* d, size_t n) {
  for (size_t pos = 2;;) {
    pos = next_jpeg_marker(d, n, pos);
    if (pos >= n) return 1;
    const uint8_t m = d[pos++];
    if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // markers without a length
    if (m == 0xDA || m == 0xD9 || n - pos < 2) return 1;
    const size_t len = be16(d + pos);
    if (len < 2 || len > n - pos) return 1;
    if (m == 0xE1 && has_prefix(d + pos + 2, len - 2, "Exif\0\0", 6)) {
      return exif_orientation(d + pos + 2, len - 2);
    }
    pos += len;
  }
}

struct JpegErrors {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void jpeg_error_exit(j_common_ptr c) {
  auto* e = reinterpret_cast<JpegErrors*>(c->err);
  (*c->err->format_message)(c, e->message);
  std::longjmp(e->jump, 1);
}

void jpeg_no_message(j_common_ptr, int) {}

/// A four-component (CMYK or YCCK) JPEG as RGB, converted as Pillow converts it (Adobe's
/// inverted CMYK read as such; R = (255 - K) - C (255 - K) / 255, rounded), so that its pixels
/// are PIL's and torchvision's: OpenCV divides by 256 and lands a level lower. `*rgb` comes
/// allocated at the frame's size; false with `message` on a libjpeg error. No object with a
/// destructor lives in this frame, which a libjpeg error leaves by longjmp, and nothing here
/// throws.
bool decode_four_component_jpeg(const uint8_t* data, size_t size, cv::Mat* rgb,
                                char* message) {
  jpeg_decompress_struct cinfo;
  JpegErrors errors;
  cinfo.err = jpeg_std_error(&errors.mgr);
  errors.mgr.error_exit = jpeg_error_exit;
  errors.mgr.emit_message = jpeg_no_message;  // warnings: the EOI check above covers cuts
  if (setjmp(errors.jump)) {
    std::memcpy(message, errors.message, JMSG_LENGTH_MAX);
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_CMYK;
  jpeg_start_decompress(&cinfo);
  const bool inverted = cinfo.saw_Adobe_marker;
  const int width = static_cast<int>(cinfo.output_width);
  if (static_cast<int>(cinfo.output_height) != rgb->rows || width != rgb->cols) {
    std::snprintf(message, JMSG_LENGTH_MAX, "its frame is %ux%u, its header said %dx%d",
                  cinfo.output_width, cinfo.output_height, rgb->cols, rgb->rows);
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  JSAMPARRAY row = (*cinfo.mem->alloc_sarray)(reinterpret_cast<j_common_ptr>(&cinfo),
                                              JPOOL_IMAGE, cinfo.output_width * 4, 1);
  // Pillow's MULDIV255: a * b / 255, rounded.
  const auto muldiv255 = [](int a, int b) {
    const int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
  };
  while (cinfo.output_scanline < cinfo.output_height) {
    uint8_t* out = rgb->ptr<uint8_t>(static_cast<int>(cinfo.output_scanline));
    jpeg_read_scanlines(&cinfo, row, 1);
    const uint8_t* in = row[0];
    for (int x = 0; x < width; ++x, in += 4, out += 3) {
      const int k = inverted ? 255 - in[3] : in[3];
      const int nk = 255 - k;
      for (int ch = 0; ch < 3; ++ch) {
        const int c = inverted ? 255 - in[ch] : in[ch];
        out[ch] = static_cast<uint8_t>(std::clamp(nk - muldiv255(c, nk), 0, 255));
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

/// One pass from what OpenCV returns (grey, grey + alpha, BGR or BGRA; 8 or 16 bits) to 8-bit
/// RGB with alpha flattened onto white. Integer arithmetic with a single rounding, so 16-bit
/// opaque pixels come out as round(v / 257) exactly.
template <typename T>
void to_rgb8(const cv::Mat& src, cv::Mat& dst) {
  constexpr int64_t kMax = std::numeric_limits<T>::max();
  constexpr int64_t kDen = kMax * (kMax / 255);  // alpha scale times the 16 -> 8 bit scale
  const auto out = [](int64_t c, int64_t a) {
    // (c * a + white * (max - a)) / max, then / (max / 255); kDen is odd, so no ties.
    return static_cast<uint8_t>((2 * (c * a + kMax * (kMax - a)) + kDen) / (2 * kDen));
  };
  const int cn = src.channels();
  for (int y = 0; y < src.rows; ++y) {
    const T* s = src.ptr<T>(y);
    uint8_t* o = dst.ptr<uint8_t>(y);
    for (int x = 0; x < src.cols; ++x, s += cn, o += 3) {
      int64_t r, g, b, a = kMax;
      if (cn <= 2) {
        r = g = b = s[0];
        if (cn == 2) a = s[1];
      } else {
        b = s[0];
        g = s[1];
        r = s[2];
        if (cn == 4) a = s[3];
      }
      o[0] = out(r, a);
      o[1] = out(g, a);
      o[2] = out(b, a);
    }
  }
}

cv::Mat to_rgb8(const cv::Mat& decoded) {
  const int cn = decoded.channels();
  VT_CHECK((decoded.depth() == CV_8U || decoded.depth() == CV_16U) && cn >= 1 && cn <= 4,
           "the decoder returned an unsupported pixel type (OpenCV type ", decoded.type(),
           "); convert the image to 8-bit RGB (for example as PNG or JPEG)");
  cv::Mat rgb;
  if (decoded.depth() == CV_8U && cn == 3) {
    cv::cvtColor(decoded, rgb, cv::COLOR_BGR2RGB);
  } else if (decoded.depth() == CV_8U && cn == 1) {
    cv::cvtColor(decoded, rgb, cv::COLOR_GRAY2RGB);
  } else {
    rgb.create(decoded.rows, decoded.cols, CV_8UC3);
    if (decoded.depth() == CV_8U) {
      to_rgb8<uint8_t>(decoded, rgb);
    } else {
      to_rgb8<uint16_t>(decoded, rgb);
    }
  }
  return rgb;
}

/// "2500 megapixels", "12.35 megapixels", "1200 pixels".
std::string pixel_count(int64_t pixels) {
  std::ostringstream os;
  if (pixels < 1000000) {
    os << pixels << " pixels";
    return os.str();
  }
  os << std::fixed << std::setprecision(2) << static_cast<double>(pixels) / 1e6;
  std::string s = os.str();
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s + " megapixels";
}

}  // namespace

const char* format_name(Format f) {
  switch (f) {
    case Format::kJpeg:
      return "JPEG";
    case Format::kPng:
      return "PNG";
    case Format::kWebp:
      return "WebP";
    case Format::kBmp:
      return "BMP";
    case Format::kGif:
      return "GIF";
    case Format::kTiff:
      return "TIFF";
    case Format::kUnknown:
      break;
  }
  return "unknown";
}

ImageInfo probe(const uint8_t* data, size_t size) {
  return probe_known(sniff_checked(data, size), data, size);
}

cv::Mat decode(const uint8_t* data, size_t size, const DecodeOptions& options) {
  const Format format = sniff_checked(data, size);
  VT_CHECK(is_supported(format), format_name(format), " images are not supported (supported: ",
           kSupported, "); convert the image, for example to PNG, first");
  const ImageInfo info = probe_known(format, data, size);
  const int64_t pixels = info.width * info.height;
  if (options.max_pixels > 0) {
    VT_CHECK(pixels <= options.max_pixels, "image is ", info.width, "x", info.height, " (",
             pixel_count(pixels), "), over the limit of ", pixel_count(options.max_pixels),
             "; downscale it (predict, index, serve, train, eval and pretrain take --max-pixels to "
             "raise the limit)");
  }
  VT_CHECK(format != Format::kWebp || !webp_is_animated(data, size),
           "animated WebP images are not supported; export one frame as a still image (WebP, "
           "PNG or JPEG)");
  VT_CHECK(format != Format::kJpeg || jpeg_has_eoi(data, size),
           "JPEG data is truncated: its ", size, " bytes end without an end-of-image marker "
           "after the last scan, so part of the picture is missing; fetch or export the file "
           "again");
  VT_CHECK(size <= static_cast<size_t>(INT_MAX), "image data is ", size,
           " bytes, more than the 2 GiB the decoders accept; downscale or recompress it");

  if (format == Format::kJpeg && info.components == 4) {  // CMYK or YCCK: as Pillow does
    VT_CHECK(pixels <= (int64_t{1} << 30), "cannot decode the CMYK JPEG image: at ",
             pixel_count(pixels), " it is over the limit of 2^30 pixels; downscale it");
    cv::Mat rgb(static_cast<int>(info.height), static_cast<int>(info.width), CV_8UC3);
    char message[JMSG_LENGTH_MAX] = {0};
    VT_CHECK(decode_four_component_jpeg(data, size, &rgb, message), "cannot decode the CMYK ",
             "JPEG image (", info.width, "x", info.height, "): ", message,
             "; the file may be damaged: export it again");
    return apply_orientation(rgb, jpeg_orientation(data, size));
  }
  // PNG and WebP carry alpha and 16-bit samples, which only IMREAD_UNCHANGED keeps; OpenCV
  // then skips EXIF orientation, so it is applied below. JPEG and BMP have no alpha we keep:
  // IMREAD_COLOR converts grey and CMYK and applies the JPEG's EXIF orientation.
  const bool unchanged = format == Format::kPng || format == Format::kWebp;
  const cv::Mat buffer(1, static_cast<int>(size), CV_8UC1, const_cast<uint8_t*>(data));
  cv::Mat decoded;
  try {
    decoded = cv::imdecode(buffer, unchanged ? cv::IMREAD_UNCHANGED : cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    VT_FAIL("cannot decode the ", format_name(format), " image (", info.width, "x",
            info.height, "): ", e.err, "; the file may be damaged: export it again");
  }
  if (decoded.empty()) {
    VT_CHECK(pixels <= (int64_t{1} << 30), "cannot decode the ", format_name(format),
             " image: at ", pixel_count(pixels), " it is over OpenCV's limit of "
             "2^30 pixels; downscale it (or raise OPENCV_IO_MAX_IMAGE_PIXELS)");
    VT_FAIL("cannot decode the ", format_name(format), " image (", info.width, "x",
            info.height, "): the data is corrupt or truncated, or uses a variant the decoder "
            "does not support; fetch it again or re-save it as baseline JPEG or PNG");
  }

  cv::Mat rgb = to_rgb8(decoded);
  if (format == Format::kPng && decoded.channels() == 1) {
    // Pixels of a grey PNG's transparent level are put on white, as alpha is.
    const int key = png_grey_key(data, size);
    if (key >= 0) rgb.setTo(cv::Scalar::all(255), decoded == key);
  }
  if (format == Format::kPng) rgb = apply_orientation(rgb, png_orientation(data, size));
  if (format == Format::kWebp) rgb = apply_orientation(rgb, webp_orientation(data, size));
  VT_DCHECK(rgb.type() == CV_8UC3 && rgb.isContinuous());
  return rgb;
}

namespace {

/// RGB (or grey) pixels encoded as `ext` (".png", ".jpg") with OpenCV's `params`.
std::vector<uint8_t> encode_as(const cv::Mat& rgb, const char* ext,
                               const std::vector<int>& params) {
  VT_CHECK(rgb.depth() == CV_8U && (rgb.channels() == 3 || rgb.channels() == 1),
           "encoding a photo takes 8-bit RGB or grey pixels");
  // A new buffer for BGR: a copy of the header would share, and swap, the caller's pixels.
  cv::Mat bgr;
  if (rgb.channels() == 3) {
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  } else {
    bgr = rgb;
  }
  std::vector<uint8_t> out;
  VT_CHECK(cv::imencode(ext, bgr, out, params), "could not encode a photo as ", ext);
  return out;
}

}  // namespace

std::vector<uint8_t> encode_png(const cv::Mat& rgb) { return encode_as(rgb, ".png", {}); }

std::vector<uint8_t> encode_jpeg(const cv::Mat& rgb, int quality) {
  VT_CHECK(quality >= 1 && quality <= 100, "JPEG quality must be 1 to 100, got ", quality);
  return encode_as(rgb, ".jpg", {cv::IMWRITE_JPEG_QUALITY, quality});
}

std::vector<uint8_t> read_file(const std::string& path) {
  namespace fs = std::filesystem;
  VT_CHECK(!path.empty(), "no image path given; pass the path of an image file");
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  VT_CHECK(!ec || ec == std::errc::no_such_file_or_directory, "cannot access image file '",
           path, "': ", ec.message(), "; check the path and its permissions");
  VT_CHECK(fs::exists(status), "'", path, "' does not exist; check the path");
  VT_CHECK(!fs::is_directory(status), "'", path,
           "' is a directory, not an image file; pass the path of an image file");

  std::FILE* raw = std::fopen(path.c_str(), "rb");
  VT_CHECK(raw != nullptr, "cannot open image file '", path, "': ", std::strerror(errno),
           "; check its permissions");
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(raw, &std::fclose);

  // One spare byte past the expected size sees the end of file without growing the buffer;
  // the loop still copes with files that change size or report none (pipes). Reading stops
  // past what the decoders take: a device such as /dev/zero, or a video named .jpg, would
  // otherwise fill the memory first.
  constexpr size_t kLimit = static_cast<size_t>(INT_MAX);
  const auto too_large = [&] {
    VT_FAIL("image file '", path, "' is more than the 2 GiB the decoders accept; downscale or "
            "recompress it (or leave it out if it is no photo)");
  };
  size_t expected = 0;
  if (fs::is_regular_file(status)) {
    const uintmax_t n = fs::file_size(path, ec);
    if (!ec) expected = static_cast<size_t>(n);
    if (!ec && n > kLimit) too_large();
  }
  std::vector<uint8_t> bytes(std::min(expected, kLimit) + 1);
  size_t used = 0;
  for (;;) {
    if (used == bytes.size()) {
      if (used > kLimit) too_large();
      bytes.resize(std::min(bytes.size() * 2, kLimit + 1));
    }
    const size_t got = std::fread(bytes.data() + used, 1, bytes.size() - used, file.get());
    used += got;
    if (got == 0) break;
  }
  VT_CHECK(!std::ferror(file.get()), "cannot read image file '", path, "': ",
           std::strerror(errno), "; check that the file is readable");
  bytes.resize(used);
  return bytes;
}

cv::Mat decode_file(const std::string& path, const DecodeOptions& options) {
  const std::vector<uint8_t> bytes = read_file(path);
  try {
    return decode(bytes.data(), bytes.size(), options);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what(), e.file(), e.line());
  }
}

}  // namespace vitrine::image
