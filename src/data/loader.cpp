// The loader hands out work one item at a time (so all workers stay busy even with a small
// prefetch), but only for items of the `prefetch` batches after the last one delivered,
// which bounds memory. Each finished item goes to its batch's slot by position; the worker
// that finishes a batch's last item assembles it. Results therefore land in order whatever
// the timing, and a generation counter lets start_epoch and the destructor abandon work in
// flight without waiting for it.
#include "vitrine/data/loader.h"

#include "vitrine/core/error.h"
#include "vitrine/core/random.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>
#include <thread>

namespace vitrine::data {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

constexpr uint64_t kOrderSalt = 0x6f72646572ull;     // "order"
constexpr uint64_t kSampleSalt = 0x73616d706c65ull;  // "sample"

uint64_t order_seed(uint64_t seed, int64_t epoch) {
  return splitmix64(splitmix64(seed ^ kOrderSalt) ^ static_cast<uint64_t>(epoch));
}

uint64_t sample_seed(uint64_t seed, int64_t epoch, int64_t index) {
  const uint64_t e = splitmix64(splitmix64(seed ^ kSampleSalt) ^ static_cast<uint64_t>(epoch));
  return splitmix64(e ^ static_cast<uint64_t>(index));
}

/// `weights.size()` draws with replacement, item i with probability weights[i] / sum:
/// inverse-CDF sampling on the running sums, so the draws depend on the seed alone.
std::vector<int64_t> weighted_draws(const std::vector<double>& weights, uint64_t seed) {
  std::vector<double> cumulative(weights.size());
  std::partial_sum(weights.begin(), weights.end(), cumulative.begin());
  const double total = cumulative.back();
  std::mt19937_64 rng(seed);
  std::vector<int64_t> out(weights.size());
  for (auto& index : out) {
    const double u = uniform(rng, 0.0, total);
    auto it = std::upper_bound(cumulative.begin(), cumulative.end(), u);
    // u < total, so `it` is in range unless rounding put u on the last sum.
    if (it == cumulative.end()) --it;
    index = it - cumulative.begin();
  }
  return out;
}

/// Failures past this many, and more than half of the items, end the epoch with an error.
constexpr int64_t kMinFailuresToStop = 8;

struct Sample {
  at::Tensor image;
  std::vector<int64_t> labels;
  int64_t index = -1;
  std::string error;  ///< "name: message"; empty when the item loaded
};

struct Slot {
  int64_t rows = 0;             ///< items of the batch, failed ones included
  std::vector<Sample> samples;  ///< by row, filled as workers finish
  int64_t done = 0;
  bool ready = false;
  Batch batch;                      ///< the loaded items, once ready
  std::vector<std::string> errors;  ///< failed items, in row order
  std::string fatal;                ///< set: next() throws this
};

std::string shape_of(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes() << " " << t.scalar_type();
  return os.str();
}

}  // namespace

struct Loader::Impl {
  std::shared_ptr<Dataset> data;
  SampleTransform transform;
  LoaderOptions options;
  int64_t size = 0;
  int64_t num_classes = 0;
  bool multi_label = false;

  mutable std::mutex mutex;
  std::condition_variable work_cv;   ///< workers: work to claim, or stop
  std::condition_variable ready_cv;  ///< consumer: a slot became ready
  std::vector<std::thread> threads;
  bool stop = false;

  // The epoch in progress, all guarded by `mutex`.
  bool started = false;
  uint64_t generation = 0;  ///< bumped to abandon work in flight
  int64_t epoch = 0;
  std::vector<int64_t> order;  ///< data set index of each position
  int64_t n_batches = 0;
  int64_t end = 0;       ///< positions [0, end) are loaded (end < size with drop_last)
  int64_t claim = 0;     ///< next position to hand to a worker
  int64_t consumer = 0;  ///< next batch to deliver
  std::map<int64_t, Slot> slots;
  std::vector<std::string> errors;
  int64_t delivered = 0;  ///< items of delivered batches, failed ones included
  int64_t failed = 0;

  int64_t batch_rows(int64_t b) const {
    return std::min(options.batch_size, end - b * options.batch_size);
  }

  void abandon_epoch() {
    ++generation;
    slots.clear();
    claim = end;
    consumer = n_batches;
  }

