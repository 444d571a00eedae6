// vectors.index layout (version 1): "VTIX", uint32 format version, uint32 header length,
// a JSON header {model: {id, version, dim}, applied_seq, kind, count}, then the index itself
// (VectorIndex::write).
#include "vitrine/search/search_db.h"

#include "vitrine/core/error.h"
#include "vitrine/core/fs.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <sys/stat.h>

namespace vitrine::search {
namespace fs = std::filesystem;

namespace {

constexpr char kMagic[4] = {'V', 'T', 'I', 'X'};

void put_u32(std::ostream& out, uint32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); }
uint32_t get_u32(std::istream& in) {
  uint32_t v = 0;
  in.read(reinterpret_cast<char*>(&v), 4);
  VT_CHECK(in, "the vector index file is truncated");
  return v;
}

/// The file at `path` as (inode, size, modification time) mixed into one number; 0 when
/// there is none. A file renamed over it (every save) has another inode.
uint64_t file_stamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const uint64_t v : {static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size),
                           static_cast<uint64_t>(st.st_mtim.tv_sec),
                           static_cast<uint64_t>(st.st_mtim.tv_nsec)}) {
    h = (h ^ v) * 0x100000001b3ULL;
  }
  return h | 1;  // never 0
}

nlohmann::json stamp_json(const ModelStamp& m) {
  return {{"id", m.id}, {"version", m.version}, {"dim", m.dim}};
}

/// The k best of the candidates `ids` (their embeddings at `vectors`, `dim` floats each) for
/// `query` by exact inner product, ties by id, written best first into `scores` and `out`;
/// -inf and -1 fill the rest, as VectorIndex::search does. `scratch` is reused across calls.
void exact_top_k(const float* query, int64_t dim, const std::vector<int64_t>& ids,
                 const std::vector<const float*>& vectors, int64_t k, float* scores,
                 int64_t* out, std::vector<std::pair<float, int64_t>>& scratch) {
  scratch.clear();
  for (size_t i = 0; i < ids.size(); ++i) {
    scratch.emplace_back(std::inner_product(query, query + dim, vectors[i], 0.0f), ids[i]);
  }
  const auto found = std::min<int64_t>(k, static_cast<int64_t>(scratch.size()));
  std::partial_sort(scratch.begin(), scratch.begin() + found, scratch.end(),
                    [](const auto& a, const auto& b) {
                      return a.first > b.first || (a.first == b.first && a.second < b.second);
                    });
  std::fill(scores, scores + k, -std::numeric_limits<float>::infinity());
  std::fill(out, out + k, int64_t{-1});
  for (int64_t j = 0; j < found; ++j) {
    scores[j] = scratch[static_cast<size_t>(j)].first;
    out[j] = scratch[static_cast<size_t>(j)].second;
  }
}

}  // namespace

std::unique_ptr<SearchDb> SearchDb::open(const std::string& dir, const IndexOptions& options) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  VT_CHECK(!ec && fs::is_directory(dir), "cannot create the search database folder ", dir, ": ",
           ec ? ec.message() : "a file has that name");
  std::unique_ptr<SearchDb> db(new SearchDb());
  db->dir_ = dir;
  db->asked_ = options;
  db->options_ = options;
  db->catalog_ = open_sqlite_catalog((fs::path(dir) / "catalog.sqlite").string());
  db->max_images_ = std::max<int64_t>(1, db->catalog_->max_images_per_product());
  db->catch_up();
  return db;
}

SearchDb::~SearchDb() = default;

std::string SearchDb::index_path() const { return (fs::path(dir_) / "vectors.index").string(); }

void SearchDb::use_model(const ModelStamp& model) {
  const auto before = catalog_->model();
  catalog_->set_model(model);
  if (!before || !(*before == model)) {
    index_.reset();  // an empty catalogue's index of another width is of no use
    catch_up();
  }
}

