"""Benchmark fastlstm's CPU kernels against the NumPy reference and PyTorch.

Run ``python -m fastlstm.bench --quick`` for a few-second smoke run, or
``python -m fastlstm.bench`` for the default table; ``--help`` lists the options.

For every configuration (T, B, I, H) and mode the benchmark

1. checks correctness first: fastlstm (and torch) run once on fresh random inputs
   and are compared with the float64 NumPy reference on the same inputs
   (relative error ||a - b|| / ||b|| of y and, in fwd+bwd mode, of every gradient).
   A row whose fastlstm error exceeds the tolerance is marked FAILED and not timed;
2. times the contenders round-robin in blocks (a block of fastlstm calls, of torch
   calls, of reference calls, then again, ROUNDS times) after a warm-up, pausing
   briefly between blocks, and reports median (min-max) milliseconds per call.

Modes: ``fwd`` is inference (fastlstm ``training=False``, torch under
``torch.no_grad()``); ``fwdbwd`` is a training forward followed by the backward
pass with an upstream gradient dy of y's shape.

FLOPs counted: 8*T*B*H*(I+H) for the forward (the two matrix products),
three times that for forward+backward.
"""

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

import fastlstm
from fastlstm import ops, reference

DEFAULT_CONFIGS = [(100, 1, 256, 256), (100, 16, 256, 256), (100, 64, 512, 512), (50, 128, 1024, 1024)]
QUICK_CONFIGS = [(50, 1, 128, 128), (50, 16, 128, 128)]
MODES = ("fwd", "fwdbwd")
MODE_LABELS = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
CONTENDERS = ("fastlstm", "torch", "reference")  # round-robin order

TOLERANCE = 1e-4            # max relative error against the float64 reference
REFERENCE_MAX_GFLOP = 30.0  # the NumPy reference is not timed above this many GFLOP per call
CHECK_MAX_GFLOP = 30.0      # above this many GFLOP per call the check runs at T = min(T, CHECK_SHORT_T)
CHECK_SHORT_T = 10
TARGET_SECONDS = 1.0        # timed seconds per contender per row (adaptive repeats)
QUICK_TARGET_SECONDS = 0.1
ROUNDS = 8                  # round-robin rounds: each contender is timed in this many blocks
                            # (on a shared VM the speed shifts from block to block, so more,
                            # shorter blocks give each contender a fairer share of the shifts)
QUICK_ROUNDS = 2
SETTLE_SECONDS = 0.15       # pause before switching contenders, for other libraries' spinning threads
MIN_REPEATS = 5
MIN_REFERENCE_REPEATS = 3
MAX_REPEATS = 2000
WARMUP_SECONDS = 0.05
UNSTABLE_FACTOR = 2.0       # a median this many times the minimum is flagged '!'
BUSY_SAMPLE_SECONDS = 0.25  # how long the CPU use of other processes is sampled at start
BUSY_WARNING_CORES = 0.3    # warn when other processes keep more than this many cores busy
CEILING_SIZE = 2048
CEILING_REPEATS = 5


# ----------------------------------------------------------------------------- problem

def config_flops(config, mode):
    """FLOPs of one call: 8*T*B*H*(I+H) forward, three times that for forward+backward."""
    T, B, I, H = config
    forward = 8.0 * T * B * H * (I + H)
    return forward if mode == "fwd" else 3.0 * forward


def draw_lengths(T, B, rng):
    """Per-sequence lengths for --lengths: uniform in [max(1, T // 4), T], in random order."""
    return rng.integers(max(1, T // 4), T + 1, size=B).astype(np.int64)


def make_inputs(config, dtype, rng, lengths=None):
    """Fresh random problem: normal x and dy, weights scaled by 1/sqrt(I+H); with lengths
    (B,), x past each sequence's length is NaN (no contender may read it) and dy there 0."""
    T, B, I, H = config
    scale = 1.0 / math.sqrt(I + H)

    def normal(shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(dtype)

    inputs = {
        "x": normal((T, B, I)),
        "kernel": normal((I, 4 * H), scale),
        "recurrent_kernel": normal((H, 4 * H), scale),
        "bias": normal((4 * H,), scale),
        "dy": normal((T, B, H)),
    }
    if lengths is not None:
        padding = np.arange(T)[:, None] >= lengths[None, :]          # (T, B)
        inputs["x"][padding] = np.nan
        inputs["dy"][padding] = 0.0  # y is 0 there for every contender: its gradient is unused
        inputs["lengths"] = lengths
    return inputs


# ----------------------------------------------------------------------------- contenders
# A runner is a zero-argument callable doing one call of the benchmarked work and
# returning its outputs as a dict of NumPy arrays (y, and the gradients in fwd+bwd).

def numpy_api_runner(forward, backward, inputs, mode, **options):
    """Runner for an lstm_forward / lstm_backward pair with fastlstm's signature."""
    args = (inputs["x"], inputs["kernel"], inputs["recurrent_kernel"], inputs["bias"])
    dy = inputs["dy"]
    if inputs.get("lengths") is not None:
        options = dict(options, lengths=inputs["lengths"])

    def run_fwd():
        y, _, _, _ = forward(*args, training=False, **options)
        return {"y": y}

    def run_fwdbwd():
        y, _, _, saved = forward(*args, training=True, **options)
        dx, _, _, dkernel, drecurrent, dbias = backward(saved, dy)
        return {"y": y, "dx": dx, "dkernel": dkernel, "drecurrent_kernel": drecurrent, "dbias": dbias}

    return run_fwd if mode == "fwd" else run_fwdbwd


def fastlstm_runner(inputs, mode):
    """fastlstm's C++ CPU kernels through the checked functional API."""
    return numpy_api_runner(ops.lstm_forward, ops.lstm_backward, inputs, mode, backend="cpu")


def reference_runner(inputs, mode):
    """The pure NumPy reference (computes in the dtype of its inputs)."""
    return numpy_api_runner(reference.lstm_forward, reference.lstm_backward, inputs, mode)


def torch_runner(torch, inputs, mode):
    """torch.nn.LSTM with fastlstm's weights (same i,f,g,o gate order, time-major input); with
    lengths through a PackedSequence (pack_padded_sequence, enforce_sorted=False), the
    output padded back to T steps, as a user of torch would run padded batches."""
    x = inputs["x"]
    T, _, I = x.shape
    H = inputs["recurrent_kernel"].shape[0]
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    lstm = torch.nn.LSTM(I, H, dtype=dtype)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(inputs["kernel"].T)))
        lstm.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(inputs["recurrent_kernel"].T)))
        lstm.bias_ih_l0.copy_(torch.from_numpy(inputs["bias"]))
        lstm.bias_hh_l0.zero_()

    lengths = inputs.get("lengths")
    if lengths is None:
        def forward(x_t):
            return lstm(x_t)[0]
    else:
        rnn = torch.nn.utils.rnn
        lengths_t = torch.from_numpy(lengths)

        def forward(x_t):
            packed = rnn.pack_padded_sequence(x_t, lengths_t, enforce_sorted=False)
            return rnn.pad_packed_sequence(lstm(packed)[0], total_length=T)[0]

    if mode == "fwd":
        x_t = torch.from_numpy(x)

        def run_fwd():
            with torch.no_grad():
                y = forward(x_t)
            return {"y": y.numpy()}

        return run_fwd

    x_t = torch.from_numpy(x.copy()).requires_grad_(True)
    dy_t = torch.from_numpy(inputs["dy"])

    def run_fwdbwd():
        x_t.grad = None
        lstm.zero_grad(set_to_none=True)
        y = forward(x_t)
        y.backward(dy_t)
        return {
            "y": y.detach().numpy(),
            "dx": x_t.grad.numpy(),
            "dkernel": lstm.weight_ih_l0.grad.numpy().T,
            "drecurrent_kernel": lstm.weight_hh_l0.grad.numpy().T,
            "dbias": lstm.bias_ih_l0.grad.numpy(),
        }

    return run_fwdbwd


