// The catalogue, the vector indexes and the search database that keeps them consistent.
#include "test_util.h"

#include "vitrine/core/fs.h"
#include "vitrine/search/catalog.h"
#include "vitrine/search/catalog_csv.h"
#include "vitrine/search/retrieval.h"
#include "vitrine/search/route.h"
#include "vitrine/search/search_db.h"
#include "vitrine/search/vector_index.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <sstream>

namespace vitrine::search {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kDim = 16;

const ModelStamp kModel{"test/model", "0123456789abcdef", kDim};

std::vector<float> unit_vector(std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> v(kDim);
  float norm = 0;
  for (auto& x : v) {
    x = normal(rng);
    norm += x * x;
  }
  for (auto& x : v) x /= std::sqrt(norm);
  return v;
}

const char* const kCategories[] = {"shoes", "bags", "hats"};

/// A new catalogue in `dir` that holds kModel's embeddings.
std::unique_ptr<Catalog> new_catalog(const std::string& dir) {
  auto catalog = open_sqlite_catalog(dir + "/c.sqlite");
  catalog->set_model(kModel);
  return catalog;
}

/// A product with `images` random embeddings; fields drawn from `rng`.
ProductUpdate random_product(const std::string& sku, int images, std::mt19937_64& rng) {
  ProductUpdate u;
  u.product.sku = sku;
  u.product.title = "title of " + sku;
  u.product.category = kCategories[rng() % 3];
  u.product.price = static_cast<double>(rng() % 200);
  u.product.brand = rng() % 2 ? "acme" : "zenith";
  u.product.seller = "seller" + std::to_string(rng() % 4);
  u.product.attributes = rng() % 2 ? R"({"colour": "red", "size": 42})" : R"({"colour": "blue"})";
  for (int i = 0; i < images; ++i) {
    const std::string ref = sku + "/" + std::to_string(i) + ".jpg";
    u.images.push_back({ref, "hash-" + std::to_string(rng()), unit_vector(rng)});
    u.product.images.push_back(ref);
  }
  return u;
}

/// Every image in the catalogue is in the index and nothing else is.
void expect_consistent(const SearchDb& db) {
  std::vector<int64_t> stored = db.catalog().image_ids({});
  std::vector<int64_t> indexed = db.index() ? db.index()->ids() : std::vector<int64_t>{};
  EXPECT_EQ(stored, indexed);
  EXPECT_EQ(db.index() ? db.index()->size() : 0, static_cast<int64_t>(stored.size()));
}

/// The exact top-k products for `query` among the images allowed by `filters`, by brute force
/// over the stored embeddings: each product scores its best image.
std::vector<std::pair<std::string, float>> brute_force(const SearchDb& db, const float* query,
                                                       const std::vector<Filter>& filters,
                                                       int64_t k) {
  const auto ids = db.catalog().image_ids(filters);
  const auto values = db.catalog().embeddings(ids);
  const auto records = db.catalog().images(ids);
  std::map<std::string, float> best;
  for (size_t i = 0; i < ids.size(); ++i) {
    float s = 0;
    for (int64_t d = 0; d < kDim; ++d) s += query[d] * values[i * kDim + d];
    auto [it, fresh] = best.emplace(records[i].product.sku, s);
    if (!fresh) it->second = std::max(it->second, s);
  }
  std::vector<std::pair<std::string, float>> out(best.begin(), best.end());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  if (static_cast<int64_t>(out.size()) > k) out.resize(static_cast<size_t>(k));
  return out;
}

void expect_same_hits(const std::vector<Hit>& got,
                      const std::vector<std::pair<std::string, float>>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i].score, want[i].second, 1e-5) << "rank " << i;
    // Equal scores may swap places; the scores decide.
    if (std::abs(got[i].score - want[i].second) < 1e-6f && got[i].product.sku != want[i].first) {
      continue;
    }
    EXPECT_EQ(got[i].product.sku, want[i].first) << "rank " << i;
  }
}

TEST(SearchFilter, ParsesTheDocumentedForms) {
  auto f = parse_filter("category=shoes|boots");
  EXPECT_EQ(f.field, "category");
  EXPECT_EQ(f.op, "=");
  EXPECT_EQ(f.values, (std::vector<std::string>{"shoes", "boots"}));
  f = parse_filter("price<=100");
  EXPECT_EQ(f.op, "<=");
  EXPECT_EQ(f.values.at(0), "100");
  EXPECT_EQ(parse_filter("brand!=acme").op, "!=");
  EXPECT_EQ(parse_filter("attributes.colour=red").field, "attributes.colour");
  EXPECT_EQ(parse_filter("price>2.5").op, ">");
  EXPECT_CONTAINS(test::error_of([] { parse_filter("colour=red"); }), "unknown field 'colour'");
  std::string many = "category=c0";
  for (size_t i = 1; i <= kMaxFilterValues; ++i) many += "|c" + std::to_string(i);
  EXPECT_CONTAINS(test::error_of([&] { parse_filter(many); }), "at most 1000 values");
  EXPECT_EQ(parse_filters(std::vector<std::string>(16, "price>1")).size(), 16u);
  EXPECT_CONTAINS(test::error_of([&] { parse_filters(std::vector<std::string>(17, "price>1")); }),
                  "at most 16 filters a query, got 17");
  // No price is nan or infinite (the catalogue CSV refuses them too).
  for (const std::string value : {"nan", "inf", "1e999"}) {
    EXPECT_CONTAINS(test::error_of([&] { parse_filter("price<=" + value); }), "is not one");
  }
  EXPECT_CONTAINS(test::error_of([] { parse_filter("attributes.a\\b=x"); }), "cannot be filtered");
  EXPECT_CONTAINS(test::error_of([] { parse_filter("attributes.a\"b=x"); }), "cannot be filtered");
  EXPECT_CONTAINS(test::error_of([] { parse_filter("price<=cheap"); }), "not one");
  EXPECT_CONTAINS(test::error_of([] { parse_filter("category"); }), "forms:");
  EXPECT_CONTAINS(test::error_of([] { parse_filter("=shoes"); }), "bad filter");
  // A text field under a numeric comparison would match nothing, silently.
  EXPECT_CONTAINS(test::error_of([] { parse_filter("category<5"); }), "category is text");
  EXPECT_EQ(parse_filter("attributes.size>=40").op, ">=");
}

