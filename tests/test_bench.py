"""The benchmark is part of the product (README: `python -m fastlstm.bench --quick`): its CLI
runs end to end on the CPU and writes checked results, and the GPU table renders from a
result set like the one `bench/gpu_check.sh` produces (no timing is asserted anywhere)."""
import json

import pytest

from fastlstm import bench


def test_quick_cli_writes_checked_results(tmp_path, capsys):
    out_json, out_md = tmp_path / "quick.json", tmp_path / "quick.md"
    rc = bench.main(["--quick", "--no-torch", "--no-reference", "--repeats", "3",
                     "--json", str(out_json), "--markdown", str(out_md)])
    assert rc in (0, None)
    printed = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    results = report["results"]
    assert len(results) >= 2 and {r["mode"] for r in results} == {"fwd", "fwdbwd"}
    for r in results:
        # checked against the float64 reference before it was timed (the README's tolerance)
        assert r["status"] == "ok" and not r["failed"], r
        assert 0 < r["check"]["fastlstm"]["max"] <= 1e-4, r["check"]
        t = r["timings"]["fastlstm"]
        assert len(t["samples_ms"]) == t["repeats"] == 3
        assert 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"]
        assert r["gflops"] > 0
    table = out_md.read_text()
    assert "| config (T,B,I,H) |" in table
    rows = [line for line in table.splitlines() if line.startswith("| (")]
    assert len(rows) == len(results)
    assert "config (T,B,I,H)" in printed


def test_lengths_rows_are_checked_with_padding_poisoned(tmp_path):
    # --lengths: padded batches (x NaN past each length, so a contender reading the padding
    # fails its check), FLOPs counted over the valid positions, torch (when installed) through
    # pack_padded_sequence and checked like fastlstm.
    out_json = tmp_path / "lengths.json"
    rc = bench.main(["--config", "12,5,3,8", "--lengths", "--repeats", "3", "--json", str(out_json)])
    assert rc in (0, None)
    report = json.loads(out_json.read_text())
    assert report["settings"]["lengths"]
    results = report["results"]
    assert {r["mode"] for r in results} == {"fwd", "fwdbwd"}
    for r in results:
        assert r["status"] == "ok" and not r["failed"], r
        assert 0 < r["check"]["fastlstm"]["max"] <= 1e-4, r["check"]
        lengths = r["lengths"]
        assert len(lengths) == 5 and all(3 <= n <= 12 for n in lengths)
        per_forward = 8.0 * 8 * (3 + 8) * sum(lengths)
        assert r["flops"] == pytest.approx(per_forward * (1 if r["mode"] == "fwd" else 3))
        if "torch" in r["check"]:
            assert r["check"]["torch"]["max"] <= 1e-4, r["check"]


def test_a_contender_reading_the_padding_fails_its_check(tmp_path, monkeypatch):
    # NaN in an output (here: fastlstm made to ignore the lengths, so it reads x's NaN
    # padding) must fail the check, not pass as a NaN error.
    forward = bench.ops.lstm_forward

    def ignores_lengths(*args, **kwargs):
        kwargs.pop("lengths", None)
        return forward(*args, **kwargs)

    monkeypatch.setattr(bench.ops, "lstm_forward", ignores_lengths)
    out_json = tmp_path / "leak.json"
    bench.main(["--config", "12,5,3,8", "--lengths", "--no-torch", "--modes", "fwd", "--repeats", "3",
                "--json", str(out_json)])
    def strict(name):
        raise ValueError(f"not strict JSON: {name}")
    (row,) = json.loads(out_json.read_text(), parse_constant=strict)["results"]   # no NaN / Infinity
    assert row["status"] == "FAILED" and "timings" not in row


def test_cli_checks_its_output_paths_and_limits_before_running(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "run", lambda options: pytest.fail("ran before checking"))
    for argv, message in ((["--json", str(tmp_path / "no" / "x.json")], "--json: cannot write"),
                          (["--markdown", str(tmp_path)], "--markdown: cannot write"),
                          (["--threads", "2000"], "at most 1024 threads"),
                          (["--ceiling", "inf"], "--ceiling must be a positive, finite"),
                          (["--seed", "-1"], "--seed: expected an integer >= 0"),
                          (["--json", ""], "--json: expected a file path"),
                          (["--markdown", ""], "--markdown: expected a file path")):
        with pytest.raises(SystemExit) as e:
            bench.main(["--quick", "--no-torch"] + argv)
        assert e.value.code == 2 and message in capsys.readouterr().err, argv


