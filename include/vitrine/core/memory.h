// Process-wide memory allocator settings.
#pragma once

#include <string>

namespace vitrine {

/// Makes glibc's malloc keep freed memory for reuse instead of handing it back to the
/// operating system. By default glibc serves every block above 32 MB (and, until it has
/// seen one freed, above 128 kB) with its own mmap and unmaps it on free, so each large
/// activation or gradient tensor of a training step or a batch costs a fresh set of page
/// faults: a ViT-Ti training step at batch 64 spends about half its time in them. With
/// this setting the process keeps its peak heap (as PyTorch's CUDA caching allocator
/// keeps device memory) and tensors reuse it.
///
/// Leaves malloc alone, and returns false, when the user tunes it already
/// (GLIBC_TUNABLES naming glibc.malloc, or a MALLOC_*_ variable), when
/// VITRINE_MALLOC=system asks for the system's default behaviour, or on a C library
/// other than glibc. Returns true when the settings took effect.
bool keep_freed_memory();

/// What is wrong with VITRINE_MALLOC, when it is set to anything but "system" (such a
/// value is ignored and freed memory is kept); empty when there is nothing to say.
std::string malloc_setting_problem();

}  // namespace vitrine
