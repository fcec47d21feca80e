"""Tests of fastlstm.optimizers (Keras-3-style SGD, Adam, AdamW, RMSprop on NumPy arrays).

Each optimizer is checked against a reference written here from the Keras 3 formulas, in
float64 and element-wise simple NumPy, on a small fixed vector for a few steps with changing
gradients. Clipping, schedules, state save/restore, configs and errors are checked too.
"""

import json

import numpy as np
import pytest

from fastlstm import optimizers as opt_mod  # the installed package (pip install .)
SGD, Adam, AdamW, RMSprop = opt_mod.SGD, opt_mod.Adam, opt_mod.AdamW, opt_mod.RMSprop

W0 = np.array([0.5, -1.25, 2.0, 0.0])
# Three steps of gradients; the signs and sizes change so momentum/amsgrad/centered matter.
GRADS = [np.array([0.3, -0.7, 1.5, -0.2]),
         np.array([-0.1, 0.4, 2.5, 0.05]),
         np.array([0.2, 0.1, -0.3, 0.6])]


def run(opt, w0=W0, grads=GRADS, dtype=np.float64):
    """Apply the gradient sequence to a copy of w0; returns the final weights."""
    w = np.array(w0, dtype=dtype)
    for g in grads:
        opt.apply([np.array(g, dtype=dtype)], [w])
    return w


# --------------------------------------------------------------------------- references

def ref_sgd(lr, momentum=0.0, nesterov=False, wd=None, w0=W0, grads=GRADS):
    w = np.array(w0, dtype=np.float64)
    m = np.zeros_like(w)
    for g in grads:
        if wd is not None:
            w = w - w * wd * lr
        if momentum == 0.0:
            w = w - lr * g
        else:
            m = momentum * m - lr * g
            if nesterov:
                w = w + (momentum * m - lr * g)
            else:
                w = w + m
    return w


