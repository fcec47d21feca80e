#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU, from the repository root:
#
#     bash bench/gpu_check.sh
#
# 1. environment: nvidia-smi, nvcc, python, torch, cupy
# 2. build:       pip install --no-build-isolation --no-deps . with FASTLSTM_CUDA=ON and
#                 CMAKE_CUDA_ARCHITECTURES=90 (one architecture: a fast build)
# 3. import:      fastlstm.cuda_info() must say available; which kernels auto picks for the
#                 benchmark's shapes; cuobjdump -res-usage of the built kernels (registers,
#                 shared memory, spills as built for this card)
# 4. tests:       pytest -m cuda tests/test_cuda.py tests/test_device.py (the GPU tests: each
#                 kernel path forced, simt and persistent; precision fp32 / tf32 / bf16 and the
#                 tensor-core GEMM alone; tf32x3 against fp32's bounds; the model API on the GPU;
#                 poisoning on)
# 5. benchmark:   python bench/gpu_bench.py (fastlstm fp32 persistent / simt, tf32, bf16, tf32x3 vs
#                 torch.nn.LSTM / cuDNN in the same precision, with speedups and the errors
#                 against a float64 reference); before the sanitizers, leaving them ~150 s;
#                 then bench/gpu_gemm_ab.py (the tensor-core GEMM with / without its cp.async
#                 pipeline, alone against cuBLAS and in the LSTM against cuDNN tf32; the fp32
#                 GEMM, the tiled step product and split-K on / off beside cuBLAS fp32),
#                 bench/gpu_persistent_ab.py (first short sequences, T = 1 .. 64, persistent
#                 vs simt; then persistent vs simt vs tiled vs cuDNN, paths
#                 forced; persistent with staging ahead on and off, and with the tagged
#                 exchange instead of grid barriers for B <= 64)
#                 and bench/gpu_phase_profile.py (the persistent kernels' time per step, phase
#                 by phase: FASTLSTM_CUDA_TRACE)
# 6. sanitizers:  compute-sanitizer memcheck, racecheck, synccheck (and initcheck if time is
#                 left) on small forward + backward cases (fp32 and fp64, lengths, reverse,
#                 several batch chunks) on both kernel paths, and tf32 / bf16 (the tensor-core
#                 GEMM), the 128x128 fp32 GEMM alone, when compute-sanitizer exists
#
# 7. initcheck:   compute-sanitizer initcheck (poisoning off), if time is left
# 8. decide:      bench/gpu_decide.py reads the A/B tables back and prints the ratios behind each
#                 switch still waiting for a measurement (pipeline, split-K, tiled, the persistent
#                 batch limit and shortest T, staging ahead, the tagged exchange, tiled_plan's k
#                 per slice, the load switches)
#
# A second, shorter run in the same session (after changing a default, say): STAGES="build
# pytest_cuda persistent_ab decide" runs only those stages (names as in the summary; the others
# are listed as skipped), PYTEST_K="tiled or split" narrows the GPU tests (pytest -k), and
# TOTAL_BUDGET sets the whole run's limit. GPU_CHECK_CMAKE_ARGS adds CMake arguments to the build,
# e.g. GPU_CHECK_CMAKE_ARGS="-DCMAKE_CUDA_FLAGS=-DFASTLSTM_CUDA_WMMA_GENERIC_LOADS" (the wmma
# fragments loaded by load_matrix_sync, as before session 19).
#
# Every stage runs under `timeout`, a failed stage does not stop the others, and the whole
# script keeps within TOTAL_BUDGET seconds (default 465, 7.75 minutes): each stage gets at
# most what is left. Logs and the benchmark table go to $OUT when set (else a temporary
# folder): gpu_check.log (everything, the build's and the sanitizers' logs included),
# pytest_cuda.log, gpu_bench.md, gpu_bench.json, gpu_gemm_ab.md, gpu_persistent_ab.md,
# gpu_persistent_ab.json, gpu_phase_profile.md (8 files: what a lent machine sends back; the
# stages' own logs are folded into gpu_check.log). The stage summary and the benchmark table
# come last.
# Needs: python3 with torch (CUDA), cupy, pybind11, scikit-build-core, numpy, pytest; cmake,
# ninja, nvcc. No network.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