def make_runners(names, inputs, mode, torch):
    """Runners for the requested contenders, in round-robin order."""
    factories = {
        "fastlstm": lambda: fastlstm_runner(inputs, mode),
        "torch": lambda: torch_runner(torch, inputs, mode),
        "reference": lambda: reference_runner(inputs, mode),
    }
    return {name: factories[name]() for name in CONTENDERS if name in names}


def load_torch(num_threads):
    """Import PyTorch if it is installed (it is optional) and give it num_threads threads."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(num_threads)
    return torch


# ----------------------------------------------------------------------------- correctness

def relative_error(actual, expected):
    """||actual - expected|| / ||expected||, computed in float64; infinite when the shapes
    differ (a result of the wrong shape is wrong, even where it would broadcast)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return math.inf
    norm = np.linalg.norm(expected)
    diff = np.linalg.norm(actual - expected)
    return float(diff / norm) if norm > 0 else float(diff)


def check_length(config, mode):
    """Time steps used for the correctness check: full T unless the reference would be slow."""
    T = config[0]
    return T if config_flops(config, mode) <= CHECK_MAX_GFLOP * 1e9 else min(T, CHECK_SHORT_T)


def check_row(config, mode, dtype, names, torch, rng, lengths=False):
    """Compare each non-reference contender with the float64 reference on fresh inputs
    (with lengths: lengths drawn for the checked T).

    Returns {"T": steps used, contender: {output name: error, ..., "max": error}}.
    """
    T_check = check_length(config, mode)
    drawn = draw_lengths(T_check, config[1], rng) if lengths else None
    inputs = make_inputs((T_check,) + tuple(config[1:]), dtype, rng, drawn)
    inputs64 = {key: value.astype(np.float64) if key != "lengths" else value
                for key, value in inputs.items()}
    expected = reference_runner(inputs64, mode)()
    result = {"T": T_check}
    for name, run in make_runners(set(names) - {"reference"}, inputs, mode, torch).items():
        outputs = run()
        errors = {key: relative_error(outputs[key], expected[key]) for key in expected}
        # NaN (an output read from NaN padding, or not written) counts as the largest error
        errors["max"] = max(errors.values()) if all(map(math.isfinite, errors.values())) else math.inf
        result[name] = errors
    return result


# ----------------------------------------------------------------------------- timing

def time_call(run):
    """Seconds taken by one call."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def warm_up(run):
    """Call run for WARMUP_SECONDS and at least twice (once if that call took over a second)."""
    spent, calls = 0.0, 0
    while calls < 2 or spent < WARMUP_SECONDS:
        last = time_call(run)
        spent += last
        calls += 1
        if last > 1.0:
            break


def time_round_robin(runners, minimum, maximum, target_seconds, rounds):
    """Time the runners in turn, a block of calls each, for `rounds` rounds; samples in seconds.

    Each runner aims at `target_seconds` of timed calls in all, spread evenly over the
    rounds, with between minimum[name] and maximum[name] calls; so a slow patch of the
    machine lengthens a block only up to its share of the minimum. Before a block of a
    different runner than the last, the process sleeps SETTLE_SECONDS: the thread pools
    of OpenBLAS and of PyTorch's OpenMP keep spinning for a while after each call and
    would otherwise slow down whichever contender runs next.
    """
    samples = {name: [] for name in runners}
    previous = None
    for left in range(rounds, 0, -1):
        for name, run in runners.items():
            done, spent = len(samples[name]), sum(samples[name])
            most = -(-(maximum[name] - done) // left)   # ceiling division
            least = -(-(minimum[name] - done) // left)
            budget = (target_seconds - spent) / left
            if most <= 0 or (least <= 0 and budget <= 0):
                continue
            if name != previous:
                time.sleep(SETTLE_SECONDS)
                previous = name
            samples[name] += time_block(run, least, most, budget)
    return samples


def time_block(run, least, most, budget):
    """Time at least `least` and at most `most` calls, stopping once `budget` seconds are spent."""
    samples, spent = [], 0.0
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while len(samples) < most and (len(samples) < least or spent < budget):
            seconds = time_call(run)
            samples.append(seconds)
            spent += seconds
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def summarize(seconds):
    """Median, min, max and all samples, in milliseconds."""
    ms = [s * 1e3 for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
            "repeats": len(ms), "samples_ms": ms}


def time_row(config, mode, dtype, names, torch, rng, timing, lengths=None):
    """Warm up and time the contenders on fresh inputs; {name: summary}.

    timing: target_seconds, rounds and repeats (None: adaptive, about target_seconds
    per contender, at least MIN_REPEATS calls (MIN_REFERENCE_REPEATS for the slow
    reference), at most MAX_REPEATS).
    """
    runners = make_runners(names, make_inputs(config, dtype, rng, lengths), mode, torch)
    for run in runners.values():
        warm_up(run)
    if timing["repeats"]:
        minimum = maximum = {name: timing["repeats"] for name in runners}
    else:
        minimum = {name: MIN_REFERENCE_REPEATS if name == "reference" else MIN_REPEATS for name in runners}
        maximum = {name: MAX_REPEATS for name in runners}
    samples = time_round_robin(runners, minimum, maximum, timing["target_seconds"], timing["rounds"])
    return {name: summarize(seconds) for name, seconds in samples.items()}


# ----------------------------------------------------------------------------- one row

def benchmark_row(config, mode, options, torch, rng, ceiling_gflops):
    """Check, then time, one (configuration, mode); returns the row's JSON-ready dict. With
    --lengths the FLOPs count the valid positions only (sum of the lengths instead of T*B)."""
    flops = config_flops(config, mode)
    lengths = draw_lengths(config[0], config[1], rng) if options.lengths else None
    if lengths is not None:
        flops *= float(lengths.sum()) / (config[0] * config[1])
    names = ["fastlstm"]
    if torch is not None:
        names.append("torch")
    reference_skipped = None
    if options.no_reference:
        reference_skipped = "--no-reference"
    elif flops > REFERENCE_MAX_GFLOP * 1e9:
        reference_skipped = "above %g GFLOP per call" % REFERENCE_MAX_GFLOP
    else:
        names.append("reference")

    row = {"config": dict(zip("TBIH", config)), "mode": mode, "flops": flops,
           "reference_skipped": reference_skipped}
    if lengths is not None:
        row["lengths"] = lengths.tolist()
    try:
        row["check"] = check_row(config, mode, options.dtype, names, torch, rng, lengths is not None)
    except Exception as exc:  # report and carry on with the other rows
        row.update(status="ERROR", error="%s: %s" % (type(exc).__name__, exc))
        return row
    failed = [name for name in names if name != "reference" and not row["check"][name]["max"] <= TOLERANCE]
    row["failed"] = failed
    if "fastlstm" in failed:
        row["status"] = "FAILED"
        return row
    names = [name for name in names if name not in failed]

    try:
        timings = time_row(config, mode, options.dtype, names, torch, rng, options.timing, lengths)
    except Exception as exc:  # (MemoryError at full T after a check at T = 10, say): as above
        row.update(status="ERROR", error="%s while timing: %s" % (type(exc).__name__, exc))
        return row
    row["status"] = "ok"
    row["timings"] = timings
    fast_ms = timings["fastlstm"]["median_ms"]
    row["gflops"] = flops / (fast_ms * 1e-3) / 1e9
    row["ceiling_share_pct"] = 100.0 * row["gflops"] / ceiling_gflops
    if "torch" in timings:
        row["torch_over_fastlstm"] = timings["torch"]["median_ms"] / fast_ms
    return row


# ----------------------------------------------------------------------------- environment

def available_cores():
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model():
    """CPU model name from /proc/cpuinfo when available, else platform's answer."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def busy_cores(seconds=BUSY_SAMPLE_SECONDS):
    """Cores kept busy by other processes, from /proc/stat over `seconds`; None where unavailable."""
    def read():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user .. steal
        return sum(ticks), ticks[3] + ticks[4]                   # total, idle + iowait

    try:
        total0, idle0 = read()
        time.sleep(seconds)
        total1, idle1 = read()
    except (OSError, ValueError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / (total1 - total0))


