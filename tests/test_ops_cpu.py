"""fastlstm.ops (backend "cpu": the fused C++ kernels; also "numpy" and "auto") against
fastlstm.reference run in float64 on the same inputs, on every CPU path of this machine.

Output poisoning is on (conftest), so an element the kernel never writes is NaN and
fails both the isfinite check and the comparison.
"""

import zlib

import numpy as np
import pytest

from fastlstm import _core, ops, reference  # noqa: F401  (_core: fail loudly if the extension is missing)

# float64: the kernels and the reference do the same float64 arithmetic in a different
# order (blocked/FMA GEMMs, vectorised exp/tanh); over these few steps that leaves a few
# ulps times the condition number, far below 1e-12.
TOL64 = 1e-12
# float32: the kernel rounds every op to float32 (eps = 6e-8); after a few dozen ops per
# step over <= 7 steps a correct kernel stays around 1e-7, 2e-6 leaves headroom but
# catches any wrong term (those give errors >= 1e-3).
TOL32 = 2e-6
TOL = {np.dtype(np.float32): TOL32, np.dtype(np.float64): TOL64}
DTYPES = [np.float32, np.float64]

FWD_NAMES = ("y", "h_n", "c_n")
BWD_NAMES = ("dx", "dh0", "dc0", "dkernel", "drecurrent_kernel", "dbias")

# A representative (not full) cross product of the shapes that break naive code:
# H in {1, 3, 17, 64, 100}, I != H, B = 1 and odd, T = 1, lengths mixing 0, 1 and T,
# reverse with lengths, optional h0 / c0 / bias, optional dy / dh_n / dc_n.
CASES = {
    "T1_B1_I1_H1": dict(T=1, B=1, I=1, H=1),
    "I5_H3_len_0_1_T": dict(T=4, B=3, I=5, H=3, lengths=[0, 1, 4]),
    "I5_H3_len_0_1_T_reverse": dict(T=4, B=3, I=5, H=3, lengths=[4, 0, 1], reverse=True),
    "I33_H17_B7_reverse_nobias": dict(T=5, B=7, I=33, H=17, lengths=[5, 0, 1, 3, 5, 2, 4],
                                      reverse=True, bias=False),
    "I64_H64_no_h0_c0": dict(T=3, B=2, I=64, H=64, h0=False, c0=False),
    "I8_H100_B3_no_c0": dict(T=6, B=3, I=8, H=100, c0=False),
    "T1_B7_H17_len_reverse": dict(T=1, B=7, I=4, H=17, lengths=[1, 0, 1, 1, 0, 0, 1], reverse=True),
    "dy_None": dict(T=4, B=3, I=6, H=3, lengths=[2, 4, 0], dy=False),
    "dh_n_dc_n_None": dict(T=5, B=1, I=2, H=64, lengths=[3], dh_n=False, dc_n=False),
    "H1_B4_reverse_no_h0_nobias": dict(T=3, B=4, I=3, H=1, h0=False, bias=False, reverse=True),
    "H3_B1_reverse_nolengths_only_dc_n": dict(T=7, B=1, I=5, H=3, reverse=True, dy=False,
                                              dh_n=False),
    # Past every blocking size of the kernels: T*B and I above the matrix product's K and
    # M blocks, 4H above its column block, B above the recurrent tile's rows, several unit
    # blocks per thread.
    "blocking_T30_B11_I300_H130": dict(T=30, B=11, I=300, H=130,
                                       lengths=[30, 0, 1, 29, 30, 7, 30, 15, 2, 30, 30]),
    # Larger batches: many row tiles per unit block, mixed lengths in every tile.
    "B37_reverse_lengths": dict(T=4, B=37, I=19, H=17, reverse=True,
                                lengths=[(3 * b) % 5 for b in range(37)]),
    "B40_no_bias": dict(T=3, B=40, I=7, H=33, bias=False),
    # Few steps / rows with H a multiple of every vector width: the forward reads
    # recurrent_kernel in place (T <= 2) and kernel in place (T*B <= 32 rows) instead of
    # packing them (csrc/cpu/lstm_kernels.cc, forward).
    "in_place_T1_B1_I40_H32": dict(T=1, B=1, I=40, H=32),
    "in_place_T2_B5_H48_len_reverse": dict(T=2, B=5, I=7, H=48, lengths=[2, 0, 1, 2, 1],
                                           reverse=True),
    "small_projection_T2_B16_H16_no_bias": dict(T=2, B=16, I=9, H=16, bias=False),
    "small_projection_T32_B1_H64_len": dict(T=32, B=1, I=3, H=64, lengths=[29]),
    # Lengths sorted longest first: whole register tiles finish (forward) or have not started
    # (backward) for many steps, and their recurrent product is skipped.
    "sorted_lengths_T9_B20_H24": dict(T=9, B=20, I=5, H=24, lengths=[9, 9, 8, 8, 8, 7, 7, 6, 6, 5,
                                                                     4, 4, 3, 3, 2, 2, 1, 1, 0, 0]),
    "sorted_lengths_T9_B20_H96_reverse": dict(T=9, B=20, I=5, H=96, reverse=True,
                                              lengths=[9, 9, 9, 8, 8, 7, 7, 7, 6, 5, 5, 4, 3, 3, 2,
                                                       2, 1, 1, 1, 0]),
}


def run_ops(case, backend="cpu", training=True):
    y, h_n, c_n, saved = ops.lstm_forward(**case.fwd, training=training, backend=backend)
    return (y, h_n, c_n), saved


