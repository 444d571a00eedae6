// Visual search: `vitrine index`, `search`, `remove`, `duplicates`, `eval-retrieval`.
#include "commands.h"
#include "progress.h"

#include "vitrine/core/csv.h"
#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"
#include "vitrine/core/hash.h"
#include "vitrine/core/json.h"
#include "vitrine/core/text.h"
#include "vitrine/core/threads.h"
#include "vitrine/data/dataset.h"
#include "vitrine/image/batch.h"
#include "vitrine/image/decode.h"
#include "vitrine/search/catalog_csv.h"
#include "vitrine/search/embedder.h"
#include "vitrine/search/json.h"
#include "vitrine/search/retrieval.h"
#include "vitrine/search/search_db.h"
#include "vitrine/train/evaluate.h"
#include "vitrine/train/report.h"

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <unordered_set>

namespace vitrine::cli {
namespace {

namespace fs = std::filesystem;

}  // namespace

void add_search_effort_options(CLI::App* cmd, search::IndexOptions& o) {
  const auto given = [&o](const char* name) {
    return [&o, name](const std::string&) { o.given.emplace_back(name); };
  };
  cmd->add_option("--ef-search", o.hnsw_ef_search,
                  "HNSW: search beam width (default: the database's, 64 until `index` sets it)")
      ->check(CLI::Range(1, 1 << 16))
      ->each(given("hnsw_ef_search"));
  cmd->add_option("--nprobe", o.nprobe,
                  "IVF-PQ: lists visited per query (default: the database's, 16 until `index` "
                  "sets it)")
      ->check(CLI::Range(1, 1 << 20))
      ->each(given("nprobe"));
}

namespace {

/// The index flags of `index`.
void add_index_options(CLI::App* cmd, search::IndexOptions& o) {
  cmd->add_option("--index", o.kind,
                  "auto (flat up to 100k images, then hnsw, ivfpq above 5M), flat, hnsw, ivfpq")
      ->check(CLI::IsMember({"auto", "flat", "hnsw", "ivfpq"}));
  const auto given = [&o](const char* name) {
    return [&o, name](const std::string&) { o.given.emplace_back(name); };
  };
  cmd->add_option("--hnsw-m", o.hnsw_m, "HNSW: neighbours per node")
      ->check(CLI::Range(2, 256))
      ->each(given("hnsw_m"));
  cmd->add_option("--ef-construction", o.hnsw_ef_construction, "HNSW: build beam width")
      ->check(CLI::Range(8, 4096))
      ->each(given("hnsw_ef_construction"));
  cmd->add_option("--ivf-lists", o.ivf_lists, "IVF-PQ: inverted lists (0: 4*sqrt(n))")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24))
      ->each(given("ivf_lists"));
  cmd->add_option("--pq-m", o.pq_m, "IVF-PQ: bytes per code (0: dim/4, at most 64)")
      ->check(CLI::Range(0, 1024))
      ->each(given("pq_m"));
  add_search_effort_options(cmd, o);
}

/// `s` as a shell word: as it is when plain, else in single quotes.
std::string shell_quoted(const std::string& s) {
  const bool plain = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           (c != '\0' && std::strchr("_.,:/+@%=-", c) != nullptr);
  });
  if (plain) return s;
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

/// --data (optional, described by `help`), --split among `splits`, the split options and
/// --fashion-mnist-dir.
CLI::Option* add_data_split_options(CLI::App* cmd, data::DataOptions& d, std::string& split,
                                    const std::string& help, std::vector<std::string> splits) {
  auto* data = cmd->add_option("--data", d.source, help);
  std::string names;
  for (const auto& s : splits) names += (names.empty() ? "" : " | ") + s;
  cmd->add_option("--split", split, "With --data: " + names)->check(CLI::IsMember(splits));
  cmd->add_option("--val-split", d.val_split,
                  "With --data: validation fraction carved from training (0: all of it)")
      ->check(CLI::Range(0.0, 0.9));
  cmd->add_option("--test-split", d.test_split,
                  "With --data: test fraction of a root without test/ (as train took it)")
      ->check(CLI::Range(0.0, 0.9));
  cmd->add_option("--data-seed", d.seed,
                  "With --data: seed of the carved splits (as train took it)")
      ->capture_default_str();
  cmd->add_option("--fashion-mnist-dir", d.fashion_mnist_dir, "Where the IDX files are");
  return data;
}

/// The model for search and evaluation: --model, or the one the database was indexed with.
/// An existing search database: commands that read one never create it (a mistyped --db
/// would otherwise leave a new empty database behind and answer nothing).
std::unique_ptr<search::SearchDb> open_existing_db(const std::string& dir,
                                                   const search::IndexOptions& index = {}) {
  VT_CHECK(fs::exists(fs::path(dir) / "catalog.sqlite"), "no search database in ", dir,
           " (create one with `vitrine index`)");
  auto db = search::SearchDb::open(dir, index);
  if (db->open_report().rebuilt) {
    // Saved, so that the next command loads it instead of building it again.
    try {
      db->save();
      spdlog::info("saved the rebuilt index to {}", db->index_path());
    } catch (const std::exception& e) {
      spdlog::warn("the rebuilt index could not be saved ({}); each command builds it again "
                   "until `vitrine index` saves it",
                   e.what());
    }
  }
  return db;
}

std::string model_for(const search::SearchDb& db, const std::string& given) {
  if (!given.empty()) return given;
  const std::string path = db.catalog().model_path();
  VT_CHECK(!path.empty(), "the database ", db.dir(), " does not name its model; pass --model DIR");
  VT_CHECK(fs::exists(fs::path(path) / "config.json"), "the database ", db.dir(),
           " was indexed with the model in ", path, ", which is gone; pass --model DIR (the "
           "same model, or re-index with the new one)");
  return path;
}

/// Same model as the stored embeddings, or a clear error.
void check_same_model(const search::SearchDb& db, const search::Embedder& embedder) {
  const auto stored = db.model();
  VT_CHECK(stored, "the database ", db.dir(), " is empty: run `vitrine index` first");
  const std::string path = db.catalog().model_path();
  VT_CHECK(*stored == embedder.stamp(), "the database ", db.dir(), " was indexed with ",
           search::model_mismatch(*stored, embedder.stamp()), ": search with the model it was "
           "indexed with", path.empty() ? std::string() : " (" + path + ")",
           ", or index the catalogue into a new --db with this one");
}

