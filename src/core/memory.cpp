#include "vitrine/core/memory.h"

#include <climits>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace vitrine {
namespace {

bool set(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0';
}

bool user_tunes_malloc() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr) return true;
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                           "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX"}) {
    if (set(name)) return true;
  }
  const char* mode = std::getenv("VITRINE_MALLOC");
  return mode != nullptr && std::strcmp(mode, "system") == 0;
}

}  // namespace

std::string malloc_setting_problem() {
  const char* mode = std::getenv("VITRINE_MALLOC");
  if (mode == nullptr || *mode == '\0' || std::strcmp(mode, "system") == 0) return {};
  return std::string("VITRINE_MALLOC='") + mode +
         "' is not a setting; it is ignored and freed memory is kept for reuse "
         "(VITRINE_MALLOC=system leaves glibc's malloc as it is)";
}

bool keep_freed_memory() {
#if defined(__GLIBC__)
  if (user_tunes_malloc()) return false;
  // Blocks up to 1 GiB come from the heap; free memory at its top goes back to the
  // system only beyond 2 GiB. Either call failing leaves glibc's defaults in place.
  if (mallopt(M_MMAP_THRESHOLD, 1 << 30) != 1) return false;
  return mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
#else
  return false;
#endif
}

}  // namespace vitrine
