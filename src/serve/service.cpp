// Dynamic batching: request threads decode and preprocess their image, queue it and wait; one
// batching thread takes up to max_batch queued images (waiting at most max_delay_ms for the
// first one's company), runs one forward pass and hands each request its own row. The model
// sits in a shared_ptr swapped whole on reload: a queued image keeps the model it was
// preprocessed for, and a batch only mixes images of the same model.
#include "vitrine/serve/service.h"

#include "vitrine/core/base64.h"
#include "vitrine/core/error.h"
#include "vitrine/core/hash.h"
#include "vitrine/image/decode.h"
#include "vitrine/models/model_dir.h"
#include "vitrine/models/predictor.h"
#include "vitrine/serve/metrics.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <optional>
#include <thread>

namespace vitrine::serve {
namespace {

using Clock = std::chrono::steady_clock;

/// A loaded model and what requests need to know about it.
struct ModelSlot {
  models::Predictor predictor;
  search::ModelStamp stamp;
  std::vector<std::string> labels;
};

std::shared_ptr<const ModelSlot> load_slot(const std::string& dir, const std::string& precision) {
  auto model = models::load_model(dir);
  std::vector<std::string> labels;
  for (int64_t i = 0; i < model->config().num_classes; ++i) labels.push_back(model->config().label(i));
  auto stamp = search::read_model_stamp(dir);
  models::Predictor predictor(model, models::parse_precision(precision));
  spdlog::info("model {} ({}): {} engine, {}", dir, model->config().arch,
               models::engine_name(predictor.engine()),
               models::precision_name(predictor.precision()));
  return std::make_shared<const ModelSlot>(ModelSlot{std::move(predictor), stamp, labels});
}

struct Job {
  std::shared_ptr<const ModelSlot> slot;
  at::Tensor input;
  int64_t top_classes = 5;
  Clock::time_point deadline;
  std::promise<Inference> done;
  std::atomic<bool> abandoned{false};  ///< the request timed out; skip it
};

}  // namespace

struct Service::Batcher {
  Batcher(const ServiceOptions& o, std::shared_ptr<Metrics> m) : options(o), metrics(std::move(m)) {}

  const ServiceOptions& options;
  std::shared_ptr<Metrics> metrics;
  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Job>> queue;
  bool accepting = true, stopping = false;
  /// Photos being decoded now (guarded by mu): a decoded photo takes far more memory than
  /// its file (a 100 KB PNG of 40 MP decodes to over 100 MB), so only so many at once.
  int64_t decoding = 0;
  std::condition_variable decoded;  ///< a decode finished
  std::shared_ptr<const ModelSlot> model;  ///< guarded by mu
  std::thread worker;

  /// Throws when a photo must be refused now (mu held): 503 while shutting down, and for
  /// a photo `for_queue`, 429 when the batch queue is full.
  void check_open(bool for_queue) const {
    if (!accepting) {
      throw ServiceError(503, "shutting_down", "the service is shutting down; retry elsewhere");
    }
    if (for_queue && static_cast<int64_t>(queue.size()) >= options.queue_capacity) {
      metrics->count_rejected();
      throw ServiceError(429, "overloaded",
                         "too many images are waiting (" + std::to_string(options.queue_capacity) +
                             "); retry after a second");
    }
  }

  std::shared_ptr<const ModelSlot> current() const {
    std::lock_guard<std::mutex> lock(mu);
    return model;
  }

  void run() {
    for (;;) {
      std::vector<std::shared_ptr<Job>> batch;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (queue.empty()) return;  // stopping, nothing left
        // Give others a moment to join the first one, unless the batch is full already.
        const auto until = Clock::now() + std::chrono::milliseconds(options.max_delay_ms);
        cv.wait_until(lock, until, [&] {
          return stopping || static_cast<int64_t>(queue.size()) >= options.max_batch;
        });
        const auto slot = queue.front()->slot;
        while (!queue.empty() && static_cast<int64_t>(batch.size()) < options.max_batch &&
               queue.front()->slot == slot) {
          batch.push_back(std::move(queue.front()));
          queue.pop_front();
        }
        metrics->set_queue_depth(static_cast<int64_t>(queue.size()));
      }
      run_batch(batch);
    }
  }