  Sample load(int64_t index, int64_t ep, int64_t pos) const;
  void assemble(std::vector<Sample>& samples, Slot& slot) const;
  void worker();
};

Sample Loader::Impl::load(int64_t index, int64_t ep, int64_t pos) const {
  Sample s;
  s.index = index;
  try {
    // An image's draws depend on (seed, epoch, index); a weighted sampler draws with
    // replacement, so there the position in the epoch keys them, and an image drawn twice
    // is augmented twice, differently.
    const int64_t key = options.sample_weights.empty() ? index : pos;
    std::mt19937_64 rng(sample_seed(options.seed, ep, key));
    s.image = transform(data->image(index), rng);
    VT_CHECK(s.image.defined(),
             "the sample transform returned an undefined tensor; return the "
             "transformed image");
    if (options.targets) s.labels = data->labels(index);
  } catch (const Error& e) {
    s.error = e.what();
  } catch (const c10::Error& e) {
    s.error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    s.error = e.what();
  } catch (...) {
    s.error = "unknown error";
  }
  if (!s.error.empty()) {
    s.image = at::Tensor();
    std::string name;
    try {
      name = data->name(index);
    } catch (...) {
      name = "item " + std::to_string(index);
    }
    // Decoding errors already start with the file's path.
    if (s.error.find(name) == std::string::npos) s.error = name + ": " + s.error;
  }
  return s;
}

void Loader::Impl::assemble(std::vector<Sample>& samples, Slot& slot) const {
  std::vector<const Sample*> ok;
  for (const Sample& s : samples) {
    if (s.error.empty()) {
      ok.push_back(&s);
    } else {
      slot.errors.push_back(s.error);
    }
  }
  if (options.strict && !slot.errors.empty()) {
    slot.fatal = slot.errors.front();
    return;
  }
  if (ok.empty()) return;

  const at::Tensor& first = ok.front()->image;
  const auto n = static_cast<int64_t>(ok.size());
  for (const Sample* s : ok) {
    if (!s->image.is_cpu() || s->image.sizes() != first.sizes() ||
        s->image.scalar_type() != first.scalar_type()) {
      slot.fatal = "the sample transform returned " + shape_of(first) + " for item " +
                   std::to_string(ok.front()->index) + " but " + shape_of(s->image) + " for item " +
                   std::to_string(s->index) +
                   " in one batch; return CPU tensors of one shape and type for every image";
      return;
    }
  }
  std::vector<int64_t> shape{n};
  shape.insert(shape.end(), first.sizes().begin(), first.sizes().end());
  // Plain copies rather than at::stack: ATen kernels would run on the intra-op pool, which
  // belongs to the training step.
  slot.batch.images = at::empty(shape, first.options());
  auto* dst = static_cast<uint8_t*>(slot.batch.images.data_ptr());
  const size_t bytes = first.nbytes();
  for (int64_t r = 0; r < n; ++r) {
    const at::Tensor& src = ok[r]->image;
    VT_CHECK(src.is_contiguous(),
             "the sample transform returned a non-contiguous tensor; "
             "return a contiguous one (call .contiguous())");
    std::memcpy(dst + r * bytes, src.data_ptr(), bytes);
  }

  slot.batch.indices.reserve(ok.size());
  for (const Sample* s : ok) slot.batch.indices.push_back(s->index);
  if (!options.targets) return;  // unlabelled images (pretraining)
  for (const Sample* s : ok) {
    for (const int64_t l : s->labels) {
      VT_CHECK(l >= 0 && l < num_classes, "item ", s->index, " has the class index ", l,
               ", outside 0 to ", num_classes - 1, "; the data set is inconsistent");
    }
    VT_CHECK(multi_label || s->labels.size() == 1, "item ", s->index, " has ", s->labels.size(),
             " labels in a single-label data set; give it exactly one");
  }
  if (multi_label) {
    slot.batch.targets = at::empty({n, num_classes}, at::TensorOptions().dtype(at::kFloat));
    float* t = slot.batch.targets.data_ptr<float>();
    std::fill(t, t + n * num_classes, 0.0f);
    for (int64_t r = 0; r < n; ++r) {
      for (const int64_t l : ok[r]->labels) t[r * num_classes + l] = 1.0f;
    }
  } else {
    slot.batch.targets = at::empty({n}, at::TensorOptions().dtype(at::kLong));
    int64_t* t = slot.batch.targets.data_ptr<int64_t>();
    for (int64_t r = 0; r < n; ++r) t[r] = ok[r]->labels.front();
  }
}

