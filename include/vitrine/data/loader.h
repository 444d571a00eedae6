// A multi-threaded batch loader: worker threads decode and transform the items of the next
// few batches while the consumer trains on the current one. Batches come out in a fixed order
// and every sample's randomness comes from its own seed, so an epoch is the same whatever
// the thread count or timing, and can be resumed mid-way exactly.
#pragma once

#include "vitrine/data/dataset.h"

#include <ATen/core/Tensor.h>
#include <opencv2/core.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace vitrine::data {

struct Batch {
  at::Tensor images;   ///< N x C x H x W float (N x the transform's output shape)
  at::Tensor targets;  ///< N int64 class indices, or N x K float multi-hot when multi-label
                       ///< (undefined when the loader was asked for images alone)
  std::vector<int64_t> indices;  ///< data set indices of the rows
  /// Position of this batch in the epoch (0-based, counting batches whose items all failed
  /// and were skipped): start_epoch(epoch, batch_index + 1) resumes after it.
  int64_t batch_index = 0;
};

struct LoaderOptions {
  int64_t batch_size = 64;
  bool shuffle = false;
  bool drop_last = false;  ///< drop a last batch smaller than batch_size
  uint64_t seed = 0;       ///< for the shuffle order and the per-sample generators
  int workers = 0;         ///< decoding threads; 0 = all cores
  int prefetch = 2;        ///< batches prepared ahead (the one awaited included)
  bool strict = false;     ///< a bad image throws instead of being skipped
  bool targets = true;     ///< false: images alone (Batch::targets undefined), for unlabelled data
  /// Weighted sampling, as torch's WeightedRandomSampler with replacement: when not empty
  /// (one non-negative weight per item), each epoch draws as many items as the data set
  /// holds, item i with probability weight[i] / sum; `shuffle` is then implied.
  std::vector<double> sample_weights;
  /// Data-parallel training: the epoch's order is cut into global batches of
  /// batch_size x shards items (a short last one dropped) and this loader delivers slice
  /// `shard` of each, so the shards together see what one loader with the whole batch would.
  int shards = 1;
  int shard = 0;
};

/// Per-sample transform: the loader calls it with a generator seeded from (seed, epoch, index),
/// so results do not depend on thread timing. Called from several threads at once.
using SampleTransform = std::function<at::Tensor(const cv::Mat&, std::mt19937_64&)>;

/// Batches of one data set, epoch after epoch. Use from one consumer thread.
///
/// Worker threads are std::threads of their own (libtorch's intra-op pool stays free for the
/// training step); batches are assembled by plain copies, without ATen kernels that would use
/// that pool. An item whose image or transform throws is skipped and reported by errors()
/// (the batch is then smaller; a batch whose items all fail is skipped), or, with `strict`,
/// makes next() throw a vitrine::Error naming it. Either way next() throws once more than half
/// of the items delivered in an epoch have failed (and at least 8 have): that is a broken data
/// set or transform, not a few bad photos. In random order this is checked after every batch;
/// in order (evaluation), where one class's bad files come together, at the epoch's end.
class Loader {
 public:
  Loader(std::shared_ptr<Dataset> data, SampleTransform transform, LoaderOptions options);
  ~Loader();  ///< stops and joins the threads, also mid-epoch
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  /// Starts an epoch (order = permutation from (seed, epoch) when shuffling), skipping the
  /// first `skip_batches` (for exact resume). Abandons an epoch in progress.
  void start_epoch(int64_t epoch, int64_t skip_batches = 0);
  /// The next batch in order; false at the end of the epoch. Throws vitrine::Error before the
  /// first start_epoch, for a bad item in strict mode, and for a broken data set (see above).
  bool next(Batch& batch);
  int64_t batches_per_epoch() const;
  /// Items skipped because they failed to decode, with their error messages (this epoch, in
  /// batch order, as far as batches were delivered): "name: message".
  std::vector<std::string> errors() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vitrine::data
