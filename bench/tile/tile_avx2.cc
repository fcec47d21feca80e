// Build: g++ -O3 -mavx2 -mfma bench/tile/tile_avx2.cc -o /tmp/tile_avx2 && /tmp/tile_avx2 [H] [B]
// See bench/NOTES.md, entry 60.
// Microbenchmark: the AVX2 forward recurrent tile (4 gates x 8 units = 4 ymm vectors per row),
// weights of one unit block packed K x 4 x 8 and streamed for every row tile, as in the
// forward step (lstm_kernels.cc, accumulate_gates). Variants: ROWS rows per tile, SPLIT
// accumulator sets (even / odd k), and whether the weights are held in registers (REG) or read
// as memory operands of the FMAs (MEM, which frees 4 registers for accumulators).
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
typedef __m256 R;

template <int ROWS, int SPLIT>
__attribute__((noinline)) void tile(const float* w, int K, const float* const* src, float* out) {
  R acc[SPLIT][ROWS][4];
  for (int p = 0; p < SPLIT; ++p)
    for (int r = 0; r < ROWS; ++r)
      for (int q = 0; q < 4; ++q) acc[p][r][q] = _mm256_setzero_ps();
  for (int k = 0; k + SPLIT <= K; k += SPLIT) {
#pragma GCC unroll 2
    for (int p = 0; p < SPLIT; ++p) {
      const float* wk = w + (k + p) * 32;
      const R w0 = _mm256_loadu_ps(wk), w1 = _mm256_loadu_ps(wk + 8), w2 = _mm256_loadu_ps(wk + 16),
              w3 = _mm256_loadu_ps(wk + 24);
#pragma GCC unroll 8
      for (int r = 0; r < ROWS; ++r) {
        const R s = _mm256_broadcast_ss(src[r] + k + p);
        acc[p][r][0] = _mm256_fmadd_ps(s, w0, acc[p][r][0]);
        acc[p][r][1] = _mm256_fmadd_ps(s, w1, acc[p][r][1]);
        acc[p][r][2] = _mm256_fmadd_ps(s, w2, acc[p][r][2]);
        acc[p][r][3] = _mm256_fmadd_ps(s, w3, acc[p][r][3]);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int q = 0; q < 4; ++q) {
      R v = acc[0][r][q];
      if (SPLIT == 2) v = _mm256_add_ps(v, acc[SPLIT - 1][r][q]);
      _mm256_storeu_ps(out + (r * 4 + q) * 8, v);
    }
}

template <int ROWS, int SPLIT>
double run(int H, int B, int reps) {
  const int nblocks = H / 8;
  std::vector<float> w((size_t)nblocks * H * 32), h((size_t)B * H), out(ROWS * 32);
  for (size_t i = 0; i < w.size(); ++i) w[i] = 0.001f * (i % 97);
  for (size_t i = 0; i < h.size(); ++i) h[i] = 0.01f * (i % 13);
  std::vector<const float*> src(ROWS);
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    for (int rep = 0; rep < reps; ++rep)
      for (int blk = 0; blk < nblocks; ++blk)
        for (int b0 = 0; b0 + ROWS <= B; b0 += ROWS) {
          for (int r = 0; r < ROWS; ++r) src[r] = h.data() + (size_t)(b0 + r) * H;
          tile<ROWS, SPLIT>(w.data() + (size_t)blk * H * 32, H, src.data(), out.data());
        }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = s < best ? s : best;
  }
  const double rows = (B / ROWS) * ROWS;
  return 2.0 * rows * H * 4.0 * H * reps / best / 1e9;
}

int main(int argc, char** argv) {
  const int H = argc > 1 ? atoi(argv[1]) : 256, B = argc > 2 ? atoi(argv[2]) : 24;
  const int reps = (int)(2e9 / (8.0 * H * H * B)) + 1;
  printf("H=%d B=%d (weights %.0f KiB), GFLOP/s best of 5\n", H, B, H * 4.0 * H * 4 / 1024);
  printf("rows=1 split=1 %.1f\n", run<1, 1>(H, B, reps));
  printf("rows=1 split=2 %.1f\n", run<1, 2>(H, B, reps));
  printf("rows=2 split=1 %.1f\n", run<2, 1>(H, B, reps));
  printf("rows=2 split=2 %.1f\n", run<2, 2>(H, B, reps));
  printf("rows=3 split=1 %.1f\n", run<3, 1>(H, B, reps));
  printf("rows=4 split=1 %.1f\n", run<4, 1>(H, B, reps));
  return 0;
}
