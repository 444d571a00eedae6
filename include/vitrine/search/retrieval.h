// Retrieval quality: Recall@K, precision@10 and mAP@10 over queries whose relevant results
// are known, and near-duplicate groups across products.
#pragma once

#include "vitrine/search/search_db.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace vitrine::search {

/// Average precision of one ranked list cut at `k`: the mean of precision@i over the ranks i
/// that hold a relevant result, divided by min(total_relevant, k) (0 when nothing is relevant).
double average_precision_at(const std::vector<bool>& relevant, int64_t total_relevant, int64_t k);

struct RetrievalMetrics {
  int64_t queries = 0;
  /// Share of queries with at least one relevant product in the top K (the convention of
  /// metric-learning benchmarks such as Stanford Online Products).
  double recall_at_1 = 0, recall_at_5 = 0, recall_at_10 = 0;
  double precision_at_10 = 0;  ///< relevant share of the top 10
  double map_at_10 = 0;
  std::map<std::string, double> precision_at_10_by_group;  ///< by query category
  std::map<std::string, int64_t> queries_by_group;
};

/// Accumulates queries one by one.
class RetrievalEvaluator {
 public:
  /// `relevant[i]`: whether the i-th result (best first) is relevant; `total_relevant`: how
  /// many relevant products the catalogue holds for this query; `group`: e.g. its category.
  void add(const std::vector<bool>& relevant, int64_t total_relevant, const std::string& group);
  RetrievalMetrics result() const;

 private:
  RetrievalMetrics sums_;
};

/// A group of near-identical images of different products.
struct DuplicateGroup {
  std::vector<ImageRecord> members;
  float max_score = 0;  ///< the strongest link in the group
  float min_score = 0;  ///< the weakest link that joined it
};

struct DuplicateOptions {
  float threshold = 0.95f;  ///< cosine similarity at or above which two images are linked
  int64_t neighbours = 10;  ///< candidates looked at per image
};

/// Groups of images of at least two different SKUs linked by similarity >= threshold
/// (transitively), largest first. Images of the same SKU are never linked to each other.
std::vector<DuplicateGroup> find_duplicates(const SearchDb& db, const DuplicateOptions& options);

}  // namespace vitrine::search