TEST(SearchCatalog, FiltersSelectTheRightImages) {
  const auto dir = test::temp_dir("search_filters");
  auto catalog = new_catalog(dir);
  std::mt19937_64 rng(1);
  std::vector<ProductUpdate> batch;
  for (int i = 0; i < 60; ++i) batch.push_back(random_product("p" + std::to_string(i), 1 + i % 2, rng));
  batch[0].product.price.reset();  // a product without a price
  catalog->upsert(batch);
  auto expect_count = [&](const std::vector<std::string>& texts, auto&& keep) {
    std::vector<Filter> filters;
    for (const auto& t : texts) filters.push_back(parse_filter(t));
    int64_t want = 0;
    for (const auto& u : batch) want += keep(u.product) ? static_cast<int64_t>(u.images.size()) : 0;
    EXPECT_EQ(static_cast<int64_t>(catalog->image_ids(filters).size()), want) << texts.at(0);
  };
  expect_count({"category=shoes"}, [](const Product& p) { return p.category == "shoes"; });
  expect_count({"category=shoes|hats"}, [](const Product& p) { return p.category != "bags"; });
  expect_count({"category!=shoes"}, [](const Product& p) { return p.category != "shoes"; });
  expect_count({"price<=50"}, [](const Product& p) { return p.price && *p.price <= 50; });
  expect_count({"price>150", "brand=acme"},
               [](const Product& p) { return p.price && *p.price > 150 && p.brand == "acme"; });
  expect_count({"attributes.colour=red"},
               [](const Product& p) { return p.attributes.find("red") != std::string::npos; });
  expect_count({"attributes.size>=42"},
               [](const Product& p) { return p.attributes.find("42") != std::string::npos; });
  expect_count({"attributes.colour!=red"},
               [](const Product& p) { return p.attributes.find("red") == std::string::npos; });
  EXPECT_EQ(catalog->product_count_where({parse_filter("category=bags")}),
            std::count_if(batch.begin(), batch.end(),
                          [](const ProductUpdate& u) { return u.product.category == "bags"; }));
  // Numbers and text in one attribute: ranges compare numbers only; = matches a value as
  // the number it reads as and as the text it is, or as text alone in double quotes.
  batch.clear();
  for (const char* size : {R"("007")", "7", "42", R"("XL")"}) {
    batch.push_back(random_product(std::string("size") + size, 1, rng));
    batch.back().product.attributes = std::string(R"({"size": )") + size + "}";
  }
  catalog->upsert(batch);
  auto skus = [&](const std::string& text) {
    std::set<std::string> out;
    for (const auto& r : catalog->images(catalog->image_ids({parse_filter(text)}))) {
      if (r.product.sku.rfind("size", 0) == 0) out.insert(r.product.sku);  // these four only
    }
    return out;
  };
  using Set = std::set<std::string>;
  EXPECT_EQ(skus("attributes.size>=40"), Set{"size42"});
  EXPECT_EQ(skus("attributes.size<10"), Set{"size7"});
  EXPECT_EQ(skus("attributes.size=007"), (Set{"size\"007\"", "size7"}));
  EXPECT_EQ(skus("attributes.size=\"007\""), Set{"size\"007\""});
  EXPECT_EQ(skus("attributes.size=XL|42"), (Set{"size\"XL\"", "size42"}));

  // Filters passing nothing say which one and why.
  auto explain = [&](const std::vector<std::string>& texts) {
    return explain_empty_filters(*catalog, parse_filters(texts));
  };
  EXPECT_TRUE(explain({"category=shoes", "attributes.size>=40"}).empty());
  EXPECT_TRUE(catalog->has_attribute("size"));
  EXPECT_FALSE(catalog->has_attribute("sise"));
  auto lines = explain({"category=shoes", "attributes.sise=42"});
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_CONTAINS(lines[0], "'attributes.sise=42' passes no product");
  EXPECT_CONTAINS(lines[0], "no product has the attribute 'sise'");
  lines = explain({"category=Shoes|Hats"});
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_CONTAINS(lines[0], "'category=Shoes|Hats' passes no product");
  EXPECT_CONTAINS(lines[0], "upper and lower case");
  lines = explain({"attributes.size=XL", "attributes.size>=40"});  // each passes one product
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_CONTAINS(lines[0], "no product passes all 2 together");

  // Text that looks alike compares alike: stored decomposed (a Mac's export), found composed,
  // and the other way round.
  batch.clear();
  batch.push_back(random_product("nfd", 1, rng));
  batch.back().product.category = "cre\xcc\x80me";                   // NFD
  batch.back().product.attributes = R"({"colour": "ros\u00e9"})";     // NFC
  catalog->upsert(batch);
  EXPECT_EQ(catalog->product_count_where({parse_filter("category=cr\xc3\xa8me")}), 1);
  EXPECT_EQ(catalog->product_count_where({parse_filter("category=cre\xcc\x80me")}), 1);
  EXPECT_EQ(catalog->product_count_where({parse_filter("attributes.colour=rose\xcc\x81")}), 1);
  EXPECT_EQ(catalog->find("nfd")->category, "cr\xc3\xa8me");
}

TEST(SearchCatalog, RefusesAnotherModelsEmbeddings) {
  const auto dir = test::temp_dir("search_model");
  auto catalog = new_catalog(dir);
  std::mt19937_64 rng(2);
  catalog->upsert({random_product("a", 1, rng)});
  ModelStamp other = kModel;
  other.version = "fedcba9876543210";
  EXPECT_CONTAINS(test::error_of([&] { catalog->set_model(other); }), "never mixes models");
  // A wrong-width embedding is refused and the batch stored nothing.
  auto bad = random_product("b", 1, rng);
  bad.images[0].embedding.resize(kDim + 1);
  EXPECT_CONTAINS(test::error_of([&] { catalog->upsert({random_product("c", 1, rng), bad}); }),
                  "embedding of 17 values");
  EXPECT_FALSE(catalog->find("c").has_value());
  EXPECT_EQ(catalog->product_count(), 1);
}

TEST(SearchCatalog, EmbeddingsOfImagesNoLongerStored) {
  const auto dir = test::temp_dir("search_embeddings");
  auto catalog = new_catalog(dir);
  std::mt19937_64 rng(3);
  catalog->upsert({random_product("a", 2, rng)});
  const std::vector<int64_t> stored = catalog->image_ids({});
  ASSERT_EQ(stored.size(), 2u);
  EXPECT_EQ(catalog->embeddings(stored).size(), 2u * kDim);
  EXPECT_CONTAINS(test::error_of([&] { catalog->embeddings({stored[0], 999999, stored[1]}); }),
                  "image 999999 is not stored");
  std::vector<int64_t> ids{999999, stored[1], stored[0]};
  const auto values = catalog->stored_embeddings(ids);
  EXPECT_EQ(ids, (std::vector<int64_t>{stored[1], stored[0]}));
  EXPECT_EQ(values, catalog->embeddings({stored[1], stored[0]}));
}

TEST(SearchCatalog, NewDetailsKeepTheImagesAndLogNoChange) {
  const auto dir = test::temp_dir("search_details");
  auto catalog = new_catalog(dir);
  std::mt19937_64 rng(4);
  catalog->upsert({random_product("a", 2, rng)});
  const auto ids = catalog->image_ids({});
  const auto embeddings = catalog->embeddings(ids);
  const int64_t changes = catalog->last_change();
  const std::vector<std::string> images = catalog->find("a")->images;
  const auto changed = catalog->update_details("a", [](Product& p) {
    p.price = 12.5;
    p.title = "Cre\u0300me";  // stored composed, as upsert stores it
    p.attributes = R"({"colour": "red"})";
  });
  ASSERT_TRUE(changed.has_value());
  EXPECT_EQ(changed->title, "Cr\u00e8me");
  const Product got = *catalog->find("a");
  EXPECT_EQ(got.price, 12.5);
  EXPECT_EQ(got.title, "Cr\u00e8me");
  EXPECT_EQ(got.images, images);
  EXPECT_EQ(changed->images, images);
  EXPECT_EQ(catalog->image_ids({parse_filter("attributes.colour=red")}), ids);
  EXPECT_EQ(catalog->embeddings(ids), embeddings);
  EXPECT_EQ(catalog->last_change(), changes) << "the index would re-add unchanged images";
  bool called = false;
  EXPECT_FALSE(catalog->update_details("b", [&](Product&) { called = true; }).has_value());
  EXPECT_FALSE(called);
  EXPECT_FALSE(catalog->find("b").has_value());
  // A change refused, or one that throws, leaves the product as it was.
  EXPECT_CONTAINS(test::error_of([&] {
                    catalog->update_details("a", [](Product& p) { p.attributes = "[1]"; });
                  }),
                  "JSON object");
  EXPECT_THROW(catalog->update_details("a",
                                       [](Product& p) {
                                         p.price = 1;
                                         throw Error("no", __FILE__, __LINE__);
                                       }),
               Error);
  EXPECT_EQ(catalog->find("a")->attributes, got.attributes);
  EXPECT_EQ(catalog->find("a")->price, 12.5);
  // The catalogue is usable after them (no transaction left open).
  EXPECT_TRUE(catalog->update_details("a", [](Product& p) { p.brand = "acme"; }).has_value());
  EXPECT_EQ(catalog->find("a")->brand, "acme");
}

