// The product catalogue: products (sku, title, category, price, brand, seller, free JSON
// attributes), their images, and one embedding per image stamped with the model that made
// it. Behind an interface so that a shared server database can take the embedded SQLite
// file's place for several service replicas.
//
// Every change to the set of embedded images is written to a change log in the same
// transaction, so the vector index beside the catalogue can catch up with the catalogue
// (after a crash, or after another process added products) without a rebuild.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vitrine::search {

struct Product {
  std::string sku;  ///< unique, required
  std::string title, category, brand, seller;
  std::optional<double> price;
  std::string attributes = "{}";    ///< a JSON object: colour, size, material, ...
  std::vector<std::string> images;  ///< image references (file paths or data-set names)
};

/// The model whose embeddings a catalogue holds: one catalogue never mixes models.
struct ModelStamp {
  std::string id;       ///< the model's name (architecture and directory), for people
  std::string version;  ///< SHA-256 of its weights and preprocessing
  int64_t dim = 0;      ///< embedding width
  /// Same weights and preprocessing, wherever the directory is and whatever it is called.
  bool operator==(const ModelStamp& o) const { return version == o.version && dim == o.dim; }
};

/// Why `given` cannot use embeddings of `stored`, for messages that go on with advice: "model
/// X (version v, d dims), not with Y (...)", or, for one name with another version, that the
/// model changed since (retrained or edited in place).
std::string model_mismatch(const ModelStamp& stored, const ModelStamp& given);

/// One image of a product to store.
struct ImageEntry {
  std::string ref;
  std::string content_hash;      ///< SHA-256 of the image file
  std::vector<float> embedding;  ///< `dim` floats, L2-normalised
};

/// A product with all of its images: images it had before and no longer lists are removed;
/// an image with the same reference and content hash as stored keeps its id.
struct ProductUpdate {
  Product product;
  std::vector<ImageEntry> images;
};

/// An image as stored, with the product it belongs to.
struct ImageRecord {
  int64_t id = 0;
  std::string ref;
  Product product;
};

/// A condition on product fields, parsed from e.g. `category=shoes`, `price<=100`,
/// `brand!=acme`, `category=shoes|boots` (any of), `attributes.colour=red`.
struct Filter {
  std::string field;  ///< sku, title, category, brand, seller, price or attributes.<key>
  std::string op;     ///< = != < <= > >=
  std::vector<std::string> values;  ///< several only with = and != (any of / none of)
};
/// Photos one product may have: every search looks at k times the most any product has.
constexpr size_t kMaxImagesPerProduct = 100;
/// The longest SKU, in bytes.
constexpr size_t kMaxSkuBytes = 512;

/// Why `sku` cannot name a product (empty when it can): one that is not UTF-8, blank, holds
/// control characters, is "." or "..", is over kMaxSkuBytes, or ends in /images/<number>
/// cannot be addressed as /v1/products/{sku} (clients resolve dot segments; the last reads
/// as a product's photo). `vitrine index` and the service refuse the same SKUs.
std::string sku_problem(const std::string& sku);
/// Values one filter may list (`category=a|b|...`), and filters one query may have: each
/// value is a placeholder of the catalogue's query, which SQLite limits.
constexpr size_t kMaxFilterValues = 1000;
constexpr size_t kMaxFilters = 16;
/// A product's text fields (title, category, brand, seller, attributes) composed (NFC), as the
/// catalogue stores them and filters compare them; the SKU, an identifier, stays as given.
void compose_text_fields(Product& p);

/// Throws vitrine::Error naming the accepted forms when `text` is not one of them.
Filter parse_filter(const std::string& text);
/// The filters of one query, all to hold; throws as parse_filter does, and for more than
/// kMaxFilters.
std::vector<Filter> parse_filters(const std::vector<std::string>& texts);

/// One entry of the change log: image `image_id` was added or removed.
struct Change {
  int64_t seq = 0;
  int64_t image_id = 0;
  bool removed = false;
};

class Catalog {
 public:
  virtual ~Catalog() = default;

  /// The model of the stored embeddings; empty for a new catalogue.
  virtual std::optional<ModelStamp> model() const = 0;
  /// Records the model of a new (or emptied) catalogue; with embeddings of another model
  /// stored, throws an error saying to use that model or a new --db.
  virtual void set_model(const ModelStamp& model) = 0;