def ref_adam(lr, b1=0.9, b2=0.999, eps=1e-7, amsgrad=False, wd=None, w0=W0, grads=GRADS):
    w = np.array(w0, dtype=np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    vmax = np.zeros_like(w)
    for step, g in enumerate(grads):
        t = step + 1
        if wd is not None:
            w = w - w * wd * lr
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        if amsgrad:
            vmax = np.maximum(vmax, v)
            w = w - alpha * m / (np.sqrt(vmax) + eps)
        else:
            w = w - alpha * m / (np.sqrt(v) + eps)
    return w


def ref_rmsprop(lr, rho=0.9, momentum=0.0, eps=1e-7, centered=False, wd=None, w0=W0,
                grads=GRADS):
    w = np.array(w0, dtype=np.float64)
    v = np.zeros_like(w)
    mg = np.zeros_like(w)
    mom = np.zeros_like(w)
    for g in grads:
        if wd is not None:
            w = w - w * wd * lr
        v = rho * v + (1 - rho) * g ** 2
        if centered:
            mg = rho * mg + (1 - rho) * g
            denom = v - mg ** 2
        else:
            denom = v
        inc = lr * g / np.sqrt(denom + eps)
        if momentum > 0:
            mom = momentum * mom + inc
            w = w - mom
        else:
            w = w - inc
    return w


def close(a, b, rtol=1e-12, atol=1e-14):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- SGD

def test_sgd_plain_by_hand():
    w = np.array([1.0, -2.0])
    opt = SGD(learning_rate=0.1)
    opt.apply([np.array([0.5, 1.0])], [w])
    close(w, [0.95, -2.1])
    opt.apply([np.array([-1.0, 0.0])], [w])
    close(w, [1.05, -2.1])
    assert opt.iterations == 2


def test_sgd_defaults():
    opt = SGD()
    assert opt.learning_rate == 0.01 and opt.momentum == 0.0 and opt.nesterov is False
    assert opt.weight_decay is None and opt.name == "SGD"
    close(run(opt), ref_sgd(0.01))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_golden(nesterov):
    opt = SGD(learning_rate=0.1, momentum=0.9, nesterov=nesterov)
    got = run(opt)
    close(got, ref_sgd(0.1, 0.9, nesterov))
    # The paths really differ (so this test can tell them apart).
    assert not np.allclose(ref_sgd(0.1, 0.9, True), ref_sgd(0.1, 0.9, False))
    assert not np.allclose(ref_sgd(0.1, 0.9, nesterov), ref_sgd(0.1))


def test_sgd_momentum_by_hand_two_steps():
    # m1 = -0.1*1 = -0.1, w1 = 0.9; m2 = 0.5*(-0.1) - 0.1*2 = -0.25, w2 = 0.65
    w = np.array([1.0])
    opt = SGD(learning_rate=0.1, momentum=0.5)
    opt.apply([np.array([1.0])], [w])
    opt.apply([np.array([2.0])], [w])
    close(w, [0.65])
    # nesterov: w1 = 1 + 0.5*(-0.1) - 0.1 = 0.85; w2 = 0.85 + 0.5*(-0.25) - 0.2 = 0.525
    w = np.array([1.0])
    opt = SGD(learning_rate=0.1, momentum=0.5, nesterov=True)
    opt.apply([np.array([1.0])], [w])
    opt.apply([np.array([2.0])], [w])
    close(w, [0.525])


# --------------------------------------------------------------------------- Adam / AdamW

def test_adam_first_step_is_about_lr_times_sign():
    w = np.array([1.0, 1.0, 1.0])
    Adam(learning_rate=0.01).apply([np.array([3.0, -0.5, 100.0])], [w])
    close(w, [0.99, 1.01, 0.99], rtol=0, atol=1e-7)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_golden(amsgrad):
    opt = Adam(learning_rate=0.05, beta_1=0.8, beta_2=0.95, epsilon=1e-3, amsgrad=amsgrad)
    close(run(opt), ref_adam(0.05, 0.8, 0.95, 1e-3, amsgrad))
    assert not np.allclose(ref_adam(0.05, 0.8, 0.95, 1e-3, True),
                           ref_adam(0.05, 0.8, 0.95, 1e-3, False))


def test_adam_defaults():
    opt = Adam()
    assert (opt.learning_rate, opt.beta_1, opt.beta_2, opt.epsilon, opt.amsgrad) == \
        (0.001, 0.9, 0.999, 1e-7, False)
    assert opt.name == "adam"
    close(run(opt), ref_adam(0.001))


def test_adamw_golden_and_defaults():
    opt = AdamW()
    assert opt.weight_decay == 0.004 and opt.learning_rate == 0.001 and opt.name == "adamw"
    close(run(opt), ref_adam(0.001, wd=0.004))
    opt = AdamW(learning_rate=0.1, weight_decay=0.5, amsgrad=True)
    got = run(opt)
    close(got, ref_adam(0.1, amsgrad=True, wd=0.5))
    assert not np.allclose(got, ref_adam(0.1, amsgrad=True))


def test_adamw_by_hand_decay_only():
    # Zero gradient: the Adam part is 0, so only w -= w * wd * lr acts.
    w = np.array([2.0, -4.0])
    AdamW(learning_rate=0.1, weight_decay=0.5).apply([np.zeros(2)], [w])
    close(w, [1.9, -3.8])


@pytest.mark.parametrize("make, ref", [
    (lambda: SGD(0.1, momentum=0.9, weight_decay=0.2), lambda: ref_sgd(0.1, 0.9, wd=0.2)),
    (lambda: RMSprop(0.01, weight_decay=0.3), lambda: ref_rmsprop(0.01, wd=0.3)),
    (lambda: Adam(0.01, weight_decay=0.3), lambda: ref_adam(0.01, wd=0.3)),
])
def test_weight_decay_on_other_optimizers(make, ref):
    close(run(make()), ref())


# --------------------------------------------------------------------------- RMSprop

@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_rmsprop_golden(centered, momentum):
    opt = RMSprop(learning_rate=0.02, rho=0.8, momentum=momentum, epsilon=1e-4,
                  centered=centered)
    close(run(opt), ref_rmsprop(0.02, 0.8, momentum, 1e-4, centered))


def test_rmsprop_paths_differ_and_defaults():
    r = {(c, m): ref_rmsprop(0.02, 0.8, m, 1e-4, c) for c in (False, True) for m in (0.0, 0.7)}
    vals = list(r.values())
    for i in range(len(vals)):
        for j in range(i + 1, len(vals)):
            assert not np.allclose(vals[i], vals[j])
    opt = RMSprop()
    assert (opt.learning_rate, opt.rho, opt.momentum, opt.epsilon, opt.centered) == \
        (0.001, 0.9, 0.0, 1e-7, False)
    assert opt.name == "rmsprop"
    close(run(opt), ref_rmsprop(0.001))


def test_rmsprop_by_hand_one_step():
    # v = 0.1 * 4 = 0.4; increment = 0.1 * 2 / sqrt(0.4 + 0) = 0.2 / sqrt(0.4)
    w = np.array([1.0])
    RMSprop(learning_rate=0.1, rho=0.9, epsilon=0.0).apply([np.array([2.0])], [w])
    close(w, [1.0 - 0.2 / np.sqrt(0.4)])


# --------------------------------------------------------------------------- clipping

def _sgd_delta(grads, **clip):
    """-(weight change) of SGD(lr=1) for one step: the clipped gradients."""
    ws = [np.zeros_like(g) for g in grads]
    SGD(learning_rate=1.0, **clip).apply([g.copy() for g in grads], ws)
    return [-w for w in ws]


def test_clipvalue():
    g = np.array([3.0, -0.2, -5.0, 0.5])
    (got,) = _sgd_delta([g], clipvalue=0.5)
    close(got, [0.5, -0.2, -0.5, 0.5])


def test_clipnorm_per_gradient():
    big = np.array([3.0, 4.0])          # norm 5 -> rescaled to norm 2
    small = np.array([0.6, -0.8])       # norm 1 -> untouched
    got_big, got_small = _sgd_delta([big, small], clipnorm=2.0)
    close(got_big, [1.2, 1.6])
    close(got_small, [0.6, -0.8])


def test_global_clipnorm():
    a = np.array([3.0, 0.0])
    b = np.array([0.0, 4.0])           # global norm 5
    got_a, got_b = _sgd_delta([a, b], global_clipnorm=2.5)
    close(got_a, [1.5, 0.0])
    close(got_b, [0.0, 2.0])
    # Below the threshold nothing changes.
    got_a, got_b = _sgd_delta([a, b], global_clipnorm=10.0)
    close(got_a, a)
    close(got_b, b)
    # Per-gradient clipnorm would treat them differently: a untouched at clipnorm=3.
    got_a, got_b = _sgd_delta([a, b], clipnorm=3.0)
    close(got_a, [3.0, 0.0])
    close(got_b, [0.0, 3.0])


def test_clipping_does_not_modify_callers_gradients():
    g = np.array([3.0, 4.0])
    for clip in ({"clipvalue": 1.0}, {"clipnorm": 1.0}, {"global_clipnorm": 1.0}):
        w = np.zeros(2)
        Adam(**clip).apply([g], [w])
        close(g, [3.0, 4.0])


def test_clipping_happens_before_adam_update():
    g = np.array([3.0, 4.0])
    w = W0[:2].copy()
    Adam(learning_rate=0.1, clipnorm=1.0).apply([g], [w])
    close(w, ref_adam(0.1, w0=W0[:2], grads=[g / 5.0]))


# --------------------------------------------------------------------------- learning rate

def test_callable_schedule():
    seen = []

    def schedule(it):
        seen.append(it)
        return 0.1 / (1 + it)

    opt = SGD(learning_rate=schedule)
    assert opt.learning_rate == pytest.approx(0.1)
    w = np.array([1.0])
    for _ in range(3):
        opt.apply([np.array([1.0])], [w])
    close(w, [1.0 - 0.1 - 0.05 - 0.1 / 3])
    assert {0, 1, 2} <= set(seen)
    assert opt.learning_rate == pytest.approx(0.025)


def test_schedule_with_adam():
    lrs = [0.1, 0.01, 0.05]
    opt = Adam(learning_rate=lambda it: lrs[it])
    w = np.array(W0)
    for k, g in enumerate(GRADS):
        opt.apply([g], [w])
    # Reference with a per-step learning rate.
    m = np.zeros(4); v = np.zeros(4); r = np.array(W0)  # noqa: E702
    for k, g in enumerate(GRADS):
        t = k + 1
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        r = r - lrs[k] * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-7)
    close(w, r)


