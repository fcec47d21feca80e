// Standalone correctness check and microbenchmark for csrc/cpu/gemm.h (see README.md).
//
//   g++ -O3 -std=c++17 <ISA flags> -DFASTLSTM_TARGET=avx512 -I csrc bench/gemm/gemm_bench.cc
//       -o /tmp/gemm_bench -lpthread -ldl   (full commands in README.md)
//   /tmp/gemm_bench check            # correctness only
//   /tmp/gemm_bench bench [reps] [f32|f64|all] [case]   # timings (+ OpenBLAS if FASTLSTM_OPENBLAS=lib.so)
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <time.h>
#include <vector>

#include "cpu/gemm.h"

using namespace fastlstm::cpu::FASTLSTM_TARGET;
#define STR2(x) #x
#define STR(x) STR2(x)

template <typename T>
struct AlignedBuf {
  T* p = nullptr;
  explicit AlignedBuf(int64_t n) {
    size_t bytes = (static_cast<size_t>(n > 0 ? n : 1) * sizeof(T) + 63) / 64 * 64;
    p = static_cast<T*>(std::aligned_alloc(64, bytes));
  }
  ~AlignedBuf() { std::free(p); }
  AlignedBuf(const AlignedBuf&) = delete;
};

// A persistent pool, like the library's (threadpool.cc): spawning threads per call costs
// 1-2 ms of wake-up latency on this VM and makes 2-thread timings meaningless. Workers
// spin for a few ms after a job (as OpenBLAS's do), then sleep on a condition variable.
class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : th_) t.join();
  }
  // Runs f(tid) for tid = 0..n-1 (the caller is 0).
  void run(int n, const std::function<void(int)>& f) {
    while (static_cast<int>(th_.size()) < n - 1) {
      const int tid = static_cast<int>(th_.size()) + 1;
      th_.emplace_back([this, tid] { worker(tid); });
    }
    oversubscribed_ = n > static_cast<int>(std::thread::hardware_concurrency());
    job_ = &f;
    n_ = n;
    pending_.store(n - 1);
    {
      std::lock_guard<std::mutex> l(mu_);
      gen_.fetch_add(1);
    }
    cv_.notify_all();
    f(0);
    while (pending_.load() != 0) relax();
  }

 private:
  void worker(int tid) {
    long seen = 0;
    for (;;) {
      auto t0 = std::chrono::steady_clock::now();
      while (spin() && gen_.load() == seen && std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(5)) {
      }
      if (gen_.load() == seen) {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return gen_.load() != seen; });
      }
      seen = gen_.load();
      if (stop_) return;
      if (tid < n_) {
        (*job_)(tid);
        pending_.fetch_sub(1);
      }
    }
  }
  // Spin only for timings with at most one thread per core; otherwise (the check runs 3
  // and 5 threads on 2 cores) yield and sleep at once.
  bool spin() const { return spin_enabled_.load() && !oversubscribed_.load(); }
  void relax() const {
    if (!spin()) std::this_thread::yield();
  }
  std::atomic<bool> oversubscribed_{false};

 public:
  std::atomic<bool> spin_enabled_{false};

 private:
  std::vector<std::thread> th_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<long> gen_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* job_ = nullptr;
  int n_ = 0;
  bool stop_ = false;
};
static Pool pool;

// Runs gemm_part on nthreads threads (thread 0 is the caller), one workspace each.
template <typename Real>
void run_gemm(const GemmArgs<Real>& g, int nthreads, Real* ws) {
  const int64_t wpt = Gemm<Real>::workspace_per_thread;
  if (nthreads == 1) {
    gemm_part(g, 0, 1, ws);
    return;
  }
  if (pool.spin_enabled_) {  // timings
    pool.run(nthreads, [&](int t) { gemm_part(g, t, nthreads, ws + t * wpt); });
    return;
  }
  std::vector<std::thread> th;  // the check (up to 5 threads on 2 cores)
  for (int t = 1; t < nthreads; ++t) th.emplace_back([&, t] { gemm_part(g, t, nthreads, ws + t * wpt); });
  gemm_part(g, 0, nthreads, ws);
  for (auto& x : th) x.join();
}

// ---------------------------------------------------------------- correctness
struct Shape {
  int64_t M, N, K;
  int mode;  // 0: A,B row-major; 1: A transposed (a_rs=1); 2: B transposed (b_cs=K); 3: odd strides
  bool bias;
  bool scatter = false;  // product row i to C row c_rows[i] (GemmArgs::c_rows), C of 2M rows,
                         // and (except mode 1) from A row a_rows[i] (GemmArgs::a_rows), A of 2M
                         // rows, the others NaN; in mode 1 A's column k is column a_cols[k]
                         // (GemmArgs::a_cols) of 2K, the others NaN
};

