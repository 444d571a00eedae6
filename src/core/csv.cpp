#include "vitrine/core/csv.h"

#include "vitrine/core/error.h"

#include <algorithm>

namespace vitrine {
namespace {

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return {};
  const size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

}  // namespace

std::string csv_field(const std::string& s) {
  const bool padded = !s.empty() && (s.front() == ' ' || s.front() == '\t' || s.back() == ' ' ||
                                     s.back() == '\t');
  if (!padded && s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::vector<CsvRecord> parse_csv(const std::string& text, const std::string& file) {
  std::vector<CsvRecord> records;
  const size_t n = text.size();
  size_t i = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
  int64_t line = 1;
  auto at_field_end = [&](size_t k) {
    return k >= n || text[k] == ',' || text[k] == '\n' || text[k] == '\r';
  };
  while (i < n) {
    CsvRecord record{line, {}};
    bool any_quoted = false;
    for (;;) {
      std::string field;
      size_t j = i;
      while (j < n && (text[j] == ' ' || text[j] == '\t')) ++j;
      if (j < n && text[j] == '"') {
        any_quoted = true;
        i = j + 1;
        for (;;) {
          VT_CHECK(i < n, file, ":", record.line,
                   ": a quoted field is not closed; end it with \" (and write \"\" for a quote "
                   "inside it)");
          const char c = text[i++];
          if (c == '"') {
            if (i < n && text[i] == '"') {
              field += '"';
              ++i;
              continue;
            }
            break;
          }
          if (c == '\n' || (c == '\r' && (i >= n || (text[i] != '\n' && text[i] != '\r')))) {
            ++line;  // as between records: \r\n, \r\r\n and a bare \r are one line each
          }
          field += c;
        }
        while (i < n && (text[i] == ' ' || text[i] == '\t')) ++i;
        VT_CHECK(at_field_end(i), file, ":", line,
                 ": text after a closing quote; quote the whole field and write \"\" for a quote "
                 "inside it");
      } else {
        while (!at_field_end(i)) field += text[i++];
        field = trim(field);
      }
      record.fields.push_back(std::move(field));
      if (i < n && text[i] == ',') {
        ++i;
        continue;
      }
      // \n, \r\n, a bare \r (old Mac files), and \r\r\n (a CRLF file converted once more):
      // each one line, as editors show them.
      int64_t crs = 0;
      while (i < n && text[i] == '\r') ++i, ++crs;
      if (i < n && text[i] == '\n') {
        ++i;
        crs = 1;
      }
      line += std::max<int64_t>(crs, 1);
      break;
    }
    // A blank line, or a row of empty cells (",,": what a spreadsheet writes for a cleared row).
    const bool blank = !any_quoted && std::all_of(record.fields.begin(), record.fields.end(),
                                                   [](const std::string& f) { return f.empty(); });
    if (!blank) records.push_back(std::move(record));
  }
  return records;
}

}  // namespace vitrine
