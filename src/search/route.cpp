#include "vitrine/search/route.h"

#include <cstdio>

namespace vitrine::search {

std::vector<Hit> routed_search(const std::function<std::vector<Hit>(const SearchOptions&)>& search,
                               const std::vector<ClassScore>& top, const SearchOptions& options,
                               const RouteOptions& route, Route* how) {
  Route r;
  if (!top.empty()) r.top = top.front();
  std::vector<Hit> hits;
  if (!top.empty() && top.front().score >= route.min_score) {
    Filter f{"category", "=", {}};
    double mass = 0;
    for (const auto& c : top) {  // the top category always
      f.values.push_back(c.label);
      mass += c.score;
      if (static_cast<int64_t>(f.values.size()) >= route.max_categories || mass >= route.mass) {
        break;
      }
    }
    SearchOptions routed = options;
    routed.filters.push_back(f);
    hits = search(routed);
    r.categories = f.values;
    if (static_cast<int64_t>(hits.size()) < options.k) {
      r.fallback = std::string(hits.empty() ? "no product of the catalogue has the predicted "
                                              "categories"
                                            : "the predicted categories hold fewer than k "
                                              "products") +
                   (options.filters.empty() ? "" : " that pass the filters");
      hits.clear();
    }
  } else {
    char unsure[96];
    std::snprintf(unsure, sizeof unsure,
                  "the head is unsure (its top probability %.3f is below %.3f)",
                  top.empty() ? 0.0 : static_cast<double>(top.front().score), route.min_score);
    r.fallback = top.empty() ? "the model has no classification head" : unsure;
  }
  if (hits.empty()) hits = search(options);
  if (how != nullptr) *how = std::move(r);
  return hits;
}

}  // namespace vitrine::search
