// Large working buffers of the CPU kernels, kept between calls.
//
// A call's large buffers (the inference projection, the backward's dz and h_{t-1}: MBs to
// tens of MBs) and its large outputs (y, the saved gates, dx: the bindings hand them to NumPy
// with a capsule that releases the block) would otherwise be fresh memory every call:
// mmap'ed by malloc, then faulted in and zeroed by the kernel page by page (3-14% of a call
// at B >= 16, NOTES 29 and 30). Both come from here from kCachedBytes on: below kLargeBytes
// too, malloc may hand out fresh pages every call (it mmaps blocks above a threshold that
// moves with the process's history, and trims the heap's top): ~1000 page faults per call at
// (100, 32, 128, 128) with lengths, in some processes and not in others (NOTES 37). Blocks of at
// least kLargeBytes are handed out 2 MiB aligned and marked for transparent huge pages, and
// on release every block is kept in a small cache for the next call, up to a byte limit
// (FASTLSTM_CPU_CACHE_MB at load, or set_cache_limit; 0 turns the cache off). The memory a
// block holds is undefined when handed out (the kernels write every element they read).
//
// Compiled once, without instruction-set flags; thread-safe.
#pragma once

#include <cstddef>

namespace fastlstm {
namespace cpu {
namespace workspace {

constexpr size_t kLargeBytes = size_t(4) << 20;    // from here on: huge pages
constexpr size_t kCachedBytes = size_t(128) << 10; // buffers and outputs from the cache from here on
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kSmallGrain = size_t(64) << 10;

// At least `bytes`: from kLargeBytes on rounded up to 2 MiB and 2 MiB aligned, below that
// rounded up to 64 KiB and 64-byte aligned; throws std::bad_alloc. *capacity is set to the
// block's real size, to be passed back to release().
void* acquire(size_t bytes, size_t* capacity);
// Returns a block from acquire(): kept for reuse if the limit allows, else freed.
void release(void* block, size_t capacity);

// The most bytes kept between calls (default 512 MiB, or FASTLSTM_CPU_CACHE_MB MiB).
// Lowering it frees cached blocks beyond the new limit; 0 frees them all and caches nothing.
void set_cache_limit(size_t bytes);
size_t cache_limit();
// Bytes held by the cache now (not counting blocks in use).
size_t cached_bytes();
// Frees every cached block (the limit stays).
void clear();
// Tests: fill every block handed out with NaN (all bits set), cached or fresh, so that a
// kernel reading an element it did not write first fails.
void set_poison(bool on);

}  // namespace workspace
}  // namespace cpu
}  // namespace fastlstm
