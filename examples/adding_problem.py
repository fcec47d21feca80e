"""The adding problem (Hochreiter & Schmidhuber 1997): a long-range memory test.

Each input is a sequence of ``T`` steps with two channels: a value drawn uniformly from
[0, 1] and a marker that is 1 at exactly two steps (one in the first half, one in the
second half) and 0 elsewhere. The target is the sum of the two marked values (the form
most later papers use; the 1997 paper scaled values and target differently). The model
has to notice the markers and carry the first value across up to T steps while ignoring
everything else; a network that cannot remember does no better than always answering
1.0, the mean of the target, whose mean squared error is the variance of a sum of two
uniform values: 2/12 = 0.167.

Model: ``LSTM(64) -> Dense(1)``, mean squared error, Adam with gradient clipping. The
learning curve shows the typical plateau at MSE ~0.167 for a few epochs before the LSTM
finds the markers and the error drops by orders of magnitude. Also reported: the share of
test sequences answered within 0.04 of the target (the error bound of the success
criterion in the 1997 paper).

    python examples/adding_problem.py                    # T=100, about 1 minute
    python examples/adding_problem.py --timesteps 50 --epochs 10 --plot adding.png

Measured on 2026-11-26 on a shared 2-core Intel Xeon VM (AVX-512 path), default options
(seed 0: T=100, 10000 training and 1000 test sequences, 20 epochs, 47.5 s of training,
49 s for the whole script): the loss stays at ~0.167 for 7 epochs, then drops; final
test MSE 0.00006 with 99.9% of the answers within 0.04, against MSE 0.153 on the same
test set for always answering 1.0 (1/6 = 0.167 in expectation).
"""

import argparse
import os
import time

import numpy as np

from fastlstm import optimizers, utils
from fastlstm.layers import LSTM, Dense, Input
from fastlstm.models import Sequential


def make_data(n, timesteps, rng):
    """x (n, T, 2): [value, marker]; y (n, 1): the sum of the two marked values."""
    values = rng.uniform(0.0, 1.0, size=(n, timesteps))
    markers = np.zeros((n, timesteps))
    half = timesteps // 2
    rows = np.arange(n)
    markers[rows, rng.integers(0, half, size=n)] = 1.0
    markers[rows, rng.integers(half, timesteps, size=n)] = 1.0
    x = np.stack([values, markers], axis=-1).astype(np.float32)
    y = (values * markers).sum(axis=1, keepdims=True).astype(np.float32)
    return x, y


def build_model(timesteps, units, learning_rate):
    model = Sequential([Input((timesteps, 2)), LSTM(units), Dense(1)])
    model.compile(optimizer=optimizers.Adam(learning_rate, clipnorm=1.0), loss="mse")
    return model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timesteps", type=int, default=100, help="sequence length T")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train-size", type=int, default=10000, help="training sequences")
    p.add_argument("--test-size", type=int, default=1000, help="held-out sequences")
    p.add_argument("--units", type=int, default=64, help="LSTM units")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=0.003)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (T=20, few sequences, 2 epochs) to check that it works")
    p.add_argument("--plot", metavar="PATH", help="save the training curves as a PNG")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                   help="fit's verbosity (2: one line per epoch)")
    args = p.parse_args(argv)
    # counts must be at least 1 (--epochs 0 ended in a KeyError once the data had loaded)
    for name in ("epochs", "train_size", "test_size", "units", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a number >= 1, "
                    f"got {getattr(args, name)}")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        p.error(f"--plot: cannot write {args.plot!r}: no such folder")  # now, not after training
    if args.quick:
        args.timesteps, args.epochs = 20, min(args.epochs, 2)
        args.train_size, args.test_size, args.units = 256, 128, 16
    if args.timesteps < 2:
        p.error("--timesteps must be at least 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x_train, y_train = make_data(args.train_size, args.timesteps, rng)
    x_test, y_test = make_data(args.test_size, args.timesteps, rng)

    model = build_model(args.timesteps, args.units, args.learning_rate)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(x_test, y_test), verbose=args.verbose)
    seconds = time.perf_counter() - start

    predicted = model.predict(x_test, verbose=0)
    error = (predicted - y_test)[:, 0].astype(np.float64)
    results = {
        "mse": float(np.mean(error ** 2)),
        "baseline_mse": float(np.mean((1.0 - y_test.astype(np.float64)) ** 2)),
        "within_0.04": float(np.mean(np.abs(error) < 0.04)),
        "train_seconds": seconds,
    }
    print(f"Adding problem: T={args.timesteps}, {args.train_size} training and "
          f"{args.test_size} test sequences; LSTM({args.units}), {args.epochs} epochs "
          f"in {seconds:.1f} s")
    print(f"  test MSE {results['mse']:.5f}; always answering 1.0: "
          f"{results['baseline_mse']:.4f} (theory 2/12 = 0.1667)")
    print(f"  answers within 0.04 of the target: {results['within_0.04']:.1%}")
    for i in range(3):
        marked = x_test[i, :, 0][x_test[i, :, 1] == 1]
        print(f"    {marked[0]:.3f} + {marked[1]:.3f} = {y_test[i, 0]:.3f}, "
              f"predicted {predicted[i, 0]:.3f}")

    if args.plot:
        fig = history.plot(keys="loss", title=f"adding problem, T={args.timesteps}")
        ax = fig.axes[0]
        ax.axhline(results["baseline_mse"], color="k", ls="--", lw=0.8,
                   label="always 1.0")
        ax.set_yscale("log")
        ax.set_ylabel("mean squared error")
        ax.legend()
        fig.savefig(args.plot)
        print(f"Saved the figure to {args.plot}")
    return results


if __name__ == "__main__":
    main()
