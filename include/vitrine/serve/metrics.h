// Prometheus metrics of the service, rendered in the text exposition format (0.0.4):
// requests and latency by route and status, batch sizes, model time, queue depth, index size.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace vitrine::serve {

class Metrics {
 public:
  Metrics();
  /// One answered request: counted by route and status, its duration in the route's histogram.
  void observe_request(const std::string& route, int status, double seconds);
  /// One request answered before its route ran (refused, or no such route): counted only, so
  /// a flood of 401s does not pull the latency quantiles towards zero.
  void count_request(const std::string& route, int status);
  /// One forward pass over `size` images that took `seconds`.
  void observe_batch(int64_t size, double seconds);
  /// A request refused because the queue was full.
  void count_rejected();
  void set_queue_depth(int64_t depth);
  void set_index_size(int64_t size);
  void count_reload(bool ok);
  /// The whole registry in Prometheus text format.
  std::string render() const;

 private:
  struct Histogram {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;  ///< per bucket (not cumulative), +1 for +Inf
    double sum = 0;
    uint64_t count = 0;
    void observe(double v);
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, Histogram> latency_;
  Histogram batch_size_, model_seconds_;
  uint64_t rejected_ = 0, reloads_ok_ = 0, reloads_failed_ = 0;
  int64_t queue_depth_ = 0, index_size_ = 0;
  std::vector<double> latency_bounds_;
};

}  // namespace vitrine::serve