@contextlib.contextmanager
def blas_threads(n):
    """Limit NumPy's BLAS to n threads when threadpoolctl is installed; yields whether it did."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield False
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield True


def measure_ceiling(dtype, n=CEILING_SIZE, repeats=CEILING_REPEATS):
    """Best GFLOP/s of an n x n @ n x n NumPy matrix product in dtype."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b  # warm-up
    best = min(time_call(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def environment(torch, threads, busy):
    """Machine, versions and settings for the header and the JSON."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": available_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "fastlstm": getattr(fastlstm, "__version__", "unknown"),
        "torch": torch.__version__ if torch is not None else None,
        "threads": threads,
        "cpu_info": fastlstm.cpu_info(),
        "openblas_env": {key: os.environ.get(key) for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "busy_cores_at_start": busy,
    }


# ----------------------------------------------------------------------------- report

def format_number(value):
    """About three significant digits, without an exponent for values >= 0.001."""
    if value >= 100:
        return "%.0f" % value
    if value >= 10:
        return "%.1f" % value
    if value >= 1:
        return "%.2f" % value
    return "%.3f" % value


def unstable(timing):
    """True when the median is far above the minimum (the machine was busy or descheduled threads)."""
    return timing["median_ms"] > UNSTABLE_FACTOR * timing["min_ms"]


def format_median(timing):
    """The median in ms, flagged with '!' when unstable."""
    return format_number(timing["median_ms"]) + ("!" if unstable(timing) else "")


def format_timing(timing):
    """'median (min-max)' in ms."""
    return "%s (%s-%s)" % (format_median(timing), format_number(timing["min_ms"]), format_number(timing["max_ms"]))


def contender_cell(row, name):
    """Table cell for a contender that is not fastlstm: its median, FAILED or '-'."""
    if name in row.get("failed", []):
        return "FAILED"
    timing = row.get("timings", {}).get(name)
    return format_median(timing) if timing else "-"


def table_rows(rows):
    """The result rows as lists of strings, one per (configuration, mode)."""
    lines = []
    for row in rows:
        config = "(%d,%d,%d,%d)" % tuple(row["config"][k] for k in "TBIH")
        cells = [config, MODE_LABELS[row["mode"]]]
        if row["status"] == "ERROR":
            lines.append(cells + ["ERROR", "-", "-", "-", "-", "-", "-"])
            continue
        check = row["check"]
        error = "%.1e%s" % (check["fastlstm"]["max"], "" if check["T"] == row["config"]["T"] else "*")
        if row["status"] == "FAILED":
            lines.append(cells + ["FAILED", "-", "-", "-", "-", "-", error])
            continue
        ratio = row.get("torch_over_fastlstm")
        lines.append(cells + [
            format_timing(row["timings"]["fastlstm"]),
            contender_cell(row, "reference"),
            contender_cell(row, "torch"),
            "%.2f" % ratio if ratio else "-",
            format_number(row["gflops"]),
            format_number(row["ceiling_share_pct"]),
            error,
        ])
    return lines


TABLE_HEADERS = ["config (T,B,I,H)", "mode", "fastlstm ms (min-max)", "reference ms", "torch ms",
                 "torch/fastlstm", "GFLOP/s", "% ceiling", "max err"]


def render_table(headers, lines, markdown=False):
    """A plain-text (aligned) or markdown table."""
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(cell) for cell in column) for column in zip(headers, *lines)]
    fmt = "  ".join("%%-%ds" % w for w in widths)
    out = [fmt % tuple(headers), fmt % tuple("-" * w for w in widths)]
    out += [fmt % tuple(line) for line in lines]
    return "\n".join(line.rstrip() for line in out)


def header_lines(env):
    """Lines describing the machine and the software."""
    info = env["cpu_info"]
    return [
        "machine: %s, %d cores available, %s" % (env["cpu"], env["cores"], env["platform"]),
        "fastlstm %s: isa=%s (compiled %s, supported %s), threads=%s, pool=%s (OpenMP runtime "
        "in the process: %s)"
        % (env["fastlstm"], info.get("isa"), ",".join(info.get("compiled", [])),
           ",".join(info.get("supported", [])), info.get("num_threads"),
           info.get("pool_choice", "?"),
           os.path.basename(info["openmp_runtime"]) if info.get("openmp_runtime") else "none"),
        "numpy %s, torch %s, python %s, date %s"
        % (env["numpy"], env["torch"] or "not used", env["python"], env["date"]),
    ]


def footnotes(report):
    """Explanatory notes printed under the table."""
    settings, ceiling, rows = report["settings"], report["ceiling"], report["results"]
    notes = [
        "times are ms per call, median (min-max) over blocks of calls timed round-robin; %s; "
        "torch/fastlstm > 1 means fastlstm is faster." % settings["dtype"],
        ("GFLOP/s counts 8*T*B*H*(I+H) per forward, 3x that for fwd+bwd; " if not settings.get("lengths") else
         "per-sequence lengths %s (x NaN past them; torch through pack_padded_sequence); GFLOP/s counts "
         "8*H*(I+H) per valid position (sum of the lengths instead of T*B) per forward, 3x that for "
         "fwd+bwd; " % settings["lengths"]) +
        "max err = max relative error of fastlstm vs the float64 reference (y, and all gradients in fwd+bwd); "
        "rows above %g are FAILED and not timed." % TOLERANCE,
    ]
    if ceiling["source"] == "option":
        notes.append("%% ceiling: share of %.1f GFLOP/s given with --ceiling." % ceiling["gflops"])
    elif ceiling["source"] == "file":
        notes.append("%% ceiling: share of %.1f GFLOP/s, the best float32 NumPy matmul measured by "
                     "bench/ceiling.py (%s)." % (ceiling["gflops"], os.path.basename(ceiling["file"])))
    else:
        notes.append(
            "%% ceiling: share of %.1f GFLOP/s, a %s %dx%d NumPy matmul measured in-process (best of %d); "
            "OPENBLAS_CORETYPE is %s%s." % (
                ceiling["gflops"], ceiling["dtype"], ceiling["size"], ceiling["size"], ceiling["repeats"],
                "set (%s), which slows NumPy" % ceiling["openblas_coretype"]
                if ceiling["openblas_coretype"] else "not set",
                "" if ceiling["threads_limited"] or settings["threads"] >= report["environment"]["cores"]
                else "; NumPy used all cores (install threadpoolctl to limit it to --threads)"))
    if any(row.get("reference_skipped") for row in rows):
        reasons = sorted({row["reference_skipped"] for row in rows if row.get("reference_skipped")})
        notes.append("reference '-': not timed (%s)." % "; ".join(reasons))
    if any("check" in row and row["check"]["T"] != row["config"]["T"] for row in rows):
        notes.append("*: checked at T=%d (the float64 reference is slow at full T)." % CHECK_SHORT_T)
    if report["environment"]["torch"] is None:
        notes.append("torch '-': PyTorch is not installed (pip install \"torch==2.13.0\", the CPU build)." if not settings["no_torch"]
                     else "torch '-': --no-torch.")
    busy = report["environment"]["busy_cores_at_start"]
    if busy is not None and busy > BUSY_WARNING_CORES:
        notes.append("WARNING: other processes kept about %.1f of %d cores busy when the benchmark started; "
                     "timings are unreliable then (multi-threaded ones most)." % (busy, os.cpu_count() or 1))
    timings = [t for row in rows for t in row.get("timings", {}).values()]
    if any(unstable(t) for t in timings):
        notes.append("!: median more than %gx the minimum; the machine was busy or descheduled threads "
                     "(common on shared VMs with several threads); rerun, or compare with --threads 1."
                     % UNSTABLE_FACTOR)
    for row in rows:
        if row["status"] == "ERROR":
            notes.append("ERROR (%s) %s: %s" % (",".join(str(row["config"][k]) for k in "TBIH"),
                                                MODE_LABELS[row["mode"]], row["error"]))
    if any("torch" in row.get("failed", []) for row in rows):
        notes.append("torch FAILED: torch's error vs the reference exceeded the tolerance (see --json).")
    return notes


def format_report(report, markdown=False):
    """Header, table and footnotes as text (or markdown)."""
    header = header_lines(report["environment"])
    table = render_table(TABLE_HEADERS, table_rows(report["results"]), markdown)
    notes = footnotes(report)
    if markdown:
        return "\n".join(["- " + line for line in header] + ["", table, ""] + ["- " + n for n in notes]) + "\n"
    return "\n".join(header + ["", table, ""] + ["  " + n for n in notes]) + "\n"


# ----------------------------------------------------------------------------- command line

def parse_config(text):
    """'T,B,I,H' -> (T, B, I, H) of positive integers."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError("expected T,B,I,H (four positive integers), got %r" % text)
    return values


def parse_modes(text):
    """'fwd,fwdbwd' -> ('fwd', 'fwdbwd')."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError("modes are a comma-separated subset of %s" % ",".join(MODES))
    return modes


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer, got %r" % text)
    return value


def seed_value(text):
    """--seed: a whole number >= 0 (what numpy.random.default_rng accepts)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("expected an integer >= 0, got %r" % text)
    return value


def nonnegative_seconds(text):
    """A finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("expected a finite number of seconds >= 0, got %r" % text)
    return value


def thread_count(text):
    value = positive_int(text)
    if value > fastlstm._MAX_THREADS:     # (fastlstm.set_num_threads' limit)
        raise argparse.ArgumentTypeError("expected at most %d threads, got %r" % (fastlstm._MAX_THREADS, text))
    return value


def json_safe(value):
    """value with every NaN or infinity replaced by None (null), so that the file is strict
    JSON (RFC 8259; a failed row's errors are often NaN or inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item())      # a NumPy scalar
    return value


def check_output_path(parser, flag, path):
    """Fail now, not after the run, when an output file cannot be written."""
    if path is None:
        return
    if not path:
        parser.error("%s: expected a file path, got an empty one" % flag)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        parser.error("%s: cannot write %r (%s)" % (
            flag, path, "a folder" if os.path.isdir(path) else
            "no such folder" if not os.path.isdir(folder) else "folder not writable"))


def parse_ceiling(parser, text):
    """--ceiling: a positive number, or a bench/ceiling.py JSON file (returned as a dict)."""
    try:
        value = float(text)
    except ValueError:
        try:
            with open(text) as f:
                data = json.load(f)
            gflops = float(data["ceiling_gflops"])
            if gflops > 0 and math.isfinite(gflops):
                return data
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error("--ceiling: cannot read a ceiling from %r (%s)" % (text, exc))
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        parser.error("--ceiling must be a positive, finite number of GFLOP/s or a bench/ceiling.py "
                     "JSON file")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fastlstm.bench",
        description="Benchmark fastlstm's CPU kernels against the NumPy reference and torch.nn.LSTM.")
    parser.add_argument("--quick", action="store_true",
                        help="two small configurations with short timing (a few seconds)")
    parser.add_argument("--config", action="append", type=parse_config, metavar="T,B,I,H",
                        help="configuration to run (repeatable; replaces the default table)")
    parser.add_argument("--modes", type=parse_modes, default=MODES, help="fwd,fwdbwd (default: both)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="threads for fastlstm and torch (default: all available cores)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="timed calls per contender (default: adaptive, ~%gs each, at least %d)"
                        % (TARGET_SECONDS, MIN_REPEATS))
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--ceiling", default=None, metavar="GFLOPS|JSON",
                        help="matmul ceiling in GFLOP/s, or the JSON written by bench/ceiling.py --json "
                        "(default: measured in-process)")
    parser.add_argument("--no-reference", action="store_true", help="do not time the NumPy reference")
    parser.add_argument("--no-torch", action="store_true", help="do not time PyTorch even if installed")
    parser.add_argument("--seed", type=seed_value, default=0, help="random seed for the inputs")
    parser.add_argument("--lengths", action="store_true",
                        help="padded batches: per-sequence lengths uniform in [T/4, T] (torch through "
                             "pack_padded_sequence); GFLOP/s count the valid positions")
    parser.add_argument("--json", metavar="PATH", help="write everything (all samples) as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as markdown")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (this benchmark) or cuda: fastlstm's CUDA kernels against cuDNN "
                        "(python -m fastlstm.bench --device cuda --help)")
    options = parser.parse_args(argv)
    check_output_path(parser, "--json", options.json)
    check_output_path(parser, "--markdown", options.markdown)
    options.ceiling_path = options.ceiling
    if options.ceiling is not None:
        options.ceiling = parse_ceiling(parser, options.ceiling)
    options.configs = options.config or (QUICK_CONFIGS if options.quick else DEFAULT_CONFIGS)
    options.timing = {"target_seconds": QUICK_TARGET_SECONDS if options.quick else TARGET_SECONDS,
                      "rounds": QUICK_ROUNDS if options.quick else ROUNDS,
                      "repeats": options.repeats, "settle_seconds": SETTLE_SECONDS}
    options.threads = options.threads or available_cores()
    return options


