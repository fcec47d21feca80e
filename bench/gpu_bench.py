#!/usr/bin/env python3
"""GPU benchmark: fastlstm (backend="cuda") against torch.nn.LSTM (cuDNN) on the same card.

    python bench/gpu_bench.py [--reps 30] [--warmup 3] [--budget 1.0] [--deadline SECONDS]
                              [--config T,B,I,H ...] [--out DIR]

The same as ``python -m fastlstm.bench --device cuda`` (the code lives in fastlstm/bench.py, so
that the installed package has it too). For every configuration (default: the GPU speed
issue's seven) it

  * computes a float64 reference (torch.nn.LSTM in double on the same inputs) and runs cuDNN
    (torch.nn.LSTM, forward and autograd backward of y, h_n, c_n) in strict fp32, tf32 (TF32
    allowed for cuDNN and matmuls) and bf16 (module and inputs in bfloat16), with their errors;
  * runs fastlstm in fp32 on each kernel path -- "auto" (the persistent kernels for B <= 64 where they fit;
    the table names the kernel that ran) and "simt" (the per-step kernels) -- and with
    precision="tf32", "bf16" and "tf32x3" (tensor-core GEMMs, kernel path auto; tf32x3 splits
    each operand into two tf32 parts for float32's accuracy and is compared with cuDNN fp32),
    checks outputs and all six gradients against the float64 reference (MISMATCH above 1e-4 /
    1e-3 for fp32 and tf32x3, 5e-3 / 1e-2 for tf32, 2e-2 / 5e-2 for bf16), and times them;
  * times, with CUDA events after a warm-up, the median of up to --reps runs of the forward
    (fastlstm training=False, torch under no_grad) and of forward + backward, for each fastlstm
    variant and cuDNN in each mode; speedups compare the same precision.

Both libraries get device arrays (CuPy views of the torch tensors): no host copies are timed.
The table (speedup = cuDNN time / fastlstm time) is printed last and written to
DIR/gpu_bench.md and DIR/gpu_bench.json (DIR: --out, else $OUT, else nothing is written).
Exit status 1 when a configuration MISMATCHes or raises (one skipped at --deadline does not
count), 2 when torch / CuPy / a GPU is missing.
"""

import sys

if __name__ == "__main__":
    from fastlstm.bench import cuda_main

    sys.exit(cuda_main(sys.argv[1:]))
