#include "vitrine/core/threads.h"

#include <ATen/Parallel.h>

#include <thread>

namespace vitrine {

int set_threads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  return at::get_num_threads();
}

}  // namespace vitrine