def ceiling_info(options):
    """The matmul ceiling and how it was obtained."""
    if isinstance(options.ceiling, dict):
        return {"gflops": float(options.ceiling["ceiling_gflops"]), "source": "file",
                "file": options.ceiling_path, "details": options.ceiling}
    if options.ceiling is not None:
        return {"gflops": options.ceiling, "source": "option"}
    with blas_threads(options.threads) as limited:
        gflops = measure_ceiling(options.dtype)
    return {"gflops": gflops, "source": "measured in-process", "size": CEILING_SIZE,
            "repeats": CEILING_REPEATS, "dtype": options.dtype, "threads_limited": limited,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


def run(options):
    """Run every (configuration, mode) and return the full report."""
    busy = busy_cores()  # first, before any thread pool of ours spins
    fastlstm.set_num_threads(options.threads)
    torch = None if options.no_torch else load_torch(options.threads)
    report = {
        "environment": environment(torch, options.threads, busy),
        "settings": {"dtype": options.dtype, "modes": list(options.modes), "threads": options.threads,
                     "timing": options.timing,
                     "seed": options.seed, "tolerance": TOLERANCE, "no_reference": options.no_reference,
                     "no_torch": options.no_torch, "reference_max_gflop": REFERENCE_MAX_GFLOP,
                     "lengths": "uniform in [T/4, T], random order" if options.lengths else None},
        "ceiling": ceiling_info(options),
        "results": [],
    }
    rng = np.random.default_rng(options.seed)
    with blas_threads(options.threads):
        for config in options.configs:
            for mode in options.modes:
                row = benchmark_row(config, mode, options, torch, rng, report["ceiling"]["gflops"])
                report["results"].append(row)
                print("  done %s %s: %s" % (",".join(map(str, config)), mode, row["status"]),
                      file=sys.stderr, flush=True)
    return report


# ----------------------------------------------------------------------------- GPU (--device cuda)
# fastlstm's CUDA kernels against torch.nn.LSTM (cuDNN) on the same card: the GPU speed issue's
# configurations, every fastlstm kernel path (the persistent kernels as "auto" picks them, and
# the per-step simt kernels) and cuDNN in fp32 (strict IEEE), tf32 and bf16. Also run by
# bench/gpu_bench.py and bench/gpu_check.sh. Nothing here is imported for the CPU benchmark.

GPU_CONFIGS = [(100, 1, 256, 256), (100, 1, 1024, 1024), (100, 16, 512, 512), (100, 64, 512, 512),
               (100, 64, 1024, 1024), (100, 256, 1024, 1024), (1000, 32, 256, 256)]
GPU_FWD_TOL = 1e-4   # fastlstm fp32 vs the float64 reference; max over y, h_n, c_n
GPU_GRAD_TOL = 1e-3  # the same for the six gradients (sums over T*B rows)
# fastlstm tf32 / bf16 vs the float64 reference (sanity bounds; the tests' bounds are tighter,
# tests/test_cuda.py: outputs 2u, gradients 4-5u with u = 2^-11 / 2^-9)
# tf32x3 claims float32's accuracy: fp32's bounds.
GPU_PREC_TOL = {"tf32": (5e-3, 1e-2), "bf16": (2e-2, 5e-2), "tf32x3": (GPU_FWD_TOL, GPU_GRAD_TOL)}
# fastlstm variants timed: (name, kernel path, precision). "auto": persistent for B <= 64 where it fits,
# with tf32 / bf16 / tf32x3 at large B*H^2 the tensor-core recurrence. "tf32x3"
# (float32-accurate products on tensor cores) is compared with cuDNN fp32. "<p>_persistent"
# runs only where "<p>" took the tensor path: the other side of auto's rule (bench/NOTES_GPU.md).
GPU_VARIANTS = (("auto", "auto", "fp32"), ("simt", "simt", "fp32"), ("tf32", "auto", "tf32"),
                ("bf16", "auto", "bf16"), ("tf32_persistent", "persistent", "tf32"),
                ("tf32x3", "auto", "tf32x3"), ("tf32x3_persistent", "persistent", "tf32x3"))
CROSSOVER = ("tf32", "tf32x3")  # the precisions whose tensor path is timed against persistent
GPU_PATHS = ("auto", "simt")          # (kept for callers) the fp32 kernel paths
CUDNN_MODES = ("fp32", "tf32", "bf16")
# which cuDNN mode each fastlstm variant is compared with
VARIANT_CUDNN = {"auto": "fp32", "simt": "fp32", "tf32": "tf32", "bf16": "bf16", "tf32x3": "fp32"}


def _cudnn_fp32(torch, strict):
    """strict=True: cuDNN RNNs and matmuls in IEEE fp32; False: TF32 allowed
    (torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32, PyTorch's default for cuDNN)."""
    rnn = getattr(getattr(torch.backends.cudnn, "rnn", None), "fp32_precision", None)
    if rnn is not None:
        torch.backends.cudnn.rnn.fp32_precision = "ieee" if strict else "tf32"
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cuda.matmul.allow_tf32 = not strict


def _gpu_rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b.ravel())
    d = np.linalg.norm((a - b).ravel())
    return float(d / nb) if nb > 0 else float(d)