void Loader::Impl::worker() {
  const int64_t bs = options.batch_size;
  std::unique_lock<std::mutex> lock(mutex);
  for (;;) {
    work_cv.wait(lock,
                 [&] { return stop || (claim < end && claim / bs < consumer + options.prefetch); });
    if (stop) return;
    const int64_t pos = claim++;
    const int64_t b = pos / bs;
    const int64_t row = pos - b * bs;
    if (row == 0) {
      Slot& slot = slots[b];
      slot.rows = batch_rows(b);
      slot.samples.resize(slot.rows);
    }
    const int64_t index = order[pos];
    const int64_t ep = epoch;
    const uint64_t gen = generation;
    lock.unlock();
    Sample sample = load(index, ep, pos);
    lock.lock();
    if (gen != generation) continue;  // the epoch was abandoned meanwhile
    Slot& slot = slots.at(b);
    slot.samples[row] = std::move(sample);
    if (++slot.done < slot.rows) continue;

    std::vector<Sample> samples = std::move(slot.samples);
    Slot built;
    built.rows = slot.rows;
    lock.unlock();
    try {
      assemble(samples, built);
    } catch (const std::exception& e) {
      built.fatal = e.what();
    }
    samples.clear();
    lock.lock();
    if (gen != generation) continue;
    built.ready = true;
    slots.at(b) = std::move(built);
    ready_cv.notify_all();
  }
}

Loader::Loader(std::shared_ptr<Dataset> data, SampleTransform transform, LoaderOptions options)
    : impl_(std::make_unique<Impl>()) {
  VT_CHECK(data != nullptr, "loader of a null data set; open a data set first");
  VT_CHECK(static_cast<bool>(transform),
           "loader without a sample transform; pass one (for "
           "example a lambda calling vitrine::image::train_transform)");
  VT_CHECK(options.batch_size >= 1, "batch size ", options.batch_size,
           " is invalid; use 1 or more");
  VT_CHECK(options.prefetch >= 1 && options.prefetch <= 1024, "prefetch ", options.prefetch,
           " is out of range; use 1 to 1024 batches");
  VT_CHECK(options.workers >= 0, "workers ", options.workers,
           " is negative; use 0 (all cores) or a thread count");
  VT_CHECK(options.shards >= 1 && options.shard >= 0 && options.shard < options.shards, "shard ",
           options.shard, " of ", options.shards, " is invalid");
  VT_CHECK(options.shards == 1 || data->size() >= options.batch_size * options.shards,
           "data-parallel training needs at least one full batch of ", options.batch_size, " x ",
           options.shards, " images; the split holds ", data->size(),
           ": lower --batch-size or the process count");
  if (!options.sample_weights.empty()) {
    VT_CHECK(static_cast<int64_t>(options.sample_weights.size()) == data->size(), "sampling with ",
             options.sample_weights.size(), " weights for ", data->size(),
             " items; give one weight per item");
    double total = 0;
    for (const double w : options.sample_weights) {
      VT_CHECK(std::isfinite(w) && w >= 0, "sampling weight ", w,
               " is invalid; weights must be finite and non-negative");
      total += w;
    }
    VT_CHECK(total > 0, "all sampling weights are zero; at least one item must be drawable");
  }
  Impl& s = *impl_;
  s.data = std::move(data);
  s.transform = std::move(transform);
  s.options = options;
  s.size = s.data->size();
  s.num_classes = static_cast<int64_t>(s.data->classes().size());
  s.multi_label = s.data->multi_label();

  int64_t threads = options.workers > 0 ? options.workers
                                        : static_cast<int64_t>(std::thread::hardware_concurrency());
  // More threads than items in the prefetch window would only wait.
  threads = std::clamp<int64_t>(threads, 1, options.batch_size * options.prefetch);
  try {
    for (int64_t i = 0; i < threads; ++i) s.threads.emplace_back([&s] { s.worker(); });
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      s.stop = true;
    }
    s.work_cv.notify_all();
    for (std::thread& t : s.threads) t.join();
    throw;
  }
}

Loader::~Loader() {
  Impl& s = *impl_;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.stop = true;
    ++s.generation;
  }
  s.work_cv.notify_all();
  s.ready_cv.notify_all();
  for (std::thread& t : s.threads) t.join();
}

