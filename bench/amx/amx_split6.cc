// float32-accurate matrix product from six AMX-BF16 products (bench/NOTES.md, entry 45). Not
// part of the package: it measures whether operand reuse across the six products lifts the
// rate above the float32 FMA kernels.
//
//   g++ -O2 -march=sapphirerapids bench/amx/amx_split6.cc -o /tmp/amx_split6
//   /tmp/amx_split6 M N K NC [sched] [l1]
//
// Each float32 operand is split into three bf16 parts with round-to-nearest (a = a0 + a1 + a2
// exactly); C = sum of a_i b_j over i + j <= 2 (six TDPBF16PS per 32-wide k step of a 2 x 2
// block of 16 x 16 tiles), with the parts loaded so that 16 tile loads serve 24 products.
// sched 0 adds the small products first, 1 the large first. "l1" reads every tile from the
// first k step's address (an upper bound: all loads from L1; the result is then wrong).
// Prints the float32-equivalent rate (2 M N K per call, best of 7, one thread) and the
// relative error ||C - C64|| / ||C64|| on a sample of elements, beside that of a plain
// float32 FMA dot product.
#include <immintrin.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <vector>
#include <chrono>
#include <sys/syscall.h>
#include <unistd.h>
struct TileConfig { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; };
static void cfg_tiles() {
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) { perror("prctl"); exit(1); }
  TileConfig c; memset(&c, 0, sizeof c); c.palette = 1;
  for (int t = 0; t < 8; ++t) { c.colsb[t] = 64; c.rows[t] = 16; }
  _tile_loadconfig(&c);
}
static inline uint16_t bf(float x) { // RNE
  uint32_t u; memcpy(&u, &x, 4); u += 0x7FFF + ((u >> 16) & 1); return u >> 16; }
static inline float fb(uint16_t h) { uint32_t u = (uint32_t)h << 16; float x; memcpy(&x, &u, 4); return x; }
static void split3(float x, uint16_t p[3]) {
  p[0] = bf(x); float r = x - fb(p[0]); p[1] = bf(r); r = r - fb(p[1]); p[2] = bf(r);
}
int M, N, K;
// Ap: [M/16][K/32][3][16][32]; Bp: [N/16][K/32][3][16][16][2]
std::vector<uint16_t> Ap, Bp;
std::vector<float> A, B, C;
static bool same_address = false;
static inline const uint16_t* atile(int mt, int kt, int part) {
  if (same_address) mt &= 1, kt = 0;
  return Ap.data() + (((size_t)mt * (K / 32) + kt) * 3 + part) * 512;
}
static inline const uint16_t* btile(int nt, int kt, int part) {
  if (same_address) nt &= 1, kt = 0;
  return Bp.data() + (((size_t)nt * (K / 32) + kt) * 3 + part) * 512;
}
template <int SCHED>
static void block(int m0, int n0) {
  float* c = C.data() + (size_t)m0 * N + n0;
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  int mt = m0 / 16, nt = n0 / 16;
  for (int kt = 0; kt < K / 32; ++kt) {
#define LA(p) _tile_loadd(4, atile(mt, kt, p), 64); _tile_loadd(5, atile(mt + 1, kt, p), 64);
#define LB(p) _tile_loadd(6, btile(nt, kt, p), 64); _tile_loadd(7, btile(nt + 1, kt, p), 64);
#define DP _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
    if (SCHED == 0) {
      // small terms first: a2b0, a1b0, a1b1, a0b2 ... order: a2b0 a1b0 a1b1 a0b1 a0b2 a0b0
      LA(2) LB(0) DP
      LA(1) DP
      LB(1) DP
      LA(0) DP
      LB(2) DP
      LB(0) DP
    } else {
      LA(0) LB(0) DP
      LB(1) DP
      LB(2) DP
      LA(1) LB(1) DP
      LB(0) DP
      LA(2) DP
    }
  }
  _tile_stored(0, c, N * 4); _tile_stored(1, c + 16, N * 4);
  _tile_stored(2, c + (size_t)16 * N, N * 4); _tile_stored(3, c + (size_t)16 * N + 16, N * 4);
}
int main(int argc, char** argv) {
  if (argc < 5) { fprintf(stderr, "usage: %s M N K NC [sched] [l1]\n", argv[0]); return 2; }
  M = atoi(argv[1]); N = atoi(argv[2]); K = atoi(argv[3]); int NC = atoi(argv[4]); int sched = argc > 5 ? atoi(argv[5]) : 0;
  same_address = argc > 6 && strcmp(argv[6], "l1") == 0;
  if (M % 32 || N % NC || NC % 32 || K % 32) { fprintf(stderr, "need M %% 32 == 0, N %% NC == 0, NC %% 32 == 0, K %% 32 == 0\n"); return 2; }
  cfg_tiles();
  A.resize((size_t)M * K); B.resize((size_t)K * N); C.assign((size_t)M * N, NAN);
  srand(1);
  for (auto& x : A) x = (float)rand() / RAND_MAX * 2 - 1;
  for (auto& x : B) x = (float)rand() / RAND_MAX * 2 - 1;
  Ap.resize((size_t)M * K * 3); Bp.resize((size_t)K * N * 3);
  auto t0 = std::chrono::steady_clock::now();
  for (int m = 0; m < M; ++m) for (int k = 0; k < K; ++k) {
    uint16_t p[3]; split3(A[(size_t)m * K + k], p);
    for (int q = 0; q < 3; ++q) Ap[(((size_t)(m / 16) * (K / 32) + k / 32) * 3 + q) * 512 + (m % 16) * 32 + k % 32] = p[q];
  }
  for (int k = 0; k < K; ++k) for (int n = 0; n < N; ++n) {
    uint16_t p[3]; split3(B[(size_t)k * N + n], p);
    for (int q = 0; q < 3; ++q) Bp[(((size_t)(n / 16) * (K / 32) + k / 32) * 3 + q) * 512 + ((k % 32) / 2) * 32 + (n % 16) * 2 + k % 2] = p[q];
  }
  double tp = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double best = 1e9;
  for (int rep = 0; rep < 7; ++rep) {
    auto s = std::chrono::steady_clock::now();
    for (int n1 = 0; n1 < N; n1 += NC)
      for (int m0 = 0; m0 < M; m0 += 32)
        for (int n0 = n1; n0 < n1 + NC; n0 += 32) { if (sched) block<1>(m0, n0); else block<0>(m0, n0); }
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count();
    if (t < best) best = t;
  }
  // error vs double
  double num = 0, den = 0, num32 = 0;
  for (int m = 0; m < M; m += 7) for (int n = 0; n < N; n += 5) {
    double s = 0; float s32 = 0;
    for (int k = 0; k < K; ++k) { s += (double)A[(size_t)m * K + k] * B[(size_t)k * N + n]; s32 = fmaf(A[(size_t)m * K + k], B[(size_t)k * N + n], s32); }
    double c = C[(size_t)m * N + n]; num += (c - s) * (c - s); den += s * s; num32 += (s32 - s) * (s32 - s);
  }
  printf("%sM=%d N=%d K=%d NC=%d sched=%d: %.0f GFLOP/s fp32-equiv (best of 7), pack %.1f ms (scalar), relerr %.2e (plain fp32 dot %.2e)\n",
         same_address ? "l1 " : "", M, N, K, NC, sched, 2.0 * M * N * K / best / 1e9, tp * 1e3, sqrt(num / den), sqrt(num32 / den));
}