def _gpu_time_ms(torch, fn, warmup, reps, budget_s):
    """Median milliseconds of fn over up to reps runs (CUDA events) and the number of runs."""
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


def _gpu_config(cfg, args, torch, cp, fcuda):
    import copy
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
    with torch.no_grad():
        weights = dict(kernel=lstm.weight_ih_l0.t().contiguous(),        # (I, 4H), gates i, f, g, o
                       recurrent_kernel=lstm.weight_hh_l0.t().contiguous(),  # (H, 4H)
                       bias=(lstm.bias_ih_l0 + lstm.bias_hh_l0).contiguous())
    c = {name: cp.asarray(t) for name, t in dict(
        x=x, h0=h0[0].contiguous(), c0=c0[0].contiguous(), dy=dy, dh_n=dh_n[0].contiguous(),
        dc_n=dc_n[0].contiguous(), **weights).items()}
    torch.cuda.synchronize()
    out = dict(config=list(cfg))

    # ---- the float64 reference (torch.nn.LSTM in double on the same inputs) and cuDNN in each
    # mode: outputs and gradients
    models = {"fp32": lstm, "tf32": lstm, "bf16": copy.deepcopy(lstm).to(torch.bfloat16),
              "fp64": copy.deepcopy(lstm).double()}
    cast = {"fp32": lambda t: t, "tf32": lambda t: t, "bf16": lambda t: t.to(torch.bfloat16),
            "fp64": lambda t: t.double()}
    ref = {}
    for mode in ("fp64",) + CUDNN_MODES:
        _cudnn_fp32(torch, strict=mode != "tf32")
        ref[mode] = _lstm_module_results(torch, models[mode], *(cast[mode](t) for t in (x, h0, c0, dy, dh_n, dc_n)))
    _cudnn_fp32(torch, strict=True)
    del models["fp64"]
    r64 = ref.pop("fp64")

    def errors(got):
        fwd = max(_gpu_rel(got[k], r64[k]) for k in ("y", "h_n", "c_n"))
        grad = max(_gpu_rel(got[k], r64[k]) for k in ("dx", "dh0", "dc0", "dk", "dr", "db"))
        return fwd, grad

    for mode in CUDNN_MODES:
        out[f"cudnn_{mode}_err_fwd"], out[f"cudnn_{mode}_err_grad"] = errors(ref[mode])
    del ref

    # ---- fastlstm, each variant: check against the float64 reference, then time
    ok = True
    for name, path, precision in GPU_VARIANTS:
        base = name[:-len("_persistent")] if name.endswith("_persistent") else None
        if base and not _short_kernel(out[f"{base}_kernels"][0]).startswith("tensor-core"):
            continue  # auto did not take the tensor path: nothing to compare it with

        def f_fwd():
            ops.lstm_forward(c["x"], c["kernel"], c["recurrent_kernel"], c["bias"], c["h0"], c["c0"],
                             training=False, backend="cuda", precision=precision)

        def f_fwdbwd():
            saved = ops.lstm_forward(c["x"], c["kernel"], c["recurrent_kernel"], c["bias"], c["h0"], c["c0"],
                                     training=True, backend="cuda", precision=precision)[3]
            ops.lstm_backward(saved, c["dy"], c["dh_n"], c["dc_n"])

        with fcuda.use_kernel_path(path):
            try:
                y, hn, cn, saved = ops.lstm_forward(c["x"], c["kernel"], c["recurrent_kernel"], c["bias"],
                                                    c["h0"], c["c0"], backend="cuda", precision=precision)
                grads = ops.lstm_backward(saved, c["dy"], c["dh_n"], c["dc_n"])
            except RuntimeError as e:
                if path != "persistent":
                    raise
                out[f"{name}_error"] = str(e)  # the persistent kernels do not fit: reported, not fatal
                continue
            torch.cuda.synchronize()
            info = fcuda.info()
            got = dict(zip(("y", "h_n", "c_n", "dx", "dh0", "dc0", "dk", "dr", "db"),
                           [cp.asnumpy(a) for a in (y, hn, cn) + tuple(grads)]))
            del y, hn, cn, saved, grads
            e_fwd, e_grad = errors(got)
            out[f"{name}_err_fwd"], out[f"{name}_err_grad"] = e_fwd, e_grad
            tol_fwd, tol_grad = (GPU_FWD_TOL, GPU_GRAD_TOL) if precision == "fp32" else GPU_PREC_TOL[precision]
            ok = ok and e_fwd <= tol_fwd and e_grad <= tol_grad
            out[f"{name}_kernels"] = [info["last_forward"], info["last_backward"]]
            out[f"{name}_fwd"], out[f"n_{name}_fwd"] = _gpu_time_ms(torch, f_fwd, args.warmup, args.reps,
                                                                    args.budget)
            out[f"{name}_fwdbwd"], out[f"n_{name}_fwdbwd"] = _gpu_time_ms(torch, f_fwdbwd, args.warmup,
                                                                          args.reps, args.budget)
    try:
        ok = _gpu_torch_module(out, lstm, (x, h0, c0, dy, dh_n, dc_n), errors, torch, fcuda, args) and ok
    except Exception as e:  # noqa: BLE001 - the module failing must not cost the row its other measurements
        import traceback
        traceback.print_exc()
        out["torch_module_error"] = f"{type(e).__name__}: {e}"
        ok = False
    out["ok"] = bool(ok)

    # ---- cuDNN timings, each mode (tf32: TF32 allowed for cuDNN and matmuls; bf16: module and
    # inputs in bfloat16)
    for mode in CUDNN_MODES:
        _cudnn_fp32(torch, strict=mode != "tf32")
        fwd, fwdbwd = _time_lstm_module(torch, models[mode], *(cast[mode](t) for t in (x, h0, c0, dy)), args)
        out[f"cudnn_{mode}_fwd"], out[f"cudnn_{mode}_fwdbwd"] = fwd[0], fwdbwd[0]
    _cudnn_fp32(torch, strict=True)
    return out