// ---- index -----------------------------------------------------------------------------------

struct IndexArgs {
  std::string model, db, catalog, precision = "auto", split = "train";
  data::DataOptions data;
  search::IndexOptions index;
  int64_t batch_size = 64, max_pixels = 100'000'000;
  int threads = 0;
  bool quiet = false;
};

/// One output line per product, written after its batch is committed.
void report_line(const nlohmann::json& line, bool quiet) {
  if (quiet && line.value("status", "") != "failed" && !line.contains("image_errors")) return;
  std::cout << json_text(line) << "\n";
}

/// Products of the database that this run did not list (`others` of them) stay
/// searchable: says how many, how many name photo files that are gone (moved or deleted:
/// the first to name), and gives the `vitrine remove` command for the first few. Looks at
/// the first 100,000 products for them.
void note_unlisted_products(const search::SearchDb& db,
                            const std::unordered_set<std::string>& listed, int64_t others,
                            const std::string& source, const std::string& db_dir) {
  if (others <= 0) return;
  std::vector<std::string> gone, kept;  // the first few SKUs of each
  int64_t looked = 0, others_gone = 0;
  constexpr int64_t kPage = 1000;
  constexpr size_t kNamed = 5;
  constexpr int64_t kMaxLooked = 100'000;  // products: a huge catalogue is sampled
  const std::string own_photos = db.photo_dir();
  bool capped = false;
  for (int64_t offset = 0; looked < others; offset += kPage) {
    if (offset >= kMaxLooked) {
      capped = true;
      break;
    }
    const auto page = db.catalog().list({}, offset, kPage);
    for (const auto& p : page) {
      if (listed.count(p.sku)) continue;
      ++looked;
      std::error_code ec;
      const bool missing = std::any_of(p.images.begin(), p.images.end(), [&](const auto& ref) {
        return !fs::exists(ref, ec) && !ec && fs::path(ref).parent_path() != own_photos;
      });
      others_gone += missing ? 1 : 0;
      auto& names = missing ? gone : kept;
      if (names.size() < kNamed) names.push_back(p.sku);
    }
    if (static_cast<int64_t>(page.size()) < kPage) break;
  }
  std::vector<std::string> named = gone;  // those with photos gone first
  for (const auto& sku : kept) {
    if (named.size() < kNamed) named.push_back(sku);
  }
  std::string skus;
  for (const auto& sku : named) skus += " " + shell_quoted(sku);
  const std::string missing_text =
      others_gone > 0
          ? fmt::format(" ({}{} with photo files that no longer exist: moved or deleted)",
                        others_gone, capped ? " of the first 100,000 looked at" : "")
          : std::string();
  const bool one = others == 1;
  const std::string text = fmt::format(
      "{} {} not in {}{}: {} searchable; if {} the catalogue, delete {} with `vitrine remove "
      "--db {}{}{}`", others,
      one ? "product of the database is" : "products of the database are", source,
      missing_text, one ? "it stays" : "they stay", one ? "it left" : "they left",
      one ? "it" : "them", db_dir, skus, others > static_cast<int64_t>(named.size()) ? " ..." : "");
  if (others_gone > 0) {
    spdlog::warn("{}", text);
  } else {
    spdlog::info("{}", text);
  }
}