TEST(SearchRoute, SearchesTheLikelyCategoriesOrFallsBackSayingWhy) {
  // A catalogue of 4 "shoes" and 1 "bags" (one hit each), searched through a fake.
  std::vector<SearchOptions> asked;
  const auto search = [&asked](const SearchOptions& o) {
    asked.push_back(o);
    int64_t n = 5;
    for (const auto& f : o.filters) {
      if (f.field != "category") continue;
      n = 0;
      for (const auto& v : f.values) n += v == "shoes" ? 4 : v == "bags" ? 1 : 0;
    }
    return std::vector<Hit>(static_cast<size_t>(std::min<int64_t>(n, o.k)));
  };
  SearchOptions o;
  o.k = 3;
  o.filters = {parse_filter("price<=100")};
  const std::vector<ClassScore> sure = {{"shoes", 0.7f}, {"bags", 0.25f}, {"hats", 0.05f}};
  Route how;
  EXPECT_EQ(routed_search(search, sure, o, {0.5, 0.9, 3}, &how).size(), 3u);
  EXPECT_EQ(how.categories, (std::vector<std::string>{"shoes", "bags"}));  // 0.95 >= 0.9
  EXPECT_TRUE(how.fallback.empty());
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0].filters.size(), 2u) << "the caller's filters are kept";
  // At most max_categories; a probability mass of 0 still takes the top one.
  routed_search(search, sure, o, {0.5, 0.0, 3}, &how);
  EXPECT_EQ(how.categories, (std::vector<std::string>{"shoes"}));
  // Too few products in the predicted categories: the whole (filtered) catalogue.
  asked.clear();
  const std::vector<ClassScore> bags = {{"bags", 0.95f}, {"shoes", 0.05f}};
  EXPECT_EQ(routed_search(search, bags, o, {0.5, 0.9, 3}, &how).size(), 3u);
  EXPECT_EQ(how.categories, (std::vector<std::string>{"bags"}));
  EXPECT_NE(how.fallback.find("fewer than k products that pass the filters"), std::string::npos)
      << how.fallback;
  ASSERT_EQ(asked.size(), 2u);
  EXPECT_EQ(asked[1].filters.size(), 1u);
  // Unsure, or no head at all: never routed.
  routed_search(search, {{"shoes", 0.4f}}, o, {0.5, 0.9, 3}, &how);
  EXPECT_TRUE(how.categories.empty());
  EXPECT_NE(how.fallback.find("0.400 is below 0.500"), std::string::npos) << how.fallback;
  routed_search(search, {}, o, {}, &how);
  EXPECT_FALSE(how.top.has_value());
  EXPECT_EQ(how.fallback, "the model has no classification head");
}

TEST(SearchCatalog, RejectsAFileThatIsNotACatalogue) {
  const auto dir = test::temp_dir("search_notdb");
  write_file_atomic(dir + "/c.sqlite", std::string(4096, 'x'));
  EXPECT_CONTAINS(test::error_of([&] { open_sqlite_catalog(dir + "/c.sqlite"); }),
                  "cannot use");
}

TEST(SearchDb, TheIndexKeepsItsBuildSettingsForLaterCommands) {
  const auto dir = test::temp_dir("search_build_settings");
  std::mt19937_64 rng(4);
  IndexOptions options;
  options.kind = "hnsw";
  options.hnsw_m = 8;
  options.hnsw_ef_construction = 200;
  {
    auto db = SearchDb::open(dir, options);
    db->use_model(kModel);
    db->upsert({random_product("a", 1, rng)});
    db->save();
  }
  // A later command with default settings (vitrine remove, index without --hnsw-m) saves
  // the index with the settings it was built with.
  {
    auto db = SearchDb::open(dir, {});
    db->upsert({random_product("b", 1, rng)});
    db->save();
  }
  const std::string file = read_text_file(SearchDb::open(dir, {})->index_path());
  EXPECT_NE(file.find("\"hnsw_m\":8"), std::string::npos) << file.substr(0, 400);
  {
    auto db = SearchDb::open(dir, {});
    EXPECT_FALSE(db->open_report().rebuilt) << db->open_report().why;
  }
  // --hnsw-m 32 named on the command line is asked for, though 32 is the default: the
  // index built with 8 is rebuilt with it.
  IndexOptions asked;
  asked.given = {"hnsw_m"};
  {
    auto db = SearchDb::open(dir, asked);
    EXPECT_TRUE(db->open_report().rebuilt);
    EXPECT_CONTAINS(db->open_report().why, "built with --hnsw-m 8, 32 is asked for");
    db->save();
  }
  const std::string rebuilt = read_text_file(SearchDb::open(dir, {})->index_path());
  EXPECT_NE(rebuilt.find("\"hnsw_m\":32"), std::string::npos) << rebuilt.substr(0, 400);
  // The settings not asked for are the file's own through the rebuild.
  EXPECT_NE(rebuilt.find("\"hnsw_ef_construction\":200"), std::string::npos)
      << rebuilt.substr(0, 400);
  // Asking for what the index already has rebuilds nothing.
  EXPECT_FALSE(SearchDb::open(dir, asked)->open_report().rebuilt);
  EXPECT_EQ(SearchDb::open(dir, {})->index()->built_with("hnsw_m"), 32);
  EXPECT_EQ(SearchDb::open(dir, {})->index()->built_with("hnsw_ef_construction"), 200);
  // Another kind asked for is the reason given, whatever else is asked.
  IndexOptions flat;
  flat.kind = "flat";
  flat.hnsw_m = 8;
  EXPECT_CONTAINS(SearchDb::open(dir, flat)->open_report().why,
                  "a flat index is asked for, the file holds hnsw");
}

TEST(SearchDb, AnAutoSettingAskedForByItsValueKeepsTheIndex) {
  const auto dir = test::temp_dir("search_auto_settings");
  std::mt19937_64 rng(5);
  IndexOptions ivfpq;
  ivfpq.kind = "ivfpq";
  int64_t lists = 0, m = 0;
  {
    auto db = SearchDb::open(dir, ivfpq);
    db->use_model(kModel);
    std::vector<ProductUpdate> batch;
    for (int i = 0; i < 1200; ++i) batch.push_back(random_product("p" + std::to_string(i), 1, rng));
    db->upsert(batch);
    db->save();
    ASSERT_EQ(db->index()->kind(), "ivfpq");
    lists = db->index()->built_with("ivf_lists");
    m = db->index()->built_with("pq_m");
  }
  ASSERT_GT(lists, 0);
  ASSERT_GT(m, 0);
  EXPECT_EQ(default_ivf_lists(1200, 1200), lists);
  // The header records "auto" (0); the values auto came to, asked for explicitly, are what
  // the index has: nothing is rebuilt.
  IndexOptions same = ivfpq;
  same.ivf_lists = lists;
  same.pq_m = static_cast<int>(m);
  same.given = {"ivf_lists", "pq_m"};
  {
    auto db = SearchDb::open(dir, same);
    EXPECT_FALSE(db->open_report().rebuilt) << db->open_report().why;
  }
  // Explicit "auto" matches an index built with auto.
  IndexOptions automatic = ivfpq;
  automatic.given = {"ivf_lists", "pq_m"};
  EXPECT_FALSE(SearchDb::open(dir, automatic)->open_report().rebuilt);
  // Another value names the one the index really has.
  IndexOptions other = ivfpq;
  other.ivf_lists = lists - 1;
  const auto db = SearchDb::open(dir, other);
  EXPECT_TRUE(db->open_report().rebuilt);
  EXPECT_CONTAINS(db->open_report().why, "built with --ivf-lists " + std::to_string(lists) +
                                             ", " + std::to_string(lists - 1) + " is asked for");
  EXPECT_EQ(db->index()->built_with("ivf_lists"), lists - 1);
  EXPECT_EQ(db->index()->built_with("hnsw_m"), -1);
}

