// The catalogue in one SQLite file (WAL journal). Schema version 1 (PRAGMA user_version):
//   meta(key, value)            model_id, model_version, model_dim
//   products(id, sku UNIQUE, title, category, price, brand, seller, attributes JSON, updated_at)
//   images(id, product_id -> products ON DELETE CASCADE, position, ref, content_hash,
//          embedding BLOB of dim little-endian float32)
//   changes(seq, image_id, removed)  written by triggers on images, so no code path that
//                                    adds or deletes an image can forget it
// Ids come from AUTOINCREMENT and are never reused: a vector index may hold an id only as
// long as the image exists.
#include "vitrine/search/catalog.h"

#include "vitrine/core/error.h"
#include "vitrine/core/text.h"

#include <nlohmann/json.hpp>
#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

namespace vitrine::search {

std::string model_mismatch(const ModelStamp& stored, const ModelStamp& given) {
  const auto described = [](const ModelStamp& m) {
    return m.id + " (version " + m.version.substr(0, 12) + ", " + std::to_string(m.dim) +
           " dims)";
  };
  if (stored.id == given.id) {
    return "model " + described(stored) + ", not with the model given, also named " +
           given.id + " but version " + given.version.substr(0, 12) + " (other weights or " +
           "preprocessing: another directory of that name, or the model retrained or edited in " +
           "place, which is another model)";
  }
  return "model " + described(stored) + ", not with " + described(given);
}
namespace {

constexpr int kSchemaVersion = 1;

const char* const kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  sku TEXT NOT NULL UNIQUE,
  title TEXT NOT NULL DEFAULT '',
  category TEXT NOT NULL DEFAULT '',
  price REAL,
  brand TEXT NOT NULL DEFAULT '',
  seller TEXT NOT NULL DEFAULT '',
  attributes TEXT NOT NULL DEFAULT '{}',
  updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));