def _lstm_module_results(torch, model, x, h0, c0, dy, dh_n, dc_n):
    """A one-layer LSTM module's (torch.nn.LSTM's or fastlstm.torch.LSTM's) outputs and the
    gradients of <y, dy> + <h_n, dh_n> + <c_n, dc_n>, as float64 NumPy arrays in fastlstm's
    layouts (dk, dr: (I or H, 4H); db: the one bias's, both being equal as b_ih + b_hh enter the
    same sum)."""
    xg, h0g, c0g = (t.detach().clone().requires_grad_(True) for t in (x, h0, c0))
    y, (hn, cn) = model(xg, (h0g, c0g))
    params = [model.weight_ih_l0, model.weight_hh_l0, model.bias_ih_l0, model.bias_hh_l0]
    g = torch.autograd.grad([y, hn, cn], [xg, h0g, c0g] + params, [dy, dh_n, dc_n])
    cpu = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
    return dict(y=cpu(y), h_n=cpu(hn[0]), c_n=cpu(cn[0]), dx=cpu(g[0]), dh0=cpu(g[1][0]), dc0=cpu(g[2][0]),
                dk=cpu(g[3]).T, dr=cpu(g[4]).T, db=cpu(g[5]))


def _time_lstm_module(torch, model, x, h0, c0, dy, args):
    """(median ms, runs) of a one-layer LSTM module's (torch.nn.LSTM's or fastlstm.torch.LSTM's)
    forward under no_grad, and of its forward + backward of y to the input, the states and the
    four parameters."""
    xg, h0g, c0g = (t.detach().clone().requires_grad_(True) for t in (x, h0, c0))
    params = [model.weight_ih_l0, model.weight_hh_l0, model.bias_ih_l0, model.bias_hh_l0]

    def fwd():
        with torch.no_grad():
            model(x, (h0, c0))

    def fwdbwd():
        y_, _ = model(xg, (h0g, c0g))
        torch.autograd.grad([y_], [xg, h0g, c0g] + params, [dy])

    return (_gpu_time_ms(torch, fwd, args.warmup, args.reps, args.budget),
            _gpu_time_ms(torch, fwdbwd, args.warmup, args.reps, args.budget))


