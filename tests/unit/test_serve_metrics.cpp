#include "vitrine/serve/metrics.h"

#include <gtest/gtest.h>

#include <string>

using vitrine::serve::Metrics;

namespace {

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST(ServeMetrics, BucketBoundsAreWrittenAsPrometheusRulesNameThem) {
  Metrics m;
  m.observe_request("/v1/search", 200, 0.07);
  const std::string text = m.render();
  // The shortest form: a rule on le="0.1" must find the bucket.
  EXPECT_TRUE(has(text, "route=\"/v1/search\",le=\"0.1\"} 1")) << text;
  EXPECT_TRUE(has(text, "le=\"0.0025\"} 0")) << text;
  EXPECT_TRUE(has(text, "le=\"+Inf\"} 1")) << text;
  EXPECT_FALSE(has(text, "0000000")) << text;
}

TEST(ServeMetrics, RefusedRequestsAreCountedButNotTimed) {
  Metrics m;
  m.observe_request("/v1/search", 200, 0.3);
  for (int i = 0; i < 5; ++i) m.count_request("/v1/search", 401);
  const std::string text = m.render();
  EXPECT_TRUE(has(text, "vitrine_http_requests_total{route=\"/v1/search\",status=\"401\"} 5"))
      << text;
  // One timed request: five refusals at 0 s would have put 5 of 6 under the first bucket.
  EXPECT_TRUE(has(text, "vitrine_http_request_duration_seconds_count{route=\"/v1/search\"} 1"))
      << text;
  EXPECT_TRUE(has(text, "route=\"/v1/search\",le=\"0.001\"} 0")) << text;
}
