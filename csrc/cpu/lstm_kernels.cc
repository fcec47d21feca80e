// The CPU LSTM kernels, written once and compiled once per instruction set (see
// CMakeLists.txt): FASTLSTM_TARGET names the namespace of this copy, and simd.h picks
// the vector width from the compiler flags.
//
// Forward:  G = x . kernel + bias for all T*B rows (one packed matrix product), then per
//           step each thread computes h_{t-1} . recurrent_kernel for its own hidden units
//           (all four gates of them), and applies the gates and the cell update while the
//           tile is still in registers. One barrier per step.
// Backward: per step each thread forms the gate gradients dz of its own units, then, after
//           a barrier, dh_{t-1} = dz . recurrent_kernel^T for its own units (on a transposed
//           copy with the forward's tile from B = 2 on, else as dot products along rows of
//           recurrent_kernel). The weight gradients are large products over all T*B rows
//           after the time loop.
//
// At small hidden sizes (split_rows_forward / split_rows_backward) the threads split the
// batch rows instead of the units: each runs its rows on all units with no barrier per step.
//
// Every output element is computed by one thread, in an order that does not depend on the
// number of threads (nor on which thread takes it), so results are bitwise identical for any
// thread count.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/cpu.h"
#include "cpu/gemm.h"
#include "cpu/simd.h"
#include "cpu/threadpool.h"
#include "cpu/workspace.h"

#define FASTLSTM_STR2(x) #x
#define FASTLSTM_STR(x) FASTLSTM_STR2(x)

