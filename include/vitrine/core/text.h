// Text for messages.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace vitrine {

/// The first bytes of `s`, at most `max_bytes`, never cutting a UTF-8 character in two.
std::string utf8_prefix(const std::string& s, size_t max_bytes);

/// Columns `s` takes in a terminal: one per UTF-8 character, two for East Asian wide ones
/// (CJK, Hangul, full-width forms, emoji). A byte that starts no valid character counts one.
size_t display_width(const std::string& s);
/// `s` followed by spaces up to `width` display columns (as is when it is wider).
std::string pad_right(const std::string& s, size_t width);

/// `s` read as Windows-1252 (Latin-1 with printable 0x80-0x9F; what spreadsheets and older
/// systems write), in UTF-8. Bytes Windows-1252 leaves undefined keep their Latin-1 code.
std::string windows1252_to_utf8(const std::string& s);

/// `s` in Unicode normalisation form C (composed: "e" + U+0301 becomes "é"). Names that look
/// alike must compare alike: macOS writes file names decomposed (NFD), keyboards and most
/// files composed. Text that is not UTF-8 is returned as is.
std::string nfc(const std::string& s);

/// "'a', 'b', 'c'": the names in `quote` marks, joined for a message and cut with
/// ", ... (N more)" once the list passes `max_chars`, so a message naming thousands of items
/// stays readable. A single name longer than `max_chars` is cut too (at a UTF-8 character
/// boundary, ending in "...").
std::string quoted_list(const std::vector<std::string>& names, const std::string& quote = "'",
                        size_t max_chars = 200);

}  // namespace vitrine