def test_learning_rate_setter():
    opt = SGD(learning_rate=0.1)
    w = np.array([1.0])
    opt.apply([np.array([1.0])], [w])
    opt.learning_rate = 0.01
    assert opt.learning_rate == 0.01 and isinstance(opt.learning_rate, float)
    opt.apply([np.array([1.0])], [w])
    close(w, [1.0 - 0.1 - 0.01])
    opt.learning_rate = lambda it: 0.5 * it
    assert opt.learning_rate == 1.0
    opt.apply([np.array([1.0])], [w])
    close(w, [1.0 - 0.1 - 0.01 - 1.0])
    with pytest.raises(ValueError):
        opt.learning_rate = -1.0
    with pytest.raises(ValueError):
        opt.learning_rate = "fast"


# --------------------------------------------------------------------------- config / get

CONFIG_CASES = [
    lambda: SGD(learning_rate=0.2, momentum=0.5, nesterov=True, clipnorm=1.5, name="s"),
    lambda: Adam(learning_rate=0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-5, amsgrad=True,
                 global_clipnorm=2.0),
    lambda: AdamW(learning_rate=0.004, weight_decay=0.1, clipvalue=0.3),
    lambda: RMSprop(learning_rate=0.005, rho=0.8, momentum=0.3, epsilon=1e-6, centered=True,
                    weight_decay=0.01),
]


@pytest.mark.parametrize("make", CONFIG_CASES)
def test_config_round_trip(make):
    opt = make()
    config = opt.get_config()
    assert config["class_name"] == type(opt).__name__
    config = json.loads(json.dumps(config))
    for clone in (opt_mod.get(config), type(opt).from_config(config),
                  opt_mod.Optimizer.from_config(config), opt_mod.deserialize(config)):
        assert type(clone) is type(opt)
        assert clone.get_config() == opt.get_config()
        # And it behaves the same.
        close(run(clone), run(make()))


def test_config_values():
    config = RMSprop(learning_rate=0.005, rho=0.8, momentum=0.3, centered=True).get_config()
    assert config["learning_rate"] == 0.005 and config["rho"] == 0.8
    assert config["momentum"] == 0.3 and config["centered"] is True
    assert config["weight_decay"] is None and config["clipnorm"] is None
    assert AdamW().get_config()["weight_decay"] == 0.004