int index_catalog(const IndexArgs& a, const search::CatalogFile& file, search::SearchDb& db,
                  const search::Embedder& embedder) {
  for (const auto& e : file.errors) {
    nlohmann::json line{{"line", e.line}, {"status", "failed"}, {"error", e.text}};
    if (!e.sku.empty()) line["sku"] = e.sku;
    report_line(line, a.quiet);
  }
  int64_t stored = 0, unchanged = 0, failed = static_cast<int64_t>(file.errors.size());
  int64_t with_bad_photos = 0;  ///< stored or unchanged, some of their photos unreadable
  int64_t listed_in_db = 0;     ///< rows whose product the database holds at the end
  Progress progress("index", static_cast<int64_t>(file.rows.size()), "product");
  for (size_t begin = 0; begin < file.rows.size(); begin += static_cast<size_t>(a.batch_size)) {
    const size_t end = std::min(file.rows.size(), begin + static_cast<size_t>(a.batch_size));
    // Which images are new or changed: only those are embedded.
    struct Pending {
      const search::CatalogRow* row;
      std::vector<search::ImageEntry> images;
      std::vector<std::string> errors;
      bool changed = false;  ///< a product field differs from the stored one
      std::vector<std::pair<std::string, std::string>> stored_images;  ///< (ref, hash)
    };
    std::vector<Pending> pending;
    std::vector<std::string> to_embed;
    std::vector<std::pair<size_t, size_t>> embed_slot;  // (pending, image)
    for (size_t r = begin; r < end; ++r) {
      const auto& row = file.rows[r];
      Pending p{&row, {}, {}, false, {}};
      const auto stored_product = db.catalog().find(row.product.sku);
      const auto stored_hashes = db.catalog().image_hashes(row.product.sku);
      std::map<std::string, std::string> hash_of(stored_hashes.begin(), stored_hashes.end());
      for (const auto& ref : row.product.images) {
        std::string hash;
        try {
          hash = sha256_file(ref);
        } catch (const std::exception& e) {
          p.errors.push_back(e.what());
          continue;
        }
        p.images.push_back({ref, hash, {}});
        const auto it = hash_of.find(ref);
        if (it == hash_of.end() || it->second != hash) {
          to_embed.push_back(ref);
          embed_slot.emplace_back(pending.size(), p.images.size() - 1);
        }
      }
      const auto& q = row.product;
      p.changed = !stored_product || stored_product->title != q.title ||
                  stored_product->category != q.category || stored_product->price != q.price ||
                  stored_product->brand != q.brand || stored_product->seller != q.seller ||
                  nlohmann::json::parse(stored_product->attributes) !=
                      nlohmann::json::parse(q.attributes);
      p.stored_images = stored_hashes;
      pending.push_back(std::move(p));
    }
    const auto embedded = embedder.embed_files(to_embed);
    std::set<std::pair<size_t, size_t>> bad;
    for (size_t i = 0; i < embedded.size(); ++i) {
      const auto [pi, ii] = embed_slot[i];
      if (embedded[i].ok()) {
        pending[pi].images[ii].embedding = embedded[i].embedding;
        pending[pi].images[ii].content_hash = embedded[i].content_hash;
      } else {
        pending[pi].errors.push_back(embedded[i].error);
        bad.insert({pi, ii});
      }
    }
    std::vector<search::ProductUpdate> batch;
    std::vector<nlohmann::json> lines;
    for (size_t pi = 0; pi < pending.size(); ++pi) {
      auto& p = pending[pi];
      std::vector<search::ImageEntry> good;
      for (size_t ii = 0; ii < p.images.size(); ++ii) {
        if (!bad.count({pi, ii})) good.push_back(std::move(p.images[ii]));
      }
      // Unchanged when the fields and the photos that could be read are what is stored: a
      // photo that fails every time is reported, not stored again and again.
      std::vector<std::pair<std::string, std::string>> now;
      for (const auto& img : good) now.emplace_back(img.ref, img.content_hash);
      const bool changed = p.changed || now != p.stored_images;
      nlohmann::json line{{"sku", p.row->product.sku}, {"line", p.row->line}};
      listed_in_db += !good.empty() || !p.stored_images.empty() ? 1 : 0;
      if (good.empty()) {
        line["status"] = "failed";
        line["error"] = "no image of this product could be read: " +
                        (p.errors.empty() ? std::string("none listed") : p.errors.front());
        // "failed" must not read as "not in the catalogue" when an earlier run stored it.
        if (!p.stored_images.empty()) {
          line["error"] = line["error"].get<std::string>() +
                          "; the product stays searchable as stored before (`vitrine remove "
                          "--db " + shell_quoted(a.db) + " " + shell_quoted(p.row->product.sku) +
                          "` deletes it)";
        }
        ++failed;
      } else if (!changed) {
        line["status"] = "unchanged";
        if (!p.errors.empty()) line["image_errors"] = p.errors, ++with_bad_photos;
        ++unchanged;
      } else {
        search::ProductUpdate u{p.row->product, std::move(good)};
        u.product.images.clear();
        for (const auto& img : u.images) u.product.images.push_back(img.ref);
        batch.push_back(std::move(u));
        line["status"] = "stored";
        line["images"] = batch.back().images.size();
        if (!p.errors.empty()) line["image_errors"] = p.errors, ++with_bad_photos;
        ++stored;
      }
      lines.push_back(std::move(line));
    }
    if (!batch.empty()) db.upsert(batch);  // committed: only now is "stored" true
    for (const auto& l : lines) report_line(l, a.quiet);
    std::cout.flush();
    progress.advance(static_cast<int64_t>(end - begin));
  }
  progress.finish();
  db.save();
  spdlog::info("{} stored, {} unchanged, {} failed{}; the database holds {} products, {} "
               "images ({} index)",
               stored, unchanged, failed,
               with_bad_photos > 0
                   ? fmt::format(" ({} kept without some unreadable photos)", with_bad_photos)
                   : std::string(),
               db.catalog().product_count(), db.catalog().image_count(),
               db.index() ? db.index()->kind() : "no");
  // A file that lists only new products is fine; one meant as the whole catalogue leaves
  // the products it dropped searchable until they are removed.
  if (db.catalog().product_count() > listed_in_db) {
    std::unordered_set<std::string> listed;
    for (const auto& row : file.rows) listed.insert(row.product.sku);
    note_unlisted_products(db, listed, db.catalog().product_count() - listed_in_db, a.catalog,
                           a.db);
  }
  return failed > 0 || with_bad_photos > 0 ? kExitSomeFailed : kExitOk;
}

/// Indexes a data source's items as products: SKU and image reference the item's name,
/// category its class.
/// The parts of --data that index --split names.
std::vector<std::shared_ptr<data::Dataset>> data_parts(const IndexArgs& a) {
  const auto splits = open_data_logged(a.data);
  std::vector<std::shared_ptr<data::Dataset>> parts;
  if (a.split == "all") {
    for (const auto& d : {splits.train, splits.val, splits.test}) {
      if (d && d->size() > 0) parts.push_back(d);
    }
  } else {
    parts.push_back(pick_split(splits, a.split));
  }
  return parts;
}

