// AMX-BF16 throughput on this CPU (bench/NOTES.md, entry 26). Not part of the package.
//
//   gcc -O2 -mavx512f -mamx-tile -mamx-bf16 bench/amx/amx_bench.c -o /tmp/amx_bench
//   /tmp/amx_bench peak                 # 4 independent TDPBF16PS chains, operands in tiles
//   /tmp/amx_bench gemm M N K KC NC      # C += A B, bf16 operands packed in tile order
//   /tmp/amx_bench l1   M N K KC NC      # the same loop, every tile load from one address (L1)
//   /tmp/amx_bench fma                   # float32 AVX-512 FMA peak (16 chains), for the ratio
//
// Rates in bf16 GFLOP/s (2 per multiply-add), single thread. Linux only: the process must ask
// the kernel for the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM) before the first use.
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { kReqXcompPerm = 0x1023, kXtiledata = 18 };

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} TileConfig;

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void configure_tiles(void) {
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) != 0) {
    perror("arch_prctl(ARCH_REQ_XCOMP_PERM)");
    exit(1);
  }
  TileConfig cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {  // every tile 16 rows x 64 bytes
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// Operands in tile order: A as [M/16][K/32][16 rows][32 k], B as [N/16][K/2][16 cols][2 k],
// so every tile is one contiguous KiB (row stride 64 bytes).
static int M, N, K, same_address;
static uint16_t *A, *Bt;
static float* C;

static void block_2x2(int m0, int n0, int k0, int kc) {
  float* c = C + (size_t)m0 * N + n0;
  _tile_loadd(0, c, N * 4);
  _tile_loadd(1, c + 16, N * 4);
  _tile_loadd(2, c + (size_t)16 * N, N * 4);
  _tile_loadd(3, c + (size_t)16 * N + 16, N * 4);
  const uint16_t* a0 = A + ((size_t)(m0 / 16) * K + k0) * 16;
  const uint16_t* a1 = a0 + (size_t)K * 16;
  const uint16_t* b0 = Bt + ((size_t)(n0 / 16) * K + k0) * 16;
  const uint16_t* b1 = b0 + (size_t)K * 16;
  const int step = same_address ? 0 : 32 * 16;
  for (int k = 0; k < kc; k += 32) {
    const size_t off = (size_t)(k / 32) * step;
    _tile_loadd(4, a0 + off, 64);
    _tile_loadd(6, b0 + off, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1 + off, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + off, 64);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, N * 4);
  _tile_stored(1, c + 16, N * 4);
  _tile_stored(2, c + (size_t)16 * N, N * 4);
  _tile_stored(3, c + (size_t)16 * N + 16, N * 4);
}

static void peak(void) {
  static uint16_t ones[16 * 32];
  static float out[16 * 16];
  for (int i = 0; i < 16 * 32; ++i) ones[i] = 0x3f80;  // bf16 1.0
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  const long n = 5000000;
  const double t0 = seconds();
  for (long i = 0; i < n; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  const double t = seconds() - t0;
  _tile_stored(0, out, 64);
  printf("peak: %.0f GFLOP/s (check %g == %g)\n", 4.0 * n * 16 * 16 * 32 * 2 / t / 1e9, out[0], 32.0 * n);
}

static void fma_peak(void) {
  __m512 acc[16];
  const __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-9f);
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps((float)i);
  const long n = 20000000;
  const double t0 = seconds();
  for (long r = 0; r < n; ++r) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
  }
  const double t = seconds() - t0;
  float sum = 0, lanes[16];
  for (int i = 0; i < 16; ++i) {
    _mm512_storeu_ps(lanes, acc[i]);
    sum += lanes[0];
  }
  printf("fp32 fma peak: %.0f GFLOP/s (sum %g)\n", 16.0 * n * 16 * 2 / t / 1e9, sum);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s peak | gemm|l1 M N K KC NC\n", argv[0]);
    return 2;
  }
  if (strcmp(argv[1], "fma") == 0) {
    fma_peak();
    return 0;
  }
  configure_tiles();
  if (strcmp(argv[1], "peak") == 0) {
    peak();
  } else if (argc == 7) {
    same_address = strcmp(argv[1], "l1") == 0;
    M = atoi(argv[2]), N = atoi(argv[3]), K = atoi(argv[4]);
    const int KC = atoi(argv[5]), NC = atoi(argv[6]);
    if (M % 32 || N % NC || NC % 32 || K % KC || KC % 32) {
      fprintf(stderr, "need M %% 32 == 0, N %% NC == 0, NC %% 32 == 0, K %% KC == 0, KC %% 32 == 0\n");
      return 2;
    }
    A = aligned_alloc(64, (size_t)M * K * 2);
    Bt = aligned_alloc(64, (size_t)K * N * 2);
    C = aligned_alloc(64, (size_t)M * N * 4);
    for (size_t i = 0; i < (size_t)M * K; ++i) A[i] = 0x3f80;
    for (size_t i = 0; i < (size_t)K * N; ++i) Bt[i] = 0x3f80;
    memset(C, 0, (size_t)M * N * 4);
    for (int rep = 0; rep < 4; ++rep) {
      const double t0 = seconds();
      for (int k0 = 0; k0 < K; k0 += KC)
        for (int n1 = 0; n1 < N; n1 += NC)
          for (int m0 = 0; m0 < M; m0 += 32)
            for (int n0 = n1; n0 < n1 + NC; n0 += 32) block_2x2(m0, n0, k0, KC);
      const double t = seconds() - t0;
      printf("%s M=%d N=%d K=%d KC=%d NC=%d: %.0f GFLOP/s\n", argv[1], M, N, K, KC, NC,
             2.0 * M * N * K / t / 1e9);
    }
  } else {
    fprintf(stderr, "gemm / l1 need M N K KC NC\n");
    return 2;
  }
  return 0;
}