def _gpu_torch_module(out, lstm, tensors, errors, torch, fcuda, args):
    """fastlstm.torch.LSTM (fp32, kernel path auto) with lstm's weights, what a PyTorch user swaps in
    for torch.nn.LSTM: checked against the float64 reference (`errors`), then timed like cuDNN
    (forward under no_grad; forward + backward of y to the input, states and parameters). Fills
    out["torch_module_*"]; returns whether it is within fp32's tolerance."""
    import fastlstm.torch as ftorch
    x, h0, c0, dy, dh_n, dc_n = tensors
    module = ftorch.LSTM(lstm.input_size, lstm.hidden_size).to(x.device)
    module.load_state_dict(lstm.state_dict())
    out["torch_module_err_fwd"], out["torch_module_err_grad"] = errors(
        _lstm_module_results(torch, module, x, h0, c0, dy, dh_n, dc_n))
    out["torch_module_kernels"] = [fcuda.info()["last_forward"], fcuda.info()["last_backward"]]
    (out["torch_module_fwd"], out["n_torch_module_fwd"]), (out["torch_module_fwdbwd"], out["n_torch_module_fwdbwd"]) = \
        _time_lstm_module(torch, module, x, h0, c0, dy, args)
    return out["torch_module_err_fwd"] <= GPU_FWD_TOL and out["torch_module_err_grad"] <= GPU_GRAD_TOL


def _short_kernel(description):
    return (description or "?").split(" (")[0].replace(" forward", "").replace(" backward", "")