TOTAL_BUDGET=${TOTAL_BUDGET:-465}
T0=$(date +%s)
OUTDIR=${OUT:-$(mktemp -d /tmp/fastlstm_gpu_check.XXXXXX)}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
: >"$LOG"
PY=${PYTHON:-python3}
export PY PYTHONUNBUFFERED=1
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
if ! command -v compute-sanitizer >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer /opt/nvidia/compute-sanitizer; do
    if [ -x "$d/compute-sanitizer" ]; then export PATH="$d:$PATH"; break; fi
  done
fi

SUMMARY=()
log() { echo "$*" | tee -a "$LOG"; }
left() { echo $((TOTAL_BUDGET - ($(date +%s) - T0))); }

# stage NAME LIMIT LOGFILE CMD...: runs CMD under timeout min(LIMIT, time left), output to
# LOGFILE (and gpu_check.log); records "NAME: ok|FAILED rc=N|TIMED OUT (Ns)".
stage() {
  local name=$1 limit=$2 logfile=$3
  shift 3
  if [ -n "${STAGES:-}" ] && [[ " ${STAGES//,/ } " != *" $name "* ]]; then
    SUMMARY+=("$name: SKIPPED (not in STAGES)")
    return 0
  fi
  local rest
  rest=$(left)
  if [ "$rest" -lt 10 ]; then
    SUMMARY+=("$name: SKIPPED (out of time)")
    log "=== $name: skipped, out of time"
    return 1
  fi
  [ "$limit" -gt "$rest" ] && limit=$rest
  log "=== $name (limit ${limit}s, $(left)s left) ==="
  local s rc
  s=$(date +%s)
  if [ "$(type -t "$1")" = function ]; then  # a shell function: run it in a child bash
    timeout --kill-after=5 "$limit" bash -o pipefail -c "$(declare -f "$1"); $*" >"$logfile" 2>&1
  else
    timeout --kill-after=5 "$limit" "$@" >"$logfile" 2>&1
  fi
  rc=$?
  local dt=$(($(date +%s) - s))
  cat "$logfile" >>"$LOG"
  tail -n 25 "$logfile"
  if [ $rc -eq 0 ]; then
    SUMMARY+=("$name: ok (${dt}s)")
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    SUMMARY+=("$name: TIMED OUT after ${dt}s")
  else
    SUMMARY+=("$name: FAILED rc=$rc (${dt}s)")
  fi
  log "=== $name: rc=$rc in ${dt}s"
  return $rc
}

# ---- 1. environment
env_info() {
  nvidia-smi || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  command -v nvcc && nvcc --version | tail -n 2
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
  cmake --version | head -n 1
  "$PY" - <<'EOF'
import sys, platform
print("python", sys.version.split()[0], platform.machine())
for name in ("numpy", "torch", "cupy", "pybind11", "scikit_build_core", "pytest"):
    try:
        m = __import__(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as e:
        print(name, "MISSING", e)
import torch
print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "cudnn", torch.backends.cudnn.version())
EOF
}
stage environment 30 "$OUTDIR/environment.log" env_info

# ---- 2. build
build() {
  FASTLSTM_CUDA=ON CUDAARCHS=90 CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90 ${GPU_CHECK_CMAKE_ARGS:-}" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip install --no-build-isolation --no-deps -v . 2>&1 |
    grep -v -E '^\s*(Copying|copying|adding|Added|creating)' | tail -n 80
}
stage build 150 "$OUTDIR/build.log" build

# ---- 3. import
stage import 40 "$OUTDIR/import.log" "$PY" -c "
import fastlstm, json
info = fastlstm.cuda_info()
print(json.dumps(info, indent=1, default=str))
assert info['available'], info['reason']
"

