"""One fastlstm call right after a PyTorch operation, on each thread pool (bench/NOTES.md 48).

PyTorch's OpenMP workers keep spinning for some milliseconds after a parallel operation.
This times fastlstm.ops.lstm_forward (inference) called (a) right after a small torch
operation that runs in parallel (a 256 x 256 multiply: 65536 elements, above PyTorch's grain
for going parallel) and (b) after 2 ms of busy waiting on the main thread with no torch
operation, on fastlstm's own pool ("own") and on the OpenMP runtime's team ("auto", the
default), alternating in rounds in one process. Prints the median and quartiles of each
(ms per call) and writes them as JSON with --json.

    python bench/after_torch_op.py                         # (100,16,256,256), (30,32,64,128), (100,1,256,256)
    python bench/after_torch_op.py --config 100,16,256,256 --rounds 20
"""

import argparse
import json
import time

import numpy as np

from fastlstm.bench import parse_config, positive_int as positive   # (the same checks)

DEFAULT_CONFIGS = [(100, 16, 256, 256), (30, 32, 64, 128), (100, 1, 256, 256)]


def busy(seconds):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass


def measure(config, rounds, calls):
    import torch
    import fastlstm
    from fastlstm import _core, ops
    T, B, I, H = config
    rng = np.random.default_rng(0)
    s = 1 / np.sqrt(I + H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    k = (rng.standard_normal((I, 4 * H)) * s).astype(np.float32)
    r = (rng.standard_normal((H, 4 * H)) * s).astype(np.float32)
    b = np.zeros(4 * H, np.float32)
    small = torch.randn(256, 256)
    times = {}
    for _ in range(rounds):
        for pool in ("own", "auto"):
            fastlstm.set_cpu_pool(pool)
            _core.set_backoff(True)    # (each block without the other pool's back-off)
            for after_torch in (True, False):
                for _ in range(calls):
                    if after_torch:
                        small.mul(2.0)
                    else:
                        busy(0.002)
                    t0 = time.perf_counter()
                    ops.lstm_forward(x, k, r, b, training=False)
                    times.setdefault((pool, after_torch), []).append(time.perf_counter() - t0)
        time.sleep(0.02)
    fastlstm.set_cpu_pool("auto")
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=parse_config, action="append", help="T,B,I,H (repeatable)")
    parser.add_argument("--rounds", type=positive, default=10)
    parser.add_argument("--calls", type=positive, default=10, help="calls per block")
    parser.add_argument("--json", help="write the summary and every time here")
    args = parser.parse_args(argv)
    import fastlstm
    out = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "threads": fastlstm.get_num_threads(), "rows": []}
    for config in args.config or DEFAULT_CONFIGS:
        times = measure(config, args.rounds, args.calls)
        for (pool, after_torch), values in times.items():
            v = np.asarray(values) * 1e3
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            what = "right after a torch op" if after_torch else "no torch op for 2 ms"
            print(f"{config} pool={pool:4s} {what:22s}: median {med:.3f} ms (q1 {q1:.3f}, "
                  f"q3 {q3:.3f})", flush=True)
            out["rows"].append({"config": config, "pool": pool, "after_torch_op": after_torch,
                                "median_ms": med, "q1_ms": q1, "q3_ms": q3,
                                "times_ms": [float(t) for t in v]})
    out["openmp_runtime"] = fastlstm.cpu_info()["openmp_runtime"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
