// Vector indexes over L2-normalised embeddings, scored by inner product (= cosine
// similarity), behind one interface; FAISS underneath.
//   flat   exact; for catalogues up to ~100k images
//   hnsw   graph search; fast single queries on large catalogues, memory ~ (dim*4 + 2*M*4) B
//   ivfpq  inverted lists of product-quantised codes; ~pq_m bytes per image for very large ones
// Filters are applied inside the search (FAISS ID selectors), so a filtered top-k is the top-k
// of the filtered set, not what is left of an unfiltered top-k.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

namespace vitrine::search {

struct IndexOptions {
  std::string kind = "auto";  ///< auto | flat | hnsw | ivfpq
  int64_t auto_flat_max = 100'000;    ///< auto: flat up to this many images, then HNSW
  int64_t auto_hnsw_max = 5'000'000;  ///< auto: HNSW up to this many, then IVF-PQ
  int hnsw_m = 32;                    ///< graph neighbours per node
  int hnsw_ef_construction = 80;
  int hnsw_ef_search = 64;
  int64_t ivf_lists = 0;  ///< 0: about 4 * sqrt(n)
  int pq_m = 0;           ///< bytes per code; 0: dim / 4 capped at 64 (must divide dim)
  int nprobe = 16;        ///< lists visited per query
  /// Build settings asked for explicitly (a command line's --hnsw-m and the like: "hnsw_m",
  /// "hnsw_ef_construction", "ivf_lists", "pq_m"), even at their default values. An existing
  /// index built otherwise is rebuilt; settings neither given nor changed from their defaults
  /// are the index file's own. "hnsw_ef_search" and "nprobe" given are the search effort
  /// asked for; not given, the database's stored one (the defaults until set) is used.
  std::vector<std::string> given;
  /// `vitrine index`: --ef-search and --nprobe given become the database's search effort,
  /// which later commands (search, eval-retrieval, serve) take unless they ask for another.
  bool store_search_effort = false;
};

/// IVF-PQ learns its codebooks from the catalogue: below this many images a flat index
/// serves instead (exact, and fast at that size).
constexpr int64_t kIvfPqMinImages = 1000;

/// The default IVF list count for a catalogue of `n` images whose codebooks learn from
/// `n_train` of them: about 4 sqrt(n), at most one list per 39 training vectors (FAISS's
/// k-means wants that many).
int64_t default_ivf_lists(int64_t n, int64_t n_train);

/// The kind `options` asks for (resolving auto for `n` images).
std::string resolve_index_kind(const IndexOptions& options, int64_t n);

class VectorIndex {
 public:
  virtual ~VectorIndex() = default;
  virtual std::string kind() const = 0;
  virtual int64_t dim() const = 0;
  /// Live (not removed) vectors.
  virtual int64_t size() const = 0;
  /// The live ids, ascending.
  virtual std::vector<int64_t> ids() const = 0;
  /// Adds `n` vectors (`dim` floats each) under caller-chosen ids (unique, not present).
  virtual void add(const float* x, const int64_t* ids, int64_t n) = 0;
  /// Removes these ids (absent ones are ignored); removed vectors never come back in results.
  virtual void remove(const std::vector<int64_t>& ids) = 0;
  /// The `k` best ids and scores per query, best first; -1 / -inf fill the rest. With
  /// `allowed` (ascending ids), only those ids are considered.
  virtual void search(const float* queries, int64_t nq, int64_t k,
                      const std::vector<int64_t>* allowed, float* scores,
                      int64_t* ids) const = 0;
  /// Whether search() among `allowed` ids this many is exact: flat always, HNSW for sets it
  /// scans (up to 4,096), IVF-PQ never.
  virtual bool exact_among(int64_t allowed) const = 0;
  /// Search effort from `options`: hnsw_ef_search (HNSW) and nprobe (IVF-PQ).
  virtual void set_search_options(const IndexOptions& options) = 0;
  /// True when so much was removed that a rebuild would reclaim real space (HNSW graphs
  /// cannot drop nodes; removed ones are skipped until then).
  virtual bool wants_rebuild() const { return false; }
  /// Bytes of index memory per live vector, for sizing.
  virtual double bytes_per_vector() const = 0;
  /// The value this index was really built with for a build setting of IndexOptions
  /// ("hnsw_m", "hnsw_ef_construction", "ivf_lists", "pq_m"; "auto" resolved), or -1 for a
  /// setting that does not apply to its kind.
  virtual int64_t built_with(const std::string& setting) const = 0;
  /// The search effort in use ("hnsw_ef_search" of HNSW, "nprobe" of IVF-PQ), or -1 for
  /// one that does not apply to its kind.
  virtual int64_t search_effort(const std::string& setting) const = 0;
  /// Serialises the whole index.
  virtual void write(std::ostream& out) const = 0;
};

/// A new empty index of `kind` (flat, hnsw or ivfpq; not auto). IVF-PQ learns its coarse
/// centroids and codebooks from `train` (`n_train` vectors); the others ignore it.
std::unique_ptr<VectorIndex> make_index(const std::string& kind, int64_t dim,
                                        const IndexOptions& options, const float* train,
                                        int64_t n_train);
/// Reads what VectorIndex::write wrote; throws vitrine::Error for damaged data.
std::unique_ptr<VectorIndex> read_index(std::istream& in, const IndexOptions& options);

}  // namespace vitrine::search