# ---- 3b. which kernels auto picks, and the kernels' resources as built (folded into gpu_check.log)
kernels_info() {
  "$PY" - <<'EOF'
import numpy as np, fastlstm
from fastlstm import ops, cuda
rng = np.random.default_rng(0)
for T, B, I, H in [(100, 1, 256, 256), (100, 1, 1024, 1024), (100, 16, 512, 512), (100, 64, 512, 512),
                   (100, 64, 1024, 1024), (100, 256, 1024, 1024), (1000, 32, 256, 256), (3, 2, 4, 1100)]:
    for dtype in (np.float32, np.float64):
        r = lambda *s: (rng.standard_normal(s) * 0.1).astype(dtype)
        T1 = min(T, 3)
        saved = ops.lstm_forward(r(T1, B, I), r(I, 4 * H), r(H, 4 * H), backend="cuda")[3]
        ops.lstm_backward(saved, r(T1, B, H))
        info = cuda.info()
        print((T, B, I, H), np.dtype(dtype).name, "|", info["last_forward"], "|", info["last_backward"])
r = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)
for B, I, H in ((2, 8, 16), (64, 1024, 1024)):  # the second: auto takes the tensor-core recurrence
    for precision in ("tf32", "bf16", "tf32x3"):
        saved = ops.lstm_forward(r(3, B, I), r(I, 4 * H), r(H, 4 * H), backend="cuda", precision=precision)[3]
        ops.lstm_backward(saved, r(3, B, H))
        print((3, B, I, H), precision, "|", cuda.info()["last_forward"], "|", cuda.info()["last_backward"])
EOF
  so=$("$PY" -c "import fastlstm._cuda as m; print(m.__file__)")
  if command -v cuobjdump >/dev/null 2>&1; then
    cuobjdump -res-usage "$so" 2>&1 | grep -E "Function|REG" | sed -e 's/^ *//' | paste - - |
      cut -c1-400 | c++filt | sed -n 1,60p  # sed reads to the end: no SIGPIPE under pipefail (head gave rc 141)
  else
    echo "cuobjdump: not found"
  fi
}
stage kernels 40 "$OUTDIR/kernels.log" kernels_info

# ---- 4. tests (-v: a line per test as it ends, so a stage cut short by its limit still says which
# passed and failed; --durations: where the stage's time went, to size its limit). With
# pytest-xdist (the device image has it) in 4 processes: ~290 GPU tests since session 18, and
# each process compiles its own CuPy kernels on a cold cache (PYTEST_WORKERS=0: one process;
# PYTEST_WORKERS=auto: pytest-xdist's choice).
# pytest-benchmark (also in the image) warns when xdist is active, and this project's
# filterwarnings = error turned that into an INTERNALERROR (seen here with both installed): its
# plugin is left out then.
# Only in the GPU's Default compute mode (in Exclusive-Process mode the workers after the first
# could not create a context).
WORKERS=${PYTEST_WORKERS:-4}
XDIST=()
MODE=$(nvidia-smi --query-gpu=compute_mode --format=csv,noheader 2>/dev/null | head -n 1)
if [ "$WORKERS" != 0 ] && [ "$MODE" = "Default" ] && "$PY" -c "import xdist" >/dev/null 2>&1; then
  XDIST=(-n "$WORKERS" -p no:benchmark)
fi
log "pytest_cuda: ${XDIST[*]:-one process} (compute mode: ${MODE:-unknown})"
stage pytest_cuda 110 "$OUTDIR/pytest_cuda.log" "$PY" -m pytest -m cuda -v -rfE --durations=15 -p no:cacheprovider ${XDIST[@]+"${XDIST[@]}"} \
  -W "ignore::DeprecationWarning" -W "ignore::UserWarning" -W "ignore::FutureWarning" \
  ${PYTEST_K:+-k "$PYTEST_K"} tests/test_cuda.py tests/test_device.py

# ---- 5. benchmark (before the sanitizers: the measurements are what a short GPU session most
# needs; it leaves ~150 s for the sanitizer stages)
BENCH_DEADLINE=$(($(left) - 345))
[ "$BENCH_DEADLINE" -lt 60 ] && BENCH_DEADLINE=60
stage gpu_bench 300 "$OUTDIR/gpu_bench.log" "$PY" bench/gpu_bench.py --out "$OUTDIR" \
  --deadline "$BENCH_DEADLINE" --budget 0.4 --reps 20

# ---- 5a. the tensor-core GEMM with and without its cp.async pipeline (tc-gemm-v2, off by
# default: FASTLSTM_CUDA_GEMM_PIPELINE=1), alone against cuBLAS and in the LSTM against cuDNN tf32
stage gemm_ab 85 "$OUTDIR/gemm_ab.log" "$PY" bench/gpu_gemm_ab.py --out "$OUTDIR" --reps 7