int index_data(const IndexArgs& a, const std::vector<std::shared_ptr<data::Dataset>>& parts,
               search::SearchDb& db, const search::Embedder& embedder) {
  int64_t total = 0;
  for (const auto& d : parts) total += d->size();
  // A photo file's SKU is its absolute path: the same folder named another way (photos/,
  // ./photos, from another working folder) gives the same products, and `serve` and
  // `duplicates` open them from anywhere. A packed data set's items keep their names.
  const auto sku_of = [](const data::Dataset& d, int64_t i) {
    const std::string name = d.name(i);
    std::error_code ec;
    if (!fs::is_regular_file(name, ec)) return name;
    return fs::absolute(name, ec).lexically_normal().string();
  };
  Progress progress("index", total, "img");
  int64_t stored = 0, unchanged = 0, failed = 0, failed_but_stored = 0;
  std::unordered_set<std::string> listed;  // every item's SKU
  for (const auto& d : parts) {
    for (int64_t begin = 0; begin < d->size(); begin += a.batch_size) {
      const int64_t end = std::min(d->size(), begin + a.batch_size);
      const auto n = static_cast<size_t>(end - begin);
      std::vector<cv::Mat> images(n);
      std::vector<std::string> errors(n), hashes(n), categories(n), names(n);
      // An item stored before with the same pixels and class is left as it is: a re-run
      // embeds only what changed.
      std::vector<cv::Mat> to_embed;
      std::vector<size_t> embed_at(n, n);  ///< the item's place in to_embed (n: none)
      for (size_t at = 0; at < n; ++at) {
        const int64_t i = begin + static_cast<int64_t>(at);
        names[at] = sku_of(*d, i);
        listed.insert(names[at]);
        if (const auto problem = search::sku_problem(names[at]); !problem.empty()) {
          errors[at] = "its path cannot be a product's SKU (" + problem + "): rename it";
          continue;
        }
        try {
          images[at] = d->image(i);
        } catch (const std::exception& e) {
          errors[at] = e.what();
          continue;
        }
        if (!images[at].isContinuous()) images[at] = images[at].clone();
        hashes[at] = sha256_hex(images[at].data, images[at].total() * images[at].elemSize());
        const auto labels = d->labels(i);
        if (!labels.empty()) categories[at] = d->classes().at(static_cast<size_t>(labels.front()));
        const auto before = db.catalog().image_hashes(names[at]);
        if (before.size() == 1 && before.front().second == hashes[at]) {
          const auto product = db.catalog().find(names[at]);
          if (product && product->category == categories[at]) continue;
        }
        embed_at[at] = to_embed.size();
        to_embed.push_back(images[at]);
      }
      auto embedded = embedder.embed_images(to_embed);
      std::vector<search::ProductUpdate> batch;
      std::vector<std::pair<std::string, std::string>> copies;  ///< PNG copies (path, bytes)
      for (size_t at = 0; at < n; ++at) {
        const std::string& name = names[at];
        if (errors[at].empty() && embed_at[at] == n) {
          report_line({{"sku", name}, {"status", "unchanged"}}, a.quiet);
          ++unchanged;
          continue;
        }
        const std::string error = errors[at].empty() ? embedded[embed_at[at]].error : errors[at];
        if (!error.empty()) {
          report_line({{"sku", name}, {"status", "failed"}, {"error", error}}, a.quiet);
          ++failed;
          failed_but_stored += db.catalog().find(name) ? 1 : 0;  // from an earlier run
          continue;
        }
        search::Product p;
        p.sku = name;
        p.category = categories[at];
        p.title = p.category;
        const cv::Mat& m = images[at];
        const std::string& hash = hashes[at];
        // A photo of a packed data set (Fashion-MNIST's files) is no file of its own: a PNG
        // copy in the database lets `vitrine serve` show it.
        std::string ref = name;
        if (!fs::is_regular_file(name)) {
          ref = (fs::path(db.photo_dir()) / (hash + ".png")).string();
          const auto png = image::encode_png(m);
          copies.emplace_back(ref, std::string(png.begin(), png.end()));
        }
        p.images = {ref};
        batch.push_back({p, {{ref, hash, std::move(embedded[embed_at[at]].embedding)}}});
      }
      // Copies are written before the products that name them are stored, and checked
      // again after: another process may delete a shared one in between.
      auto write_copies = [&] {
        if (!copies.empty()) fs::create_directories(db.photo_dir());
        for (const auto& [path, png] : copies) {
          if (!fs::exists(path)) write_file_atomic(path, png);
        }
      };
      write_copies();
      if (!batch.empty()) db.upsert(batch);
      write_copies();
      for (const auto& u : batch) report_line({{"sku", u.product.sku}, {"status", "stored"}}, a.quiet);
      stored += static_cast<int64_t>(batch.size());
      std::cout.flush();
      progress.advance(end - begin);
    }
  }
  progress.finish();
  db.save();
  spdlog::info("{} stored, {} unchanged, {} failed; the database holds {} products ({} index)",
               stored, unchanged, failed, db.catalog().product_count(),
               db.index() ? db.index()->kind() : "no");
  // Photos moved or deleted since an earlier run leave their products behind.
  const int64_t others = db.catalog().product_count() - stored - unchanged - failed_but_stored;
  if (others > 0) {
    const std::string source =
        a.split == "all" ? a.data.source : a.data.source + " (--split " + a.split + ")";
    note_unlisted_products(db, listed, others, source, a.db);
  }
  return failed > 0 ? kExitSomeFailed : kExitOk;
}

void add_index_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "index", "Embed a product catalogue's images and store them for search (re-run to update)");
  auto a = std::make_shared<IndexArgs>();
  cmd->add_option("--model", a->model, "Model directory that makes the embeddings")->required();
  cmd->add_option("--db", a->db, "Search database folder (created when missing)")->required();
  auto* catalog = cmd->add_option(
      "--catalog", a->catalog,
      "Products CSV: sku,image[s],title,category,price,brand,seller,attributes (+ any columns)");
  catalog->excludes(add_data_split_options(
      cmd, a->data, a->split,
      "Or a data set (ImageFolder root, manifest, fashion-mnist): each image a product, its "
      "class the category",
      {"train", "val", "test", "all"}));
  add_index_options(cmd, a->index);
  a->index.store_search_effort = true;  // --ef-search/--nprobe here: the database's own
  cmd->add_option("--batch-size", a->batch_size, "Images per forward pass (and per commit)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  add_precision_options(cmd, a->precision);
  cmd->add_option("--max-pixels", a->max_pixels, "Refuse larger images (from the header)");
  cmd->add_option("--threads", a->threads, "CPU threads (default: all cores)")
      ->check(non_negative());
  cmd->add_flag("--quiet,-q", a->quiet, "Print only the products that failed or lost unreadable photos");
  cmd->callback([a, &status] {
    VT_CHECK(!a->catalog.empty() || !a->data.source.empty(),
             "give --catalog products.csv or --data SOURCE");
    set_threads(a->threads);
    search::EmbedderOptions eo;
    eo.precision = a->precision;
    eo.max_pixels = a->max_pixels;
    a->data.max_pixels = a->max_pixels;  // --data photos are decoded by the data set
    // The input first: a bad --catalog, --data or --split fails before a database exists.
    std::optional<search::CatalogFile> file;
    std::vector<std::shared_ptr<data::Dataset>> parts;
    if (!a->catalog.empty()) {
      file = search::read_catalog_csv(a->catalog);
    } else {
      parts = data_parts(*a);
    }
    const search::Embedder embedder(a->model, eo);
    auto db = search::SearchDb::open(a->db, a->index);
    if (db->open_report().rebuilt) spdlog::info("index rebuilt: {}", db->open_report().why);
    db->use_model(embedder.stamp());
    db->catalog().set_model_path(fs::absolute(a->model).lexically_normal().string());
    status = file ? index_catalog(*a, *file, *db, embedder) : index_data(*a, parts, *db, embedder);
  });
}

// ---- search ----------------------------------------------------------------------------------