template <typename Real>
bool check_one(const Shape& s, std::mt19937& rng) {
  const int64_t M = s.M, N = s.N, K = s.K;
  int64_t a_rs, a_cs, b_rs, b_cs, a_size, b_size;
  switch (s.mode) {
    case 0: a_rs = K; a_cs = 1; b_rs = N; b_cs = 1; break;
    case 1: a_rs = 1; a_cs = M; b_rs = N; b_cs = 1; break;
    case 2: a_rs = K; a_cs = 1; b_rs = 1; b_cs = K; break;
    default: a_rs = 2 * K + 3; a_cs = 2; b_rs = 3; b_cs = 3 * K + 1; break;
  }
  a_size = (M > 0 && K > 0) ? (M - 1) * a_rs + (K - 1) * a_cs + 1 : 1;
  b_size = (K > 0 && N > 0) ? (K - 1) * b_rs + (N - 1) * b_cs + 1 : 1;
  const int64_t ldc = N + (s.mode == 3 ? 5 : 0);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<Real> A(a_size), B(b_size), bias(N + 1);
  for (auto& x : A) x = Real(dist(rng));
  for (auto& x : B) x = Real(dist(rng));
  for (auto& x : bias) x = Real(dist(rng));
  // With scatter, product rows go to rows c_rows[i] of a C of 2M rows, in reverse order and
  // every other row (odd rows for odd i), the rest of C untouched.
  const int64_t c_rows_n = s.scatter ? 2 * M : M;
  std::vector<int64_t> c_rows(M > 0 ? M : 1), row_of(c_rows_n, -1);
  for (int64_t i = 0; i < M; ++i) {
    c_rows[i] = s.scatter ? 2 * (M - 1 - i) + (i & 1) : i;
    row_of[c_rows[i]] = i;
  }
  const int64_t c_size = c_rows_n * ldc + 1;
  const Real sentinel = Real(12345.0);
  const bool gather = s.scatter && s.mode != 1;
  std::vector<int64_t> a_rows(M > 0 ? M : 1);
  std::vector<Real> A_big;
  if (gather) {
    A_big.assign(M > 0 && K > 0 ? (2 * M - 1) * a_rs + (K - 1) * a_cs + 1 : 1, Real(NAN));
    for (int64_t i = 0; i < M; ++i) {
      a_rows[i] = (i & 1) ? 2 * i : 2 * (M - 1 - i) + 1;
      for (int64_t k = 0; k < K; ++k) A_big[a_rows[i] * a_rs + k * a_cs] = A[i * a_rs + k * a_cs];
    }
  }
  const bool gather_k = s.scatter && s.mode == 1;
  std::vector<int64_t> a_cols(K > 0 ? K : 1);
  if (gather_k) {
    A_big.assign(M > 0 && K > 0 ? (M - 1) * a_rs + (2 * K - 1) * a_cs + 1 : 1, Real(NAN));
    for (int64_t k = 0; k < K; ++k) {
      a_cols[k] = (k & 1) ? 2 * k : 2 * (K - 1 - k) + 1;
      for (int64_t i = 0; i < M; ++i) A_big[i * a_rs + a_cols[k] * a_cs] = A[i * a_rs + k * a_cs];
    }
  }
  std::vector<std::vector<Real>> outs;
  bool ok = true;
  const int thread_counts[] = {1, 2, 3, 5};
  for (int nt : thread_counts) {
    std::vector<Real> C(c_size, sentinel);
    AlignedBuf<Real> ws(nt * Gemm<Real>::workspace_per_thread);
    GemmArgs<Real> g{M, N, K, A.data(), a_rs, a_cs, B.data(), b_rs, b_cs, C.data(), ldc,
                     s.bias ? bias.data() : nullptr};
    g.c_rows = s.scatter ? c_rows.data() : nullptr;
    if (gather) {
      g.A = A_big.data();
      g.a_rows = a_rows.data();
    }
    if (gather_k) {
      g.A = A_big.data();
      g.a_cols = a_cols.data();
    }
    run_gemm(g, nt, ws.p);
    outs.push_back(C);
  }
  for (size_t i = 1; i < outs.size(); ++i)
    if (std::memcmp(outs[0].data(), outs[i].data(), c_size * sizeof(Real)) != 0) {
      std::printf("FAIL bitwise 1 vs %d threads M=%ld N=%ld K=%ld mode=%d bias=%d\n", thread_counts[i], (long)M,
                  (long)N, (long)K, s.mode, (int)s.bias);
      ok = false;
    }
  const std::vector<Real>& C = outs[0];
  const double eps = sizeof(Real) == 4 ? 1.2e-7 : 2.3e-16;
  double worst = 0;
  for (int64_t row = 0; row < c_rows_n; ++row) {
    const int64_t i = row_of[row];
    for (int64_t j = 0; j < ldc; ++j) {
      const Real got = C[row * ldc + j];
      if (j >= N || i < 0) {
        if (got != sentinel) { ok = false; std::printf("FAIL wrote padding (%ld,%ld)\n", (long)i, (long)j); }
        continue;
      }
      double ref = s.bias ? double(bias[j]) : 0.0, mag = std::fabs(ref);
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(A[i * a_rs + k * a_cs]) * double(B[k * b_rs + j * b_cs]);
        ref += p;
        mag += std::fabs(p);
      }
      const double err = std::fabs(double(got) - ref) / (mag + 1e-300);
      if (!(err <= 4 * (K + 2) * eps)) {
        if (ok) std::printf("FAIL value (%ld,%ld) got %.9g want %.9g M=%ld N=%ld K=%ld mode=%d\n", (long)i, (long)j,
                            double(got), ref, (long)M, (long)N, (long)K, s.mode);
        ok = false;
      }
      if (mag > 0) worst = std::max(worst, err);
    }
  }
  if (C[c_rows_n * ldc] != sentinel) { ok = false; std::printf("FAIL wrote past C\n"); }
  return ok;
}