# ---- 5b. the persistent kernels (and, for B >= 32, kernel path "tiled") against the per-step
# ones and cuDNN, kernel paths forced (sets auto's batch limit kPersistentAutoMaxRows, and says
# whether auto should take "tiled"; bench/gpu_persistent_ab.py)
stage persistent_ab 90 "$OUTDIR/persistent_ab.log" "$PY" bench/gpu_persistent_ab.py --out "$OUTDIR" --reps 8

# ---- 5c. where the persistent kernels' time goes per step (traced kernels; bench/gpu_phase_profile.py)
stage phase_profile 45 "$OUTDIR/phase_profile.log" "$PY" bench/gpu_phase_profile.py --out "$OUTDIR" --reps 3

# ---- 6. compute-sanitizer on a small case
CASE=$(mktemp /tmp/fastlstm_sanitize_case.XXXXXX.py)
export CASE
cat >"$CASE" <<'EOF'
# Small forward + backward runs through the NumPy path (no CuPy, no torch): every kernel, both
# kernel paths (simt: both batch tilings, B <= 4 and B > 4 with two row tiles; persistent:
# one and several batch chunks, several units per block, rows staged in several passes),
# lengths with zeros, reverse, fp32/fp64. In fp32 the backward's dx (K = 4H deep, small grid)
# runs split-K (split_sum_kernel after simt_step_kernel); the tf32 / bf16 / tf32x3 cases' weight
# gradients split K on the tensor cores (the StepLarge tile, k-major A).
import gc, os, sys
import numpy as np
import fastlstm
from fastlstm import ops, cuda
assert fastlstm.cuda_available(), fastlstm.cuda_info()
fastlstm.cuda.set_poison(os.environ.get("FASTLSTM_POISON", "1") == "1")
rng = np.random.default_rng(0)
cases = [(4, 3, 7, 33, [4, 0, 2], True), (3, 6, 5, 17, [3, 1, 0, 2, 3, 3], False),
         (2, 17, 70, 9, None, False), (3, 5, 8, 300, [3, 2, 0, 1, 3], True),
         (2, 16, 3, 600, [2, 0, 1] + [2] * 13, True),  # staging in several passes
         (3, 1, 5, 40, [2], True)]  # one row: fp32 persistent with its weights in registers
for dtype, path in ((np.float32, "simt"), (np.float64, "simt"), (np.float32, "persistent"),
                    (np.float64, "persistent")):
    cuda.set_kernel_path(path)
    for T, B, I, H, lengths, reverse in cases:
        r = lambda *s: (rng.standard_normal(s) * 0.3).astype(dtype)
        y, h, c, saved = ops.lstm_forward(r(T, B, I), r(I, 4 * H), r(H, 4 * H), r(4 * H), r(B, H), r(B, H),
                                          lengths=lengths, reverse=reverse, backend="cuda")
        grads = ops.lstm_backward(saved, r(T, B, H), r(B, H), r(B, H))
        assert all(np.isfinite(g).all() for g in grads) and np.isfinite(y).all()
        ops.lstm_forward(r(T, B, I), r(I, 4 * H), r(H, 4 * H), None, None, None, lengths=lengths,
                         reverse=reverse, training=False, backend="cuda")
        assert cuda.info()["last_forward"].startswith(path), cuda.info()["last_forward"]
        assert cuda.info()["last_backward"].startswith(path), cuda.info()["last_backward"]
        if path == "persistent" and B == 1 and dtype == np.float32:
            assert "weights in registers" in cuda.info()["last_backward"], cuda.info()["last_backward"]
        del saved, grads
