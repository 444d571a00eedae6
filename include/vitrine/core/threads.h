// Thread settings. libtorch's default intra-op thread count is half the cores
// (1 on a 2-core machine); Vitrine uses all of them unless told otherwise.
#pragma once

namespace vitrine {

/// Sets libtorch's intra-op threads; `threads` <= 0 means all hardware threads.
/// Returns the count in force.
int set_threads(int threads);

}  // namespace vitrine
