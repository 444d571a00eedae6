#include "vitrine/serve/metrics.h"

#include <charconv>
#include <cmath>
#include <system_error>
#include <sstream>

namespace vitrine::serve {
namespace {

/// The shortest text that reads back as `v`: le="0.1", not le="0.10000000000000001", which
/// a rule matching le="0.1" would not find.
std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : std::string("NaN");
}

/// A label value with \, " and newlines escaped as the text format wants.
std::string label(const std::string& v) {
  std::string out;
  for (const char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void render_histogram(std::ostringstream& out, const std::string& name, const std::string& labels,
                      const std::vector<double>& bounds, const std::vector<uint64_t>& counts,
                      double sum, uint64_t count) {
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t b = 0; b < bounds.size(); ++b) {
    cumulative += counts[b];
    out << name << "_bucket{" << labels << sep << "le=\"" << number(bounds[b]) << "\"} "
        << cumulative << "\n";
  }
  cumulative += counts.back();
  out << name << "_bucket{" << labels << sep << "le=\"+Inf\"} " << cumulative << "\n";
  const std::string braces = labels.empty() ? "" : "{" + labels + "}";
  out << name << "_sum" << braces << " " << number(sum) << "\n";
  out << name << "_count" << braces << " " << count << "\n";
}

}  // namespace

void Metrics::Histogram::observe(double v) {
  size_t b = 0;
  while (b < bounds.size() && v > bounds[b]) ++b;
  ++counts[b];
  sum += v;
  ++count;
}

Metrics::Metrics()
    : latency_bounds_{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10} {
  batch_size_.bounds = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  batch_size_.counts.assign(batch_size_.bounds.size() + 1, 0);
  model_seconds_.bounds = latency_bounds_;
  model_seconds_.counts.assign(model_seconds_.bounds.size() + 1, 0);
}

void Metrics::count_request(const std::string& route, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{route, status}];
}

void Metrics::observe_request(const std::string& route, int status, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{route, status}];
  auto [it, fresh] = latency_.try_emplace(route);
  if (fresh) {
    it->second.bounds = latency_bounds_;
    it->second.counts.assign(latency_bounds_.size() + 1, 0);
  }
  it->second.observe(seconds);
}

void Metrics::observe_batch(int64_t size, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  batch_size_.observe(static_cast<double>(size));
  model_seconds_.observe(seconds);
}

void Metrics::count_rejected() {
  std::lock_guard<std::mutex> lock(mu_);
  ++rejected_;
}
void Metrics::set_queue_depth(int64_t depth) {
  std::lock_guard<std::mutex> lock(mu_);
  queue_depth_ = depth;
}
void Metrics::set_index_size(int64_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  index_size_ = size;
}
void Metrics::count_reload(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  ++(ok ? reloads_ok_ : reloads_failed_);
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream out;
  out << "# HELP vitrine_http_requests_total HTTP requests answered, by route and status.\n"
         "# TYPE vitrine_http_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    out << "vitrine_http_requests_total{route=\"" << label(key.first) << "\",status=\""
        << key.second << "\"} " << n << "\n";
  }
  out << "# HELP vitrine_http_request_duration_seconds Time from request to answer, by route "
         "(requests refused before their route ran are counted, not timed).\n"
         "# TYPE vitrine_http_request_duration_seconds histogram\n";
  for (const auto& [route, h] : latency_) {
    render_histogram(out, "vitrine_http_request_duration_seconds",
                     "route=\"" + label(route) + "\"", h.bounds, h.counts, h.sum, h.count);
  }
  out << "# HELP vitrine_batch_size Images per forward pass.\n# TYPE vitrine_batch_size histogram\n";
  render_histogram(out, "vitrine_batch_size", "", batch_size_.bounds, batch_size_.counts,
                   batch_size_.sum, batch_size_.count);
  out << "# HELP vitrine_model_seconds Time of one forward pass.\n"
         "# TYPE vitrine_model_seconds histogram\n";
  render_histogram(out, "vitrine_model_seconds", "", model_seconds_.bounds, model_seconds_.counts,
                   model_seconds_.sum, model_seconds_.count);
  out << "# HELP vitrine_queue_depth Images waiting for a forward pass.\n"
         "# TYPE vitrine_queue_depth gauge\nvitrine_queue_depth " << queue_depth_ << "\n";
  out << "# HELP vitrine_rejected_total Requests refused with 429 because the queue was full.\n"
         "# TYPE vitrine_rejected_total counter\nvitrine_rejected_total " << rejected_ << "\n";
  out << "# HELP vitrine_index_size Photos in the search index.\n"
         "# TYPE vitrine_index_size gauge\nvitrine_index_size " << index_size_ << "\n";
  out << "# HELP vitrine_model_reloads_total Model reloads, by outcome.\n"
         "# TYPE vitrine_model_reloads_total counter\n"
         "vitrine_model_reloads_total{outcome=\"ok\"} " << reloads_ok_ << "\n"
         "vitrine_model_reloads_total{outcome=\"failed\"} " << reloads_failed_ << "\n";
  return out.str();
}

}  // namespace vitrine::serve
