#include "cpu/threadpool.h"

#include <pthread.h>
#if defined(__linux__)
#define FASTLSTM_FIND_OPENMP 1  // dl_iterate_phdr (glibc, musl); elsewhere the own pool only
#include <dlfcn.h>
#include <link.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
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

// ---------------------------------------------------------------------------------------
// An OpenMP runtime already in the process (libgomp: PyTorch's, scikit-learn's; or LLVM's
// libomp / Intel's libiomp5, which export the same GOMP_ entry points). After each parallel
// region its worker threads keep spinning for some milliseconds (libgomp: ~300,000 pause
// iterations, 4-8 ms measured on the development VM) and hold their cores; fastlstm's own
// workers then share those cores with them and every per-step barrier waits for a
// descheduled thread (bench/NOTES.md 43, 48). Run on that runtime's team instead: its
// spinning workers take fastlstm's work at once. Found at run time (dl_iterate_phdr), never
// linked: without one loaded, or with FASTLSTM_POOL=own, the own pool runs.
// ---------------------------------------------------------------------------------------
struct OmpRuntime {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*thread_num)() = nullptr;                                           // omp_get_thread_num
  int (*team_size)() = nullptr;                                            // omp_get_num_threads
  int (*in_parallel)() = nullptr;  // omp_in_parallel (optional: nullptr reads as "no")
  void* handle = nullptr;          // our dlopen reference (kept: its threads may run our work)
  std::string name;                // the library's path
};

enum class PoolChoice { kAuto, kOwn };

PoolChoice g_pool_choice = PoolChoice::kAuto;  // (FASTLSTM_POOL: set by the package at import)
OmpRuntime g_omp;                 // found runtime (parallel == nullptr: none yet)
bool g_omp_short_team = false;    // a top-level team came back smaller than asked: not used
                                  // again until set_pool("auto")
bool g_omp_forked = false;        // this process is a fork() child: never used again
const char* g_last_pool = "none"; // what the last run() ran on: "own", "openmp", "one thread"

#if defined(FASTLSTM_FIND_OPENMP)
unsigned long long g_omp_scan_adds = ~0ull;  // dl_iterate_phdr's load count at the last scan

bool is_omp_library(const char* path) {
  const char* base = std::strrchr(path, '/');
  base = base ? base + 1 : path;
  return std::strncmp(base, "libgomp", 7) == 0 || std::strncmp(base, "libiomp5", 8) == 0 ||
         std::strncmp(base, "libomp.so", 9) == 0;
}

// Whether objects were loaded or unloaded since the last scan (dlpi_adds/subs, read from the
// first object only: cheap enough to check on every run).
int count_loads(struct dl_phdr_info* info, size_t, void* data) {
  *static_cast<unsigned long long*>(data) = info->dlpi_adds + (info->dlpi_subs << 32);
  return 1;
}

int find_omp(struct dl_phdr_info* info, size_t, void* data) {
  auto* paths = static_cast<std::vector<std::string>*>(data);
  if (info->dlpi_name && *info->dlpi_name && is_omp_library(info->dlpi_name))
    paths->emplace_back(info->dlpi_name);
  return 0;
}

// The entry points as seen from handle h: the object's own symbols, then its dependencies'.
bool omp_symbols(void* h, OmpRuntime* rt) {
  rt->parallel = reinterpret_cast<decltype(rt->parallel)>(dlsym(h, "GOMP_parallel"));
  rt->thread_num = reinterpret_cast<decltype(rt->thread_num)>(dlsym(h, "omp_get_thread_num"));
  rt->team_size = reinterpret_cast<decltype(rt->team_size)>(dlsym(h, "omp_get_num_threads"));
  rt->in_parallel = reinterpret_cast<decltype(rt->in_parallel)>(dlsym(h, "omp_in_parallel"));
  return rt->parallel && rt->thread_num && rt->team_size;
}

// The loaded OpenMP runtime, when there is one (called under run_mutex()).
const OmpRuntime* omp_runtime() {
  unsigned long long adds = 0;
  dl_iterate_phdr(count_loads, &adds);
  if (adds != g_omp_scan_adds) {
    g_omp_scan_adds = adds;
    OmpRuntime found;
    // PyTorch loaded: the runtime its own code calls (libtorch_cpu's dependency scope), whose
    // workers are the ones spinning after torch ops. By load order alone, a process that
    // imported scikit-learn (its vendored libgomp-<hash>.so, another soname) before torch
    // would get scikit-learn's runtime: a second team of spinning threads competing with
    // torch's, the very contention this route is for.
    if (void* h = dlopen("libtorch_cpu.so", RTLD_NOW | RTLD_NOLOAD)) {
      Dl_info where;
      if (omp_symbols(h, &found) && dladdr(reinterpret_cast<void*>(found.parallel), &where) &&
          where.dli_fname) {
        found.name = where.dli_fname;
        found.handle = h;
      } else {
        found = OmpRuntime();
        dlclose(h);
      }
    }
    if (!found.parallel) {
      std::vector<std::string> paths;
      dl_iterate_phdr(find_omp, &paths);
      // libgomp first (PyTorch's on Linux), then the others in load order
      std::stable_sort(paths.begin(), paths.end(), [](const std::string& a, const std::string& b) {
        auto gomp = [](const std::string& p) { return p.find("libgomp") != std::string::npos; };
        return gomp(a) && !gomp(b);
      });
      for (const auto& path : paths) {
        void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
        if (!h) continue;
        if (omp_symbols(h, &found)) {
          found.name = path;
          found.handle = h;
          break;
        }
        found = OmpRuntime();
        dlclose(h);
      }
    }
    // One reference per runtime, kept for good (a runtime that ran our work keeps its threads,
    // parked in its code): a rescan that finds the same one drops the extra reference.
    if (found.handle && g_omp.handle && found.parallel == g_omp.parallel) {
      dlclose(found.handle);
      found.handle = g_omp.handle;
    }
    g_omp = found;
  }
  return g_omp.parallel ? &g_omp : nullptr;
}
#else
const OmpRuntime* omp_runtime() { return nullptr; }
#endif