// gemm_part_stacked: two products sharing B (as dkernel and drecurrent_kernel share dz: A
// transposed, K along B's rows), with and without accumulating into C, on 1, 2, 3 and 5
// threads, must give bitwise each part's product alone (whose values check_one checks) and
// write nothing else.
template <typename Real>
bool check_stacked(int64_t M0, int64_t M1, int64_t N, int64_t K, bool accumulate, std::mt19937& rng) {
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  const int64_t M[2] = {M0, M1};
  std::vector<Real> A[2], C0[2], B(K * N > 0 ? K * N : 1);
  for (auto& x : B) x = Real(dist(rng));
  const Real sentinel = Real(12345.0);
  for (int p = 0; p < 2; ++p) {
    A[p].resize(M[p] * K > 0 ? M[p] * K : 1);
    for (auto& x : A[p]) x = Real(dist(rng));
    C0[p].resize(M[p] * N + 1, sentinel);  // (one past the end stays the sentinel)
    if (accumulate)
      for (int64_t i = 0; i < M[p] * N; ++i) C0[p][i] = Real(dist(rng));
  }
  auto args = [&](int p, std::vector<Real>& C) {
    GemmArgs<Real> g{M[p], N, K, A[p].data(), 1, M[p], B.data(), N, 1, C.data(), N, nullptr};
    g.accumulate = accumulate;
    return g;
  };
  std::vector<Real> want[2] = {C0[0], C0[1]};
  AlignedBuf<Real> ws1(Gemm<Real>::workspace_per_thread);
  for (int p = 0; p < 2; ++p) gemm_part(args(p, want[p]), 0, 1, ws1.p);
  bool ok = true;
  for (int nt : {1, 2, 3, 5}) {
    std::vector<Real> got[2] = {C0[0], C0[1]};
    const GemmArgs<Real> parts[2] = {args(0, got[0]), args(1, got[1])};
    AlignedBuf<Real> ws(nt * Gemm<Real>::workspace_per_thread);
    std::vector<std::thread> th;
    for (int t = 1; t < nt; ++t)
      th.emplace_back([&, t] { gemm_part_stacked(parts, t, nt, ws.p + t * Gemm<Real>::workspace_per_thread); });
    gemm_part_stacked(parts, 0, nt, ws.p);
    for (auto& x : th) x.join();
    for (int p = 0; p < 2; ++p)
      if (std::memcmp(got[p].data(), want[p].data(), got[p].size() * sizeof(Real)) != 0) {
        std::printf("FAIL stacked part %d, %d threads M0=%ld M1=%ld N=%ld K=%ld accumulate=%d\n", p, nt, (long)M0,
                    (long)M1, (long)N, (long)K, (int)accumulate);
        ok = false;
      }
  }
  return ok;
}

