#include "vitrine/search/json.h"

namespace vitrine::search {

nlohmann::json product_json(const Product& p) {
  nlohmann::json j{{"sku", p.sku},     {"title", p.title},   {"category", p.category},
                   {"brand", p.brand}, {"seller", p.seller}, {"price", nullptr},
                   {"attributes", nlohmann::json::parse(p.attributes, nullptr, false)}};
  if (p.price) j["price"] = *p.price;
  if (j["attributes"].is_discarded()) j["attributes"] = nlohmann::json::object();
  return j;
}

nlohmann::json hit_json(const Hit& h) {
  nlohmann::json j = product_json(h.product);
  j["score"] = h.score;
  j["image"] = h.image;
  return j;
}

nlohmann::json route_json(const Route& r) {
  nlohmann::json j{{"top", r.top ? nlohmann::json{{"category", r.top->label},
                                                  {"score", r.top->score}}
                                 : nlohmann::json()}};
  if (!r.categories.empty()) j["categories"] = r.categories;
  if (!r.fallback.empty()) j["fallback"] = r.fallback;
  return j;
}

}  // namespace vitrine::search
