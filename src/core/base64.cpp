#include "vitrine/core/base64.h"

#include "vitrine/core/error.h"

namespace vitrine {

std::string base64_encode(const uint8_t* data, size_t size) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((size + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < size; i += 3) {
    const uint32_t v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i < size) {
    const uint32_t v = (data[i] << 16) | (i + 1 < size ? data[i + 1] << 8 : 0);
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < size ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

namespace {
std::string byte_hex(char c) {
  static const char* const kHex = "0123456789ABCDEF";
  const auto b = static_cast<unsigned char>(c);
  return std::string("0x") + kHex[b >> 4] + kHex[b & 15];
}
}  // namespace

std::vector<uint8_t> base64_decode(const std::string& text) {
  size_t start = 0;
  if (text.rfind("data:", 0) == 0) {
    const size_t comma = text.find(',');
    const std::string kind = ";base64";
    VT_CHECK(comma != std::string::npos && comma >= 5 + kind.size() &&
                 text.compare(comma - kind.size(), kind.size(), kind) == 0,
             "a data: URL must be base64 (data:image/png;base64,...)");
    start = comma + 1;
  }
  std::vector<uint8_t> out;
  out.reserve((text.size() - start) / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  bool padding = false;
  for (size_t i = start; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      padding = true;
      continue;
    }
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+' || c == '-') v = 62;
    else if (c == '/' || c == '_') v = 63;
    else if (c > ' ' && c < 127) VT_FAIL("not base64: character ", i, " is '", c, "'");
    else VT_FAIL("not base64: character ", i, " is the byte ", byte_hex(c));
    VT_CHECK(!padding, "not base64: data after the '=' padding at character ", i);
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>((acc >> bits) & 0xff));
    }
  }
  VT_CHECK(bits < 6, "not base64: the length is not a whole number of bytes");
  return out;
}

}  // namespace vitrine
