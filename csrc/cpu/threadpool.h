// A small thread pool for the CPU kernels.
//
// run() executes fn(ctx, tid, nthreads) on nthreads threads (the caller is thread 0)
// and returns when all have finished. Inside, barrier() synchronises the threads of
// that run (spinning briefly, then yielding). Between runs the workers sleep on a
// condition variable after a short spin, so they do not steal cores from other
// thread pools in the same process (PyTorch, OpenBLAS).
//
// Everything here is compiled without instruction-set flags and called through plain
// function pointers, so no inline code is shared with the per-ISA kernel objects.
#pragma once

#include <cstdint>
#include <string>

namespace fastlstm {
namespace cpu {

using TaskFn = void (*)(void* ctx, int tid, int nthreads);

// Number of threads the kernels use (default: hardware concurrency).
int num_threads();
void set_num_threads(int n);

// The number of threads a kernel should plan its next run() for: num_threads(), or 1 for a
// while after a run whose barriers found the other threads descheduled (another process
// holding a core); see run().
int threads_for_run();

// A barrier for the `count` threads of one run(). Plain storage, operated on only
// through the functions below (atomic builtins in threadpool.cc).
struct Barrier {
  alignas(64) int arrived;
  alignas(64) int generation;
  int count;
  int64_t wait_ns;  // time all threads spent waiting here, summed (atomic adds)
};

// Runs fn on exactly nthreads threads (the caller is thread 0) and returns when all have
// returned. Concurrent callers are serialised. fn must not throw. If `barrier` (used by fn)
// is given, its wait time decides whether the next runs back off to one thread: with
// per-step barriers, one descheduled thread stalls all the others for a whole time slice
// per step, and then the threads spend more time waiting than working.
void run(TaskFn fn, void* ctx, int nthreads, const Barrier* barrier = nullptr);
void barrier_init(Barrier* b, int count);

// Where multi-threaded runs execute: on the team of an OpenMP runtime already loaded in the
// process (libgomp, libomp, libiomp5; PyTorch brings one), else on the own pool ("auto", the
// default), or always on the own pool ("own"; set_pool, false for an unknown name). Setting
// "auto" again also forgets a short team, so that the runtime is tried again.
struct PoolInfo {
  std::string choice;    // "auto" or "own"
  std::string last;      // what the last run ran on: own, openmp, one thread; none before the first
  std::string runtime;   // the path of the OpenMP runtime found, or empty
  std::string fallback;  // why "auto" runs on the own pool although a runtime was found:
                         // "short team" (its top-level team was smaller than asked for; tried
                         // again after set_pool("auto")), "forked" (a fork() child), or empty
};
PoolInfo pool_info();
bool set_pool(const std::string& choice);

// Tests and benchmarks: turn the back-off to one thread after contended runs (threads_for_run)
// off or on, so that a test asking for n threads gets n on a busy machine; either way a
// back-off in progress ends.
void set_backoff(bool enabled);
void barrier_wait(Barrier* b);

}  // namespace cpu
}  // namespace fastlstm