bool SearchDb::load_index_file() {
  const std::string path = index_path();
  if (!fs::exists(path)) {
    report_.why = "no index file yet";
    return false;
  }
  const auto model = catalog_->model();
  file_stamp_ = file_stamp(path);  // before reading: a file replaced meanwhile is read again
  options_ = asked_;  // what this command asked for, not what an earlier file had
  try {
    std::ifstream in(path, std::ios::binary);
    VT_CHECK(in, "cannot read ", path);
    char magic[4];
    in.read(magic, 4);
    VT_CHECK(in && std::memcmp(magic, kMagic, 4) == 0, path, " is not a Vitrine vector index");
    const uint32_t version = get_u32(in);
    VT_CHECK(version >= 1 && version <= kIndexFormatVersion, path, " has format version ",
             version, "; this build reads 1 to ", kIndexFormatVersion, ": upgrade Vitrine");
    const uint32_t header_length = get_u32(in);
    VT_CHECK(header_length < (1u << 20), path, " is damaged (header of ", header_length,
             " bytes)");
    std::string header_text(header_length, '\0');
    in.read(header_text.data(), header_length);
    VT_CHECK(in, path, " is truncated");
    const auto header = nlohmann::json::parse(header_text, nullptr, false);
    VT_CHECK(header.is_object() && header.contains("model") && header.contains("applied_seq"),
             path, " has a damaged header");
    const auto& m = header.at("model");
    const ModelStamp stamp{m.at("id").get<std::string>(), m.at("version").get<std::string>(),
                           m.at("dim").get<int64_t>()};
    if (!model || !(stamp == *model)) {
      report_.why = "the index was made with another model than the catalogue's";
      return false;
    }
    // The database's search effort, kept through a rebuild of another kind or settings.
    stored_ef_search_ = header.value("hnsw_ef_search", IndexOptions{}.hnsw_ef_search);
    stored_nprobe_ = header.value("nprobe", IndexOptions{}.nprobe);
    auto index = read_index(in, options_);
    VT_CHECK(index->dim() == stamp.dim, path, " holds vectors of ", index->dim(),
             " dims, its header says ", stamp.dim);
    kind_option_ = options_.kind != "auto" ? options_.kind : header.value("kind_option", "auto");
    // Build settings a command leaves at their defaults are the index's own: a rebuild by
    // `vitrine remove` keeps the --pq-m that `vitrine index` was given. Settings asked for
    // (given, or not the default) that differ from those the index was built with rebuild it
    // (a file from before the header recorded them was built with the defaults). A value
    // asked for is compared with the one the index really has, so --ivf-lists 300 asked of
    // an index whose "auto" came to 300 lists keeps it.
    const IndexOptions defaults;
    std::string changed;  // the first setting asked for that the index was not built with
    const auto take = [&](const char* key, const char* flag, auto& value, auto default_value) {
      const bool asked = value != default_value || std::find(options_.given.begin(),
                                                             options_.given.end(),
                                                             key) != options_.given.end();
      const auto recorded = header.value(key, default_value);
      if (!asked) {
        value = recorded;
        return;
      }
      const int64_t real = index->built_with(key);
      if (real < 0 || !changed.empty()) return;  // a setting of another kind of index
      // 0 asks for "auto": the index matches when it was built with auto too.
      const int64_t built = value > 0 ? real : static_cast<int64_t>(recorded);
      if (built != static_cast<int64_t>(value)) {
        changed = "the index was built with " + std::string(flag) + " " +
                  std::to_string(built) + ", " + std::to_string(value) + " is asked for";
      }
    };
    take("hnsw_m", "--hnsw-m", options_.hnsw_m, defaults.hnsw_m);
    take("hnsw_ef_construction", "--ef-construction", options_.hnsw_ef_construction,
         defaults.hnsw_ef_construction);
    take("ivf_lists", "--ivf-lists", options_.ivf_lists, defaults.ivf_lists);
    take("pq_m", "--pq-m", options_.pq_m, defaults.pq_m);
    const std::string want = target_kind(catalog_->image_count());
    if (want != index->kind()) {
      const bool too_few = want == "flat" && (options_.kind == "ivfpq" ||
                                              (options_.kind == "auto" && kind_option_ == "ivfpq"));
      report_.why = too_few ? "IVF-PQ needs " + std::to_string(kIvfPqMinImages) +
                                  " images or more, a flat index serves until then; the file "
                                  "holds " + index->kind()
                            : "a " + want + " index is asked for, the file holds " +
                                  index->kind();
      return false;
    }
    if (!changed.empty()) {
      report_.why = changed;
      return false;
    }
    index_ = std::move(index);
    applied_seq_ = header.at("applied_seq").get<int64_t>();
    saved_seq_ = applied_seq_;
    apply_search_effort();
    return true;
  } catch (const std::exception& e) {
    // The catalogue holds everything needed to rebuild: never fail on a bad index file.
    spdlog::warn("{} (rebuilding it from the catalogue)", e.what());
    report_.why = std::string("the index file could not be read: ") + e.what();
    return false;
  }
}