def test_get_keras_serialized_form():
    opt = opt_mod.get({"class_name": "Adam", "config": {"learning_rate": 0.5, "amsgrad": True}})
    assert isinstance(opt, Adam) and opt.learning_rate == 0.5 and opt.amsgrad


@pytest.mark.parametrize("name, cls", [("sgd", SGD), ("SGD", SGD), ("Adam", Adam),
                                       ("adam", Adam), ("ADAMW", AdamW), ("AdamW", AdamW),
                                       ("rmsprop", RMSprop), ("RMSprop", RMSprop)])
def test_get_string(name, cls):
    opt = opt_mod.get(name)
    assert type(opt) is cls
    assert opt.get_config() == cls().get_config()


def test_get_instance_and_errors():
    opt = Adam()
    assert opt_mod.get(opt) is opt
    with pytest.raises(ValueError, match="adagrad") as info:
        opt_mod.get("adagrad")
    for valid in ("sgd", "adam", "adamw", "rmsprop"):
        assert valid in str(info.value)
    with pytest.raises(ValueError):
        opt_mod.get(42)
    with pytest.raises(ValueError):
        opt_mod.get({"learning_rate": 0.1})       # no class name
    with pytest.raises(ValueError, match="Nadam"):
        opt_mod.get({"class_name": "Nadam", "config": {}})


# --------------------------------------------------------------------------- state

@pytest.mark.parametrize("make", CONFIG_CASES + [lambda: SGD(0.1)])
@pytest.mark.parametrize("into_built", [False, True])
def test_state_round_trip_continues_identically(make, into_built):
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (4,)]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]
    w_a = [rng.standard_normal(s) for s in shapes]
    w_b = [w.copy() for w in w_a]

    uninterrupted = make()
    for gs in grads:
        uninterrupted.apply(gs, w_a)

    first = make()
    for gs in grads[:3]:
        first.apply(gs, w_b)
    state = json_like_round_trip(first.get_state())
    assert state["iterations"] == 3
    second = make()
    if into_built:
        second.build([np.zeros(s) for s in shapes])
    second.set_state(state)
    assert second.iterations == 3
    for gs in grads[3:]:
        second.apply(gs, w_b)
    for a, b in zip(w_a, w_b):
        np.testing.assert_array_equal(a, b)
    assert second.iterations == uninterrupted.iterations == 6
    sa, sb = uninterrupted.get_state(), second.get_state()
    assert sa.keys() == sb.keys()
    for k in sa:
        if k != "iterations":
            for x, y in zip(sa[k], sb[k]):
                np.testing.assert_array_equal(x, y)


def json_like_round_trip(state):
    """What a save/load would do: fresh arrays, ints."""
    return {k: (int(v) if k == "iterations" else [np.array(a) for a in v])
            for k, v in state.items()}


def test_state_slot_names_and_copies():
    w = np.array(W0)
    opt = Adam(amsgrad=True)
    opt.apply([GRADS[0]], [w])
    state = opt.get_state()
    assert set(state) == {"iterations", "momentums", "velocities", "velocity_hats"}
    close(state["momentums"][0], 0.1 * GRADS[0])
    state["momentums"][0][:] = 123.0                # a copy: the optimizer is not affected
    close(opt.get_state()["momentums"][0], 0.1 * GRADS[0])
    assert set(SGD(momentum=0.5).get_state()) == {"iterations"}      # not built yet
    assert set(RMSprop(momentum=0.5, centered=True).get_state()) == {"iterations"}
    opt = RMSprop(momentum=0.5, centered=True)
    opt.apply([GRADS[0]], [np.array(W0)])
    assert set(opt.get_state()) == {"iterations", "velocities", "momentums",
                                    "average_gradients"}


def test_set_state_errors():
    opt = Adam()
    opt.apply([GRADS[0]], [np.array(W0)])
    state = opt.get_state()
    with pytest.raises(ValueError):
        _built_sgd().set_state(state)                             # other slots
    bad = dict(state, momentums=[np.zeros(3)])
    with pytest.raises(ValueError):
        Adam().set_state(bad)
    with pytest.raises(ValueError):
        Adam().set_state({"momentums": state["momentums"]})       # no iterations
    with pytest.raises(ValueError):
        Adam().set_state(dict(state, iterations=-1))


def _built_sgd():
    opt = SGD(momentum=0.9)
    opt.build([np.zeros(4)])
    return opt


# --------------------------------------------------------------------------- errors

def test_two_clip_options_rejected():
    for kw in ({"clipnorm": 1.0, "clipvalue": 1.0}, {"clipnorm": 1.0, "global_clipnorm": 1.0},
               {"clipvalue": 1.0, "global_clipnorm": 1.0}):
        with pytest.raises(ValueError, match="Only one of"):
            Adam(**kw)


