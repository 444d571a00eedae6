// Random draws that give the same numbers with any standard library (the
// std::*_distribution classes may differ between implementations), so seeded runs
// reproduce everywhere.
#pragma once

#include <cstdint>
#include <limits>
#include <random>

namespace vitrine {

/// Uniform in [a, b) from the top 53 bits of one draw.
inline double uniform(std::mt19937_64& rng, double a, double b) {
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
  return a + (b - a) * u;
}

/// Uniform integer in [0, n), n >= 1, without modulo bias.
inline int64_t randint(std::mt19937_64& rng, int64_t n) {
  const auto range = static_cast<uint64_t>(n);
  const uint64_t limit = std::numeric_limits<uint64_t>::max() / range * range;
  uint64_t v = rng();
  while (v >= limit) v = rng();
  return static_cast<int64_t>(v % range);
}

}  // namespace vitrine