def run_reference64(case):
    """The float64 reference on the float64 values of case's (possibly float32) inputs."""
    c64 = case.as_float64()
    y, h_n, c_n, saved = reference.lstm_forward(**c64.fwd)
    grads = reference.lstm_backward(saved, **c64.bwd)
    return (y, h_n, c_n), grads


def check_against_reference(case, outs, grads, ref_outs, ref_grads, rel_err):
    tol = TOL[case.dtype]
    T, B, I, H = case.T, case.B, case.I, case.H
    shapes = dict(y=(T, B, H), h_n=(B, H), c_n=(B, H), dx=(T, B, I), dh0=(B, H), dc0=(B, H),
                  dkernel=(I, 4 * H), drecurrent_kernel=(H, 4 * H), dbias=(4 * H,))
    for name, a, b in zip(FWD_NAMES + BWD_NAMES, tuple(outs) + tuple(grads),
                          tuple(ref_outs) + tuple(ref_grads)):
        if b is None:
            assert a is None, f"{name}: expected None, got {type(a)}"
            continue
        assert isinstance(a, np.ndarray), f"{name}: {type(a)}"
        assert a.shape == shapes[name], f"{name}: shape {a.shape}"
        assert a.dtype == case.dtype, f"{name}: dtype {a.dtype}"
        assert np.isfinite(a).all(), f"{name}: non-finite entries (unwritten output?)"
        err = rel_err(a, b)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:g}"


# --------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CASES))
def test_cpu_matches_reference(isa, name, dtype, make_case, rel_err):
    case = make_case(dtype=dtype, seed=zlib.crc32(name.encode()), **CASES[name])
    outs, saved = run_ops(case, "cpu")
    grads = ops.lstm_backward(saved, **case.bwd)
    assert len(grads) == 6
    ref_outs, ref_grads = run_reference64(case)
    if case.fwd["bias"] is None:
        assert grads[5] is None
    check_against_reference(case, outs, grads, ref_outs, ref_grads, rel_err)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["I33_H17_B7_reverse_nobias", "I8_H100_B3_no_c0", "dy_None"])
def test_numpy_backend_matches_reference(name, dtype, make_case, rel_err):
    case = make_case(dtype=dtype, seed=7, **CASES[name])
    outs, saved = run_ops(case, "numpy")
    grads = ops.lstm_backward(saved, **case.bwd)
    ref_outs, ref_grads = run_reference64(case)
    check_against_reference(case, outs, grads, ref_outs, ref_grads, rel_err)


def test_numpy_backend_float64_is_the_reference(make_case):
    # Same dtype, same inputs: the numpy backend is the reference, so no tolerance.
    case = make_case(dtype=np.float64, seed=3, **CASES["I5_H3_len_0_1_T_reverse"])
    outs, saved = run_ops(case, "numpy")
    grads = ops.lstm_backward(saved, **case.bwd)
    ry, rh, rc, rsaved = reference.lstm_forward(**case.fwd)
    rgrads = reference.lstm_backward(rsaved, **case.bwd)
    for a, b in zip(tuple(outs) + tuple(grads), (ry, rh, rc) + tuple(rgrads)):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- semantics

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_padding_semantics(isa, dtype, reverse, make_case):
    T, B = 5, 6
    lengths = [0, 1, 5, 3, 0, 2]
    case = make_case(T, B, 7, 3, dtype, seed=11, lengths=lengths, reverse=reverse)
    (y, h_n, c_n), saved = run_ops(case, "cpu")
    dx, dh0, dc0, *_ = ops.lstm_backward(saved, **case.bwd)
    for b, L in enumerate(lengths):
        # y and dx are exactly zero past each length ...
        assert np.all(y[L:, b] == 0), f"y[{L}:, {b}] not zero"
        assert np.all(dx[L:, b] == 0), f"dx[{L}:, {b}] not zero"
        # ... and nowhere else identically zero (random inputs)
        assert np.all(y[:L, b] != 0)
        if L == 0:
            # length 0: the state passes through unchanged, and so do its gradients
            np.testing.assert_array_equal(h_n[b], case.fwd["h0"][b])
            np.testing.assert_array_equal(c_n[b], case.fwd["c0"][b])
            np.testing.assert_array_equal(dh0[b], case.bwd["dh_n"][b])
            np.testing.assert_array_equal(dc0[b], case.bwd["dc_n"][b])
        else:
            last = 0 if reverse else L - 1  # the step processed last holds h_n
            np.testing.assert_array_equal(h_n[b], y[last, b])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("T,B,lengths", [(0, 3, None), (3, 0, None), (0, 0, None), (4, 3, [0, 0, 0])],
                         ids=["T0", "B0", "T0_B0", "all_lengths_0"])
def test_empty_work(isa, T, B, lengths, dtype, make_case):
    # No step runs: the state passes through, y is all zeros, weight gradients are exactly 0
    # (with poisoning on, any of them the kernel skips writing would be NaN).
    case = make_case(T, B, 4, 17, dtype, seed=18, lengths=lengths, reverse=True)
    y, h_n, c_n, saved = ops.lstm_forward(**case.fwd, backend="cpu")
    assert y.shape == (T, B, 17) and np.all(y == 0)
    np.testing.assert_array_equal(h_n, case.fwd["h0"])
    np.testing.assert_array_equal(c_n, case.fwd["c0"])
    dx, dh0, dc0, dk, dr, db = ops.lstm_backward(saved, **case.bwd)
    assert dx.shape == (T, B, 4) and np.all(dx == 0)
    np.testing.assert_array_equal(dh0, case.bwd["dh_n"])
    np.testing.assert_array_equal(dc0, case.bwd["dc_n"])
    for g, shape in ((dk, (4, 68)), (dr, (17, 68)), (db, (68,))):
        assert g.shape == shape and g.dtype == case.dtype
        assert np.all(g == 0)


