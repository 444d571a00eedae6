#include "vitrine/core/text.h"

#include "vitrine/core/json.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cstdint>

namespace vitrine {

size_t display_width(const std::string& s) {
  size_t width = 0;
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    const size_t len = b < 0x80          ? 1
                       : (b >> 5) == 6   ? 2
                       : (b >> 4) == 14  ? 3
                       : (b >> 3) == 30  ? 4
                                         : 1;
    uint32_t cp = len == 1 ? b : b & (0x7F >> len);
    bool valid = i + len <= s.size();
    for (size_t k = 1; valid && k < len; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      valid = (c & 0xC0) == 0x80;
      cp = (cp << 6) | (c & 0x3F);
    }
    if (!valid) {
      ++width;
      ++i;
      continue;
    }
    const bool wide = (cp >= 0x1100 && cp <= 0x115F) || (cp >= 0x2E80 && cp <= 0xA4CF) ||
                      (cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0xF900 && cp <= 0xFAFF) ||
                      (cp >= 0xFE30 && cp <= 0xFE4F) || (cp >= 0xFF00 && cp <= 0xFF60) ||
                      (cp >= 0xFFE0 && cp <= 0xFFE6) || (cp >= 0x1F300 && cp <= 0x1FAFF) ||
                      (cp >= 0x20000 && cp <= 0x3FFFD);
    width += wide ? 2 : 1;
    i += len;
  }
  return width;
}

std::string pad_right(const std::string& s, size_t width) {
  const size_t w = display_width(s);
  return w >= width ? s : s + std::string(width - w, ' ');
}

std::string nfc(const std::string& s) {
  // ASCII is its own NFC: most names never reach ICU.
  const auto ascii = [](char c) { return static_cast<unsigned char>(c) < 0x80; };
  if (std::all_of(s.begin(), s.end(), ascii)) return s;
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status) || normalizer == nullptr) return s;
  // Text that is not UTF-8 is left for the caller to report (ICU would put U+FFFD in).
  if (!valid_utf8(s)) return s;
  const icu::UnicodeString text = icu::UnicodeString::fromUTF8(s);
  if (text.isBogus()) return s;
  if (normalizer->isNormalized(text, status) && U_SUCCESS(status)) return s;
  status = U_ZERO_ERROR;
  const icu::UnicodeString composed = normalizer->normalize(text, status);
  if (U_FAILURE(status)) return s;
  std::string out;
  composed.toUTF8String(out);
  return out;
}

std::string windows1252_to_utf8(const std::string& s) {
  // 0x80-0x9F; 0 where Windows-1252 defines nothing (the Latin-1 control code is kept).
  static const uint16_t kHigh[32] = {
      0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
      0x2039, 0x0152, 0,      0x017D, 0,      0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
      0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0,      0x017E, 0x0178};
  std::string out;
  out.reserve(s.size() * 2);
  for (const char ch : s) {
    const auto b = static_cast<unsigned char>(ch);
    uint32_t c = b;
    if (b >= 0x80 && b < 0xA0 && kHigh[b - 0x80] != 0) c = kHigh[b - 0x80];
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (c < 0x800) {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
      out += static_cast<char>(0xE0 | (c >> 12));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

std::string utf8_prefix(const std::string& s, size_t max_bytes) {
  if (s.size() <= max_bytes) return s;
  size_t end = max_bytes;
  // Step back over continuation bytes (10xxxxxx) to the start of the character cut.
  while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
  return s.substr(0, end);
}

std::string quoted_list(const std::vector<std::string>& names, const std::string& quote,
                        size_t max_chars) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (out.size() > max_chars) {
      return out + ", ... (" + std::to_string(names.size() - i) + " more)";
    }
    const std::string& n = names[i];
    const std::string name = n.size() > max_chars ? utf8_prefix(n, max_chars) + "..." : n;
    out += (out.empty() ? "" : ", ") + quote + name + quote;
  }
  return out;
}

}  // namespace vitrine
