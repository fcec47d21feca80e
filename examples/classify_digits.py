"""Classify handwritten digits with an LSTM that reads each image row by row.

Data: scikit-learn's bundled digits set (``sklearn.datasets.load_digits``): 1797 images of
8x8 pixels with values 0-16, ten classes; nothing is downloaded.

Method: each image becomes a sequence of 8 time steps (its rows) of 8 features (the
pixels of the row, divided by 16). A stratified 25% of the images is held out for the
test; the rest trains ``LSTM(64) -> Dense(10, softmax)`` with the sparse categorical
crossentropy (10% of the training images are used as a validation set for the curves).
``--bidirectional`` wraps the LSTM in ``Bidirectional`` (reads the rows both ways).

    python examples/classify_digits.py                   # about 5 seconds
    python examples/classify_digits.py --bidirectional --plot digits.png

Measured on 2026-11-26 on a shared 2-core Intel Xeon VM (AVX-512 path), default options
(seed 0, 30 epochs, 1.7 s of training, 5 s for the whole script): held-out accuracy
97.6% (439 of 450 images), against 10% for chance and 10.2% for always answering the
most frequent class. Seeds 1-4 (which also change the split): 96.0-98.2%.
``--bidirectional``: 96.2-97.3% (seeds 0-2).
"""

import argparse
import os
import time

import numpy as np

from fastlstm import optimizers, utils
from fastlstm.layers import LSTM, Bidirectional, Dense, Input
from fastlstm.models import Sequential


def load_data(test_size, seed):
    """(x_train, y_train, x_test, y_test): x of shape (n, 8 rows, 8 pixels) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def build_model(units, learning_rate, bidirectional=False):
    lstm = LSTM(units)
    model = Sequential([Input((8, 8)), Bidirectional(lstm) if bidirectional else lstm,
                        Dense(10, activation="softmax")])
    model.compile(optimizer=optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--units", type=int, default=64, help="LSTM units")
    p.add_argument("--bidirectional", action="store_true",
                   help="read the rows in both directions (Bidirectional(LSTM))")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=0.005)
    p.add_argument("--test-size", type=float, default=0.25,
                   help="fraction of the images held out for the test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (2 epochs, small model) to check that it works")
    p.add_argument("--plot", metavar="PATH", help="save the training curves as a PNG")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                   help="fit's verbosity (2: one line per epoch)")
    args = p.parse_args(argv)
    # counts must be at least 1 (--epochs 0 ended in a KeyError once the data had loaded)
    for name in ("epochs", "units", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a number >= 1, "
                    f"got {getattr(args, name)}")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        p.error(f"--plot: cannot write {args.plot!r}: no such folder")  # now, not after training
    if args.quick:
        args.epochs, args.units = min(args.epochs, 2), 16
    return args


def main(argv=None):
    args = parse_args(argv)
    utils.set_random_seed(args.seed)
    x_train, y_train, x_test, y_test = load_data(args.test_size, args.seed)
    model = build_model(args.units, args.learning_rate, args.bidirectional)

    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_split=0.1, verbose=args.verbose)
    seconds = time.perf_counter() - start

    probabilities = model.predict(x_test, verbose=0)
    predicted = probabilities.argmax(axis=1)
    accuracy = float(np.mean(predicted == y_test))
    loss = model.evaluate(x_test, y_test, verbose=0)[0]
    majority = float(np.mean(y_test == np.bincount(y_train).argmax()))
    results = {"accuracy": accuracy, "loss": float(loss), "chance": 0.1,
               "majority_accuracy": majority, "train_seconds": seconds}

    layer = f"LSTM({args.units})"
    if args.bidirectional:
        layer = f"Bidirectional({layer})"
    print(f"Digits: {len(x_train)} training and {len(x_test)} test images, "
          f"8 rows x 8 pixels; {layer}, {args.epochs} epochs in {seconds:.1f} s")
    print(f"  test accuracy {accuracy:.2%} (loss {loss:.3f}); chance 10.0%, most frequent "
          f"class {majority:.1%}")
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (y_test, predicted), 1)
    print("  confusion matrix (rows: true digit, columns: predicted):")
    print("       " + " ".join(f"{d:3d}" for d in range(10)))
    for d in range(10):
        print(f"    {d}: " + " ".join(f"{v:3d}" for v in confusion[d]))

    if args.plot:
        history.plot(keys=["loss", "accuracy"], filename=args.plot,
                     title="LSTM on 8x8 digits (rows as time steps)")
        print(f"Saved the figure to {args.plot}")
    return results


if __name__ == "__main__":
    main()
