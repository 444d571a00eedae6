#include "vitrine/search/catalog_csv.h"

#include "vitrine/core/csv.h"
#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/json.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cmath>
#include <filesystem>
#include <map>

namespace vitrine::search {
namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

/// A catalogue cell as an attribute value: a number when the text is one in JSON's own
/// grammar ("42", "-3", "12.50", "0.1", "1e3"), so that filters compare it as a number
/// (size>=40, price<20); anything else stays the text it is: "007" and "+5" (codes, not
/// quantities), "4,5", " 42", and integers too long for 64 bits (long article numbers).
nlohmann::json cell_value(const std::string& text) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text.front())) ||
      std::isspace(static_cast<unsigned char>(text.back()))) {
    return text;
  }
  const auto value = nlohmann::json::parse(text, nullptr, false);
  if (value.is_number_integer() && !value.is_number_unsigned()) return value;
  if (value.is_number_unsigned()) {  // non-negative: stored signed when it fits
    const uint64_t u = value.get<uint64_t>();
    if (u <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(u);
    return text;
  }
  if (value.is_number_float() && std::isfinite(value.get<double>()) &&
      text.find_first_of(".eE") != std::string::npos) {
    return value;
  }
  return text;
}

}  // namespace

CatalogFile read_catalog_csv(const std::string& path) {
  VT_CHECK(fs::is_regular_file(path), "catalogue ", path,
           " does not exist; give a CSV file with a header row: sku,image,title,category,price,"
           "brand,seller,attributes");
  const auto records = parse_csv(read_text_file(path), path);
  VT_CHECK(!records.empty(), path, " is empty; it needs a header row (sku,image,...) and rows");
  std::map<std::string, size_t> column;
  const auto& header = records.front().fields;
  for (size_t c = 0; c < header.size(); ++c) {
    const std::string name = lower(header[c]);
    VT_CHECK(!name.empty(), path, ":1: column ", c + 1, " has no name in the header row");
    VT_CHECK(valid_utf8(name), path, ":1: column ", c + 1, "'s name is not UTF-8 text; save the "
             "catalogue as UTF-8");
    VT_CHECK(!column.count(name), path, ":1: column '", name, "' appears twice");
    column[name] = c;
  }
  const bool has_image = column.count("image") || column.count("images");
  VT_CHECK(column.count("sku") && has_image, path,
           ":1: the header row needs a 'sku' and an 'image' (or 'images') column; it has: ",
           [&] {
             std::string names;
             for (const auto& h : header) names += (names.empty() ? "" : ", ") + h;
             return names;
           }());
  static const char* const kKnown[] = {"sku",   "image", "images", "title",     "category",
                                       "price", "brand", "seller", "attributes"};
  const fs::path base = fs::absolute(path).parent_path();  // refs work from any folder
  CatalogFile out;
  std::map<std::string, int64_t> seen;  // sku -> line
  for (size_t r = 1; r < records.size(); ++r) {
    const auto& rec = records[r];
    const std::string where = path + ":" + std::to_string(rec.line) + ": ";
    std::string sku;  ///< once read, so a bad row's report names its product
    auto fail = [&](const std::string& what) {
      out.errors.push_back({rec.line, sku, where + what});
    };
    if (rec.fields.size() != header.size()) {
      fail("has " + std::to_string(rec.fields.size()) + " fields, the header has " +
           std::to_string(header.size()) + " (quote fields that contain commas)");
      continue;
    }
    // Text goes into JSON (attributes, the HTTP answers), which must be UTF-8: a file saved
    // as Latin-1 or Windows-1252 is refused row by row, naming the column.
    const auto bad_text = std::find_if(rec.fields.begin(), rec.fields.end(),
                                       [](const std::string& f) { return !valid_utf8(f); });
    if (bad_text != rec.fields.end()) {
      fail("column '" + header[bad_text - rec.fields.begin()] +
           "' is not UTF-8 text; save the catalogue as UTF-8");
      continue;
    }
    auto field = [&](const char* name) -> std::string {
      const auto it = column.find(name);
      return it == column.end() ? std::string() : rec.fields[it->second];
    };
    CatalogRow row;
    row.line = rec.line;
    Product& p = row.product;
    p.sku = field("sku");
    sku = p.sku;
    if (p.sku.empty()) {
      fail("the sku is empty");
      continue;
    }
    // The service's rules: a product stored here is one its API can name.
    if (const std::string problem = sku_problem(p.sku); !problem.empty()) {
      fail(problem);
      continue;
    }
    if (const auto it = seen.find(p.sku); it != seen.end()) {
      fail("SKU " + p.sku + " is already on line " + std::to_string(it->second) +
           " (each product once)");
      continue;
    }
    p.title = field("title");
    p.category = field("category");
    p.brand = field("brand");
    p.seller = field("seller");
    const std::string price = field("price");
    if (!price.empty()) {
      char* end = nullptr;
      const double v = std::strtod(price.c_str(), &end);
      if (end != price.c_str() + price.size() || !std::isfinite(v)) {
        fail("price '" + price + "' is not a number (write 12.50)");
        continue;
      }
      if (v < 0) {
        fail("price '" + price + "' is negative");
        continue;
      }
      p.price = v;
    }
    nlohmann::json attributes = nlohmann::json::object();
    const std::string attr_text = field("attributes");
    if (!attr_text.empty()) {
      try {
        attributes = parse_json(attr_text, "attributes");
      } catch (const Error&) {
        attributes = nullptr;
      }
      if (!attributes.is_object()) {
        fail("attributes must be a JSON object such as {\"colour\": \"red\"}");
        continue;
      }
    }
    for (const auto& [name, c] : column) {
      if (std::find(std::begin(kKnown), std::end(kKnown), name) != std::end(kKnown)) continue;
      if (!rec.fields[c].empty()) attributes[header[c]] = cell_value(rec.fields[c]);
    }
    p.attributes = attributes.dump();
    compose_text_fields(p);  // as stored: an unchanged row compares equal
    std::string images = field("images");
    if (images.empty()) images = field("image");
    size_t start = 0;
    while (start <= images.size()) {
      size_t end = images.find('|', start);
      if (end == std::string::npos) end = images.size();
      std::string ref = images.substr(start, end - start);
      ref.erase(0, ref.find_first_not_of(" \t"));
      ref.erase(ref.find_last_not_of(" \t") + 1);
      if (!ref.empty()) {
        const fs::path f(ref);
        const std::string image = f.is_absolute() ? ref : (base / f).lexically_normal().string();
        // A photo listed twice is one photo of the product.
        if (std::find(p.images.begin(), p.images.end(), image) == p.images.end()) {
          p.images.push_back(image);
        }
      }
      start = end + 1;
    }
    if (p.images.empty()) {
      fail("product " + p.sku + " lists no image");
      continue;
    }
    if (p.images.size() > kMaxImagesPerProduct) {
      fail("product " + p.sku + " lists " + std::to_string(p.images.size()) +
           " images; at most " + std::to_string(kMaxImagesPerProduct) + " a product");
      continue;
    }
    seen[p.sku] = rec.line;
    out.rows.push_back(std::move(row));
  }
  return out;
}