template <typename Real>
int check_all(const char* name) {
  std::mt19937 rng(42);
  std::vector<Shape> shapes;
  const int64_t small[] = {0, 1, 2, 3, 5, 7, 13, 14, 15, 17, 29, 31, 32, 33, 47, 65};
  for (int mode = 0; mode < 4; ++mode) {
    for (int64_t M : small)
      for (int64_t N : {int64_t(0), int64_t(1), int64_t(3), int64_t(16), int64_t(17), int64_t(33), int64_t(65)})
        for (int64_t K : {int64_t(0), int64_t(1), int64_t(2), int64_t(7), int64_t(19)})
          shapes.push_back({M, N, K, mode, ((M + N + K) & 1) != 0});
    // Crossing the blocking sizes (KC, NC, MC) and thread tiles.
    shapes.push_back({97, 131, 700, mode, true});
    shapes.push_back({211, 67, 1033, mode, false});
    shapes.push_back({29, 1100, 300, mode, true});
    shapes.push_back({300, 1500, 129, mode, false});
    shapes.push_back({3, 2500, 5, mode, true});
    shapes.push_back({2500, 3, 17, mode, true});
    shapes.push_back({1, 1, 2000, mode, true});
    // Several column blocks with A kept packed across them (rows <= Gemm::MA), and just over.
    shapes.push_back({50, 2100, 900, mode, true});
    shapes.push_back({1040, 1100, 20, mode, false});
    // Output rows scattered (the forward's projection with lengths).
    for (int64_t M : {int64_t(1), int64_t(13), int64_t(15), int64_t(33), int64_t(300)})
      for (int64_t N : {int64_t(17), int64_t(64), int64_t(1100)})
        shapes.push_back({M, N, 37, mode, (M & 1) != 0, true});
  }
  int fails = 0;
  for (const Shape& s : shapes) fails += !check_one<Real>(s, rng);
  int stacked = 0;
  for (int64_t M0 : {int64_t(0), int64_t(1), int64_t(13), int64_t(14), int64_t(15), int64_t(130)})
    for (int64_t M1 : {int64_t(0), int64_t(5), int64_t(28), int64_t(257)})
      for (int64_t N : {int64_t(1), int64_t(33), int64_t(800)})
        for (int64_t K : {int64_t(0), int64_t(3), int64_t(500)})
          for (bool accumulate : {false, true}) {
            fails += !check_stacked<Real>(M0, M1, N, K, accumulate, rng);
            ++stacked;
          }
  std::printf("[%s %s] %zu shapes checked, %d stacked pairs, %d failures\n", STR(FASTLSTM_TARGET), name,
              shapes.size(), stacked, fails);
  return fails;
}

// ---------------------------------------------------------------- timing
typedef void (*sgemm_t)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                        int64_t, float, float*, int64_t);
typedef void (*dgemm_t)(int, int, int, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                        int64_t, double, double*, int64_t);
typedef void (*setthreads_t)(int);
static sgemm_t ob_sgemm;
static dgemm_t ob_dgemm;
static setthreads_t ob_threads;

static void load_openblas() {
  const char* path = std::getenv("FASTLSTM_OPENBLAS");
  if (!path || !*path) return;
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) { std::printf("(could not load %s)\n", path); return; }
  ob_sgemm = (sgemm_t)dlsym(h, "scipy_cblas_sgemm64_");
  ob_dgemm = (dgemm_t)dlsym(h, "scipy_cblas_dgemm64_");
  ob_threads = (setthreads_t)dlsym(h, "scipy_openblas_set_num_threads64_");
  if (!ob_sgemm || !ob_dgemm || !ob_threads) ob_sgemm = nullptr, ob_dgemm = nullptr;
}

struct Case {
  const char* name;
  int64_t M, N, K;
  bool at, bt;  // A transposed (A stored K x M), B transposed (B stored N x K)
};

template <typename Real>
void ob_call(const Case& c, const Real* A, const Real* B, Real* C) {
  const int64_t lda = c.at ? c.M : c.K, ldb = c.bt ? c.K : c.N;
  const int ta = c.at ? 112 : 111, tb = c.bt ? 112 : 111;
  if constexpr (sizeof(Real) == 4) ob_sgemm(101, ta, tb, c.M, c.N, c.K, 1.0f, A, lda, B, ldb, 0.0f, C, c.N);
  else ob_dgemm(101, ta, tb, c.M, c.N, c.K, 1.0, A, lda, B, ldb, 0.0, C, c.N);
}