/// Random sequences of adds, updates (fields and images) and removals, with saves, restarts
/// (with or without the index file saved) and an index file lost, against a model of what
/// the catalogue must hold. Index and catalogue must agree after every step.
void run_property_test(const std::string& kind, uint64_t seed) {
  const auto dir = test::temp_dir("search_property_" + kind);
  IndexOptions options;
  options.kind = kind;
  std::mt19937_64 rng(seed);
  std::map<std::string, ProductUpdate> expected;
  // IVF-PQ learns from the data: it starts flat and becomes IVF-PQ when saved with enough
  // images.
  {
    auto db = SearchDb::open(dir, options);
    db->use_model(kModel);
    if (kind == "ivfpq") {
      std::vector<ProductUpdate> seed_batch;
      for (int i = 0; i < 1200; ++i) {
        seed_batch.push_back(random_product("seed" + std::to_string(i), 1, rng));
        expected[seed_batch.back().product.sku] = seed_batch.back();
      }
      db->upsert(seed_batch);
      EXPECT_EQ(db->index()->kind(), "flat");
      db->save();
    }
  }
  auto db = SearchDb::open(dir, options);
  ASSERT_TRUE(db->index());
  EXPECT_EQ(db->index()->kind(), kind);
  for (int step = 0; step < 120; ++step) {
    const int action = static_cast<int>(rng() % 10);
    if (action < 4 || expected.empty()) {  // add a few products
      std::vector<ProductUpdate> batch;
      for (int i = 0, n = 1 + static_cast<int>(rng() % 4); i < n; ++i) {
        const std::string sku = "p" + std::to_string(rng() % 100000);
        if (expected.count(sku)) continue;
        batch.push_back(random_product(sku, 1 + static_cast<int>(rng() % 3), rng));
        expected[sku] = batch.back();
      }
      db->upsert(batch);
    } else if (action < 6) {  // update: new fields, one image kept, one replaced, one added
      auto it = std::next(expected.begin(), static_cast<std::ptrdiff_t>(rng() % expected.size()));
      ProductUpdate u = random_product(it->first, 2, rng);
      u.images[0] = it->second.images[0];
      u.product.images[0] = u.images[0].ref;
      db->upsert({u});
      it->second = u;
    } else if (action < 8) {  // remove, sometimes with an unknown SKU beside
      auto it = std::next(expected.begin(), static_cast<std::ptrdiff_t>(rng() % expected.size()));
      const auto unknown = db->remove({it->first, "no-such-sku"});
      EXPECT_EQ(unknown, std::vector<std::string>{"no-such-sku"});
      expected.erase(it);
    } else if (action == 8) {  // save, then restart
      db->save();
      db.reset();
      db = SearchDb::open(dir, options);
      EXPECT_FALSE(db->open_report().rebuilt) << db->open_report().why;
    } else {  // crash: restart without saving; sometimes the index file is lost too
      db.reset();
      if (rng() % 3 == 0) fs::remove(dir + "/vectors.index");
      db = SearchDb::open(dir, options);
    }
    ASSERT_NO_FATAL_FAILURE(expect_consistent(*db)) << "step " << step;
    ASSERT_EQ(db->catalog().product_count(), static_cast<int64_t>(expected.size()));
  }
  for (const auto& [sku, u] : expected) {
    const auto p = db->catalog().find(sku);
    ASSERT_TRUE(p.has_value()) << sku;
    EXPECT_EQ(p->title, u.product.title);
    EXPECT_EQ(p->images, u.product.images);
    EXPECT_EQ(nlohmann::json::parse(p->attributes), nlohmann::json::parse(u.product.attributes));
  }
  // A removed product's images never come back, whatever the query.
  std::mt19937_64 qrng(seed + 1);
  for (int q = 0; q < 20; ++q) {
    const auto query = unit_vector(qrng);
    SearchOptions so;
    so.k = 20;
    const auto hits = db->search(query.data(), 1, so);
    for (const auto& hit : hits[0]) {
      EXPECT_TRUE(expected.count(hit.product.sku)) << hit.product.sku << " was removed";
    }
  }
}

TEST(SearchDb, RandomAddUpdateRemoveKeepsCatalogueAndIndexConsistentFlat) {
  run_property_test("flat", 11);
}
TEST(SearchDb, RandomAddUpdateRemoveKeepsCatalogueAndIndexConsistentHnsw) {
  run_property_test("hnsw", 12);
}
TEST(SearchDb, RandomAddUpdateRemoveKeepsCatalogueAndIndexConsistentIvfPq) {
  run_property_test("ivfpq", 13);
}

std::unique_ptr<SearchDb> filled_db(const std::string& dir, const IndexOptions& options,
                                    int products, uint64_t seed) {
  auto db = SearchDb::open(dir, options);
  db->use_model(kModel);
  std::mt19937_64 rng(seed);
  std::vector<ProductUpdate> batch;
  for (int i = 0; i < products; ++i) {
    batch.push_back(random_product("p" + std::to_string(i), 1 + i % 3, rng));
  }
  db->upsert(batch);
  return db;
}

TEST(SearchDb, FilteredTopKEqualsBruteForceOnTheFilteredSet) {
  const auto dir = test::temp_dir("search_filtered");
  IndexOptions options;
  options.kind = "flat";
  auto db = filled_db(dir, options, 400, 3);
  std::mt19937_64 rng(4);
  const std::vector<std::vector<std::string>> cases = {
      {}, {"category=shoes"}, {"price<=20"}, {"brand=acme", "attributes.colour=red"},
      {"category=bags|hats", "price>100"}, {"seller=seller1", "price<10"}};
  for (const auto& texts : cases) {
    std::vector<Filter> filters;
    for (const auto& t : texts) filters.push_back(parse_filter(t));
    for (const int64_t exact_below : {int64_t{0}, int64_t{1'000'000}}) {
      // exact_below 0: filtered inside the FAISS search; large: scored from the catalogue.
      for (int q = 0; q < 5; ++q) {
        const auto query = unit_vector(rng);
        SearchOptions so;
        so.k = 10;
        so.filters = filters;
        so.exact_below = exact_below;
        const auto hits = db->search(query.data(), 1, so)[0];
        SCOPED_TRACE(testing::Message() << (texts.empty() ? "(none)" : texts[0]) << " exact_below "
                                        << exact_below);
        expect_same_hits(hits, brute_force(*db, query.data(), filters, 10));
      }
    }
  }
}

TEST(SearchDb, ResultsAfterARestartEqualThoseBefore) {
  for (const std::string kind : {"flat", "hnsw"}) {
    const auto dir = test::temp_dir("search_restart_" + kind);
    IndexOptions options;
    options.kind = kind;
    std::mt19937_64 rng(5);
    std::vector<std::vector<Hit>> before;
    std::vector<std::vector<float>> queries;
    SearchOptions so;
    so.k = 7;
    so.filters = {parse_filter("category!=hats")};
    so.exact_below = 0;
    {
      auto db = filled_db(dir, options, 300, 6);
      db->remove({"p1", "p2", "p3"});
      db->save();
      for (int q = 0; q < 10; ++q) {
        queries.push_back(unit_vector(rng));
        before.push_back(db->search(queries.back().data(), 1, so)[0]);
      }
    }
    auto db = SearchDb::open(dir, options);
    EXPECT_FALSE(db->open_report().rebuilt);
    for (size_t q = 0; q < queries.size(); ++q) {
      const auto after = db->search(queries[q].data(), 1, so)[0];
      ASSERT_EQ(after.size(), before[q].size());
      for (size_t i = 0; i < after.size(); ++i) {
        EXPECT_EQ(after[i].product.sku, before[q][i].product.sku) << kind;
        EXPECT_EQ(after[i].score, before[q][i].score) << kind;
      }
    }
  }
}