  void run_batch(std::vector<std::shared_ptr<Job>>& batch) {
    std::vector<std::shared_ptr<Job>> live;
    for (auto& job : batch) {
      if (!job->abandoned.load()) live.push_back(job);
    }
    if (live.empty()) return;
    const auto t0 = Clock::now();
    try {
      std::vector<at::Tensor> inputs;
      for (const auto& job : live) inputs.push_back(job->input);
      const auto& slot = *live.front()->slot;
      auto [features, scores] = slot.predictor.embeddings_and_scores(at::stack(inputs));
      c10::InferenceMode guard;
      features = models::l2_normalized(features).contiguous();
      const int64_t dim = features.size(1);
      const float* f = features.data_ptr<float>();
      for (size_t i = 0; i < live.size(); ++i) {
        Inference out;
        out.embedding.assign(f + i * dim, f + (i + 1) * dim);
        out.model_version = slot.stamp.version;
        if (scores.defined()) {
          const int64_t k = std::min<int64_t>(live[i]->top_classes, scores.size(1));
          const auto [values, indices] = scores[static_cast<int64_t>(i)].topk(k);
          for (int64_t j = 0; j < k; ++j) {
            out.top.push_back({slot.labels.at(static_cast<size_t>(indices[j].item<int64_t>())),
                               values[j].item<float>()});
          }
        }
        live[i]->done.set_value(std::move(out));
      }
    } catch (...) {
      // One failure answers the whole batch with it; the service goes on.
      for (auto& job : live) {
        try {
          job->done.set_exception(std::current_exception());
        } catch (const std::future_error&) {
        }
      }
    }
    metrics->observe_batch(static_cast<int64_t>(live.size()),
                           std::chrono::duration<double>(Clock::now() - t0).count());
  }
};

Service::Service(ServiceOptions options, std::shared_ptr<Metrics> metrics)
    : options_(std::move(options)), metrics_(std::move(metrics)) {
  VT_CHECK(options_.max_batch >= 1, "--max-batch must be at least 1");
  VT_CHECK(options_.queue_capacity >= 1, "--queue must be at least 1");
  batcher_ = std::make_unique<Batcher>(options_, metrics_);
  batcher_->model = load_slot(options_.model_dir, options_.precision);
  if (!options_.db_dir.empty()) {
    if (!std::filesystem::exists(std::filesystem::path(options_.db_dir) / "catalog.sqlite")) {
      spdlog::warn("no search database in {}: starting an empty one (fill it with `vitrine "
                   "index` or PUT/POST /v1/products; if you meant an existing one, check --db)",
                   options_.db_dir);
    }
    db_ = search::SearchDb::open(options_.db_dir, options_.index);
    const auto stored = db_->model();
    if (stored) {
      VT_CHECK(*stored == batcher_->model->stamp, "the database ", options_.db_dir,
               " was indexed with ", search::model_mismatch(*stored, batcher_->model->stamp),
               ": serve the model it was indexed with, or index the catalogue into a new --db");
    } else {
      db_->use_model(batcher_->model->stamp);
    }
    metrics_->set_index_size(db_->index() ? db_->index()->size() : 0);
  }
  batcher_->worker = std::thread([this] { batcher_->run(); });
  ready_ = true;
}

Service::~Service() {
  {
    std::lock_guard<std::mutex> lock(batcher_->mu);
    batcher_->accepting = false;
    batcher_->stopping = true;
  }
  batcher_->cv.notify_all();
  batcher_->decoded.notify_all();
  if (batcher_->worker.joinable()) batcher_->worker.join();
  if (db_) {
    try {
      std::lock_guard<std::mutex> saving(save_mu_);
      std::lock_guard<DbMutex> lock(db_mutex_);
      db_->save();
    } catch (const std::exception& e) {
      spdlog::error("could not save the search index: {} (it is rebuilt from the catalogue "
                    "at the next start)", e.what());
    }
  }
}

Service::WriteLock Service::lock_for_write() {
  WriteLock w;
  w.saves = std::unique_lock<std::mutex>(save_mu_);
  w.db = std::unique_lock<DbMutex>(db_mutex_);
  return w;
}

void Service::DbMutex::lock() {
  std::lock_guard<std::mutex> gate(gate_);  // new readers wait from now on
  rw_.lock();
}

void Service::DbMutex::lock_shared() {
  std::lock_guard<std::mutex> gate(gate_);
  rw_.lock_shared();
}

