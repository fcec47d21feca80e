"""The tensor-core GEMM with and without its cp.async pipeline (tc-gemm-v2), against cuBLAS.

    python bench/gpu_gemm_ab.py [--out DIR] [--reps 7]

Part 1, the GEMM alone (`fastlstm._cuda.matmul`) at the shapes of the LSTM's large products
for T = 100, B = 256, I = H = 1024 (projection x . kernel, dkernel = x^T . dz, dx = dz . kernel^T)
and the projection at B = 64: fastlstm tf32, tf32x3 and bf16, each with the default kernel
(tc_gemm_kernel: one pass staged through registers) and the pipelined one
(FASTLSTM_CUDA_GEMM_PIPELINE=1: three passes in flight by cp.async; bf16: from bf16 copies of
both operands, the conversions inside the timing), beside torch.matmul (cuBLAS) in tf32, in
strict fp32 and in bf16 (on bf16 tensors) on the same operands, and fastlstm's fp32 SIMT GEMM
beside cuBLAS fp32 (its efficiency was never measured alone). Milliseconds and TFLOP/s
(2MNK / t).
Part 2, the tensor path's per-step recurrent products alone (`_cuda.step_matmul`, 100 back to
back as the step loop launches them, k-slice plan for the card) at B = 64 / 256, H = 1024,
forward (h . R) and backward (dz . R^T), tf32 / tf32x3 pipeline off / on, bf16 the default
kernel only (its pipelined step products need the bf16 copies the LSTM makes), and fp32 on the
CUDA cores (kernel path "tiled"'s split-k SIMT product, precision "fp32" of step_matmul; also
at other k per slice than its plan's, to tune tiled_plan): microseconds per step, to set against the recurrence's whole time per step in part 3.
Part 3, split-K (split-k-v1) on and off (FASTLSTM_CUDA_GEMM_SPLITK=0) beside cuBLAS in the same
mode, at the small batches' narrow / tall-K products (dx at B = 1, dkernel and dx at B = 16,
H = 512): fp32 (the SIMT GEMM), and tf32 / bf16 (the tensor-core GEMM).
Part 4, the LSTM in tf32 and in bf16 on kernel path auto (the tensor-core recurrence at these
shapes), forward (training=False) and forward + backward, pipeline off / on (bf16: the step
products then read bf16 copies of R and h / dz, and the large products bf16 copies of their
operands, the conversions and workspaces timed with them), beside cuDNN in the same mode; the
I = 16 rows put a number on the recurrence alone (the projection is ~1% of the I = 1024 one).
Before timing, the pipelined results must equal the default kernel's bit for bit (same tiles,
fragments, k order: only the staging differs); a mismatch is reported and that row not timed.
Medians (min-max) of CUDA-event timings, contenders interleaved round-robin. With --out,
writes gpu_gemm_ab.md (the tables, then the rows as JSON), rewritten after each row so that a
run cut short keeps what it measured.
"""
import argparse
import json
import os
import sys

import numpy as np

from gpu_timing import env, timed  # bench/ is the script's folder

PIPE = "FASTLSTM_CUDA_GEMM_PIPELINE"
# (name, M, N, K, layout): layout "nn" A (M, K) and B (K, N) row-major; "tn" A stored (K, M);
# "nt" B stored (N, K) (the three products of fastlstm's forward / backward)
GEMMS = [("projection B=256", 25600, 4096, 1024, "nn"), ("dkernel B=256", 1024, 4096, 25600, "tn"),
         ("dx B=256", 25600, 1024, 4096, "nt"), ("projection B=64", 6400, 4096, 1024, "nn")]
# (T, B, I, H, precision): tf32 (the pipelined GEMMs) and bf16 (the step products from bf16
# copies of R and h / dz, pipelined)
LSTMS = [(100, 64, 1024, 1024, "tf32"), (100, 256, 1024, 1024, "tf32"), (100, 256, 16, 1024, "tf32"),
         (100, 64, 1024, 1024, "bf16"), (100, 256, 1024, 1024, "bf16"), (100, 256, 16, 1024, "bf16")]
