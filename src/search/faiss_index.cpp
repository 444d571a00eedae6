// FAISS behind VectorIndex. Flat and HNSW number their vectors 0..n-1 themselves and
// Debian's FAISS 1.7.3 cannot pass search parameters (the ID selector) through IndexIDMap,
// so those two keep the id of each position here and filter by position. IVF-PQ stores the
// ids itself and filters by id. Approximate searches meet only part of a filtered set, so a
// filtered search that comes back short is completed exactly (HNSW) or over every list
// (IVF-PQ): a filtered top-k holds min(k, allowed) results.
#include "vitrine/search/vector_index.h"
#include "search/faiss_access.h"

#include "vitrine/core/error.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/HNSW.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <istream>
#include <limits>
#include <ostream>
#include <unordered_map>

namespace vitrine::search {
namespace {

template <typename T>
void put(std::ostream& out, const T& v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <typename T>
T get(std::istream& in) {
  T v{};
  in.read(reinterpret_cast<char*>(&v), sizeof(T));
  VT_CHECK(in, "the vector index file is truncated (it is rebuilt from the catalogue when "
               "removed)");
  return v;
}
template <typename T>
void put_vector(std::ostream& out, const std::vector<T>& v) {
  put<uint64_t>(out, v.size());
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
}
template <typename T>
std::vector<T> get_vector(std::istream& in, uint64_t max_items) {
  const auto n = get<uint64_t>(in);
  VT_CHECK(n <= max_items, "the vector index file is damaged (a block of ", n, " items)");
  // A damaged length is caught before its memory is taken: the block must fit in the file.
  const std::streampos here = in.tellg();
  if (here != std::streampos(-1)) {
    in.seekg(0, std::ios::end);
    const std::streamoff left = in.tellg() - here;
    in.seekg(here);
    VT_CHECK(in && static_cast<uint64_t>(left) / sizeof(T) >= n,
             "the vector index file is truncated or damaged (a block of ", n, " items, ", left,
             " bytes left)");
  }
  std::vector<T> v(n);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(T)));
  VT_CHECK(in, "the vector index file is truncated");
  return v;
}

void put_kind(std::ostream& out, const std::string& kind) {
  put<uint32_t>(out, static_cast<uint32_t>(kind.size()));
  out.write(kind.data(), static_cast<std::streamsize>(kind.size()));
}

void write_faiss(std::ostream& out, const faiss::Index* index) {
  faiss::VectorIOWriter w;
  faiss::write_index(index, &w);
  put_vector(out, w.data);
}
std::unique_ptr<faiss::Index> read_faiss(std::istream& in) {
  faiss::VectorIOReader r;
  r.data = get_vector<uint8_t>(in, uint64_t{1} << 40);
  try {
    return std::unique_ptr<faiss::Index>(faiss::read_index(&r));
  } catch (const faiss::FaissException& e) {
    VT_FAIL("the vector index file is damaged: ", e.what());
  }
}

/// Flat and HNSW: FAISS positions 0..n-1, our ids beside them.
class PositionalIndex : public VectorIndex {
 public:
  PositionalIndex(std::string kind, std::unique_ptr<faiss::Index> index, int ef_search)
      : kind_(std::move(kind)), index_(std::move(index)), ef_search_(ef_search) {
    apply_ef_search();
  }

  std::string kind() const override { return kind_; }
  int64_t dim() const override { return index_->d; }
  int64_t size() const override { return static_cast<int64_t>(where_.size()); }

  std::vector<int64_t> ids() const override {
    std::vector<int64_t> out;
    out.reserve(where_.size());
    for (const auto& [id, pos] : where_) out.push_back(id);
    std::sort(out.begin(), out.end());
    return out;
  }

  void add(const float* x, const int64_t* ids, int64_t n) override {
    // An id already held (a change replayed twice) is not added again: a second vector would
    // outlive the id's removal.
    if (std::any_of(ids, ids + n, [&](int64_t id) { return where_.count(id) > 0; })) {
      const auto d = static_cast<size_t>(index_->d);
      std::vector<float> fresh;
      std::vector<int64_t> fresh_ids;
      for (int64_t i = 0; i < n; ++i) {
        if (where_.count(ids[i]) || std::count(fresh_ids.begin(), fresh_ids.end(), ids[i])) {
          continue;
        }
        fresh.insert(fresh.end(), x + static_cast<size_t>(i) * d, x + (static_cast<size_t>(i) + 1) * d);
        fresh_ids.push_back(ids[i]);
      }
      if (!fresh_ids.empty()) add(fresh.data(), fresh_ids.data(), static_cast<int64_t>(fresh_ids.size()));
      return;
    }
    index_->add(n, x);
    for (int64_t i = 0; i < n; ++i) {
      where_[ids[i]] = static_cast<int64_t>(id_at_.size());
      id_at_.push_back(ids[i]);
    }
  }