void Service::save_index_when_due() {
  // A save writes the whole index: for every stored product of a large catalogue that is
  // gigabytes. Changes not saved yet are replayed from the catalogue's change log at the
  // next start, and the index is saved at shutdown.
  std::unique_lock<std::mutex> saving(save_mu_, std::try_to_lock);
  if (!saving.owns_lock()) return;  // another request is saving
  const auto now = Clock::now();
  if (now - last_index_save_ < std::chrono::seconds(30)) return;
  last_index_save_ = now;  // a failing save is tried again in 30 s, not at every write
  try {
    {
      std::lock_guard<DbMutex> lock(db_mutex_);
      if (!db_->prepare_save()) return;
    }
    int64_t seq = 0;
    {
      std::shared_lock<DbMutex> lock(db_mutex_);  // searches go on while the file is written
      seq = db_->write_index_file();
    }
    std::lock_guard<DbMutex> lock(db_mutex_);
    db_->saved(seq);
  } catch (const std::exception& e) {  // the products are stored: the change log has them
    spdlog::error("could not save the search index: {} (the catalogue's change log keeps "
                  "the changes; tried again in 30 s)", e.what());
  }
}

void Service::stopping() { ready_ = false; }

void Service::drain() {
  {
    std::lock_guard<std::mutex> lock(batcher_->mu);
    batcher_->accepting = false;
  }
  batcher_->decoded.notify_all();  // photos waiting to be decoded are refused now
  ready_ = false;
}

search::ModelStamp Service::model_stamp() const { return batcher_->current()->stamp; }
std::vector<std::string> Service::labels() const { return batcher_->current()->labels; }

int64_t Service::queue_depth() const {
  std::lock_guard<std::mutex> lock(batcher_->mu);
  return static_cast<int64_t>(batcher_->queue.size());
}

at::Tensor Service::decode_input(const std::string& encoded, const models::Predictor& predictor,
                                 Clock::time_point deadline, bool for_queue,
                                 StoredPhoto* stored) {
  const auto* data = reinterpret_cast<const uint8_t*>(encoded.data());
  image::ImageInfo info{};
  try {
    info = image::probe(data, encoded.size());
  } catch (const Error& e) {
    throw ServiceError(400, "bad_image", e.what());
  }
  if (info.width * info.height > options_.max_pixels) {
    throw ServiceError(422, "too_many_pixels",
                       "the image has " + std::to_string(info.width) + " x " +
                           std::to_string(info.height) + " pixels, more than the " +
                           std::to_string(options_.max_pixels) + " this service accepts; send a "
                           "smaller one");
  }
  // Refused before decoding when it would be refused after (shutting down, a full queue),
  // and at most as many decoded at once as there are cores.
  const auto limit = static_cast<int64_t>(std::max(2u, std::thread::hardware_concurrency()));
  {
    std::unique_lock<std::mutex> lock(batcher_->mu);
    batcher_->check_open(for_queue);
    if (!batcher_->decoded.wait_until(lock, deadline, [&] {
          return batcher_->decoding < limit || !batcher_->accepting;
        })) {
      throw ServiceError(504, "timeout",
                         "no answer within " + std::to_string(options_.timeout_ms) + " ms");
    }
    batcher_->check_open(for_queue);
    ++batcher_->decoding;
  }
  // The turn is given back however decoding ends.
  struct Turn {
    Batcher& b;
    ~Turn() {
      {
        std::lock_guard<std::mutex> lock(b.mu);
        --b.decoding;
      }
      // All: a woken request may be refused (a full queue) without taking the turn.
      b.decoded.notify_all();
    }
  } turn{*batcher_};
  try {
    image::DecodeOptions decode;
    decode.max_pixels = options_.max_pixels;
    const cv::Mat rgb = image::decode(data, encoded.size(), decode);
    if (stored != nullptr) {
      auto png = image::encode_png(rgb);
      stored->content_hash = sha256_hex(png.data(), png.size());
      if (info.format == image::Format::kJpeg) {
        stored->bytes = image::encode_jpeg(rgb, /*quality=*/95);
        stored->extension = ".jpg";
      } else {
        stored->bytes = std::move(png);
        stored->extension = ".png";
      }
    }
    return predictor.preprocess(rgb);
  } catch (const Error& e) {
    throw ServiceError(400, "bad_image", e.what());
  }
}

