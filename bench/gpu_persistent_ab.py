"""The persistent kernels and the tiled path against the per-step (simt) kernels and cuDNN fp32, on one GPU.

    python bench/gpu_persistent_ab.py [--out DIR] [--reps 10]

First, short sequences (SHORT_CONFIGS, T in SHORT_STEPS): persistent and simt forced, forward and
forward + backward, each path's time per call fitted as fixed + per step x T (the persistent
kernels' fixed cost against their per-step cost, and the T from which auto's persistent choice
pays). Then, for each configuration: fastlstm fp32 forward (training=False) and forward + backward with the
kernel path forced to "persistent" and to "simt", the persistent kernels also with their
staging ahead switched off (FASTLSTM_CUDA_STAGE_AHEAD=0; it only acts where a step has several
batch chunks, B > 16), and, for B <= 64, with the tagged exchange (FASTLSTM_CUDA_EXCHANGE=tagged:
h / dz through tagged words instead of grid barriers; checked bitwise against the barrier
kernels before it is timed), where they act with the weights in shared memory
(FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS=0; one row per chunk) and with the backward's gate inputs loaded in
their step (FASTLSTM_CUDA_INPUTS_AHEAD=0; B * units per block <= 256) and, from B = 8, with the
rows staged through registers instead of by cp.async (FASTLSTM_CUDA_STAGE_ASYNC=0) and with each
staging element's row and index divided out instead of walked (FASTLSTM_CUDA_STAGE_WALK=0), and,
where the kernels run it, without session 19's product (FASTLSTM_CUDA_BLOCKED_PRODUCT=0: one column
per thread and the partial sums added in shared memory) (these five checked bitwise against the
defaults first), for B >= 32 also kernel path "tiled" (each step's recurrent product as
an fp32 split-k GEMM on the CUDA cores, then a pointwise kernel; never chosen by auto until
measured), and torch.nn.LSTM (cuDNN, strict fp32) on the same inputs, all on CuPy / torch
device arrays (no host copies in the timed region). Medians (with min and max) of CUDA-event
timings, runs interleaved round-robin across the contenders so that a slow phase of the card
hits all of them. Before timing, the persistent and tiled results are checked against the simt
ones (float32 tolerance): a wrong kernel is not timed. Prints a markdown table; with --out,
writes gpu_persistent_ab.md and .json there, rewritten after each configuration so that a run
cut short keeps what it measured. Used to set `auto`'s batch limit for the persistent kernels
(kPersistentAutoMaxRows in csrc/cuda/lstm_impl.cuh) and whether auto should take "tiled".
"""
import argparse
import contextlib
import json
import os
import sys

import numpy as np

from gpu_timing import env, timed  # bench/ is the script's folder

# the H = 1024 rows first (never measured after the staging change; tiled at B = 64), B = 1 early
# (the tagged exchange's and the weights in registers' case: latency-bound steps); B = 256 last
# (the slowest row: a run cut short by the stage's time limit loses it, not the small batches)
CONFIGS = [(100, 16, 1024, 1024), (100, 1, 1024, 1024), (100, 64, 1024, 1024), (100, 1, 256, 256),
           (100, 8, 512, 512), (100, 16, 512, 512), (100, 32, 512, 512), (100, 64, 512, 512),
           (1000, 32, 256, 256), (100, 256, 1024, 1024)]
# Short sequences, T swept at fixed B, I, H (first: cheap, a few seconds): each path's cost per
# call fitted as fixed + per step x T, separating the persistent kernels' fixed cost (cooperative
# launch, weights loaded on chip) from their per-step cost (grid barrier included: NOTES_GPU
# lever 4), and the smallest T from which they beat the per-step kernels (auto ignores T today:
# kPersistentAutoMinSteps in csrc/cuda/lstm_impl.cuh is 1).
SHORT_CONFIGS = [(1, 1024, 1024), (1, 256, 256), (16, 512, 512), (16, 1024, 1024)]  # (B, I, H)
SHORT_STEPS = (1, 2, 4, 16, 64)
LOAD_SWITCHES_MAX_ROWS = 64  # session 15's load switches are timed up to this batch (auto's persistent range)
TILED_MIN_ROWS = 32  # tiled is timed from this batch up
TAGGED_MAX_ROWS = 64  # the tagged exchange is timed up to this batch (auto's persistent range)


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def stage_ahead(on):
    """Inside the block, the persistent kernels stage ahead (True: the default) or not."""
    return env("FASTLSTM_CUDA_STAGE_AHEAD", None if on else "0")


