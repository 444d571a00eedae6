// Image decoding by content: format sniffing and header checks that run before any pixel
// is decoded, then OpenCV's codecs, then one normalisation pass to 8-bit RGB.
#pragma once

#include <opencv2/core.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace vitrine::image {

/// Container formats recognised from the first bytes. Only JPEG, PNG, WebP and BMP decode;
/// GIF and TIFF are recognised so that the error can name them.
enum class Format { kJpeg, kPng, kWebp, kBmp, kGif, kTiff, kUnknown };

/// "JPEG", "PNG", "WebP", "BMP", "GIF", "TIFF" or "unknown".
const char* format_name(Format f);

/// What the header says, before any decoding. `width` and `height` are as stored: a JPEG with
/// an EXIF rotation of 90 degrees decodes to `height` x `width`.
struct ImageInfo {
  Format format;
  int64_t width;
  int64_t height;
  int components = 0;  ///< JPEG: its frame's (1 grey, 3 YCbCr, 4 CMYK or YCCK); else 0
};

/// Format and dimensions read from the header alone (no pixel decoding): JPEG (walk the
/// markers to the SOFn), PNG (IHDR), WebP (VP8 / VP8L / VP8X), BMP, GIF (logical screen),
/// TIFF (first IFD). Throws vitrine::Error for an empty, too short, unknown or corrupt header.
ImageInfo probe(const uint8_t* data, size_t size);

/// Limits applied while decoding.
struct DecodeOptions {
  /// Refuse larger images (checked from the header, before any pixel memory is allocated);
  /// 0 or less disables this limit (OpenCV's own limit of 2^30 pixels still applies).
  int64_t max_pixels = 100'000'000;
};

/// Decodes to 8-bit RGB (CV_8UC3, RGB order, continuous). Decoding is by content, never by
/// file name. Applies EXIF orientation (JPEG APP1, PNG eXIf, WebP EXIF); flattens alpha onto
/// white (product cut-outs on a transparent background then look as shops show them);
/// grey -> RGB; 16-bit -> 8-bit (rounded, v/257); CMYK and YCCK JPEGs converted as Pillow
/// converts them (the same pixels). Embedded ICC profiles are ignored, as PIL/torchvision
/// ignore them. Truncated JPEGs (no EOI marker after the last scan) are refused rather than
/// silently decoded half-grey. GIF, TIFF, animated WebP and unknown data are refused with an
/// error naming the supported formats (JPEG, PNG, WebP, BMP). All failures throw
/// vitrine::Error.
cv::Mat decode(const uint8_t* data, size_t size, const DecodeOptions& options = {});

/// A decoded photo (RGB as decode() gives it, or one grey channel) as PNG bytes: how Vitrine
/// keeps a copy of a photo (no metadata, orientation applied). The same pixels always give
/// the same bytes, so a copy's hash can be found again from the original photo.
std::vector<uint8_t> encode_png(const cv::Mat& rgb);
/// The same as JPEG of `quality` (1-100), with no metadata.
std::vector<uint8_t> encode_jpeg(const cv::Mat& rgb, int quality);

/// The whole file; a clear error when it is missing, unreadable or a directory.
std::vector<uint8_t> read_file(const std::string& path);

/// read_file + decode; decoding errors are prefixed with the path.
cv::Mat decode_file(const std::string& path, const DecodeOptions& options = {});

}  // namespace vitrine::image