# the tagged exchange (FASTLSTM_CUDA_EXCHANGE=tagged; the persistent fp32 kernels without grid
# barriers): one chunk, several chunks with H odd, rows staged in several passes, one row
os.environ["FASTLSTM_CUDA_EXCHANGE"] = "tagged"
cuda.set_kernel_path("persistent")
for T, B, I, H, lengths, reverse in (cases[0], cases[2], cases[4], cases[5]):
    r = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)
    y, h, c, saved = ops.lstm_forward(r(T, B, I), r(I, 4 * H), r(H, 4 * H), r(4 * H), r(B, H), r(B, H),
                                      lengths=lengths, reverse=reverse, backend="cuda")
    grads = ops.lstm_backward(saved, r(T, B, H), r(B, H), r(B, H))
    assert all(np.isfinite(g).all() for g in grads) and np.isfinite(y).all()
    assert "tagged exchange" in cuda.info()["last_forward"], cuda.info()["last_forward"]
    assert "tagged exchange" in cuda.info()["last_backward"], cuda.info()["last_backward"]
    del saved, grads
del os.environ["FASTLSTM_CUDA_EXCHANGE"]
# tf32 / bf16 / tf32x3: the tensor-core GEMMs (the forward projection, the three backward
# products: every operand layout), one partial tile and one with several k passes (tf32x3, whose
# kernels differ from tf32's only in registers, the second only)
cuda.set_kernel_path("simt")
tc_cases = [(4, 3, 7, 33, [4, 0, 2], True), (3, 50, 70, 40, None, False)]
for precision, cases_p in (("tf32", tc_cases), ("bf16", tc_cases), ("tf32x3", tc_cases[1:])):
    for T, B, I, H, lengths, reverse in cases_p:
        r = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)
        y, h, c, saved = ops.lstm_forward(r(T, B, I), r(I, 4 * H), r(H, 4 * H), r(4 * H), r(B, H), r(B, H),
                                          lengths=lengths, reverse=reverse, backend="cuda", precision=precision)
        grads = ops.lstm_backward(saved, r(T, B, H), r(B, H), r(B, H))
        assert all(np.isfinite(g).all() for g in grads) and np.isfinite(y).all()
        assert "tensor cores" in cuda.info()["last_backward"], cuda.info()["last_backward"]
        del saved, grads
# tc-gemm-v2 (opt-in: FASTLSTM_CUDA_GEMM_PIPELINE=1): the cp.async ring, in the large products
# (simt path: x, kernel and dz rows of whole 16-byte vectors) and the k-sliced step products
# (tensor path), tf32 and tf32x3; bf16 from bf16 copies of the operands (of R and h / dz on the
# tensor path)
os.environ["FASTLSTM_CUDA_GEMM_PIPELINE"] = "1"
for precision, path, (T, B, I, H) in (("tf32", "simt", (3, 48, 72, 40)), ("tf32", "tensor", (3, 40, 12, 16)),
                                      ("tf32x3", "simt", (3, 48, 72, 40)), ("tf32x3", "tensor", (3, 40, 12, 16)),
                                      ("bf16", "simt", (3, 48, 72, 40)), ("bf16", "tensor", (3, 40, 12, 16))):
    cuda.set_kernel_path(path)
    r = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)
    y, h, c, saved = ops.lstm_forward(r(T, B, I), r(I, 4 * H), r(H, 4 * H), r(4 * H), r(B, H), r(B, H),
                                      backend="cuda", precision=precision)
    grads = ops.lstm_backward(saved, r(T, B, H), r(B, H), r(B, H))
    assert all(np.isfinite(g).all() for g in grads) and np.isfinite(y).all()
    assert "cp.async" in cuda.info()["last_forward"], cuda.info()["last_forward"]
    del saved, grads
os.environ.pop("FASTLSTM_CUDA_GEMM_PIPELINE")
# kernel path "tiled": the split-k SIMT step products (64 x 128 tiles at B <= 64, 128 x 128
# above; K = 4H = 600 and H = 300 split into several k slices, the last one shorter), lengths
# with zeros, reverse
cuda.set_kernel_path("tiled")
for T, B, I, H, lengths, reverse in ((3, 5, 8, 300, [3, 2, 0, 1, 3], True), (2, 70, 9, 150, None, False)):
    r = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)
    y, h, c, saved = ops.lstm_forward(r(T, B, I), r(I, 4 * H), r(H, 4 * H), r(4 * H), r(B, H), r(B, H),
                                      lengths=lengths, reverse=reverse, backend="cuda")
    grads = ops.lstm_backward(saved, r(T, B, H), r(B, H), r(B, H))
    assert all(np.isfinite(g).all() for g in grads) and np.isfinite(y).all()
    assert cuda.info()["last_backward"].startswith("tiled recurrent backward"), cuda.info()["last_backward"]
    del saved, grads