def pairs(first, second):
    """The arrays of two fl_both results (y, grads), paired (a gradient that is None skipped)."""
    return [(a, b) for a, b in zip((first[0],) + tuple(first[1]), (second[0],) + tuple(second[1]))
            if a is not None]


def bitwise_same(cp, first, second):
    """Per array of two fl_both results (y, grads): whether they are the same bits."""
    return [bool((cp.asarray(a).view(cp.uint32) == cp.asarray(b).view(cp.uint32)).all())
            for a, b in pairs(first, second)]


def max_rel(cp, got, want):
    """(the largest, or NaN where any is not finite; every one) relative error of fl_both
    result `got` against `want`, array by array."""
    errs = [rel(cp.asnumpy(a), cp.asnumpy(b)) for a, b in pairs(got, want)]
    return (max(errs) if np.isfinite(errs).all() else float("nan")), errs


def lstm_inputs(cp, seed, T, B, I, H):
    """x, kernel, recurrent_kernel, bias, h0, c0, dy, dh_n, dc_n as float32 CuPy arrays: data
    N(0, 1), weights as torch.nn.LSTM initialises them, U(-1/sqrt(H), 1/sqrt(H)). (With N(0, 0.01)
    weights the recurrence at H = 1024 amplifies rounding (run 20261127T1205Z: persistent and
    simt 2e-5 to 6e-4 apart, and so were fastlstm's CPU float32 and float64 on the same inputs,
    2.7e-5 / 6.8e-5), which hides a wrong kernel among legitimate differences.)"""
    rng = np.random.default_rng(seed)
    r = lambda *s: cp.asarray(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    w = lambda *s: cp.asarray(rng.uniform(-1, 1, s).astype(np.float32) / np.float32(np.sqrt(H)))  # noqa: E731
    return r(T, B, I), w(I, 4 * H), w(H, 4 * H), w(4 * H), r(B, H), r(B, H), r(T, B, H), r(B, H), r(B, H)


def switch(name, on):
    """Inside the block, the persistent kernels' switch FASTLSTM_CUDA_<name> on (True: the default) or
    off ("0")."""
    return env(f"FASTLSTM_CUDA_{name}", None if on else "0")


def exchange(tagged):
    """Inside the block, the persistent kernels exchange h / dz through tagged words (True) or
    grid barriers (False)."""
    return env("FASTLSTM_CUDA_EXCHANGE", "tagged" if tagged else "barrier")


def run_config(cfg, args, cp, torch, fastlstm, fcuda, ops):
    T, B, I, H = cfg
    x, k, rk, bias, h0, c0, dy, dh, dc = lstm_inputs(cp, T + B + H, T, B, I, H)
    lstm = torch.nn.LSTM(I, H).cuda()
    tx, th, tc = torch.randn(T, B, I, device="cuda"), torch.zeros(1, B, H, device="cuda"), \
        torch.zeros(1, B, H, device="cuda")
    tdy = torch.randn(T, B, H, device="cuda")

    @contextlib.contextmanager
    def variant(path, ahead=True, tagged=False, wreg=True, prefetch=True, sasync=True, walk=True, blocked=True):
        """Inside the block, fastlstm runs kernel path `path` with these switches."""
        with fcuda.use_kernel_path(path), stage_ahead(ahead), exchange(tagged), switch("WEIGHTS_IN_REGISTERS", wreg), \
                switch("INPUTS_AHEAD", prefetch), switch("STAGE_ASYNC", sasync), switch("STAGE_WALK", walk), \
                switch("BLOCKED_PRODUCT", blocked):
            yield

    def fl_fwd(path, **switches):
        with variant(path, **switches):
            return ops.lstm_forward(x, k, rk, bias, h0, c0, backend="cuda", training=False)

    def fl_both(path, **switches):
        with variant(path, **switches):
            y, hn, cn, saved = ops.lstm_forward(x, k, rk, bias, h0, c0, backend="cuda")
            return y, ops.lstm_backward(saved, dy, dh, dc)

    def cudnn_fwd():
        with torch.no_grad():
            return lstm(tx, (th, tc))

    def cudnn_both():
        xg = tx.detach().requires_grad_(True)
        y, _ = lstm(xg, (th, tc))
        y.backward(tdy)
        return y

    row = dict(config=[T, B, I, H])
    # correctness first: persistent (and tiled from TILED_MIN_ROWS) against simt; a variant that
    # differs, or gives NaN, is not timed (the others still are)
    ys = fl_both("simt")

    def agrees(path, key):
        try:
            yv = fl_both(path)
        except RuntimeError as e:  # e.g. the persistent kernels do not fit
            print((T, B, I, H), path, "cannot run:", e, flush=True)
            row[key], row[f"error_{path}"] = float("nan"), str(e)
            return False
        row[f"kernels_{path}"] = [fastlstm.cuda_info()["last_forward"], fastlstm.cuda_info()["last_backward"]]
        row[key], errs = max_rel(cp, yv, ys)
        ok = bool(row[key] <= 1e-5)  # (False for NaN)
        if not ok:
            print((T, B, I, H), f"MISMATCH {path} vs simt ({path} not timed)", errs, flush=True)
        return ok

    persistent = agrees("persistent", "max_rel_persistent_vs_simt")
    tiled = B >= TILED_MIN_ROWS and agrees("tiled", "max_rel_tiled_vs_simt")
    tagged = False
    if persistent and B <= TAGGED_MAX_ROWS:  # the same arithmetic: bitwise the barrier kernels
        yb, yt = fl_both("persistent"), fl_both("persistent", tagged=True)
        row["kernels_tagged"] = [fastlstm.cuda_info()["last_forward"], fastlstm.cuda_info()["last_backward"]]
        same = bitwise_same(cp, yb, yt)
        tagged = all(same) and all("tagged exchange" in k for k in row["kernels_tagged"])
        row["tagged_bitwise_barrier"] = tagged
        if not tagged:
            print((T, B, I, H), "MISMATCH tagged vs barrier (tagged not timed)", same, row["kernels_tagged"], flush=True)
    contenders = {"simt_fwd": lambda: fl_fwd("simt"), "cudnn_fwd": cudnn_fwd, "simt_both": lambda: fl_both("simt"),
                  "cudnn_both": cudnn_both}
    if persistent:
        contenders["persistent_fwd"] = lambda: fl_fwd("persistent")
        contenders["persistent_both"] = lambda: fl_both("persistent")
    if tiled:
        contenders["tiled_fwd"] = lambda: fl_fwd("tiled")
        contenders["tiled_both"] = lambda: fl_both("tiled")
    if not (persistent or tiled):
        return row
    if tagged:
        contenders["tagged_fwd"] = lambda: fl_fwd("persistent", tagged=True)
        contenders["tagged_both"] = lambda: fl_both("persistent", tagged=True)
    kp = row.get("kernels_persistent", ["", ""])
    loads = persistent and B <= LOAD_SWITCHES_MAX_ROWS
    if loads:  # the load-only switches (sessions 15-16), all off: bitwise the defaults, else not timed
        yd, yo = fl_both("persistent"), fl_both("persistent", wreg=False, prefetch=False, sasync=False, walk=False,
                                                blocked=False)
        same = bitwise_same(cp, yd, yo)
        loads = row["load_switches_bitwise"] = all(same)
        if not loads:
            print((T, B, I, H), "MISMATCH load switches off vs on (their columns not timed)", same, flush=True)
    if loads and ("weights in registers" in kp[0] or "weights in registers" in kp[1]):  # one row per chunk
        contenders["wshared_fwd"] = lambda: fl_fwd("persistent", wreg=False)
        contenders["wshared_both"] = lambda: fl_both("persistent", wreg=False)
    if loads and "gate inputs prefetched" in kp[1]:  # backward only
        contenders["noprefetch_both"] = lambda: fl_both("persistent", prefetch=False)
    if loads and B >= 8 and "cp.async" in kp[1]:  # the staging takes several passes somewhere
        contenders["syncstage_fwd"] = lambda: fl_fwd("persistent", sasync=False)
        contenders["syncstage_both"] = lambda: fl_both("persistent", sasync=False)
    if loads and B >= 8:  # staging elements divided out one by one (a thread has several per step)
        contenders["divstage_fwd"] = lambda: fl_fwd("persistent", walk=False)
        contenders["divstage_both"] = lambda: fl_both("persistent", walk=False)
    if loads and any(w in k for w in ("product 2 columns", "sums added per thread") for k in kp):  # session 19
        contenders["unblocked_fwd"] = lambda: fl_fwd("persistent", blocked=False)
        contenders["unblocked_both"] = lambda: fl_both("persistent", blocked=False)
    if persistent and B > 16:  # several batch chunks per step: staging ahead acts
        contenders["noahead_fwd"] = lambda: fl_fwd("persistent", ahead=False)
        contenders["noahead_both"] = lambda: fl_both("persistent", ahead=False)
    reps = args.reps if T * B * H <= 100 * 64 * 1024 else max(3, args.reps // 2)
    row.update(timed(contenders, reps, torch))
    print((T, B, I, H), {n: round(v[0], 3) for n, v in row.items() if isinstance(v, list) and n in contenders},
          flush=True)
    return row


def fit_line(ts, ms):
    """(fixed, per step) milliseconds of the least-squares line ms = fixed + per_step * T."""
    ts, ms = np.asarray(ts, np.float64), np.asarray(ms, np.float64)
    per_step, fixed = np.polyfit(ts, ms, 1)
    return float(fixed), float(per_step)


def run_short(bih, args, cp, torch, fastlstm, fcuda, ops):
    """One SHORT_CONFIGS row: persistent and simt, forward and forward + backward, at each T of
    SHORT_STEPS (the inputs of the longest, cut to T), checked against each other first."""
    B, I, H = bih
    xs, k, rk, bias, h0, c0, dys, dh, dc = lstm_inputs(cp, B + I + H, max(SHORT_STEPS), B, I, H)
    row = dict(config=[B, I, H], steps=[])
    for T in SHORT_STEPS:
        x, dy = xs[:T], dys[:T]

        def fwd(path):
            with fcuda.use_kernel_path(path):
                return ops.lstm_forward(x, k, rk, bias, h0, c0, backend="cuda", training=False)

        def both(path):
            with fcuda.use_kernel_path(path):
                y, hn, cn, saved = ops.lstm_forward(x, k, rk, bias, h0, c0, backend="cuda")
                return y, ops.lstm_backward(saved, dy, dh, dc)

        step = dict(T=T)
        try:
            yp = both("persistent")
        except RuntimeError as e:  # e.g. the persistent kernels do not fit
            step["error"] = str(e)
            row["steps"].append(step)
            continue
        step["kernels_persistent"] = [fastlstm.cuda_info()["last_forward"], fastlstm.cuda_info()["last_backward"]]
        ys = both("simt")
        step["max_rel_persistent_vs_simt"], errs = max_rel(cp, yp, ys)
        if not step["max_rel_persistent_vs_simt"] <= 1e-5:
            print(("short", B, I, H, T), "MISMATCH persistent vs simt (not timed)", errs, flush=True)
            row["steps"].append(step)
            continue
        step.update(timed({"persistent_fwd": lambda: fwd("persistent"), "simt_fwd": lambda: fwd("simt"),
                           "persistent_both": lambda: both("persistent"), "simt_both": lambda: both("simt")},
                          args.reps, torch))
        row["steps"].append(step)
    good = [s for s in row["steps"] if "persistent_fwd" in s]
    if len(good) >= 2:  # (fixed, per step) of each contender over the timed T
        for name in ("persistent_fwd", "simt_fwd", "persistent_both", "simt_both"):
            row[f"fit_{name}"] = fit_line([s["T"] for s in good], [s[name][0] for s in good])
    print(("short", B, I, H), {s["T"]: {n: round(v[0], 3) for n, v in s.items() if isinstance(v, list) and
                                        n.endswith(("_fwd", "_both"))} for s in good}, flush=True)
    return row


def short_table(short):
    """The short sequences' table: per (B, I, H) and T, each contender's median and simt / persistent."""
    lines = ["| B, I, H | T | persistent fwd | simt fwd | simt/persistent fwd | persistent fwd+bwd | simt fwd+bwd | "
             "simt/persistent fwd+bwd |", "|---|---|---|---|---|---|---|---|"]
    for row in short:
        cfg = ", ".join(map(str, row["config"]))
        for s in row.get("steps", []):
            if "persistent_fwd" not in s:
                lines.append(f"| {cfg} | {s['T']} | NOT TIMED: " + (s.get("error") or
                             f"persistent vs simt {s.get('max_rel_persistent_vs_simt', float('nan')):.2e}") + " |")
                continue
            m = lambda n: f"{s[n][0]:.3f} ({s[n][1]:.3f}-{s[n][2]:.3f})"  # noqa: E731
            lines.append(f"| {cfg} | {s['T']} | {m('persistent_fwd')} | {m('simt_fwd')} | "
                         f"{s['simt_fwd'][0] / s['persistent_fwd'][0]:.2f}x | {m('persistent_both')} | "
                         f"{m('simt_both')} | {s['simt_both'][0] / s['persistent_both'][0]:.2f}x |")
        if "error" in row:
            lines.append(f"| {cfg} | - | FAILED: {row['error']} |")
    fits = [row for row in short if "fit_persistent_fwd" in row]
    if fits:
        lines += ["", "Fitted per call: fixed ms + per-step us x T (least squares over the timed T)", "",
                  "| B, I, H | persistent fwd | simt fwd | persistent fwd+bwd | simt fwd+bwd |", "|---|---|---|---|---|"]
        for row in fits:
            f = lambda n: f"{row['fit_' + n][0]:.3f} ms + {row['fit_' + n][1] * 1e3:.2f} us x T"  # noqa: E731
            lines.append(f"| {', '.join(map(str, row['config']))} | {f('persistent_fwd')} | {f('simt_fwd')} | "
                         f"{f('persistent_both')} | {f('simt_both')} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--reps", type=int, default=10, help="timed runs per contender (at least 1)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps: expected a positive number of runs, got {args.reps}")
    import cupy as cp
    import torch
    import fastlstm
    from fastlstm import cuda as fcuda, ops

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows, short = [], []
    for bih in SHORT_CONFIGS:
        try:
            short.append(run_short(bih, args, cp, torch, fastlstm, fcuda, ops))
        except Exception as e:  # report and go on: GPU time is short
            print(("short",) + tuple(bih), "FAILED", type(e).__name__, e, flush=True)
            short.append(dict(config=list(bih), steps=[], error=f"{type(e).__name__}: {e}"))
        emit(rows, short, torch, args.out, final=False)
    for cfg in CONFIGS:
        try:
            rows.append(run_config(cfg, args, cp, torch, fastlstm, fcuda, ops))
        except Exception as e:  # report and go on: GPU time is short
            print(cfg, "FAILED", type(e).__name__, e, flush=True)
            rows.append(dict(config=list(cfg), max_rel_persistent_vs_simt=float("nan"), error=str(e)))
        emit(rows, short, torch, args.out, final=False)
    emit(rows, short, torch, args.out, final=True)
    untimed = any("persistent_fwd" not in r for r in rows) or \
        any("persistent_fwd" not in s for row in short for s in row["steps"]) or any("error" in row for row in short)
    return 1 if untimed else 0  # (not timed or failed somewhere)


def emit(rows, short, torch, out, final):
    """The table so far (printed when final), written to out/gpu_persistent_ab.md and .json."""
    lines = ["| T, B, I, H | persistent fwd | simt fwd | cuDNN fwd | cuDNN/persistent | persistent fwd+bwd | "
             "simt fwd+bwd | cuDNN fwd+bwd | cuDNN/persistent | max rel (persistent vs simt) | "
             "staging ahead off: fwd / fwd+bwd | tiled fwd / fwd+bwd | cuDNN/tiled fwd / fwd+bwd | "
             "tagged exchange fwd / fwd+bwd | barrier/tagged fwd / fwd+bwd | cuDNN/tagged fwd / fwd+bwd | "
             "weights in shared memory: fwd / fwd+bwd (shared/registers) | gate inputs not prefetched: fwd+bwd "
             "(off/on) | staged through registers: fwd / fwd+bwd (registers/cp.async) | staging indexed per element: "
             "fwd / fwd+bwd (divided/walked) | one column per thread, sums in shared memory: fwd / fwd+bwd (off/on) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "simt_fwd" not in row:
            lines.append(f"| {', '.join(map(str, row['config']))} | NOT TIMED: "
                         + (row["error"] if "error" in row else
                            f"persistent vs simt {row.get('max_rel_persistent_vs_simt', float('nan')):.2e}, "
                            f"tiled vs simt {row.get('max_rel_tiled_vs_simt', float('nan')):.2e}") + " |")
            continue
        m = lambda n: f"{row[n][0]:.3f} ({row[n][1]:.3f}-{row[n][2]:.3f})" if n in row else "-"  # noqa: E731
        ratio = lambda a, b: f"{row[a][0] / row[b][0]:.2f}x" if a in row and b in row else "-"  # noqa: E731
        if "tiled_fwd" in row:
            tiled = (f"{m('tiled_fwd')} / {m('tiled_both')} | {row['cudnn_fwd'][0] / row['tiled_fwd'][0]:.2f}x / "
                     f"{row['cudnn_both'][0] / row['tiled_both'][0]:.2f}x |")
        elif "max_rel_tiled_vs_simt" in row:
            tiled = f"MISMATCH {row['max_rel_tiled_vs_simt']:.2e} | - |"
        else:
            tiled = "- | - |"
        if "tagged_fwd" in row:
            tagged = (f" {m('tagged_fwd')} / {m('tagged_both')} | {ratio('persistent_fwd', 'tagged_fwd')} / "
                      f"{ratio('persistent_both', 'tagged_both')} | {ratio('cudnn_fwd', 'tagged_fwd')} / "
                      f"{ratio('cudnn_both', 'tagged_both')} |")
        elif row.get("tagged_bitwise_barrier") is False:
            tagged = " MISMATCH (not bitwise the barrier kernels) | - | - |"
        else:
            tagged = " - | - | - |"
        lines.append(f"| {', '.join(map(str, row['config']))} | {m('persistent_fwd')} | {m('simt_fwd')} | "
                     f"{m('cudnn_fwd')} | {ratio('cudnn_fwd', 'persistent_fwd')} | "
                     f"{m('persistent_both')} | {m('simt_both')} | {m('cudnn_both')} | "
                     f"{ratio('cudnn_both', 'persistent_both')} | "
                     f"{row.get('max_rel_persistent_vs_simt', float('nan')):.1e} | "
                     + (f"{m('noahead_fwd')} / {m('noahead_both')} | " if "noahead_fwd" in row else "- | ") + tiled
                     + tagged
                     + (f" {m('wshared_fwd')} / {m('wshared_both')} ({ratio('wshared_fwd', 'persistent_fwd')} / "
                        f"{ratio('wshared_both', 'persistent_both')}) |" if "wshared_fwd" in row else " - |")
                     + (f" {m('noprefetch_both')} ({ratio('noprefetch_both', 'persistent_both')}) |"
                        if "noprefetch_both" in row else " - |")
                     + (f" {m('syncstage_fwd')} / {m('syncstage_both')} ({ratio('syncstage_fwd', 'persistent_fwd')} / "
                        f"{ratio('syncstage_both', 'persistent_both')}) |" if "syncstage_fwd" in row else " - |")
                     + (f" {m('divstage_fwd')} / {m('divstage_both')} ({ratio('divstage_fwd', 'persistent_fwd')} / "
                        f"{ratio('divstage_both', 'persistent_both')}) |" if "divstage_fwd" in row else " - |")
                     + (f" {m('unblocked_fwd')} / {m('unblocked_both')} ({ratio('unblocked_fwd', 'persistent_fwd')} / "
                        f"{ratio('unblocked_both', 'persistent_both')}) |" if "unblocked_fwd" in row else " - |"))
    table = "\n".join(lines)
    head = (f"persistent vs simt vs tiled vs cuDNN fp32 on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"cuDNN {torch.backends.cudnn.version()}; milliseconds, median (min-max) of CUDA-event timings, "
            "runs interleaved")
    text = head + "\n\n" + table + "\n\n### Short sequences: T swept, paths forced, fp32\n\n" + short_table(short)
    if final:
        print(text)
    if out:
        with open(os.path.join(out, "gpu_persistent_ab.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(out, "gpu_persistent_ab.json"), "w") as f:
            json.dump(dict(header=head, rows=rows, short=short), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
