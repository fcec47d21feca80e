"""Where the persistent kernels' time goes, phase by phase, per time step, on one GPU.

    python bench/gpu_phase_profile.py [--out DIR] [--reps 5]

For each configuration, with the kernel path forced to "persistent": the forward
(training=False) and the backward, run with FASTLSTM_CUDA_TRACE=1, which launches the traced
kernels (csrc/cuda/persistent.cuh, PhaseClock: thread 0 of every block adds up the SM cycles it
spends in each phase of each step). Prints, per step and in microseconds (cycles over the clock
the trace measured), the mean over blocks of: wait (a block barrier before staging: the previous
chunk's finishers; in the backward the barrier that ends the step), stage (the rows staged into
shared memory), product (each thread's partial sums), reduce (their reduction tree, its block
barriers included), finish (gates and cell update /
dh written), barrier (the grid barrier, min / mean / max over blocks: the least is the barrier's
own latency, the block that arrived last), gates (backward phase A). Also the median time of a
whole call traced and untraced (host clock around the call and a device synchronisation), to
show what the trace itself costs.

Written so that the next GPU session can decide between the levers of bench/NOTES_GPU.md ("Next
levers") from measurements instead of estimates. With --out, writes gpu_phase_profile.md there
(the table and every raw trace line).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

CONFIGS = [(100, 1, 256, 256), (100, 1, 1024, 1024), (100, 16, 512, 512), (100, 64, 512, 512),
           (100, 16, 1024, 1024), (100, 64, 1024, 1024), (1000, 32, 256, 256)]
PHASES = ("wait", "stage", "product", "reduce", "finish", "barrier", "gates")


def parse_trace(ran):
    """(plan text, {field: (least, mean, largest)}, steps, blocks, ghz) of a traced description."""
    if " | trace: " not in ran:
        raise RuntimeError(f"no trace in the kernel description (not the persistent path?): {ran}")
    plan, tail = ran.split(" | trace: ", 1)
    fields = dict(item.split("=", 1) for item in tail.split())
    vals = {k: tuple(float(x) for x in v.split("/")) for k, v in fields.items() if "/" in v}
    return plan, vals, int(fields["steps"]), int(fields["blocks"]), float(fields["ghz"])


def run_config(cfg, reps, xp, sync, fastlstm, fcuda, ops):
    T, B, I, H = cfg
    rng = np.random.default_rng(T + B + H)
    r = lambda *s: xp.asarray(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    w = lambda *s: xp.asarray((rng.uniform(-1, 1, s) / np.sqrt(H)).astype(np.float32))  # noqa: E731
    x, k, rk, bias, h0, c0 = r(T, B, I), w(I, 4 * H), w(H, 4 * H), w(4 * H), r(B, H), r(B, H)
    dy = r(T, B, H)

    def fwd():
        return ops.lstm_forward(x, k, rk, bias, h0, c0, backend="cuda", training=False)

    def both():
        saved = ops.lstm_forward(x, k, rk, bias, h0, c0, backend="cuda")[3]
        return ops.lstm_backward(saved, dy)

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - t0) * 1e3

    out = {"config": list(cfg)}
    with fcuda.use_kernel_path("persistent"):
        for name, fn, kind in (("forward", fwd, "last_forward"), ("backward", both, "last_backward")):
            os.environ.pop("FASTLSTM_CUDA_TRACE", None)
            fn()  # warm-up (and the untraced kernels' first launch)
            plain = [timed(fn) for _ in range(reps)]
            os.environ["FASTLSTM_CUDA_TRACE"] = "1"
            fn()  # the traced kernels' first launch
            traced, traces = [], []
            for _ in range(reps):
                traced.append(timed(fn))
                traces.append(fastlstm.cuda_info()[kind])
            os.environ.pop("FASTLSTM_CUDA_TRACE", None)
            parsed = [parse_trace(t) for t in traces]
            plan, _, steps, blocks, _ = parsed[0]
            ghz = statistics.median(p[4] for p in parsed)
            us = lambda cycles: cycles / (ghz * 1e3)  # noqa: E731
            row = {"plan": plan, "steps": steps, "blocks": blocks, "ghz": ghz,
                   "call_ms_untraced": statistics.median(plain), "call_ms_traced": statistics.median(traced),
                   "raw": traces}
            for ph in PHASES + ("total",):
                row[ph] = us(statistics.median(p[1][ph][1] for p in parsed))
            row["barrier_min"] = us(statistics.median(p[1]["barrier"][0] for p in parsed))
            row["barrier_max"] = us(statistics.median(p[1]["barrier"][2] for p in parsed))
            row["weights_us"] = us(statistics.median(p[1]["weights"][1] for p in parsed))
            row["kernel_us"] = statistics.median(p[1]["kernel_us"][1] for p in parsed)
            out[name] = row
            print(cfg, name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                              if k not in ("raw", "plan")}, flush=True)
    return out


def table(rows):
    lines = ["| T, B, I, H | pass | plan | GHz | wait | stage | product | reduce | finish | "
             "barrier min / mean / max | gates | total / step | weights (once) | kernel | call untraced / traced |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cfg = ", ".join(map(str, row["config"]))
        if "error" in row:
            lines.append(f"| {cfg} | FAILED: {row['error']} |")
            continue
        for name in ("forward", "backward"):
            r = row[name]
            plan = r["plan"].split("(", 1)[1].rstrip(")") if "(" in r["plan"] else r["plan"]
            lines.append(
                f"| {cfg} | {name} | {plan} | {r['ghz']:.2f} | {r['wait']:.2f} | {r['stage']:.2f} | "
                f"{r['product']:.2f} | {r['reduce']:.2f} | {r['finish']:.2f} | {r['barrier_min']:.2f} / {r['barrier']:.2f} / "
                f"{r['barrier_max']:.2f} | {r['gates']:.2f} | {r['total']:.2f} | {r['weights_us']:.1f} | "
                f"{r['kernel_us'] / 1e3:.3f} ms | {r['call_ms_untraced']:.3f} / {r['call_ms_traced']:.3f} ms |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--reps", type=int, default=5, help="runs per pass, traced and untraced (at least 1)")
    ap.add_argument("--config", action="append", default=None, metavar="T,B,I,H",
                    help="a configuration (repeatable; default: the issue's small-batch set)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps: expected a positive number of runs, got {args.reps}")
    configs = CONFIGS
    if args.config:
        try:
            configs = [tuple(int(v) for v in c.split(",")) for c in args.config]
        except ValueError:
            ap.error(f"--config: expected T,B,I,H as four integers, got {args.config}")
        if any(len(c) != 4 or min(c) < 1 for c in configs):
            ap.error(f"--config: expected T,B,I,H as four positive integers, got {args.config}")
    import fastlstm
    from fastlstm import cuda as fcuda, ops
    if not fastlstm.cuda_available():
        print("no CUDA extension or device:", fastlstm.cuda_info().get("reason"), file=sys.stderr)
        return 2
    try:
        import cupy as cp
        xp, sync = cp, cp.cuda.runtime.deviceSynchronize
    except ImportError:  # host arrays: the call times then include the copies
        xp, sync = np, (lambda: None)
    rows = []
    for cfg in configs:
        try:
            rows.append(run_config(cfg, args.reps, xp, sync, fastlstm, fcuda, ops))
        except Exception as e:  # report and go on: GPU time is short
            print(cfg, "FAILED", type(e).__name__, e, flush=True)
            rows.append({"config": list(cfg), "error": f"{type(e).__name__}: {e}"})
    info = fastlstm.cuda_info()
    head = (f"persistent kernels, phase trace (FASTLSTM_CUDA_TRACE=1), {info.get('name', '?')}; "
            f"microseconds per step (mean over blocks, median of {args.reps} runs) unless marked; "
            "arrays on the device" + ("" if xp is not np else " (NumPy: copies included in the call times)"))
    text = head + "\n\n" + table(rows)
    print(text)
    if args.out:
        with open(os.path.join(args.out, "gpu_phase_profile.md"), "w") as f:
            f.write(text + "\n\nRaw trace lines (first run of each pass):\n\n")
            for row in rows:
                for name in ("forward", "backward"):
                    if name in row:
                        f.write(f"- {row['config']} {name}: `{row[name]['raw'][0]}`\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