@pytest.mark.parametrize("kw", ["clipnorm", "clipvalue", "global_clipnorm"])
@pytest.mark.parametrize("value", [-1.0, 0.0])
def test_nonpositive_clip_rejected(kw, value):
    with pytest.raises(ValueError, match=kw):
        SGD(**{kw: value})


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        SGD(momentum=1.5)
    with pytest.raises(ValueError, match="momentum"):
        SGD(momentum=-0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        AdamW(weight_decay=None)
    with pytest.raises(ValueError, match="learning_rate"):
        Adam(learning_rate=-0.1)


def test_mismatched_variables_on_second_call():
    opt = Adam()
    w1, w2 = np.zeros(3), np.zeros((2, 2))
    opt.apply([np.ones(3), np.ones((2, 2))], [w1, w2])
    before = (w1.copy(), w2.copy())
    with pytest.raises(ValueError, match="variables"):
        opt.apply([np.ones(3)], [w1])                               # fewer
    with pytest.raises(ValueError, match="shape"):
        opt.apply([np.ones(3), np.ones((4,))], [w1, np.zeros(4)])   # other shape
    with pytest.raises(ValueError, match="dtype"):
        opt.apply([np.ones(3), np.ones((2, 2))], [w1, np.zeros((2, 2), np.float32)])
    # other arrays of the same shapes and dtypes (another model's weights): refused as in Keras,
    # not updated with this one's slots
    w3 = np.zeros((2, 2))
    with pytest.raises(ValueError, match="Variable 1 is not one of the variables .* own"):
        opt.apply([np.ones(3), np.ones((2, 2))], [w1, w3])
    np.testing.assert_array_equal(w3, np.zeros((2, 2)))
    # Nothing was touched by the failed calls.
    np.testing.assert_array_equal(w1, before[0])
    np.testing.assert_array_equal(w2, before[1])
    assert opt.iterations == 1
    opt.apply([np.ones(3), np.ones((2, 2))], [w1, w2])  # its own variables still work
    assert opt.iterations == 2


def test_optimizer_built_from_state_takes_its_first_variables():
    # set_state builds the slots from copies (load_model, before the first step): the first
    # apply binds the variables, later calls must pass those
    first = Adam()
    w = [np.zeros(3)]
    first.apply([np.ones(3)], w)
    second = Adam()
    second.set_state(json_like_round_trip(first.get_state()))
    mine, other = [np.zeros(3)], [np.zeros(3)]
    second.apply([np.ones(3)], mine)
    with pytest.raises(ValueError, match="not one of the variables"):
        second.apply([np.ones(3)], other)
    assert second.iterations == 2


def test_other_argument_errors():
    opt = SGD()
    with pytest.raises(ValueError, match="shape"):
        opt.apply([np.ones(2)], [np.zeros(3)])                      # gradient shape
    with pytest.raises(ValueError):
        opt.apply([np.ones(3)], [np.zeros(3), np.zeros(3)])          # lengths differ
    with pytest.raises(TypeError):
        SGD().apply([np.ones(3)], [[0.0, 0.0, 0.0]])                 # not an ndarray
    with pytest.raises(TypeError):
        SGD().apply([np.ones(3)], [np.zeros(3, dtype=np.int64)])    # not a float array
    with pytest.raises(ValueError, match="No gradients"):
        SGD().apply([None], [np.zeros(3)])


# --------------------------------------------------------------------------- misc behaviour

def test_none_gradient_skips_variable():
    a, b = np.array(W0), np.array(W0)
    opt = Adam(learning_rate=0.1, weight_decay=0.1)
    opt.apply([GRADS[0], None], [a, b])
    np.testing.assert_array_equal(b, W0)
    np.testing.assert_array_equal(opt.get_state()["momentums"][1], np.zeros(4))
    opt.apply([GRADS[1], GRADS[0]], [a, b])
    close(a, ref_adam(0.1, wd=0.1, grads=GRADS[:2]))
    # b's first real step is taken at t = 2 (the counter is shared), from zero slots.
    m = 0.1 * GRADS[0]
    v = 0.001 * GRADS[0] ** 2
    alpha = 0.1 * np.sqrt(1 - 0.999 ** 2) / (1 - 0.9 ** 2)
    w = W0 - W0 * 0.1 * 0.1
    close(b, w - alpha * m / (np.sqrt(v) + 1e-7))
    assert opt.iterations == 2


def test_apply_gradients_pairs_equal_apply():
    w1, w2 = np.array(W0), np.array(W0)
    o1, o2 = RMSprop(0.01, momentum=0.5), RMSprop(0.01, momentum=0.5)
    for g in GRADS:
        o1.apply([g], [w1])
        it = o2.apply_gradients(zip([g], [w2]))
    np.testing.assert_array_equal(w1, w2)
    assert it == 3 and o2.iterations == 3


def test_updates_in_place():
    w = np.array(W0)
    ident = id(w)
    SGD(momentum=0.9).apply([GRADS[0]], [w])
    assert id(w) == ident and not np.array_equal(w, W0)


@pytest.mark.parametrize("make", [lambda: SGD(0.1, momentum=0.9, nesterov=True),
                                  lambda: Adam(0.01, amsgrad=True),
                                  lambda: AdamW(0.01),
                                  lambda: RMSprop(0.01, momentum=0.5, centered=True),
                                  lambda: Adam(0.01, global_clipnorm=1.0)])
def test_float32_kept(make):
    w32 = run(make(), dtype=np.float32)
    w64 = run(make(), dtype=np.float64)
    assert w32.dtype == np.float32
    opt = make()
    w = np.array(W0, dtype=np.float32)
    opt.apply([np.array(GRADS[0], dtype=np.float64)], [w])   # float64 gradient is cast
    assert w.dtype == np.float32
    for arrays in (v for k, v in opt.get_state().items() if k != "iterations"):
        assert all(a.dtype == np.float32 for a in arrays)
    np.testing.assert_allclose(w32, w64, rtol=1e-5, atol=1e-6)


def test_float32_arithmetic_is_float32():
    # SGD's update in float32 must equal the float32 computation exactly, which an
    # upcast to float64 and back generally does not.
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    w = w0.copy()
    SGD(learning_rate=0.1).apply([g], [w])
    np.testing.assert_array_equal(w, w0 - g * np.float32(0.1))


def test_adam_converges_on_least_squares():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((20, 4))
    b = rng.standard_normal(20)
    w = np.zeros(4)
    opt = Adam(learning_rate=0.05)
    for _ in range(3000):
        grad = 2 * A.T @ (A @ w - b)
        opt.apply([grad], [w])
    w_star = np.linalg.lstsq(A, b, rcond=None)[0]
    np.testing.assert_allclose(w, w_star, atol=1e-4)


# --------------------------------------------------------------------------- torch

@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_torch(nesterov):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(5)]
    w = w0.copy()
    opt = SGD(learning_rate=0.05, momentum=0.9, nesterov=nesterov)
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    topt = torch.optim.SGD([p], lr=0.05, momentum=0.9, nesterov=nesterov)
    for g in grads:
        opt.apply([g], [w])
        p.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
    np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_keras_serialized_configs_load_and_unsupported_keras_features_are_refused():
    # what keras.optimizers.serialize() writes (Keras 3.15): the EMA, loss-scale and
    # gradient-accumulation keys at their no-op values are dropped; switched on, refused
    common = {"name": "adam", "learning_rate": 0.02, "weight_decay": None, "clipnorm": None,
              "global_clipnorm": None, "clipvalue": None, "use_ema": False, "ema_momentum": 0.99,
              "ema_overwrite_frequency": None, "loss_scale_factor": None, "gradient_accumulation_steps": None}
    cfg = {"module": "keras.optimizers", "class_name": "Adam", "registered_name": None,
           "config": dict(common, beta_1=0.9, beta_2=0.999, epsilon=1e-07, amsgrad=False)}
    for load in (opt_mod.deserialize, opt_mod.get):
        opt = load(cfg)
        assert isinstance(opt, opt_mod.Adam) and opt.learning_rate == pytest.approx(0.02)
    # without EMA Keras stores its (unused) EMA settings whatever they are
    no_ema = {**cfg, "config": {**cfg["config"], "ema_momentum": 0.9, "ema_overwrite_frequency": 5}}
    assert opt_mod.deserialize(no_ema).learning_rate == pytest.approx(0.02)
    sgd = {"module": "keras.optimizers", "class_name": "SGD", "registered_name": None,
           "config": dict(common, name="SGD", momentum=0.5, nesterov=True)}
    assert opt_mod.deserialize(sgd).momentum == 0.5
    for key, value in (("use_ema", True), ("loss_scale_factor", 128.0), ("gradient_accumulation_steps", 4)):
        bad = {**cfg, "config": {**cfg["config"], key: value}}
        with pytest.raises(ValueError, match=f"`{key}` is not supported"):
            opt_mod.deserialize(bad)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_a_refused_call_leaves_the_optimizer_unbuilt(name):
    cls = getattr(opt_mod, name)
    kwargs = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    w1, w2 = np.zeros((2, 3)), np.zeros(3)
    opt = cls(**kwargs)
    with pytest.raises(ValueError, match="shape"):
        opt.apply([np.ones((2, 3)), np.ones(3)], [w2, w1])   # gradients and variables mixed up
    with pytest.raises(ValueError, match="No gradients"):
        opt.apply([None, None], [w1, w2])
    with pytest.raises(TypeError):
        opt.apply([np.ones((2, 3), dtype=bool), np.ones(3)], [w1, w2])
    assert not opt.built
    assert opt.apply([np.ones((2, 3)), np.ones(3)], [w1, w2]) == 1   # the corrected call
    assert opt.built and np.all(w1 != 0)
    # a refused state leaves it unbuilt too: unknown slots, arrays of mixed shapes or dtypes
    state = cls(**kwargs)
    state.apply([np.ones(4)], [np.zeros(4)])
    good = state.get_state()
    slots = [k for k in good if k != "iterations"]
    bads = [{**good, "foo": [np.zeros(4)]}]
    if len(slots) > 1:  # slots of different lengths, shapes or dtypes (one slot alone is a valid state)
        bads += [{**good, slots[0]: [np.zeros(4), np.zeros(4)]}, {**good, slots[-1]: [np.zeros(5)]},
                 {**good, slots[-1]: [np.zeros(4, np.float32)]}]
    for bad in bads:
        fresh = cls(**kwargs)
        with pytest.raises(ValueError):
            fresh.set_state(bad)
        assert not fresh.built
        assert fresh.apply([np.ones(3)], [np.zeros(3)]) == 1   # builds for its own variables
    restored = cls(**kwargs)
    restored.set_state(good)
    assert restored.built and restored.iterations == 1


