#include "vitrine/core/json.h"
#include "vitrine/search/catalog.h"

#include <algorithm>
#include <cctype>

namespace vitrine::search {

std::string sku_problem(const std::string& sku) {
  if (!valid_utf8(sku)) return "a SKU must be UTF-8 text";
  if (sku.find_first_not_of(" \t\r\n") == std::string::npos) {
    return "a SKU must not be empty or blank";
  }
  // Neither can be addressed in a URL: /v1/products/{sku} matches no line break, and
  // clients resolve "." and ".." as path segments.
  if (std::any_of(sku.begin(), sku.end(), [](unsigned char c) { return c < 0x20 || c == 0x7f; })) {
    return "a SKU must not hold control characters (tabs, line breaks)";
  }
  if (sku == "." || sku == "..") return "a SKU must not be '.' or '..' (a URL path segment)";
  if (sku.size() > kMaxSkuBytes) {
    return "a SKU may have at most " + std::to_string(kMaxSkuBytes) + " bytes";
  }
  // GET /v1/products/{sku}/images/{i} would read such a SKU as another's photo.
  const size_t images = sku.rfind("/images/");
  if (images != std::string::npos && images + 8 < sku.size() &&
      std::all_of(sku.begin() + static_cast<std::ptrdiff_t>(images + 8), sku.end(),
                  [](unsigned char c) { return std::isdigit(c); })) {
    return "a SKU must not end in /images/<number>: that is the path of a product's photo";
  }
  return {};
}

}  // namespace vitrine::search
