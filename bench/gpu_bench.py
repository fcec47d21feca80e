#!/usr/bin/env python3
"""GPU benchmark: fastlstm (backend="cuda") against torch.nn.LSTM (cuDNN) on the same card, fp32.

    python bench/gpu_bench.py [--reps 30] [--warmup 3] [--deadline SECONDS] [--out DIR]

For every configuration (T, B, I, H) it first checks fastlstm against cuDNN (outputs y, h_n,
c_n and all six gradients, relative Frobenius error; cuDNN in strict fp32, TF32 off), then
times, with CUDA events after a warm-up, the median of up to --reps runs of
  * forward:            fastlstm training=False  vs  torch under no_grad
  * forward + backward: fastlstm forward(training=True) + backward  vs  torch forward +
                        autograd.grad of (x, h0, c0, weights, biases)
cuDNN is timed twice: strict fp32 (what fastlstm computes) and with TF32 allowed (PyTorch's
default for cuDNN). Both libraries get device arrays (CuPy views of the torch tensors), so
no host copies are timed. A configuration that runs out of its time share is measured on
fewer runs (the table says how many); past --deadline the rest are skipped. The table is
printed last and written to DIR/gpu_bench.md and DIR/gpu_bench.json (DIR: --out, else $OUT,
else nothing is written).
"""

import argparse
import json
import os
import statistics
import sys
import time
import traceback

CONFIGS = [
    (100, 1, 256, 256),
    (100, 1, 1024, 1024),
    (100, 16, 512, 512),
    (100, 64, 512, 512),
    (100, 64, 1024, 1024),
    (100, 256, 1024, 1024),
    (1000, 32, 256, 256),
]
# fastlstm vs cuDNN (both fp32, different summation orders): errors above these are reported
# as MISMATCH (a correct kernel is around 1e-6 forward, 1e-5 for gradients over 1000 steps).
FWD_TOL = 1e-4
GRAD_TOL = 1e-3


def set_cudnn_fp32(torch, strict):
    """strict=True: cuDNN RNNs in IEEE fp32; False: TF32 allowed (PyTorch's default)."""
    rnn = getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", None)
    if rnn is not None:
        torch.backends.cudnn.rnn.fp32_precision = "ieee" if strict else "tf32"
    else:
        torch.backends.cudnn.allow_tf32 = not strict


def rel(a, b):
    import numpy as np
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b.ravel())
    d = np.linalg.norm((a - b).ravel())
    return float(d / nb) if nb > 0 else float(d)


