#include "vitrine/core/memory.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>

namespace {

// How many blocks glibc serves with their own mmap while a 64 MB tensor is alive.
size_t mmapped_blocks_with_a_large_tensor() {
  const at::Tensor t = at::empty({16 << 20}, at::kFloat);  // 64 MB
  t.fill_(1.0f);
  return mallinfo2().hblks;
}

// Restores an environment variable when the test ends.
struct EnvGuard {
  explicit EnvGuard(const char* name) : name(name) {
    if (const char* v = std::getenv(name)) {
      had = true;
      old = v;
    }
  }
  ~EnvGuard() { had ? setenv(name, old.c_str(), 1) : unsetenv(name); }
  const char* name;
  bool had = false;
  std::string old;
};

}  // namespace

TEST(Memory, LargeTensorsReuseTheHeapOnceFreedMemoryIsKept) {
  EnvGuard opt_out("VITRINE_MALLOC"), tunables("GLIBC_TUNABLES");
  unsetenv("GLIBC_TUNABLES");
  const size_t idle = mallinfo2().hblks;
  // glibc's default: a block this large is an mmap of its own, unmapped on free.
  ASSERT_EQ(mmapped_blocks_with_a_large_tensor(), idle + 1);

  // The user's own malloc tuning and the opt-out are respected.
  setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2", 1);
  EXPECT_FALSE(vitrine::keep_freed_memory());
  unsetenv("GLIBC_TUNABLES");
  setenv("VITRINE_MALLOC", "system", 1);
  EXPECT_FALSE(vitrine::keep_freed_memory());
  EXPECT_EQ(mmapped_blocks_with_a_large_tensor(), idle + 1);

  EXPECT_EQ(vitrine::malloc_setting_problem(), "");

  // A misspelt opt-out is named, and does not count as one.
  setenv("VITRINE_MALLOC", "sytem", 1);
  const std::string problem = vitrine::malloc_setting_problem();
  EXPECT_NE(problem.find("VITRINE_MALLOC='sytem'"), std::string::npos) << problem;
  EXPECT_NE(problem.find("VITRINE_MALLOC=system"), std::string::npos) << problem;
  ASSERT_TRUE(vitrine::keep_freed_memory());
  EXPECT_EQ(mmapped_blocks_with_a_large_tensor(), idle);

  unsetenv("VITRINE_MALLOC");
  EXPECT_EQ(vitrine::malloc_setting_problem(), "");
  ASSERT_TRUE(vitrine::keep_freed_memory());
  EXPECT_EQ(mmapped_blocks_with_a_large_tensor(), idle);
  // Freed, the block stays in the heap for the next tensor.
  const size_t kept = mallinfo2().fordblks;
  EXPECT_GE(kept, size_t{64} << 20);
  EXPECT_EQ(mmapped_blocks_with_a_large_tensor(), idle);
}

#else
TEST(Memory, LeavesOtherCLibrariesAlone) { EXPECT_FALSE(vitrine::keep_freed_memory()); }
#endif
