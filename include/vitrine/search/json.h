// Products and search hits as JSON, the same for the CLI's lines and the HTTP answers.
#pragma once

#include "vitrine/search/route.h"
#include "vitrine/search/search_db.h"

#include <nlohmann/json.hpp>

namespace vitrine::search {

/// sku, title, category, brand, seller, price (null when unknown) and attributes (an object;
/// empty when the stored text is not one). Not the image list.
nlohmann::json product_json(const Product& p);
/// product_json of the hit's product with its score and best-matching image.
nlohmann::json hit_json(const Hit& h);
/// How a routed search went: `top` ({category, score}, null without a head), `categories`
/// searched (when it routed), `fallback` (why the whole catalogue was searched).
nlohmann::json route_json(const Route& r);

}  // namespace vitrine::search