def test_a_row_that_raises_while_timing_is_an_error_row_not_a_lost_run(tmp_path, monkeypatch):
    # The check runs at T = min(T, 10) for big rows, the timing at full T: a MemoryError (or a
    # kernel error) there used to end the whole benchmark with a traceback and no JSON for the
    # rows already done; it is the row's ERROR, like an error in the check, and exit status 1.
    time_row = bench.time_row

    def fails_for_the_second_config(config, *args, **kwargs):
        if config[0] == 3:
            raise MemoryError("planted: Unable to allocate 750. MiB")
        return time_row(config, *args, **kwargs)

    monkeypatch.setattr(bench, "time_row", fails_for_the_second_config)
    out_json = tmp_path / "err.json"
    rc = bench.main(["--config", "2,1,2,2", "--config", "3,1,2,2", "--modes", "fwd", "--no-torch",
                     "--no-reference", "--ceiling", "10", "--repeats", "1", "--json", str(out_json)])
    assert rc == 1
    ok, failed = json.loads(out_json.read_text())["results"]
    assert ok["status"] == "ok" and ok["timings"]["fastlstm"]["repeats"] == 1, ok
    assert failed["status"] == "ERROR" and "MemoryError" in failed["error"], failed


def test_a_result_of_the_wrong_shape_fails_the_check(tmp_path, monkeypatch):
    # y without its time axis at T = 1 broadcasts against the reference's (1, B, H) with an
    # error of 0: it passed the check and was timed as fine
    forward = bench.ops.lstm_forward

    def drops_the_time_axis(*args, **kwargs):
        y, h_n, c_n, saved = forward(*args, **kwargs)
        return y[0], h_n, c_n, saved

    monkeypatch.setattr(bench.ops, "lstm_forward", drops_the_time_axis)
    out_json = tmp_path / "shape.json"
    rc = bench.main(["--config", "1,3,4,5", "--modes", "fwd", "--no-torch", "--no-reference",
                     "--ceiling", "10", "--repeats", "1", "--json", str(out_json)])
    (row,) = json.loads(out_json.read_text())["results"]
    assert rc == 1 and row["status"] == "FAILED" and "timings" not in row, row


def test_a_ceiling_file_must_hold_a_finite_ceiling(tmp_path, capsys, monkeypatch):
    # (json.load reads Infinity; the table then showed "% ceiling" 0.000 of "inf GFLOP/s")
    monkeypatch.setattr(bench, "run", lambda options: pytest.fail("ran before checking"))
    for value in ("Infinity", '"1e400"', "-1", "NaN"):
        path = tmp_path / "ceiling.json"
        path.write_text('{"ceiling_gflops": %s}' % value)
        with pytest.raises(SystemExit) as e:
            bench.main(["--quick", "--no-torch", "--ceiling", str(path)])
        assert e.value.code == 2 and "--ceiling" in capsys.readouterr().err, value


def test_gpu_cli_rejects_bad_numbers_before_running(capsys, monkeypatch):
    # --reps 0 ran every configuration into StatisticsError (median of no runs) and exited 0;
    # --deadline -1 skipped them all
    monkeypatch.setattr(bench, "_gpu_modules", lambda: pytest.fail("ran before checking"))
    for argv, option in ((["--reps", "0"], "--reps"), (["--reps", "-3"], "--reps"),
                         (["--warmup", "-1"], "--warmup"), (["--budget", "nan"], "--budget"),
                         (["--budget", "-1"], "--budget"), (["--deadline", "-1"], "--deadline"),
                         (["--deadline", "inf"], "--deadline")):
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", "cuda"] + argv)
        assert e.value.code == 2 and f"argument {option}" in capsys.readouterr().err, argv


def _fake_gpu(monkeypatch, rows):
    """cuda_main on stand-ins for torch, CuPy and the CUDA backend, each configuration's result
    (or exception) taken from rows in order."""
    import types
    ns = types.SimpleNamespace
    torch = ns(__version__="fake", cuda=ns(is_available=lambda: True, empty_cache=lambda: None),
               backends=ns(cudnn=ns(version=lambda: 0)))
    cupy = ns(__version__="fake", get_default_memory_pool=lambda: ns(free_all_blocks=lambda: None))
    monkeypatch.setattr(bench, "_gpu_modules", lambda: (torch, cupy))
    monkeypatch.setattr(bench.fastlstm, "cuda_info", lambda: dict(
        available=True, reason="", name="fake GPU", capability=(9, 0), sm_count=1, kernel_variant="fake"))
    pending = list(rows)

    def gpu_config(cfg, *args):
        r = pending.pop(0)
        if isinstance(r, Exception):
            raise r
        return dict(r, config=list(cfg))

    monkeypatch.setattr(bench, "_gpu_config", gpu_config)
    monkeypatch.setattr(bench, "format_gpu_table", lambda results, header: header)


