// The service core behind `vitrine serve`, with no HTTP in it: the model (hot-reloadable),
// dynamic batching of concurrent requests, the search database, limits and metrics. The HTTP
// layer (serve/http_server.h) maps requests to these calls and ServiceError to status codes.
#pragma once

#include "vitrine/search/embedder.h"
#include "vitrine/search/search_db.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace at {
class Tensor;
}  // namespace at

namespace vitrine::models {
class Predictor;
}  // namespace vitrine::models

namespace vitrine::serve {

class Metrics;

/// An error with the HTTP status it maps to and a stable machine-readable code.
class ServiceError : public std::runtime_error {
 public:
  ServiceError(int status, std::string code, const std::string& message)
      : std::runtime_error(message), status_(status), code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string code_;
};

struct ServiceOptions {
  std::string model_dir;
  std::string db_dir;                 ///< empty: no search, no products
  search::IndexOptions index;         ///< the search effort asked for (given), else the db's
  std::string precision = "auto";     ///< auto | fp32 | bf16 | int8
  int64_t max_batch = 32;             ///< images per forward pass
  int64_t max_delay_ms = 5;           ///< how long a request may wait for others to join it
  int64_t queue_capacity = 256;       ///< waiting images beyond which requests get 429
  int64_t timeout_ms = 30'000;        ///< per request, queueing included
  int64_t max_pixels = 40'000'000;    ///< larger images: 422
  int64_t top_classes = 5;
};

/// One image through the model: its classes and its embedding.
struct Inference {
  std::vector<search::ClassScore> top;  ///< best first (empty for a backbone)
  std::vector<float> embedding;         ///< unit length
  std::string model_version;            ///< which model answered (hot reload)
};

/// A photo as the service keeps it: decoded and encoded again, so no metadata (EXIF: GPS,
/// camera, dates) survives and the orientation is applied. A JPEG stays a JPEG (quality 95: a
/// 12 MP photo as PNG was some 20 MB), others become PNG. `content_hash` is that of the PNG
/// encoding whatever the file's format, as the catalogue hashes photos, so a stored copy is
/// found again from its original.
struct StoredPhoto {
  std::vector<uint8_t> bytes;
  std::string extension;  ///< ".jpg" or ".png"
  std::string content_hash;
};

class Service {
 public:
  /// Loads the model (and opens the database); throws vitrine::Error when they cannot be used.
  Service(ServiceOptions options, std::shared_ptr<Metrics> metrics);
  ~Service();  ///< finishes the queued requests, then stops the batching thread
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  /// Decodes an encoded image (JPEG, PNG, WebP, BMP), queues it for the next batch and waits
  /// for its answer. Throws ServiceError: 400 undecodable, 422 too many pixels, 429 queue
  /// full, 503 shutting down, 504 timed out. With `stored`, the decoded photo is also encoded
  /// there for keeping (no metadata), within the same decode limits.
  Inference infer(const std::string& encoded, int64_t top_classes,
                  StoredPhoto* stored = nullptr);

  /// A Grad-CAM heatmap of class `label` for an encoded image: a PNG (base64) of the
  /// model's input crop, coloured blue (no evidence) to red (most). Runs outside the
  /// batcher (it needs gradients): at most kMaxExplaining at once, more get 429. With
  /// `model_version` (the one that answered infer), a model reloaded meanwhile gives 503
  /// rather than another model's heatmap. Throws ServiceError as infer does.
  std::string explain(const std::string& encoded, const std::string& label,
                      const std::string& model_version = "");
  /// Heatmaps computed at once: each is a forward and backward pass outside the batcher.
  static constexpr int kMaxExplaining = 2;

  bool has_search() const { return db_ != nullptr; }
  /// Applies what other processes stored or removed meanwhile to the index (as a search does
  /// first), and returns the photos it holds; 0 without a database.
  int64_t catch_up();
  /// The k best products for an embedding; throws ServiceError 404 without a database.
  std::vector<search::Hit> search(const std::vector<float>& embedding,
                                  const search::SearchOptions& options);

  /// Loads the model again (from `model_dir`, or the configured one when empty) and swaps it
  /// in once loaded: requests in flight finish with the old model, later ones use the new one.
  /// A model of another embedding width than the database's is refused. Reloads asked for
  /// at once run one after the other.
  void reload(const std::string& model_dir = "");

  bool ready() const { return ready_.load(); }
  /// At the start of a shutdown: /readyz answers 503 while requests in flight finish.
  void stopping();
  /// Stops accepting work (infer throws 503); queued requests are still answered.
  void drain();
  const ServiceOptions& options() const { return options_; }
  search::ModelStamp model_stamp() const;
  std::vector<std::string> labels() const;
  int64_t queue_depth() const;
  search::SearchDb* db() { return db_.get(); }
  /// Readers (searches, product reads) share it; writers hold it alone. A writer waiting
  /// keeps new readers out, so a steady stream of searches cannot hold writes off.
  class DbMutex {
   public:
    void lock();
    void unlock() { rw_.unlock(); }
    void lock_shared();
    void unlock_shared() { rw_.unlock_shared(); }

   private:
    std::mutex gate_;
    std::shared_mutex rw_;
  };
  DbMutex& db_mutex() { return db_mutex_; }
  /// What a write holds: first no index save (a save holds the database lock shared for as
  /// long as the file takes, and a writer waiting on it would keep searches out), then the
  /// database lock alone.
  struct WriteLock {
    std::unique_lock<std::mutex> saves;
    std::unique_lock<DbMutex> db;
    void unlock() {
      db.unlock();
      saves.unlock();
    }
  };
  WriteLock lock_for_write();
  /// After storing products (no lock held): saves the index when the last save is 30 s old
  /// or more, not after every write. The file is written under a shared lock: searches go on
  /// meanwhile, writes wait (lock_for_write). One save at a time.
  void save_index_when_due();

 private:
  struct Batcher;
  /// Decodes and preprocesses an encoded image for `predictor`'s model, at most as many at
  /// once as there are cores (each may take max_pixels of memory); waits for a turn until
  /// `deadline`. An image `for_queue` is refused (429) at once when the batch queue is
  /// full. Throws ServiceError 400, 422, 429, 503 or 504.
  at::Tensor decode_input(const std::string& encoded, const models::Predictor& predictor,
                          std::chrono::steady_clock::time_point deadline, bool for_queue,
                          StoredPhoto* stored = nullptr);
  ServiceOptions options_;
  std::shared_ptr<Metrics> metrics_;
  std::unique_ptr<Batcher> batcher_;
  std::unique_ptr<search::SearchDb> db_;
  DbMutex db_mutex_;
  std::mutex save_mu_;    ///< one index save at a time; guards last_index_save_
  std::mutex reload_mu_;  ///< serialises reload(); guards options_.model_dir
  std::chrono::steady_clock::time_point last_index_save_{};
  std::atomic<bool> ready_{false};
  std::atomic<int> explaining_{0};  ///< heatmaps being computed
};

}  // namespace vitrine::serve