def test_reverse_full_length_is_flipped_forward(isa, make_case):
    # With all lengths = T, reverse must equal the forward run on x[::-1], with y flipped.
    case = make_case(4, 3, 5, 17, np.float64, seed=5)
    y_r, h_r, c_r, _ = ops.lstm_forward(**{**case.fwd, "reverse": True}, backend="cpu")
    y_f, h_f, c_f, _ = ops.lstm_forward(**{**case.fwd, "x": np.ascontiguousarray(case.fwd["x"][::-1])},
                                        backend="cpu")
    np.testing.assert_array_equal(y_r, y_f[::-1])
    np.testing.assert_array_equal(h_r, h_f)
    np.testing.assert_array_equal(c_r, c_f)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("B, H, prepacked", [(1, 32, False), (3, 32, False), (16, 512, False),
                                             (3, 32, True), (16, 512, True)],
                         ids=["B1_H32", "B3_H32", "B16_H512", "B3_H32_packed", "B16_H512_packed"])
def test_step_by_step_equals_whole_sequence(isa, dtype, B, H, prepacked, make_case):
    # A caller streaming one step per call (states carried) gets bitwise the outputs of one
    # call over the whole sequence. The single-step calls read the weights in place at H = 32
    # and pack them at B = 16, H = 512 (too many strided passes, in_place_pays in
    # lstm_kernels.cc), or use the prepacked copy; the whole call packs them. All do the same
    # arithmetic per element (I <= the matrix product's K block, so its sum over I is one run
    # from zero as in the in-place projection).
    case = make_case(40, B, 24, H, dtype, seed=4)
    f = case.fwd
    y, h_n, c_n, _ = ops.lstm_forward(**f, training=False, backend="cpu")
    packed = ops.pack_weights(f["kernel"], f["recurrent_kernel"]) if prepacked else None
    h, c = f["h0"], f["c0"]
    for t in range(40):
        y_t, h, c, _ = ops.lstm_forward(f["x"][t:t + 1], f["kernel"], f["recurrent_kernel"],
                                        f["bias"], h, c, training=False, backend="cpu",
                                        packed=packed)
        np.testing.assert_array_equal(y_t[0], y[t])
    np.testing.assert_array_equal(h, h_n)
    np.testing.assert_array_equal(c, c_n)


