// CSV as spreadsheets write it (RFC 4180), for manifests and catalogues.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vitrine {

struct CsvRecord {
  int64_t line;  ///< where the record starts (1-based)
  std::vector<std::string> fields;
};

/// RFC 4180 records: quoted fields may hold commas, doubled quotes and line breaks; unquoted
/// fields are trimmed of spaces; CRLF and a UTF-8 byte-order mark (as Excel writes) are
/// accepted; blank lines and rows of empty unquoted cells (a spreadsheet's cleared rows) are
/// skipped. Malformed quoting throws vitrine::Error naming `file` and the line.
std::vector<CsvRecord> parse_csv(const std::string& text, const std::string& file);

/// One field as parse_csv reads it back: quoted (inner quotes doubled) when it holds a comma,
/// a quote or a line break, or begins or ends with a space or tab (which unquoted fields lose).
std::string csv_field(const std::string& s);

}  // namespace vitrine
