// Vector search on synthetic clustered embeddings: for flat, HNSW and IVF-PQ, the build time,
// recall@10 against exact search, single-query latency (p50 / p99) through Vitrine's index and
// through the FAISS index it wraps (the same object, queried alternately), and the index
// memory per product. Prints one JSON line per setting and a table.
#include "search/faiss_access.h"
#include "vitrine/core/memory.h"
#include "vitrine/core/threads.h"
#include "vitrine/search/vector_index.h"

#include <CLI/CLI.hpp>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/impl/HNSW.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// Product-like embeddings: points around `clusters` random centres, each cluster varying
/// along its own `intrinsic`-dimensional subspace (what separates products of one kind) plus
/// a little isotropic noise, normalised to unit length. Real embeddings have such a low
/// intrinsic dimension; isotropic noise alone would make every neighbour nearly equidistant.
struct Clusters {
  int64_t dim, intrinsic;
  std::vector<float> centres;  ///< clusters x dim
  std::vector<float> bases;    ///< clusters x intrinsic x dim
};

Clusters make_clusters(int64_t clusters, int64_t dim, int64_t intrinsic, uint64_t seed) {
  Clusters c{dim, intrinsic, std::vector<float>(static_cast<size_t>(clusters * dim)),
             std::vector<float>(static_cast<size_t>(clusters * intrinsic * dim))};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f / std::sqrt(static_cast<float>(dim)));
  for (auto& v : c.centres) v = normal(rng);
  for (auto& v : c.bases) v = normal(rng);
  return c;
}