CREATE INDEX IF NOT EXISTS products_category ON products(category);
CREATE TABLE IF NOT EXISTS images(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  product_id INTEGER NOT NULL REFERENCES products(id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  ref TEXT NOT NULL,
  content_hash TEXT NOT NULL,
  embedding BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS images_product ON images(product_id);
CREATE INDEX IF NOT EXISTS images_hash ON images(content_hash);
CREATE TABLE IF NOT EXISTS changes(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  image_id INTEGER NOT NULL,
  removed INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS images_added AFTER INSERT ON images
  BEGIN INSERT INTO changes(image_id, removed) VALUES (NEW.id, 0); END;
CREATE TRIGGER IF NOT EXISTS images_removed AFTER DELETE ON images
  BEGIN INSERT INTO changes(image_id, removed) VALUES (OLD.id, 1); END;
)sql";

class Statement {
 public:
  Statement(sqlite3* db, const std::string& sql) : db_(db) {
    const int rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt_, nullptr);
    VT_CHECK(rc == SQLITE_OK, "catalogue: cannot prepare a query (", sqlite3_errmsg(db), ")");
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int i, const std::string& v) {
    check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    return *this;
  }
  Statement& bind(int i, int64_t v) {
    check(sqlite3_bind_int64(stmt_, i, v));
    return *this;
  }
  Statement& bind(int i, double v) {
    check(sqlite3_bind_double(stmt_, i, v));
    return *this;
  }
  Statement& bind(int i, const std::optional<double>& v) {
    check(v ? sqlite3_bind_double(stmt_, i, *v) : sqlite3_bind_null(stmt_, i));
    return *this;
  }
  Statement& bind_blob(int i, const void* data, size_t size) {
    check(sqlite3_bind_blob64(stmt_, i, data, size, SQLITE_TRANSIENT));
    return *this;
  }
  /// True while rows come; false when done.
  bool step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    VT_CHECK(rc == SQLITE_DONE, "catalogue: ", sqlite3_errmsg(db_),
             rc == SQLITE_FULL ? " (the disk is full: free space and run again)" : "");
    return false;
  }
  void run() {
    while (step()) {
    }
  }
  void reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  int64_t int64(int col) const { return sqlite3_column_int64(stmt_, col); }
  bool is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  double real(int col) const { return sqlite3_column_double(stmt_, col); }
  std::string text(int col) const {
    const auto* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
             : std::string();
  }
  const void* blob(int col, size_t* size) const {
    const void* p = sqlite3_column_blob(stmt_, col);
    *size = static_cast<size_t>(sqlite3_column_bytes(stmt_, col));
    return p;
  }

 private:
  void check(int rc) { VT_CHECK(rc == SQLITE_OK, "catalogue: ", sqlite3_errmsg(db_)); }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

const char* const kProductColumns =
    "p.sku, p.title, p.category, p.price, p.brand, p.seller, p.attributes";

Product read_product(const Statement& s, int col) {
  Product p;
  p.sku = s.text(col);
  p.title = s.text(col + 1);
  p.category = s.text(col + 2);
  if (!s.is_null(col + 3)) p.price = s.real(col + 3);
  p.brand = s.text(col + 4);
  p.seller = s.text(col + 5);
  p.attributes = s.text(col + 6);
  return p;
}

bool parse_number(const std::string& text, double* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  *out = std::strtod(text.c_str(), &end);
  // nan, inf and 1e999 are no prices or sizes (the catalogue CSV refuses them too).
  return end == text.c_str() + text.size() && std::isfinite(*out);
}

class SqliteCatalog : public Catalog {
 public:
  explicit SqliteCatalog(const std::string& path) : path_(path) {
    const int rc = sqlite3_open_v2(path.c_str(), &db_,
                                   SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                       SQLITE_OPEN_FULLMUTEX,
                                   nullptr);
    if (rc != SQLITE_OK) {
      const std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      VT_FAIL("cannot open the catalogue ", path, ": ", why,
              " (is the folder writable and the file a Vitrine catalogue?)");
    }
    sqlite3_busy_timeout(db_, 10000);
    try {
      // A file that is not a database fails here, at the first read.
      const int version = static_cast<int>(query_int("PRAGMA user_version"));
      VT_CHECK(version <= kSchemaVersion, "the catalogue ", path, " has schema version ",
               version, ", newer than this build of Vitrine reads (", kSchemaVersion,
               "): upgrade Vitrine");
      // auto_vacuum must be chosen before anything is written, the WAL journal included.
      if (version == 0) exec("PRAGMA auto_vacuum=INCREMENTAL");
      exec("PRAGMA journal_mode=WAL");
      // FULL: a commit reported (a product "stored") survives a power loss too, not only a
      // killed process; WAL's NORMAL may roll the last commits back then.
      exec("PRAGMA synchronous=FULL");
      exec("PRAGMA foreign_keys=ON");
      if (version == 0) {
        exec("BEGIN");
        exec(kSchema);
        exec("PRAGMA user_version=" + std::to_string(kSchemaVersion));
        exec("COMMIT");
      }
    } catch (const Error& e) {
      sqlite3_close(db_);
      db_ = nullptr;
      VT_FAIL("cannot use ", path, " as a catalogue: ", e.what());
    }
  }
  ~SqliteCatalog() override { sqlite3_close(db_); }

  std::optional<ModelStamp> model() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return model_locked();
  }

  void set_model(const ModelStamp& model) override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto current = model_locked();
    if (current && *current == model) return;
    if (current && image_count_locked() > 0) {
      VT_FAIL("the catalogue ", path_, " holds embeddings of ", model_mismatch(*current, model),
              ". One index never mixes models: use the catalogue's model, or index into a new "
              "--db");
    }
    Transaction tx(this);
    Statement s(db_, "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)");
    for (const auto& [k, v] : std::map<std::string, std::string>{
             {"model_id", model.id},
             {"model_version", model.version},
             {"model_dim", std::to_string(model.dim)}}) {
      s.bind(1, k).bind(2, v).run();
      s.reset();
    }
    tx.commit();
  }

  std::string model_path() const override {
    std::lock_guard<std::mutex> lock(mu_);
    Statement s(db_, "SELECT value FROM meta WHERE key = 'model_path'");
    return s.step() ? s.text(0) : std::string();
  }
  void set_model_path(const std::string& path) override {
    std::lock_guard<std::mutex> lock(mu_);
    Statement s(db_, "INSERT OR REPLACE INTO meta(key, value) VALUES ('model_path', ?)");
    s.bind(1, path).run();
  }

  void upsert(const std::vector<ProductUpdate>& batch) override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto stamp = model_locked();
    VT_CHECK(stamp, "catalogue: set the model before storing embeddings");
    Transaction tx(this);
    Statement find(db_, "SELECT id FROM products WHERE sku = ?");
    Statement insert(db_,
                     "INSERT INTO products(sku, title, category, price, brand, seller, "
                     "attributes) VALUES (?, ?, ?, ?, ?, ?, ?)");
    Statement update(db_, kUpdateDetails);
    Statement old_images(db_, "SELECT id, ref, content_hash FROM images WHERE product_id = ?");
    Statement drop_image(db_, "DELETE FROM images WHERE id = ?");
    Statement move_image(db_, "UPDATE images SET position = ? WHERE id = ?");
    Statement add_image(db_,
                        "INSERT INTO images(product_id, position, ref, content_hash, embedding) "
                        "VALUES (?, ?, ?, ?, ?)");
    for (const auto& u : batch) {
      // Text fields composed (NFC), as filters are: "Crème" from a Mac's export and "Crème"
      // typed in a filter are one value. SKUs are identifiers, kept byte for byte.
      Product p = u.product;
      compose_text_fields(p);
      VT_CHECK(!p.sku.empty(), "catalogue: a product without a SKU cannot be stored");
      check_attributes(p);
      int64_t id = 0;
      find.bind(1, p.sku);
      if (find.step()) id = find.int64(0);
      find.reset();
      if (id == 0) {
        insert.bind(1, p.sku).bind(2, p.title).bind(3, p.category).bind(4, p.price);
        insert.bind(5, p.brand).bind(6, p.seller).bind(7, p.attributes).run();
        insert.reset();
        id = sqlite3_last_insert_rowid(db_);
      } else {
        bind_details(update, p).bind(7, id).run();
        update.reset();
      }
      // Keep images whose reference and content are unchanged (their ids stay valid in
      // the vector index); drop the others and add the new ones.
      std::map<std::pair<std::string, std::string>, int64_t> kept;
      old_images.bind(1, id);
      while (old_images.step()) {
        kept[{old_images.text(1), old_images.text(2)}] = old_images.int64(0);
      }
      old_images.reset();
      std::vector<std::pair<int64_t, const ImageEntry*>> to_add;
      std::vector<std::pair<int64_t, int64_t>> to_move;
      for (size_t i = 0; i < u.images.size(); ++i) {
        const auto& img = u.images[i];
        const auto it = kept.find({img.ref, img.content_hash});
        if (it != kept.end()) {
          to_move.emplace_back(static_cast<int64_t>(i), it->second);
          kept.erase(it);
        } else {
          VT_CHECK(static_cast<int64_t>(img.embedding.size()) == stamp->dim,
                   "catalogue: image ", img.ref, " of ", p.sku, " has an embedding of ",
                   img.embedding.size(), " values; the catalogue's model makes ", stamp->dim);
          to_add.emplace_back(static_cast<int64_t>(i), &img);
        }
      }
      for (const auto& [key, image_id] : kept) {
        drop_image.bind(1, image_id).run();
        drop_image.reset();
      }
      for (const auto& [position, image_id] : to_move) {
        move_image.bind(1, position).bind(2, image_id).run();
        move_image.reset();
      }
      for (const auto& [position, img] : to_add) {
        add_image.bind(1, id).bind(2, position).bind(3, img->ref).bind(4, img->content_hash);
        add_image.bind_blob(5, img->embedding.data(), img->embedding.size() * sizeof(float));
        add_image.run();
        add_image.reset();
      }
    }
    tx.commit();
  }

  std::optional<Product> update_details(const std::string& sku,
                                        const std::function<void(Product&)>& change) override {
    std::lock_guard<std::mutex> lock(mu_);
    Transaction tx(this);  // read and write as one: no other writer comes between
    int64_t id = 0;
    std::optional<Product> found = find_locked(sku, &id);
    if (!found) return std::nullopt;
    Product p = *found;
    change(p);
    p.sku = sku;
    p.images = found->images;
    compose_text_fields(p);
    check_attributes(p);
    Statement update(db_, kUpdateDetails);
    bind_details(update, p).bind(7, id).run();
    tx.commit();
    return p;
  }

  std::vector<std::string> remove(const std::vector<std::string>& skus) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> unknown;
    Transaction tx(this);
    Statement del(db_, "DELETE FROM products WHERE sku = ?");
    for (const auto& sku : skus) {
      del.bind(1, sku).run();
      if (sqlite3_changes(db_) == 0) unknown.push_back(sku);
      del.reset();
    }
    tx.commit();
    return unknown;
  }

  void reclaim_space() override {
    std::lock_guard<std::mutex> lock(mu_);
    exec("PRAGMA incremental_vacuum");
    exec("PRAGMA wal_checkpoint(TRUNCATE)");
  }

  std::optional<Product> find(const std::string& sku) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return find_locked(sku);
  }

  /// find() under mu_ held; `id`, when given, receives the product's row id.
  std::optional<Product> find_locked(const std::string& sku, int64_t* id = nullptr) const {
    Statement s(db_, std::string("SELECT ") + kProductColumns + ", p.id FROM products p WHERE sku = ?");
    s.bind(1, sku);
    if (!s.step()) return std::nullopt;
    Product p = read_product(s, 0);
    const int64_t row = s.int64(7);
    if (id != nullptr) *id = row;
    Statement imgs(db_, "SELECT ref FROM images WHERE product_id = ? ORDER BY position");
    imgs.bind(1, row);
    while (imgs.step()) p.images.push_back(imgs.text(0));
    return p;
  }

  std::vector<Product> list(const std::vector<Filter>& filters, int64_t offset,
                            int64_t limit) const override {
    VT_CHECK(offset >= 0 && limit >= 0, "offset and limit must not be negative");
    std::lock_guard<std::mutex> lock(mu_);
    auto s = filtered(std::string("SELECT ") + kProductColumns + ", p.id FROM products p", filters,
                      " ORDER BY p.id LIMIT " + std::to_string(limit) + " OFFSET " +
                          std::to_string(offset));
    std::vector<Product> out;
    std::vector<int64_t> ids;
    while (s->step()) {
      out.push_back(read_product(*s, 0));
      ids.push_back(s->int64(7));
    }
    Statement imgs(db_, "SELECT ref FROM images WHERE product_id = ? ORDER BY position");
    for (size_t i = 0; i < out.size(); ++i) {
      imgs.bind(1, ids[i]);
      while (imgs.step()) out[i].images.push_back(imgs.text(0));
      imgs.reset();
    }
    return out;
  }

  std::vector<std::pair<std::string, std::string>> image_hashes(
      const std::string& sku) const override {
    std::lock_guard<std::mutex> lock(mu_);
    Statement s(db_,
                "SELECT i.ref, i.content_hash FROM images i JOIN products p ON p.id = "
                "i.product_id WHERE p.sku = ? ORDER BY i.position");
    s.bind(1, sku);
    std::vector<std::pair<std::string, std::string>> out;
    while (s.step()) out.emplace_back(s.text(0), s.text(1));
    return out;
  }

  std::vector<int64_t> image_ids_with_hash(const std::string& hash) const override {
    std::lock_guard<std::mutex> lock(mu_);
    Statement s(db_, "SELECT id FROM images WHERE content_hash = ? ORDER BY id");
    s.bind(1, hash);
    std::vector<int64_t> out;
    while (s.step()) out.push_back(s.int64(0));
    return out;
  }

  int64_t product_count() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return query_int("SELECT COUNT(*) FROM products");
  }
  int64_t image_count() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return image_count_locked();
  }
  int64_t max_images_per_product() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return query_int(
        "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM images GROUP BY product_id)");
  }

  std::vector<int64_t> image_ids(const std::vector<Filter>& filters) const override {
    std::lock_guard<std::mutex> lock(mu_);
    auto s = filtered(
        "SELECT i.id FROM images i JOIN products p ON p.id = i.product_id", filters,
        " ORDER BY i.id");
    std::vector<int64_t> ids;
    while (s->step()) ids.push_back(s->int64(0));
    return ids;
  }

  int64_t product_count_where(const std::vector<Filter>& filters) const override {
    std::lock_guard<std::mutex> lock(mu_);
    auto s = filtered("SELECT COUNT(*) FROM products p", filters, "");
    return s->step() ? s->int64(0) : 0;
  }

  bool has_attribute(const std::string& key) const override {
    std::lock_guard<std::mutex> lock(mu_);
    Statement s(db_, "SELECT 1 FROM products WHERE json_type(attributes, ?) IS NOT NULL LIMIT 1");
    s.bind(1, attribute_path(key));
    return s.step();
  }

  std::vector<ImageRecord> images(const std::vector<int64_t>& ids) const override {
    std::lock_guard<std::mutex> lock(mu_);
    Statement s(db_, std::string("SELECT i.ref, ") + kProductColumns +
                         ", p.id FROM images i JOIN products p ON p.id = i.product_id WHERE i.id = ?");
    Statement imgs(db_, "SELECT ref FROM images WHERE product_id = ? ORDER BY position");
    std::map<int64_t, std::vector<std::string>> refs_of;  ///< each product's images, once
    std::vector<ImageRecord> out;
    out.reserve(ids.size());
    for (const int64_t id : ids) {
      s.bind(1, id);
      if (s.step()) {
        out.push_back({id, s.text(0), read_product(s, 1)});
        const int64_t product = s.int64(8);
        auto it = refs_of.find(product);
        if (it == refs_of.end()) {
          it = refs_of.emplace(product, std::vector<std::string>{}).first;
          imgs.bind(1, product);
          while (imgs.step()) it->second.push_back(imgs.text(0));
          imgs.reset();
        }
        out.back().product.images = it->second;
      }
      s.reset();
    }
    return out;
  }

  std::vector<float> embeddings(const std::vector<int64_t>& ids) const override {
    std::vector<int64_t> stored = ids;
    auto out = stored_embeddings(stored);
    if (stored.size() != ids.size()) {  // `stored` keeps the order of `ids`
      size_t first_missing = 0;
      while (first_missing < stored.size() && stored[first_missing] == ids[first_missing]) {
        ++first_missing;
      }
      VT_FAIL("catalogue: image ", ids[first_missing], " is not stored");
    }
    return out;
  }

  std::vector<float> stored_embeddings(std::vector<int64_t>& ids) const override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto stamp = model_locked();
    VT_CHECK(stamp, "catalogue: no embeddings stored yet");
    const auto dim = static_cast<size_t>(stamp->dim);
    std::vector<float> out;
    out.reserve(ids.size() * dim);
    std::vector<int64_t> kept;
    Statement s(db_, "SELECT embedding FROM images WHERE id = ?");
    for (const int64_t id : ids) {
      s.bind(1, id);
      if (s.step()) {
        out.resize((kept.size() + 1) * dim);
        copy_embedding(s, 0, *stamp, out.data() + kept.size() * dim);
        kept.push_back(id);
      }
      s.reset();
    }
    ids = std::move(kept);
    return out;
  }

  void scan_embeddings(int64_t batch,
                       const std::function<void(const std::vector<int64_t>&,
                                                const std::vector<float>&)>& fn) const override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto stamp = model_locked();
    if (!stamp) return;
    const auto dim = static_cast<size_t>(stamp->dim);
    Statement s(db_, "SELECT id, embedding FROM images ORDER BY id");
    std::vector<int64_t> ids;
    std::vector<float> values;
    while (s.step()) {
      ids.push_back(s.int64(0));
      values.resize(ids.size() * dim);
      copy_embedding(s, 1, *stamp, values.data() + (ids.size() - 1) * dim);
      if (static_cast<int64_t>(ids.size()) == batch) {
        fn(ids, values);
        ids.clear();
        values.clear();
      }
    }
    if (!ids.empty()) fn(ids, values);
  }

  int64_t last_change() const override {
    std::lock_guard<std::mutex> lock(mu_);
    // The counter, not the table: the log may have been trimmed to nothing.
    return query_int(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)");
  }
  int64_t first_change() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return query_int("SELECT COALESCE(MIN(seq), 0) FROM changes");
  }
  std::vector<Change> changes_since(int64_t seq) const override {
    std::lock_guard<std::mutex> lock(mu_);
    Statement s(db_, "SELECT seq, image_id, removed FROM changes WHERE seq > ? ORDER BY seq");
    s.bind(1, seq);
    std::vector<Change> out;
    while (s.step()) out.push_back({s.int64(0), s.int64(1), s.int64(2) != 0});
    return out;
  }
  void forget_changes_through(int64_t seq) override {
    std::lock_guard<std::mutex> lock(mu_);
    Statement s(db_, "DELETE FROM changes WHERE seq <= ?");
    s.bind(1, seq).run();
  }

 private:
  class Transaction {
   public:
    explicit Transaction(const SqliteCatalog* c) : c_(c) { c_->exec("BEGIN IMMEDIATE"); }
    ~Transaction() {
      if (!done_) sqlite3_exec(c_->db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    void commit() {
      c_->exec("COMMIT");
      done_ = true;
    }

   private:
    const SqliteCatalog* c_;
    bool done_ = false;
  };

  void exec(const std::string& sql) const {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      const std::string why = err ? err : sqlite3_errmsg(db_);
      sqlite3_free(err);
      VT_FAIL("catalogue ", path_, ": ", why);
    }
  }
  int64_t query_int(const std::string& sql) const {
    Statement s(db_, sql);
    return s.step() ? s.int64(0) : 0;
  }
  int64_t image_count_locked() const { return query_int("SELECT COUNT(*) FROM images"); }

  std::optional<ModelStamp> model_locked() const {
    Statement s(db_, "SELECT key, value FROM meta WHERE key LIKE 'model_%'");
    std::map<std::string, std::string> m;
    while (s.step()) m[s.text(0)] = s.text(1);
    if (!m.count("model_id")) return std::nullopt;
    return ModelStamp{m["model_id"], m["model_version"], std::stoll(m["model_dim"])};
  }

  void copy_embedding(const Statement& s, int col, const ModelStamp& stamp, float* out) const {
    size_t size = 0;
    const void* p = s.blob(col, &size);
    VT_CHECK(size == static_cast<size_t>(stamp.dim) * sizeof(float),
             "catalogue ", path_, ": a stored embedding has ", size, " bytes, expected ",
             stamp.dim * 4, " (the file is damaged; re-index into a new --db)");
    std::memcpy(out, p, size);
  }

  /// A product's details, as upsert and update_details write them: bound as ? 1-6; the row's
  /// id is ? 7.
  static constexpr const char* kUpdateDetails =
      "UPDATE products SET title = ?, category = ?, price = ?, brand = ?, seller = ?, "
      "attributes = ?, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?";
  static Statement& bind_details(Statement& update, const Product& p) {
    update.bind(1, p.title).bind(2, p.category).bind(3, p.price).bind(4, p.brand);
    return update.bind(5, p.seller).bind(6, p.attributes);
  }

  static void check_attributes(const Product& p) {
    const auto parsed = nlohmann::json::parse(p.attributes, nullptr, /*allow_exceptions=*/false);
    VT_CHECK(parsed.is_object(), "product ", p.sku,
             ": attributes must be a JSON object such as {\"colour\": \"red\"}, got ",
             p.attributes.substr(0, 80));
  }

  /// `select` with the filters' conditions and their values bound, then `tail`.
  std::unique_ptr<Statement> filtered(const std::string& select, const std::vector<Filter>& filters,
                                      const std::string& tail) const {
    std::string sql = select;
    std::vector<std::pair<bool, std::string>> params;  // (numeric, value)
    for (size_t f = 0; f < filters.size(); ++f) {
      sql += f == 0 ? " WHERE " : " AND ";
      sql += condition(filters[f], &params);
    }
    auto s = std::make_unique<Statement>(db_, sql + tail);
    for (size_t i = 0; i < params.size(); ++i) {
      double number = 0;
      if (params[i].first && parse_number(params[i].second, &number)) {
        s->bind(static_cast<int>(i + 1), number);
      } else {
        s->bind(static_cast<int>(i + 1), params[i].second);
      }
    }
    return s;
  }

  /// A JSON path with the key quoted, so keys with dots or spaces work.
  static std::string attribute_path(const std::string& key) {
    std::string escaped;
    for (char c : key) {
      if (c == '"' || c == '\\') escaped += '\\';
      escaped += c;
    }
    return "$.\"" + escaped + "\"";
  }

  /// The SQL condition of one filter; its values go to `params` in order.
  static std::string condition(const Filter& f,
                               std::vector<std::pair<bool, std::string>>* params) {
    std::string column;
    std::string path;  ///< an attribute's JSON path, bound before each use of its column
    bool numeric = false;
    if (f.field == "price") {
      column = "p.price";
      numeric = true;
    } else if (f.field.rfind("attributes.", 0) == 0) {
      path = attribute_path(f.field.substr(std::strlen("attributes.")));
      column = "json_extract(p.attributes, ?)";
      numeric = true;  // numbers compare as numbers, other values as text
    } else {
      column = "p." + f.field;  // parse_filter allows only the known columns
    }
    auto use_column = [&] {
      if (!path.empty()) params->emplace_back(false, path);
      return column;
    };
    std::string sql;
    if (f.values.size() > 1 || f.op == "=" || f.op == "!=") {
      // A value matches the number it reads as and the text it is ("42" matches 42 and "42",
      // "007" matches 7 and "007"); in double quotes it is text only.
      const std::string col = use_column();
      std::string list;
      auto placeholder = [&](bool as_number, const std::string& v) {
        list += list.empty() ? "?" : ", ?";
        params->emplace_back(as_number, v);
      };
      for (const auto& v : f.values) {
        double number = 0;
        if (v.size() >= 2 && v.front() == '"' && v.back() == '"') {
          placeholder(false, v.substr(1, v.size() - 2));
        } else if (numeric && parse_number(v, &number)) {
          placeholder(true, v);
          placeholder(false, v);
        } else {
          placeholder(false, v);
        }
      }
      sql = f.op == "=" ? col + " IN (" + list + ")"
                        : "COALESCE(" + col + " NOT IN (" + list + "), 1)";
    } else if (!path.empty()) {
      // Only numbers are compared: text such as "007" or "red" is neither above nor below 40.
      const std::string type_col = "json_type(p.attributes, ?)";
      params->emplace_back(false, path);
      sql = "(" + type_col + " IN ('integer', 'real') AND " + use_column() + " " + f.op + " ?)";
      params->emplace_back(true, f.values.at(0));
    } else {
      sql = use_column() + " " + f.op + " ?";
      params->emplace_back(numeric, f.values.at(0));
    }
    return sql;
  }

  std::string path_;
  sqlite3* db_ = nullptr;
  mutable std::mutex mu_;
};

}  // namespace