  void remove(const std::vector<int64_t>& ids) override {
    std::vector<faiss::Index::idx_t> positions;
    for (const int64_t id : ids) {
      const auto it = where_.find(id);
      if (it == where_.end()) continue;
      positions.push_back(it->second);
      where_.erase(it);
    }
    if (positions.empty()) return;
    if (kind_ == "flat") {
      // IndexFlat compacts in order: drop the same positions here.
      faiss::IDSelectorBatch sel(positions.size(), positions.data());
      index_->remove_ids(sel);
      std::vector<bool> gone(id_at_.size(), false);
      for (const auto p : positions) gone[static_cast<size_t>(p)] = true;
      std::vector<int64_t> kept;
      kept.reserve(id_at_.size() - positions.size());
      for (size_t p = 0; p < id_at_.size(); ++p) {
        if (!gone[p]) kept.push_back(id_at_[p]);
      }
      id_at_ = std::move(kept);
      where_.clear();
      for (size_t p = 0; p < id_at_.size(); ++p) where_[id_at_[p]] = static_cast<int64_t>(p);
    } else {
      // An HNSW graph cannot drop a node: it stays as a waypoint and is never returned.
      for (const auto p : positions) id_at_[static_cast<size_t>(p)] = -1;
      removed_ += static_cast<int64_t>(positions.size());
    }
  }

  void search(const float* queries, int64_t nq, int64_t k, const std::vector<int64_t>* allowed,
              float* scores, int64_t* ids) const override {
    std::fill(scores, scores + nq * k, -std::numeric_limits<float>::infinity());
    std::fill(ids, ids + nq * k, int64_t{-1});
    if (k <= 0 || nq <= 0 || where_.empty()) return;
    const auto n = static_cast<size_t>(index_->ntotal);
    std::vector<uint8_t> bitmap;
    std::unique_ptr<faiss::IDSelectorBitmap> sel;
    auto live = static_cast<int64_t>(where_.size());  ///< nodes the search may return
    if (allowed || removed_ > 0) {
      bitmap.assign((n + 7) / 8, 0);
      auto set = [&](size_t p) { bitmap[p >> 3] |= static_cast<uint8_t>(1u << (p & 7)); };
      if (allowed) {
        live = 0;
        for (const int64_t id : *allowed) {
          const auto it = where_.find(id);
          if (it == where_.end()) continue;
          set(static_cast<size_t>(it->second));
          ++live;
        }
      } else {
        for (size_t p = 0; p < n; ++p) {
          if (id_at_[p] >= 0) set(p);
        }
      }
      sel = std::make_unique<faiss::IDSelectorBitmap>(n, bitmap.data());
    }
    std::vector<faiss::Index::idx_t> positions(static_cast<size_t>(nq * k));
    if (kind_ == "hnsw") {
      if (sel) {
        // The graph search meets only the allowed nodes on its path: a selective filter leaves
        // it short of results. Small allowed sets are scanned exactly; larger ones fall back
        // to that scan for the queries left short.
        const int64_t want = std::min<int64_t>(k, live);
        std::vector<int64_t> short_queries;
        if (live <= kExactScanMax) {
          for (int64_t q = 0; q < nq; ++q) short_queries.push_back(q);
        } else {
          faiss::SearchParametersHNSW params;  // its defaults (efSearch 16) replace the index's
          params.sel = sel.get();
          params.efSearch = ef_search_;
          if (auto* h = dynamic_cast<faiss::IndexHNSW*>(index_.get())) {
            params.check_relative_distance = h->hnsw.check_relative_distance;
          }
          index_->search(nq, queries, k, scores, positions.data(), &params);
          for (int64_t q = 0; q < nq; ++q) {
            const auto* row = positions.data() + q * k;
            if (std::count_if(row, row + k, [](auto p) { return p >= 0; }) < want) {
              short_queries.push_back(q);
            }
          }
        }
        if (!short_queries.empty()) {
          exact_search(queries, short_queries, k, *sel, scores, positions.data());
        }
      } else {
        index_->search(nq, queries, k, scores, positions.data());
      }
    } else {
      faiss::SearchParameters params;
      params.sel = sel.get();
      index_->search(nq, queries, k, scores, positions.data(), sel ? &params : nullptr);
    }
    for (size_t i = 0; i < positions.size(); ++i) {
      const auto p = positions[i];
      ids[i] = p >= 0 ? id_at_[static_cast<size_t>(p)] : -1;
      if (ids[i] < 0) scores[i] = -std::numeric_limits<float>::infinity();
    }
  }