cuda.set_kernel_path("simt")
# fp32: the 128 x 128 SIMT GEMM (the LSTM cases above are too small for it: it runs only when
# its grid fills the device once), alone, every operand layout, edge tiles, several k passes
from fastlstm import _cuda
sms = fastlstm.cuda_info()["sm_count"]
side = 128 * int(np.ceil(np.sqrt(sms))) + 5
for a_t in (False, True):
    for b_t in (False, True):
        M = N = side
        K = 21
        A = rng.standard_normal((M, K)).astype(np.float32)
        B = rng.standard_normal((K, N)).astype(np.float32)
        a = np.ascontiguousarray(A.T if a_t else A)
        b = np.ascontiguousarray(B.T if b_t else B)
        sam, sak = (1, M) if a_t else (K, 1)
        sbk, sbn = (1, K) if b_t else (N, 1)
        bufs = [_cuda.Buffer(v.nbytes, 0) for v in (a, b)] + [_cuda.Buffer(M * N * 4, 0)]
        bufs[0].upload(a)
        bufs[1].upload(b)
        ran = _cuda.matmul("fp32", M, N, K, bufs[0].ptr, sam, sak, bufs[1].ptr, sbk, sbn, 0, bufs[2].ptr, N, 0, 0)
        assert ran == "simt gemm (fp32, 128x128)", ran
        c = np.empty((M, N), np.float32)
        bufs[2].download(c)
        _cuda.synchronize(0, 0)
        err = np.linalg.norm(c - A.astype(np.float64) @ B) / np.linalg.norm(A.astype(np.float64) @ B)
        assert err < 2e-6, err
        del bufs
gc.collect()
print("sanitizer case ok")
EOF
if command -v compute-sanitizer >/dev/null 2>&1; then
  sanitize() {
    local rc=0
    for tool in memcheck racecheck synccheck; do
      echo "--- compute-sanitizer --tool $tool"
      compute-sanitizer --tool "$tool" --error-exitcode 3 "$PY" "$CASE" || rc=$?
    done
    return $rc
  }
  stage sanitizer 110 "$OUTDIR/sanitizer.log" sanitize
else
  SUMMARY+=("sanitizer: SKIPPED (compute-sanitizer not found)")
  log "compute-sanitizer not found: sanitizer stage skipped"
fi

# ---- 7. initcheck (reads of never-written device memory; poisoning off) if time is left
if command -v compute-sanitizer >/dev/null 2>&1 && [ "$(left)" -gt 60 ]; then
  stage initcheck 50 "$OUTDIR/initcheck.log" env FASTLSTM_POISON=0 \
    compute-sanitizer --tool initcheck --error-exitcode 3 "$PY" "$CASE"
  cat "$OUTDIR/initcheck.log" >>"$OUTDIR/sanitizer.log" 2>/dev/null
  rm -f "$OUTDIR/initcheck.log"
fi
rm -f "$CASE"
# ---- 8. what the A/B tables say about the switches waiting for a measurement (bench/gpu_decide.py)
stage decide 15 "$OUTDIR/decide.log" "$PY" bench/gpu_decide.py "$OUTDIR"
# at most 8 files come back from $OUT: fold the small logs into gpu_check.log (already there)
rm -f "$OUTDIR/environment.log" "$OUTDIR/import.log" "$OUTDIR/kernels.log" "$OUTDIR/build.log" \
  "$OUTDIR/persistent_ab.log" "$OUTDIR/phase_profile.log" "$OUTDIR/gpu_bench.log" "$OUTDIR/gemm_ab.log" \
  "$OUTDIR/sanitizer.log" "$OUTDIR/decide.log"

log ""
log "=== summary ($(($(date +%s) - T0))s, logs in $OUTDIR) ==="
FAILED=0
for line in "${SUMMARY[@]}"; do
  log "  $line"
  case "$line" in *FAILED* | *"TIMED OUT"*) FAILED=1 ;; esac
done
if [ -f "$OUTDIR/gpu_bench.md" ]; then
  log ""
  cat "$OUTDIR/gpu_bench.md" | tee -a "$LOG"
fi
exit $FAILED