def time_ms(torch, fn, warmup, reps, budget_s):
    """Median milliseconds of fn over up to reps runs (CUDA events), and the run count."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    t0 = time.perf_counter()
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if len(times) >= 5 and time.perf_counter() - t0 > budget_s:
            break
    return statistics.median(times), len(times)


def bench_config(cfg, args, torch, cp, ops):
    T, B, I, H = cfg
    dev = torch.device("cuda")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H).to(dev)  # float32, time-major (T, B, I)
    x = torch.randn(T, B, I, device=dev)
    h0 = torch.randn(1, B, H, device=dev) * 0.5
    c0 = torch.randn(1, B, H, device=dev)
    dy = torch.randn(T, B, H, device=dev)
    dh_n = torch.randn(1, B, H, device=dev)
    dc_n = torch.randn(1, B, H, device=dev)
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    b_ih, b_hh = lstm.bias_ih_l0, lstm.bias_hh_l0
    params = [w_ih, w_hh, b_ih, b_hh]
    with torch.no_grad():
        kernel_t = w_ih.t().contiguous()          # (I, 4H); same gate order i, f, g, o
        recurrent_t = w_hh.t().contiguous()       # (H, 4H)
        bias_t = (b_ih + b_hh).contiguous()
    c = {name: cp.asarray(t) for name, t in dict(
        x=x, kernel=kernel_t, recurrent_kernel=recurrent_t, bias=bias_t, h0=h0[0].contiguous(),
        c0=c0[0].contiguous(), dy=dy, dh_n=dh_n[0].contiguous(), dc_n=dc_n[0].contiguous()).items()}
    torch.cuda.synchronize()

    # ---- correctness against cuDNN (strict fp32)
    set_cudnn_fp32(torch, strict=True)
    xg, h0g, c0g = (t.detach().clone().requires_grad_(True) for t in (x, h0, c0))
    y_t, (hn_t, cn_t) = lstm(xg, (h0g, c0g))
    grads_t = torch.autograd.grad([y_t, hn_t, cn_t], [xg, h0g, c0g] + params, [dy, dh_n, dc_n])
    y_f, hn_f, cn_f, saved = ops.lstm_forward(c["x"], c["kernel"], c["recurrent_kernel"], c["bias"],
                                              c["h0"], c["c0"], backend="cuda")
    dx, dh0, dc0, dk, dr, db = ops.lstm_backward(saved, c["dy"], c["dh_n"], c["dc_n"])
    torch.cuda.synchronize()
    cpu = lambda t: t.detach().cpu().numpy()  # noqa: E731
    fwd_err = max(rel(y_f.get(), cpu(y_t)), rel(hn_f.get(), cpu(hn_t[0])), rel(cn_f.get(), cpu(cn_t[0])))
    gx, gh0, gc0, gwih, gwhh, gbih, gbhh = grads_t
    grad_err = max(rel(dx.get(), cpu(gx)), rel(dh0.get(), cpu(gh0[0])), rel(dc0.get(), cpu(gc0[0])),
                   rel(dk.get(), cpu(gwih).T), rel(dr.get(), cpu(gwhh).T), rel(db.get(), cpu(gbih)),
                   rel(db.get(), cpu(gbhh)))
    del y_t, hn_t, cn_t, grads_t, saved, dx, dh0, dc0, dk, dr, db

    # ---- timings
    share = args.budget

    def f_fwd():
        ops.lstm_forward(c["x"], c["kernel"], c["recurrent_kernel"], c["bias"], c["h0"], c["c0"],
                         training=False, backend="cuda")

    def f_fwdbwd():
        s = ops.lstm_forward(c["x"], c["kernel"], c["recurrent_kernel"], c["bias"], c["h0"], c["c0"],
                             training=True, backend="cuda")[3]
        ops.lstm_backward(s, c["dy"], c["dh_n"], c["dc_n"])

    def t_fwd():
        with torch.no_grad():
            lstm(x, (h0, c0))

    def t_fwdbwd():
        y, (hn, cn) = lstm(xg, (h0g, c0g))
        torch.autograd.grad([y], [xg, h0g, c0g] + params, [dy])

    out = dict(config=list(cfg), fwd_err=fwd_err, grad_err=grad_err,
               ok=bool(fwd_err <= FWD_TOL and grad_err <= GRAD_TOL))
    out["fl_fwd"], out["n_fl_fwd"] = time_ms(torch, f_fwd, args.warmup, args.reps, share)
    set_cudnn_fp32(torch, strict=True)
    out["cudnn_fwd"], out["n_cudnn_fwd"] = time_ms(torch, t_fwd, args.warmup, args.reps, share)
    set_cudnn_fp32(torch, strict=False)
    out["cudnn_tf32_fwd"], _ = time_ms(torch, t_fwd, args.warmup, args.reps, share / 2)
    out["fl_fwdbwd"], out["n_fl_fwdbwd"] = time_ms(torch, f_fwdbwd, args.warmup, args.reps, share)
    set_cudnn_fp32(torch, strict=True)
    out["cudnn_fwdbwd"], out["n_cudnn_fwdbwd"] = time_ms(torch, t_fwdbwd, args.warmup, args.reps, share)
    set_cudnn_fp32(torch, strict=False)
    out["cudnn_tf32_fwdbwd"], _ = time_ms(torch, t_fwdbwd, args.warmup, args.reps, share / 2)
    set_cudnn_fp32(torch, strict=True)
    return out


def fmt_table(results, header):
    lines = [header, "",
             "| T, B, I, H | fwd fastlstm ms | fwd cuDNN fp32 ms | ratio | fwd cuDNN tf32 ms "
             "| f+b fastlstm ms | f+b cuDNN fp32 ms | ratio | f+b cuDNN tf32 ms "
             "| err fwd | err grads | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cfg = ", ".join(str(v) for v in r["config"])
        if "error" in r:
            lines.append(f"| {cfg} | {r['error'][:120]} |" + " |" * 10)
            continue
        lines.append(
            f"| {cfg} | {r['fl_fwd']:.3f} (n={r['n_fl_fwd']}) | {r['cudnn_fwd']:.3f} | "
            f"{r['fl_fwd'] / r['cudnn_fwd']:.2f}x | {r['cudnn_tf32_fwd']:.3f} | "
            f"{r['fl_fwdbwd']:.3f} (n={r['n_fl_fwdbwd']}) | {r['cudnn_fwdbwd']:.3f} | "
            f"{r['fl_fwdbwd'] / r['cudnn_fwdbwd']:.2f}x | {r['cudnn_tf32_fwdbwd']:.3f} | "
            f"{r['fwd_err']:.1e} | {r['grad_err']:.1e} | {'ok' if r['ok'] else 'MISMATCH'} |")
    lines += ["", "ratio = fastlstm time / cuDNN fp32 time (below 1: fastlstm faster). Medians of "
              "CUDA-event timings; n = runs measured. err = relative Frobenius error of fastlstm "
              "against cuDNN fp32 (max over y, h_n, c_n / over the six gradients)."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=4.0,
                    help="seconds of timed runs per (configuration, library, mode) before stopping early")
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="skip the remaining configurations after this many seconds (0: none)")
    ap.add_argument("--configs", default="", help="'T,B,I,H;T,B,I,H' instead of the default list")
    ap.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for gpu_bench.md/.json")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    import torch
    import cupy as cp
    import fastlstm
    from fastlstm import ops

    info = fastlstm.cuda_info()
    if not info["available"]:
        print(f"fastlstm CUDA backend not available: {info['reason']}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch sees no CUDA device", file=sys.stderr)
        return 2
    configs = CONFIGS
    if args.configs:
        configs = [tuple(int(v) for v in c.split(",")) for c in args.configs.split(";") if c.strip()]
    header = (f"fastlstm CUDA vs torch.nn.LSTM (cuDNN {torch.backends.cudnn.version()}), fp32, on "
              f"{info['name']} (sm_{info['capability'][0]}{info['capability'][1]}, {info['sm_count']} SMs); "
              f"torch {torch.__version__}, CuPy {cp.__version__}, fastlstm kernels: "
              f"{info['kernel_variant'].split(':')[0]}")
    print(header, flush=True)
    results = []
    for cfg in configs:
        if args.deadline and time.perf_counter() - t_start > args.deadline:
            results.append(dict(config=list(cfg), error="skipped: out of time (--deadline)"))
            print(f"{cfg}: skipped (deadline)", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            r = bench_config(cfg, args, torch, cp, ops)
        except Exception as e:  # noqa: BLE001 - report and go on with the next configuration
            traceback.print_exc()
            r = dict(config=list(cfg), error=f"{type(e).__name__}: {e}")
        finally:
            cp.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
        results.append(r)
        print(f"{cfg}: {json.dumps(r)} ({time.perf_counter() - t0:.1f}s)", flush=True)

    table = fmt_table(results, header)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump(dict(header=header, info={k: (list(v) if isinstance(v, tuple) else v)
                                                for k, v in info.items()},
                           results=results), f, indent=1)
    print()
    print(table, flush=True)
    bad = [r for r in results if "error" not in r and not r["ok"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