TEST(SearchDb, RemovedProductsAreGoneAtOnceAndTheirSpaceReclaimed) {
  const auto dir = test::temp_dir("search_remove");
  IndexOptions options;
  options.kind = "flat";
  auto db = filled_db(dir, options, 3000, 7);
  db->save();
  db->catalog().reclaim_space();  // everything in the main file, the journal emptied
  const auto size_before = fs::file_size(dir + "/catalog.sqlite");
  // Query with p0's own first image: it is the best match until removed.
  const auto p0 = db->catalog().image_ids({parse_filter("sku=p0")});
  const auto v = db->catalog().embeddings({p0.front()});
  SearchOptions so;
  so.k = 1;
  EXPECT_EQ(db->search(v.data(), 1, so)[0].at(0).product.sku, "p0");
  std::vector<std::string> skus;
  for (int i = 0; i < 2000; ++i) skus.push_back("p" + std::to_string(i));
  EXPECT_TRUE(db->remove(skus).empty());
  EXPECT_NE(db->search(v.data(), 1, so)[0].at(0).product.sku, "p0");
  EXPECT_FALSE(db->catalog().find("p0").has_value());
  db->save();
  const auto size_after = fs::file_size(dir + "/catalog.sqlite");
  EXPECT_LT(size_after, size_before / 2) << "freed pages returned to the file system";
}

TEST(SearchDb, ABadIndexFileIsRebuiltFromTheCatalogue) {
  const auto dir = test::temp_dir("search_badindex");
  IndexOptions options;
  options.kind = "flat";
  filled_db(dir, options, 50, 8)->save();
  const std::string good = read_text_file(dir + "/vectors.index");
  write_file_atomic(dir + "/vectors.index", std::string("VTIX\x01\x00\x00\x00garbage", 15));
  auto db = SearchDb::open(dir, options);
  EXPECT_TRUE(db->open_report().rebuilt);
  expect_consistent(*db);
  EXPECT_EQ(db->index()->size(), db->catalog().image_count());
  db.reset();
  // A damaged block length (2^27 ids, 1 GiB) is refused before its memory is taken.
  std::string damaged = good;
  uint32_t header_length = 0;
  std::memcpy(&header_length, damaged.data() + 8, 4);
  const size_t kind_at = 12 + header_length;
  uint32_t kind_length = 0;
  std::memcpy(&kind_length, damaged.data() + kind_at, 4);
  ASSERT_EQ(damaged.substr(kind_at + 4, kind_length), "flat");
  const uint64_t huge = uint64_t{1} << 27;
  std::memcpy(damaged.data() + kind_at + 4 + kind_length, &huge, 8);
  write_file_atomic(dir + "/vectors.index", damaged);
  db = SearchDb::open(dir, options);
  EXPECT_TRUE(db->open_report().rebuilt);
  EXPECT_CONTAINS(db->open_report().why, "a block of 134217728 items");
  EXPECT_CONTAINS(db->open_report().why, "bytes left");
  expect_consistent(*db);
}

TEST(SearchDb, AnIndexFileOfAnEarlierFormatVersionStillLoads) {
  // tests/fixtures/search/v1: written by format version 1 (regenerate only when adding a
  // version, never overwrite: VITRINE_WRITE_SEARCH_FIXTURE=<dir> writes a new one).
  const fs::path fixture = fs::path(VITRINE_SOURCE_DIR) / "tests/fixtures/search/v1";
  if (const char* out = std::getenv("VITRINE_WRITE_SEARCH_FIXTURE")) {
    IndexOptions options;
    options.kind = "hnsw";
    auto db = filled_db(out, options, 40, 9);
    db->remove({"p3"});
    db->save();
    std::mt19937_64 rng(99);
    nlohmann::json expected = nlohmann::json::array();
    for (int q = 0; q < 5; ++q) {
      const auto query = unit_vector(rng);
      SearchOptions so;
      so.k = 5;
      nlohmann::json skus = nlohmann::json::array();
      const auto hits = db->search(query.data(), 1, so);
      for (const auto& h : hits[0]) skus.push_back(h.product.sku);
      expected.push_back({{"query", query}, {"skus", skus}});
    }
    write_file_atomic(std::string(out) + "/expected.json", expected.dump() + "\n");
    return;
  }
  ASSERT_TRUE(fs::exists(fixture / "vectors.index")) << fixture;
  const auto dir = test::temp_dir("search_fixture");
  for (const auto* name : {"catalog.sqlite", "vectors.index", "expected.json"}) {
    fs::copy_file(fixture / name, fs::path(dir) / name);
  }
  auto db = SearchDb::open(dir);
  EXPECT_FALSE(db->open_report().rebuilt) << db->open_report().why;
  EXPECT_EQ(db->index()->kind(), "hnsw");
  expect_consistent(*db);
  // The queries and answers recorded when the fixture was made.
  const auto expected = nlohmann::json::parse(read_text_file(dir + "/expected.json"));
  for (const auto& q : expected) {
    const auto query = q.at("query").get<std::vector<float>>();
    SearchOptions so;
    so.k = 5;
    const auto hits = db->search(query.data(), 1, so)[0];
    ASSERT_EQ(hits.size(), q.at("skus").size());
    for (size_t i = 0; i < hits.size(); ++i) {
      EXPECT_EQ(hits[i].product.sku, q.at("skus")[i].get<std::string>());
    }
  }
}

TEST(SearchDb, AnIndexFileOfANewerFormatIsRebuiltNotMisread) {
  const auto dir = test::temp_dir("search_newer");
  IndexOptions options;
  options.kind = "flat";
  filled_db(dir, options, 20, 10)->save();
  std::string bytes = read_text_file(dir + "/vectors.index");
  bytes[4] = static_cast<char>(kIndexFormatVersion + 1);
  write_file_atomic(dir + "/vectors.index", bytes);
  auto db = SearchDb::open(dir, options);
  EXPECT_TRUE(db->open_report().rebuilt);
  EXPECT_CONTAINS(db->open_report().why, "upgrade Vitrine");
  expect_consistent(*db);
}

TEST(SearchDb, DeletesItsOwnPhotosWhenNoProductUsesThemAndNeverTheUsers) {
  const std::string dir = test::temp_dir("searchdb-photos");
  auto db = SearchDb::open(dir + "/db");
  db->use_model(kModel);
  std::mt19937_64 rng(21);
  // The same bytes (hash "h1") as a photo the service stored and as the user's own file.
  fs::create_directories(db->photo_dir());
  fs::create_directories(dir + "/mine");
  const std::string own = db->photo_dir() + "/h1.png", users = dir + "/mine/h1.png";
  write_file_atomic(own, "png");
  write_file_atomic(users, "png");
  auto product = [&](const std::string& sku, const std::string& ref) {
    ProductUpdate u;
    u.product.sku = sku;
    u.product.images = {ref};
    u.images.push_back({ref, "h1", unit_vector(rng)});
    return u;
  };
  db->upsert({product("A", own), product("B", own), product("C", users)});
  db->remove({"A"});
  EXPECT_TRUE(fs::exists(own)) << "B still shows it";
  db->remove({"B"});
  EXPECT_FALSE(fs::exists(own)) << "C shows the same bytes, but from the user's file";
  db->remove({"C"});
  EXPECT_TRUE(fs::exists(users)) << "a photo outside the database is the user's";
}

TEST(SearchDb, ARunningDatabaseSeesWhatAnotherWriterStoredAndRemoved) {
  const std::string dir = test::temp_dir("searchdb-two-writers") + "/db";
  std::mt19937_64 rng(22);
  auto service = SearchDb::open(dir);
  service->use_model(kModel);
  const auto p1 = random_product("P1", 1, rng), p2 = random_product("P2", 2, rng);
  service->upsert({p1});
  service->save();
  // Another process stores P2 and saves its index (trimming the change log the first one
  // would catch up from), then removes P1 without saving.
  {
    auto other = SearchDb::open(dir);
    other->upsert({p2});
    other->save();
    other->remove({"P1"});
  }
  SearchOptions so;
  so.k = 5;
  auto hits = service->search(p2.images[1].embedding.data(), 1, so).front();
  EXPECT_TRUE(hits.empty() || hits[0].product.sku != "P2") << "not seen before refresh()";
  service->refresh();
  EXPECT_EQ(service->open_report().why.find("no longer reaches"), std::string::npos)
      << "it loads the other's index instead of rebuilding";
  hits = service->search(p2.images[1].embedding.data(), 1, so).front();
  ASSERT_EQ(hits.size(), 1u);
  EXPECT_EQ(hits[0].product.sku, "P2");
  EXPECT_EQ(service->index()->size(), 2);
  expect_consistent(*service);
}

