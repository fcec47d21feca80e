#!/usr/bin/env bash
# A/B of two builds in alternating processes (NOTES 60), for changes that a run-time switch
# cannot select (compile-time constants): the installed fastlstm ("old") against one installed
# elsewhere with `pip install --no-deps --no-build-isolation --target DIR .` ("new").
#   bash bench/ab_builds.sh DIR rounds n T,B,I,H [T,B,I,H ...]
# Each round runs one old and one new process per size (bench/ab_builds.py, n calls each) from
# /tmp, so that the source tree is not imported. An A/A run (the same code in both) shows the
# noise: single rounds moved by up to 12% at (100,16,256,256) on the Zen 3 VM.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
new=$1; rounds=$2; n=$3; shift 3
for cfg in "$@"; do
  for r in $(seq $rounds); do
    o=$(cd /tmp && python "$here/ab_builds.py" $cfg $n); nw=$(cd /tmp && PYTHONPATH=$new python "$here/ab_builds.py" $cfg $n)
    echo "$cfg old $o"; echo "$cfg new $nw"
  done
done
