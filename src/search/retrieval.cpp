#include "vitrine/search/retrieval.h"

#include "vitrine/core/error.h"

#include <algorithm>
#include <numeric>
#include <unordered_map>

namespace vitrine::search {

double average_precision_at(const std::vector<bool>& relevant, int64_t total_relevant,
                            int64_t k) {
  const int64_t denominator = std::min(total_relevant, k);
  if (denominator <= 0) return 0;
  double sum = 0;
  int64_t hits = 0;
  const int64_t n = std::min<int64_t>(k, static_cast<int64_t>(relevant.size()));
  for (int64_t i = 0; i < n; ++i) {
    if (!relevant[static_cast<size_t>(i)]) continue;
    ++hits;
    sum += static_cast<double>(hits) / static_cast<double>(i + 1);
  }
  return sum / static_cast<double>(denominator);
}

void RetrievalEvaluator::add(const std::vector<bool>& relevant, int64_t total_relevant,
                             const std::string& group) {
  auto hit_within = [&](int64_t k) {
    const auto end = relevant.begin() + std::min<int64_t>(k, static_cast<int64_t>(relevant.size()));
    return std::find(relevant.begin(), end, true) != end ? 1.0 : 0.0;
  };
  const auto top10 = relevant.begin() + std::min<int64_t>(10, static_cast<int64_t>(relevant.size()));
  const double precision = static_cast<double>(std::count(relevant.begin(), top10, true)) / 10.0;
  ++sums_.queries;
  sums_.recall_at_1 += hit_within(1);
  sums_.recall_at_5 += hit_within(5);
  sums_.recall_at_10 += hit_within(10);
  sums_.precision_at_10 += precision;
  sums_.map_at_10 += average_precision_at(relevant, total_relevant, 10);
  sums_.precision_at_10_by_group[group] += precision;
  ++sums_.queries_by_group[group];
}

RetrievalMetrics RetrievalEvaluator::result() const {
  RetrievalMetrics m = sums_;
  if (m.queries == 0) return m;
  const auto n = static_cast<double>(m.queries);
  m.recall_at_1 /= n;
  m.recall_at_5 /= n;
  m.recall_at_10 /= n;
  m.precision_at_10 /= n;
  m.map_at_10 /= n;
  for (auto& [group, p] : m.precision_at_10_by_group) {
    p /= static_cast<double>(m.queries_by_group.at(group));
  }
  return m;
}

namespace {

struct UnionFind {
  std::unordered_map<int64_t, int64_t> parent;
  int64_t find(int64_t x) {
    auto it = parent.find(x);
    if (it == parent.end()) {
      parent[x] = x;
      return x;
    }
    while (it->second != x) {
      const int64_t up = parent[it->second];
      it->second = up;  // path halving
      x = up;
      it = parent.find(x);
    }
    return x;
  }
  void join(int64_t a, int64_t b) {
    a = find(a);
    b = find(b);
    if (a != b) parent[std::max(a, b)] = std::min(a, b);
  }
};

}  // namespace

std::vector<DuplicateGroup> find_duplicates(const SearchDb& db, const DuplicateOptions& options) {
  VT_CHECK(options.threshold > -1 && options.threshold <= 1,
           "the duplicate threshold is a cosine similarity in (-1, 1], got ", options.threshold);
  VT_CHECK(options.neighbours >= 1, "neighbours must be at least 1");
  const VectorIndex* index = db.index();
  if (!index || index->size() < 2) return {};
  const int64_t k = std::min<int64_t>(options.neighbours + 1, index->size());
  // Candidate links, each image with its k nearest; same-SKU links are dropped later, once
  // the products of the images involved are known.
  struct Link {
    int64_t a, b;
    float score;
  };
  std::vector<Link> links;
  // The images the index holds, a batch at a time; search_images reads the catalogue, so
  // the embeddings are read batch by batch rather than in one scan holding it.
  const std::vector<int64_t> all = index->ids();
  for (size_t begin = 0; begin < all.size(); begin += 1024) {
    std::vector<int64_t> ids(all.begin() + static_cast<std::ptrdiff_t>(begin),
                             all.begin() + static_cast<std::ptrdiff_t>(
                                               std::min(all.size(), begin + 1024)));
    const auto values = db.catalog().stored_embeddings(ids);  // drops ids removed meanwhile
    const auto nq = static_cast<int64_t>(ids.size());
    std::vector<float> scores(static_cast<size_t>(nq * k));
    std::vector<int64_t> found(static_cast<size_t>(nq * k));
    db.search_images(values.data(), nq, k, nullptr, scores.data(), found.data());
    for (int64_t q = 0; q < nq; ++q) {
      for (int64_t j = 0; j < k; ++j) {
        const auto at = static_cast<size_t>(q * k + j);
        if (found[at] < 0 || found[at] == ids[static_cast<size_t>(q)]) continue;
        if (scores[at] < options.threshold) break;  // best first
        links.push_back({ids[static_cast<size_t>(q)], found[at], scores[at]});
      }
    }
  }
  std::vector<int64_t> involved;
  for (const auto& l : links) {
    involved.push_back(l.a);
    involved.push_back(l.b);
  }
  std::sort(involved.begin(), involved.end());
  involved.erase(std::unique(involved.begin(), involved.end()), involved.end());
  std::unordered_map<int64_t, ImageRecord> records;
  for (auto& r : db.catalog().images(involved)) records.emplace(r.id, std::move(r));
  UnionFind groups;
  std::unordered_map<int64_t, std::pair<float, float>> strength;  // root -> (max, min)
  std::vector<Link> kept;
  for (const auto& l : links) {
    const auto a = records.find(l.a), b = records.find(l.b);
    if (a == records.end() || b == records.end()) continue;
    if (a->second.product.sku == b->second.product.sku) continue;
    groups.join(l.a, l.b);
    kept.push_back(l);
  }
  std::unordered_map<int64_t, DuplicateGroup> by_root;
  for (const auto& l : kept) {
    auto [it, created] = by_root.try_emplace(groups.find(l.a));
    auto& g = it->second;
    if (created) g.max_score = g.min_score = l.score;
    g.max_score = std::max(g.max_score, l.score);
    g.min_score = std::min(g.min_score, l.score);
  }
  for (auto& [id, record] : records) {
    if (!groups.parent.count(id)) continue;
    const auto root = groups.find(id);
    auto it = by_root.find(root);
    if (it != by_root.end()) it->second.members.push_back(record);
  }
  std::vector<DuplicateGroup> out;
  for (auto& [root, g] : by_root) {
    std::sort(g.members.begin(), g.members.end(),
              [](const ImageRecord& x, const ImageRecord& y) { return x.id < y.id; });
    out.push_back(std::move(g));
  }
  std::sort(out.begin(), out.end(), [](const DuplicateGroup& x, const DuplicateGroup& y) {
    if (x.members.size() != y.members.size()) return x.members.size() > y.members.size();
    return x.members.front().id < y.members.front().id;
  });
  return out;
}

}  // namespace vitrine::search
