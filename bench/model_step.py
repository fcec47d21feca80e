"""Training steps of a fastlstm Sequential model with its Dense layers on NumPy's BLAS or on
fastlstm's own matrix product (bench/NOTES.md 50), or with Adam as NumPy expressions or as the
kernels' fused update (NOTES 53).

NumPy's BLAS (OpenBLAS in a pip install) runs a large enough product on its own worker
threads, which keep spinning for a while after it; the LSTM kernels that run next then share
the cores with them. The model's Dense layers therefore use the kernels' product
(fastlstm._core.matmul, on fastlstm's threads). This script times `Sequential.fit` steps of
`LSTM(H)` + `Dense(units)` both ways in one process, in alternating blocks: "blas" puts
NumPy's `@` back into the Dense layers (a monkeypatch of fastlstm.layers._matmul), "own" is
the library as shipped. Reports the median step time with min and max, and blas/own.
With `--compare adam` (or `rmsprop`, `sgd`: the model then trains with that), "numpy" runs the
optimizer's update as NumPy expressions (a monkeypatch of fastlstm.optimizers._fusable) and
"fused" as shipped (one pass in the kernels, the same bits). With `--compare embedding` the
model reads token ids through an Embedding(5000, I) first; "add.at" computes its weight
gradient with numpy.add.at, "kernel" as shipped (_core.index_add_rows, the same bits). With
`--compare layout` the model is two stacked LSTMs (the first with return_sequences) before the
Dense layer; "copies" runs the LSTM kernels time-major, with the copies between the layouts
that the layer made before the kernels read and wrote batch-major arrays (NOTES 58), "in
place" as shipped (the same bits). With `--compare predict` it times `predict` (batches of B)
instead of `fit`: "per call" packs the LSTM weights in every batch's forward, "once" packs them
once per predict as shipped (NOTES 59; the same bits).

    python bench/model_step.py
    python bench/model_step.py --config 100,64,256,256 --units 256 --rounds 6
    python bench/model_step.py --compare adam --config 100,1,256,256
    python bench/model_step.py --compare layout
"""

import argparse
import json
import time

import numpy as np

from fastlstm.bench import parse_config, positive_int as positive   # (the same checks)

DEFAULT = [((100, 16, 256, 256), 10), ((100, 64, 256, 256), 256), ((50, 64, 128, 128), 128),
           ((30, 32, 64, 64), 10)]


def numpy_matmul(a, b, bias=None):
    z = a @ b
    if bias is not None:
        z += bias
    return z


# What each comparison sets for its two variants (the second is the library as shipped).
COMPARISONS = {"matmul": ("blas", "own", "NumPy BLAS ms", "own product ms"),
               "adam": ("numpy", "fused", "NumPy Adam ms", "fused Adam ms"),
               "rmsprop": ("numpy", "fused", "NumPy RMSprop ms", "fused RMSprop ms"),
               "sgd": ("numpy", "fused", "NumPy SGD ms", "fused SGD ms"),
               "embedding": ("add.at", "kernel", "numpy.add.at ms", "index_add_rows ms"),
               "layout": ("copies", "in place", "time-major + copies ms", "batch-major ms"),
               "predict": ("per call", "once", "packed per batch ms", "packed once ms")}
VOCABULARY = 5000   # (--compare embedding: token ids in [1, 5000), an Embedding of I features)


class _TimeMajor:
    """ops.lstm_forward / lstm_backward with batch_first=True run as before NOTES 58: the
    kernels time-major, x and dy copied to that layout, y and dx returned as batch-major views
    of their time-major arrays (which the LSTM layer then copies where it needs them whole)."""

    def __init__(self, ops):
        self.forward, self.backward = ops.lstm_forward, ops.lstm_backward

    def lstm_forward(self, x, *args, batch_first=False, **kwargs):
        if not batch_first:
            return self.forward(x, *args, **kwargs)
        y, h_n, c_n, saved = self.forward(np.ascontiguousarray(x.transpose(1, 0, 2)), *args,
                                          **kwargs)
        return y.transpose(1, 0, 2), h_n, c_n, (None if saved is None else ("tm", saved))

    def lstm_backward(self, saved, dy, *args, **kwargs):
        if not (isinstance(saved, tuple) and saved[0] == "tm"):
            return self.backward(saved, dy, *args, **kwargs)
        dy = None if dy is None else np.ascontiguousarray(dy.transpose(1, 0, 2))
        grads = self.backward(saved[1], dy, *args, **kwargs)
        return (None if grads[0] is None else grads[0].transpose(1, 0, 2),) + tuple(grads[1:])