TEST(SearchDb, ASaveInStepsKeepsTheChangesMadeWhileTheFileWasWritten) {
  // A service writes the file while searches (and, between the steps, writes) go on: a
  // product stored after the file was written must not be trimmed from the change log.
  const std::string dir = test::temp_dir("searchdb-save-steps") + "/db";
  std::mt19937_64 rng(23);
  const auto p1 = random_product("P1", 1, rng), p2 = random_product("P2", 2, rng);
  {
    auto db = SearchDb::open(dir);
    db->use_model(kModel);
    db->upsert({p1});
    ASSERT_TRUE(db->prepare_save());
    const int64_t seq = db->write_index_file();
    db->upsert({p2});  // after the file was written
    db->saved(seq);
    EXPECT_TRUE(db->prepare_save()) << "P2 is not in the file yet";
    EXPECT_FALSE(db->stale());
  }
  auto db = SearchDb::open(dir);
  EXPECT_FALSE(db->open_report().rebuilt) << db->open_report().why;
  EXPECT_EQ(db->open_report().replayed, 2);  // P2's two photos, from the log
  EXPECT_EQ(db->index()->size(), 3);
  expect_consistent(*db);
  db->save();
  EXPECT_FALSE(db->prepare_save());
  // Another writer makes it stale until refreshed.
  SearchDb::open(dir)->remove({"P1"});
  EXPECT_TRUE(db->stale());
  db->refresh();
  EXPECT_FALSE(db->stale());
  EXPECT_EQ(db->index()->size(), 2);
}

// `vitrine index --index hnsw` beside a running service: the service takes the file of
// another kind (and its settings) rather than saving its own flat index over it.
TEST(SearchDb, ARunningDatabaseTakesAnIndexFileAnotherProcessRebuilt) {
  const auto dir = test::temp_dir("search_rebuilt_beside");
  std::mt19937_64 rng(24);
  auto service = SearchDb::open(dir);
  service->use_model(kModel);
  service->upsert({random_product("A", 2, rng), random_product("B", 1, rng)});
  service->save();
  ASSERT_EQ(service->index()->kind(), "flat");
  EXPECT_FALSE(service->stale()) << "its own file";
  IndexOptions hnsw;
  hnsw.kind = "hnsw";
  hnsw.hnsw_m = 8;
  {
    auto indexer = SearchDb::open(dir, hnsw);  // no product changes: only the file does
    EXPECT_TRUE(indexer->open_report().rebuilt);
    indexer->save();
  }
  EXPECT_TRUE(service->stale());
  service->refresh();
  EXPECT_FALSE(service->stale());
  EXPECT_EQ(service->index()->kind(), "hnsw");
  EXPECT_EQ(service->index()->built_with("hnsw_m"), 8);
  // Its own change since, and the file it saves, keep the kind and the settings.
  service->upsert({random_product("C", 1, rng)});
  service->save();
  auto later = SearchDb::open(dir);
  EXPECT_FALSE(later->open_report().rebuilt) << later->open_report().why;
  EXPECT_EQ(later->index()->kind(), "hnsw");
  EXPECT_EQ(later->index()->built_with("hnsw_m"), 8);
  EXPECT_EQ(later->index()->size(), 4);
  expect_consistent(*later);

  // Rebuilt again with other settings: the settings this process took from the first file
  // are not its own to insist on.
  IndexOptions m12 = hnsw;
  m12.hnsw_m = 12;
  m12.given = {"hnsw_m"};
  SearchDb::open(dir, m12)->save();
  service->refresh();
  EXPECT_EQ(service->index()->built_with("hnsw_m"), 12);
  // A file rewritten while this process has changes it has not saved: the log brings the
  // other's file up to date, and nothing is lost.
  service->upsert({random_product("D", 1, rng)});
  IndexOptions flat;
  flat.kind = "flat";
  SearchDb::open(dir, flat)->save();
  service->refresh();
  EXPECT_EQ(service->index()->kind(), "flat");
  EXPECT_EQ(service->index()->size(), 5);
  expect_consistent(*service);
}

// `vitrine index --ef-search 200` sets the database's search effort: later commands that
// ask for none (serve, search) take it; one that asks for another uses its own for itself.
TEST(SearchDb, TheSearchEffortIndexSetsIsTheDatabasesOwn) {
  const auto dir = test::temp_dir("search_effort");
  std::mt19937_64 rng(25);
  IndexOptions hnsw;
  hnsw.kind = "hnsw";
  {
    auto db = SearchDb::open(dir, hnsw);
    db->use_model(kModel);
    db->upsert({random_product("A", 2, rng)});
    db->save();
    EXPECT_EQ(db->index()->search_effort("hnsw_ef_search"), 64);
  }
  IndexOptions index_cmd;  // `vitrine index --ef-search 200`, nothing else changed
  index_cmd.hnsw_ef_search = 200;
  index_cmd.given = {"hnsw_ef_search"};
  index_cmd.store_search_effort = true;
  {
    auto db = SearchDb::open(dir, index_cmd);
    EXPECT_FALSE(db->open_report().rebuilt) << db->open_report().why;
    EXPECT_EQ(db->index()->search_effort("hnsw_ef_search"), 200);
    db->save();  // written though no product changed
  }
  EXPECT_EQ(SearchDb::open(dir)->index()->search_effort("hnsw_ef_search"), 200);
  IndexOptions asked;  // `vitrine search --ef-search 32`: for this command only
  asked.hnsw_ef_search = 32;
  asked.given = {"hnsw_ef_search"};
  {
    auto db = SearchDb::open(dir, asked);
    EXPECT_EQ(db->index()->search_effort("hnsw_ef_search"), 32);
    db->upsert({random_product("B", 1, rng)});
    db->save();
  }
  auto later = SearchDb::open(dir);
  EXPECT_EQ(later->index()->search_effort("hnsw_ef_search"), 200);
  EXPECT_EQ(later->index()->search_effort("nprobe"), -1) << "not an IVF-PQ index";
  // A rebuild (another kind asked for) keeps the database's effort.
  IndexOptions flat_then_hnsw;
  flat_then_hnsw.kind = "flat";
  SearchDb::open(dir, flat_then_hnsw)->save();
  EXPECT_EQ(SearchDb::open(dir, hnsw)->index()->search_effort("hnsw_ef_search"), 200);
}

TEST(SearchDb, AnOlderProcessNeverSavesOverANewerIndexFile) {
  const auto dir = test::temp_dir("search_older_save");
  std::mt19937_64 rng(21);
  auto service = SearchDb::open(dir);  // a long-running process
  service->use_model(kModel);
  service->upsert({random_product("A", 1, rng)});  // its own change, not saved yet
  {
    auto indexer = SearchDb::open(dir);  // `vitrine index` beside it: saves, trims the log
    indexer->upsert({random_product("B", 2, rng), random_product("C", 1, rng)});
    indexer->save();
  }
  service->save();  // at shutdown
  auto later = SearchDb::open(dir);
  EXPECT_FALSE(later->open_report().rebuilt) << later->open_report().why;
  EXPECT_EQ(later->index()->size(), 4);
  expect_consistent(*later);
}