# the tensor path's per-step products alone, 100 back to back (`_cuda.step_matmul`): (B, H, kind);
# "fwd" h . R (M = B, N = 4H, K = H), "bwd" dz . R^T (M = B, N = H, K = 4H, R read by strides)
PRECS = ("tf32", "tf32x3", "bf16")  # bf16 pipelined: both operands converted to bf16 copies first (timed)
STEPS = [(64, 1024, "fwd"), (256, 1024, "fwd"), (64, 1024, "bwd"), (256, 1024, "bwd")]
STEP_REPEAT = 100
# fp32 split-K (split-k-v1) on / off (FASTLSTM_CUDA_GEMM_SPLITK=0) beside cuBLAS fp32: the small
# batches' narrow or tall-K products, whose 128 x 128 grid is smaller than the card
SPLITS = [("dx B=1 H=1024", 100, 1024, 4096, "nt", "fp32"), ("dx B=1 H=256", 100, 256, 1024, "nt", "fp32"),
          ("dkernel B=16 H=512", 512, 2048, 1600, "tn", "fp32"), ("dx B=16 H=512", 1600, 512, 2048, "nt", "fp32"),
          ("dx B=1 H=1024", 100, 1024, 4096, "nt", "tf32"), ("dkernel B=16 H=512", 512, 2048, 1600, "tn", "tf32"),
          ("dx B=1 H=1024", 100, 1024, 4096, "nt", "bf16")]
SPLIT_ERR = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 2e-2}  # a product further from float64 is not timed
TILED_KSLICES = (64, 128, 256, 512, 1024)  # the fp32 tiled product also at these k per slice (< K, <= 32 slices)


def pipeline(on):
    """Inside the block, the tensor-core GEMMs are pipelined (True) or not."""
    return env(PIPE, "1" if on else "0")


def split_k(on):
    """Inside the block, the fp32 GEMM may split K (True: the default) or not."""
    return env("FASTLSTM_CUDA_GEMM_SPLITK", None if on else "0")