std::string SearchDb::target_kind(int64_t n) const {
  IndexOptions options = options_;
  if (options.kind == "auto") options.kind = kind_option_;
  const std::string kind = resolve_index_kind(options, n);
  return kind == "ivfpq" && n < kIvfPqMinImages ? "flat" : kind;
}

void SearchDb::apply_search_effort() {
  const auto given = [this](const char* key) {
    return std::find(options_.given.begin(), options_.given.end(), key) != options_.given.end();
  };
  // `vitrine index --ef-search N` sets the database's own; the file is saved with it.
  if (options_.store_search_effort) {
    const int ef = given("hnsw_ef_search") ? options_.hnsw_ef_search : stored_ef_search_;
    const int nprobe = given("nprobe") ? options_.nprobe : stored_nprobe_;
    if (ef != stored_ef_search_ || nprobe != stored_nprobe_) saved_seq_ = -1;
    stored_ef_search_ = ef;
    stored_nprobe_ = nprobe;
  }
  if (!index_) return;
  IndexOptions effort = options_;
  if (!given("hnsw_ef_search")) effort.hnsw_ef_search = stored_ef_search_;
  if (!given("nprobe")) effort.nprobe = stored_nprobe_;
  index_->set_search_options(effort);
}

void SearchDb::catch_up() {
  const auto model = catalog_->model();
  if (!model) return;  // nothing stored yet
  if (!index_ && !load_index_file()) {
    rebuild(report_.why);
    return;
  }
  const int64_t last = catalog_->last_change();
  if (applied_seq_ == last) return;
  if (applied_seq_ > last) {
    rebuild("the index is ahead of the catalogue (a catalogue restored from an older backup?)");
    return;
  }
  const int64_t first = catalog_->first_change();
  if (first == 0 || first > applied_seq_ + 1) {
    rebuild("the catalogue's change log no longer reaches back to the index");
    return;
  }
  const auto changes = catalog_->changes_since(applied_seq_);
  // Another process may have trimmed the log between the reads above: sequence numbers have
  // no gaps, so a log that does not start right after this index's last change lacks some.
  if (changes.empty() || changes.front().seq != applied_seq_ + 1) {
    rebuild("the catalogue's change log no longer reaches back to the index");
    return;
  }
  apply_changes(changes);
  report_.replayed += static_cast<int64_t>(changes.size());
  if (index_->wants_rebuild()) rebuild("many removals: rebuilding reclaims the index's memory");
}

bool SearchDb::file_rewritten() const {
  if (!index_) return false;  // catch_up reads the file
  const uint64_t now = file_stamp(index_path());
  return now != 0 && now != file_stamp_;
}

bool SearchDb::stale() const {
  return catalog_->last_change() != applied_seq_ || file_rewritten();
}