Inference Service::infer(const std::string& encoded, int64_t top_classes,
                         StoredPhoto* stored) {
  const auto slot = batcher_->current();
  const auto deadline = Clock::now() + std::chrono::milliseconds(options_.timeout_ms);
  auto job = std::make_shared<Job>();
  job->slot = slot;
  job->top_classes = top_classes;
  job->input = decode_input(encoded, slot->predictor, deadline, /*for_queue=*/true, stored);
  job->deadline = deadline;
  auto answer = job->done.get_future();
  {
    std::lock_guard<std::mutex> lock(batcher_->mu);
    batcher_->check_open(/*for_queue=*/true);  // the queue may have filled while decoding
    batcher_->queue.push_back(job);
    metrics_->set_queue_depth(static_cast<int64_t>(batcher_->queue.size()));
  }
  batcher_->cv.notify_all();
  if (answer.wait_until(job->deadline) != std::future_status::ready) {
    job->abandoned = true;
    throw ServiceError(504, "timeout",
                       "no answer within " + std::to_string(options_.timeout_ms) + " ms");
  }
  try {
    return answer.get();
  } catch (const ServiceError&) {
    throw;
  } catch (const std::exception& e) {
    // libtorch's messages carry source paths and stack traces: the log has them, the
    // client a summary.
    spdlog::error("the model failed on a request: {}", e.what());
    throw ServiceError(500, "model_failed", "the model failed on this request; see the "
                       "service's log");
  }
}

std::string Service::explain(const std::string& encoded, const std::string& label,
                             const std::string& model_version) {
  struct Held {  // one of kMaxExplaining, held for the call
    std::atomic<int>& n;
    ~Held() { --n; }
  };
  if (++explaining_ > kMaxExplaining) {
    --explaining_;
    throw ServiceError(429, "busy", "heatmaps are being computed for other requests; retry, "
                       "or ask without explain");
  }
  const Held held{explaining_};
  const auto slot = batcher_->current();
  if (!model_version.empty() && slot->stamp.version != model_version) {
    throw ServiceError(503, "model_reloaded", "the model was reloaded during this request; "
                       "send it again");
  }
  const auto it = std::find(slot->labels.begin(), slot->labels.end(), label);
  if (it == slot->labels.end()) throw ServiceError(400, "bad_label", "no class '" + label + "'");
  // Not queued (it needs gradients): only the decode limit applies.
  const at::Tensor input =
      decode_input(encoded, slot->predictor,
                   Clock::now() + std::chrono::milliseconds(options_.timeout_ms), false);
  const at::Tensor cam = slot->predictor.grad_cam(input.unsqueeze(0), it - slot->labels.begin());
  cv::Mat grey(static_cast<int>(cam.size(0)), static_cast<int>(cam.size(1)), CV_32F,
               cam.data_ptr<float>());
  cv::Mat u8, colour;
  grey.convertTo(u8, CV_8U, 255.0);
  cv::applyColorMap(u8, colour, cv::COLORMAP_JET);  // BGR, as imencode wants
  std::vector<uint8_t> png;
  cv::imencode(".png", colour, png);
  return base64_encode(png);
}

int64_t Service::catch_up() {
  if (!db_) return 0;
  std::shared_lock<DbMutex> lock(db_mutex_);
  if (db_->stale()) {  // products another process stored or removed meanwhile
    lock.unlock();
    {
      const auto writer = lock_for_write();
      db_->refresh();
    }
    lock.lock();
  }
  const int64_t size = db_->index() ? db_->index()->size() : 0;
  metrics_->set_index_size(size);
  return size;
}

std::vector<search::Hit> Service::search(const std::vector<float>& embedding,
                                         const search::SearchOptions& options) {
  if (!db_) throw ServiceError(404, "no_catalogue", "this service runs without --db: no search");
  catch_up();
  std::shared_lock<DbMutex> lock(db_mutex_);
  if (db_->index() && db_->index()->dim() != static_cast<int64_t>(embedding.size())) {
    throw ServiceError(409, "model_mismatch",
                       "the model's embeddings do not fit the catalogue's index; re-index");
  }
  return db_->search(embedding.data(), 1, options).front();
}

void Service::reload(const std::string& model_dir) {
  // One reload at a time (SIGHUP and the admin route may ask at once): each loads a whole
  // model, and the later request must be the one that stays.
  std::lock_guard<std::mutex> one_at_a_time(reload_mu_);
  const std::string dir = model_dir.empty() ? options_.model_dir : model_dir;
  try {
    auto slot = load_slot(dir, options_.precision);
    if (db_) {
      const auto stored = db_->model();
      VT_CHECK(!stored || *stored == slot->stamp, "the new model ", slot->stamp.id,
               " is not the one the catalogue was indexed with (", stored ? stored->id : "",
               "); re-index the catalogue with it first");
    }
    {
      std::lock_guard<std::mutex> lock(batcher_->mu);
      batcher_->model = std::move(slot);
    }
    if (!model_dir.empty()) options_.model_dir = model_dir;
    metrics_->count_reload(true);
    spdlog::info("model reloaded from {}", dir);
  } catch (...) {
    metrics_->count_reload(false);
    throw;
  }
}

}  // namespace vitrine::serve
