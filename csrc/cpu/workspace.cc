#include "cpu/workspace.h"

#include <pthread.h>
#include <sys/mman.h>

#include <cstdint>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

namespace fastlstm {
namespace cpu {
namespace workspace {
namespace {

struct Block {
  void* ptr;
  size_t capacity;
};

struct Cache {
  std::mutex mutex;
  std::vector<Block> blocks;  // oldest release first
  size_t bytes = 0;
  size_t limit = size_t(512) << 20;
};

std::atomic<bool> g_poison{false};

void* handed_out(void* p, size_t capacity) {
  if (g_poison.load(std::memory_order_relaxed)) std::memset(p, 0xff, capacity);
  return p;
}

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: kernels may release blocks at exit
  return *c;
}

// After fork() only the forking thread exists in the child; a mutex another thread held
// would never be released there. The cached blocks were copied with the memory: keep them.
void after_fork_in_child() { new (&cache().mutex) std::mutex(); }
struct ForkHandler {
  ForkHandler() { pthread_atfork(nullptr, nullptr, after_fork_in_child); }
} g_fork_handler;

// Frees the oldest blocks until at most `keep` bytes are cached. Caller holds the mutex.
void trim(Cache& c, size_t keep) {
  size_t drop = 0;
  while (drop < c.blocks.size() && c.bytes > keep) {
    std::free(c.blocks[drop].ptr);
    c.bytes -= c.blocks[drop].capacity;
    ++drop;
  }
  c.blocks.erase(c.blocks.begin(), c.blocks.begin() + static_cast<std::ptrdiff_t>(drop));
}

}  // namespace

void* acquire(size_t bytes, size_t* capacity) {
  const bool large = bytes >= kLargeBytes;
  const size_t grain = large ? kHugePage : kSmallGrain;
  const size_t want = (bytes + grain - 1) / grain * grain;
  {
    // The smallest cached block that is large enough (calls with the same shapes get back
    // the blocks they released), and not more than a quarter larger: an output the caller
    // keeps holds its whole block.
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    size_t best = c.blocks.size();
    for (size_t i = 0; i < c.blocks.size(); ++i) {
      const size_t cap = c.blocks[i].capacity;
      if (cap >= want && cap <= want + want / 4 && (best == c.blocks.size() || cap < c.blocks[best].capacity))
        best = i;
    }
    if (best != c.blocks.size()) {
      const Block b = c.blocks[best];
      c.blocks.erase(c.blocks.begin() + static_cast<std::ptrdiff_t>(best));
      c.bytes -= b.capacity;
      *capacity = b.capacity;
      return handed_out(b.ptr, b.capacity);
    }
  }
  void* p = std::aligned_alloc(large ? kHugePage : 64, want);
  if (!p) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  if (large) madvise(p, want, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  *capacity = want;
  return handed_out(p, want);
}

void release(void* block, size_t capacity) {
  if (!block) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (capacity > c.limit) {
    std::free(block);
    return;
  }
  trim(c, c.limit - capacity);
  c.blocks.push_back(Block{block, capacity});
  c.bytes += capacity;
}

void set_cache_limit(size_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.limit = bytes;
  trim(c, bytes);
}

size_t cache_limit() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.limit;
}

size_t cached_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.bytes;
}

void clear() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  trim(c, 0);
}

void set_poison(bool on) { g_poison.store(on, std::memory_order_relaxed); }

}  // namespace workspace
}  // namespace cpu
}  // namespace fastlstm