void add_search_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand("search", "Find the products most similar to photos (JSON lines)");
  struct Args {
    std::string db, model, precision = "auto";
    std::vector<std::string> filters, images;
    int64_t k = 10, exact_below = 20'000;
    bool route = false;
    double route_min = 0.5, route_mass = 0.9;
    int64_t route_max = 3;
    search::IndexOptions index;
    int threads = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--db", a->db, "Search database folder (from `vitrine index`)")->required();
  cmd->add_option("--model", a->model, "Model directory (default: the one the database names)");
  cmd->add_option("--k", a->k, "Products per photo")->check(CLI::Range(int64_t{1}, int64_t{10000}));
  cmd->add_option("--filter", a->filters,
                  "Condition on product fields, repeatable: category=shoes, category=a|b, "
                  "price<=100, brand!=acme, attributes.colour=red")
      ->allow_extra_args(false);
  cmd->add_flag("--route-by-category", a->route,
                "Predict the category with the model's head and search inside the likely ones");
  cmd->add_option("--route-min-score", a->route_min,
                  "Route only when the top category's probability reaches this")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--route-mass", a->route_mass,
                  "Search the top categories until their probabilities add up to this")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--route-max", a->route_max, "At most this many categories")
      ->check(CLI::Range(int64_t{1}, int64_t{100}));
  cmd->add_option("--exact-below", a->exact_below,
                  "Score filtered sets of at most this many images exactly")
      ->check(non_negative());
  add_search_effort_options(cmd, a->index);
  add_precision_options(cmd, a->precision);
  cmd->add_option("--threads", a->threads, "CPU threads (default: all cores)")
      ->check(non_negative());
  cmd->add_option("images", a->images, "Query photos (files or folders)")->required();
  cmd->callback([a, &status] {
    set_threads(a->threads);
    const std::vector<search::Filter> filters = search::parse_filters(a->filters);
    auto db = open_existing_db(a->db, a->index);
    for (const auto& why : search::explain_empty_filters(db->catalog(), filters)) {
      spdlog::warn("{}: every search returns nothing", why);
    }
    search::EmbedderOptions eo;
    eo.precision = a->precision;
    eo.top_classes = std::max<int64_t>(eo.top_classes, a->route_max);
    const search::Embedder embedder(model_for(*db, a->model), eo);
    check_same_model(*db, embedder);
    VT_CHECK(!a->route || !embedder.labels().empty(),
             "--route-by-category needs a model with a classification head (this one is a "
             "backbone); fine-tune one on the catalogue's categories with `vitrine train`");
    if (a->route) {  // the model's classes must name catalogue categories for routing to apply
      // In slices: SQLite takes at most 32,766 parameters a statement.
      const auto& labels = embedder.labels();
      bool known = false;
      for (size_t i = 0; i < labels.size() && !known; i += 1000) {
        const search::Filter some{
            "category", "=",
            {labels.begin() + static_cast<std::ptrdiff_t>(i),
             labels.begin() + static_cast<std::ptrdiff_t>(std::min(labels.size(), i + 1000))}};
        known = db->catalog().product_count_where({some}) > 0;
      }
      VT_CHECK(known,
               "--route-by-category: none of the model's classes (",
               embedder.labels().front(), ", ...) is a category of the catalogue; route with "
               "a model fine-tuned on the catalogue's categories");
    }
    std::vector<std::string> warnings;
    const auto paths = image::expand_image_paths(a->images, &warnings);
    for (const auto& w : warnings) spdlog::warn("{}", w);
    VT_CHECK(!paths.empty(), "no query images found in the given paths");
    int64_t failed = 0;
    constexpr size_t kBatch = 32;
    for (size_t begin = 0; begin < paths.size(); begin += kBatch) {
      const std::vector<std::string> chunk(
          paths.begin() + static_cast<std::ptrdiff_t>(begin),
          paths.begin() + static_cast<std::ptrdiff_t>(std::min(paths.size(), begin + kBatch)));
      const auto embedded = embedder.embed_files(chunk);
      for (size_t i = 0; i < chunk.size(); ++i) {
        nlohmann::json line{{"image", chunk[i]}};
        const auto& e = embedded[i];
        if (!e.ok()) {
          line["error"] = e.error;
          ++failed;
          std::cout << json_text(line) << "\n";
          continue;
        }
        search::SearchOptions so;
        so.k = a->k;
        so.filters = filters;
        so.exact_below = a->exact_below;
        const auto search = [&](const search::SearchOptions& o) {
          return db->search(e.embedding.data(), 1, o).front();
        };
        std::vector<search::Hit> hits;
        if (a->route) {
          // Inside the likely categories when the head is sure enough; otherwise, or when
          // they hold too few products, in the whole (filtered) catalogue.
          search::Route how;
          hits = search::routed_search(search, e.top, so,
                                       {a->route_min, a->route_mass, a->route_max}, &how);
          line["route"] = search::route_json(how);
        } else {
          hits = search(so);
        }
        auto& results = line["results"] = nlohmann::json::array();
        for (const auto& h : hits) results.push_back(search::hit_json(h));
        std::cout << json_text(line) << "\n";
      }
      std::cout.flush();
    }
    status = failed > 0 ? kExitSomeFailed : kExitOk;
  });
}

// ---- remove ----------------------------------------------------------------------------------

void add_remove_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand("remove", "Delete products (and their embeddings) for real");
  auto db_dir = std::make_shared<std::string>();
  auto skus = std::make_shared<std::vector<std::string>>();
  cmd->add_option("--db", *db_dir, "Search database folder")->required();
  cmd->add_option("skus", *skus, "SKUs to delete")->required();
  cmd->callback([db_dir, skus, &status] {
    // A SKU named twice is removed once, and reported once.
    std::set<std::string> seen;
    skus->erase(std::remove_if(skus->begin(), skus->end(),
                               [&](const std::string& s) { return !seen.insert(s).second; }),
                skus->end());
    auto db = open_existing_db(*db_dir);
    const auto unknown = db->remove(*skus);
    db->save();
    const std::set<std::string> missing(unknown.begin(), unknown.end());
    for (const auto& sku : *skus) {
      nlohmann::json line{{"sku", sku}, {"status", missing.count(sku) ? "unknown" : "removed"}};
      if (missing.count(sku)) line["error"] = "no product with this SKU in " + *db_dir;
      std::cout << json_text(line) << "\n";
    }
    if (!unknown.empty()) spdlog::warn("{} of {} SKUs were not in the catalogue", unknown.size(), skus->size());
    status = unknown.empty() ? kExitOk : kExitSomeFailed;
  });
}

// ---- duplicates ------------------------------------------------------------------------------