std::vector<QueryRow> read_query_csv(const std::string& path) {
  VT_CHECK(fs::is_regular_file(path), "queries ", path, " do not exist; give a CSV with a "
           "header row image,sku (or image,category), or a folder of <category>/ folders of "
           "photos");
  const auto records = parse_csv(read_text_file(path), path);
  VT_CHECK(records.size() >= 2, path, " has no query rows (header: image,sku or image,category)");
  std::map<std::string, size_t> column;
  for (size_t c = 0; c < records.front().fields.size(); ++c) {
    column[lower(records.front().fields[c])] = c;
  }
  VT_CHECK(column.count("image") && (column.count("sku") || column.count("category")), path,
           ":1: the header row needs an 'image' column and a 'sku' or 'category' column");
  const fs::path base = fs::absolute(path).parent_path();  // refs work from any folder
  std::vector<QueryRow> out;
  for (size_t r = 1; r < records.size(); ++r) {
    const auto& rec = records[r];
    VT_CHECK(rec.fields.size() == records.front().fields.size(), path, ":", rec.line, ": has ",
             rec.fields.size(), " fields, the header has ", records.front().fields.size());
    QueryRow q;
    q.line = rec.line;
    const fs::path image(rec.fields[column.at("image")]);
    VT_CHECK(!image.empty(), path, ":", rec.line, ": the image is empty");
    q.image = image.is_absolute() ? image.string() : (base / image).lexically_normal().string();
    if (column.count("sku")) {
      const std::string skus = rec.fields[column.at("sku")];
      size_t start = 0;
      while (start <= skus.size()) {
        size_t end = skus.find('|', start);
        if (end == std::string::npos) end = skus.size();
        std::string sku = skus.substr(start, end - start);
        if (!sku.empty()) q.skus.insert(sku);
        start = end + 1;
      }
    }
    if (q.skus.empty() && column.count("category")) q.category = rec.fields[column.at("category")];
    VT_CHECK(!q.skus.empty() || !q.category.empty(), path, ":", rec.line,
             ": names neither a relevant sku nor a category");
    out.push_back(std::move(q));
  }
  return out;
}

}  // namespace vitrine::search
