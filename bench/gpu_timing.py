"""Shared by the GPU A/B scripts (bench/gpu_gemm_ab.py, bench/gpu_persistent_ab.py): timing of
several contenders on one card with CUDA events, and switching an environment variable for a
block."""
import contextlib
import os
import statistics


@contextlib.contextmanager
def env(name, value):
    """Inside the block, environment variable `name` is `value` (None: unset); after it, as before."""
    prev = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if prev is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = prev


def timed(contenders, reps, torch):
    """{name: [median, min, max]} in milliseconds of `reps` CUDA-event timings of each callable in
    `contenders` (after one warm-up call each), the contenders interleaved round-robin so that a
    slow phase of the card hits all of them."""
    for fn in contenders.values():
        fn()  # warm-up
    torch.cuda.synchronize()
    times = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: [statistics.median(ts), min(ts), max(ts)] for name, ts in times.items()}