def test_gpu_cli_exit_status_counts_a_configuration_that_raised(capsys, monkeypatch):
    # a configuration that raised (out of memory, a kernel error) was a row with "error" and
    # exit status 0, as if every configuration had run and matched
    argv = ["--device", "cuda", "--config", "3,2,5,8", "--config", "2,9,4,16", "--out", ""]
    _fake_gpu(monkeypatch, [dict(ok=True), RuntimeError("planted: out of memory")])
    assert bench.main(argv) == 1
    _fake_gpu(monkeypatch, [dict(ok=True), dict(ok=True)])
    assert bench.main(argv) == 0
    _fake_gpu(monkeypatch, [dict(ok=True), dict(ok=False)])
    assert bench.main(argv) == 1
    # one skipped at --deadline is not a failure
    _fake_gpu(monkeypatch, [dict(ok=True)])
    clock = iter([0.0, 0.0, 0.5, 100.0] + [200.0] * 20)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    assert bench.main(argv + ["--deadline", "10"]) == 0
    assert "skipped (deadline)" in capsys.readouterr().out


def test_quick_cli_rejects_a_bad_config(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--config", "10,0,x,4"])
    assert "T,B,I,H" in capsys.readouterr().err


def _gpu_result(config, tensor):
    r = dict(config=list(config), ok=True)
    for v in ("auto", "simt", "tf32", "bf16"):
        r[f"{v}_fwd"], r[f"{v}_fwdbwd"] = 1.5, 4.0
        r[f"n_{v}_fwd"], r[f"n_{v}_fwdbwd"] = 30, 20
        r[f"{v}_err_fwd"], r[f"{v}_err_grad"] = 1e-7, 2e-7
    for m in bench.CUDNN_MODES:
        r[f"cudnn_{m}_fwd"], r[f"cudnn_{m}_fwdbwd"] = 3.0, 6.0
        r[f"cudnn_{m}_err_fwd"], r[f"cudnn_{m}_err_grad"] = 1e-7, 2e-7
    r["auto_kernels"] = ["persistent forward (fp32, 128 blocks)", "persistent backward (fp32, 128 blocks)"]
    r["simt_kernels"] = ["simt forward (100 step launches, forced)", "simt backward (200 step launches, forced)"]
    rec = "tensor-core recurrent {} (100 steps x 2 launches, tf32 wmma, 64x128 tiles x 4 k-slices, auto)"
    r["tf32_kernels"] = [rec.format("forward"), rec.format("backward")] if tensor else r["auto_kernels"]
    r["bf16_kernels"] = r["tf32_kernels"]
    if tensor:
        r["tf32_persistent_fwd"], r["tf32_persistent_fwdbwd"] = 2.5, 7.0
        r["tf32x3_fwd"], r["tf32x3_fwdbwd"] = 2.0, 5.0
        r["tf32x3_err_fwd"], r["tf32x3_err_grad"] = 3e-7, 4e-7
        r["tf32x3_kernels"] = [rec.replace("tf32", "tf32x3").format(k) for k in ("forward", "backward")]
        r["tf32x3_persistent_error"] = "RuntimeError: the persistent kernels do not fit"
    return r


def test_gpu_table_renders_every_section():
    results = [_gpu_result((100, 64, 1024, 1024), tensor=True), _gpu_result((100, 1, 256, 256), tensor=False),
               dict(config=[1000, 32, 256, 256], error="skipped: out of time (--deadline)")]
    table = bench.format_gpu_table(results, "header line")
    lines = table.splitlines()
    assert lines[0] == "header line"
    row = next(line for line in lines if line.startswith("| 100, 64, 1024, 1024 | 1.500 (persistent"))
    assert "1.500 (tensor-core recurrent)" in row and "2.00x" in row   # cuDNN 3.0 / fastlstm 1.5
    assert any(line.startswith("| 100, 1, 256, 256 | 1.500 (persistent") and "1.500 (persistent)" in line
               for line in lines)
    assert any("skipped: out of time" in line for line in lines)
    # the crossover table lists only the configuration where the tensor path ran
    i = lines.index("### tf32: the tensor-core recurrence (auto) against the persistent kernels, milliseconds")
    end = lines.index("", i + 2)
    assert lines[i + 4:end] == ["| 100, 64, 1024, 1024 | 1.500 | 2.500 | 4.000 | 7.000 |"]
    i = lines.index("### tf32x3: the tensor-core recurrence (auto) against the persistent kernels, milliseconds")
    assert lines[i + 4] == "| 100, 64, 1024, 1024 | 2.000 | RuntimeError: the persistent kernels do not fit | 5.000 | |"
    assert sum(line.endswith("| ok |") for line in lines) == 2
    # tf32x3 only where it was measured (older result files have none): cuDNN fp32 3.0 / 2.0,
    # fastlstm fp32 1.5 / 2.0
    i = next(i for i, line in enumerate(lines) if line.startswith("### tf32x3 ("))
    end = lines.index("", i + 2)
    assert lines[i + 4:end] == ["| 100, 64, 1024, 1024 | 2.000 (tensor-core recurrent) | 3.000 | 1.50x | 0.75x | "
                                "5.000 | 6.000 | 1.20x | 0.80x | 3.0e-07 / 4.0e-07 |"]


def test_gpu_ab_tables_and_decisions(tmp_path, capsys, monkeypatch):
    # bench/gpu_persistent_ab.py and bench/gpu_gemm_ab.py write their tables from result rows (no
    # GPU here: the rows are made up, shaped as run_config / step_row / split_row / lstm_row make
    # them), and bench/gpu_decide.py reads those files back into the ratios behind each switch.
    import pathlib
    import sys
    import types
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
    for name in ("gpu_persistent_ab", "gpu_gemm_ab", "gpu_decide"):
        sys.modules.pop(name, None)
    import gpu_decide
    import gpu_gemm_ab
    import gpu_persistent_ab
    torch = types.SimpleNamespace(__version__="0", cuda=types.SimpleNamespace(get_device_name=lambda: "Card"),
                                  backends=types.SimpleNamespace(cudnn=types.SimpleNamespace(version=lambda: 1)))
    t = lambda v: [v, 0.9 * v, 1.1 * v]  # noqa: E731  (median, min, max)
    prow = lambda cfg, p, s, tl=None, **kw: dict(  # noqa: E731
        config=list(cfg), persistent_fwd=t(p), simt_fwd=t(s), cudnn_fwd=t(4.0), persistent_both=t(2 * p),
        simt_both=t(2 * s), cudnn_both=t(8.0), max_rel_persistent_vs_simt=1e-7,
        **({} if tl is None else dict(tiled_fwd=t(tl), tiled_both=t(2 * tl), max_rel_tiled_vs_simt=2e-7)), **kw)
    rows = [prow((100, 16, 512, 512), 1.0, 2.0, tagged_fwd=t(0.8), tagged_both=t(2.5), tagged_bitwise_barrier=True,
                 noprefetch_both=t(2.2), unblocked_fwd=t(1.1), unblocked_both=t(1.9)),
            prow((100, 1, 256, 256), 0.5, 1.0, tagged_bitwise_barrier=False, wshared_fwd=t(0.6),
                 wshared_both=t(0.9), noprefetch_both=t(1.1)),
            prow((100, 64, 512, 512), 2.0, 3.0, 1.5),
            prow((100, 64, 1024, 1024), 10.0, 8.0, 4.0, noahead_fwd=t(11.0), noahead_both=t(22.0),
                 syncstage_fwd=t(12.0), syncstage_both=t(21.0), divstage_fwd=t(10.5), divstage_both=t(20.0)),
            dict(config=[100, 256, 1024, 1024], max_rel_persistent_vs_simt=float("nan"), error="boom"),
            dict(config=[100, 128, 1024, 1024], simt_fwd=t(9.0), cudnn_fwd=t(4.0), simt_both=t(18.0),
                 cudnn_both=t(8.0), max_rel_persistent_vs_simt=float("nan"), tiled_fwd=t(4.5), tiled_both=t(9.0),
                 max_rel_tiled_vs_simt=1e-7)]  # persistent not timed, tiled timed
    # short sequences: at B = 1 persistent costs 0.2 + 0.01 T ms, simt 0.1 + 0.03 T (forward; twice
    # that forward + backward): persistent is slower at T = 1, 2 and no slower from T = 5; at
    # B = 16 it is faster from T = 1 except at T = 4; one (B, I, H) failed, one T did not match
    pstep = lambda T, p, s: dict(T=T, persistent_fwd=t(p), simt_fwd=t(s), persistent_both=t(2 * p),  # noqa: E731
                                 simt_both=t(2 * s), max_rel_persistent_vs_simt=1e-7)
    short = [dict(config=[1, 1024, 1024], steps=[pstep(T, 0.2 + 0.01 * T, 0.1 + 0.03 * T) for T in (1, 2, 5, 16)]),
             dict(config=[16, 512, 512], steps=[pstep(1, 0.1, 0.2), pstep(4, 0.3, 0.2), pstep(16, 0.3, 0.5),
                                                 dict(T=64, max_rel_persistent_vs_simt=3e-3)]),
             dict(config=[16, 1024, 1024], steps=[], error="RuntimeError: boom")]
    for row in short[:2]:
        good = [st for st in row["steps"] if "persistent_fwd" in st]
        for name in ("persistent_fwd", "simt_fwd", "persistent_both", "simt_both"):
            row[f"fit_{name}"] = list(gpu_persistent_ab.fit_line([st["T"] for st in good], [st[name][0] for st in good]))
    fixed, per_step = short[0]["fit_persistent_fwd"]
    assert fixed == pytest.approx(0.2) and per_step == pytest.approx(0.01)
    gpu_persistent_ab.emit(rows, short, torch, str(tmp_path), final=False)
    md = (tmp_path / "gpu_persistent_ab.md").read_text().splitlines()
    assert "| 1, 1024, 1024 | 1 | 0.210 (0.189-0.231) | 0.130 (0.117-0.143) | 0.62x | 0.420 (0.378-0.462) | " \
        "0.260 (0.234-0.286) | 0.62x |" in md
    assert "| 16, 512, 512 | 64 | NOT TIMED: persistent vs simt 3.00e-03 |" in md
    assert "| 16, 1024, 1024 | - | FAILED: RuntimeError: boom |" in md
    assert "| 1, 1024, 1024 | 0.200 ms + 10.00 us x T | 0.100 ms + 30.00 us x T | 0.400 ms + 20.00 us x T | " \
        "0.200 ms + 60.00 us x T |" in md
    assert md[0].startswith("persistent vs simt vs tiled vs cuDNN fp32 on Card")
    assert any(line.startswith("| 100, 64, 1024, 1024 |") and "4.000 (3.600-4.400) / 8.000" in line
               and "| 1.00x / 1.00x |" in line for line in md)  # cuDNN 4 / tiled 4, 8 / 8
    assert any(line.startswith("| 100, 256, 1024, 1024 | NOT TIMED: boom") for line in md)
    # tagged exchange: persistent 1.0 / 2.0 against tagged 0.8 / 2.5, cuDNN 4 / 8
    assert any(line.startswith("| 100, 16, 512, 512 |") and line.endswith(
        "| 0.800 (0.720-0.880) / 2.500 (2.250-2.750) | 1.25x / 0.80x | 5.00x / 3.20x | - | 2.200 (1.980-2.420) (1.10x) | - | - | "
        "1.100 (0.990-1.210) / 1.900 (1.710-2.090) (1.10x / 0.95x) |")
        for line in md)
    assert any(line.startswith("| 100, 1, 256, 256 |")
               and "| MISMATCH (not bitwise the barrier kernels) | - | - |" in line for line in md)
    assert any(line.startswith("| 100, 64, 512, 512 |") and line.endswith("| - | - | - | - | - | - | - | - |")
               for line in md)
    # staged through registers 12 / 21 against cp.async 10 / 20; indexed per element 10.5 / 20 against walked
    assert any(line.startswith("| 100, 64, 1024, 1024 |") and line.endswith(
        "| 12.000 (10.800-13.200) / 21.000 (18.900-23.100) (1.20x / 1.05x) | "
        "10.500 (9.450-11.550) / 20.000 (18.000-22.000) (1.05x / 1.00x) | - |") for line in md)
    # weights in shared memory 0.6 / 0.9 against 0.5 / 1.0; gate inputs not prefetched 1.1 against 1.0
    assert any(line.startswith("| 100, 1, 256, 256 |") and line.endswith(
        "| 0.600 (0.540-0.660) / 0.900 (0.810-0.990) (1.20x / 0.90x) | 1.100 (0.990-1.210) (1.10x) | - | - | - |")
        for line in md)
    assert any(line.startswith("| 100, 128, 1024, 1024 | - | 9.000") and "| 0.89x / 0.89x |" in line for line in md)
    split = dict(name="dx B=1 H=1024 fp32", shape=[100, 1024, 4096], layout="nt", precision="fp32", on=t(0.05),
                 off=t(0.2), cublas=t(0.04), kernel_on="simt gemm (fp32, 128x128 tiles x 32 k-slices)", err_on=1e-7,
                 err_off=1e-7)
    step = dict(name="step fwd B=64 H=1024", shape=[64, 4096, 1024], tf32_plan=["p", "p (cp.async)"], tf32_v1=t(1.0),
                fp32_plan="64x128 tiles x 8 k-slices (simt)", fp32_tiled=t(2.0), fp32_kslices=[128, 256],
                fp32_k128=t(2.0), fp32_k256=t(1.6))
    lstm = dict(config=[100, 64, 1024, 1024], precision="tf32", v1_fwd=t(3.0), v2_fwd=t(2.5), v1_both=t(9.0),
                v2_both=t(10.0), cudnn_fwd=t(2.0), cudnn_both=t(6.0), kernels_v2=["a", "b"])
    gpu_gemm_ab.emit([], [step], [lstm], torch, str(tmp_path), final=False, prows=[split])
    text = (tmp_path / "gpu_gemm_ab.md").read_text()
    assert "| dx B=1 H=1024 fp32 | 100, 1024, 4096 | 50.0 (45.0-55.0) | 200.0 (180.0-220.0) | 4.00x |" in text
    assert "| 20.0 (18.0-22.0); 64x128 tiles x 8 k-slices (simt) | 26.8 | 128: 20.0, 256: 16.0 |" in text
    assert gpu_decide.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "- [100, 64, 1024, 1024] tf32: fwd 1.20x, fwd+bwd 0.90x" in out
    assert "  suggests: keep it off (worst 0.90x)" in out
    assert "  suggests: keep it on (worst 4.00x)" in out
    # tiled against the faster of simt (8) and persistent (10): 2x; at H = 512 against persistent 2.0
    assert any(line.startswith("- [100, 64, 1024, 1024]: fwd 2.00x, fwd+bwd 2.00x") for line in out)
    assert any(line.startswith("- [100, 64, 512, 512]: fwd 1.33x, fwd+bwd 1.33x") for line in out)
    assert any(line.startswith("- [100, 128, 1024, 1024]: fwd 2.00x, fwd+bwd 2.00x") for line in out)
    assert "- [100, 128, 1024, 1024]: -" in out  # persistent not timed there
    assert "  H = 512: persistent faster at B = 16; without a loss below: up to B = 16 (timed B: 16, 64)" in out
    assert "  H = 1024: persistent faster at B = none; without a loss below: up to B = none (timed B: 64, 128)" in out
    assert "- [100, 64, 1024, 1024]: fwd 1.10x, fwd+bwd 1.10x" in out  # staging ahead off / on
    assert "- [100, 16, 512, 512]: fwd 1.25x, fwd+bwd 0.80x; cuDNN / tagged fwd 5.00x, fwd+bwd 3.20x" in out
    assert "- [100, 1, 256, 256]: MISMATCH, not bitwise the barrier kernels: a defect, keep it off" in out
    i = out.index("## weights in registers (FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS): shared / registers")
    assert out[i + 1:i + 3] == ["- [100, 1, 256, 256]: fwd 1.20x, fwd+bwd 0.90x",
                                "  suggests: switch it off where it loses (the rows below 1.00x) (worst 0.90x)"]
    i = out.index("## gate inputs prefetched (FASTLSTM_CUDA_INPUTS_AHEAD): off / on")
    assert out[i + 1:i + 4] == ["- [100, 16, 512, 512]: fwd+bwd 1.10x", "- [100, 1, 256, 256]: fwd+bwd 1.10x",
                                "  suggests: keep it on (worst 1.10x)"]
    i = out.index("## staging by cp.async (FASTLSTM_CUDA_STAGE_ASYNC): registers / cp.async")
    assert out[i + 1:i + 3] == ["- [100, 64, 1024, 1024]: fwd 1.20x, fwd+bwd 1.05x", "  suggests: keep it on (worst 1.05x)"]
    i = out.index("## staging elements walked (FASTLSTM_CUDA_STAGE_WALK): divided / walked")
    assert out[i + 1:i + 3] == ["- [100, 64, 1024, 1024]: fwd 1.05x, fwd+bwd 1.00x", "  suggests: keep it on (worst 1.00x)"]
    i = out.index("## blocked product and sums in registers (FASTLSTM_CUDA_BLOCKED_PRODUCT): off / on")
    assert out[i + 1:i + 3] == ["- [100, 16, 512, 512]: fwd 1.10x, fwd+bwd 0.95x",
                                "  suggests: switch it off where it loses (the rows below 1.00x) (worst 0.95x)"]
    assert not any("load switches off" in line for line in out)
    i = out.index("## kPersistentAutoMinSteps: short sequences, simt / persistent per T (auto ignores T today)")
    assert out[i + 1:i + 11] == [
        "- [1, 1024, 1024] (B, I, H): T = 1 fwd 0.62x / fwd+bwd 0.62x; T = 2 fwd 0.73x / fwd+bwd 0.73x; "
        "T = 5 fwd 1.00x / fwd+bwd 1.00x; T = 16 fwd 1.61x / fwd+bwd 1.61x",
        "  fitted forward: persistent 0.200 ms + 10.00 us x T, simt 0.100 ms + 30.00 us x T",
        "  persistent no slower from T = 5",
        "- [16, 512, 512] T = 64: NOT timed (persistent vs simt 3.0e-03)",
        "- [16, 512, 512] (B, I, H): T = 1 fwd 2.00x / fwd+bwd 2.00x; T = 4 fwd 0.67x / fwd+bwd 0.67x; "
        "T = 16 fwd 1.67x / fwd+bwd 1.67x",
        out[i + 6],  # (its fitted line)
        "  persistent no slower from T = 16",
        "- [16, 1024, 1024]: FAILED (RuntimeError: boom)",
        "  suggests: kPersistentAutoMinSteps = 16 (csrc/cuda/lstm_impl.cuh; the largest over the rows where "
        "persistent catches up; tests/test_cuda.py AUTO_PERSISTENT_MIN_STEPS with it), or a rule on T per B and H "
        "if the rows disagree",
        "## weights in registers (FASTLSTM_CUDA_WEIGHTS_IN_REGISTERS): shared / registers"], out[i:i + 12]
    assert out[i + 6].startswith("  fitted forward: persistent ")
    # a row where persistent is still slower at the longest T: the advice is the batch rule, not
    # "keep 1"; where it catches up from T = 1 everywhere, keep 1
    for rows_short, want in (
            ([dict(config=[64, 512, 512], steps=[pstep(T, 0.5 + 0.05 * T, 0.2 + 0.02 * T) for T in (1, 16)])],
             "  suggests: for (B, I, H) = [[64, 512, 512]] persistent was slower than simt at the longest swept T "
             "(16): revisit kPersistentAutoMaxRows for those B and H (the long-sequence rows of the table above) "
             "before any rule on T"),
            ([dict(config=[1, 256, 256], steps=[pstep(T, 0.1, 0.2) for T in (1, 4)])],
             "  suggests: keep kPersistentAutoMinSteps = 1 (persistent no slower from T = 1 in every row)")):
        gpu_persistent_ab.emit(rows, rows_short, torch, str(tmp_path), final=False)
        capsys.readouterr()
        assert gpu_decide.main([str(tmp_path)]) == 0
        said = capsys.readouterr().out.splitlines()
        assert want in said and sum("kPersistentAutoMinSteps =" in line for line in said) == ("keep" in want), said
    gpu_persistent_ab.emit(rows, short, torch, str(tmp_path), final=False)
    rows[0]["load_switches_bitwise"] = False  # a mismatch is reported under each switch
    gpu_persistent_ab.emit(rows, short, torch, str(tmp_path), final=False)
    capsys.readouterr()
    assert gpu_decide.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("  MISMATCH with the load switches off at [[100, 16, 512, 512]]") for line in out) == 5
    assert "  suggests: keep kTaggedAutoMaxRows = 0 (a mismatch above)" in out
    # without the mismatching row: tagged won fwd but lost fwd+bwd at B = 16 (H = 512)
    rows = [r for r in rows if r.get("tagged_bitwise_barrier") is not False]
    rows.append(prow((100, 1, 512, 512), 0.5, 1.0, tagged_fwd=t(0.4), tagged_both=t(0.9), tagged_bitwise_barrier=True))
    gpu_persistent_ab.emit(rows, short, torch, str(tmp_path), final=False)
    capsys.readouterr()
    assert gpu_decide.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  H = 512: tagged no slower (fwd and fwd+bwd) up to B = 1 (timed B: 1, 16)" in out
    assert "  suggests: tagged only for the batches where it wins (worst 0.80x)" in out
    assert any(line.startswith("  suggests: kTaggedAutoMaxRows = 1 ") for line in out)
    assert any(line.startswith("- step fwd B=64 H=1024: plan") and "fastest 256 k per slice 16.0 us (1.25x)" in line
               for line in out)
    assert gpu_decide.main([str(tmp_path / "missing")]) == 2