  bool exact_among(int64_t allowed) const override {
    return kind_ != "hnsw" || allowed <= kExactScanMax;
  }

  void set_search_options(const IndexOptions& options) override {
    ef_search_ = options.hnsw_ef_search;
    apply_ef_search();
  }
  const faiss::Index& faiss() const { return *index_; }

  bool wants_rebuild() const override {
    return removed_ > 1000 && removed_ * 5 > static_cast<int64_t>(id_at_.size());
  }

  double bytes_per_vector() const override {
    const double n = std::max<double>(1, static_cast<double>(where_.size()));
    double bytes = static_cast<double>(index_->ntotal) * static_cast<double>(index_->d) * 4;
    if (const auto* h = dynamic_cast<const faiss::IndexHNSW*>(index_.get())) {
      bytes += static_cast<double>(h->hnsw.neighbors.size()) * sizeof(faiss::HNSW::storage_idx_t) +
               static_cast<double>(h->hnsw.offsets.size()) * sizeof(size_t);
    }
    // The position -> id table and the id -> position map (about 40 bytes a node).
    bytes += static_cast<double>(id_at_.size()) * 8 + static_cast<double>(where_.size()) * 40;
    return bytes / n;
  }

  int64_t built_with(const std::string& setting) const override {
    const auto* h = dynamic_cast<const faiss::IndexHNSW*>(index_.get());
    if (!h) return -1;
    if (setting == "hnsw_m") return h->hnsw.nb_neighbors(1);  // level 0 holds twice as many
    if (setting == "hnsw_ef_construction") return h->hnsw.efConstruction;
    return -1;
  }

  int64_t search_effort(const std::string& setting) const override {
    const bool hnsw = dynamic_cast<const faiss::IndexHNSW*>(index_.get()) != nullptr;
    return hnsw && setting == "hnsw_ef_search" ? ef_search_ : -1;
  }

  void write(std::ostream& out) const override {
    put_kind(out, kind_);
    put_vector(out, id_at_);
    put<int64_t>(out, removed_);
    write_faiss(out, index_.get());
  }

  void read_rest(std::istream& in) {
    id_at_ = get_vector<int64_t>(in, uint64_t{1} << 36);
    removed_ = get<int64_t>(in);
    index_ = read_faiss(in);
    apply_ef_search();
    VT_CHECK(static_cast<size_t>(index_->ntotal) == id_at_.size(),
             "the vector index file is damaged (", index_->ntotal, " vectors, ", id_at_.size(),
             " ids)");
    for (size_t p = 0; p < id_at_.size(); ++p) {
      if (id_at_[p] >= 0) where_[id_at_[p]] = static_cast<int64_t>(p);
    }
  }

 private:
  /// Filtered HNSW searches scan allowed sets up to this size exactly.
  static constexpr int64_t kExactScanMax = 4096;