int64_t Loader::batches_per_epoch() const {
  const int64_t bs = impl_->options.batch_size;
  const int64_t n = impl_->size;
  if (impl_->options.shards > 1) return n / (bs * impl_->options.shards);
  return impl_->options.drop_last ? n / bs : (n + bs - 1) / bs;
}

void Loader::start_epoch(int64_t epoch, int64_t skip_batches) {
  Impl& s = *impl_;
  VT_CHECK(epoch >= 0, "epoch ", epoch, " is negative; epochs count from 0");
  const int64_t total = batches_per_epoch();
  VT_CHECK(skip_batches >= 0 && skip_batches <= total, "skip_batches ", skip_batches,
           " is out of range; an epoch has ", total, " batches");
  std::vector<int64_t> order;
  if (!s.options.sample_weights.empty()) {
    order = weighted_draws(s.options.sample_weights, order_seed(s.options.seed, epoch));
  } else if (s.options.shuffle) {
    order = permutation(s.size, order_seed(s.options.seed, epoch));
  } else {
    order.resize(s.size);
    std::iota(order.begin(), order.end(), 0);
  }
  const int64_t shards = s.options.shards;
  if (shards > 1) {
    // This shard's slice of each global batch.
    const int64_t bs = s.options.batch_size;
    std::vector<int64_t> mine;
    mine.reserve(static_cast<size_t>(total * bs));
    for (int64_t b = 0; b < total; ++b) {
      const int64_t first = b * bs * shards + s.options.shard * bs;
      mine.insert(mine.end(), order.begin() + first, order.begin() + first + bs);
    }
    order = std::move(mine);
  }
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    ++s.generation;
    s.slots.clear();
    s.errors.clear();
    s.delivered = 0;
    s.failed = 0;
    s.started = true;
    s.epoch = epoch;
    s.order = std::move(order);
    s.n_batches = total;
    s.end = s.options.drop_last || shards > 1 ? total * s.options.batch_size : s.size;
    s.claim = std::min(skip_batches * s.options.batch_size, s.end);
    s.consumer = skip_batches;
  }
  s.work_cv.notify_all();
}

bool Loader::next(Batch& batch) {
  Impl& s = *impl_;
  std::unique_lock<std::mutex> lock(s.mutex);
  VT_CHECK(s.started, "Loader::next called before start_epoch; start an epoch first");
  // Judged as the epoch goes when its order is random; in order (evaluation), one class's
  // bad files come together and the first batches say nothing of the rest: at its end.
  const bool random_order = s.options.shuffle || !s.options.sample_weights.empty();
  const auto stop_if_mostly_failed = [&s] {
    if (s.failed < kMinFailuresToStop || 2 * s.failed <= s.delivered) return;
    const std::string first = s.errors.front();
    const int64_t failed = s.failed, delivered = s.delivered;
    s.abandon_epoch();
    s.failed = 0;  // said once: next() then ends the epoch quietly
    VT_FAIL(failed, " of the ", delivered, " items loaded so far in this epoch failed (first: ",
            first, "); with more than half of them unreadable the data set (or the "
            "transform) is broken: fix or remove the unreadable files");
  };
  for (;;) {
    if (s.consumer >= s.n_batches) {
      stop_if_mostly_failed();
      return false;
    }
    const int64_t b = s.consumer;
    s.ready_cv.wait(lock, [&] {
      const auto it = s.slots.find(b);
      return it != s.slots.end() && it->second.ready;
    });
    Slot slot = std::move(s.slots.at(b));
    s.slots.erase(b);
    ++s.consumer;
    s.work_cv.notify_all();

    s.delivered += slot.rows;
    s.failed += static_cast<int64_t>(slot.errors.size());
    s.errors.insert(s.errors.end(), slot.errors.begin(), slot.errors.end());
    if (!slot.fatal.empty()) {
      s.abandon_epoch();
      VT_FAIL(slot.fatal);
    }
    if (random_order) stop_if_mostly_failed();
    if (slot.batch.indices.empty()) continue;  // every item of this batch failed
    batch = std::move(slot.batch);
    batch.batch_index = b;
    return true;
  }
}

std::vector<std::string> Loader::errors() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->errors;
}

}  // namespace vitrine::data