void compose_text_fields(Product& p) {
  for (std::string* field : {&p.title, &p.category, &p.brand, &p.seller, &p.attributes}) {
    *field = nfc(*field);
  }
}

Filter parse_filter(const std::string& given) {
  const std::string text = nfc(given);  // composed, as the catalogue stores its fields
  static const char* const kOps[] = {"<=", ">=", "!=", "<", ">", "="};
  size_t at = std::string::npos;
  std::string op;
  for (const char* candidate : kOps) {
    const size_t pos = text.find(candidate);
    // The leftmost operator wins; at the same place the two-character one (listed first).
    if (pos != std::string::npos && (at == std::string::npos || pos < at)) {
      at = pos;
      op = candidate;
    }
  }
  const char* const kForms =
      " (forms: category=shoes, category=shoes|boots, brand!=acme, price<=100, price>20, "
      "attributes.colour=red; fields: sku title category brand seller price attributes.<key>)";
  VT_CHECK(at != std::string::npos && at > 0, "bad filter '", text, "'", kForms);
  Filter f;
  f.field = text.substr(0, at);
  f.op = op;
  const std::string value = text.substr(at + op.size());
  static const char* const kFields[] = {"sku", "title", "category", "brand", "seller", "price"};
  const bool known = std::find_if(std::begin(kFields), std::end(kFields), [&](const char* k) {
                       return f.field == k;
                     }) != std::end(kFields) ||
                     (f.field.rfind("attributes.", 0) == 0 && f.field.size() > 11);
  VT_CHECK(known, "bad filter '", text, "': unknown field '", f.field, "'", kForms);
  // SQLite's JSON paths have no escapes: such a key could match nothing or fail the query.
  VT_CHECK(f.field.find_first_of("\"\\") == std::string::npos, "bad filter '", text,
           "': attribute names with \" or \\ cannot be filtered on");
  if (op == "=" || op == "!=") {
    size_t start = 0;
    while (true) {
      const size_t bar = value.find('|', start);
      f.values.push_back(value.substr(start, bar - start));
      if (bar == std::string::npos) break;
      start = bar + 1;
    }
    // Each value is a placeholder of one query, and SQLite allows some 32k in all.
    VT_CHECK(f.values.size() <= kMaxFilterValues, "bad filter '", text.substr(0, 60),
             "...': at most ", kMaxFilterValues, " values, got ", f.values.size());
  } else {
    double number = 0;
    VT_CHECK(parse_number(value, &number), "bad filter '", text, "': ", op,
             " compares numbers, and '", value, "' is not one", kForms);
    VT_CHECK(f.field == "price" || f.field.rfind("attributes.", 0) == 0, "bad filter '", text,
             "': ", f.field, " is text, and ", op, " compares numbers (price, attributes.<key>)");
    f.values.push_back(value);
  }
  if (f.field == "price") {
    for (const auto& v : f.values) {
      double number = 0;
      VT_CHECK(parse_number(v, &number), "bad filter '", text, "': price values are numbers, '",
               v, "' is not one");
    }
  }
  return f;
}