void SearchDb::refresh() {
  if (!stale()) return;
  if (!index_) {
    catch_up();  // the first embeddings, stored by another process
    max_images_ = std::max<int64_t>(1, catalog_->max_images_per_product());
    return;
  }
  // Another process changed the catalogue. When it also saved its index, it trimmed the log
  // this index would catch up from: load its file, which holds those changes, instead. A
  // file it wrote is taken too where the log brings it up to date: it may be of another
  // kind or settings, which this process's next save must not undo.
  const int64_t first = catalog_->first_change();
  const bool rewritten = file_rewritten();
  if (rewritten || first == 0 || first > applied_seq_ + 1) {
    auto mine = std::move(index_);
    const int64_t applied = applied_seq_, saved = saved_seq_;
    const IndexOptions options = options_;
    const std::string kind_option = kind_option_;
    const int ef_search = stored_ef_search_, nprobe = stored_nprobe_;
    const bool loaded = load_index_file();
    const bool replays = first != 0 && first <= applied_seq_ + 1;
    if (!loaded || (applied_seq_ < applied && !(rewritten && replays))) {
      index_ = std::move(mine);  // catch_up rebuilds it when it cannot catch up
      applied_seq_ = applied;
      saved_seq_ = saved;
      options_ = options;  // as this index was built
      kind_option_ = kind_option;
      stored_ef_search_ = ef_search;
      stored_nprobe_ = nprobe;
    } else if (rewritten) {
      spdlog::info("took the {} index another process wrote to {}", index_->kind(),
                   index_path());
    }
  }
  catch_up();
  max_images_ = std::max<int64_t>(1, catalog_->max_images_per_product());
}

void SearchDb::apply_changes(const std::vector<Change>& changes) {
  // Net effect in order: an image added and removed within the window never reaches the
  // index; ids are never reused, so a removal of an id not added in the window was in it.
  std::vector<int64_t> added;
  std::unordered_set<int64_t> pending;
  std::vector<int64_t> removed;
  for (const auto& c : changes) {
    if (!c.removed) {
      pending.insert(c.image_id);
      added.push_back(c.image_id);
    } else if (pending.erase(c.image_id) == 0) {
      removed.push_back(c.image_id);
    }
  }
  index_->remove(removed);
  std::vector<int64_t> to_add;
  for (const int64_t id : added) {
    if (pending.count(id)) to_add.push_back(id);
  }
  constexpr size_t kBatch = 4096;
  for (size_t begin = 0; begin < to_add.size(); begin += kBatch) {
    std::vector<int64_t> ids(to_add.begin() + static_cast<std::ptrdiff_t>(begin),
                             to_add.begin() + static_cast<std::ptrdiff_t>(
                                                  std::min(to_add.size(), begin + kBatch)));
    // An image another process removed since the log was read: its removal comes next time.
    const auto values = catalog_->stored_embeddings(ids);
    if (!ids.empty()) index_->add(values.data(), ids.data(), static_cast<int64_t>(ids.size()));
  }
  if (!changes.empty()) applied_seq_ = changes.back().seq;
}

