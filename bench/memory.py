"""Peak extra memory of fastlstm's forward (training and inference) and backward.

    python bench/memory.py [--config T,B,I,H ...] [--dtype float32|float64]
                           [--lengths] [--reverse]

Each measurement runs in a fresh process: inputs are made, a tiny warm-up call runs (for
backward, also the forward whose saved state it uses), the process's peak resident set
size is reset (/proc/self/clear_refs, Linux), then the call under test runs and the rise of
the peak over the resident size before the call is reported. What the call returns is counted (y, the saved gates and cells, the gradients),
since that is memory the caller holds. Beside it, the size of what the forward saves for
backward per step: the four gate activations and the cell state, 5*B*H elements. "kept":
the working buffers the CPU kernels keep cached after the call (the most of the three
calls; fastlstm.set_cpu_cache_limit), which count in the peak of the call itself.
--lengths gives every sequence a length drawn from [T/2, T] (as masks or padded batches
do); --reverse runs the sequences backwards.
"""

import argparse
import json
import os
import subprocess
import sys

DEFAULT_CONFIGS = [(100, 1, 256, 256), (100, 16, 256, 256), (100, 64, 512, 512), (50, 128, 1024, 1024)]

CHILD = r"""
import json, sys
import numpy as np
import fastlstm
from fastlstm import ops

T, B, I, H, dtype, what, with_lengths, reverse = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
dtype = np.dtype(dtype)
x = rng.standard_normal((T, B, I)).astype(dtype)
kernel = (rng.standard_normal((I, 4 * H)) / np.sqrt(I + H)).astype(dtype)
recurrent_kernel = (rng.standard_normal((H, 4 * H)) / np.sqrt(I + H)).astype(dtype)
bias = np.zeros(4 * H, dtype)
dy = rng.standard_normal((T, B, H)).astype(dtype)
lengths = rng.integers(T // 2, T + 1, B) if with_lengths else None

def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

def forward(training):
    return ops.lstm_forward(x, kernel, recurrent_kernel, bias, lengths=lengths, reverse=reverse,
                            training=training)

# Warm up on a tiny problem (thread pool, code pages): a warm-up of the same size would leave
# freed pages in the allocator's heap, and the call under test would reuse them unseen.
tiny = [a[:1, :1] for a in (x, dy)]
ops.lstm_backward(ops.lstm_forward(tiny[0], kernel, recurrent_kernel, bias)[3], tiny[1])
saved = forward(True)[3] if what == "backward" else None
# Blocks the kernels cached from that forward would be resident before the call and reused
# by it unseen: give them back first, so the rise below is all the call needs.
fastlstm.empty_cpu_cache()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = rss_kib("VmRSS")
if what == "backward":
    result = ops.lstm_backward(saved, dy)
else:
    result = forward(what == "training")
peak = rss_kib("VmHWM")
print(json.dumps({"extra_mib": (peak - before) / 1024,
                  "cached_mib": fastlstm.cpu_info()["cached_bytes"] / 2**20}))
"""


def measure(config, dtype, what, lengths=False, reverse=False):
    # A fixed mmap threshold makes glibc return every freed large block to the system at once,
    # so the resident size follows live memory (by default freed blocks may stay resident
    # in the heap and be reused unseen).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([*config, dtype, what, lengths, reverse])],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="T,B,I,H (repeatable)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--lengths", action="store_true",
                        help="per-sequence lengths drawn from [T/2, T]")
    parser.add_argument("--reverse", action="store_true", help="run the sequences backwards")
    args = parser.parse_args(argv)
    configs = [tuple(int(v) for v in c.split(",")) for c in args.config] if args.config else DEFAULT_CONFIGS
    item = 4 if args.dtype == "float32" else 8
    rows = []
    print(f"{'config (T,B,I,H)':<22} {'saved/step KiB':>14} {'saved MiB':>9} {'y MiB':>7} "
          f"{'fwd infer MiB':>13} {'fwd train MiB':>13} {'bwd MiB':>8} {'kept MiB':>10}")
    for config in configs:
        T, B, I, H = config
        saved_step = 5 * B * H * item / 1024
        row = {"config": config, "dtype": args.dtype, "lengths": args.lengths,
               "reverse": args.reverse, "saved_per_step_kib": saved_step,
               "saved_mib": saved_step * T / 1024, "y_mib": T * B * H * item / 2**20}
        for what in ("inference", "training", "backward"):
            got = measure(config, args.dtype, what, args.lengths, args.reverse)
            row[what + "_extra_mib"] = got["extra_mib"]
            row[what + "_cached_mib"] = got["cached_mib"]
        rows.append(row)
        kept = max(row[w + "_cached_mib"] for w in ("inference", "training", "backward"))
        print(f"{str(config):<22} {saved_step:>14.1f} {row['saved_mib']:>9.1f} {row['y_mib']:>7.1f} "
              f"{row['inference_extra_mib']:>13.1f} {row['training_extra_mib']:>13.1f} "
              f"{row['backward_extra_mib']:>8.1f} {kept:>10.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