TEST(SearchIndex, HnswAndIvfPqFindTheExactNeighboursMostOfTheTime) {
  std::mt19937_64 rng(14);
  const int64_t n = 3000;
  std::vector<float> x;
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < n; ++i) {
    const auto v = unit_vector(rng);
    x.insert(x.end(), v.begin(), v.end());
    ids.push_back(1000 + 3 * i);
  }
  IndexOptions options;
  auto flat = make_index("flat", kDim, options, nullptr, 0);
  flat->add(x.data(), ids.data(), n);
  for (const std::string kind : {"hnsw", "ivfpq"}) {
    options.nprobe = 32;
    options.pq_m = 8;
    auto index = make_index(kind, kDim, options, x.data(), n);
    index->add(x.data(), ids.data(), n);
    EXPECT_EQ(index->ids(), flat->ids());
    int64_t found = 0;
    const int64_t nq = 50, k = 10;
    for (int64_t q = 0; q < nq; ++q) {
      const auto query = unit_vector(rng);
      std::vector<float> s1(k), s2(k);
      std::vector<int64_t> i1(k), i2(k);
      flat->search(query.data(), 1, k, nullptr, s1.data(), i1.data());
      index->search(query.data(), 1, k, nullptr, s2.data(), i2.data());
      for (const auto id : i2) found += std::count(i1.begin(), i1.end(), id);
    }
    const double recall = static_cast<double>(found) / static_cast<double>(nq * k);
    EXPECT_GT(recall, kind == "hnsw" ? 0.9 : 0.5) << kind;
    // Round trip through the file format.
    std::stringstream buffer;
    index->write(buffer);
    auto back = read_index(buffer, options);
    EXPECT_EQ(back->kind(), kind);
    EXPECT_EQ(back->ids(), index->ids());
  }
}

TEST(SearchIndex, ASelectiveFilterStillGivesTheTopKOfTheFilteredSet) {
  // HNSW meets few of a handful of allowed nodes on its path and IVF-PQ probes few of the
  // lists that hold them: both used to come back with fewer than k results.
  std::mt19937_64 rng(15);
  const int64_t n = 6000;
  std::vector<float> x;
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < n; ++i) {
    const auto v = unit_vector(rng);
    x.insert(x.end(), v.begin(), v.end());
    ids.push_back(7 + 2 * i);
  }
  IndexOptions options;
  options.nprobe = 2;
  options.pq_m = 8;
  options.hnsw_ef_search = 16;
  auto flat = make_index("flat", kDim, options, nullptr, 0);
  flat->add(x.data(), ids.data(), n);
  for (const std::string kind : {"hnsw", "ivfpq"}) {
    auto index = make_index(kind, kDim, options, x.data(), n);
    index->add(x.data(), ids.data(), n);
    // Sizes below and above the exact-scan limit of HNSW.
    for (const size_t allowed_size : {size_t{6}, size_t{40}, size_t{5000}}) {
      std::vector<int64_t> allowed;
      std::sample(ids.begin(), ids.end(), std::back_inserter(allowed), allowed_size, rng);
      const int64_t nq = 20, k = 10;
      std::vector<float> queries;
      for (int64_t q = 0; q < nq; ++q) {
        const auto v = unit_vector(rng);
        queries.insert(queries.end(), v.begin(), v.end());
      }
      std::vector<float> s1(nq * k), s2(nq * k);
      std::vector<int64_t> i1(nq * k), i2(nq * k);
      flat->search(queries.data(), nq, k, &allowed, s1.data(), i1.data());
      index->search(queries.data(), nq, k, &allowed, s2.data(), i2.data());
      const auto want = std::min<int64_t>(k, static_cast<int64_t>(allowed_size));
      int64_t same = 0;
      for (int64_t q = 0; q < nq; ++q) {
        for (int64_t j = 0; j < k; ++j) {
          const auto id = i2[q * k + j];
          if (j < want) {
            ASSERT_GE(id, 0) << kind << " " << allowed_size << " query " << q << " rank " << j;
            ASSERT_TRUE(std::binary_search(allowed.begin(), allowed.end(), id)) << kind;
          } else {
            ASSERT_EQ(id, -1) << kind;
          }
          if (id >= 0) same += std::count(i1.begin() + q * k, i1.begin() + (q + 1) * k, id);
        }
      }
      if (kind == "hnsw" && allowed_size <= 40) {
        EXPECT_EQ(same, nq * want) << "small filtered sets are scanned exactly";
      }
    }
  }
}

TEST(VectorIndex, AnImageAddedTwiceIsHeldOnceAndGoneWhenRemoved) {
  std::mt19937_64 rng(11);
  constexpr int64_t n = 1200;  // enough for IVF-PQ's codebooks
  std::vector<float> x;
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < n; ++i) {
    const auto v = unit_vector(rng);
    x.insert(x.end(), v.begin(), v.end());
    ids.push_back(100 + i);
  }
  IndexOptions options;
  for (const std::string kind : {"flat", "hnsw", "ivfpq"}) {
    auto index = make_index(kind, kDim, options, x.data(), n);
    index->add(x.data(), ids.data(), n);
    index->add(x.data(), ids.data(), 10);  // a change replayed twice
    EXPECT_EQ(index->size(), n) << kind;
    index->remove({ids[0]});
    EXPECT_EQ(index->size(), n - 1) << kind;
    std::vector<float> scores(5);
    std::vector<int64_t> found(5);
    index->search(x.data(), 1, 5, nullptr, scores.data(), found.data());
    EXPECT_EQ(std::count(found.begin(), found.end(), ids[0]), 0) << kind;
    EXPECT_EQ(found[0] >= 0, true) << kind;
    // Written and read back, it still knows which ids it holds.
    std::stringstream file;
    index->write(file);
    auto read = read_index(file, options);
    read->add(x.data() + kDim, ids.data() + 1, 5);
    EXPECT_EQ(read->size(), n - 1) << kind;
  }
}

TEST(RetrievalMetrics, AveragePrecisionAndRecallByHand) {
  // Relevant at ranks 1 and 3 of 4 relevant: (1/1 + 2/3) / 4.
  EXPECT_NEAR(average_precision_at({true, false, true, false}, 4, 10), (1.0 + 2.0 / 3) / 4, 1e-12);
  // More relevant than k: the denominator is k.
  EXPECT_NEAR(average_precision_at({true, true}, 100, 2), 1.0, 1e-12);
  EXPECT_EQ(average_precision_at({false, false}, 0, 10), 0.0);
  RetrievalEvaluator e;
  e.add({false, true, false, false, false, false}, 1, "a");  // hit at rank 2
  e.add({false, false, false, false, false, false, false, false, false, false}, 3, "b");
  const auto m = e.result();
  EXPECT_EQ(m.queries, 2);
  EXPECT_DOUBLE_EQ(m.recall_at_1, 0.0);
  EXPECT_DOUBLE_EQ(m.recall_at_5, 0.5);
  EXPECT_DOUBLE_EQ(m.precision_at_10, 0.05);
  EXPECT_DOUBLE_EQ(m.map_at_10, 0.25);  // (1/2) / 1 for a, 0 for b
  EXPECT_DOUBLE_EQ(m.precision_at_10_by_group.at("a"), 0.1);
}

TEST(Duplicates, GroupsNearIdenticalImagesOfDifferentSkusOnly) {
  // IVF-PQ's own scores are estimates from 4-byte codes here, far below 0.98 for a copy:
  // the links are scored exactly, as for the other kinds.
  for (const std::string kind : {"flat", "hnsw", "ivfpq"}) {
    SCOPED_TRACE(kind);
    const auto dir = test::temp_dir("search_duplicates_" + kind);
    IndexOptions io;
    io.kind = kind;
    auto db = SearchDb::open(dir, io);
    db->use_model(kModel);
    std::mt19937_64 rng(15);
    std::vector<ProductUpdate> batch;
    for (int i = 0; i < 1200; ++i) batch.push_back(random_product("p" + std::to_string(i), 1, rng));
    // Two listings of p0's photo by other sellers (a copy and a slightly changed one), and a
    // product with two near-identical photos of its own (not a duplicate listing).
    auto copy = random_product("copy-of-p0", 1, rng);
    copy.images[0].embedding = batch[0].images[0].embedding;
    auto edited = random_product("edited-p0", 1, rng);
    edited.images[0].embedding = batch[0].images[0].embedding;
    edited.images[0].embedding[0] += 0.05f;
    auto own = random_product("own-pair", 2, rng);
    own.images[1].embedding = own.images[0].embedding;
    batch.push_back(copy);
    batch.push_back(edited);
    batch.push_back(own);
    db->upsert(batch);
    db->save();  // IVF-PQ learns its codes from the images, as it is saved
    ASSERT_EQ(db->index()->kind(), kind);
    DuplicateOptions options;
    options.threshold = 0.98f;
    const auto groups = find_duplicates(*db, options);
    ASSERT_EQ(groups.size(), 1u);
    std::set<std::string> skus;
    for (const auto& m : groups[0].members) skus.insert(m.product.sku);
    EXPECT_EQ(skus, (std::set<std::string>{"p0", "copy-of-p0", "edited-p0"}));
    EXPECT_NEAR(groups[0].max_score, 1.0f, 1e-5);
    EXPECT_GE(groups[0].min_score, 0.98f);
    // A search's scores are exact inner products too: p0's photo finds itself at 1.
    SearchOptions so;
    so.k = 3;
    const auto hits = db->search(batch[0].images[0].embedding.data(), 1, so).front();
    ASSERT_EQ(hits.size(), 3u);
    EXPECT_NEAR(hits[0].score, 1.0f, 1e-5);
    const float edited_score = 1 + 0.05f * batch[0].images[0].embedding[0];
    EXPECT_NEAR(hits[2].score, edited_score, 1e-5) << "the edited copy, scored exactly";
  }
}