void SearchDb::rebuild(const std::string& why) {
  const auto model = catalog_->model();
  VT_DCHECK(model.has_value());
  report_.rebuilt = true;
  report_.why = why;
  // An explicit kind, given now or when the index was first built, stays.
  IndexOptions options = options_;
  if (options.kind == "auto") options.kind = kind_option_;
  // Another process may add products while this one scans: then scan again.
  for (int attempt = 0;; ++attempt) {
    const int64_t seq = catalog_->last_change();
    const int64_t n = catalog_->image_count();
    const std::string kind = target_kind(n);
    if (n > 0) spdlog::info("building the {} index of {} images ({})", kind, n, why);
    std::vector<float> train;
    int64_t n_train = 0;
    if (kind == "ivfpq") {
      // A strided sample of up to 100k images teaches the coarse centroids and codebooks.
      const int64_t stride = std::max<int64_t>(1, (n + 99'999) / 100'000);
      int64_t seen = 0;
      catalog_->scan_embeddings(8192, [&](const std::vector<int64_t>& ids,
                                          const std::vector<float>& values) {
        for (size_t i = 0; i < ids.size(); ++i, ++seen) {
          if (seen % stride != 0) continue;
          const auto row = values.begin() + static_cast<std::ptrdiff_t>(i * model->dim);
          train.insert(train.end(), row, row + model->dim);
          ++n_train;
        }
      });
    }
    IndexOptions built = options;
    // The list count of the whole catalogue, not of the sample the codebooks learn from.
    if (kind == "ivfpq" && built.ivf_lists <= 0) built.ivf_lists = default_ivf_lists(n, n_train);
    auto index = make_index(kind, model->dim, built, train.data(), n_train);
    train = {};
    catalog_->scan_embeddings(8192, [&](const std::vector<int64_t>& ids,
                                        const std::vector<float>& values) {
      index->add(values.data(), ids.data(), static_cast<int64_t>(ids.size()));
    });
    if (catalog_->last_change() == seq || attempt == 2) {
      VT_CHECK(catalog_->last_change() == seq, "the catalogue kept changing while its index was "
               "rebuilt: stop the other writers and open it again");
      index_ = std::move(index);
      kind_option_ = options.kind;
      applied_seq_ = seq;
      saved_seq_ = -1;
      apply_search_effort();
      return;
    }
  }
}

std::string SearchDb::photo_dir() const {
  return fs::absolute(fs::path(dir_) / "images").lexically_normal().string();
}

std::vector<std::string> SearchDb::owned_photos(const std::vector<std::string>& skus) const {
  std::error_code ec;
  const auto dir = fs::weakly_canonical(photo_dir(), ec);
  std::vector<std::string> out;
  if (ec) return out;
  for (const auto& sku : skus) {
    for (const auto& [ref, hash] : catalog_->image_hashes(sku)) {
      // Only <hash>.png and <hash>.jpg files can be the service's: look no further at others.
      const std::string name = fs::path(ref).filename().string();
      if (name != hash + ".png" && name != hash + ".jpg") continue;
      if (fs::weakly_canonical(ref, ec).parent_path() == dir && !ec) out.push_back(ref);
    }
  }
  return out;
}

void SearchDb::drop_orphan_photos(const std::vector<std::string>& refs) {
  // Stored photos are named by their content hash, which is also stored beside each image:
  // the images of that hash tell whether any still names the file.
  std::error_code ec;
  for (const auto& ref : refs) {
    const auto file = fs::weakly_canonical(ref, ec);
    if (ec) continue;
    bool used = false;
    for (const auto& r : catalog_->images(catalog_->image_ids_with_hash(fs::path(ref).stem()))) {
      const auto other = fs::weakly_canonical(r.ref, ec);
      used = used || ec || other == file;  // when in doubt, it is in use
    }
    if (used) continue;
    fs::remove(file, ec);
    if (ec) spdlog::warn("cannot delete the unused photo {}: {}", ref, ec.message());
  }
}

void SearchDb::upsert(const std::vector<ProductUpdate>& batch) {
  std::vector<std::string> skus;
  for (const auto& u : batch) skus.push_back(u.product.sku);
  refresh();
  const auto before = owned_photos(skus);
  catalog_->upsert(batch);
  for (const auto& u : batch) {
    max_images_ = std::max<int64_t>(max_images_, static_cast<int64_t>(u.images.size()));
  }
  catch_up();
  drop_orphan_photos(before);
}

std::vector<std::string> SearchDb::remove(const std::vector<std::string>& skus) {
  refresh();
  const auto before = owned_photos(skus);
  auto unknown = catalog_->remove(skus);
  catch_up();
  if (unknown.size() < skus.size()) catalog_->reclaim_space();
  drop_orphan_photos(before);
  return unknown;
}

void SearchDb::save() {
  if (prepare_save()) saved(write_index_file());
}

bool SearchDb::prepare_save() {
  if (!index_) return false;
  // Another process may have saved a newer file meanwhile (and trimmed the log up to it):
  // take its changes first, so that this file never replaces it with an older state.
  refresh();
  if (target_kind(index_->size()) != index_->kind()) {
    rebuild("the catalogue outgrew its " + index_->kind() + " index");
  }
  return saved_seq_ != applied_seq_;
}

int64_t SearchDb::write_index_file() const {
  VT_DCHECK(index_ != nullptr);
  const auto model = catalog_->model();
  VT_DCHECK(model.has_value());
  const nlohmann::json header{{"model", stamp_json(*model)},
                              {"applied_seq", applied_seq_},
                              {"kind", index_->kind()},
                              {"kind_option", kind_option_},
                              {"count", index_->size()},
                              // How to build it again (a rebuild by a later command):
                              {"hnsw_m", options_.hnsw_m},
                              {"hnsw_ef_construction", options_.hnsw_ef_construction},
                              {"ivf_lists", options_.ivf_lists},
                              {"pq_m", options_.pq_m},
                              // The search effort of later commands that ask for none:
                              {"hnsw_ef_search", stored_ef_search_},
                              {"nprobe", stored_nprobe_}};
  const std::string header_text = header.dump();
  write_file_atomic(index_path(), [&](std::ostream& out) {
    out.write(kMagic, 4);
    put_u32(out, kIndexFormatVersion);
    put_u32(out, static_cast<uint32_t>(header_text.size()));
    out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
    index_->write(out);
  });
  file_stamp_ = file_stamp(index_path());
  return applied_seq_;
}

void SearchDb::saved(int64_t seq) {
  saved_seq_ = std::max(saved_seq_, seq);
  // The file holds every change up to seq: the log before it is not needed.
  catalog_->forget_changes_through(seq);
}

void SearchDb::search_images(const float* queries, int64_t nq, int64_t k,
                             const std::vector<int64_t>* allowed, float* scores,
                             int64_t* ids) const {
  VT_CHECK(index_, "search_images: no index");
  if (index_->kind() != "ivfpq") {
    index_->search(queries, nq, k, allowed, scores, ids);
    return;
  }
  // IVF-PQ scores are estimates from the compressed codes (a photo against itself may score
  // 0.94): four times as many candidates as asked are scored again exactly from the stored
  // embeddings, as FAISS's IndexRefineFlat does.
  const int64_t pool = allowed ? static_cast<int64_t>(allowed->size()) : index_->size();
  const int64_t fetch = std::max<int64_t>(k, std::min(pool, k * 4));
  const int64_t dim = index_->dim();
  std::vector<float> rough(static_cast<size_t>(nq * fetch));
  std::vector<int64_t> candidates(static_cast<size_t>(nq * fetch));
  index_->search(queries, nq, fetch, allowed, rough.data(), candidates.data());
  std::vector<int64_t> stored;
  for (const int64_t id : candidates) {
    if (id >= 0) stored.push_back(id);
  }
  std::sort(stored.begin(), stored.end());
  stored.erase(std::unique(stored.begin(), stored.end()), stored.end());
  const auto values = catalog_->stored_embeddings(stored);  // drops ids removed meanwhile
  std::vector<int64_t> mine;
  std::vector<const float*> vectors;
  std::vector<std::pair<float, int64_t>> scratch;
  for (int64_t q = 0; q < nq; ++q) {
    mine.clear();
    vectors.clear();
    for (int64_t j = 0; j < fetch; ++j) {
      const int64_t id = candidates[static_cast<size_t>(q * fetch + j)];
      const auto at = std::lower_bound(stored.begin(), stored.end(), id);
      if (id < 0 || at == stored.end() || *at != id) continue;
      mine.push_back(id);
      vectors.push_back(values.data() + (at - stored.begin()) * dim);
    }
    exact_top_k(queries + q * dim, dim, mine, vectors, k, scores + q * k, ids + q * k, scratch);
  }
}

std::vector<std::vector<Hit>> SearchDb::search(const float* queries, int64_t nq,
                                               const SearchOptions& options) const {
  VT_CHECK(options.k > 0, "k must be positive, got ", options.k);
  std::vector<std::vector<Hit>> out(static_cast<size_t>(nq));
  if (!index_ || nq == 0) return out;
  const int64_t dim = index_->dim();
  std::optional<std::vector<int64_t>> allowed;
  if (!options.filters.empty()) allowed = catalog_->image_ids(options.filters);
  const int64_t pool = allowed ? static_cast<int64_t>(allowed->size()) : index_->size();
  // Each product holds at most max_images_ images, so the best k * max_images_ images name
  // at least k distinct products (or all there are): the top k products are among them.
  VT_CHECK(options.exclude_images.empty() ||
               static_cast<int64_t>(options.exclude_images.size()) == nq,
           "exclude_images must hold one list per query");
  size_t most_excluded = 0;
  for (const auto& e : options.exclude_images) most_excluded = std::max(most_excluded, e.size());
  const int64_t k_images = std::min<int64_t>(
      pool, options.k * max_images_ + static_cast<int64_t>(most_excluded));
  if (k_images == 0) return out;
  std::vector<float> scores(static_cast<size_t>(nq * k_images));
  std::vector<int64_t> ids(static_cast<size_t>(nq * k_images));
  if (allowed && pool <= options.exact_below && !index_->exact_among(pool)) {
    // Small filtered sets the index would not score exactly: every allowed image from the
    // stored embeddings. Images another process removed since they were listed are left out.
    const auto values = catalog_->stored_embeddings(*allowed);
    std::vector<const float*> vectors;
    for (size_t i = 0; i < allowed->size(); ++i) vectors.push_back(values.data() + i * dim);
    std::vector<std::pair<float, int64_t>> scratch;
    for (int64_t q = 0; q < nq; ++q) {
      exact_top_k(queries + q * dim, dim, *allowed, vectors, k_images,
                  scores.data() + q * k_images, ids.data() + q * k_images, scratch);
    }
  } else {
    search_images(queries, nq, k_images, allowed ? &*allowed : nullptr, scores.data(),
                  ids.data());
  }
  // Describe every image found once, then keep each product's best image.
  std::vector<int64_t> found;
  for (const int64_t id : ids) {
    if (id >= 0) found.push_back(id);
  }
  std::sort(found.begin(), found.end());
  found.erase(std::unique(found.begin(), found.end()), found.end());
  std::unordered_map<int64_t, ImageRecord> records;
  for (auto& r : catalog_->images(found)) records.emplace(r.id, std::move(r));
  for (int64_t q = 0; q < nq; ++q) {
    auto& hits = out[static_cast<size_t>(q)];
    std::unordered_set<std::string> seen;
    for (int64_t j = 0; j < k_images && static_cast<int64_t>(hits.size()) < options.k; ++j) {
      const int64_t id = ids[static_cast<size_t>(q * k_images + j)];
      const auto it = records.find(id);
      if (id < 0 || it == records.end()) continue;
      if (!options.exclude_images.empty()) {
        const auto& skip = options.exclude_images[static_cast<size_t>(q)];
        if (std::find(skip.begin(), skip.end(), id) != skip.end()) continue;
      }
      if (!seen.insert(it->second.product.sku).second) continue;
      // Cosine similarity of unit vectors, up to float rounding (1.0000002): kept in [-1, 1].
      const float score = std::clamp(scores[static_cast<size_t>(q * k_images + j)], -1.0f, 1.0f);
      hits.push_back({score, id, it->second.ref, it->second.product});
    }
  }
  return out;
}

}  // namespace vitrine::search
