#include "cpu/threadpool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace fastlstm {
namespace cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// How long an idle worker spins before sleeping on the condition variable, and how long a
// thread waiting at a barrier spins before it starts yielding its core. Measured in time, not
// iterations: a pause instruction takes from 10 to 140 cycles depending on the processor.
constexpr std::chrono::microseconds kIdleSpin{50};
constexpr std::chrono::microseconds kWaitSpin{200};

// Spins while cond() holds: pause for up to `spin`, then yield the core between checks.
template <typename Cond>
void spin_while(Cond cond, std::chrono::microseconds spin, bool yield_after) {
  const auto start = std::chrono::steady_clock::now();
  for (unsigned i = 1; cond(); ++i) {
    cpu_relax();
    if ((i & 31) == 0 && std::chrono::steady_clock::now() - start > spin) {
      if (!yield_after) return;
      while (cond()) std::this_thread::yield();
      return;
    }
  }
}

class Pool {
 public:
  explicit Pool(int nthreads) : size_(std::max(1, nthreads)) {
    for (int id = 1; id < size_; ++id) workers_.emplace_back([this, id] { worker(id); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const { return size_; }

  void run(TaskFn fn, void* ctx, int nthreads) {
    nthreads = std::max(1, std::min(nthreads, size_));
    if (nthreads == 1) {
      fn(ctx, 0, 1);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = fn;
      ctx_ = ctx;
      active_ = nthreads;
      pending_.store(nthreads - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    fn(ctx, 0, nthreads);
    spin_while([&] { return pending_.load(std::memory_order_acquire) != 0; }, kWaitSpin, true);
  }

 private:
  void worker(int id) {
    unsigned long seen = 0;
    for (;;) {
      // Spin a little for the next job (kernels are often called back to back), then sleep.
      spin_while([&] { return generation_.load(std::memory_order_acquire) == seen; }, kIdleSpin, false);
      TaskFn fn;
      void* ctx;
      int active;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        seen = generation_.load(std::memory_order_acquire);
        if (stopping_) return;
        fn = fn_;
        ctx = ctx_;
        active = active_;
      }
      if (id < active) {
        fn(ctx, id, active);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  const int size_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<unsigned long> generation_{0};
  std::atomic<int> pending_{0};
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int active_ = 1;
  bool stopping_ = false;
};

int default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

std::mutex& run_mutex() {
  static std::mutex m;
  return m;
}
int g_num_threads = default_threads();
// After contention is seen, runs use one thread until this time, then the full count is tried
// again: at least 50 ms, and at least four times the contended run (so that long runs, which
// retry after a few calls, and short ones, which retry after many, spend a similar share of
// time probing).
using Clock = std::chrono::steady_clock;
constexpr std::chrono::milliseconds kBackoffMin{50};
constexpr int kBackoffFactor = 4;
Clock::time_point g_backoff_until{};
Pool* g_pool = nullptr;  // created on first use; recreated when the size changes

// After fork() only the forking thread exists in the child: forget the parent's pool
// (its threads are gone) and build a fresh one on first use.
void after_fork_in_child() {
  g_pool = nullptr;
  new (&run_mutex()) std::mutex();
}
struct ForkHandler {
  ForkHandler() { pthread_atfork(nullptr, nullptr, after_fork_in_child); }
} g_fork_handler;

}  // namespace

int num_threads() {
  std::lock_guard<std::mutex> lock(run_mutex());
  return g_num_threads;
}

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lock(run_mutex());
  g_num_threads = std::max(1, n);
  if (g_pool && g_pool->size() != g_num_threads) {
    delete g_pool;
    g_pool = nullptr;
  }
}

int threads_for_run() {
  std::lock_guard<std::mutex> lock(run_mutex());
  return Clock::now() < g_backoff_until ? 1 : g_num_threads;
}

void run(TaskFn fn, void* ctx, int nthreads, const Barrier* barrier) {
  std::lock_guard<std::mutex> lock(run_mutex());
  if (nthreads <= 1) {
    fn(ctx, 0, 1);
    return;
  }
  // The pool must hold exactly the nthreads the caller planned for (its barriers count them).
  if (!g_pool || g_pool->size() < nthreads) {
    delete g_pool;
    g_pool = new Pool(std::max(nthreads, g_num_threads));
  }
  const auto start = Clock::now();
  g_pool->run(fn, ctx, nthreads);
  const auto end = Clock::now();
  const auto elapsed = end - start;
  // Waiting (summed over the threads) for more than half the run: the threads are not all
  // getting a core. Uneven work alone costs far less.
  if (barrier && std::chrono::nanoseconds(__atomic_load_n(&barrier->wait_ns, __ATOMIC_RELAXED)) > elapsed / 2)
    g_backoff_until = end + std::max<Clock::duration>(kBackoffMin, kBackoffFactor * elapsed);
}

void barrier_init(Barrier* b, int count) {
  b->arrived = 0;
  b->generation = 0;
  b->count = count;
  b->wait_ns = 0;
}

void barrier_wait(Barrier* b) {
  if (b->count <= 1) return;
  int gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
  if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == b->count) {
    __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b->generation, gen + 1, __ATOMIC_RELEASE);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  spin_while([&] { return __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen; }, kWaitSpin, true);
  const int64_t waited =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  __atomic_add_fetch(&b->wait_ns, waited, __ATOMIC_RELAXED);
}

}  // namespace cpu
}  // namespace fastlstm