def test_schedules_module_and_config_round_trip():
    from fastlstm.optimizers.schedules import ExponentialDecay, PiecewiseConstantDecay
    s = ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5, staircase=True)
    assert [s(i) for i in (0, 3, 4, 9)] == [0.1, 0.1, 0.05, 0.025]
    pw = PiecewiseConstantDecay([2, 4], [1.0, 0.5, 0.1])
    assert [pw(i) for i in (0, 2, 3, 4, 5)] == [1.0, 1.0, 0.5, 0.5, 0.1]
    opt = opt_mod.Adam(learning_rate=s)
    config = json.loads(json.dumps(opt.get_config()))
    again = opt_mod.get(config)
    assert isinstance(again._learning_rate, ExponentialDecay)
    assert again._learning_rate.get_config() == s.get_config()
    with pytest.raises(ValueError, match="boundaries"):
        PiecewiseConstantDecay([1, 2], [0.1])
    with pytest.raises(ValueError, match="decay_steps"):
        ExponentialDecay(0.1, 0, 0.5)


def test_schedule_returning_a_0d_array_like():
    class Scalar:           # a 0-d tensor stand-in (float() works, not a numbers.Real)
        shape = ()

        def __init__(self, v):
            self.v = v

        def __float__(self):
            return self.v
    opt = opt_mod.SGD(learning_rate=lambda it: Scalar(0.25))
    assert opt.learning_rate == 0.25
    opt = opt_mod.SGD(learning_rate=lambda it: "0.1")
    with pytest.raises(ValueError, match="schedule"):
        opt.learning_rate


