"""What the GPU check's A/B tables say about the switches still waiting for a measurement.

    python bench/gpu_decide.py DIR

DIR holds what `bash bench/gpu_check.sh` wrote (gpu_persistent_ab.json, gpu_gemm_ab.md). Prints,
for each switch, the measured ratios behind it and what they suggest; it changes nothing (the
constants live in csrc/cuda/lstm_impl.cuh and tensor_gemm.cuh, and each change needs its tests'
expectations updated). A ratio here is "old / new" of the medians of one run: above 1 the new
variant is faster. Missing tables or rows are reported, not guessed.

- tc-gemm-v2 (FASTLSTM_CUDA_GEMM_PIPELINE, `pipeline_requested`): the LSTM rows of gpu_gemm_ab;
- split-k-v1 (FASTLSTM_CUDA_GEMM_SPLITK, on by default): gpu_gemm_ab's split-K table;
- kernel path "tiled" (forced only): gpu_persistent_ab's tiled columns against the faster of simt
  and persistent, per configuration;
- kPersistentAutoMaxRows: per H, the largest B at which the persistent kernels beat simt (and
  tiled where timed) forward + backward;
- staging ahead (FASTLSTM_CUDA_STAGE_AHEAD): persistent with it off / on;
- the tagged exchange (FASTLSTM_CUDA_EXCHANGE, kTaggedAutoMaxRows): persistent with grid
  barriers / with tagged words, per configuration (B <= 64), the largest B per H up to which it
  never lost, and any row where it was not bitwise the barrier kernels (a defect: keep it off);
- kPersistentAutoMinSteps: gpu_persistent_ab's short sequences, per (B, I, H) the smallest swept T
  from which the persistent kernels are no slower than simt, with each path's fitted fixed and
  per-step cost;
- tiled_plan's k per slice: gpu_gemm_ab's per-step sweep, the fastest k per slice against the plan's;
- weights in registers (FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS, on by default; B = 1) and the backward's
  gate inputs loaded a step early (FASTLSTM_CUDA_INPUTS_AHEAD, on by default), staging by cp.async
  (FASTLSTM_CUDA_STAGE_ASYNC, on by default), staging elements walked row by row
  (FASTLSTM_CUDA_STAGE_WALK, on by default) and session 19's blocked product with its partial
  sums added in registers (FASTLSTM_CUDA_BLOCKED_PRODUCT, on by default): persistent with each
  off / on;
- fastlstm.torch.LSTM on CUDA tensors (session 18): gpu_bench.json's module time over fastlstm.ops'
  for the same call, per configuration (its overhead: DLPack views, weight transposes, allocations
  through torch's allocator, autograd), and the module against cuDNN fp32.
"""
import json
import os
import re
import sys

from gpu_gemm_ab import STEP_REPEAT  # bench/ is the script's folder


def load_gemm_ab(folder):
    """The JSON block at the end of gpu_gemm_ab.md, or None."""
    path = os.path.join(folder, "gpu_gemm_ab.md")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        m = re.search(r"```json\n(.*)\n```", f.read(), re.S)
    try:
        return json.loads(m.group(1)) if m else None
    except ValueError:
        return None