def format_gpu_table(results, header):
    lines = [header, ""]
    for mode, label in (("fwd", "forward (inference)"), ("fwdbwd", "forward + backward")):
        lines += [f"### {label}: milliseconds (speedup = cuDNN / fastlstm in the same precision)", "",
                  "| T, B, I, H | fastlstm fp32 auto (kernel) | fastlstm fp32 simt | cuDNN fp32 | speedup auto / simt "
                  "| fastlstm tf32 | cuDNN tf32 | speedup tf32 | fastlstm bf16 | cuDNN bf16 | speedup bf16 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results:
            cfg = ", ".join(str(v) for v in r["config"])
            if "error" in r:
                lines.append(f"| {cfg} | {r['error'][:100]} | | | | | | | | | |")
                continue
            k, kt, kb = (_short_kernel(r[f"{v}_kernels"][0 if mode == "fwd" else 1]) for v in ("auto", "tf32", "bf16"))
            a, sm, t32, b16 = (r[f"{v}_{mode}"] for v in ("auto", "simt", "tf32", "bf16"))
            c32, ctf, cbf = (r[f"cudnn_{m}_{mode}"] for m in CUDNN_MODES)
            lines.append(f"| {cfg} | {a:.3f} ({k}, n={r[f'n_auto_{mode}']}) | {sm:.3f} | {c32:.3f} | "
                         f"{c32 / a:.2f}x / {c32 / sm:.2f}x | {t32:.3f} ({kt}) | {ctf:.3f} | {ctf / t32:.2f}x | "
                         f"{b16:.3f} ({kb}) | {cbf:.3f} | {cbf / b16:.2f}x |")
        lines.append("")
    for p in CROSSOVER:
        crossover = [r for r in results
                     if "error" not in r and (f"{p}_persistent_fwd" in r or f"{p}_persistent_error" in r)]
        if not crossover:
            continue
        lines += [f"### {p}: the tensor-core recurrence (auto) against the persistent kernels, milliseconds", "",
                  "| T, B, I, H | tensor fwd | persistent fwd | tensor fwd+bwd | persistent fwd+bwd |",
                  "|---|---|---|---|---|"]
        for r in crossover:
            cfg = ", ".join(str(v) for v in r["config"])
            if f"{p}_persistent_error" in r:
                lines.append(f"| {cfg} | {r[p + '_fwd']:.3f} | {r[p + '_persistent_error'][:80]} | "
                             f"{r[p + '_fwdbwd']:.3f} | |")
            else:
                lines.append(f"| {cfg} | {r[p + '_fwd']:.3f} | {r[p + '_persistent_fwd']:.3f} | "
                             f"{r[p + '_fwdbwd']:.3f} | {r[p + '_persistent_fwdbwd']:.3f} |")
        lines.append("")
    x3 = [r for r in results if "error" not in r and "tf32x3_fwd" in r]
    if x3:
        lines += ["### tf32x3 (operands split into two tf32 parts, three tensor-core products: float32 "
                  "accuracy) against cuDNN fp32 and fastlstm fp32, milliseconds", "",
                  "| T, B, I, H | tf32x3 fwd (kernel) | cuDNN fp32 fwd | speedup | vs fastlstm fp32 | "
                  "tf32x3 fwd+bwd | cuDNN fp32 fwd+bwd | speedup | vs fastlstm fp32 | error fwd / grad |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in x3:
            cfg = ", ".join(str(v) for v in r["config"])
            kx = _short_kernel(r["tf32x3_kernels"][0])
            f, fb, cf, cfb = r["tf32x3_fwd"], r["tf32x3_fwdbwd"], r["cudnn_fp32_fwd"], r["cudnn_fp32_fwdbwd"]
            lines.append(f"| {cfg} | {f:.3f} ({kx}) | {cf:.3f} | {cf / f:.2f}x | {r['auto_fwd'] / f:.2f}x | "
                         f"{fb:.3f} | {cfb:.3f} | {cfb / fb:.2f}x | {r['auto_fwdbwd'] / fb:.2f}x | "
                         f"{r['tf32x3_err_fwd']:.1e} / {r['tf32x3_err_grad']:.1e} |")
        lines.append("")
    mod = [r for r in results if "error" not in r and "torch_module_fwd" in r]
    mod_failed = [r for r in results if "error" not in r and "torch_module_error" in r]
    if mod or mod_failed:
        lines += ["### fastlstm.torch.LSTM (fp32, kernel path auto: the drop-in for torch.nn.LSTM on CUDA "
                  "tensors) against torch.nn.LSTM (cuDNN fp32), milliseconds", "",
                  "| T, B, I, H | module fwd | cuDNN fp32 fwd | speedup | module / fastlstm.ops fwd | "
                  "module fwd+bwd | cuDNN fp32 fwd+bwd | speedup | module / fastlstm.ops fwd+bwd | "
                  "error fwd / grad |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in mod:
            cfg = ", ".join(str(v) for v in r["config"])
            f, fb, cf, cfb = r["torch_module_fwd"], r["torch_module_fwdbwd"], r["cudnn_fp32_fwd"], r["cudnn_fp32_fwdbwd"]
            lines.append(f"| {cfg} | {f:.3f} | {cf:.3f} | {cf / f:.2f}x | {f / r['auto_fwd']:.2f} | "
                         f"{fb:.3f} | {cfb:.3f} | {cfb / fb:.2f}x | {fb / r['auto_fwdbwd']:.2f} | "
                         f"{r['torch_module_err_fwd']:.1e} / {r['torch_module_err_grad']:.1e} |")
        for r in mod_failed:
            lines.append(f"| {', '.join(str(v) for v in r['config'])} | FAILED: {r['torch_module_error']} |")
        lines += ["", "module / fastlstm.ops: the module's time over fastlstm fp32 auto's through fastlstm.ops "
                  "(its weight transposes, DLPack views and autograd; the backward here has no dh_n / dc_n "
                  "terms, as cuDNN's)", ""]
    lines += ["### errors against the float64 reference (torch.nn.LSTM in double; relative Frobenius norm, "
              "max over y, h_n, c_n / over the six gradients)", "",
              "| T, B, I, H | fastlstm fp32 auto | fastlstm fp32 simt | fastlstm tf32 | fastlstm bf16 | cuDNN fp32 "
              "| cuDNN tf32 | cuDNN bf16 | check |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            continue
        cfg = ", ".join(str(v) for v in r["config"])
        cell = lambda p: f"{r[p + '_err_fwd']:.1e} / {r[p + '_err_grad']:.1e}"  # noqa: E731
        lines.append(f"| {cfg} | {cell('auto')} | {cell('simt')} | {cell('tf32')} | {cell('bf16')} | "
                     f"{cell('cudnn_fp32')} | {cell('cudnn_tf32')} | {cell('cudnn_bf16')} | "
                     f"{'ok' if r['ok'] else 'MISMATCH'} |")
    lines += ["", "speedup = cuDNN time / fastlstm time in the same precision (above 1: fastlstm faster). Medians "
              "of CUDA-event timings; n = runs measured. fastlstm fp32: 'auto' runs the persistent kernels for "
              "B <= 64 where they fit, else the per-step ones (the kernel column says which ran), 'simt' the per-step kernels; fastlstm tf32 / bf16 "
              "(precision=, kernel path auto): the input projection and the weight-gradient and dx products on "
              "tensor cores, the recurrence in fp32 on the persistent / simt kernels, or on the tensor cores too "
              "where auto took the tensor-core recurrence (B >= 32 and B*H^2 >= 2^25; the kernel in "
              "parentheses). cuDNN tf32: TF32 allowed (cudnn and matmul); cuDNN bf16: "
              "module and inputs in bfloat16. check: fastlstm fp32 (fastlstm.torch.LSTM too) and tf32x3 within "
              "%g (outputs) / %g "
              "(gradients) of float64, tf32 within %g / %g, bf16 within %g / %g."
              % (GPU_FWD_TOL, GPU_GRAD_TOL, *GPU_PREC_TOL["tf32"], *GPU_PREC_TOL["bf16"])]
    return "\n".join(lines)


DEADLINE_SKIP = "skipped: out of time (--deadline)"


def _gpu_modules():
    """torch and CuPy (ImportError where either is missing); tests replace this function."""
    import cupy
    import torch
    return torch, cupy


def cuda_main(argv=None):
    """python -m fastlstm.bench --device cuda: fastlstm's CUDA kernels against cuDNN."""
    ap = argparse.ArgumentParser(prog="python -m fastlstm.bench --device cuda",
                                 description="fastlstm (backend='cuda': fp32 on each kernel path, tf32, bf16, "
                                 "tf32x3) "
                                 "against torch.nn.LSTM / cuDNN in fp32, tf32 and bf16 on the same GPU, with "
                                 "errors against a float64 reference.")
    ap.add_argument("--device", choices=("cuda",), default="cuda")
    ap.add_argument("--reps", type=positive_int, default=30, help="timed runs (at most) per measurement")
    ap.add_argument("--warmup", type=seed_value, default=3, help="untimed runs before each measurement")
    ap.add_argument("--budget", type=nonnegative_seconds, default=1.0,
                    help="seconds of timed runs per (configuration, contender, mode) before stopping early")
    ap.add_argument("--deadline", type=nonnegative_seconds, default=0.0,
                    help="skip the remaining configurations after this many seconds (0: none)")
    ap.add_argument("--config", action="append", type=parse_config, metavar="T,B,I,H",
                    help="configuration (repeatable; default: the GPU speed issue's seven)")
    ap.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for gpu_bench.md / gpu_bench.json")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    try:
        torch, cp = _gpu_modules()
    except ImportError as e:
        print(f"the GPU benchmark needs torch (CUDA) and CuPy: {e}", file=sys.stderr)
        return 2
    from fastlstm import cuda as fcuda
    info = fastlstm.cuda_info()
    if not info["available"]:
        print(f"fastlstm CUDA backend not available: {info['reason']}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch sees no CUDA device", file=sys.stderr)
        return 2
    header = (f"fastlstm CUDA vs torch.nn.LSTM (cuDNN {torch.backends.cudnn.version()}) on {info['name']} "
              f"(sm_{info['capability'][0]}{info['capability'][1]}, {info['sm_count']} SMs); torch "
              f"{torch.__version__}, CuPy {cp.__version__}; fastlstm kernels: {info['kernel_variant'].split(':')[0]}")
    print(header, flush=True)
    results = []
    for cfg in args.config or GPU_CONFIGS:
        if args.deadline and time.perf_counter() - t_start > args.deadline:
            results.append(dict(config=list(cfg), error=DEADLINE_SKIP))
            print(f"{cfg}: skipped (deadline)", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            r = _gpu_config(cfg, args, torch, cp, fcuda)
        except Exception as e:  # noqa: BLE001 - report it and go on with the next configuration
            import traceback
            traceback.print_exc()
            r = dict(config=list(cfg), error=f"{type(e).__name__}: {e}")
        finally:
            cp.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
        results.append(r)
        print(f"{cfg}: {json.dumps(r)} ({time.perf_counter() - t0:.1f}s)", flush=True)
    table = format_gpu_table(results, header)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump(json_safe(dict(header=header, info={k: (list(v) if isinstance(v, tuple) else v)
                                                          for k, v in info.items()}, results=results)),
                      f, indent=1, allow_nan=False)
    print()
    print(table, flush=True)
    # a configuration that raised is a failure too; one skipped at --deadline is not
    return 1 if any(not r["ok"] if "error" not in r else r["error"] != DEADLINE_SKIP
                    for r in results) else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    known, _ = pre.parse_known_args(argv)
    if known.device == "cuda":
        return cuda_main(argv)
    argv = [a for a in argv if a not in ("--device=cpu",)]
    if "--device" in argv:
        i = argv.index("--device")
        del argv[i:i + 2]
    options = parse_args(argv)
    report = run(options)
    print(format_report(report), end="")
    if options.json:
        with open(options.json, "w") as f:
            json.dump(json_safe(report), f, indent=1, allow_nan=False)
    if options.markdown:
        with open(options.markdown, "w") as f:
            f.write(format_report(report, markdown=True))
    failed = any(row["status"] != "ok" for row in report["results"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
