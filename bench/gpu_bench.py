#!/usr/bin/env python3
"""GPU benchmark: fastlstm (backend="cuda") against torch.nn.LSTM (cuDNN) on the same card.

    python bench/gpu_bench.py [--reps 30] [--warmup 3] [--budget 1.0] [--deadline SECONDS]
                              [--config T,B,I,H ...] [--out DIR]

The same as ``python -m fastlstm.bench --device cuda`` (the code lives in fastlstm/bench.py, so
that the installed package has it too). For every configuration (default: the GPU speed
issue's seven) it

  * runs cuDNN (torch.nn.LSTM, forward and autograd backward of y, h_n, c_n) in strict fp32,
    tf32 and bf16, and reports the tf32 / bf16 errors against strict fp32;
  * runs fastlstm on each kernel path -- "auto" (the persistent kernels where they fit; the
    table names the kernel that ran) and "simt" (the per-step kernels) -- checks outputs and
    all six gradients against cuDNN strict fp32 (MISMATCH above 1e-4 / 1e-3), and times them;
  * times, with CUDA events after a warm-up, the median of up to --reps runs of the forward
    (fastlstm training=False, torch under no_grad) and of forward + backward, for fastlstm on
    each path and cuDNN in each mode.

Both libraries get device arrays (CuPy views of the torch tensors): no host copies are timed.
The table (speedup = cuDNN time / fastlstm time) is printed last and written to
DIR/gpu_bench.md and DIR/gpu_bench.json (DIR: --out, else $OUT, else nothing is written).
Exit status 1 when a configuration MISMATCHes, 2 when torch / CuPy / a GPU is missing.
"""

import sys

if __name__ == "__main__":
    from fastlstm.bench import cuda_main

    sys.exit(cuda_main(sys.argv[1:]))