void add_duplicates_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "duplicates", "Groups of near-identical product images across SKUs and sellers");
  struct Args {
    std::string db, format = "json";
    search::DuplicateOptions options;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--db", a->db, "Search database folder")->required();
  cmd->add_option("--threshold", a->options.threshold,
                  "Cosine similarity at or above which two images count as the same")
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            double v = 0;
            if (!CLI::detail::lexical_cast(value, v) || !(v > -1.0 && v <= 1.0)) {
              return "Value " + value + " not in range (-1, 1]";
            }
            return {};
          },
          "FLOAT in (-1, 1]"));
  cmd->add_option("--neighbours", a->options.neighbours, "Candidates looked at per image")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}));
  cmd->add_option("--format", a->format, "json (one group per line) or csv (one image per row)")
      ->check(CLI::IsMember({"json", "csv"}));
  cmd->callback([a, &status] {
    auto db = open_existing_db(a->db);
    const auto groups = search::find_duplicates(*db, a->options);
    if (a->format == "csv") std::cout << "group,sku,seller,title,image,group_max_score,group_min_score\n";
    for (size_t g = 0; g < groups.size(); ++g) {
      const auto& group = groups[g];
      if (a->format == "csv") {
        for (const auto& m : group.members) {
          std::cout << g + 1 << "," << csv_field(m.product.sku) << "," << csv_field(m.product.seller)
                    << "," << csv_field(m.product.title) << "," << csv_field(m.ref) << ","
                    << group.max_score << "," << group.min_score << "\n";
        }
        continue;
      }
      nlohmann::json line{{"group", g + 1},
                          {"max_score", group.max_score},
                          {"min_score", group.min_score}};
      std::set<std::string> skus, sellers;
      auto& members = line["members"] = nlohmann::json::array();
      for (const auto& m : group.members) {
        members.push_back({{"sku", m.product.sku}, {"seller", m.product.seller},
                           {"title", m.product.title}, {"image", m.ref}});
        skus.insert(m.product.sku);
        sellers.insert(m.product.seller);
      }
      line["skus"] = skus.size();
      line["sellers"] = sellers.size();
      std::cout << json_text(line) << "\n";
    }
    spdlog::info("{} group{} of near-identical images at similarity >= {}", groups.size(),
                 groups.size() == 1 ? "" : "s",
                 a->options.threshold);
    // Copies come in twos and threes; a group of dozens is a category the model packs
    // tightly, not one photo listed dozens of times.
    size_t largest = 0;
    for (const auto& g : groups) largest = std::max(largest, g.members.size());
    if (largest >= 20) {
      spdlog::warn("the largest group holds {} photos: at --threshold {} this model links "
                   "whole sets of similar products, not copies; {} and check it on a few known "
                   "copies",
                   largest, a->options.threshold,
                   a->options.threshold < 0.99
                       ? "raise --threshold (0.99 or more for a classifier fine-tuned on the "
                         "categories)"
                       : "its embeddings put these products as close as copies: raise "
                         "--threshold nearer 1 (0.9999), or use a model that tells them apart "
                         "(one fine-tuned on your products)");
    }
    status = kExitOk;
  });
}

// ---- eval-retrieval --------------------------------------------------------------------------

/// Thumbnails of photos named by file path or by a data set's item names, as PNG base64.
class Thumbnails {
 public:
  void add(const data::DataSplits& splits) {
    for (const auto& d : {splits.train, splits.val, splits.test}) {
      if (!d) continue;
      for (int64_t i = 0; i < d->size(); ++i) items_[d->name(i)] = {d, i};
    }
  }
  /// Empty when the photo cannot be read (the report shows the caption alone).
  std::string png(const std::string& ref) const {
    try {
      cv::Mat image;
      if (const auto it = items_.find(ref); it != items_.end()) {
        image = it->second.first->image(it->second.second);
      } else {
        image = image::decode_file(ref);
      }
      const int side = std::max(image.cols, image.rows);
      if (side > 128) {
        const double f = 128.0 / side;
        cv::resize(image, image, cv::Size(), f, f, cv::INTER_AREA);
      }
      return train::png_base64(image);
    } catch (const std::exception&) {
      return {};
    }
  }

 private:
  std::map<std::string, std::pair<std::shared_ptr<data::Dataset>, int64_t>> items_;
};

struct Query {
  std::string image;               ///< file path (or data-set item name)
  std::set<std::string> skus;      ///< relevant SKUs, or
  std::string category;            ///< relevant category
};

std::vector<Query> read_queries(const std::string& source) {
  std::vector<Query> out;
  if (fs::is_directory(source)) {
    // <dir>/<category>/<photo>: relevant = products of that category.
    std::vector<std::string> warnings;
    for (const auto& entry : fs::directory_iterator(source)) {
      if (!entry.is_directory()) continue;
      for (const auto& p : image::expand_image_paths({entry.path().string()}, &warnings)) {
        out.push_back({p, {}, entry.path().filename().string()});
      }
    }
    std::sort(out.begin(), out.end(), [](const Query& x, const Query& y) { return x.image < y.image; });
    VT_CHECK(!out.empty(), "no query photos in ", source, " (expected ", source,
             "/<category>/<photo>)");
    return out;
  }
  for (const auto& q : search::read_query_csv(source)) out.push_back({q.image, q.skus, q.category});
  return out;
}