TEST(CatalogCsv, BadRowsAreReportedWithTheirLineAndTheRestKept) {
  const auto dir = test::temp_dir("search_csv");
  write_file_atomic(dir + "/p.csv",
                    "sku,image,title,price,attributes,colour\n"
                    "a,img/a.jpg,\"Shoe, red\",12.5,\"{\"\"size\"\": 42}\",red\n"
                    "b,img/b.jpg|/abs/b2.jpg,Bag,cheap,,\n"
                    ",img/c.jpg,No sku,1,,\n"
                    "d,img/d.jpg,Hat,3,[1],\n"
                    "a,img/a2.jpg,Again,1,,\n"
                    "e,,No image,1,,\n"
                    "f,img/f.jpg,Too,many,fields,,\n"
                    "g,img/g.jpg|/abs/g2.jpg|img/g.jpg,Ok,,,\n");
  const auto file = read_catalog_csv(dir + "/p.csv");
  ASSERT_EQ(file.rows.size(), 2u);
  EXPECT_EQ(file.rows[0].product.sku, "a");
  EXPECT_EQ(file.rows[0].product.title, "Shoe, red");
  EXPECT_EQ(*file.rows[0].product.price, 12.5);
  EXPECT_EQ(nlohmann::json::parse(file.rows[0].product.attributes),
            nlohmann::json::parse(R"({"size": 42, "colour": "red"})"));
  EXPECT_EQ(file.rows[0].product.images.at(0), (fs::path(dir) / "img/a.jpg").string());
  EXPECT_EQ(file.rows[1].product.images,
            (std::vector<std::string>{(fs::path(dir) / "img/g.jpg").string(), "/abs/g2.jpg"}));
  ASSERT_EQ(file.errors.size(), 6u);
  EXPECT_CONTAINS(file.errors[0].text, "p.csv:3: price 'cheap' is not a number");
  EXPECT_CONTAINS(file.errors[1].text, "p.csv:4: the sku is empty");
  EXPECT_CONTAINS(file.errors[2].text, "p.csv:5: attributes must be a JSON object");
  EXPECT_CONTAINS(file.errors[3].text, "p.csv:6: SKU a is already on line 2");
  EXPECT_CONTAINS(file.errors[4].text, "p.csv:7: product e lists no image");
  EXPECT_CONTAINS(file.errors[5].text, "p.csv:8: has 7 fields, the header has 6");
  // SKUs the service's API could not name fail their rows, as the service refuses them.
  write_file_atomic(dir + "/skus.csv", "sku,image\n..,a.jpg\nx/images/3,b.jpg\n\"t\tab\",c.jpg\n" +
                                           std::string(513, 's') + ",d.jpg\nx/images,e.jpg\n");
  const auto skus = read_catalog_csv(dir + "/skus.csv");
  ASSERT_EQ(skus.rows.size(), 1u);
  EXPECT_EQ(skus.rows[0].product.sku, "x/images");
  ASSERT_EQ(skus.errors.size(), 4u);
  EXPECT_CONTAINS(skus.errors[0].text, "skus.csv:2: a SKU must not be '.' or '..'");
  EXPECT_CONTAINS(skus.errors[1].text, "skus.csv:3: a SKU must not end in /images/<number>");
  EXPECT_CONTAINS(skus.errors[2].text, "skus.csv:4: a SKU must not hold control characters");
  EXPECT_CONTAINS(skus.errors[3].text, "skus.csv:5: a SKU may have at most 512 bytes");
  write_file_atomic(dir + "/neg.csv", "sku,image,price\na,a.jpg,-5\nb,b.jpg,0\n");
  const auto neg = read_catalog_csv(dir + "/neg.csv");
  ASSERT_EQ(neg.errors.size(), 1u);
  EXPECT_CONTAINS(neg.errors[0].text, "neg.csv:2: price '-5' is negative");
  // A product of more photos than any search can afford to look through fails its row.
  std::string photos;
  for (int i = 0; i <= 100; ++i) photos += (i ? "|img/" : "img/") + std::to_string(i) + ".jpg";
  write_file_atomic(dir + "/many.csv", "sku,images\nm," + photos + "\nn,img/n.jpg\n");
  const auto many = read_catalog_csv(dir + "/many.csv");
  ASSERT_EQ(many.rows.size(), 1u);
  ASSERT_EQ(many.errors.size(), 1u);
  EXPECT_CONTAINS(many.errors[0].text, "many.csv:2: product m lists 101 images; at most 100");
  // Text that is not UTF-8 (a Latin-1 export) fails its row, naming the column; attributes
  // nested without end fail theirs; the other rows are kept.
  write_file_atomic(dir + "/latin1.csv",
                    "sku,image,title,colour,attributes\n"
                    "a,a.jpg,Shoe,ros\xE9,\n"
                    "b,b.jpg,Bag,red,\"" + std::string(100000, '[') + "\"\n"
                    "c,c.jpg,Hat,blue,\n");
  const auto latin1 = read_catalog_csv(dir + "/latin1.csv");
  ASSERT_EQ(latin1.rows.size(), 1u);
  EXPECT_EQ(latin1.rows[0].product.sku, "c");
  ASSERT_EQ(latin1.errors.size(), 2u);
  EXPECT_CONTAINS(latin1.errors[0].text, "latin1.csv:2: column 'colour' is not UTF-8 text");
  EXPECT_CONTAINS(latin1.errors[1].text, "latin1.csv:3: attributes must be a JSON object");
  // Cells that are numbers become numbers (filters compare them as such); others stay text.
  write_file_atomic(dir + "/numbers.csv",
                    "sku,image,size,code,width,weight,dose,load,plus,article,decimal,negative\n"
                    "a,a.jpg,42,007,4.5,12.50,0.10,1e3,+5,123456789012345678901234,\"4,5\",-3\n");
  const auto numbers = read_catalog_csv(dir + "/numbers.csv");
  ASSERT_EQ(numbers.rows.size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(numbers.rows[0].product.attributes),
            nlohmann::json::parse(R"({"size": 42, "code": "007", "width": 4.5, "weight": 12.5,
                                      "dose": 0.1, "load": 1000.0, "plus": "+5",
                                      "article": "123456789012345678901234",
                                      "decimal": "4,5", "negative": -3})"));
  write_file_atomic(dir + "/q.csv", "name,file\nx,y\n");
  EXPECT_CONTAINS(test::error_of([&] { read_catalog_csv(dir + "/q.csv"); }),
                  "needs a 'sku' and an 'image'");
  EXPECT_CONTAINS(test::error_of([&] { read_catalog_csv(dir + "/missing.csv"); }),
                  "does not exist");
}

}  // namespace
}  // namespace vitrine::search
