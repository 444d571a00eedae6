// Routing a query by category: a classifier's head predicts the photo's category, and the
// search runs inside the likely categories when the head is sure enough (`vitrine search
// --route-by-category`, and `route_by_category` of the service's /v1/search).
#pragma once

#include "vitrine/search/embedder.h"
#include "vitrine/search/search_db.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace vitrine::search {

struct RouteOptions {
  double min_score = 0.5;  ///< route only when the top class's probability reaches this
  double mass = 0.9;       ///< take top classes until their probabilities add up to this
  int64_t max_categories = 3;
};

/// How a routed search went.
struct Route {
  std::optional<ClassScore> top;        ///< the head's best class (none for a backbone)
  std::vector<std::string> categories;  ///< searched inside these (the routed search)
  std::string fallback;                 ///< why the whole (filtered) catalogue was searched
};

/// The k best products of `options`, searched inside the categories `top` (a classifier's
/// best classes, best first) makes likely: the top one always, then more until their
/// probabilities reach `route.mass` or `route.max_categories`. When the top probability is
/// below `route.min_score`, or those categories hold fewer than k products passing the
/// filters, the whole (filtered) catalogue is searched and `how->fallback` says why.
/// `search` runs one search (the caller's database, under its locks).
std::vector<Hit> routed_search(const std::function<std::vector<Hit>(const SearchOptions&)>& search,
                               const std::vector<ClassScore>& top, const SearchOptions& options,
                               const RouteOptions& route, Route* how);

}  // namespace vitrine::search