def test_schedules_staircase_warmup_config_and_out_of_range_values():
    from fastlstm.optimizers.schedules import CosineDecay, ExponentialDecay, InverseTimeDecay
    s = InverseTimeDecay(1.0, decay_steps=4, decay_rate=1.0, staircase=True)
    assert [s(i) for i in (0, 3, 4, 8)] == [1.0, 1.0, 0.5, 1.0 / 3.0]
    c = CosineDecay(0.0, 10, alpha=0.1, warmup_target=0.2, warmup_steps=4)
    again = opt_mod.get(json.loads(json.dumps(opt_mod.SGD(learning_rate=c).get_config())))
    assert [again._learning_rate(i) for i in range(20)] == [c(i) for i in range(20)]
    # past float64's range, or a zero denominator: inf (as Keras), which the optimizer refuses
    # with a ValueError naming the schedule, not OverflowError / ZeroDivisionError
    assert ExponentialDecay(1.0, 1, 2.0)(2000) == float("inf")
    assert InverseTimeDecay(1.0, 1, -1.0)(1) == float("inf")
    opt = opt_mod.SGD(learning_rate=InverseTimeDecay(1.0, 1, -1.0))
    opt.apply([np.ones(2)], [np.zeros(2)])
    with pytest.raises(ValueError, match="schedule"):
        opt.learning_rate


# --------------------------------------------------------------------------- fused Adam step

FUSED = {"adam": ("adam_update", lambda: Adam(learning_rate=0.01), ("momentums", "velocities")),
         "rmsprop": ("rmsprop_update", lambda: RMSprop(learning_rate=0.01), ("velocities",)),
         "rmsprop_momentum": ("rmsprop_update", lambda: RMSprop(learning_rate=0.01, momentum=0.9),
                              ("velocities", "momentums")),
         "sgd": ("sgd_update", lambda: SGD(learning_rate=0.1), ()),
         "sgd_momentum": ("sgd_update", lambda: SGD(learning_rate=0.1, momentum=0.9), ("momentums",)),
         "sgd_nesterov": ("sgd_update", lambda: SGD(learning_rate=0.1, momentum=0.9, nesterov=True),
                          ("momentums",))}