def test_gpu_decide_torch_module_rows_with_nonfinite_errors_or_a_failure(tmp_path, capsys, monkeypatch):
    # gpu_bench.json as json_safe writes it: a module whose outputs were NaN has null errors,
    # and a module that raised leaves torch_module_error (the row's other measurements kept):
    # gpu_decide reports both instead of stopping on a TypeError (its whole output lost)
    import json
    import pathlib
    import sys
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
    sys.modules.pop("gpu_decide", None)
    import gpu_decide
    timed = dict(auto_fwd=0.45, auto_fwdbwd=1.0, cudnn_fp32_fwd=0.2, cudnn_fp32_fwdbwd=0.4)
    rows = [dict(config=[100, 1, 256, 256], ok=False, torch_module_fwd=0.6, torch_module_fwdbwd=1.2,
                 torch_module_err_fwd=None, torch_module_err_grad=None, **timed),
            dict(config=[100, 16, 512, 512], ok=False, torch_module_error="RuntimeError: refused", **timed)]
    (tmp_path / "gpu_bench.json").write_text(json.dumps(dict(header="h", info={}, results=rows)))
    assert gpu_decide.main([str(tmp_path)]) == 0
    said = capsys.readouterr().out.split("## fastlstm.torch.LSTM on CUDA tensors", 1)[1].splitlines()
    assert any(line.startswith("- [100, 1, 256, 256] (T, B, I, H): overhead fwd 1.33x") and
               line.endswith("error non-finite / non-finite") for line in said), said
    assert "- [100, 16, 512, 512] (T, B, I, H): FAILED: RuntimeError: refused" in said, said


