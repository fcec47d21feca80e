#!/usr/bin/env bash
# Record a full CPU benchmark run in bench/results/.
#
#   bench/run_cpu.sh [extra arguments for python -m fastlstm.bench]
#
# Needs fastlstm installed (pip install .). OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
# are removed from the environment of these commands only (they can slow NumPy's
# BLAS, which both the matmul ceiling and the NumPy reference use). Writes, under
# one date + machine stamp:
#   <stamp>_ceiling.json   bench/ceiling.py's measurements
#   <stamp>.json           the benchmark's full results (all samples)
#   <stamp>.md             the table in markdown
#   <stamp>.txt            what the benchmark printed
# Set PYTHON to choose the interpreter (default: python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
results="$root/bench/results"
python="${PYTHON:-python3}"
mkdir -p "$results"

cpu="$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)"
cpu="${cpu:-$(uname -m)}"
slug="$(printf '%s' "$cpu" | tr -c 'A-Za-z0-9' '-' | tr -s '-' | sed 's/^-//; s/-$//' | tr 'A-Z' 'a-z')"
stamp="$(date -u +%Y%m%dT%H%M%SZ)_$(hostname -s 2>/dev/null || echo host)_${slug}_$(nproc)c"
base="$results/$stamp"

clean_env=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)

echo "== matmul ceiling -> ${base}_ceiling.json"
"${clean_env[@]}" "$python" "$root/bench/ceiling.py" --repeats 5 --json "${base}_ceiling.json"

echo "== benchmark -> ${base}.json, ${base}.md, ${base}.txt"
# Run from outside the source tree so the installed package (with its compiled core) is used.
(cd "$results" && "${clean_env[@]}" "$python" -m fastlstm.bench --ceiling "${base}_ceiling.json" \
    --json "${base}.json" --markdown "${base}.md" "$@") | tee "${base}.txt"
