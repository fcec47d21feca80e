// Build: g++ -O3 -march=skylake-avx512 bench/tile/tile_bench.cc -o /tmp/tile && /tmp/tile [B]
// See bench/NOTES.md, entry 13.
// Microbenchmark: recurrent-product tile layouts, weights of one unit block streamed
// for every row tile (as in the forward step). Layout A: ROWS x 4 vectors (4 gates of 16
// units); layout B: ROWS x 2 vectors (4 gates of 8 units).
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
typedef __m512 R;
template <int ROWS, int Q>
__attribute__((noinline)) void tile(const float* w, int K, const float* const* src, float* out) {
  R acc[ROWS][Q];
  for (int r = 0; r < ROWS; ++r) for (int q = 0; q < Q; ++q) acc[r][q] = _mm512_setzero_ps();
  for (int k = 0; k < K; ++k) {
    R wv[Q];
    for (int q = 0; q < Q; ++q) wv[q] = _mm512_loadu_ps(w + (k * Q + q) * 16);
    for (int r = 0; r < ROWS; ++r) {
      R s = _mm512_set1_ps(src[r][k]);
      for (int q = 0; q < Q; ++q) acc[r][q] = _mm512_fmadd_ps(s, wv[q], acc[r][q]);
    }
  }
  for (int r = 0; r < ROWS; ++r) for (int q = 0; q < Q; ++q) _mm512_storeu_ps(out + (r * Q + q) * 16, acc[r][q]);
}
template <int ROWS, int Q>
double run(int H, int B, int reps) {
  int units_per_block = Q * 16 / 4;
  int nblocks = H / units_per_block;
  std::vector<float> w((size_t)nblocks * H * Q * 16, 0.01f), h((size_t)B * H, 0.5f), out(ROWS * Q * 16);
  std::vector<const float*> src(ROWS);
  auto t0 = std::chrono::steady_clock::now();
  for (int rep = 0; rep < reps; ++rep)
    for (int blk = 0; blk < nblocks; ++blk)
      for (int b0 = 0; b0 + ROWS <= B; b0 += ROWS) {
        for (int r = 0; r < ROWS; ++r) src[r] = h.data() + (size_t)(b0 + r) * H;
        tile<ROWS, Q>(w.data() + (size_t)blk * H * Q * 16, H, src.data(), out.data());
      }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double rows = (B / ROWS) * ROWS;
  return 2.0 * reps * rows * H * 4 * H / s / 1e9;
}
int main(int argc, char** argv) {
  int B = argc > 1 ? atoi(argv[1]) : 84;
  for (int H : {256, 512, 1024}) {
    int reps = (int)(4e9 / (8.0 * B * H * H)) + 1;
    for (int i = 0; i < 2; ++i)
      printf("H=%4d  6x4: %6.1f  12x2: %6.1f  14x2: %6.1f  4x4: %6.1f GFLOP/s\n", H, run<6, 4>(H, B, reps),
             run<12, 2>(H, B, reps), run<14, 2>(H, B, reps), run<4, 4>(H, B, reps));
  }
}