def test_ceiling_script_rejects_values_that_measure_nothing(capsys, monkeypatch):
    # bench/ceiling.py --repeats 0 (or --sizes 0) printed and wrote a ceiling of 0.0 GFLOP/s
    # (no timed run: best time inf), and --json into a missing folder failed after measuring
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "ceiling.py"
    spec = importlib.util.spec_from_file_location("bench_ceiling", path)
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    monkeypatch.setattr(ceiling, "matmul_gflops", lambda *a: pytest.fail("measured before checking"))
    for argv, option in ((["--repeats", "0"], "--repeats"), (["--sizes", "0"], "--sizes"),
                         (["--sizes", "64,x"], "--sizes"), (["--json", "/nonexistent/dir/c.json"], "--json")):
        with pytest.raises(SystemExit) as e:
            ceiling.main(argv)
        assert e.value.code == 2 and option in capsys.readouterr().err, argv


def _bench_script(name):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("compare, names", [("matmul", ("blas", "own")),
                                             ("adam", ("numpy", "fused")),
                                             ("rmsprop", ("numpy", "fused")),
                                             ("sgd", ("numpy", "fused")),
                                             ("embedding", ("add.at", "kernel"))])
def test_model_step_script_runs_both_ways(compare, names, tmp_path, capsys):
    # bench/model_step.py (NOTES 50, 53) at a tiny size: one row, both contenders timed, and
    # the Dense layers' product and Adam's fused update put back as shipped afterwards
    from fastlstm import _device, layers, optimizers
    shipped = layers._matmul, optimizers._fusable, _device.index_add_rows
    script = _bench_script("model_step")
    out = tmp_path / "m.json"
    script.main(["--config", "3,2,4,5", "--units", "3", "--rounds", "2", "--steps", "2",
                 "--compare", compare, "--json", str(out)])
    assert (layers._matmul, optimizers._fusable, _device.index_add_rows) == shipped
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["compare"] == compare and len(rows) == 1 and rows[0]["config"] == [3, 2, 4, 5]
    for name in names:
        times = rows[0]["times_ms"][name]
        assert len(times) == 2 and all(t > 0 for t in times)
    printed = capsys.readouterr().out
    assert f"| {names[0]}/{names[1]} |" in printed and "| 3, 2, 4, 5 | 3 |" in printed