struct OmpJob {
  TaskFn fn;
  void* ctx;
  int nthreads;
  const OmpRuntime* rt;
  std::atomic<int> short_team{0};
};

// Every thread of the team checks its size before fn runs: a smaller team (a thread limit,
// a nested region) leaves fn unrun on all of them, so no barrier in fn waits for a thread
// that does not exist; run() then uses the own pool.
void omp_trampoline(void* data) {
  auto* job = static_cast<OmpJob*>(data);
  if (job->rt->team_size() != job->nthreads) {
    job->short_team.store(1, std::memory_order_relaxed);
    return;
  }
  job->fn(job->ctx, job->rt->thread_num(), job->nthreads);
}

// Runs fn on the OpenMP runtime's team; false (fn not run) when the team was short.
bool run_on_omp(const OmpRuntime* rt, TaskFn fn, void* ctx, int nthreads) {
  OmpJob job{fn, ctx, nthreads, rt};
  rt->parallel(omp_trampoline, &job, static_cast<unsigned>(nthreads), 0);
  return job.short_team.load(std::memory_order_relaxed) == 0;
}

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
bool g_backoff_enabled = true;  // (tests turn it off: set_backoff)
Pool* g_pool = nullptr;  // created on first use; recreated when the size changes

// After fork() only the forking thread exists in the child: forget the parent's pool
// (its threads are gone) and build a fresh one on first use.
void after_fork_in_child() {
  g_pool = nullptr;
  g_omp_forked = true;  // an OpenMP runtime's threads are gone too, and it may not know
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
  return g_backoff_enabled && Clock::now() < g_backoff_until ? 1 : g_num_threads;
}

void run(TaskFn fn, void* ctx, int nthreads, const Barrier* barrier) {
  std::lock_guard<std::mutex> lock(run_mutex());
  if (nthreads <= 1) {
    fn(ctx, 0, 1);
    g_last_pool = "one thread";
    return;
  }
  const auto start = Clock::now();
  const OmpRuntime* omp =
      g_pool_choice == PoolChoice::kOwn || g_omp_short_team || g_omp_forked ? nullptr : omp_runtime();
  if (omp && run_on_omp(omp, fn, ctx, nthreads)) {
    g_last_pool = "openmp";
  } else {
    // A short team at the top level (OMP_THREAD_LIMIT, OMP_DYNAMIC): not tried again (until
    // set_pool("auto")). Inside an active parallel region (a nested team is one thread unless
    // nesting is on) only this call falls back: the top-level calls keep the runtime.
    if (omp && !(omp->in_parallel && omp->in_parallel())) g_omp_short_team = true;
    // The pool must hold exactly the nthreads the caller planned for (its barriers count them).
    if (!g_pool || g_pool->size() < nthreads) {
      delete g_pool;
      g_pool = new Pool(std::max(nthreads, g_num_threads));
    }
    g_pool->run(fn, ctx, nthreads);
    g_last_pool = "own";
  }
  const auto end = Clock::now();
  const auto elapsed = end - start;
  // Waiting (summed over the threads) for more than half the run: the threads are not all
  // getting a core. Uneven work alone costs far less.
  if (barrier && std::chrono::nanoseconds(__atomic_load_n(&barrier->wait_ns, __ATOMIC_RELAXED)) > elapsed / 2)
    g_backoff_until = end + std::max<Clock::duration>(kBackoffMin, kBackoffFactor * elapsed);
}

PoolInfo pool_info() {
  std::lock_guard<std::mutex> lock(run_mutex());
  const OmpRuntime* omp = omp_runtime();
  return {g_pool_choice == PoolChoice::kOwn ? "own" : "auto", g_last_pool, omp ? omp->name : std::string(),
          g_omp_forked ? "forked" : g_omp_short_team ? "short team" : ""};
}

void set_backoff(bool enabled) {
  std::lock_guard<std::mutex> lock(run_mutex());
  g_backoff_enabled = enabled;
  g_backoff_until = Clock::time_point{};  // (and forget a back-off in progress)
}

bool set_pool(const std::string& choice) {
  std::lock_guard<std::mutex> lock(run_mutex());
  if (choice == "auto") {
    g_pool_choice = PoolChoice::kAuto;
    g_omp_short_team = false;  // (try the runtime's team again; a fork() child never does)
  } else if (choice == "own") {
    g_pool_choice = PoolChoice::kOwn;
  }
  else return false;
  return true;
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