  /// Where the model of the stored embeddings lives (a hint for search; empty when unknown).
  virtual std::string model_path() const = 0;
  virtual void set_model_path(const std::string& path) = 0;

  /// Inserts or replaces the products of `batch` in one transaction: all or none are stored.
  virtual void upsert(const std::vector<ProductUpdate>& batch) = 0;
  /// Changes the fields of the stored product `sku` (title, category, price, brand, seller,
  /// attributes) by `change`, read and written in one transaction, leaving its images and
  /// their embeddings as they are; returns the product as stored, nullopt when no product has
  /// that SKU. What `change` throws leaves it unchanged.
  virtual std::optional<Product> update_details(
      const std::string& sku, const std::function<void(Product&)>& change) = 0;
  /// Deletes the products with these SKUs (their images and embeddings) in one transaction;
  /// returns the SKUs that were not in the catalogue.
  virtual std::vector<std::string> remove(const std::vector<std::string>& skus) = 0;
  /// Returns freed pages to the file system (after removals).
  virtual void reclaim_space() = 0;

  virtual std::optional<Product> find(const std::string& sku) const = 0;
  /// Products passing the filters, in the order they were first stored, `limit` from
  /// `offset` (with their images).
  virtual std::vector<Product> list(const std::vector<Filter>& filters, int64_t offset,
                                    int64_t limit) const = 0;
  /// Content hash of each stored image of `sku`, by reference (empty when unknown).
  virtual std::vector<std::pair<std::string, std::string>> image_hashes(
      const std::string& sku) const = 0;
  /// Ids of the stored images with this content hash, ascending.
  virtual std::vector<int64_t> image_ids_with_hash(const std::string& hash) const = 0;
  virtual int64_t product_count() const = 0;
  /// Products passing every filter.
  virtual int64_t product_count_where(const std::vector<Filter>& filters) const = 0;
  /// Whether any product has attribute `key` (with any value, null included).
  virtual bool has_attribute(const std::string& key) const = 0;
  virtual int64_t image_count() const = 0;
  /// The most images any product has (bounds how many image hits make k products).
  virtual int64_t max_images_per_product() const = 0;

  /// Ids of the images whose product passes every filter, ascending.
  virtual std::vector<int64_t> image_ids(const std::vector<Filter>& filters) const = 0;
  /// The images with these ids and their products (with all their images), in the order of
  /// `ids`; ids no longer stored are left out.
  virtual std::vector<ImageRecord> images(const std::vector<int64_t>& ids) const = 0;
  /// Embeddings of these images, `dim` floats each, in the order of `ids`; throws for an id
  /// not stored.
  virtual std::vector<float> embeddings(const std::vector<int64_t>& ids) const = 0;
  /// As embeddings(), for those of `ids` still stored: the others (removed meanwhile by
  /// another process) are dropped from `ids`.
  virtual std::vector<float> stored_embeddings(std::vector<int64_t>& ids) const = 0;
  /// Calls `fn(ids, embeddings)` for all stored embeddings in batches of up to `batch`.
  virtual void scan_embeddings(
      int64_t batch,
      const std::function<void(const std::vector<int64_t>&, const std::vector<float>&)>& fn)
      const = 0;

  /// The newest change's sequence number (0 when none).
  virtual int64_t last_change() const = 0;
  /// The oldest change still in the log (0 when empty): an index that applied changes only
  /// up to an earlier one cannot catch up and is rebuilt.
  virtual int64_t first_change() const = 0;
  /// The changes after `seq`, oldest first.
  virtual std::vector<Change> changes_since(int64_t seq) const = 0;
  /// Drops the changes up to and including `seq` (an index holding them has been saved).
  virtual void forget_changes_through(int64_t seq) = 0;
};

/// Why filters that pass no product pass none: a line for each filter that alone passes no
/// product (naming an attribute no product has), or one line for the filters together. Empty
/// when some product passes them all. For a warning, so a typo ("categroy", "shoes" for
/// "Shoes") does not read as "no similar products".
std::vector<std::string> explain_empty_filters(const Catalog& catalog,
                                               const std::vector<Filter>& filters);

/// Opens (creating when missing) a SQLite catalogue file: WAL journal, foreign keys on,
/// incremental vacuum. A file of a newer schema than this build knows is refused.
std::unique_ptr<Catalog> open_sqlite_catalog(const std::string& path);

}  // namespace vitrine::search