def operands(M, N, K, layout, seed, torch):
    """A (M, K), B (K, N) on the card, stored as layout says ("t": transposed), with the strides
    fastlstm's matmul takes: (A, B, a, b, sam, sak, sbk, sbn)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    A = torch.randn(M, K, device="cuda", generator=g)
    B = torch.randn(K, N, device="cuda", generator=g)
    a = A.t().contiguous() if layout[0] == "t" else A
    b = B.t().contiguous() if layout[1] == "t" else B
    sam, sak = (1, M) if layout[0] == "t" else (K, 1)
    sbk, sbn = (1, K) if layout[1] == "t" else (N, 1)
    return A, B, a, b, sam, sak, sbk, sbn


def gemm_row(spec, reps, torch, _cuda):
    name, M, N, K, layout = spec
    A, B, a, b, sam, sak, sbk, sbn = operands(M, N, K, layout, M + N + K, torch)
    C = {key: torch.empty(M, N, device="cuda") for key in ("v1", "v2")}

    def fl(precision, on, out):
        with pipeline(on):
            return _cuda.matmul(precision, M, N, K, a.data_ptr(), sam, sak, b.data_ptr(), sbk, sbn, 0,
                                out.data_ptr(), N, torch.cuda.current_device(), 0)

    row = dict(name=name, shape=[M, N, K], layout=layout)
    for precision in PRECS:
        ran = [fl(precision, False, C["v1"]), fl(precision, True, C["v2"])]
        torch.cuda.synchronize()
        row[f"{precision}_kernels"] = ran
        same = bool(torch.equal(C["v1"].view(torch.int32), C["v2"].view(torch.int32)))
        row[f"{precision}_bitwise_equal"] = same
        if not same or "cp.async" not in ran[1]:
            print(name, precision, "NOT COMPARED:", ran, "bitwise equal" if same else "results differ", flush=True)
    exact = A.double() @ B.double()
    for precision in PRECS:
        fl(precision, True, C["v2"])
        torch.cuda.synchronize()
        row[f"{precision}_err"] = float((C["v2"].double() - exact).norm() / exact.norm())

    def cublas(tf32):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        return torch.matmul(A, B)

    Ab, Bb = A.bfloat16(), B.bfloat16()
    contenders = {}
    for precision in PRECS:
        if row[f"{precision}_bitwise_equal"] and "cp.async" in row[f"{precision}_kernels"][1]:
            contenders[f"{precision}_v1"] = (lambda p=precision: fl(p, False, C["v1"]))
            contenders[f"{precision}_v2"] = (lambda p=precision: fl(p, True, C["v2"]))
    row["fp32_kernel"] = fl("fp32", False, C["v1"])  # fastlstm's fp32 SIMT GEMM, beside cuBLAS fp32
    contenders["fp32_simt"] = lambda: fl("fp32", False, C["v1"])
    contenders["cublas_tf32"] = lambda: cublas(True)
    contenders["cublas_fp32"] = lambda: cublas(False)
    contenders["cublas_bf16"] = lambda: torch.matmul(Ab, Bb)  # bf16 inputs, no conversion timed
    row.update(timed(contenders, reps, torch))
    torch.backends.cuda.matmul.allow_tf32 = False
    flop = 2.0 * M * N * K
    print(name, {k: f"{v[0]:.3f} ms {flop / v[0] / 1e9:.0f} TF/s" for k, v in row.items()
                 if isinstance(v, list) and len(v) == 3 and isinstance(v[0], float)}, flush=True)
    return row


def split_row(spec, reps, torch, _cuda):
    name, M, N, K, layout, precision = spec
    A, B, a, b, sam, sak, sbk, sbn = operands(M, N, K, layout, M + N + K + 1, torch)
    C = torch.empty(M, N, device="cuda")

    def fl(on):
        with split_k(on):
            return _cuda.matmul(precision, M, N, K, a.data_ptr(), sam, sak, b.data_ptr(), sbk, sbn, 0, C.data_ptr(),
                                N, torch.cuda.current_device(), 0)

    row = dict(name=f"{name} {precision}", shape=[M, N, K], layout=layout, precision=precision)
    exact = A.double() @ B.double()
    for on in (True, False):
        row[f"kernel_{'on' if on else 'off'}"] = fl(on)
        torch.cuda.synchronize()
        row[f"err_{'on' if on else 'off'}"] = float((C.double() - exact).norm() / exact.norm())
    if not all(row[k] <= SPLIT_ERR[precision] for k in ("err_on", "err_off")):  # (False for NaN): not timed
        row["error"] = f"error against float64: on {row['err_on']:.2e}, off {row['err_off']:.2e}"
        print(name, "NOT TIMED:", row["error"], flush=True)
        return row
    # cuBLAS in the same mode: strict fp32, TF32 allowed, or bf16 tensors (no conversion timed)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    Ab, Bb = (A.bfloat16(), B.bfloat16()) if precision == "bf16" else (A, B)
    row.update(timed({"on": lambda: fl(True), "off": lambda: fl(False), "cublas": lambda: torch.matmul(Ab, Bb)},
                     reps, torch))
    torch.backends.cuda.matmul.allow_tf32 = False
    print(row["name"], row["kernel_on"], {k: round(row[k][0], 4) for k in ("on", "off", "cublas")}, flush=True)
    return row


def step_row(spec, reps, torch, _cuda):
    B, H, kind = spec
    G = 4 * H
    M, N, K = (B, G, H) if kind == "fwd" else (B, H, G)
    g = torch.Generator(device="cuda").manual_seed(B + H)
    A = torch.randn(M, K, device="cuda", generator=g)
    R = torch.randn(H, G, device="cuda", generator=g) / H ** 0.5
    sbk, sbn = (G, 1) if kind == "fwd" else (1, G)  # B(k, n) = R[k, n] / R[n, k]
    C = torch.empty(32 * M * N, device="cuda")  # room for the most k slices (tiled: 32, tensor: 16)
    dev = torch.cuda.current_device()

    def run(precision, on, repeat, kslice=0):
        with pipeline(on):
            return _cuda.step_matmul(precision, M, N, K, A.data_ptr(), K, 1, R.data_ptr(), sbk, sbn, C.data_ptr(),
                                     C.numel(), repeat, dev, 0, kslice)

    row = dict(name=f"step {kind} B={B} H={H}", shape=[M, N, K])
    contenders = {}
    for precision in ("tf32", "bf16", "tf32x3"):
        row[f"{precision}_plan"] = [run(precision, False, 1), run(precision, True, 1)]
        contenders[f"{precision}_v1"] = (lambda p=precision: run(p, False, STEP_REPEAT))
        if "cp.async" in row[f"{precision}_plan"][1]:
            contenders[f"{precision}_v2"] = (lambda p=precision: run(p, True, STEP_REPEAT))
    row["fp32_plan"] = run("fp32", False, 1)  # kernel path "tiled": fp32 on the CUDA cores
    contenders["fp32_tiled"] = lambda: run("fp32", False, STEP_REPEAT)
    # other slicings than the plan's (tiled_plan's constants: kTiledMinSliceK, two blocks per SM)
    row["fp32_kslices"] = [ks for ks in TILED_KSLICES if K // 32 <= ks < K]
    for ks in row["fp32_kslices"]:
        contenders[f"fp32_k{ks}"] = (lambda ks=ks: run("fp32", False, STEP_REPEAT, ks))
    torch.cuda.synchronize()
    row.update(timed(contenders, reps, torch))
    print(row["name"], row["tf32_plan"][1], {k: f"{v[0] * 1000 / STEP_REPEAT:.1f} us/step" for k, v in row.items()
                                            if k in contenders}, flush=True)
    return row


def lstm_row(cfg, reps, cp, torch, fastlstm, ops):
    T, B, I, H, precision = cfg
    rng = np.random.default_rng(T + B + I + H)
    r = lambda *s: cp.asarray(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    w = lambda *s: cp.asarray(rng.uniform(-1, 1, s).astype(np.float32) / np.float32(np.sqrt(H)))  # noqa: E731
    x, k, rk, bias, h0, c0 = r(T, B, I), w(I, 4 * H), w(H, 4 * H), w(4 * H), r(B, H), r(B, H)
    dy = r(T, B, H)

    def fwd(on):
        with pipeline(on):
            return ops.lstm_forward(x, k, rk, bias, h0, c0, backend="cuda", training=False, precision=precision)

    def both(on):
        with pipeline(on):
            y, hn, cn, saved = ops.lstm_forward(x, k, rk, bias, h0, c0, backend="cuda", precision=precision)
            return (y, hn, cn), ops.lstm_backward(saved, dy)

    row = dict(config=[T, B, I, H], precision=precision)
    o1, g1 = both(False)
    row["kernels_v1"] = [fastlstm.cuda_info()["last_forward"], fastlstm.cuda_info()["last_backward"]]
    o2, g2 = both(True)
    row["kernels_v2"] = [fastlstm.cuda_info()["last_forward"], fastlstm.cuda_info()["last_backward"]]
    pairs = list(zip(o1, o2)) + [(a, b) for a, b in zip(g1, g2) if a is not None]
    row["bitwise_equal"] = all(bool(cp.array_equal(a.view(cp.int32), b.view(cp.int32))) for a, b in pairs)
    if not row["bitwise_equal"]:
        print(cfg, "pipelined LSTM differs from the default kernels: not timed", flush=True)
        return row
    # cuDNN in the same mode: TF32 allowed, or module and inputs in bfloat16
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    lstm = torch.nn.LSTM(I, H).cuda().to(dt)
    tx = torch.randn(T, B, I, device="cuda", dtype=dt)
    tdy = torch.randn(T, B, H, device="cuda", dtype=dt)

    def cudnn_fwd():
        with torch.no_grad():
            return lstm(tx)

    def cudnn_both():
        y, _ = lstm(tx.detach().requires_grad_(True))
        y.backward(tdy)
        return y

    contenders = {"v1_fwd": lambda: fwd(False), "v2_fwd": lambda: fwd(True), "cudnn_fwd": cudnn_fwd,
                  "v1_both": lambda: both(False), "v2_both": lambda: both(True), "cudnn_both": cudnn_both}
    row.update(timed(contenders, reps, torch))
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    print(cfg, {n: round(v[0], 3) for n, v in row.items() if n in contenders}, flush=True)
    return row


def emit(grows, srows, lrows, torch, out, final, prows=()):
    """The tables so far (printed when final), written to out/gpu_gemm_ab.md with the rows as JSON."""
    m = lambda v: f"{v[0]:.3f} ({v[1]:.3f}-{v[2]:.3f})"  # noqa: E731

    def kinds(ran):  # which recurrent kernels ran, and whether their GEMMs were pipelined
        return " / ".join(d.split(" (")[0] + (" + cp.async" if "wmma + cp.async" in d else "") for d in ran)

    lines = ["| product | M, N, K | tf32 default | tf32 pipelined | v1/v2 | tf32x3 default | tf32x3 pipelined | "
             "v1/v2 | bf16 default | bf16 pipelined (with its conversions) | v1/v2 | cuBLAS tf32 | cuBLAS fp32 | "
             "cuBLAS bf16 | TFLOP/s: tf32 v1 / v2 / cuBLAS, bf16 v1 / v2 / cuBLAS | error tf32 / tf32x3 / bf16 | "
             "fastlstm fp32 (SIMT; kernel) | TFLOP/s: fp32 fastlstm / cuBLAS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in grows:
        if "cublas_tf32" not in row:
            lines.append(f"| {row['name']} | FAILED: {row.get('error', '?')} |")
            continue
        flop = 2.0 * np.prod(row["shape"])
        cell = lambda key: m(row[key]) if key in row else "not compared"  # noqa: E731
        ratio = lambda p: (f"{row[p + '_v1'][0] / row[p + '_v2'][0]:.2f}x" if p + "_v2" in row else "-")  # noqa: E731
        tf = lambda key: f"{flop / row[key][0] / 1e9:.0f}" if key in row else "-"  # noqa: E731
        lines.append(f"| {row['name']} | {', '.join(map(str, row['shape']))} | {cell('tf32_v1')} | "
                     f"{cell('tf32_v2')} | {ratio('tf32')} | {cell('tf32x3_v1')} | {cell('tf32x3_v2')} | "
                     f"{ratio('tf32x3')} | {cell('bf16_v1')} | {cell('bf16_v2')} | {ratio('bf16')} | "
                     f"{m(row['cublas_tf32'])} | {m(row['cublas_fp32'])} | {m(row['cublas_bf16'])} | "
                     f"{tf('tf32_v1')} / {tf('tf32_v2')} / {tf('cublas_tf32')}, "
                     f"{tf('bf16_v1')} / {tf('bf16_v2')} / {tf('cublas_bf16')} | "
                     f"{row['tf32_err']:.1e} / {row['tf32x3_err']:.1e} / {row['bf16_err']:.1e} | "
                     f"{cell('fp32_simt')}; {row.get('fp32_kernel', '-')} | {tf('fp32_simt')} / {tf('cublas_fp32')} |")
    lines += ["", f"| per-step product ({STEP_REPEAT} back to back), us per step | M, N, K | plan (pipelined) | "
              "tf32 default | tf32 pipelined | bf16 (default only) | tf32x3 default | tf32x3 pipelined | "
              "fp32 tiled (simt split-k; plan) | TFLOP/s fp32 tiled | fp32 tiled by k per slice: us per step |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in srows:
        if "tf32_v1" not in row:
            lines.append(f"| {row['name']} | FAILED: {row.get('error', '?')} |")
            continue
        us = lambda key: (f"{row[key][0] * 1000 / STEP_REPEAT:.1f} ({row[key][1] * 1000 / STEP_REPEAT:.1f}-"  # noqa: E731
                          f"{row[key][2] * 1000 / STEP_REPEAT:.1f})" if key in row else "-")
        lines.append(f"| {row['name']} | {', '.join(map(str, row['shape']))} | {row['tf32_plan'][1]} | "
                     f"{us('tf32_v1')} | {us('tf32_v2')} | {us('bf16_v1')} | {us('tf32x3_v1')} | {us('tf32x3_v2')} | "
                     f"{us('fp32_tiled')}; {row.get('fp32_plan', '-')} | "
                     + (f"{2.0 * np.prod(row['shape']) * STEP_REPEAT / row['fp32_tiled'][0] / 1e9:.1f} |"
                        if "fp32_tiled" in row else "- |")
                     + " " + (", ".join(f"{ks}: {us('fp32_k' + str(ks)).split(' ')[0]}" for ks in row.get("fp32_kslices", ())
                                        if "fp32_k" + str(ks) in row) or "-") + " |")
    lines += ["", "| product (split-K), us | M, N, K | split-K on | off (FASTLSTM_CUDA_GEMM_SPLITK=0) | off / on | "
              "cuBLAS (same mode) | TFLOP/s on / off / cuBLAS | kernel on | error on / off |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in prows:
        if "on" not in row:
            lines.append(f"| {row['name']} | FAILED: {row.get('error', '?')} |")
            continue
        flop = 2.0 * np.prod(row["shape"])
        u = lambda v: f"{v[0] * 1000:.1f} ({v[1] * 1000:.1f}-{v[2] * 1000:.1f})"  # noqa: E731
        lines.append(f"| {row['name']} | {', '.join(map(str, row['shape']))} | {u(row['on'])} | {u(row['off'])} | "
                     f"{row['off'][0] / row['on'][0]:.2f}x | {u(row['cublas'])} | "
                     f"{flop / row['on'][0] / 1e9:.1f} / {flop / row['off'][0] / 1e9:.1f} / "
                     f"{flop / row['cublas'][0] / 1e9:.1f} | {row['kernel_on']} | "
                     f"{row['err_on']:.1e} / {row['err_off']:.1e} |")
    lines += ["", "| T, B, I, H | precision | fwd default | fwd pipelined | cuDNN fwd (same mode) | cuDNN / pipelined | "
              "fwd+bwd default | fwd+bwd pipelined | cuDNN fwd+bwd | cuDNN / pipelined | kernels (pipelined) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in lrows:
        if "v2_fwd" not in row:
            lines.append(f"| {', '.join(map(str, row['config']))} | {row.get('precision', '')} | "
                         f"{row.get('error', 'pipelined results differ from the default kernels')} |")
            continue
        lines.append(f"| {', '.join(map(str, row['config']))} | {row['precision']} | {m(row['v1_fwd'])} | {m(row['v2_fwd'])} | "
                     f"{m(row['cudnn_fwd'])} | {row['cudnn_fwd'][0] / row['v2_fwd'][0]:.2f}x | {m(row['v1_both'])} | "
                     f"{m(row['v2_both'])} | {m(row['cudnn_both'])} | {row['cudnn_both'][0] / row['v2_both'][0]:.2f}x | "
                     f"{kinds(row['kernels_v2'])} |")
    table = "\n".join(lines)
    head = (f"tc-gemm-v2 (cp.async pipeline) against the default tensor-core GEMM and cuBLAS / cuDNN on "
            f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}; "
            "milliseconds, median (min-max) of CUDA-event timings, runs interleaved")
    if final:
        print(head + "\n\n" + table)
    if out:
        with open(os.path.join(out, "gpu_gemm_ab.md"), "w") as f:
            f.write(head + "\n\n" + table + "\n\n```json\n" +
                    json.dumps(dict(gemm=grows, step=srows, split=list(prows), lstm=lrows), indent=1, default=str) +
                    "\n```\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--reps", type=int, default=7, help="timed runs per contender (at least 1)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps: expected a positive number of runs, got {args.reps}")
    import cupy as cp
    import torch
    import fastlstm
    from fastlstm import _cuda, ops

    grows, srows, lrows, prows = [], [], [], []
    done = lambda: emit(grows, srows, lrows, torch, args.out, final=False, prows=prows)  # noqa: E731
    def collect(rows, specs, run, failed):
        """rows += run(spec) for each spec; a failure is reported and recorded as failed(spec) +
        its error, and the next one runs (GPU time is short); the tables are rewritten each time."""
        for spec in specs:
            try:
                rows.append(run(spec))
            except Exception as e:
                print(spec, "FAILED", type(e).__name__, e, flush=True)
                rows.append(dict(failed(spec), error=f"{type(e).__name__}: {e}"))
            done()

    collect(grows, GEMMS, lambda spec: gemm_row(spec, args.reps, torch, _cuda), lambda spec: dict(name=spec[0]))
    collect(srows, STEPS, lambda spec: step_row(spec, args.reps, torch, _cuda),
            lambda spec: dict(name=f"step {spec[2]} B={spec[0]} H={spec[1]}"))
    collect(prows, SPLITS, lambda spec: split_row(spec, args.reps, torch, _cuda),
            lambda spec: dict(name=f"{spec[0]} {spec[5]}"))
    collect(lrows, LSTMS, lambda cfg: lstm_row(cfg, max(3, args.reps - 2), cp, torch, fastlstm, ops),
            lambda cfg: dict(config=list(cfg[:4]), precision=cfg[4]))
    emit(grows, srows, lrows, torch, args.out, final=True, prows=prows)

    failed = (any("cublas_tf32" not in r for r in grows) or any("tf32_v1" not in r for r in srows)
              or any("v2_fwd" not in r for r in lrows) or any("on" not in r for r in prows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