def test_torch_loop_and_after_torch_op_scripts_run(tmp_path, capsys):
    # bench/torch_loop.py and bench/after_torch_op.py (NOTES 48) at a tiny size: every
    # contender timed, the default pool restored afterwards
    pytest.importorskip("torch")
    import fastlstm
    loop = _bench_script("torch_loop")
    out = tmp_path / "loop.json"
    loop.main(["--config", "3,2,4,5", "--rounds", "2", "--steps", "1", "--json", str(out),
               "--markdown", str(tmp_path / "loop.md")])
    raw = json.loads(out.read_text())["raw"]
    assert [r["mode"] for r in raw] == ["train", "infer"]
    assert set(raw[0]["times_s"]) == {"torch", "fl-own", "fl-auto"}
    assert set(raw[1]["times_s"]) == {"torch", "fl-own", "fl-auto", "fl-cached"}
    assert all(len(v) == 2 and min(v) > 0 for r in raw for v in r["times_s"].values())
    assert "| 3, 2, 4, 5 | infer |" in (tmp_path / "loop.md").read_text()
    after = _bench_script("after_torch_op")
    out2 = tmp_path / "after.json"
    after.main(["--config", "3,2,4,5", "--rounds", "1", "--calls", "2", "--json", str(out2)])
    rows = json.loads(out2.read_text())["rows"]
    assert {(r["pool"], r["after_torch_op"]) for r in rows} == {
        ("own", True), ("own", False), ("auto", True), ("auto", False)}
    assert all(len(r["times_ms"]) == 2 for r in rows)
    assert fastlstm.cpu_info()["pool_choice"] == "auto"
    capsys.readouterr()