void add_eval_retrieval_command(CLI::App& app, int& status) {
  auto* cmd = app.add_subcommand(
      "eval-retrieval", "Recall@1/5/10, precision@10 and mAP@10 of queries with known answers");
  struct Args {
    std::string db, model, queries, split = "test", json_path, report_path, precision = "auto";
    data::DataOptions data;
    int64_t batch_size = 64, limit = 0, examples = 12;
    search::IndexOptions index;
    int threads = 0;
    bool keep_self = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--db", a->db, "Search database folder")->required();
  cmd->add_option("--model", a->model, "Model directory (default: the one the database names)");
  auto* queries = cmd->add_option(
      "--queries", a->queries,
      "CSV (image + sku (| for several) or category column) or a folder <category>/<photo>");
  queries->excludes(add_data_split_options(
      cmd, a->data, a->split,
      "Or a data set: its --split images are the queries, their class the relevant category",
      {"train", "val", "test"}));
  cmd->add_option("--limit", a->limit, "Use only the first N queries (0: all)");
  cmd->add_flag("--keep-self", a->keep_self,
                "Let a query photo that the catalogue holds find itself (left out by default)");
  cmd->add_option("--json", a->json_path, "Also write the metrics as JSON");
  cmd->add_option("--report", a->report_path,
                  "Also write an HTML page: metrics and example queries with their results");
  cmd->add_option("--examples", a->examples, "Example queries in the report")
      ->check(CLI::Range(int64_t{0}, int64_t{1000}));
  add_search_effort_options(cmd, a->index);
  add_precision_options(cmd, a->precision);
  cmd->add_option("--threads", a->threads, "CPU threads (default: all cores)")
      ->check(non_negative());
  cmd->callback([a, &status] {
    VT_CHECK(!a->queries.empty() || !a->data.source.empty(), "give --queries or --data");
    set_threads(a->threads);
    auto db = open_existing_db(a->db, a->index);
    search::EmbedderOptions eo;
    eo.precision = a->precision;
    // A query file is found in the catalogue by its bytes, or by its pixels as `index --data`
    // hashed them, or as the PNG copy `serve` (or `index` of a packed data set) keeps.
    std::error_code ec;
    eo.pixel_hashes = true;
    eo.png_hash = fs::is_directory(db->photo_dir(), ec) && !fs::is_empty(db->photo_dir(), ec);
    const search::Embedder embedder(model_for(*db, a->model), eo);
    check_same_model(*db, embedder);
    std::vector<Query> list;
    std::shared_ptr<data::Dataset> dataset;
    Thumbnails thumbnails;
    if (!a->queries.empty()) {
      list = read_queries(a->queries);
    } else {
      const auto splits = open_data_logged(a->data);
      dataset = pick_split(splits, a->split);
      if (!a->report_path.empty()) thumbnails.add(splits);
      for (int64_t i = 0; i < dataset->size(); ++i) {
        const auto labels = dataset->labels(i);
        list.push_back({dataset->name(i), {},
                        labels.empty() ? "" : dataset->classes().at(static_cast<size_t>(labels[0]))});
      }
    }
    if (a->limit > 0 && static_cast<int64_t>(list.size()) > a->limit) list.resize(static_cast<size_t>(a->limit));
    // How many products each query could find.
    std::map<std::string, int64_t> per_category;
    std::set<std::string> unknown;  ///< SKUs and categories queries name that are not stored
    auto relevant_total = [&](const Query& q) -> int64_t {
      if (!q.skus.empty()) {
        int64_t n = 0;
        for (const auto& s : q.skus) {
          const bool stored = db->catalog().find(s).has_value();
          if (!stored) unknown.insert("SKU '" + s + "'");
          n += stored ? 1 : 0;
        }
        return n;
      }
      auto it = per_category.find(q.category);
      if (it == per_category.end()) {
        it = per_category.emplace(q.category, db->catalog().product_count_where(
                                                  {search::Filter{"category", "=", {q.category}}}))
                 .first;
      }
      if (it->second == 0) unknown.insert("category '" + q.category + "'");
      return it->second;
    };
    search::RetrievalEvaluator evaluator;
    // Example queries for the report, spread over the list.
    std::map<size_t, std::vector<search::Hit>> examples;
    if (!a->report_path.empty() && !list.empty()) {
      const auto n = std::min<size_t>(static_cast<size_t>(a->examples), list.size());
      for (size_t e = 0; e < n; ++e) examples[e * list.size() / n] = {};
    }
    int64_t failed = 0, found_self = 0, only_self = 0;
    Progress progress("eval-retrieval", static_cast<int64_t>(list.size()), "query");
    for (size_t begin = 0; begin < list.size(); begin += static_cast<size_t>(a->batch_size)) {
      const size_t end = std::min(list.size(), begin + static_cast<size_t>(a->batch_size));
      std::vector<search::Embedded> embedded;
      if (dataset) {
        // An unreadable photo fails its query alone, as in `index --data`.
        std::vector<cv::Mat> images;
        std::vector<size_t> read;  ///< the items of this batch that decoded
        embedded.resize(end - begin);
        for (size_t i = begin; i < end; ++i) {
          try {
            images.push_back(dataset->image(static_cast<int64_t>(i)));
            read.push_back(i - begin);
          } catch (const std::exception& e) {
            embedded[i - begin].error = e.what();
          }
        }
        auto good = embedder.embed_images(images);
        // Hashed as `vitrine index --data` hashes them: their decoded pixels.
        for (size_t g = 0; g < good.size(); ++g) {
          const cv::Mat m = images[g].isContinuous() ? images[g] : images[g].clone();
          good[g].content_hash = sha256_hex(m.data, m.total() * m.elemSize());
          embedded[read[g]] = std::move(good[g]);
        }
      } else {
        std::vector<std::string> paths;
        for (size_t i = begin; i < end; ++i) paths.push_back(list[i].image);
        embedded = embedder.embed_files(paths);
      }
      std::vector<float> batch;
      std::vector<size_t> which;
      search::SearchOptions so;
      so.k = 10;
      std::vector<std::vector<int64_t>> own_images;  ///< per query: its photo in the catalogue
      for (size_t i = 0; i < embedded.size(); ++i) {
        if (!embedded[i].ok()) {
          spdlog::warn("{}", embedded[i].error);
          ++failed;
          continue;
        }
        batch.insert(batch.end(), embedded[i].embedding.begin(), embedded[i].embedding.end());
        which.push_back(begin + i);
        // The query photo itself, when the catalogue holds it, is no answer. Asked by SKU,
        // only its copies under those SKUs are its own: the same photo under another SKU
        // (a duplicate listing) is a wrong answer the figures must count.
        const std::string& hash = embedded[i].content_hash;
        std::vector<int64_t> own;
        if (!hash.empty()) own = db->catalog().image_ids_with_hash(hash);
        for (const auto& pixels : embedded[i].pixel_hashes) {
          if (!own.empty()) break;
          own = db->catalog().image_ids_with_hash(pixels);
        }
        const auto& skus = list[begin + i].skus;
        if (!own.empty() && !skus.empty()) {
          std::vector<int64_t> theirs;
          for (const auto& r : db->catalog().images(own)) {
            if (skus.count(r.product.sku)) theirs.push_back(r.id);
          }
          own = std::move(theirs);
        }
        own_images.push_back(std::move(own));
      }
      if (!a->keep_self) so.exclude_images = own_images;
      const auto hits = db->search(batch.data(), static_cast<int64_t>(which.size()), so);
      for (size_t j = 0; j < which.size(); ++j) {
        const Query& q = list[which[j]];
        std::vector<bool> relevant;
        for (const auto& h : hits[j]) {
          relevant.push_back(q.skus.empty() ? h.product.category == q.category
                                            : q.skus.count(h.product.sku) > 0);
        }
        int64_t total = relevant_total(q);
        const auto& own = own_images[j];
        if (!own.empty()) ++found_self;
        if (!own.empty() && !a->keep_self) {
          // A relevant product whose every image is the query photo cannot be found.
          std::map<std::string, size_t> excluded_of;
          std::map<std::string, search::Product> products;  // with all their images
          for (const auto& r : db->catalog().images(own)) {
            ++excluded_of[r.product.sku];
            products[r.product.sku] = r.product;
          }
          for (const auto& [sku, n] : excluded_of) {
            const auto& p = products[sku];
            const bool is_relevant = q.skus.empty() ? p.category == q.category : q.skus.count(sku);
            if (is_relevant && n >= p.images.size()) --total;
          }
          if (total == 0) {
            ++only_self;  // nothing to find but itself
            continue;
          }
        }
        evaluator.add(relevant, total, q.skus.empty() ? q.category : "(by SKU)");
        if (const auto it = examples.find(which[j]); it != examples.end()) it->second = hits[j];
      }
      progress.advance(static_cast<int64_t>(end - begin));
    }
    progress.finish();
    const auto m = evaluator.result();
    VT_CHECK(m.queries > 0, "no query could be scored (", failed, " failed to load, ", only_self,
             " have no answer but their own photo); check the queries against --db",
             only_self > 0 ? ", or add --keep-self to count a query's own photo as an answer"
                           : "");
    if (!unknown.empty()) {
      spdlog::warn("{} of the queries' answers are not in the catalogue ({}); queries with no "
                   "stored answer count as misses: check the query file against --db",
                   unknown.size(), quoted_list({unknown.begin(), unknown.end()}, ""));
    }
    if (found_self > 0) {
      spdlog::info("{} of the query photos {} in the catalogue themselves: {}", found_self,
                   found_self == 1 ? "is" : "are",
                   a->keep_self ? "kept as answers (--keep-self)"
                                : "left out of their own results (--keep-self keeps them)");
    }
    if (only_self > 0) {
      spdlog::warn("{} queries have no answer in the catalogue but their own photo: they are "
                   "not scored", only_self);
    }
    std::printf("queries %lld (%lld failed), catalogue %lld products, %s index\n",
                static_cast<long long>(m.queries), static_cast<long long>(failed),
                static_cast<long long>(db->catalog().product_count()),
                db->index() ? db->index()->kind().c_str() : "no");
    std::printf("Recall@1 %.4f  Recall@5 %.4f  Recall@10 %.4f  precision@10 %.4f  mAP@10 %.4f\n",
                m.recall_at_1, m.recall_at_5, m.recall_at_10, m.precision_at_10, m.map_at_10);
    if (m.precision_at_10_by_group.size() > 1) {
      std::printf("%-24s %8s %13s\n", "category", "queries", "precision@10");
      for (const auto& [g, p] : m.precision_at_10_by_group) {
        std::printf("%s %8lld %13.4f\n", pad_right(g, 24).c_str(),
                    static_cast<long long>(m.queries_by_group.at(g)), p);
      }
    }
    if (!a->report_path.empty()) {
      train::RetrievalReport report;
      report.title = "Retrieval: " + (a->queries.empty() ? a->data.source + " " + a->split
                                                          : a->queries) +
                     " against " + db->dir();
      report.facts = {{"model", db->model() ? db->model()->id : ""},
                      {"catalogue", std::to_string(db->catalog().product_count()) + " products, " +
                                        (db->index() ? db->index()->kind() : "no") + " index"},
                      {"queries", std::to_string(m.queries) + " (" + std::to_string(failed) +
                                      " could not be read)"}};
      report.metrics = {{"Recall@1", m.recall_at_1},   {"Recall@5", m.recall_at_5},
                        {"Recall@10", m.recall_at_10}, {"precision@10", m.precision_at_10},
                        {"mAP@10", m.map_at_10}};
      for (const auto& [g, p] : m.precision_at_10_by_group) {
        report.groups.emplace_back(g, m.queries_by_group.at(g), p);
      }
      for (const auto& [i, hits] : examples) {
        const Query& q = list[i];
        train::RetrievalExample ex;
        ex.query.caption = q.skus.empty() ? q.category : *q.skus.begin();
        ex.query.image_png_base64 = thumbnails.png(q.image);
        for (size_t r = 0; r < hits.size() && r < 8; ++r) {
          const auto& h = hits[r];
          ex.results.push_back({thumbnails.png(h.image),
                                h.product.sku + (h.product.category.empty() ? "" : " · " +
                                                 h.product.category),
                                h.score,
                                q.skus.empty() ? h.product.category == q.category
                                               : q.skus.count(h.product.sku) > 0});
        }
        report.examples.push_back(std::move(ex));
      }
      train::write_retrieval_report(a->report_path, report);
      spdlog::info("report: {}", a->report_path);
    }
    if (!a->json_path.empty()) {
      nlohmann::json j{{"queries", m.queries},         {"failed", failed},
                       {"found_self", found_self}, {"keep_self", a->keep_self},
                       {"only_self", only_self},
                       {"recall_at_1", m.recall_at_1}, {"recall_at_5", m.recall_at_5},
                       {"recall_at_10", m.recall_at_10}, {"precision_at_10", m.precision_at_10},
                       {"map_at_10", m.map_at_10},
                       {"precision_at_10_by_category", m.precision_at_10_by_group},
                       {"queries_by_category", m.queries_by_group},
                       {"products", db->catalog().product_count()},
                       {"index", db->index() ? db->index()->kind() : ""},
                       {"model", db->model() ? db->model()->id : ""}};
      write_file_atomic(a->json_path, j.dump(2) + "\n");
    }
    status = failed > 0 ? kExitSomeFailed : kExitOk;
  });
}

}  // namespace

void add_search_commands(CLI::App& app, int& status) {
  add_index_command(app, status);
  add_search_command(app, status);
  add_remove_command(app, status);
  add_duplicates_command(app, status);
  add_eval_retrieval_command(app, status);
}

}  // namespace vitrine::cli