# Pre-packed weights (ops.pack_weights) must give bitwise the results of packing in the call:
# the same panels, read from another buffer. Shapes on both projection paths (the matrix
# product: T*B > 32 rows; in place below) and both step paths (packed: T > 2; in place).
PACKED_CASES = {
    "gemm_T30_B11_I300_H130_len": dict(T=30, B=11, I=300, H=130,
                                       lengths=[30, 0, 1, 29, 30, 7, 30, 15, 2, 30, 30]),
    "gemm_T40_B3_I500_H64_reverse": dict(T=40, B=3, I=500, H=64, reverse=True),
    "small_T5_B1_I7_H17": dict(T=5, B=1, I=7, H=17),
    "in_place_T2_B4_I9_H32": dict(T=2, B=4, I=9, H=32),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
@pytest.mark.parametrize("name", sorted(PACKED_CASES))
def test_packed_weights_same_results(isa, name, training, dtype, make_case, rel_err):
    case = make_case(dtype=dtype, seed=11, **PACKED_CASES[name])
    f = case.fwd
    packed = ops.pack_weights(f["kernel"], f["recurrent_kernel"])
    assert (packed.I, packed.H, packed.dtype, packed.isa) == (case.I, case.H, case.dtype, isa)
    plain = ops.lstm_forward(**f, training=training, backend="cpu")
    for _ in range(2):  # the packed weights are read, not consumed
        again = ops.lstm_forward(**f, training=training, backend="cpu", packed=packed)
        for a, b in zip(plain[:3], again[:3]):
            np.testing.assert_array_equal(a, b)
        if training:
            for a, b in zip(ops.lstm_backward(plain[3], **case.bwd), ops.lstm_backward(again[3], **case.bwd)):
                np.testing.assert_array_equal(a, b)
    ry, *_ = reference.lstm_forward(**case.as_float64().fwd, training=False)
    assert rel_err(again[0], ry) <= TOL[case.dtype]


def test_packed_weights_after_a_change(make_case):
    # After the weights change, packing them again gives the new weights' results. (Stale
    # packed weights are documented as unspecified: short calls may read the arrays in place.)
    case = make_case(40, 2, 5, 16, np.float32, seed=12)
    f = dict(case.fwd)
    y0 = ops.lstm_forward(**f, training=False, packed=ops.pack_weights(f["kernel"], f["recurrent_kernel"]))[0]
    f["kernel"] = f["kernel"] * 2
    f["recurrent_kernel"] = f["recurrent_kernel"] * 2
    y1 = ops.lstm_forward(**f, training=False, packed=ops.pack_weights(f["kernel"], f["recurrent_kernel"]))[0]
    assert not np.array_equal(y1, y0)
    np.testing.assert_array_equal(y1, ops.lstm_forward(**f, training=False)[0])


def test_packed_weights_other_isa_is_ignored(make_case):
    # Packed by one instruction set, used under another: ignored (packed again in the call).
    from fastlstm import _core
    isas = _core.supported_isas()
    if len(isas) < 2:
        pytest.skip("needs two instruction sets")
    case = make_case(12, 3, 6, 32, np.float32, seed=13)
    previous = _core.get_isa()
    try:
        _core.set_isa(isas[-1])
        packed = ops.pack_weights(case.fwd["kernel"], case.fwd["recurrent_kernel"])
        _core.set_isa(isas[0])
        y = ops.lstm_forward(**case.fwd, training=False, packed=packed)[0]
        np.testing.assert_array_equal(y, ops.lstm_forward(**case.fwd, training=False)[0])
    finally:
        _core.set_isa(previous)


def test_packed_weights_errors(make_case):
    case = make_case(4, 2, 5, 8, np.float32, seed=14)
    f = case.fwd
    with pytest.raises(TypeError, match="packed: expected the result of fastlstm.ops.pack_weights"):
        ops.lstm_forward(**f, packed=(f["kernel"], f["recurrent_kernel"]))
    other_h = ops.pack_weights(np.ones((5, 36), np.float32), np.ones((9, 36), np.float32))
    with pytest.raises(ValueError, match=r"packed: packed for I=5, H=9, float32, but this call has I=5, H=8"):
        ops.lstm_forward(**f, packed=other_h)
    f64 = ops.pack_weights(f["kernel"].astype(np.float64), f["recurrent_kernel"].astype(np.float64))
    with pytest.raises(ValueError, match="packed: packed for I=5, H=8, float64"):
        ops.lstm_forward(**f, packed=f64)
    with pytest.raises(ValueError, match=r"recurrent_kernel: expected shape \(H, 4H\)"):
        ops.pack_weights(f["kernel"], f["recurrent_kernel"][:, :-1])
    with pytest.raises(ValueError, match=r"kernel: expected shape \(I, 4H\) = \(I, 32\)"):
        ops.pack_weights(f["kernel"][:, :-1], f["recurrent_kernel"])
    with pytest.raises(TypeError, match="kernel: dtype float64 does not match recurrent_kernel.s dtype float32"):
        ops.pack_weights(f["kernel"].astype(np.float64), f["recurrent_kernel"])
    with pytest.raises(TypeError, match="recurrent_kernel: expected a float32 or float64 array"):
        ops.pack_weights(f["kernel"], f["recurrent_kernel"].astype(np.int32))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_training_false(isa, dtype, make_case):
    case = make_case(5, 3, 4, 17, dtype, seed=2, lengths=[5, 0, 2], reverse=True)
    y1, h1, c1, saved1 = ops.lstm_forward(**case.fwd, training=True, backend="cpu")
    y0, h0, c0, saved0 = ops.lstm_forward(**case.fwd, training=False, backend="cpu")
    assert saved1 is not None
    assert saved0 is None
    for a, b in ((y0, y1), (h0, h1), (c0, c1)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
        assert np.isfinite(a).all()


# The backward keeps dz and h_{t-1} for chunks of at least 4096 rows once T*B reaches two
# chunks (csrc/cpu/lstm_kernels.cc, backward) and sums the weight gradients chunk by chunk;
# with lengths and reverse (some length < T) a chunk's rows are in step order, its x rows
# gathered and its dx rows scattered. Against the float64 reference (tolerances as above);
# outputs are poisoned, so a dx row nothing writes fails.
CHUNKED_CASES = {
    "T300_B32_lengths": dict(T=300, B=32, I=5, H=7, lengths=[300 - 9 * b for b in range(32)]),
    "T300_B32_reverse": dict(T=300, B=32, I=6, H=5, reverse=True),
    # lengths with reverse: chunk rows in step order, x gathered and dx scattered per chunk
    "T300_B32_reverse_lengths": dict(T=300, B=32, I=4, H=6, reverse=True,
                                     lengths=[(37 * b) % 301 for b in range(32)]),
    "T300_B32_reverse_lengths_all_T": dict(T=300, B=32, I=4, H=6, reverse=True,
                                           lengths=[300] * 32),
    "T8200_B1_reverse_length": dict(T=8200, B=1, I=3, H=4, reverse=True, lengths=[4100]),
    "T8200_B1": dict(T=8200, B=1, I=3, H=4, bias=False),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(CHUNKED_CASES))
def test_chunked_backward_matches_reference(isa, name, dtype, make_case, rel_err):
    case = make_case(dtype=dtype, seed=zlib.crc32(name.encode()), **CHUNKED_CASES[name])
    outs, saved = run_ops(case, "cpu")
    grads = ops.lstm_backward(saved, **case.bwd)
    ref_outs, ref_grads = run_reference64(case)
    check_against_reference(case, outs, grads, ref_outs, ref_grads, rel_err)


# Inference computes the input projection in chunks of at least 4096 rows once T*B reaches
# two chunks (csrc/cpu/lstm_kernels.cc, forward): (300, 32) gives chunks of 128, 128 and 44
# steps; (8200, 1) two chunks of 4096 and one of 8. The outputs must equal the training
# forward (one projection) bitwise and the float64 reference within the tolerance. With
# lengths rows end inside and between chunks, and each chunk's projection reads and writes
# only the valid positions (training chunks it too then); with lengths and reverse its G
# rows are in step order.
@pytest.mark.parametrize("T,B,lengths", [
    (300, 32, None), (8200, 1, None),
    (300, 32, [300, 0, 1, 127, 128, 129, 255, 256, 257, 299] + [300 - 7 * b for b in range(22)]),
    (8200, 1, [4100])], ids=["T300_B32", "T8200_B1", "T300_B32_len", "T8200_B1_len"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_training_false_chunked_projection(isa, T, B, lengths, reverse, make_case, rel_err):
    case = make_case(T, B, 5, 7, np.float32, seed=9, reverse=reverse, h0=False, c0=False,
                     lengths=lengths)
    y1, h1, c1, _ = ops.lstm_forward(**case.fwd, training=True, backend="cpu")
    y0, h0, c0, _ = ops.lstm_forward(**case.fwd, training=False, backend="cpu")
    for a, b in ((y0, y1), (h0, h1), (c0, c1)):
        np.testing.assert_array_equal(a, b)
    ref = case.as_float64()
    yr, hr, cr, _ = reference.lstm_forward(**ref.fwd, training=False)
    for a, b in ((y0, yr), (h0, hr), (c0, cr)):
        assert rel_err(a, b) <= TOL[np.dtype(np.float32)]


def test_training_false_numpy_backend(make_case):
    case = make_case(3, 2, 4, 3, np.float64, seed=2)
    *_, saved = ops.lstm_forward(**case.fwd, training=False, backend="numpy")
    assert saved is None


def test_backend_auto_picks_cpu(make_case, monkeypatch):
    # this module imported fastlstm._core, so the extension is present
    case = make_case(5, 3, 33, 17, np.float32, seed=4, lengths=[5, 1, 0])
    cpu = ops.lstm_forward(**case.fwd, backend="cpu")
    auto = ops.lstm_forward(**case.fwd, backend="auto")
    assert type(auto[3]) is type(cpu[3])
    for a, b in zip(auto[:3], cpu[:3]):
        np.testing.assert_array_equal(a, b)
    # With the reference made unusable, "auto" still runs (it never goes to NumPy) ...
    def boom(*args, **kwargs):
        raise AssertionError("backend='auto' used the NumPy reference")
    monkeypatch.setattr(reference, "lstm_forward", boom)
    monkeypatch.setattr(reference, "lstm_backward", boom)
    auto = ops.lstm_forward(**case.fwd, backend="auto")
    ops.lstm_backward(auto[3], **case.bwd)
    for a, b in zip(auto[:3], cpu[:3]):
        np.testing.assert_array_equal(a, b)


def test_default_backend_is_auto(make_case):
    case = make_case(3, 2, 4, 3, np.float64, seed=9)
    default = ops.lstm_forward(**case.fwd)
    cpu = ops.lstm_forward(**case.fwd, backend="cpu")
    for a, b in zip(default[:3], cpu[:3]):
        np.testing.assert_array_equal(a, b)


def test_inputs_not_modified(isa, make_case):
    case = make_case(4, 3, 5, 3, np.float64, seed=8, lengths=[4, 0, 2])
    copies = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in case.fwd.items()}
    bcopies = {k: v.copy() for k, v in case.bwd.items()}
    *_, saved = ops.lstm_forward(**case.fwd, backend="cpu")
    ops.lstm_backward(saved, **case.bwd)
    ops.lstm_backward(saved, **case.bwd)  # saved can be used twice
    for k, v in copies.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(case.fwd[k], v)
    for k, v in bcopies.items():
        np.testing.assert_array_equal(case.bwd[k], v)


def test_backward_twice_same_result(isa, make_case):
    case = make_case(4, 3, 5, 3, np.float32, seed=8, lengths=[4, 0, 2], reverse=True)
    *_, saved = ops.lstm_forward(**case.fwd, backend="cpu")
    g1 = ops.lstm_backward(saved, **case.bwd)
    g2 = ops.lstm_backward(saved, **case.bwd)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- memory layout

def _strided(a, rng, kind):
    """A non-contiguous (or Fortran-ordered) array equal to a."""
    if a is None:
        return None
    if kind == "step":
        # embed in a bigger array and take every other element along every axis
        big = rng.standard_normal(tuple(2 * n + 1 for n in a.shape)).astype(a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if kind == "transpose":
        # a view with the first two axes swapped (for 2-D arrays: a.T of a C array)
        if a.ndim < 2:
            return a[::-1][::-1]
        return np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "negative":
        # negative strides along the first axis
        return np.ascontiguousarray(a[::-1])[::-1]
    raise AssertionError(kind)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["step", "transpose", "fortran", "negative"])
def test_noncontiguous_inputs(isa, kind, dtype, make_case):
    case = make_case(5, 3, 6, 17, dtype, seed=12, lengths=[5, 2, 0], reverse=True)
    rng = np.random.default_rng(0)
    ref_outs, saved = run_ops(case, "cpu")
    ref_grads = ops.lstm_backward(saved, **case.bwd)

    fwd = {k: (_strided(v, rng, kind) if isinstance(v, np.ndarray) else v)
           for k, v in case.fwd.items()}
    bwd = {k: _strided(v, rng, kind) for k, v in case.bwd.items()}
    if kind != "fortran":
        assert not fwd["x"].flags.c_contiguous and not fwd["kernel"].flags.c_contiguous
    else:
        assert fwd["x"].flags.f_contiguous and not fwd["x"].flags.c_contiguous
    for k, v in case.fwd.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(fwd[k], v)

    y, h_n, c_n, saved2 = ops.lstm_forward(**fwd, backend="cpu")
    grads = ops.lstm_backward(saved2, **bwd)
    for a, b in zip((y, h_n, c_n) + tuple(grads), tuple(ref_outs) + tuple(ref_grads)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ltype", [np.int32, np.int64, np.uint8, np.intp])
def test_lengths_integer_dtypes_and_lists(isa, ltype, make_case):
    case = make_case(4, 3, 5, 3, np.float64, seed=13, lengths=[4, 0, 2], reverse=True)
    ref = ops.lstm_forward(**case.fwd, backend="cpu")
    for lengths in (case.fwd["lengths"].astype(ltype), [4, 0, 2],
                    np.array([9, 4, 9, 0, 9, 2], dtype=ltype)[1::2]):
        np.testing.assert_array_equal(np.asarray(lengths), [4, 0, 2])
        out = ops.lstm_forward(**{**case.fwd, "lengths": lengths}, backend="cpu")
        for a, b in zip(out[:3], ref[:3]):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- non-finite values

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nan_in_x_propagates(isa, dtype, make_case):
    T, B = 4, 3
    case = make_case(T, B, 5, 17, dtype, seed=14)
    case.fwd["x"][1, 0, 2] = np.nan
    y, h_n, c_n, saved = ops.lstm_forward(**case.fwd, backend="cpu")
    # sequence 0 is NaN from step 1 on (every gate column sees x[1, 0, 2])
    assert np.isfinite(y[0, 0]).all()
    assert np.isnan(y[1:, 0]).all()
    assert np.isnan(h_n[0]).all() and np.isnan(c_n[0]).all()
    # the other sequences are untouched
    assert np.isfinite(y[:, 1:]).all()
    assert np.isfinite(h_n[1:]).all() and np.isfinite(c_n[1:]).all()
    dx, dh0, dc0, dk, dr, db = ops.lstm_backward(saved, **case.bwd)
    assert np.isfinite(dx[:, 1:]).all()
    assert np.isfinite(dh0[1:]).all() and np.isfinite(dc0[1:]).all()
    assert np.isnan(dx[:2, 0]).any()
    assert np.isnan(dk).any() and np.isnan(db).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nan_reverse_with_lengths(isa, dtype, make_case):
    # NaN in a padding position (t >= lengths[b]) must not leak into anything.
    case = make_case(4, 2, 3, 3, dtype, seed=15, lengths=[2, 4], reverse=True)
    case.fwd["x"][3, 0, :] = np.nan
    y, h_n, c_n, saved = ops.lstm_forward(**case.fwd, backend="cpu")
    assert np.isfinite(y).all() and np.isfinite(h_n).all() and np.isfinite(c_n).all()
    grads = ops.lstm_backward(saved, **case.bwd)
    for name, g in zip(BWD_NAMES, grads):
        assert np.isfinite(g).all(), f"{name}: NaN from x at a padding position (t >= lengths[b])"
    assert np.all(y[2:, 0] == 0) and np.all(grads[0][2:, 0] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_inf_inputs(isa, dtype, make_case, rel_err):
    # One +inf and one -inf input: each z column gets a single +-inf term, the gates
    # saturate to exactly 0 / 1 and tanh to +-1; the LSTM output stays finite.
    case = make_case(3, 3, 4, 3, dtype, seed=16)
    case.fwd["x"][1, 0, 1] = np.inf
    case.fwd["x"][0, 2, 3] = -np.inf
    y, h_n, c_n, saved = ops.lstm_forward(**case.fwd, backend="cpu")
    ry, rh, rc, _ = reference.lstm_forward(**case.as_float64().fwd)
    assert np.isfinite(ry).all()  # the math says finite
    for a, b in ((y, ry), (h_n, rh), (c_n, rc)):
        assert np.isfinite(a).all()
        assert rel_err(a, b) <= TOL[np.dtype(dtype)] * 10  # saturated values are exact
    # the backward must not crash; rows without inf stay finite
    dx, dh0, dc0, *_ = ops.lstm_backward(saved, **case.bwd)
    assert dx.shape == case.fwd["x"].shape
    assert np.isfinite(dx[:, 1]).all() and np.isfinite(dh0[1]).all()


def test_large_inputs_saturate(isa, make_case):
    # |z| ~ 1e3: exp overflows in a naive sigmoid; results must still be finite and right.
    # Absolute tolerance: z itself carries a rounding error of eps * |z| (~1e-4 in float32),
    # but the saturated gates are insensitive to it.
    for dtype, atol in ((np.float32, 1e-4), (np.float64, 1e-10)):
        case = make_case(3, 2, 4, 3, dtype, seed=17)
        case.fwd["x"] *= 1e3
        y, h_n, c_n, _ = ops.lstm_forward(**case.fwd, backend="cpu")
        ry, rh, rc, _ = reference.lstm_forward(**case.as_float64().fwd)
        for a, b in ((y, ry), (h_n, rh), (c_n, rc)):
            assert np.isfinite(a).all()
            assert np.max(np.abs(a - b)) <= atol


# --------------------------------------------------------------------------- precision argument
# precision="tf32" / "bf16" / "tf32x3" exist for backend="cuda" only (tensor cores); every other backend
# computes in the inputs' dtype and accepts only "fp32" (the default).

@pytest.mark.parametrize("backend", ["cpu", "numpy", "auto"])
@pytest.mark.parametrize("precision", ["tf32", "bf16", "tf32x3"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_precision_other_than_fp32_needs_backend_cuda(backend, precision, dtype, make_case):
    case = make_case(3, 2, 4, 5, dtype, seed=1)
    with pytest.raises(ValueError, match=rf"precision='{precision}' needs backend=\"cuda\".*float32"):
        ops.lstm_forward(**case.fwd, backend=backend, precision=precision)


@pytest.mark.parametrize("bad", ["fp16", "FP32", "tf32 ", "", None, 32, np.float32])
def test_precision_bad_values_list_the_allowed_ones(bad, make_case):
    case = make_case(3, 2, 4, 5, np.float32, seed=1)
    for backend in ("cpu", "numpy", "auto"):
        with pytest.raises(ValueError, match=r"precision: expected one of \('fp32', 'tf32', 'bf16', 'tf32x3'\)"):
            ops.lstm_forward(**case.fwd, backend=backend, precision=bad)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_precision_fp32_is_the_default(backend, make_case):
    case = make_case(4, 3, 5, 6, np.float32, seed=2, lengths=[4, 0, 2], reverse=True)
    y, h, c, saved = ops.lstm_forward(**case.fwd, backend=backend)
    y2, h2, c2, saved2 = ops.lstm_forward(**case.fwd, backend=backend, precision="fp32")
    assert saved.precision == saved2.precision == "fp32"
    for a, b in zip((y, h, c) + tuple(ops.lstm_backward(saved, **case.bwd)),
                    (y2, h2, c2) + tuple(ops.lstm_backward(saved2, **case.bwd))):
        if a is not None:
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- need_dx=False

# dx's product skipped (an LSTM over data): dx None, every other gradient bitwise as with dx,
# over the backward's paths: one row (dot products), unit split and row split (small H),
# lengths with reverse (compacted chunks), chunked products.
NO_DX_CASES = {
    "B1": dict(T=6, B=1, I=5, H=33),
    "B16_H64_len_rev": dict(T=5, B=16, I=33, H=64, lengths=[5, 0, 1, 3] * 4, reverse=True),
    "B13_H40_split_rows_len": dict(T=7, B=13, I=9, H=40, lengths=[7, 0, 3, 7, 1, 6, 2, 7, 5, 4, 7, 3, 1]),
    "T300_B32_chunked_len_rev": dict(T=300, B=32, I=4, H=6, reverse=True,
                                     lengths=[(37 * b) % 301 for b in range(32)]),
    "B8_H100_nobias": dict(T=4, B=8, I=7, H=100, bias=False),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(NO_DX_CASES))
def test_backward_without_dx(isa, name, dtype, make_case, rel_err):
    case = make_case(dtype=dtype, seed=zlib.crc32(name.encode()), **NO_DX_CASES[name])
    for backend in ("cpu", "numpy"):
        _, saved = run_ops(case, backend)
        full = ops.lstm_backward(saved, **case.bwd)
        part = ops.lstm_backward(saved, **case.bwd, need_dx=False)
        assert full[0] is not None and part[0] is None
        for k, (a, b) in enumerate(zip(part[1:], full[1:]), start=1):
            if b is None:
                assert a is None
                continue
            assert np.isfinite(a).all(), (backend, BWD_NAMES[k])
            assert np.array_equal(a, b), (backend, BWD_NAMES[k], rel_err(a, b))
    # and still the right gradients
    _, ref_grads = run_reference64(case)
    for k in range(1, 6):
        if ref_grads[k] is not None:
            assert rel_err(part[k], ref_grads[k]) <= TOL[case.dtype], BWD_NAMES[k]


@pytest.mark.parametrize("bad", [0, 1, "no", None])
def test_need_dx_must_be_a_bool(bad, make_case):
    case = make_case(T=2, B=2, I=3, H=4)
    _, saved = run_ops(case)
    with pytest.raises(TypeError, match="need_dx: expected a bool"):
        ops.lstm_backward(saved, **case.bwd, need_dx=bad)


# --------------------------------------------------------------------------- batch_first
# fastlstm.ops with batch_first=True: x (B, T, I), y (B, T, H), dy (B, T, H), dx (B, T, I).
#
# The CPU kernels read and write the batch-major arrays in place (lstm.h, batch_major) and do
# the same arithmetic as for time-major arrays, so every result must equal the time-major
# call's bit for bit, on every CPU path of this machine, whatever the thread count. Time-major
# results are checked against the float64 reference in test_ops_cpu.py; here one case per
# path is checked against it too. Output poisoning is on (conftest), so an element the kernel
# never writes is NaN and fails the bitwise comparison.

# The kernels' paths that read x or write y, dy or dx differently: the packed projection,
# in chunks (inference, T*B >= 2 x 4096 rows) or whole; over the valid positions only
# (lengths), in step order (lengths with reverse); the small projection (T*B <= 32 rows, H a
# multiple of 16); the backward's chunks of dz with x gathered and dx scattered; B = 1.
PATH_CASES = dict(CASES)
PATH_CASES.update({
    "chunked_T300_B32": dict(T=300, B=32, I=5, H=7),
    "chunked_T300_B32_reverse_lengths": dict(T=300, B=32, I=4, H=6, reverse=True,
                                             lengths=[(37 * b) % 301 for b in range(32)]),
    "chunked_T300_B32_lengths": dict(T=300, B=32, I=5, H=7,
                                     lengths=[300 - 9 * b for b in range(32)]),
    "chunked_T8200_B1_reverse_length": dict(T=8200, B=1, I=3, H=4, reverse=True, lengths=[4100]),
    "T20_B3_I40_H64": dict(T=20, B=3, I=40, H=64),
})


def batch_major(a):
    return None if a is None else np.ascontiguousarray(a.transpose(1, 0, 2))


def both_layouts(case, training, need_dx=True):
    """(time-major results, batch-major results transposed back to time-major)."""
    fwd_tm = dict(case.fwd)
    fwd_bm = dict(case.fwd, x=batch_major(case.fwd["x"]))
    results = []
    for fwd, first in ((fwd_tm, False), (fwd_bm, True)):
        y, h_n, c_n, saved = ops.lstm_forward(**fwd, training=training, backend="cpu",
                                              batch_first=first)
        if first:
            assert y.flags.c_contiguous
            y = batch_major(y)
        out = [y, h_n, c_n]
        if training:
            bwd = dict(case.bwd, dy=batch_major(case.bwd["dy"]) if first else case.bwd["dy"])
            grads = list(ops.lstm_backward(saved, **bwd, need_dx=need_dx))
            if first and grads[0] is not None:
                assert grads[0].flags.c_contiguous
                grads[0] = batch_major(grads[0])
            out += grads
        results.append(out)
    return results


def assert_same_bits(tm, bm):
    assert len(tm) == len(bm)
    for i, (a, b) in enumerate(zip(tm, bm)):
        if a is None:
            assert b is None, f"result {i}: expected None"
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, f"result {i}"
        np.testing.assert_array_equal(a, b, err_msg=f"result {i}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(PATH_CASES))
def test_batch_first_same_bits_as_time_major(isa, name, dtype, make_case):
    case = make_case(dtype=dtype, seed=zlib.crc32(name.encode()), **PATH_CASES[name])
    tm, bm = both_layouts(case, training=True)
    assert np.isfinite(tm[0]).all()
    assert_same_bits(tm, bm)


@pytest.mark.parametrize("name", ["chunked_T300_B32", "chunked_T300_B32_reverse_lengths",
                                  "chunked_T8200_B1_reverse_length", "small_projection_T2_B16_H16_no_bias",
                                  "I5_H3_len_0_1_T_reverse"])
def test_batch_first_inference_same_bits(isa, name, make_case):
    case = make_case(dtype=np.float32, seed=5, **PATH_CASES[name])
    tm, bm = both_layouts(case, training=False)
    assert_same_bits(tm, bm)


@pytest.mark.parametrize("name", ["chunked_T300_B32_lengths", "blocking_T30_B11_I300_H130", "B40_no_bias"])
def test_batch_first_without_dx(isa, name, make_case):
    case = make_case(dtype=np.float32, seed=6, **PATH_CASES[name])
    tm, bm = both_layouts(case, training=True, need_dx=False)
    assert tm[3] is None and bm[3] is None
    assert_same_bits(tm, bm)


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_first_any_thread_count(threads, num_threads, make_case):
    num_threads(threads)
    case = make_case(dtype=np.float32, seed=8, **PATH_CASES["chunked_T300_B32_reverse_lengths"])
    tm, bm = both_layouts(case, training=True)
    assert_same_bits(tm, bm)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["I33_H17_B7_reverse_nobias", "chunked_T300_B32_reverse_lengths"])
def test_batch_first_matches_reference(isa, name, dtype, make_case, rel_err):
    case = make_case(dtype=dtype, seed=11, **PATH_CASES[name])
    y, h_n, c_n, saved = ops.lstm_forward(**dict(case.fwd, x=batch_major(case.fwd["x"])),
                                          backend="cpu", batch_first=True)
    grads = ops.lstm_backward(saved, **dict(case.bwd, dy=batch_major(case.bwd["dy"])))
    c64 = case.as_float64()
    ry, rh, rc, rsaved = reference.lstm_forward(**c64.fwd)
    rgrads = reference.lstm_backward(rsaved, **c64.bwd)
    got = (y, h_n, c_n) + tuple(grads)
    want = (batch_major(ry), rh, rc, batch_major(rgrads[0])) + tuple(rgrads[1:])
    for i, (a, b) in enumerate(zip(got, want)):
        if b is None:   # (dbias without a bias)
            assert a is None, f"result {i}"
            continue
        assert a.shape == b.shape, f"result {i}"
        assert rel_err(a, b) <= TOL[case.dtype], f"result {i}"


def test_numpy_backend_batch_first(make_case):
    case = make_case(dtype=np.float64, seed=12, **PATH_CASES["I5_H3_len_0_1_T_reverse"])
    y, h_n, c_n, saved = ops.lstm_forward(**case.fwd, backend="numpy")
    grads = ops.lstm_backward(saved, **case.bwd)
    yb, hb, cb, savedb = ops.lstm_forward(**dict(case.fwd, x=batch_major(case.fwd["x"])),
                                          backend="numpy", batch_first=True)
    gradsb = ops.lstm_backward(savedb, **dict(case.bwd, dy=batch_major(case.bwd["dy"])))
    assert yb.shape == (case.B, case.T, case.H) and gradsb[0].shape == (case.B, case.T, case.I)
    assert_same_bits([y, h_n, c_n] + list(grads),
                     [batch_major(yb), hb, cb, batch_major(gradsb[0])] + list(gradsb[1:]))
    assert "batch_first=True" in repr(savedb)


# --------------------------------------------------------------------------- bad input

def test_batch_first_x_shape_error_names_the_layout(make_case):
    case = make_case(3, 2, 4, 5, np.float32)
    with pytest.raises(ValueError, match=r"x: expected a 3-D array \(B, T, I\)"):
        ops.lstm_forward(**dict(case.fwd, x=case.fwd["x"][0]), batch_first=True)
    with pytest.raises(ValueError, match=r"h0: expected shape \(B, H\) = \(3, 5\)"):
        # x (T=3, B=2, I) read batch-major is 3 sequences of 2 steps: h0 (2, 5) no longer fits
        ops.lstm_forward(**case.fwd, batch_first=True)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_batch_first_dy_must_be_batch_major(backend, make_case):
    case = make_case(3, 2, 4, 5, np.float32)
    fwd = dict(case.fwd, x=batch_major(case.fwd["x"]))
    _, _, _, saved = ops.lstm_forward(**fwd, backend=backend, batch_first=True)
    with pytest.raises(ValueError, match=r"dy: expected shape \(B, T, H\) = \(2, 3, 5\), got \(3, 2, 5\)"):
        ops.lstm_backward(saved, case.bwd["dy"])


@pytest.mark.parametrize("bad", [1, 0, "yes", None])
def test_batch_first_must_be_a_bool(bad, make_case):
    case = make_case(3, 2, 4, 5, np.float32)
    with pytest.raises(TypeError, match="batch_first"):
        ops.lstm_forward(**case.fwd, batch_first=bad)
