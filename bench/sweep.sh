#!/usr/bin/env bash
# A broad grid against torch.nn.LSTM, to find shapes where fastlstm falls behind (the
# default table has only the four configurations of the CPU speed issue).
#
#   bench/sweep.sh [extra arguments for python -m fastlstm.bench]
#
# T in 1 10 100, B in 1 4 16 64 256, H in 64 128 256 512 1024, I = H; configurations above
# 20 GFLOP per forward are left out (T = 100 with B >= 64 and H = 1024, and B = 256 with
# H = 1024 at T >= 10). Runs bench/run_cpu.sh (results in bench/results/) without the NumPy
# reference: both modes, about 10 minutes on 2 cores. Needs fastlstm and torch installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
configs=()
for T in 1 10 100; do
  for B in 1 4 16 64 256; do
    for H in 64 128 256 512 1024; do
      # forward FLOPs 8*T*B*H*(I+H) with I = H
      if (( 16 * T * B * H * H <= 20000000000 )); then configs+=(--config "$T,$B,$H,$H"); fi
    done
  done
done
exec "$root/bench/run_cpu.sh" --no-reference "${configs[@]}" "$@"