@pytest.mark.parametrize("name", sorted(FUSED))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (33, 5), (300, 257)])   # a tail only, tails, 2 threads
def test_fused_update_gives_the_numpy_expressions_bits(name, dtype, shape, isa, num_threads,
                                                       monkeypatch):
    # Adam, RMSprop and SGD on C-contiguous NumPy arrays run as one pass in the kernels
    # (_core.adam_update / rmsprop_update / sgd_update) on every instruction set: no product fused into an
    # FMA, so the weights and the slots are the same bits as the NumPy expressions they
    # replace (run here by turning the fusion off)
    num_threads(2)
    kernel, make, slots = FUSED[name]
    rng = np.random.default_rng(7)
    w0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) * 10.0 ** -k for k in range(4)]
    calls = []
    real = getattr(opt_mod._core, kernel)
    monkeypatch.setattr(opt_mod._core, kernel, lambda *a: calls.append(1) or real(*a))
    fusable = opt_mod._fusable

    def train(fused):
        monkeypatch.setattr(opt_mod, "_fusable", fusable if fused else lambda *a: False)
        opt = make()
        w = w0.copy()
        for g in grads:
            opt.apply([g], [w])
        return [w] + [opt._slots[slot][0] for slot in slots]

    numpy_path = train(False)
    assert not calls
    fused_path = train(True)
    assert len(calls) == len(grads)
    for a, b in zip(fused_path, numpy_path):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)


def test_fused_adam_against_float64_reference():
    # float32 weights on the fused path against the float64 reference formulas: rounding of a
    # few float32 operations per step (a few ulps of 1.2e-7), nothing more
    rng = np.random.default_rng(8)
    w0 = rng.standard_normal(5000)
    grads = [rng.standard_normal(5000) for _ in range(5)]
    got = run(Adam(learning_rate=0.02), w0=w0, grads=grads, dtype=np.float32)
    want = ref_adam(0.02, w0=w0, grads=grads)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6
    assert np.linalg.norm(got - w0) > 0.05 * np.linalg.norm(w0)      # the weights did move


@pytest.mark.parametrize("case", ["strided", "amsgrad"])
def test_adam_falls_back_to_numpy_where_the_kernel_cannot_take_the_arrays(case, monkeypatch):
    # (and RMSprop(centered=True) keeps the NumPy expressions: test_rmsprop_golden covers it)
    calls = []
    real = opt_mod._core.adam_update
    monkeypatch.setattr(opt_mod._core, "adam_update", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(9)
    base = rng.standard_normal((6, 8))
    w = base[:, ::2].copy(order="F") if case == "strided" else base.copy()
    g = rng.standard_normal(w.shape)
    opt = Adam(learning_rate=0.1, amsgrad=case == "amsgrad")
    before = w.copy()
    opt.apply([g], [w])
    assert not calls
    want = ref_adam(0.1, amsgrad=case == "amsgrad", w0=before, grads=[g])
    np.testing.assert_allclose(w, want, rtol=1e-12, atol=1e-15)


def test_update_kernel_errors():
    from fastlstm import _core
    w = np.zeros(4, np.float32)
    ok = dict(gradient=np.ones(4, np.float32), m=np.zeros(4, np.float32), v=np.zeros(4, np.float32))
    scalars = (0.1, 0.001, 0.01, 1e-7)
    with pytest.raises(TypeError, match="gradient: expected dtype float32, got float64"):
        _core.adam_update(w, np.ones(4), ok["m"], ok["v"], *scalars)
    with pytest.raises(ValueError, match=r"m: expected shape \(4,\), got \(5,\)"):
        _core.adam_update(w, ok["gradient"], np.zeros(5, np.float32), ok["v"], *scalars)
    with pytest.raises(ValueError, match="v: expected a C-contiguous array"):
        _core.adam_update(w, ok["gradient"], ok["m"], np.zeros(8, np.float32)[::2], *scalars)
    frozen = np.zeros(4, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="variable: expected a writeable array"):
        _core.adam_update(frozen, ok["gradient"], ok["m"], ok["v"], *scalars)
    with pytest.raises(ValueError, match="m and v: expected arrays that do not overlap"):
        _core.adam_update(w, ok["gradient"], ok["m"], ok["m"], *scalars)
    with pytest.raises(TypeError, match="variable: expected a numpy array"):
        _core.adam_update([0.0], ok["gradient"], ok["m"], ok["v"], *scalars)
    rms = (0.9, 0.1, 0.01, 1e-7, 0.5)
    with pytest.raises(ValueError, match="v and mom: expected arrays that do not overlap"):
        _core.rmsprop_update(w, ok["gradient"], ok["v"], ok["v"], *rms)
    with pytest.raises(ValueError, match=r"mom: expected shape \(4,\), got \(3,\)"):
        _core.rmsprop_update(w, ok["gradient"], ok["v"], np.zeros(3, np.float32), *rms)
    np.testing.assert_array_equal(w, 0)                                   # nothing written
    _core.rmsprop_update(w, ok["gradient"], ok["v"], None, *rms)        # mom None: no momentum
    np.testing.assert_allclose(w, -0.01 / np.sqrt(0.1 + 1e-7), rtol=1e-6)