  /// Exact top-k of `queries` rows `which` over the nodes `sel` allows, written into their
  /// rows of `scores` and `out` (as positions): a scan of the graph's own flat storage, whose
  /// positions are the graph's.
  void exact_search(const float* queries, const std::vector<int64_t>& which, int64_t k,
                    const faiss::IDSelector& sel, float* scores,
                    faiss::Index::idx_t* out) const {
    const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(index_.get());
    VT_DCHECK(hnsw && hnsw->storage);
    const int64_t d = index_->d;
    std::vector<float> q(which.size() * static_cast<size_t>(d));
    for (size_t i = 0; i < which.size(); ++i) {
      std::copy(queries + which[i] * d, queries + (which[i] + 1) * d, q.begin() + i * d);
    }
    const auto nq = static_cast<int64_t>(which.size());
    std::vector<float> s(static_cast<size_t>(nq * k));
    std::vector<faiss::Index::idx_t> at(static_cast<size_t>(nq * k));
    faiss::SearchParameters params;
    params.sel = const_cast<faiss::IDSelector*>(&sel);
    hnsw->storage->search(nq, q.data(), k, s.data(), at.data(), &params);
    for (int64_t i = 0; i < nq; ++i) {
      std::copy(s.begin() + i * k, s.begin() + (i + 1) * k, scores + which[i] * k);
      std::copy(at.begin() + i * k, at.begin() + (i + 1) * k, out + which[i] * k);
    }
  }

  /// The beam width of searches without search parameters; a search with them (a filter)
  /// sets it there too.
  void apply_ef_search() {
    if (auto* h = dynamic_cast<faiss::IndexHNSW*>(index_.get())) h->hnsw.efSearch = ef_search_;
  }

  std::string kind_;
  std::unique_ptr<faiss::Index> index_;
  int ef_search_;
  std::vector<int64_t> id_at_;                 ///< position -> id, -1 when removed (HNSW)
  std::unordered_map<int64_t, int64_t> where_;  ///< live id -> position
  int64_t removed_ = 0;
};

/// IVF-PQ: ids live in FAISS's inverted lists.
class IvfPqIndex : public VectorIndex {
 public:
  IvfPqIndex(std::unique_ptr<faiss::IndexFlatIP> quantizer, std::unique_ptr<faiss::IndexIVFPQ> index,
             int nprobe)
      : quantizer_(std::move(quantizer)), index_(std::move(index)), nprobe_(nprobe) {
    for (const int64_t id : ids()) mark(id, true);
  }

  std::string kind() const override { return "ivfpq"; }
  int64_t dim() const override { return index_->d; }
  int64_t size() const override { return index_->ntotal; }