template <typename F>
double time_once(F&& f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
double thread_cpu() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
double median(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
}
double best(const std::vector<double>& t) { return *std::min_element(t.begin(), t.end()); }

template <typename Real>
void bench_all(const char* name, int reps, const std::vector<Case>& cases, const std::string& only_case) {
  std::printf("\n[%s %s] GFLOP/s, median over %d runs unless \"best\": ours, OpenBLAS, ratio\n", STR(FASTLSTM_TARGET), name,
              reps);
  std::printf("%-8s %5s %5s %5s | %-16s | %-16s | %-16s | %-16s |\n", "case", "M", "N", "K", "1 thr wall",
              "1 thr cpu-time", "2 thr wall", "2 thr wall best");
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (const Case& c : cases) {
    if (!only_case.empty() && only_case != c.name) continue;
    std::vector<Real> A(c.M * c.K), B(c.K * c.N), bias(c.N), C(c.M * c.N);
    for (auto& x : A) x = dist(rng);
    for (auto& x : B) x = dist(rng);
    for (auto& x : bias) x = dist(rng);
    GemmArgs<Real> g{c.M, c.N, c.K, A.data(), c.at ? 1 : c.K, c.at ? c.M : 1, B.data(), c.bt ? 1 : c.N,
                     c.bt ? c.K : 1, C.data(), c.N, c.at || c.bt ? nullptr : bias.data()};
    const double flops = 2.0 * c.M * c.N * c.K;
    std::printf("%-8s %5ld %5ld %5ld |", c.name, (long)c.M, (long)c.N, (long)c.K);
    for (int nt = 1; nt <= 2; ++nt) {
      AlignedBuf<Real> ws(nt * Gemm<Real>::workspace_per_thread);
      run_gemm(g, nt, ws.p);  // warm up
      if (ob_sgemm) ob_threads(nt), ob_call(c, A.data(), B.data(), C.data());
      // Alternate the two so that both see the same interference from other processes.
      // With one thread also take the thread's CPU time, which leaves out the time other
      // processes held the core (the machine is shared).
      std::vector<double> ours, ob, ours_cpu, ob_cpu;
      for (int r = 0; r < reps; ++r) {
        double c0 = thread_cpu();
        ours.push_back(time_once([&] { run_gemm(g, nt, ws.p); }));
        ours_cpu.push_back(thread_cpu() - c0);
        if (!ob_sgemm) continue;
        c0 = thread_cpu();
        ob.push_back(time_once([&] { ob_call(c, A.data(), B.data(), C.data()); }));
        ob_cpu.push_back(thread_cpu() - c0);
      }
      auto col = [&](double o, double b) {
        if (ob_sgemm) std::printf(" %5.0f %5.0f %4.2f |", flops / o * 1e-9, flops / b * 1e-9, b / o);
        else std::printf(" %5.0f    -     - |", flops / o * 1e-9);
      };
      if (nt == 1) {
        col(median(ours), ob_sgemm ? median(ob) : 0);
        col(median(ours_cpu), ob_sgemm ? median(ob_cpu) : 0);
      } else {
        col(median(ours), ob_sgemm ? median(ob) : 0);
        col(best(ours), ob_sgemm ? best(ob) : 0);
      }
      std::fflush(stdout);
    }
    std::printf("\n");
  }
}

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "check";
  if (mode != "bench") return check_all<float>("float32") + check_all<double>("float64") ? 1 : 0;
  int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  std::string only = argc > 3 ? argv[3] : "";        // f32 | f64 | all
  std::string only_case = argc > 4 ? argv[4] : "";   // fwd | dkernel | drk | dx
  load_openblas();
  pool.spin_enabled_ = true;
  // Call-site shapes: forward x.kernel (+bias); dkernel = x^T.dz; dx = dz.kernel^T.
  std::vector<Case> cases = {
      {"fwd", 1600, 1024, 256, false, false},  {"fwd", 6400, 2048, 512, false, false},
      {"fwd", 3200, 4096, 1024, false, false}, {"dkernel", 512, 2048, 6400, true, false},
      {"drk", 1024, 4096, 3200, true, false},  {"dx", 6400, 512, 2048, false, true},
      {"dx", 3200, 1024, 4096, false, true},
  };
  if (only != "f64") bench_all<float>("float32", reps, cases, only_case);
  if (only != "f32") bench_all<double>("float64", reps, cases, only_case);
  return 0;
}
