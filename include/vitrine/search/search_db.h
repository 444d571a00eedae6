// A search database: a folder holding the catalogue (catalog.sqlite) and the vector index
// beside it (vectors.index), kept consistent. The catalogue is the source of truth: the
// index file records the last catalogue change it holds and, when opened, catches up from the
// catalogue's change log, or is rebuilt from the stored embeddings when it is missing,
// damaged, of another model or too far behind. Adding products never forces a rebuild.
#pragma once

#include "vitrine/search/catalog.h"
#include "vitrine/search/vector_index.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vitrine::search {

/// Version of the vectors.index layout written by this build; older ones still load.
constexpr uint32_t kIndexFormatVersion = 1;

struct SearchOptions {
  int64_t k = 10;               ///< products per query
  std::vector<Filter> filters;  ///< all must hold
  /// A filtered set of at most this many images is scored exactly (recall 1 whatever the
  /// index): by the index where its search is exact (VectorIndex::exact_among), otherwise
  /// from the stored embeddings; larger ones are filtered inside the index.
  int64_t exact_below = 20'000;
  /// Per query (empty, or one list per query): image ids never returned, such as the query
  /// photo itself when the catalogue holds it. The product may still be found by its other
  /// images.
  std::vector<std::vector<int64_t>> exclude_images;
};

/// One product found: its best-matching image and that image's score (cosine similarity).
struct Hit {
  float score = 0;
  int64_t image_id = 0;
  std::string image;
  Product product;
};

/// How the index was brought up to date when the database was opened.
struct OpenReport {
  bool rebuilt = false;
  std::string why;       ///< why it was rebuilt
  int64_t replayed = 0;  ///< catalogue changes applied from the log
};

class SearchDb {
 public:
  /// Opens (creating) the folder `dir`. `options.kind` other than auto that differs from the
  /// stored index's kind rebuilds it as asked.
  static std::unique_ptr<SearchDb> open(const std::string& dir, const IndexOptions& options = {});
  ~SearchDb();

  const std::string& dir() const { return dir_; }
  const OpenReport& open_report() const { return report_; }
  Catalog& catalog() { return *catalog_; }
  const Catalog& catalog() const { return *catalog_; }
  /// Null while the catalogue has no embeddings.
  const VectorIndex* index() const { return index_.get(); }
  std::optional<ModelStamp> model() const { return catalog_->model(); }
  /// Records the model of a new database; throws when the stored embeddings are another's.
  void use_model(const ModelStamp& model);

  /// Where photos sent to the service are kept (`<dir>/images`, named by content hash).
  /// The database deletes those no product refers to any more; photos elsewhere are the
  /// user's and never touched.
  std::string photo_dir() const;

  /// Stores the batch in the catalogue (one transaction) and applies it to the index.
  void upsert(const std::vector<ProductUpdate>& batch);
  /// Deletes products; they are gone from results at once and their space is reclaimed.
  /// Returns the SKUs that were not stored.
  std::vector<std::string> remove(const std::vector<std::string>& skus);

  /// Brings the index up to date with catalogue changes made by other processes (another
  /// `vitrine index` or `remove` beside a running service), and takes an index file another
  /// process wrote (`vitrine index --index hnsw` rebuilt it of another kind or settings), so
  /// that a save never puts back the index it replaced. Cheap when there are none.
  void refresh();
  /// Whether refresh() has changes to apply (one catalogue query, one stat of the file).
  bool stale() const;

  /// The k best products for each of `nq` queries (L2-normalised, `dim` floats each).
  std::vector<std::vector<Hit>> search(const float* queries, int64_t nq,
                                       const SearchOptions& options) const;

  /// The k nearest images of each query (scores best first, ids -1 past the last found),
  /// among `allowed` when given. Scores are exact inner products: IVF-PQ's estimates from
  /// its compressed codes are computed again from the stored embeddings.
  void search_images(const float* queries, int64_t nq, int64_t k,
                     const std::vector<int64_t>* allowed, float* scores, int64_t* ids) const;

  /// Writes the index if it changed (atomically: a temporary file renamed over the old one)
  /// and trims the change log it holds.
  void save();
  /// save() in three steps, so that a service searches while the file is written:
  /// prepare_save() may change the index (it rebuilds one that outgrew its kind) and says
  /// whether the file is behind it; write_index_file() only reads the index, so searches may
  /// run beside it, and returns the last change the file holds; saved() trims the change log
  /// through that change.
  bool prepare_save();
  int64_t write_index_file() const;
  void saved(int64_t seq);
  std::string index_path() const;

 private:
  SearchDb() = default;
  void catch_up();
  /// The kind an index of `n` images should be: the one asked for (now or when the index was
  /// first built), auto resolved by size, flat while IVF-PQ has too few images to learn from.
  std::string target_kind(int64_t n) const;
  void rebuild(const std::string& why);
  void apply_changes(const std::vector<Change>& changes);
  bool load_index_file();
  /// Whether the index file is not the one this database last read or wrote.
  bool file_rewritten() const;
  /// Sets the index's search effort: the one asked for, else the stored one.
  void apply_search_effort();
  /// The stored photos of these products that lie in photo_dir().
  std::vector<std::string> owned_photos(const std::vector<std::string>& skus) const;
  /// Deletes those of `refs` that no stored image refers to (after a change committed).
  void drop_orphan_photos(const std::vector<std::string>& refs);

  std::string dir_;
  IndexOptions asked_;    ///< as open() was given them
  IndexOptions options_;  ///< asked_ with the settings of the index in use filled in
  std::unique_ptr<Catalog> catalog_;
  std::unique_ptr<VectorIndex> index_;
  std::string kind_option_ = "auto";  ///< how the index's kind was chosen: auto or explicit
  int64_t applied_seq_ = 0;  ///< the last catalogue change the index holds
  int64_t saved_seq_ = -1;   ///< applied_seq_ of the index file on disk
  int64_t max_images_ = 1;
  /// The database's search effort (hnsw_ef_search, nprobe), as its index file records it.
  int stored_ef_search_ = IndexOptions{}.hnsw_ef_search;
  int stored_nprobe_ = IndexOptions{}.nprobe;
  /// The index file as last read or written here (inode, size, time; 0: none): another
  /// process's file differs. Atomic, as a save writes it beside searches.
  mutable std::atomic<uint64_t> file_stamp_{0};
  OpenReport report_;
};

}  // namespace vitrine::search