std::vector<float> clustered(int64_t n, const Clusters& c, float spread, float noise,
                             uint64_t seed) {
  const int64_t dim = c.dim, clusters = static_cast<int64_t>(c.centres.size()) / dim;
  std::vector<float> x(static_cast<size_t>(n * dim));
  // Independent streams per block so generation runs on all threads yet stays reproducible.
  const int64_t block = 4096;
#pragma omp parallel for schedule(dynamic)
  for (int64_t b = 0; b < (n + block - 1) / block; ++b) {
    std::mt19937_64 rng(seed * 1000003 + static_cast<uint64_t>(b));
    std::normal_distribution<float> unit(0.f, 1.f);
    std::vector<float> z(static_cast<size_t>(c.intrinsic));
    for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i) {
      const int64_t k = static_cast<int64_t>(rng() % static_cast<uint64_t>(clusters));
      const float* centre = c.centres.data() + k * dim;
      const float* basis = c.bases.data() + k * c.intrinsic * dim;
      for (auto& v : z) v = spread * unit(rng);
      float* v = x.data() + i * dim;
      float norm = 0;
      for (int64_t d = 0; d < dim; ++d) {
        float value = centre[d] + noise * unit(rng) / std::sqrt(static_cast<float>(dim));
        for (int64_t j = 0; j < c.intrinsic; ++j) value += z[static_cast<size_t>(j)] * basis[j * dim + d];
        v[d] = value;
        norm += value * value;
      }
      norm = std::sqrt(norm);
      for (int64_t d = 0; d < dim; ++d) v[d] /= norm;
    }
  }
  return x;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const auto i = static_cast<size_t>(std::min<double>(v.size() - 1, std::floor(p * v.size())));
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n = 1'000'000, dim = 384, clusters = 1000, intrinsic = 16, nq = 1000,
          latency_queries = 300;
  float spread = 0.2f, noise = 0.1f;
  int threads = 0;
  std::string kinds_text = "flat,hnsw,ivfpq", json_path;
  std::vector<int> ef_list{16, 32, 64, 128}, nprobe_list{8, 16, 32, 64};
  vitrine::search::IndexOptions options;
  options.hnsw_m = 16;
  options.hnsw_ef_construction = 40;
  CLI::App app("Vitrine vector search benchmark (synthetic clustered embeddings)");
  app.add_option("--n", n, "Catalogue size")->check(CLI::PositiveNumber);
  app.add_option("--dim", dim, "Embedding width")->check(CLI::PositiveNumber);
  app.add_option("--clusters", clusters, "Clusters in the data")->check(CLI::PositiveNumber);
  app.add_option("--intrinsic", intrinsic, "Dimensions along which a cluster varies");
  app.add_option("--spread", spread, "Spread along those dimensions");
  app.add_option("--noise", noise, "Isotropic noise (norm) added to every point");
  app.add_option("--queries", nq, "Queries for recall")->check(CLI::PositiveNumber);
  app.add_option("--latency-queries", latency_queries, "Single queries timed per setting");
  app.add_option("--kinds", kinds_text, "Comma-separated: flat,hnsw,ivfpq");
  app.add_option("--hnsw-m", options.hnsw_m, "HNSW neighbours per node");
  app.add_option("--ef-construction", options.hnsw_ef_construction, "HNSW build beam");
  app.add_option("--ef-search", ef_list, "HNSW search beams to try");
  app.add_option("--nprobe", nprobe_list, "IVF-PQ lists to visit, to try");
  app.add_option("--pq-m", options.pq_m, "IVF-PQ bytes per code (0: dim/4, at most 64)");
  app.add_option("--threads", threads, "Threads (0: all cores)");
  app.add_option("--json", json_path, "Also write the results here");
  CLI11_PARSE(app, argc, argv);
  try {
    vitrine::keep_freed_memory();  // as the vitrine binary does
    threads = vitrine::set_threads(threads);
    std::vector<std::string> kinds;
    {
      std::stringstream ss(kinds_text);
      for (std::string k; std::getline(ss, k, ',');) kinds.push_back(k);
    }
    const Clusters shape = make_clusters(clusters, dim, intrinsic, 0);
    auto t0 = Clock::now();
    const auto x = clustered(n, shape, spread, noise, 1);
    const auto queries = clustered(nq, shape, spread, noise, 2);
    std::fprintf(stderr, "data: %lld x %lld in %.1f s\n", static_cast<long long>(n),
                 static_cast<long long>(dim), seconds_since(t0));
    std::vector<int64_t> ids(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = 10 * i + 7;  // not positions

    // Exact answers, batched (FAISS uses BLAS for batches).
    const int64_t k = 10;
    std::vector<int64_t> truth(static_cast<size_t>(nq * k));
    {
      t0 = Clock::now();
      auto exact = vitrine::search::make_index("flat", dim, options, nullptr, 0);
      exact->add(x.data(), ids.data(), n);
      std::vector<float> s(static_cast<size_t>(nq * k));
      exact->search(queries.data(), nq, k, nullptr, s.data(), truth.data());
      std::fprintf(stderr, "exact answers: %.1f s\n", seconds_since(t0));
    }

    nlohmann::json results = nlohmann::json::array();
    std::printf("%-6s %-12s %9s %10s %9s %9s %11s %11s %9s %10s\n", "index", "setting", "build_s",
                "recall@10", "p50_ms", "p99_ms", "faiss_p50", "faiss_p99", "overhead",
                "bytes/vec");
    for (const auto& kind : kinds) {
      t0 = Clock::now();
      std::vector<float> train;
      int64_t n_train = 0;
      if (kind == "ivfpq") {
        // As SearchDb does: a strided sample of up to 100k vectors teaches the codebooks.
        const int64_t stride = std::max<int64_t>(1, n / 100'000);
        for (int64_t i = 0; i < n; i += stride, ++n_train) {
          train.insert(train.end(), x.begin() + i * dim, x.begin() + (i + 1) * dim);
        }
      }
      auto index = vitrine::search::make_index(kind, dim, options, train.data(), n_train);
      index->add(x.data(), ids.data(), n);
      const double build_s = seconds_since(t0);
      const faiss::Index& raw = vitrine::search::faiss_index_of(*index);
      std::vector<int> efforts = kind == "hnsw" ? ef_list : kind == "ivfpq" ? nprobe_list
                                                                            : std::vector<int>{0};
      for (const int effort : efforts) {
        auto o = options;
        o.hnsw_ef_search = effort;
        o.nprobe = effort;
        index->set_search_options(o);
        // Recall of batched queries through Vitrine's index.
        std::vector<float> s(static_cast<size_t>(nq * k));
        std::vector<int64_t> got(static_cast<size_t>(nq * k));
        index->search(queries.data(), nq, k, nullptr, s.data(), got.data());
        int64_t hits = 0;
        for (int64_t q = 0; q < nq; ++q) {
          for (int64_t j = 0; j < k; ++j) {
            const auto* t = truth.data() + q * k;
            hits += std::count(t, t + k, got[static_cast<size_t>(q * k + j)]);
          }
        }
        const double recall = static_cast<double>(hits) / static_cast<double>(nq * k);
        // Single-query latency: Vitrine's index and the FAISS index inside it, alternately.
        const int64_t lq = kind == "flat" ? std::min<int64_t>(latency_queries, 20) : latency_queries;
        std::vector<double> ours, theirs;
        faiss::SearchParametersHNSW hnsw_params;
        hnsw_params.efSearch = effort;
        faiss::SearchParametersIVF ivf_params;
        ivf_params.nprobe = static_cast<size_t>(effort);
        const faiss::SearchParameters* params =
            kind == "hnsw" ? static_cast<const faiss::SearchParameters*>(&hnsw_params)
            : kind == "ivfpq" ? &ivf_params : nullptr;
        std::vector<float> s1(k);
        std::vector<faiss::Index::idx_t> i1(k);
        std::vector<int64_t> i2(k);
        for (int64_t r = 0; r < lq + 5; ++r) {
          const float* query = queries.data() + (r % nq) * dim;
          // The second search of a query finds its data in the caches: take turns going first.
          double faiss_ms = 0, ours_ms = 0;
          for (int turn = 0; turn < 2; ++turn) {
            const auto t1 = Clock::now();
            if ((turn == 0) == (r % 2 == 0)) {
              raw.search(1, query, k, s1.data(), i1.data(), params);
              faiss_ms = 1000 * seconds_since(t1);
            } else {
              index->search(query, 1, k, nullptr, s1.data(), i2.data());
              ours_ms = 1000 * seconds_since(t1);
            }
          }
          if (r >= 5) {  // the first few warm the caches
            theirs.push_back(faiss_ms);
            ours.push_back(ours_ms);
          }
        }
        const double p50 = percentile(ours, 0.5), p99 = percentile(ours, 0.99);
        const double f50 = percentile(theirs, 0.5), f99 = percentile(theirs, 0.99);
        const std::string setting = kind == "hnsw" ? "ef_search=" + std::to_string(effort)
                                    : kind == "ivfpq" ? "nprobe=" + std::to_string(effort)
                                                      : "exact";
        std::printf("%-6s %-12s %9.1f %10.4f %9.3f %9.3f %11.3f %11.3f %8.1f%% %10.1f\n",
                    kind.c_str(), setting.c_str(), build_s, recall, p50, p99, f50, f99,
                    100 * (p50 / f50 - 1), index->bytes_per_vector());
        std::fflush(stdout);
        results.push_back({{"kind", kind}, {"setting", setting}, {"n", n}, {"dim", dim},
                           {"threads", threads}, {"build_s", build_s}, {"recall_at_10", recall},
                           {"p50_ms", p50}, {"p99_ms", p99}, {"faiss_p50_ms", f50},
                           {"faiss_p99_ms", f99}, {"overhead", p50 / f50 - 1},
                           {"bytes_per_vector", index->bytes_per_vector()}});
      }
    }
    if (!json_path.empty()) std::ofstream(json_path) << results.dump(2) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