std::vector<Filter> parse_filters(const std::vector<std::string>& texts) {
  VT_CHECK(texts.size() <= kMaxFilters, "at most ", kMaxFilters, " filters a query, got ",
           texts.size());
  std::vector<Filter> out;
  out.reserve(texts.size());
  for (const auto& t : texts) out.push_back(parse_filter(t));
  return out;
}

std::vector<std::string> explain_empty_filters(const Catalog& catalog,
                                               const std::vector<Filter>& filters) {
  std::vector<std::string> out;
  if (filters.empty() || catalog.product_count_where(filters) > 0) return out;
  for (const auto& f : filters) {
    if (catalog.product_count_where({f}) > 0) continue;
    std::string text = f.field + f.op;
    for (size_t i = 0; i < f.values.size(); ++i) text += (i ? "|" : "") + f.values[i];
    std::string line = "the filter '" + text + "' passes no product of the catalogue";
    const std::string prefix = "attributes.";
    if (f.field.rfind(prefix, 0) == 0 && !catalog.has_attribute(f.field.substr(prefix.size()))) {
      line += ": no product has the attribute '" + f.field.substr(prefix.size()) + "'";
    } else if (f.op == "=") {
      line += " (values compare exactly, upper and lower case included)";
    }
    out.push_back(std::move(line));
  }
  if (out.empty()) {
    out.push_back("each filter passes some products, but no product passes all " +
                  std::to_string(filters.size()) + " together");
  }
  return out;
}

std::unique_ptr<Catalog> open_sqlite_catalog(const std::string& path) {
  return std::make_unique<SqliteCatalog>(path);
}

}  // namespace vitrine::search
