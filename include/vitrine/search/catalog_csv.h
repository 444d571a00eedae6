// Product catalogues as CSV files (a header row, then one product per row):
//   sku (required), image or images (required; several separated by |, relative paths are
//   relative to the CSV file), title, category, price, brand, seller, attributes (a JSON
//   object); any other column becomes an attribute of that name.
#pragma once

#include "vitrine/search/catalog.h"

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace vitrine::search {

struct CatalogRow {
  int64_t line = 0;  ///< where the row starts in the file (1-based)
  Product product;   ///< product.images: the image paths, resolved
};

/// A row that could not be read.
struct CatalogError {
  int64_t line = 0;
  std::string sku;   ///< empty when the row's SKU could not be read
  std::string text;  ///< "file:line: what is wrong"
};

struct CatalogFile {
  std::vector<CatalogRow> rows;
  std::vector<CatalogError> errors;  ///< the rows skipped; the others are kept
};

/// Reads a catalogue CSV. A missing file, an unreadable header or one without sku and image
/// columns throws vitrine::Error; a bad row is reported in `errors` and skipped.
CatalogFile read_catalog_csv(const std::string& path);

/// A retrieval query with known answers.
struct QueryRow {
  int64_t line = 0;
  std::string image;             ///< resolved path
  std::set<std::string> skus;    ///< relevant SKUs (column sku, | for several), or
  std::string category;          ///< the relevant category (column category)
};

/// Reads a query CSV: an image column and a sku or a category column. Malformed rows throw
/// vitrine::Error with the line number (a query set must be complete to be measured).
std::vector<QueryRow> read_query_csv(const std::string& path);

}  // namespace vitrine::search