def measure(config, units, rounds, steps, compare="matmul"):
    import fastlstm
    from fastlstm import _device, layers, losses, models, ops, optimizers
    T, B, I, H = config
    rng = np.random.default_rng(0)
    y = rng.integers(0, units, (B * steps,))
    fastlstm.utils.set_random_seed(0)
    if compare == "embedding":
        x = rng.integers(1, VOCABULARY, (B * steps, T))
        head = [layers.Input((T,), dtype="int64"), layers.Embedding(VOCABULARY, I)]
    else:
        x = rng.standard_normal((B * steps, T, I)).astype(np.float32)
        head = [layers.Input((T, I))]
    middle = [layers.LSTM(H, return_sequences=True)] if compare == "layout" else []
    model = models.Sequential(head + middle + [layers.LSTM(H), layers.Dense(units)])
    model.compile(optimizer=compare if compare in ("rmsprop", "sgd") else "adam",
                  loss=losses.SparseCategoricalCrossentropy(from_logits=True))
    own, fusable, index_add = layers._matmul, optimizers._fusable, _device.index_add_rows
    shipped, time_major = (ops.lstm_forward, ops.lstm_backward), _TimeMajor(ops)
    packing = layers._inference_packing
    old, new = COMPARISONS[compare][:2]
    times = {old: [], new: []}
    try:
        for r in range(rounds + 1):
            for name in ((old, new) if r % 2 == 0 else (new, old)):
                layers._matmul = numpy_matmul if name == "blas" else own
                optimizers._fusable = (lambda *a: False) if name == "numpy" else fusable
                _device.index_add_rows = np.add.at if name == "add.at" else index_add
                ops.lstm_forward, ops.lstm_backward = (
                    (time_major.lstm_forward, time_major.lstm_backward) if name == "copies"
                    else shipped)
                layers._inference_packing = ((lambda ls, enabled=True: packing(ls, False))
                                             if name == "per call" else packing)
                t0 = time.perf_counter()
                if compare == "predict":
                    model.predict(x, batch_size=B, verbose=0)
                else:
                    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
                if r > 0:                       # (round 0: warm-up)
                    times[name].append((time.perf_counter() - t0) / steps)
    finally:
        layers._matmul, optimizers._fusable, _device.index_add_rows = own, fusable, index_add
        ops.lstm_forward, ops.lstm_backward = shipped
        layers._inference_packing = packing
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=parse_config, help="T,B,I,H (with --units)")
    parser.add_argument("--units", type=positive, default=10, help="the Dense layer's units")
    parser.add_argument("--rounds", type=positive, default=6)
    parser.add_argument("--steps", type=positive, default=8, help="batches per timed fit")
    parser.add_argument("--json", help="write every time here")
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="matmul",
                        help="matmul: NumPy's BLAS against the kernels' product in the Dense "
                             "layer; adam, rmsprop, sgd: that optimizer's update as NumPy "
                             "expressions against the fused one; embedding: an Embedding's "
                             "gradient by numpy.add.at against the kernels' loop; layout: "
                             "time-major kernels and layout copies against batch-major ones; "
                             "predict: predict's LSTM weights packed per batch against once")
    args = parser.parse_args(argv)
    cases = [(args.config, args.units)] if args.config else DEFAULT
    old, new, old_title, new_title = COMPARISONS[args.compare]
    out = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "compare": args.compare,
           "rows": []}
    print(f"| T, B, I, H | Dense units | {old_title} | {new_title} | {old}/{new} |")
    print("|---|---|---|---|---|")
    for config, units in cases:
        times = measure(config, units, args.rounds, args.steps, args.compare)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        cell = {k: f"{med[k]:.2f} ({min(v) * 1e3:.2f}-{max(v) * 1e3:.2f})" for k, v in times.items()}
        print(f"| {', '.join(map(str, config))} | {units} | {cell[old]} | {cell[new]} "
              f"| {med[old] / med[new]:.2f} |", flush=True)
        out["rows"].append({"config": config, "units": units,
                            "times_ms": {k: [t * 1e3 for t in v] for k, v in times.items()}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