  std::vector<int64_t> ids() const override {
    std::vector<int64_t> out;
    out.reserve(static_cast<size_t>(index_->ntotal));
    const auto* lists = index_->invlists;
    for (size_t l = 0; l < lists->nlist; ++l) {
      faiss::InvertedLists::ScopedIds list_ids(lists, l);
      out.insert(out.end(), list_ids.get(), list_ids.get() + lists->list_size(l));
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  void add(const float* x, const int64_t* ids, int64_t n) override {
    // An id already held (a change replayed twice) is not added again, as in the flat and
    // HNSW indexes: the lists would hold it twice.
    const auto d = static_cast<size_t>(index_->d);
    std::vector<float> fresh;
    std::vector<int64_t> fresh_ids;
    for (int64_t i = 0; i < n; ++i) {
      if (holds(ids[i])) continue;
      mark(ids[i], true);
      fresh.insert(fresh.end(), x + static_cast<size_t>(i) * d,
                   x + (static_cast<size_t>(i) + 1) * d);
      fresh_ids.push_back(ids[i]);
    }
    if (fresh_ids.empty()) return;
    index_->add_with_ids(static_cast<int64_t>(fresh_ids.size()), fresh.data(), fresh_ids.data());
  }

  void remove(const std::vector<int64_t>& ids) override {
    if (ids.empty()) return;
    faiss::IDSelectorBatch sel(ids.size(), ids.data());
    index_->remove_ids(sel);
    for (const int64_t id : ids) mark(id, false);
  }

  void search(const float* queries, int64_t nq, int64_t k, const std::vector<int64_t>* allowed,
              float* scores, int64_t* ids) const override {
    std::fill(scores, scores + nq * k, -std::numeric_limits<float>::infinity());
    std::fill(ids, ids + nq * k, int64_t{-1});
    if (k <= 0 || nq <= 0 || index_->ntotal == 0) return;
    faiss::SearchParametersIVF params;
    params.nprobe = static_cast<size_t>(std::min<int64_t>(nprobe_, index_->nlist));
    std::unique_ptr<faiss::IDSelectorBatch> sel;
    if (allowed) {
      sel = std::make_unique<faiss::IDSelectorBatch>(allowed->size(), allowed->data());
      params.sel = sel.get();
    }
    index_->search(nq, queries, k, scores, ids, &params);
    if (allowed) {
      // The allowed ids may lie in lists the probe skipped: queries left short of them scan
      // every list.
      const int64_t want = std::min<int64_t>(k, static_cast<int64_t>(allowed->size()));
      params.nprobe = index_->nlist;
      for (int64_t q = 0; q < nq; ++q) {
        const int64_t* row = ids + q * k;
        if (std::count_if(row, row + k, [](int64_t id) { return id >= 0; }) < want) {
          index_->search(1, queries + q * index_->d, k, scores + q * k, ids + q * k, &params);
        }
      }
    }
    for (int64_t i = 0; i < nq * k; ++i) {
      if (ids[i] < 0) scores[i] = -std::numeric_limits<float>::infinity();
    }
  }

  bool exact_among(int64_t) const override { return false; }
  void set_search_options(const IndexOptions& options) override { nprobe_ = options.nprobe; }
  const faiss::Index& faiss() const { return *index_; }

  double bytes_per_vector() const override {
    const double n = std::max<double>(1, static_cast<double>(index_->ntotal));
    // Codes and ids in the lists, plus the coarse centroids and PQ codebooks spread over n.
    const double fixed = static_cast<double>(index_->nlist) * index_->d * 4 +
                         static_cast<double>(index_->pq.centroids.size()) * 4;
    return static_cast<double>(index_->code_size + sizeof(faiss::Index::idx_t)) + fixed / n;
  }

  int64_t built_with(const std::string& setting) const override {
    if (setting == "ivf_lists") return static_cast<int64_t>(index_->nlist);
    if (setting == "pq_m") return static_cast<int64_t>(index_->pq.M);
    return -1;
  }

  int64_t search_effort(const std::string& setting) const override {
    return setting == "nprobe" ? nprobe_ : -1;
  }

  void write(std::ostream& out) const override {
    put_kind(out, "ivfpq");
    write_faiss(out, index_.get());
  }

  bool holds(int64_t id) const {
    return id >= 0 && static_cast<uint64_t>(id) < held_.size() && held_[static_cast<size_t>(id)];
  }
  void mark(int64_t id, bool held) {
    if (id < 0) return;
    if (static_cast<uint64_t>(id) >= held_.size()) {
      if (!held) return;
      held_.resize(std::max<size_t>(static_cast<size_t>(id) + 1, held_.size() * 2));
    }
    held_[static_cast<size_t>(id)] = held;
  }

  static std::unique_ptr<IvfPqIndex> read(std::istream& in, int nprobe) {
    auto base = read_faiss(in);
    auto* ivf = dynamic_cast<faiss::IndexIVFPQ*>(base.get());
    VT_CHECK(ivf, "the vector index file is damaged (expected an IVF-PQ index)");
    base.release();
    std::unique_ptr<faiss::IndexIVFPQ> index(ivf);
    index->own_fields = true;  // the reader allocated the quantizer
    return std::make_unique<IvfPqIndex>(nullptr, std::move(index), nprobe);
  }

 private:
  std::unique_ptr<faiss::IndexFlatIP> quantizer_;  ///< when built here; read ones own theirs
  std::unique_ptr<faiss::IndexIVFPQ> index_;
  int nprobe_;
  std::vector<bool> held_;  ///< by id: in the lists (ids are never reused, so one bit each)
};

int default_pq_m(int64_t dim) {
  // About 4 dimensions per byte, at most 64 bytes, and a divisor of dim.
  int m = static_cast<int>(std::min<int64_t>(64, std::max<int64_t>(1, dim / 4)));
  while (m > 1 && dim % m != 0) --m;
  return m;
}

}  // namespace

const faiss::Index& faiss_index_of(const VectorIndex& index) {
  if (const auto* p = dynamic_cast<const PositionalIndex*>(&index)) return p->faiss();
  if (const auto* p = dynamic_cast<const IvfPqIndex*>(&index)) return p->faiss();
  VT_FAIL("not a FAISS-backed index");
}

int64_t default_ivf_lists(int64_t n, int64_t n_train) {
  return std::clamp<int64_t>(std::lround(4 * std::sqrt(static_cast<double>(n))), 1,
                             std::max<int64_t>(1, n_train / 39));
}

std::string resolve_index_kind(const IndexOptions& options, int64_t n) {
  if (options.kind != "auto") {
    VT_CHECK(options.kind == "flat" || options.kind == "hnsw" || options.kind == "ivfpq",
             "unknown index kind '", options.kind, "' (auto, flat, hnsw or ivfpq)");
    return options.kind;
  }
  if (n <= options.auto_flat_max) return "flat";
  return n <= options.auto_hnsw_max ? "hnsw" : "ivfpq";
}

std::unique_ptr<VectorIndex> make_index(const std::string& kind, int64_t dim,
                                        const IndexOptions& options, const float* train,
                                        int64_t n_train) {
  VT_CHECK(dim > 0, "an index needs a positive embedding width, got ", dim);
  try {
    if (kind == "flat") {
      return std::make_unique<PositionalIndex>(
          "flat", std::make_unique<faiss::IndexFlatIP>(dim), options.hnsw_ef_search);
    }
    if (kind == "hnsw") {
      VT_CHECK(options.hnsw_m >= 2 && options.hnsw_m <= 256, "--hnsw-m must be in 2..256, got ",
               options.hnsw_m);
      auto h = std::make_unique<faiss::IndexHNSWFlat>(dim, options.hnsw_m,
                                                      faiss::METRIC_INNER_PRODUCT);
      h->hnsw.efConstruction = options.hnsw_ef_construction;
      return std::make_unique<PositionalIndex>("hnsw", std::move(h), options.hnsw_ef_search);
    }
    VT_CHECK(kind == "ivfpq", "unknown index kind '", kind, "' (flat, hnsw or ivfpq)");
    VT_CHECK(n_train >= kIvfPqMinImages, "an IVF-PQ index learns its codebooks from the "
             "catalogue and needs at least ", kIvfPqMinImages, " images (there are ", n_train,
             "): use --index flat or hnsw");
    const int64_t lists =
        options.ivf_lists > 0 ? options.ivf_lists : default_ivf_lists(n_train, n_train);
    VT_CHECK(lists <= n_train, "--ivf-lists ", lists, " exceeds the ", n_train,
             " training vectors");
    const int m = options.pq_m > 0 ? options.pq_m : default_pq_m(dim);
    VT_CHECK(dim % m == 0, "--pq-m ", m, " must divide the embedding width ", dim);
    auto quantizer = std::make_unique<faiss::IndexFlatIP>(dim);
    auto ivf = std::make_unique<faiss::IndexIVFPQ>(quantizer.get(), dim, static_cast<size_t>(lists),
                                                   static_cast<size_t>(m), 8,
                                                   faiss::METRIC_INNER_PRODUCT);
    ivf->cp.verbose = false;
    // FAISS prints a warning per sub-quantizer (up to 64) when its codes have fewer than
    // min_points_per_centroid training vectors each; said here once instead.
    const auto codes = static_cast<int64_t>(ivf->pq.ksub);
    const int64_t recommended = codes * ivf->pq.cp.min_points_per_centroid;
    if (n_train < recommended) {
      spdlog::info("IVF-PQ learns its {} codebooks of {} codes from {} photos (FAISS "
                   "recommends {} or more): its recall is lower than a larger catalogue's",
                   m, codes, n_train, recommended);
    }
    ivf->pq.cp.min_points_per_centroid = 1;
    ivf->train(n_train, train);
    return std::make_unique<IvfPqIndex>(std::move(quantizer), std::move(ivf), options.nprobe);
  } catch (const faiss::FaissException& e) {
    VT_FAIL("FAISS could not build the ", kind, " index: ", e.what());
  }
}

std::unique_ptr<VectorIndex> read_index(std::istream& in, const IndexOptions& options) {
  const auto kind_length = get<uint32_t>(in);
  VT_CHECK(kind_length > 0 && kind_length < 16, "the vector index file is damaged");
  std::string kind(kind_length, '\0');
  in.read(kind.data(), kind_length);
  VT_CHECK(in, "the vector index file is truncated");
  if (kind == "ivfpq") return IvfPqIndex::read(in, options.nprobe);
  VT_CHECK(kind == "flat" || kind == "hnsw", "the vector index file names an unknown kind '",
           kind, "'");
  auto index = std::make_unique<PositionalIndex>(kind, nullptr, options.hnsw_ef_search);
  index->read_rest(in);
  return index;
}

}  // namespace vitrine::search