def load_json(folder, name):
    """DIR/name read as JSON, or None (missing, or cut short while being written)."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:  # cut short while being written
        return None


def med(row, key):
    v = row.get(key)
    return v[0] if isinstance(v, list) and v and isinstance(v[0], (int, float)) else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(r):
    return "-" if r is None else f"{r:.2f}x"


def fmt_err(v):
    """An error read back from JSON: null where it was NaN or infinite (json_safe)."""
    return "non-finite" if v is None else f"{v:.1e}"


def verdict(out, ratios, good, bad):
    """The worst of `ratios` (old / new) and what it suggests: `good` when no row is below 1."""
    if not ratios:
        out.append("  no timed rows: no evidence either way")
    else:
        out.append(f"  suggests: {good if min(ratios) >= 1.0 else bad} (worst {min(ratios):.2f}x)")


def pipeline(gab, out):
    out.append("## tc-gemm-v2 (FASTLSTM_CUDA_GEMM_PIPELINE): default / pipelined, LSTM on the tensor path")
    rows = (gab or {}).get("lstm", [])
    wins = []
    for row in rows:
        f, b = ratio(med(row, "v1_fwd"), med(row, "v2_fwd")), ratio(med(row, "v1_both"), med(row, "v2_both"))
        out.append(f"- {row.get('config')} {row.get('precision')}: fwd {fmt(f)}, fwd+bwd {fmt(b)}"
                   + ("" if f is not None else f" ({row.get('error', 'not timed: results differed')})"))
        if f is not None and b is not None:
            wins.append(min(f, b))
    verdict(out, wins, "turn it on by default", "keep it off")


def split_k(gab, out):
    out.append("## split-k-v1 (FASTLSTM_CUDA_GEMM_SPLITK, on by default): off / on, and cuBLAS (same mode) / on")
    rows = (gab or {}).get("split", [])
    got = []
    for row in rows:
        r, c = ratio(med(row, "off"), med(row, "on")), ratio(med(row, "cublas"), med(row, "on"))
        out.append(f"- {row.get('name')} {row.get('shape')}: {fmt(r)} (cuBLAS / fastlstm {fmt(c)}) "
                   f"{row.get('kernel_on', row.get('error', ''))}")
        if r is not None:
            got.append(r)
    verdict(out, got, "keep it on", "narrow the rule (some shape is slower split)")


def tiled_and_persistent(pab, out):
    out.append("## kernel path 'tiled' against the faster of simt and persistent (fp32)")
    rows = (pab or {}).get("rows", [])
    timed_rows = [r for r in rows if med(r, "simt_both") is not None]
    tiled_rows = [r for r in timed_rows if med(r, "tiled_fwd") is not None]
    if not tiled_rows:
        out.append("  no timed rows: no evidence either way")
    for row in tiled_rows:
        best_f = min(x for x in (med(row, "simt_fwd"), med(row, "persistent_fwd")) if x is not None)
        best_b = min(x for x in (med(row, "simt_both"), med(row, "persistent_both")) if x is not None)
        out.append(f"- {row['config']}: fwd {fmt(ratio(best_f, med(row, 'tiled_fwd')))}, fwd+bwd "
                   f"{fmt(ratio(best_b, med(row, 'tiled_both')))}; cuDNN / tiled fwd "
                   f"{fmt(ratio(med(row, 'cudnn_fwd'), med(row, 'tiled_fwd')))}, fwd+bwd "
                   f"{fmt(ratio(med(row, 'cudnn_both'), med(row, 'tiled_both')))}")
    for row in rows:
        if "max_rel_tiled_vs_simt" in row and med(row, "tiled_fwd") is None:
            out.append(f"- {row['config']}: tiled NOT timed (tiled vs simt {row['max_rel_tiled_vs_simt']:.1e})")
    if tiled_rows:
        out.append("  suggests: auto should take 'tiled' for fp32 where both ratios are above 1.00x")
    out.append("## kPersistentAutoMaxRows: persistent fwd+bwd against the faster per-step path, per H")
    by_h = {}
    for row in timed_rows:
        T, B, I, H = row["config"]
        others = [x for x in (med(row, "simt_both"), med(row, "tiled_both")) if x is not None]
        r = ratio(min(others), med(row, "persistent_both"))  # None where persistent was not timed
        by_h.setdefault(H, []).append((B, r))
        out.append(f"- {row['config']}: {fmt(r)}")
    for H, pts in sorted(by_h.items()):
        pts = sorted(pts, key=lambda p: p[0])
        wins = [B for B, r in pts if r is not None and r >= 1.0]
        upto = [B for B in wins if all(r is not None and r >= 1.0 for b, r in pts if b <= B)]
        out.append(f"  H = {H}: persistent faster at B = {', '.join(map(str, wins)) or 'none'}; without a loss below: "
                   f"up to B = {max(upto) if upto else 'none'} (timed B: {', '.join(str(B) for B, _ in pts)})")
    out.append("## staging ahead (FASTLSTM_CUDA_STAGE_AHEAD): off / on")
    for row in timed_rows:
        if med(row, "noahead_fwd") is not None:
            out.append(f"- {row['config']}: fwd {fmt(ratio(med(row, 'noahead_fwd'), med(row, 'persistent_fwd')))}, "
                       f"fwd+bwd {fmt(ratio(med(row, 'noahead_both'), med(row, 'persistent_both')))}")


def tagged_exchange(pab, out):
    out.append("## tagged exchange (FASTLSTM_CUDA_EXCHANGE=tagged): persistent barrier / tagged")
    rows = (pab or {}).get("rows", [])
    ratios, by_h, mismatch = [], {}, False
    for row in rows:
        if row.get("tagged_bitwise_barrier") is False:
            mismatch = True
            out.append(f"- {row['config']}: MISMATCH, not bitwise the barrier kernels: a defect, keep it off")
        elif med(row, "tagged_fwd") is not None:
            rf = ratio(med(row, "persistent_fwd"), med(row, "tagged_fwd"))
            rb = ratio(med(row, "persistent_both"), med(row, "tagged_both"))
            rs = [r for r in (rf, rb) if r is not None]
            ratios += rs
            T, B, I, H = row["config"]
            by_h.setdefault(H, []).append((B, min(rs) if rs else None))
            out.append(f"- {row['config']}: fwd {fmt(rf)}, fwd+bwd {fmt(rb)}; cuDNN / tagged fwd "
                       f"{fmt(ratio(med(row, 'cudnn_fwd'), med(row, 'tagged_fwd')))}, fwd+bwd "
                       f"{fmt(ratio(med(row, 'cudnn_both'), med(row, 'tagged_both')))}")
    if mismatch:
        out.append("  suggests: keep kTaggedAutoMaxRows = 0 (a mismatch above)")
        return
    verdict(out, ratios, "tagged everywhere it was timed", "tagged only for the batches where it wins")
    limits = []
    for H, pts in sorted(by_h.items()):
        pts = sorted(pts)
        upto = 0
        for B, r in pts:  # the largest B with no loss at any timed B up to it
            if r is None or r < 1.0:
                break
            upto = B
        limits.append(upto)
        out.append(f"  H = {H}: tagged no slower (fwd and fwd+bwd) up to B = {upto or 'none'} "
                   f"(timed B: {', '.join(str(B) for B, _ in pts)})")
    if limits:
        out.append(f"  suggests: kTaggedAutoMaxRows = {min(limits)} (csrc/cuda/lstm_impl.cuh; the smallest over H; "
                   "tests/test_cuda.py TAGGED_AUTO_MAX_ROWS with it)")


def short_sequences(pab, out):
    """kPersistentAutoMinSteps: per (B, I, H), the smallest swept T from which the persistent
    kernels are no slower than simt (forward and forward + backward), and the fitted fixed and
    per-step costs."""
    out.append("## kPersistentAutoMinSteps: short sequences, simt / persistent per T (auto ignores T today)")
    short = (pab or {}).get("short", [])
    froms, never, timed_any, longest = [], [], False, 0
    for row in short:
        steps = [s for s in row.get("steps", []) if med(s, "persistent_fwd") is not None]
        for s in row.get("steps", []):
            if med(s, "persistent_fwd") is None:
                out.append(f"- {row['config']} T = {s.get('T')}: NOT timed "
                           f"({s.get('error') or 'persistent vs simt %.1e' % s.get('max_rel_persistent_vs_simt', float('nan'))})")
        if "error" in row:
            out.append(f"- {row['config']}: FAILED ({row['error']})")
        if not steps:
            continue
        timed_any = True
        cells = []
        first = None  # the smallest T from which persistent never lost (fwd and fwd+bwd)
        for s in sorted(steps, key=lambda s: s["T"]):
            rf = ratio(med(s, "simt_fwd"), med(s, "persistent_fwd"))
            rb = ratio(med(s, "simt_both"), med(s, "persistent_both"))
            cells.append(f"T = {s['T']} fwd {fmt(rf)} / fwd+bwd {fmt(rb)}")
            if min(rf, rb) >= 1.0:
                first = s["T"] if first is None else first
            else:
                first = None
        out.append(f"- {row['config']} (B, I, H): " + "; ".join(cells))
        fit = row.get("fit_persistent_fwd"), row.get("fit_simt_fwd")
        if all(isinstance(f, list) and len(f) == 2 for f in fit):
            out.append(f"  fitted forward: persistent {fit[0][0]:.3f} ms + {fit[0][1] * 1e3:.2f} us x T, "
                       f"simt {fit[1][0]:.3f} ms + {fit[1][1] * 1e3:.2f} us x T")
        largest = max(s["T"] for s in steps)
        longest = max(longest, largest)
        if first is not None:
            out.append(f"  persistent no slower from T = {first}")
            froms.append(first)
        else:
            out.append(f"  persistent slower at T = {largest} (the longest swept): auto's persistent choice loses "
                       "here even for longer sequences")
            never.append(row["config"])
    if not timed_any:
        out.append("  no timed rows: no evidence either way")
        return
    if never:
        out.append(f"  suggests: for (B, I, H) = {never} persistent was slower than simt at the longest swept T "
                   f"({longest}): revisit kPersistentAutoMaxRows for those B and H (the long-sequence rows of the "
                   "table above) before any rule on T")
    if froms and max(froms) > 1:
        out.append(f"  suggests: kPersistentAutoMinSteps = {max(froms)} (csrc/cuda/lstm_impl.cuh; the largest over the "
                   "rows where persistent catches up; tests/test_cuda.py AUTO_PERSISTENT_MIN_STEPS with it), or a "
                   "rule on T per B and H if the rows disagree")
    elif froms and not never:
        out.append("  suggests: keep kPersistentAutoMinSteps = 1 (persistent no slower from T = 1 in every row)")


def default_switches(pab, out):
    """The switches that are on by default with nothing to set but their default: off / on."""
    rows = (pab or {}).get("rows", [])
    for title, keys in (("weights in registers (FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS): shared / registers",
                         (("fwd", "wshared_fwd", "persistent_fwd"), ("fwd+bwd", "wshared_both", "persistent_both"))),
                        ("gate inputs prefetched (FASTLSTM_CUDA_INPUTS_AHEAD): off / on",
                         (("fwd+bwd", "noprefetch_both", "persistent_both"),)),
                        ("staging by cp.async (FASTLSTM_CUDA_STAGE_ASYNC): registers / cp.async",
                         (("fwd", "syncstage_fwd", "persistent_fwd"), ("fwd+bwd", "syncstage_both", "persistent_both"))),
                        ("staging elements walked (FASTLSTM_CUDA_STAGE_WALK): divided / walked",
                         (("fwd", "divstage_fwd", "persistent_fwd"), ("fwd+bwd", "divstage_both", "persistent_both"))),
                        ("blocked product and sums in registers (FASTLSTM_CUDA_BLOCKED_PRODUCT): off / on",
                         (("fwd", "unblocked_fwd", "persistent_fwd"),
                          ("fwd+bwd", "unblocked_both", "persistent_both")))):
        out.append(f"## {title}")
        ratios = []
        bad = [row["config"] for row in rows if row.get("load_switches_bitwise") is False]
        if bad:
            out.append(f"  MISMATCH with the load switches off at {bad}: a defect (the same bits are the design); "
                       "switch them off (their env defaults in persistent.cuh) until it is found")
        for row in rows:
            rs = [(what, ratio(med(row, off), med(row, on))) for what, off, on in keys if med(row, off) is not None]
            if rs:
                ratios += [r for _, r in rs if r is not None]
                out.append(f"- {row['config']}: " + ", ".join(f"{what} {fmt(r)}" for what, r in rs))
        verdict(out, ratios, "keep it on", "switch it off where it loses (the rows below 1.00x)")


def tiled_kslice(gab, out):
    out.append("## tiled_plan's k per slice: the plan's against the fastest of the sweep (us per step)")
    for row in (gab or {}).get("step", []):
        plan = med(row, "fp32_tiled")
        if plan is None:
            continue
        sweep = {ks: med(row, f"fp32_k{ks}") for ks in row.get("fp32_kslices", [])}
        sweep = {ks: v for ks, v in sweep.items() if v is not None}
        if not sweep:
            continue
        ks, best = min(sweep.items(), key=lambda kv: kv[1])
        us = 1000.0 / STEP_REPEAT  # milliseconds for STEP_REPEAT steps -> us per step
        out.append(f"- {row['name']}: plan {row.get('fp32_plan')} {plan * us:.1f} us, fastest {ks} k per slice "
                   f"{best * us:.1f} us ({fmt(plan / best)})")


def torch_module(bench, out):
    out.append("## fastlstm.torch.LSTM on CUDA tensors: module / fastlstm.ops (its overhead), cuDNN fp32 / module")
    rows = [r for r in (bench or {}).get("results", []) if "torch_module_fwd" in r and "auto_fwd" in r]
    if bench is None:
        out.append("  gpu_bench.json missing")
    for r in (bench or {}).get("results", []):
        if "torch_module_error" in r:
            out.append(f"- {r['config']} (T, B, I, H): FAILED: {r['torch_module_error']}")
    worst = []
    for r in rows:
        over = [ratio(r[f"torch_module_{m}"], r[f"auto_{m}"]) for m in ("fwd", "fwdbwd")]
        speed = [ratio(r[f"cudnn_fp32_{m}"], r[f"torch_module_{m}"]) for m in ("fwd", "fwdbwd")]
        worst += [v for v in over if v is not None]
        out.append(f"- {r['config']} (T, B, I, H): overhead fwd {fmt(over[0])} fwd+bwd {fmt(over[1])}; "
                   f"cuDNN / module fwd {fmt(speed[0])} fwd+bwd {fmt(speed[1])}; error "
                   f"{fmt_err(r.get('torch_module_err_fwd'))} / {fmt_err(r.get('torch_module_err_grad'))}")
    if not worst:
        out.append("  no timed rows: no evidence either way")
    elif max(worst) > 1.3:
        out.append(f"  suggests: the module costs up to {max(worst):.2f}x fastlstm.ops' time: look at the "
                   "allocator hook first (fastlstm/torch.py _CudaRoute._allocate), then the per-call weight "
                   "transposes (NOTES_GPU, session 18)")
    else:
        out.append(f"  suggests: nothing to do (overhead at most {max(worst):.2f}x)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    gab, pab = load_gemm_ab(argv[0]), load_json(argv[0], "gpu_persistent_ab.json")
    out = [f"gpu_gemm_ab.md: {'found' if gab else 'MISSING'}; gpu_persistent_ab.json: {'found' if pab else 'MISSING'}"]
    pipeline(gab, out)
    split_k(gab, out)
    tiled_and_persistent(pab, out)
    tagged_exchange(pab, out)
    short_sequences(pab, out)
    default_switches(pab, out)
    tiled_kslice(gab, out)
    torch_module(load_json(argv[0], "gpu_bench.json"), out)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