namespace fastlstm {
namespace cpu {
namespace FASTLSTM_TARGET {
const KernelTable& kernel_table();
namespace {

// An uninitialised, 64-byte aligned array owned by the calling thread. All but small ones
// (the projection, dz, h_{t-1}, the packed weights, ...) come from the workspace cache and go
// back to it; from 4 MiB on 2 MiB aligned and marked for transparent huge pages (NOTES 24,
// 29, 37).
template <typename Real>
class Buffer {
 public:
  explicit Buffer(int64_t n) {
    size_t bytes = static_cast<size_t>(n > 0 ? n : 1) * sizeof(Real);
    bytes = (bytes + 63) / 64 * 64;
    if (bytes >= workspace::kCachedBytes) {
      ptr_ = static_cast<Real*>(workspace::acquire(bytes, &capacity_));
    } else {
      ptr_ = static_cast<Real*>(std::aligned_alloc(64, bytes));
      if (!ptr_) throw std::bad_alloc();
    }
  }
  ~Buffer() {
    if (capacity_) workspace::release(ptr_, capacity_);
    else std::free(ptr_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Real* get() const { return ptr_; }

 private:
  Real* ptr_;
  size_t capacity_ = 0;  // nonzero: a workspace block
};

// Loads/stores of the first n (<= N) lanes; the missing lanes read as zero.
template <typename Real>
inline typename Vec<Real>::R load_part(const Real* p, int64_t n) {
  using V = Vec<Real>;
  if (n == V::N) return V::load(p);
  alignas(64) Real tmp[V::N] = {};
  for (int64_t i = 0; i < n; ++i) tmp[i] = p[i];
  return V::load(tmp);
}
template <typename Real>
inline void store_part(Real* p, typename Vec<Real>::R v, int64_t n) {
  using V = Vec<Real>;
  if (n == V::N) {
    V::store(p, v);
    return;
  }
  alignas(64) Real tmp[V::N];
  V::store(tmp, v);
  for (int64_t i = 0; i < n; ++i) p[i] = tmp[i];
}

// Register tiles: rows of the batch per tile in the recurrent products. The forward tile
// keeps kTileRows x 4 accumulators (the 4 gates of one unit block). Tiles of fewer rows than
// kSplitBelowRows split their accumulators between even and odd k (see accumulate_gates).
#if defined(__AVX512F__)
constexpr int kTileRows = 6;   // 24 accumulators + 4 weights + 1 broadcast <= 32 registers
constexpr int kSplitBelowRows = 3;
#elif defined(__AVX2__)
// 12 accumulators + 1 broadcast + weights: 3 of the 4 weight vectors are read by the FMAs from
// L1 (16 registers). 1.6-1.8x the GFLOP/s of 2 rows (with either accumulator split) and of 4
// rows (which spill) on a Zen 3 (bench/tile/tile_avx2.cc, NOTES 60). Only one row splits:
// two rows' two sets (16 accumulators) would spill, 0.8-0.9x the single set.
constexpr int kTileRows = 3;
constexpr int kSplitBelowRows = 2;
#else
constexpr int kTileRows = 4;
constexpr int kSplitBelowRows = 3;
#endif
// From this batch size on the backward step uses a transposed copy (see BackwardCtx).
constexpr int64_t kPackedBackwardBatch = 2;

// A thread's unit blocks of one step, [begin, end) packed in one 64-bit word: the owner takes
// blocks from the front, a thread that has run out of its own takes them from the back, so a
// thread slowed down (another process on its core, a slower core) is helped instead of
// waited for. Every block is computed the same way whoever takes it.
struct alignas(64) BlockQueue {
  uint64_t range;
  static uint64_t pack(int64_t begin, int64_t end) {
    return static_cast<uint64_t>(begin) | (static_cast<uint64_t>(end) << 32);
  }
  void reset(int64_t begin, int64_t end) { __atomic_store_n(&range, pack(begin, end), __ATOMIC_RELEASE); }
  // The next block from the front (owner) or the back (helper), or -1 when none is left.
  int64_t take(bool front) {
    uint64_t old = __atomic_load_n(&range, __ATOMIC_ACQUIRE);
    for (;;) {
      const int64_t begin = static_cast<int64_t>(old & 0xffffffffu), end = static_cast<int64_t>(old >> 32);
      if (begin >= end) return -1;
      const uint64_t next = front ? pack(begin + 1, end) : pack(begin, end - 1);
      if (__atomic_compare_exchange_n(&range, &old, next, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return front ? begin : end - 1;
    }
  }
};

// The hidden units are handled in blocks of one vector (N units); thread tid owns the
// contiguous range of blocks [first, last).
struct BlockRange {
  int64_t first, last;
};
inline BlockRange my_blocks(int64_t nblocks, int tid, int nthreads) {
  return {nblocks * tid / nthreads, nblocks * (tid + 1) / nthreads};
}

// Small hidden sizes split the batch instead of the units (NOTES 31): thread tid runs the rows
// [first, last) through every step on all units, with no barrier per step (the rows are
// independent sequences; only the shared products of all rows synchronise). The split is at
// multiples of kTileRows, so every row sits in the same register tile as with one thread and
// gets bitwise the same arithmetic.
struct RowRange {
  int64_t first, last;
};
inline RowRange my_rows(int64_t B, int64_t tile, int tid, int nthreads) {
  const int64_t tiles = ceil_div(B, tile);
  return {imin(B, tiles * tid / nthreads * tile), imin(B, tiles * (tid + 1) / nthreads * tile)};
}
// Whether to split the rows (measured, NOTES 31). Every thread needs one whole tile at least.
// Each thread then reads all of recurrent_kernel (4 H^2 values) every step, from its own L2,
// instead of its share of the units; in exchange no step waits for the other threads. The
// forward gains from it up to H = 64 at any batch (1.2-1.75x at B = 12-32) and at H = 128 when
// the tiles divide evenly enough (1.03-1.23x at B = 32-64; 0.90x at B = 16: 10 rows against 6);
// from H = 192 on it loses (0.85-0.98x). The backward, whose unit split costs more per step,
// gains up to H = 192 (1.09-1.5x) and breaks even at H = 256.
inline int64_t max_rows_per_thread(int64_t B, int64_t tile, int nthreads) {
  int64_t most = 0;
  for (int t = 0; t < nthreads; ++t) {
    const RowRange r = my_rows(B, tile, t, nthreads);
    most = most > r.last - r.first ? most : r.last - r.first;
  }
  return most;
}
inline bool split_rows_forward(int64_t B, int64_t H, int64_t tile, int nthreads) {
  if (nthreads < 2 || B < tile * nthreads) return false;
  return H <= 64 || (H <= 128 && 5 * B > 8 * max_rows_per_thread(B, tile, nthreads));
}
inline bool split_rows_backward(int64_t B, int64_t H, int64_t tile, int nthreads) {
  return nthreads >= 2 && B >= tile * nthreads && H <= 192;
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------
template <typename Real>
struct ForwardCtx {
  const ForwardArgs<Real>* a;
  int64_t nblocks, Hp;    // Hp = nblocks * N: padded width of the state buffers
  Real* G;                // pre-activations x_t . kernel + bias, rows as g_rows() says:
                          // (T, B, 4H) = a->gates when training (in place); in inference,
                          // chunk_steps steps at a time
  int64_t chunk_steps;    // steps per projection chunk (T: one chunk)
  bool g_chunk_only;      // G holds only the current chunk (inference), not all T steps
  bool g_by_step;         // G rows of a chunk in step order, row (s - s0) * B + b (see g_rows):
                          // in chunks, with lengths shorter than T and reverse (the rows of
                          // one step are then at different times)
  // With lengths shorter than T (padded), unless the projection is small: the projection of
  // a chunk runs over its valid positions only (x rows read through a row list, G rows
  // written through another), so it skips the padding. Entries chunk_first[c] ..
  // chunk_first[c + 1] - 1 are chunk c's valid positions in step order: x row proj_src[e]
  // (io_row), G row proj_dst[e]. nullptr otherwise.
  const int64_t* proj_src;
  const int64_t* proj_dst;
  const int64_t* chunk_first;
  // Batch-major x without proj_src: x_rows[t * B + b] = b * T + t, the projection's gather of
  // time-major rows. nullptr otherwise.
  const int64_t* x_rows;
  // Padded: the step runs the batch longest first, so that a register tile's rows finish
  // together and the tile stops (NOTES 39): state row b (h, c) is batch entry order[b].
  // Everything outside the state (x, G, y, the saved gates, h0, h_n, ...) keeps the
  // caller's order. nullptr: state row b is entry b.
  const int64_t* order;
  Real* packed_rk;        // nblocks x H x 4 x N: recurrent_kernel, one block of units at a time
                          // (nullptr: the step reads recurrent_kernel in place, see forward())
  bool prepacked;         // packed_rk was packed before the call (PackedWeights)
  const Real* kernel_panels;  // kernel packed for the projection (PackedWeights), or nullptr
  bool small_projection;  // the input projection by small_projection(), not the packed GEMM
  Real* h;                // 2 x (B, Hp): h_{t-1} and h_t, swapped every step
  Real* c;                // (B, Hp)
  Real* gemm_ws;          // nthreads x Gemm::workspace_per_thread
  Barrier barrier;
  BlockQueue* queues;     // one per thread: its unit blocks of the current step
  bool split_rows;        // threads own rows, not units (see my_rows)
};

inline int64_t seq_len(const int64_t* lengths, int64_t b, int64_t T) {
  return lengths ? lengths[b] : T;
}

// Whether some sequence is shorter than T (then the kernels skip the padding).
inline bool padded_batch(const int64_t* lengths, int64_t B, int64_t T) {
  for (int64_t b = 0; lengths && b < B; ++b)
    if (lengths[b] < T) return true;
  return false;
}

// The batch entry held in state row b (see longest_first; order nullptr: entry b).
inline int64_t entry_of(const int64_t* order, int64_t b) { return order ? order[b] : b; }

// The row of x and y (dy, dx) that holds time t of batch entry b (lstm.h, batch_major).
template <typename Args>
inline int64_t io_row(const Args& a, int64_t t, int64_t b) {
  return a.batch_major ? b * a.dims.T + t : t * a.dims.B + b;
}

// Fills list (T * B) with the batch-major row of every time-major position, list[t * B + b]
// = b * T + t: the row list of a product that reads x or writes dx in time-major order.
template <typename Args>
const int64_t* batch_major_rows(const Args& a, int64_t* list) {
  const int64_t T = a.dims.T, B = a.dims.B;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b) list[t * B + b] = b * T + t;
  return list;
}

// acc[r][q] += src[r][0:K] . w[0:K][q] for ROWS rows and 4 vectors q, vector q of row k at
// w + k * ldw + q * gap: packed K x 4 x N (ldw = 4N, gap = N), or straight from a row-major
// matrix (ldw its row stride). The forward uses it for the 4 gates of one unit block, the
// backward for 4 unit blocks, the small projection for 4 vectors of columns. With few rows
// the FMA latency, not throughput, would bound the loop: then even and odd k go to separate
// accumulators (SPLIT = 2), added at the end. The arithmetic of a row depends on ROWS, SPLIT
// and K only, not on the layout of w.
//
// With PF, one cache line at pf + 64 k is prefetched into L2 per k (the forward's next block).
template <typename Real, int ROWS, bool PF = false, int SPLIT = (ROWS < kSplitBelowRows ? 2 : 1)>
inline void accumulate_gates(typename Vec<Real>::R (&acc)[ROWS][4], const Real* w, int64_t K,
                             const Real* const (&src)[ROWS], int64_t ldw = 4 * Vec<Real>::N,
                             int64_t gap = Vec<Real>::N, const char* pf = nullptr) {
  using V = Vec<Real>;
  using R = typename V::R;
  R part[SPLIT][ROWS][4];
  for (int p = 0; p < SPLIT; ++p)
    for (int r = 0; r < ROWS; ++r)
      for (int q = 0; q < 4; ++q) part[p][r][q] = p == 0 ? acc[r][q] : V::zero();
  int64_t k = 0;
  for (; k + SPLIT <= K; k += SPLIT) {
    for (int p = 0; p < SPLIT; ++p) {
      if constexpr (PF) __builtin_prefetch(pf + (k + p) * 64, 0, 2);
      const Real* wk = w + (k + p) * ldw;
      const R w0 = V::load(wk), w1 = V::load(wk + gap), w2 = V::load(wk + 2 * gap), w3 = V::load(wk + 3 * gap);
      for (int r = 0; r < ROWS; ++r) {
        const R sk = V::set1(src[r][k + p]);
        part[p][r][0] = V::fmadd(sk, w0, part[p][r][0]);
        part[p][r][1] = V::fmadd(sk, w1, part[p][r][1]);
        part[p][r][2] = V::fmadd(sk, w2, part[p][r][2]);
        part[p][r][3] = V::fmadd(sk, w3, part[p][r][3]);
      }
    }
  }
  for (; k < K; ++k) {  // odd K with SPLIT = 2
    const Real* wk = w + k * ldw;
    for (int r = 0; r < ROWS; ++r) {
      const R sk = V::set1(src[r][k]);
      for (int q = 0; q < 4; ++q) part[0][r][q] = V::fmadd(sk, V::load(wk + q * gap), part[0][r][q]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < 4; ++q)
      acc[r][q] = SPLIT == 2 ? V::add(part[0][r][q], part[SPLIT - 1][r][q]) : part[0][r][q];
}

// The time position that row b processes at step s (s < its length).
inline int64_t time_of(int64_t s, int64_t len, bool reverse) { return reverse ? len - 1 - s : s; }

// With lengths shorter than T, the steps of the forward and the backward hold the batch
// entries in their state rows longest first (a stable sort), so that the rows of a register
// tile finish (forward) or start (backward) together and the tile is skipped for the rest
// (NOTES 39). When the threads split the rows (split_rows_*), the tiles of that order are
// dealt to the threads' row ranges, each to the thread with the fewest steps so far (the
// first thread would otherwise get all the long rows); the last, partial tile stays last.
// Every tile has the same rows as with one thread, so each row's arithmetic is the same for
// any thread count. order: 2B values; order[b] is the entry in state row b (the second half
// is scratch).
inline void longest_first(const int64_t* lengths, int64_t B, bool split_rows, int nthreads, int64_t* order) {
  int64_t* sorted = order + B;
  for (int64_t b = 0; b < B; ++b) sorted[b] = b;
  std::stable_sort(sorted, sorted + B, [&](int64_t i, int64_t j) { return lengths[i] > lengths[j]; });
  if (!split_rows) {
    std::memcpy(order, sorted, B * sizeof(int64_t));
    return;
  }
  const int64_t full = B / kTileRows, rest = B - full * kTileRows;
  std::vector<int64_t> next(nthreads), tiles_left(nthreads), steps(nthreads, 0);
  for (int t = 0; t < nthreads; ++t) {
    const RowRange r = my_rows(B, kTileRows, t, nthreads);
    next[t] = r.first;
    tiles_left[t] = (r.last - r.first) / kTileRows;
  }
  for (int64_t j = 0; j < full; ++j) {
    int best = -1;
    for (int t = 0; t < nthreads; ++t)
      if (tiles_left[t] > 0 && (best < 0 || steps[t] < steps[best])) best = t;
    std::memcpy(order + next[best], sorted + j * kTileRows, kTileRows * sizeof(int64_t));
    next[best] += kTileRows;
    --tiles_left[best];
    steps[best] += lengths[sorted[j * kTileRows]];
  }
  std::memcpy(order + B - rest, sorted + B - rest, rest * sizeof(int64_t));
}

// Below these sizes the forward does not pack its weights (see forward()): at most
// kInPlaceSteps steps read recurrent_kernel in place (its strided rows are slower to stream
// than the packed copy, so only for a step or two), at most kSmallProjectionRows rows of input
// projection read kernel in place. Set from paired measurements (NOTES 19).
constexpr int64_t kInPlaceSteps = 2;
constexpr int64_t kSmallProjectionRows = 32;

// Whether `passes` passes of register tiles over a weight matrix whose rows are 4H values
// apart, read in place, cost less than packing it once and streaming the packed copy. Each
// pass streams the matrix with a stride of 4H values, which the prefetchers do not follow
// and which, from 4 KiB on, puts a column block's rows into few cache sets: the penalty per
// pass grows steeply with H. Fitted to paired measurements (NOTES 32, 2 threads, float32):
// in place pays up to about 1 pass at H = 1024, 2 at H = 512, 6-8 at H = 256, 20 at H = 128,
// i.e. passes^2 * H^3 <= 2^30 with H counted in 4-byte values (a float64 row is twice as
// long). Beyond that, one call at (1, 256, 1024, 1024) took 2.3x as long in place.
template <typename Real>
inline bool in_place_pays(int64_t passes, int64_t H) {
  const double h = static_cast<double>(H) * (sizeof(Real) / 4.0);
  return static_cast<double>(passes) * passes * h * h * h <= 1073741824.0;
}

// Rows (time steps x batch) per chunk of the inference projection and of the backward's
// gate gradients: enough for the matrix products to run at full rate.
constexpr int64_t kChunkRows = 4096;

// A thread's share of the packed recurrent_kernel above this size is taken not to stay in its
// L2 from one step to the next (1-2 MiB of L2 per core on current x86 server cores, which also
// holds the step's other data); the forward step then prefetches the next block (NOTES 33).
constexpr int64_t kL2ShareBytes = int64_t(1) << 20;

// First time position held in G while step s runs: 0 with one chunk; with chunks (only
// when every row being processed at step s is at time time_of(s, T, reverse): without
// lengths, or with lengths but not reverse) the chunk's lowest time.
inline int64_t chunk_t0(int64_t s, int64_t chunk_steps, int64_t T, bool reverse) {
  if (chunk_steps >= T) return 0;
  const int64_t s0 = s / chunk_steps * chunk_steps, s1 = imin(T, s0 + chunk_steps);
  return reverse ? T - s1 : s0;
}

// Where row b's pre-activations are in G at step s: row (key - key0) * B + b, the key being
// the step s when the chunk's rows are in step order (gathered), else the time t. One per
// step (and tile): key0 needs a division.
struct GRows {
  bool by_step;
  int64_t key0, B;
  int64_t row(int64_t s, int64_t t, int64_t b) const { return ((by_step ? s : t) - key0) * B + b; }
};
template <typename Real>
inline GRows g_rows(const ForwardCtx<Real>& ctx, int64_t s) {
  const ForwardArgs<Real>& a = *ctx.a;
  if (ctx.g_by_step) return {true, s / ctx.chunk_steps * ctx.chunk_steps, a.dims.B};
  return {false, ctx.g_chunk_only ? chunk_t0(s, ctx.chunk_steps, a.dims.T, a.reverse) : 0, a.dims.B};
}

// One register tile of the forward step: ROWS batch rows x the 4 gates of one unit block.
// pf: H lines to prefetch into L2 meanwhile (one per k), or nullptr.
template <typename Real, int ROWS>
void forward_tile(const ForwardCtx<Real>& ctx, int64_t s, int64_t b0, int64_t block,
                  const Real* h_prev, Real* h_next, const char* pf) {
  using V = Vec<Real>;
  using R = typename V::R;
  constexpr int N = V::N;
  const ForwardArgs<Real>& a = *ctx.a;
  const int64_t T = a.dims.T, B = a.dims.B, H = a.dims.H, Hp = ctx.Hp;

  R acc[ROWS][4];
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = V::zero();
  const Real* h_rows[ROWS];
  for (int r = 0; r < ROWS; ++r) h_rows[r] = h_prev + (b0 + r) * Hp;
  const int64_t u0 = block * N, nu = imin(N, H - u0);
  const GRows g_rows_now = g_rows(ctx, s);
  // The epilogue reads each row's 4 pre-activation vectors from G, rows 4H apart: a pattern
  // the hardware prefetchers miss. Ask for them now; the product below hides the latency.
  bool active = false;  // with lengths, a tile whose rows have all finished skips the product
  for (int r = 0; r < ROWS; ++r) {
    const int64_t e = entry_of(ctx.order, b0 + r), len = seq_len(a.lengths, e, T);
    if (s >= len) continue;
    active = true;
    const Real* z = ctx.G + g_rows_now.row(s, time_of(s, len, a.reverse), e) * 4 * H + u0;
    for (int q = 0; q < 4; ++q) __builtin_prefetch(z + q * H, 1, 3);
  }
  if (active) {
    if (ctx.packed_rk && pf)
      accumulate_gates<Real, ROWS, true>(acc, ctx.packed_rk + block * H * 4 * N, H, h_rows, 4 * N, N, pf);
    else if (ctx.packed_rk)
      accumulate_gates<Real, ROWS>(acc, ctx.packed_rk + block * H * 4 * N, H, h_rows);
    else  // in place: the 4 gates' N units of row k at recurrent_kernel[k, q * H + u0]
      accumulate_gates<Real, ROWS>(acc, a.recurrent_kernel + u0, H, h_rows, 4 * H, H);
  }

  for (int r = 0; r < ROWS; ++r) {
    // b: the state's row; e: the batch entry it holds
    const int64_t b = b0 + r, e = entry_of(ctx.order, b), len = seq_len(a.lengths, e, T);
    Real* c_state = ctx.c + b * Hp + u0;
    if (s >= len) {  // finished: carry the state; positions t >= len of y are zero
      V::store(h_next + b * Hp + u0, V::load(h_prev + b * Hp + u0));
      store_part(a.y + io_row(a, s, e) * H + u0, V::zero(), nu);
      continue;
    }
    const int64_t t = time_of(s, len, a.reverse);
    const Real* z = ctx.G + g_rows_now.row(s, t, e) * 4 * H + u0;  // x_t . kernel + bias
    const R gi = vsigmoid<Real>(V::add(acc[r][0], load_part(z, nu)));
    const R gf = vsigmoid<Real>(V::add(acc[r][1], load_part(z + H, nu)));
    const R gg = vtanh<Real>(V::add(acc[r][2], load_part(z + 2 * H, nu)));
    const R go = vsigmoid<Real>(V::add(acc[r][3], load_part(z + 3 * H, nu)));
    const R cn = V::fmadd(gf, V::load(c_state), V::mul(gi, gg));
    const R hn = V::mul(go, vtanh<Real>(cn));
    V::store(c_state, cn);
    V::store(h_next + b * Hp + u0, hn);
    store_part(a.y + io_row(a, t, e) * H + u0, hn, nu);
    if (a.gates) {
      Real* saved = a.gates + (t * B + e) * 4 * H + u0;
      store_part(saved, gi, nu);
      store_part(saved + H, gf, nu);
      store_part(saved + 2 * H, gg, nu);
      store_part(saved + 3 * H, go, nu);
      store_part(a.cells + (t * B + e) * H + u0, cn, nu);
    }
  }
}

template <typename Real, int ROWS>
void forward_rows(const ForwardCtx<Real>& ctx, int64_t s, int64_t b0, int rows, int64_t block,
                  const Real* h_prev, Real* h_next, const char* pf) {
  if constexpr (ROWS > 1) {
    if (rows < ROWS) return forward_rows<Real, ROWS - 1>(ctx, s, b0, rows, block, h_prev, h_next, pf);
  }
  forward_tile<Real, ROWS>(ctx, s, b0, block, h_prev, h_next, pf);
}

// The input projection G (M, 4H) = x (M, I) . kernel (I, 4H) + bias for few rows M, with
// kernel read in place: the packed GEMM would spend more time packing kernel (and on its
// 14-row tiles, mostly padding at M = 1) than multiplying. A thread computes the 4 gates of
// its own unit blocks (H % N == 0), kTileRows rows at a time; a last, partial tile repeats
// the last row, so every row's arithmetic is the same whatever its position (any T, B split,
// thread count).
template <typename Real>
void small_projection(const ForwardArgs<Real>& a, Real* G, BlockRange mine) {
  using V = Vec<Real>;
  using R = typename V::R;
  constexpr int N = V::N;
  const int64_t B = a.dims.B, M = a.dims.T * B, I = a.dims.I, H = a.dims.H;
  for (int64_t block = mine.first; block < mine.last; ++block) {
    const int64_t u0 = block * N;
    R bias[4];
    for (int q = 0; q < 4; ++q) bias[q] = a.bias ? V::load(a.bias + q * H + u0) : V::zero();
    for (int64_t m0 = 0; m0 < M; m0 += kTileRows) {
      R acc[kTileRows][4];
      const Real* src[kTileRows];
      for (int r = 0; r < kTileRows; ++r) {
        const int64_t m = imin(m0 + r, M - 1);  // row m of G: time m / B, entry m % B
        src[r] = a.x + io_row(a, m / B, m % B) * I;
        for (int q = 0; q < 4; ++q) acc[r][q] = V::zero();
      }
      accumulate_gates<Real, kTileRows, false, 1>(acc, a.kernel + u0, I, src, 4 * H, H);
      const int rows = static_cast<int>(imin(kTileRows, M - m0));
      for (int r = 0; r < rows; ++r)
        for (int q = 0; q < 4; ++q) V::store(G + (m0 + r) * 4 * H + q * H + u0, V::add(bias[q], acc[r][q]));
    }
  }
}

// Unit blocks [first, last) of recurrent_kernel (H, 4H) into packed (nblocks x H x 4 x N):
// packed[block][k][gate][v] = recurrent_kernel[k, gate*H + block*N + v], zero past H. Row by
// row, so that each row's values of these blocks are read in address order (one run per gate)
// and the prefetchers follow; block by block every read was in another row, 4H apart
// (NOTES 28).
template <typename Real>
void pack_recurrent_blocks(const Real* recurrent_kernel, int64_t H, int64_t first, int64_t last, Real* packed) {
  using V = Vec<Real>;
  constexpr int N = V::N;
  for (int64_t k = 0; k < H; ++k)
    for (int q = 0; q < 4; ++q) {
      const Real* src = recurrent_kernel + k * 4 * H + q * H;
      for (int64_t block = first; block < last; ++block) {
        const int64_t u0 = block * N;
        V::store(packed + ((block * H + k) * 4 + q) * N, load_part(src + u0, imin(N, H - u0)));
      }
    }
}

template <typename Real>
void forward_task(void* p, int tid, int nthreads) {
  using V = Vec<Real>;
  constexpr int N = V::N;
  ForwardCtx<Real>& ctx = *static_cast<ForwardCtx<Real>*>(p);
  const ForwardArgs<Real>& a = *ctx.a;
  const int64_t T = a.dims.T, B = a.dims.B, I = a.dims.I, H = a.dims.H, Hp = ctx.Hp;
  const BlockRange mine = my_blocks(ctx.nblocks, tid, nthreads);
  // The state this thread owns: its units of all rows, or all units of its rows.
  const RowRange own_rows = ctx.split_rows ? my_rows(B, kTileRows, tid, nthreads) : RowRange{0, B};
  const BlockRange units = ctx.split_rows ? BlockRange{0, ctx.nblocks} : mine;

  // Pack this thread's unit blocks of recurrent_kernel (only this thread reads them, unless
  // the rows are split: then all are read by all after the first barrier below), unless
  // packed before the call.
  if (ctx.packed_rk && !ctx.prepacked)
    pack_recurrent_blocks(a.recurrent_kernel, H, mine.first, mine.last, ctx.packed_rk);
  // Initial state (padding lanes zero).
  for (int64_t b = own_rows.first; b < own_rows.last; ++b)
    for (int64_t block = units.first; block < units.last; ++block) {
      const int64_t u0 = block * N, nu = imin(N, H - u0);
      const int64_t e = entry_of(ctx.order, b);  // the batch entry in state row b
      V::store(ctx.h + b * Hp + u0, a.h0 ? load_part(a.h0 + e * H + u0, nu) : V::zero());
      V::store(ctx.c + b * Hp + u0, a.c0 ? load_part(a.c0 + e * H + u0, nu) : V::zero());
    }
  Real* ws = ctx.gemm_ws + tid * Gemm<Real>::workspace_per_thread;
  // While the row tiles pass over one block of the packed recurrent_kernel, the next block is
  // brought into L2, tile i fetching the i-th H lines of it, where this thread's share of the
  // packed weights does not stay in L2 from one step to the next and at least two tiles pass
  // over each block (NOTES 33: 1.07-1.12x at B = 16, H = 512-1024; a loss at B = 1).
  const int64_t block_bytes = H * 4 * N * static_cast<int64_t>(sizeof(Real));
  const bool prefetch_blocks = ctx.packed_rk && own_rows.last - own_rows.first > kTileRows &&
                               (units.last - units.first) * block_bytes > kL2ShareBytes;
  for (int64_t s = 0; s < T; ++s) {
    if (s % ctx.chunk_steps == 0) {
      // With split rows there is no barrier per step: wait here until every thread is done
      // with the previous chunk's G before it is overwritten.
      if (ctx.split_rows && s > 0) barrier_wait(&ctx.barrier);
      // Input projection G = x . kernel + bias for the steps [s, s + chunk_steps), all rows
      // (all T*B rows at once unless chunked). Every row's values are the same in any
      // chunking: the product's arithmetic depends on K alone.
      const int64_t steps = imin(ctx.chunk_steps, T - s);
      const int64_t t0 = chunk_t0(s, ctx.chunk_steps, T, a.reverse);
      Real* dst = ctx.g_chunk_only ? ctx.G : ctx.G + t0 * B * 4 * H;
      const Real* x_rows = a.x + t0 * B * I;
      int64_t rows = steps * B;
      const int64_t *x_gather = nullptr, *g_scatter = nullptr;
      if (ctx.x_rows) {  // batch-major x: the chunk's rows gathered in time-major order
        x_rows = a.x;
        x_gather = ctx.x_rows + t0 * B;
      }
      if (ctx.proj_src) {  // the chunk's valid positions only (the padding is never read)
        const int64_t e0 = ctx.chunk_first[s / ctx.chunk_steps];
        rows = ctx.chunk_first[s / ctx.chunk_steps + 1] - e0;
        x_rows = a.x;  // both row lists count from the start of x and G
        dst = ctx.G;
        x_gather = ctx.proj_src + e0;
        g_scatter = ctx.proj_dst + e0;
      }
      if (ctx.small_projection) {  // one chunk (T * B is far below kChunkRows)
        small_projection(a, dst, mine);
      } else {
        GemmArgs<Real> proj{rows, 4 * H, I, x_rows, I, 1, a.kernel, 4 * H, 1,
                            dst, 4 * H, a.bias};
        proj.b_packed = ctx.kernel_panels;
        proj.a_rows = x_gather;
        proj.c_rows = g_scatter;
        gemm_part(proj, tid, nthreads, ws);
      }
      barrier_wait(&ctx.barrier);
    }
    const Real* h_prev = ctx.h + (s & 1) * B * Hp;
    Real* h_next = ctx.h + ((s + 1) & 1) * B * Hp;
    // Block-major: one block of recurrent_kernel (H x 4N) stays in L2 while every row
    // of the batch (of this thread's, with split rows) passes over it. Own blocks first, then
    // the other threads' leftovers.
    // `next`: the block this thread is expected to take next (-1: unknown).
    auto one_block = [&](int64_t block, int64_t next) {
      const char* next_base = prefetch_blocks && next >= 0
                                  ? reinterpret_cast<const char*>(ctx.packed_rk + next * H * 4 * N) : nullptr;
      int64_t tile = 0;
      for (int64_t b0 = own_rows.first; b0 < own_rows.last; b0 += kTileRows, ++tile) {
        const int rows = static_cast<int>(imin(kTileRows, own_rows.last - b0));
        const char* pf = next_base && tile * H * 64 < block_bytes ? next_base + tile * H * 64 : nullptr;
        forward_rows<Real, kTileRows>(ctx, s, b0, rows, block, h_prev, h_next, pf);
      }
    };
    // Split rows: all blocks, no barrier. Small steps: not worth the atomics. After its last
    // block a thread expects its first one again (the next step).
    if (ctx.split_rows || nthreads == 1 || B < kTileRows) {
      for (int64_t block = units.first; block < units.last; ++block)
        one_block(block, block + 1 < units.last ? block + 1 : units.first);
    } else {
      BlockQueue& own = ctx.queues[tid];
      own.reset(mine.first, mine.last);
      for (int64_t block; (block = own.take(true)) >= 0;)
        one_block(block, block + 1 < mine.last ? block + 1 : mine.first);
      for (int other = 1; other < nthreads; ++other) {
        BlockQueue& theirs = ctx.queues[(tid + other) % nthreads];
        for (int64_t block; (block = theirs.take(false)) >= 0;) one_block(block, -1);
      }
    }
    if (!ctx.split_rows) barrier_wait(&ctx.barrier);
  }

  const Real* h_last = ctx.h + (T & 1) * B * Hp;
  for (int64_t b = own_rows.first; b < own_rows.last; ++b)
    for (int64_t block = units.first; block < units.last; ++block) {
      const int64_t u0 = block * N, nu = imin(N, H - u0);
      const int64_t e = entry_of(ctx.order, b);
      store_part(a.h_n + e * H + u0, V::load(h_last + b * Hp + u0), nu);
      store_part(a.c_n + e * H + u0, V::load(ctx.c + b * Hp + u0), nu);
    }
}

template <typename Real>
void forward(const ForwardArgs<Real>& a, const PackedWeights* packed) {
  constexpr int N = Vec<Real>::N;
  const int64_t T = a.dims.T, B = a.dims.B, H = a.dims.H;
  const int nthreads = threads_for_run();
  ForwardCtx<Real> ctx;
  ctx.a = &a;
  ctx.nblocks = ceil_div(H, N);
  ctx.Hp = ctx.nblocks * N;
  // Inference keeps the projection of a chunk of steps only (not the whole (T, B, 4H)). When
  // all rows share one time schedule (no lengths, or lengths without reverse: a row past
  // its length just does not read its G rows) a chunk of steps is a block of time positions;
  // with lengths shorter than T and reverse the chunk's G rows are in step order (NOTES 23).
  // A chunk has at least kChunkRows rows, so
  // the product stays efficient and repacking kernel per chunk costs little. Besides the
  // memory, this saved 20-25% of the time on long sequences (NOTES 17): the one chunk
  // buffer is reused instead of faulting in and streaming a fresh (T, B, 4H) array.
  // Training writes the projection into the saved gates, in one piece without padding
  // (chunking it measured no faster there), chunk by chunk with it. With padding the
  // projection runs over the valid positions only, its rows read from x and written to G
  // through row lists (NOTES 37: 1.17-1.30x forward at mean length ~0.6 T).
  const bool whole_vectors = H % N == 0;
  ctx.small_projection = whole_vectors && T * B <= kSmallProjectionRows &&
                         in_place_pays<Real>(ceil_div(T * B, kTileRows), H);
  const bool padded = padded_batch(a.lengths, B, T);
  ctx.chunk_steps = T;
  if ((!a.gates || padded) && B > 0) {
    const int64_t steps = ceil_div(kChunkRows, B);
    if (2 * steps <= T) ctx.chunk_steps = steps;
  }
  if (ctx.chunk_steps < 1) ctx.chunk_steps = 1;
  ctx.g_chunk_only = !a.gates && ctx.chunk_steps < T;
  ctx.g_by_step = ctx.g_chunk_only && padded && a.reverse;
  const bool compact = padded && !ctx.small_projection;
  // Padded: the valid positions of each chunk, in step order (see ForwardCtx::proj_src).
  const int64_t nchunks = ceil_div(T, ctx.chunk_steps);
  Buffer<int64_t> proj_src(compact ? T * B : 0), proj_dst(compact ? T * B : 0), chunk_first(nchunks + 1);
  ctx.proj_src = ctx.proj_dst = ctx.chunk_first = nullptr;
  if (compact) {
    int64_t e = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      chunk_first.get()[c] = e;
      for (int64_t s = c * ctx.chunk_steps; s < imin(T, (c + 1) * ctx.chunk_steps); ++s) {
        const GRows rows = g_rows(ctx, s);
        for (int64_t b = 0; b < B; ++b) {
          if (s >= a.lengths[b]) continue;
          const int64_t t = time_of(s, a.lengths[b], a.reverse);
          proj_src.get()[e] = io_row(a, t, b);
          proj_dst.get()[e++] = rows.row(s, t, b);
        }
      }
    }
    chunk_first.get()[nchunks] = e;
    ctx.proj_src = proj_src.get();
    ctx.proj_dst = proj_dst.get();
    ctx.chunk_first = chunk_first.get();
  }
  const bool gather_x = a.batch_major && !compact && !ctx.small_projection;
  Buffer<int64_t> x_rows(gather_x ? T * B : 0);
  ctx.x_rows = gather_x ? batch_major_rows(a, x_rows.get()) : nullptr;
  Buffer<Real> projection(a.gates ? 0 : imin(T, ctx.chunk_steps) * B * 4 * H);
  // Weights packed before the call, when packed by this table (dims checked by dispatch).
  if (packed && std::string(packed->isa) != kernel_table().name) packed = nullptr;
  // Few steps or rows: packing would cost more than it saves (NOTES 19, 32). With at most
  // kInPlaceSteps steps the step reads recurrent_kernel in place, and with at most
  // kSmallProjectionRows rows the projection reads kernel in place (whole vectors only), as
  // long as the strided reads stay cheaper than packing (in_place_pays: one pass per tile of
  // rows and step). A recurrent_kernel packed before the call is always the faster read
  // (1.14-1.44x at T <= 2, NOTES 32); the prepacked projection panels are not (their 14-row
  // tiles are mostly padding at a few rows), so the small projection stays in place.
  const bool in_place = !packed && whole_vectors && T <= kInPlaceSteps &&
                        in_place_pays<Real>(T * ceil_div(B, kTileRows), H);
  ctx.prepacked = packed != nullptr;
  ctx.kernel_panels = packed && !ctx.small_projection ? static_cast<const Real*>(packed->kernel_panels.get()) : nullptr;
  Buffer<Real> packed_rk(in_place || ctx.prepacked ? 0 : ctx.nblocks * H * 4 * N);
  Buffer<Real> state(3 * B * ctx.Hp);
  Buffer<Real> gemm_ws(nthreads * Gemm<Real>::workspace_per_thread);
  Buffer<BlockQueue> queues(nthreads);
  for (int t = 0; t < nthreads; ++t) queues.get()[t].reset(0, 0);
  ctx.queues = queues.get();
  ctx.G = a.gates ? a.gates : projection.get();
  ctx.packed_rk = in_place ? nullptr
                 : ctx.prepacked ? static_cast<Real*>(packed->recurrent.get()) : packed_rk.get();
  ctx.h = state.get();
  ctx.c = state.get() + 2 * B * ctx.Hp;
  ctx.gemm_ws = gemm_ws.get();
  ctx.split_rows = split_rows_forward(B, H, kTileRows, nthreads);
  // Padded: the state's rows longest first (one tile: nothing to gain).
  const bool reorder = padded && B > kTileRows;
  Buffer<int64_t> order(reorder ? 2 * B : 0);
  if (reorder) longest_first(a.lengths, B, ctx.split_rows, nthreads, order.get());
  ctx.order = reorder ? order.get() : nullptr;
  barrier_init(&ctx.barrier, nthreads);
  run(&forward_task<Real>, &ctx, nthreads, &ctx.barrier);
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------
template <typename Real>
struct BackwardCtx {
  const BackwardArgs<Real>* a;
  int64_t nblocks, Hp;
  Real* dz;          // gate pre-activation gradients of the current chunk of chunk_steps
                     // steps (all T unless chunked), rows as dz_row() says (compacted when
                     // padded, see compact)
  int64_t chunk_steps;  // steps per chunk of dz / h_prev (T: one chunk)
  bool by_step;      // chunked, reverse, some length < T: dz rows in step order within a chunk
  Real* h_prev;      // h_{t-1} of each valid position, rows as dz
  Real* dz_step;     // 2 x (B, 4H): this step's dz (double-buffered)
  // With lengths shorter than T (padded): dz and h_prev hold only the valid positions of a
  // chunk, compacted in dz_row() order, so the weight-gradient and dx products skip the
  // padding (NOTES 36); they read x and write dx through the list of those positions' rows
  // (NOTES 38). nullptr otherwise.
  const int64_t* compact;  // per chunk (chunk_steps x B rows each, dz_row() order): the
                           // row's index in the compacted buffers, or -1 (invalid position)
  const int64_t* chunk_valid;  // per chunk: its number of valid positions
  const int64_t* x_rows;   // per chunk (at the same offsets as compact): compacted row i's
                           // row in x and dx (io_row)
  const int64_t* x_time_rows;  // unpadded, batch-major x: io_row of time-major row t * B + b
                               // (the products' row lists), else nullptr
  // Padded: state row b (dh, dc, dz_step) holds batch entry order[b], longest first (see
  // longest_first); dz_row() takes the entry. nullptr: entry b.
  const int64_t* order;
  Real* dh;          // (B, Hp) gradient flowing into h from later steps
  Real* dc;          // (B, Hp) gradient flowing into c from later steps
  // From kPackedBackwardBatch rows on, dh = dz . recurrent_kernel^T runs on a transposed copy
  // in groups of 4 unit blocks, with the forward's register tile (each dz value broadcast to
  // 4 vectors of units); below, as dot products along rows of recurrent_kernel (no copy).
  Real* packed_rkt;  // ngroups x 4H x 4 x N: [group][c][q][v] = rk[(4 group + q) N + v, c]
  Real* gemm_ws;
  Barrier barrier;
  bool split_rows;   // threads own rows, not units (see my_rows)
};

// Unit blocks are grouped by 4 for the transposed tile; groups are taken per thread, and
// packed_offset(nblocks, tid, nthreads) is the number of groups of the threads before tid.
inline int64_t groups_of(const BlockRange& r) { return ceil_div(r.last - r.first, 4); }
inline int64_t packed_offset(int64_t nblocks, int tid, int nthreads) {
  int64_t groups = 0;
  for (int t = 0; t < tid; ++t) groups += groups_of(my_blocks(nblocks, t, nthreads));
  return groups;
}

// The row of the chunk's dz and h_prev for batch entry b at step s, time t (for a step past b's length,
// t = s: that invalid position's row). In time order within the chunk, or in step order when
// the rows' times differ within a step (lengths with reverse, chunked).
template <typename Real>
inline int64_t dz_row(const BackwardCtx<Real>& ctx, int64_t s, int64_t t, int64_t b) {
  const int64_t B = ctx.a->dims.B;
  const int64_t row = ctx.by_step ? (s % ctx.chunk_steps) * B + b
                                  : (t - chunk_t0(s, ctx.chunk_steps, ctx.a->dims.T, ctx.a->reverse)) * B + b;
  return ctx.compact ? ctx.compact[s / ctx.chunk_steps * ctx.chunk_steps * B + row] : row;
}

// Gate gradients of one unit block of one row at step s (or, past its length, zeros).
template <typename Real>
void backward_cell(const BackwardCtx<Real>& ctx, int64_t s, int64_t b, int64_t block, Real* dz_step) {
  using V = Vec<Real>;
  using R = typename V::R;
  constexpr int N = V::N;
  const BackwardArgs<Real>& a = *ctx.a;
  const int64_t T = a.dims.T, B = a.dims.B, H = a.dims.H, Hp = ctx.Hp;
  const int64_t e = entry_of(ctx.order, b);  // the batch entry in state row b
  const int64_t u0 = block * N, nu = imin(N, H - u0), len = seq_len(a.lengths, e, T);
  Real* dzs = dz_step + b * 4 * H + u0;
  if (s >= len) {  // position t = s is past the length: no gradient there (and no row in the
                   // compacted dz and h_prev)
    for (int q = 0; q < 4; ++q) store_part(dzs + q * H, V::zero(), nu);
    return;
  }
  const int64_t t = a.reverse ? len - 1 - s : s;
  const int64_t t_prev = a.reverse ? t + 1 : t - 1;
  const Real* gates = a.gates + (t * B + e) * 4 * H + u0;
  const R gi = load_part(gates, nu), gf = load_part(gates + H, nu),
          gg = load_part(gates + 2 * H, nu), go = load_part(gates + 3 * H, nu);
  const R c = load_part(a.cells + (t * B + e) * H + u0, nu);
  R c_prev, h_prev;
  if (s == 0) {
    c_prev = a.c0 ? load_part(a.c0 + e * H + u0, nu) : V::zero();
    h_prev = a.h0 ? load_part(a.h0 + e * H + u0, nu) : V::zero();
  } else {  // h_{t-1} = o_{t-1} * tanh(c_{t-1}), exactly as the forward computed it
    c_prev = load_part(a.cells + (t_prev * B + e) * H + u0, nu);
    h_prev = V::mul(load_part(a.gates + (t_prev * B + e) * 4 * H + 3 * H + u0, nu), vtanh<Real>(c_prev));
  }
  const R one = V::set1(Real(1));
  R dh = V::load(ctx.dh + b * Hp + u0);
  if (a.dy) dh = V::add(dh, load_part(a.dy + io_row(a, t, e) * H + u0, nu));
  const R tc = vtanh<Real>(c);
  const R dc = V::fmadd(V::mul(dh, go), V::fnmadd(tc, tc, one), V::load(ctx.dc + b * Hp + u0));
  V::store(ctx.dc + b * Hp + u0, V::mul(dc, gf));  // flows into c_{t-1}
  const R dzi = V::mul(V::mul(dc, gg), V::mul(gi, V::sub(one, gi)));
  const R dzf = V::mul(V::mul(dc, c_prev), V::mul(gf, V::sub(one, gf)));
  const R dzg = V::mul(V::mul(dc, gi), V::fnmadd(gg, gg, one));
  const R dzo = V::mul(V::mul(dh, tc), V::mul(go, V::sub(one, go)));
  const int64_t row = dz_row(ctx, s, t, e);  // (by entry: the products' order of rows is the
                                             // caller's, whatever the state's)
  Real* dz = ctx.dz + row * 4 * H + u0;
  store_part(dz, dzi, nu);
  store_part(dz + H, dzf, nu);
  store_part(dz + 2 * H, dzg, nu);
  store_part(dz + 3 * H, dzo, nu);
  store_part(dzs, dzi, nu);
  store_part(dzs + H, dzf, nu);
  store_part(dzs + 2 * H, dzg, nu);
  store_part(dzs + 3 * H, dzo, nu);
  store_part(ctx.h_prev + row * H + u0, h_prev, nu);
}

// Units per dot-product tile: UNITS accumulators + 1 + a weight vector per unit in registers.
#if defined(__AVX512F__)
constexpr int kDotUnits = 8;
#else
constexpr int kDotUnits = 4;
#endif

// dh_{t-1}[b, j] = sum_c dz[b, c] * recurrent_kernel[j, c] for one row b and UNITS consecutive
// units j: dot products along the contiguous rows of recurrent_kernel (no transposed copy),
// reduced across the vector lanes at the end.
template <typename Real, int UNITS>
void backward_dot_tile(const BackwardCtx<Real>& ctx, int64_t s, int64_t b, int64_t j0, const Real* dz_step) {
  using V = Vec<Real>;
  using R = typename V::R;
  constexpr int N = V::N;
  const BackwardArgs<Real>& a = *ctx.a;
  if (s >= seq_len(a.lengths, entry_of(ctx.order, b), a.dims.T)) return;  // not started yet: dh carries over
  const int64_t H = a.dims.H, K = 4 * H, K_full = K / N * N;
  const Real* w = a.recurrent_kernel + j0 * K;
  const Real* d = dz_step + b * K;
  R acc[UNITS];
  for (int u = 0; u < UNITS; ++u) acc[u] = V::zero();
  for (int64_t c = 0; c < K_full; c += N) {
    const R dc = V::load(d + c);
    for (int u = 0; u < UNITS; ++u) acc[u] = V::fmadd(dc, V::load(w + u * K + c), acc[u]);
  }
  if (K_full < K) {
    const R dc = load_part(d + K_full, K - K_full);
    for (int u = 0; u < UNITS; ++u) acc[u] = V::fmadd(dc, load_part(w + u * K + K_full, K - K_full), acc[u]);
  }
  for (int u = 0; u < UNITS; ++u) ctx.dh[b * ctx.Hp + j0 + u] = V::hsum(acc[u]);
}


// dh_{t-1} for ROWS rows and the (up to) 4 unit blocks of one group, on the transposed copy.
template <typename Real, int ROWS>
void backward_packed_tile(const BackwardCtx<Real>& ctx, int64_t s, int64_t b0, int64_t block0,
                          int nblocks, const Real* packed, const Real* dz_step) {
  using V = Vec<Real>;
  using R = typename V::R;
  constexpr int N = V::N;
  const BackwardArgs<Real>& a = *ctx.a;
  const int64_t K = 4 * a.dims.H;
  R acc[ROWS][4];
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = V::zero();
  const Real* rows[ROWS];
  for (int r = 0; r < ROWS; ++r) rows[r] = dz_step + (b0 + r) * K;
  bool started = false;  // with lengths, a tile whose rows have none started yet skips the product
  for (int r = 0; r < ROWS; ++r)
    started = started || s < seq_len(a.lengths, entry_of(ctx.order, b0 + r), a.dims.T);
  if (!started) return;
  accumulate_gates<Real, ROWS>(acc, packed, K, rows);
  for (int r = 0; r < ROWS; ++r) {
    const int64_t b = b0 + r;
    if (s >= seq_len(a.lengths, entry_of(ctx.order, b), a.dims.T)) continue;  // not started yet: dh carries over
    for (int q = 0; q < nblocks; ++q) V::store(ctx.dh + b * ctx.Hp + (block0 + q) * N, acc[r][q]);
  }
}

template <typename Real, int ROWS>
void backward_packed_rows(const BackwardCtx<Real>& ctx, int64_t s, int64_t b0, int rows, int64_t block0,
                          int nblocks, const Real* packed, const Real* dz_step) {
  if constexpr (ROWS > 1) {
    if (rows < ROWS)
      return backward_packed_rows<Real, ROWS - 1>(ctx, s, b0, rows, block0, nblocks, packed, dz_step);
  }
  backward_packed_tile<Real, ROWS>(ctx, s, b0, block0, nblocks, packed, dz_step);
}

// One group of the backward's transposed copy: blocks block0 .. block0 + 3 (zero from
// block_end on, and for units past H), dst[c][q][v] = recurrent_kernel[(block0 + q) N + v, c].
template <typename Real>
void pack_transposed_group(const Real* recurrent_kernel, int64_t H, int64_t block0, int64_t block_end, Real* dst) {
  using V = Vec<Real>;
  constexpr int N = V::N;
  const Real* rows[4 * N];  // the group's rows of recurrent_kernel, nullptr where zero
  for (int q = 0; q < 4; ++q)
    for (int v = 0; v < N; ++v) {
      const int64_t block = block0 + q, u = block * N + v;
      rows[q * N + v] = block < block_end && u < H ? recurrent_kernel + u * 4 * H : nullptr;
    }
  // N columns at a time, a block (N rows) at a time: N vectors loaded, transposed in registers,
  // stored as N vectors of dst, so each line of the rows is read once and each line of dst
  // written whole once (NOTES 52: the rows lie 4H apart, often a power of two bytes, in one
  // L1 set, so a loop down the rows column by column re-read them from L2; NOTES 41 before).
  int64_t c = 0;
  if (N > 1)
    for (; c + N <= 4 * H; c += N)
      for (int q = 0; q < 4; ++q) {
        typename V::R r[N];
        for (int v = 0; v < N; ++v) r[v] = rows[q * N + v] ? V::load(rows[q * N + v] + c) : V::zero();
        V::transpose(r);
        for (int k = 0; k < N; ++k) V::store(dst + (c + k) * 4 * N + q * N, r[k]);
      }
  for (; c < 4 * H; ++c)  // the last columns (fewer than N); all of them on the scalar target
    for (int i = 0; i < 4 * N; ++i) dst[c * 4 * N + i] = rows[i] ? rows[i][c] : Real(0);
}

template <typename Real>
void backward_task(void* p, int tid, int nthreads) {
  using V = Vec<Real>;
  constexpr int N = V::N;
  BackwardCtx<Real>& ctx = *static_cast<BackwardCtx<Real>*>(p);
  const BackwardArgs<Real>& a = *ctx.a;
  const int64_t T = a.dims.T, B = a.dims.B, I = a.dims.I, H = a.dims.H, Hp = ctx.Hp;
  const BlockRange mine = my_blocks(ctx.nblocks, tid, nthreads);
  // The state this thread owns: its units of all rows, or all units of its rows.
  const RowRange own_rows = ctx.split_rows ? my_rows(B, kTileRows, tid, nthreads) : RowRange{0, B};
  const BlockRange units = ctx.split_rows ? BlockRange{0, ctx.nblocks} : mine;

  for (int64_t b = own_rows.first; b < own_rows.last; ++b)
    for (int64_t block = units.first; block < units.last; ++block) {
      const int64_t u0 = block * N, nu = imin(N, H - u0);
      const int64_t e = entry_of(ctx.order, b);  // the batch entry in state row b
      V::store(ctx.dh + b * Hp + u0, a.dh_n ? load_part(a.dh_n + e * H + u0, nu) : V::zero());
      V::store(ctx.dc + b * Hp + u0, a.dc_n ? load_part(a.dc_n + e * H + u0, nu) : V::zero());
    }
  // The transposed copy's groups this thread multiplies by: groups of 4 of its own blocks,
  // which it packs itself; with split rows the groups over all blocks (as one thread has them),
  // packed round robin and read by all after the barrier below. (Which blocks share a group
  // changes no result: each block has its own accumulators.)
  const Real* groups = nullptr;
  const BlockRange grouped = ctx.split_rows ? BlockRange{0, ctx.nblocks} : mine;
  const int64_t ngroups = groups_of(grouped);
  if (ctx.packed_rkt) {
    Real* base = ctx.packed_rkt + (ctx.split_rows ? 0 : packed_offset(ctx.nblocks, tid, nthreads)) * 4 * H * 4 * N;
    const int64_t g0 = ctx.split_rows ? tid : 0, dg = ctx.split_rows ? nthreads : 1;
    for (int64_t g = g0; g < ngroups; g += dg)
      pack_transposed_group(a.recurrent_kernel, H, grouped.first + 4 * g, grouped.last, base + g * 4 * H * 4 * N);
    groups = base;
  }

  Real* ws = ctx.gemm_ws + tid * Gemm<Real>::workspace_per_thread;
  if (ctx.compact && a.dx)  // dx at positions past each length: no chunk scatters there
    for (int64_t r = tid; r < T * B; r += nthreads)
      if (r / B >= seq_len(a.lengths, r % B, T))
        std::memset(a.dx + io_row(a, r / B, r % B) * I, 0, I * sizeof(Real));

  // The weight gradients and dx of the time positions of one chunk of steps, once all its dz
  // rows are there. Chunks are processed from the last steps down; the first one done writes
  // dkernel, drecurrent_kernel and dbias, the later ones add to them.
  auto chunk_products = [&](int64_t s0) {
    const int64_t steps = imin(ctx.chunk_steps, T - s0);
    const int64_t t0 = chunk_t0(s0, ctx.chunk_steps, T, a.reverse);
    const bool add = s0 + steps < T;
    // The chunk's rows: all of them, or (padded) its valid positions, compacted; then x is
    // read and dx written through their rows' list (the padding of x is never read).
    const int64_t rows = ctx.compact ? ctx.chunk_valid[s0 / ctx.chunk_steps] : steps * B;
    const int64_t* x_list = ctx.compact ? ctx.x_rows + s0 * B
                            : ctx.x_time_rows ? ctx.x_time_rows + t0 * B : nullptr;
    const Real* x_rows = x_list ? a.x : a.x + t0 * B * I;
    Real* dx_rows = x_list || !a.dx ? a.dx : a.dx + t0 * B * I;
    // dkernel (I, 4H) += x^T . dz;  drecurrent_kernel (H, 4H) += h_prev^T . dz;  dx = dz . kernel^T
    GemmArgs<Real> dkernel{I, 4 * H, rows, x_rows, 1, I, ctx.dz, 4 * H, 1, a.dkernel,
                           4 * H, nullptr};
    dkernel.a_cols = x_list;
    GemmArgs<Real> drk{H, 4 * H, rows, ctx.h_prev, 1, H, ctx.dz, 4 * H, 1, a.drecurrent_kernel, 4 * H,
                       nullptr};
    dkernel.accumulate = drk.accumulate = add;
    const GemmArgs<Real> dweights[2] = {dkernel, drk};  // one product: dz packed once for both
    gemm_part_stacked(dweights, tid, nthreads, ws);
    if (a.dx) {  // (not wanted: the first layer's input is data)
      GemmArgs<Real> dx{rows, I, 4 * H, ctx.dz, 4 * H, 1, a.kernel, 1, 4 * H, dx_rows, I, nullptr};
      dx.c_rows = x_list;
      gemm_part(dx, tid, nthreads, ws);
    }
    if (a.dbias) {  // column sums of dz, each column summed in row order by one thread, in
                    // double (thousands of float32 terms would lose digits), 64 columns at a time
      const int64_t c0 = 4 * H * tid / nthreads, c1 = 4 * H * (tid + 1) / nthreads;
      for (int64_t j0 = c0; j0 < c1; j0 += 64) {
        const int64_t nj = imin(64, c1 - j0);
        double sum[64];
        for (int64_t j = 0; j < nj; ++j) sum[j] = add ? double(a.dbias[j0 + j]) : 0.0;
        for (int64_t r = 0; r < rows; ++r) {
          const Real* row = ctx.dz + r * 4 * H + j0;
          for (int64_t j = 0; j < nj; ++j) sum[j] += double(row[j]);
        }
        for (int64_t j = 0; j < nj; ++j) a.dbias[j0 + j] = Real(sum[j]);
      }
    }
  };

  const int64_t j0 = imin(H, mine.first * N), j1 = imin(H, mine.last * N);  // my units
  // Split rows: the transposed copy and the prologue above complete for all threads.
  if (ctx.split_rows) barrier_wait(&ctx.barrier);
  for (int64_t s = T - 1; s >= 0; --s) {
    Real* dz_step = ctx.dz_step + (s & 1) * B * 4 * H;
    for (int64_t b = own_rows.first; b < own_rows.last; ++b)
      for (int64_t block = units.first; block < units.last; ++block)
        backward_cell(ctx, s, b, block, dz_step);
    // dz of step s complete for all units (split rows: this thread's rows need only their own)
    if (!ctx.split_rows) barrier_wait(&ctx.barrier);
    if (groups) {  // group-major: a group's copy (4H x 4N) stays in L2 for all rows
      for (int64_t g = 0; g < ngroups; ++g) {
        const int64_t block0 = grouped.first + 4 * g;
        const int nb = static_cast<int>(imin(4, grouped.last - block0));
        for (int64_t b0 = own_rows.first; b0 < own_rows.last; b0 += kTileRows) {
          const int rows = static_cast<int>(imin(kTileRows, own_rows.last - b0));
          backward_packed_rows<Real, kTileRows>(ctx, s, b0, rows, block0, nb,
                                                groups + g * 4 * H * 4 * N, dz_step);
        }
      }
    } else {
      // B < kPackedBackwardBatch (one row): dot products, kDotUnits units at a time.
      for (int64_t b = 0; b < B; ++b) {
        int64_t j = j0;
        for (; j + kDotUnits <= j1; j += kDotUnits) backward_dot_tile<Real, kDotUnits>(ctx, s, b, j, dz_step);
        for (; j < j1; ++j) backward_dot_tile<Real, 1>(ctx, s, b, j, dz_step);
      }
    }
    if (s % ctx.chunk_steps == 0) {  // the chunk's first step: its dz and h_prev are complete
      if (ctx.split_rows) barrier_wait(&ctx.barrier);  // (every thread's rows of them)
      chunk_products(s);
      if (s > 0) barrier_wait(&ctx.barrier);  // read by all before the next chunk overwrites
    }
  }
  if (T == 0) chunk_products(0);  // no steps: an empty chunk writes zero weight gradients
  for (int64_t b = own_rows.first; b < own_rows.last; ++b)
    for (int64_t block = units.first; block < units.last; ++block) {
      const int64_t u0 = block * N, nu = imin(N, H - u0);
      const int64_t e = entry_of(ctx.order, b);
      store_part(a.dh0 + e * H + u0, V::load(ctx.dh + b * Hp + u0), nu);
      store_part(a.dc0 + e * H + u0, V::load(ctx.dc + b * Hp + u0), nu);
    }
}

template <typename Real>
void backward(const BackwardArgs<Real>& a) {
  constexpr int N = Vec<Real>::N;
  const int64_t T = a.dims.T, B = a.dims.B, H = a.dims.H;
  const int nthreads = threads_for_run();
  BackwardCtx<Real> ctx;
  ctx.a = &a;
  ctx.nblocks = ceil_div(H, N);
  ctx.Hp = ctx.nblocks * N;
  // dz and h_prev for a chunk of steps at a time when T*B holds two chunks: the weight
  // gradients are then summed chunk by chunk (NOTES 18). With lengths and reverse the rows of
  // one step are at different times: then the chunk's rows are kept in step order, x gathered
  // and dx scattered per chunk (NOTES 23).
  ctx.chunk_steps = T;
  if (B > 0) {
    const int64_t steps = ceil_div(kChunkRows, B);
    if (2 * steps <= T) ctx.chunk_steps = steps;
  }
  if (ctx.chunk_steps < 1) ctx.chunk_steps = 1;
  const int64_t chunk = imin(T, ctx.chunk_steps);
  Buffer<Real> dz(chunk * B * 4 * H), h_prev(chunk * B * H);
  Buffer<Real> state(2 * B * 4 * H + 2 * B * ctx.Hp);
  Buffer<Real> gemm_ws(nthreads * Gemm<Real>::workspace_per_thread);
  const bool packed = B >= kPackedBackwardBatch;
  Buffer<Real> packed_rkt(packed ? packed_offset(ctx.nblocks, nthreads, nthreads) * 4 * H * 4 * N : 0);
  ctx.packed_rkt = packed ? packed_rkt.get() : nullptr;
  ctx.dz = dz.get();
  ctx.h_prev = h_prev.get();
  const bool padded = padded_batch(a.lengths, B, T);
  const bool chunked = ctx.chunk_steps < T;
  ctx.by_step = chunked && a.reverse && padded;  // (unpadded lengths: all rows share times)
  ctx.split_rows = packed && split_rows_backward(B, H, kTileRows, nthreads);
  // Padded: the state's rows longest first (one tile: nothing to gain).
  const bool reorder = padded && B > kTileRows;
  Buffer<int64_t> order(reorder ? 2 * B : 0);
  if (reorder) longest_first(a.lengths, B, ctx.split_rows, nthreads, order.get());
  ctx.order = reorder ? order.get() : nullptr;
  // Padded: each chunk's valid positions numbered in dz_row() order (see BackwardCtx::compact).
  const int64_t nchunks = padded ? ceil_div(T, ctx.chunk_steps) : 0;
  Buffer<int64_t> compact(nchunks * ctx.chunk_steps * B), x_rows(nchunks * ctx.chunk_steps * B),
      chunk_valid(nchunks);
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t s0 = c * ctx.chunk_steps, steps = imin(ctx.chunk_steps, T - s0);
    const int64_t t0 = chunk_t0(s0, ctx.chunk_steps, T, a.reverse);
    int64_t next = 0;
    for (int64_t r = 0; r < steps * B; ++r) {
      const int64_t b = r % B, len = a.lengths[b];  // (b: the batch entry)
      const int64_t pos = (ctx.by_step ? s0 : t0) + r / B;  // the step (by_step) or the time
      if (pos >= len) {
        compact.get()[s0 * B + r] = -1;
        continue;
      }
      x_rows.get()[s0 * B + next] = io_row(a, ctx.by_step ? time_of(pos, len, true) : pos, b);
      compact.get()[s0 * B + r] = next++;
    }
    chunk_valid.get()[c] = next;
  }
  ctx.compact = padded ? compact.get() : nullptr;
  ctx.chunk_valid = padded ? chunk_valid.get() : nullptr;
  ctx.x_rows = padded ? x_rows.get() : nullptr;
  Buffer<int64_t> x_time_rows(a.batch_major && !padded ? T * B : 0);
  ctx.x_time_rows = a.batch_major && !padded ? batch_major_rows(a, x_time_rows.get()) : nullptr;
  ctx.dz_step = state.get();
  ctx.dh = state.get() + 2 * B * 4 * H;
  ctx.dc = ctx.dh + B * ctx.Hp;
  ctx.gemm_ws = gemm_ws.get();
  // Rows that have not started hold zeros here: the step product reads every row.
  for (int64_t i = 0; i < 2 * B * 4 * H; ++i) ctx.dz_step[i] = Real(0);
  barrier_init(&ctx.barrier, nthreads);
  run(&backward_task<Real>, &ctx, nthreads, &ctx.barrier);
}

// PackedWeights for this table: kernel as the projection's matrix-product panels
// (pack_b_all), recurrent_kernel as forward_task packs it.
template <typename Real>
PackedWeights pack(const Real* kernel, const Real* recurrent_kernel, int64_t I, int64_t H) {
  constexpr int N = Vec<Real>::N;
  const int64_t nblocks = ceil_div(H, N);
  auto aligned = [](int64_t n) {
    const size_t bytes = (static_cast<size_t>(n > 0 ? n : 1) * sizeof(Real) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    return std::shared_ptr<void>(p, std::free);
  };
  PackedWeights w;
  w.isa = FASTLSTM_STR(FASTLSTM_TARGET);
  w.I = I;
  w.H = H;
  w.is_double = std::is_same<Real, double>::value;
  w.kernel_panels = aligned(b_packed_size<Real>(I, 4 * H));
  w.recurrent = aligned(nblocks * H * 4 * N);
  GemmArgs<Real> g{0, 4 * H, I, nullptr, 0, 0, kernel, 4 * H, 1, nullptr, 0, nullptr};
  pack_b_all(g, static_cast<Real*>(w.kernel_panels.get()));
  pack_recurrent_blocks(recurrent_kernel, H, 0, nblocks, static_cast<Real*>(w.recurrent.get()));
  return w;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Matrix product for the model's Dense layers (cpu.h, MatmulArgs)
// ---------------------------------------------------------------------------------------

// Below this many FLOPs a product runs on one thread: waking the others would cost more.
constexpr double kParallelMatmulFlops = 1 << 20;

template <typename Real>
struct MatmulCtx {
  GemmArgs<Real> g;
  Real* ws;
};

template <typename Real>
void matmul_task(void* p, int tid, int nthreads) {
  auto& c = *static_cast<MatmulCtx<Real>*>(p);
  gemm_part(c.g, tid, nthreads, c.ws + tid * Gemm<Real>::workspace_per_thread);
}

template <typename Real>
void matmul(const MatmulArgs<Real>& m) {
  if (m.M <= 0 || m.N <= 0) return;
  const double flops = 2.0 * double(m.M) * double(m.N) * double(m.K);
  const int nthreads = flops < kParallelMatmulFlops ? 1 : threads_for_run();
  Buffer<Real> ws(nthreads * Gemm<Real>::workspace_per_thread);
  MatmulCtx<Real> ctx{GemmArgs<Real>{m.M, m.N, m.K, m.A, m.a_rs, m.a_cs, m.B, m.b_rs, m.b_cs, m.C, m.ldc,
                                     m.row_add},
                      ws.get()};
  run(&matmul_task<Real>, &ctx, nthreads, nullptr);
}

// ---------------------------------------------------------------------------------------
// Transpose (cpu.h), for fastlstm.torch's weight conversions
// ---------------------------------------------------------------------------------------

// dst (cols x rows, C-contiguous) = src (rows x cols, row stride lds)^T. Each N x N tile is
// loaded as N vectors (N source rows), transposed in registers and stored as N vectors, so every
// line of either matrix is read or written whole and in few instructions. (The 32 x 32 scalar
// tiles this replaced read source rows whose stride was a power of two, 4 KiB at 4H = 1024
// floats: all in one L1 set, evicted before the next column used them; NOTES 51.) Strips of S
// source rows, S elements = 64 bytes (one tile high on AVX-512, two on AVX2), so that each
// destination line is written whole by one strip. Threads take bands of destination rows.
template <typename Real>
struct TransposeCtx {
  const Real* src;
  int64_t rows, cols, lds;
  Real* dst;
};

template <typename Real>
void transpose_band(const TransposeCtx<Real>& c, int64_t j_begin, int64_t j_end) {
  using V = Vec<Real>;
  constexpr int N = V::N;
  constexpr int64_t S = 64 / sizeof(Real) > N ? 64 / sizeof(Real) : N;
  const int64_t rows = c.rows, lds = c.lds;
  for (int64_t i0 = 0; i0 < rows; i0 += S) {
    const int64_t i1 = imin(rows, i0 + S);
    int64_t j = j_begin;
    if (N > 1) {
      for (; j + N <= j_end; j += N) {
        int64_t i = i0;
        for (; i + N <= i1; i += N) {
          typename V::R r[N];
          for (int k = 0; k < N; ++k) r[k] = V::load(c.src + (i + k) * lds + j);
          V::transpose(r);
          for (int k = 0; k < N; ++k) V::store(c.dst + (j + k) * rows + i, r[k]);
        }
        for (; i < i1; ++i)  // the last rows (fewer than N)
          for (int k = 0; k < N; ++k) c.dst[(j + k) * rows + i] = c.src[i * lds + j + k];
      }
    }
    for (; j < j_end; ++j)  // the last columns (fewer than N); all of them on the scalar target
      for (int64_t i = i0; i < i1; ++i) c.dst[j * rows + i] = c.src[i * lds + j];
  }
}

template <typename Real>
void transpose_task(void* p, int tid, int nthreads) {
  const auto& c = *static_cast<const TransposeCtx<Real>*>(p);
  constexpr int N = Vec<Real>::N;
  const int64_t band = ceil_div(ceil_div(c.cols, N), nthreads) * N;
  transpose_band(c, imin(c.cols, tid * band), imin(c.cols, (tid + 1) * band));
}

// Below this many bytes a transpose runs on one thread.
constexpr int64_t kParallelTransposeBytes = int64_t(256) << 10;

template <typename Real>
void transpose(const Real* src, int64_t rows, int64_t cols, int64_t lds, Real* dst) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t bytes = rows * cols * static_cast<int64_t>(sizeof(Real));
  const int nthreads = bytes < kParallelTransposeBytes ? 1 : threads_for_run();
  TransposeCtx<Real> ctx{src, rows, cols, lds, dst};
  run(&transpose_task<Real>, &ctx, nthreads, nullptr);
}

// ---------------------------------------------------------------------------------------
// Adam (cpu.h, AdamArgs), for fastlstm.optimizers.Adam on NumPy arrays
// ---------------------------------------------------------------------------------------

// One pass over the four arrays instead of NumPy's dozen over temporaries (NOTES 53); threads
// take contiguous ranges of whole cache lines, and every element's arithmetic is the same
// whatever the thread count or its position in a vector (the last, partial vector of a range
// goes through load_part / store_part). No product is fused with a sum (unfused(): the compiler
// would contract them into FMAs), so the results are the same bits as the NumPy expressions in
// optimizers.Adam, on every instruction set.
template <typename Real>
void adam_range(const AdamArgs<Real>& a, int64_t begin, int64_t end) {
  using V = Vec<Real>;
  const auto c1 = V::set1(a.c1), c2 = V::set1(a.c2), alpha = V::set1(a.alpha), eps = V::set1(a.epsilon);
  for (int64_t i = begin; i < end; i += V::N) {
    const int64_t k = imin(V::N, end - i);
    const auto g = load_part(a.g + i, k);
    auto m = load_part(a.m + i, k), v = load_part(a.v + i, k);
    m = V::add(m, unfused(V::mul(V::sub(g, m), c1)));
    v = V::add(v, unfused(V::mul(V::sub(unfused(V::mul(g, g)), v), c2)));
    store_part(a.m + i, m, k);
    store_part(a.v + i, v, k);
    store_part(a.w + i, V::sub(load_part(a.w + i, k), V::div(V::mul(m, alpha), V::add(V::sqrt(v), eps))), k);
  }
}

// RMSprop (RmspropArgs), in the same way (one pass, no fused products: NumPy's bits).
template <typename Real>
void rmsprop_range(const RmspropArgs<Real>& a, int64_t begin, int64_t end) {
  using V = Vec<Real>;
  const auto rho = V::set1(a.rho), c = V::set1(a.c), lr = V::set1(a.lr), eps = V::set1(a.epsilon);
  const auto momentum = V::set1(a.momentum);
  for (int64_t i = begin; i < end; i += V::N) {
    const int64_t k = imin(V::N, end - i);
    const auto g = load_part(a.g + i, k);
    const auto v = V::add(unfused(V::mul(load_part(a.v + i, k), rho)), unfused(V::mul(c, unfused(V::mul(g, g)))));
    store_part(a.v + i, v, k);
    auto step = V::div(V::mul(lr, g), V::sqrt(V::add(v, eps)));
    if (a.mom) {
      step = V::add(unfused(V::mul(load_part(a.mom + i, k), momentum)), step);
      store_part(a.mom + i, step, k);
    }
    store_part(a.w + i, V::sub(load_part(a.w + i, k), step), k);
  }
}

// SGD (SgdArgs), in the same way.
template <typename Real>
void sgd_range(const SgdArgs<Real>& a, int64_t begin, int64_t end) {
  using V = Vec<Real>;
  const auto lr = V::set1(a.lr), momentum = V::set1(a.momentum);
  for (int64_t i = begin; i < end; i += V::N) {
    const int64_t k = imin(V::N, end - i);
    const auto step = unfused(V::mul(load_part(a.g + i, k), lr));
    const auto w = load_part(a.w + i, k);
    if (!a.m) {
      store_part(a.w + i, V::sub(w, step), k);
      continue;
    }
    const auto m = V::sub(unfused(V::mul(load_part(a.m + i, k), momentum)), step);
    store_part(a.m + i, m, k);
    store_part(a.w + i, V::add(w, a.nesterov ? V::sub(unfused(V::mul(m, momentum)), step) : m), k);
  }
}

// Threads take contiguous ranges of whole cache lines of an element-wise update of n elements.
template <typename Args, void (*range)(const Args&, int64_t, int64_t)>
void elementwise_task(void* p, int tid, int nthreads) {
  const auto& a = *static_cast<const Args*>(p);
  constexpr int64_t line = 64 / sizeof(*a.w);
  const int64_t share = ceil_div(ceil_div(a.n, line), nthreads) * line;
  range(a, imin(a.n, tid * share), imin(a.n, (tid + 1) * share));
}

// Below this many elements an update runs on one thread.
constexpr int64_t kParallelUpdateElements = int64_t(1) << 16;

template <typename Args, void (*range)(const Args&, int64_t, int64_t)>
void elementwise(const Args& a) {
  if (a.n <= 0) return;
  const int nthreads = a.n < kParallelUpdateElements ? 1 : threads_for_run();
  run(&elementwise_task<Args, range>, const_cast<Args*>(&a), nthreads, nullptr);
}

template <typename Real>
void adam(const AdamArgs<Real>& a) { elementwise<AdamArgs<Real>, &adam_range<Real>>(a); }
template <typename Real>
void rmsprop(const RmspropArgs<Real>& a) { elementwise<RmspropArgs<Real>, &rmsprop_range<Real>>(a); }
template <typename Real>
void sgd(const SgdArgs<Real>& a) { elementwise<SgdArgs<Real>, &sgd_range<Real>>(a); }

// target[rows[i]] += values[i] for i in order (cpu.h): each element's sum in numpy.add.at's
// order, so the same bits; one thread (the Embedding gradient: B * T rows of D values).
template <typename Real>
void index_add_rows(Real* target, int64_t D, const int64_t* rows, int64_t n, const Real* values) {
  using V = Vec<Real>;
  constexpr int N = V::N;
  for (int64_t i = 0; i < n; ++i) {
    Real* t = target + rows[i] * D;
    const Real* v = values + i * D;
    for (int64_t d = 0; d < D; d += N) {
      const int64_t k = imin(N, D - d);
      store_part(t + d, V::add(load_part(t + d, k), load_part(v + d, k)), k);
    }
  }
}

const KernelTable& kernel_table() {
  static const KernelTable table{FASTLSTM_STR(FASTLSTM_TARGET), &forward<float>, &forward<double>,
                                 &backward<float>, &backward<double>, &pack<float>, &pack<double>,
                                 &matmul<float>, &matmul<double>, &transpose<float>,
                                 &transpose<double>, &adam<float>, &adam<double>,
                                 &rmsprop<float>, &rmsprop<double>, &sgd<float>, &sgd<double>,
                                 &index_add_rows<float>,
                                 &index_add_rows<double>};
  return table;
}

}  // namespace FASTLSTM_TARGET
}  // namespace cpu
}  // namespace fastlstm
