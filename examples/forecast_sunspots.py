"""Forecast next year's sunspot number from the previous years with an LSTM.

Data: the yearly mean sunspot numbers 1700-2008 (309 values) that ship with statsmodels
(``statsmodels.datasets.sunspots``); nothing is downloaded.

Method: the last ``--test-years`` years (default 60: targets 1949-2008) are held out. The
series is standardized with the mean and standard deviation of the earlier years only, cut
into windows of ``--window`` consecutive years (default 12, about one solar cycle) whose
target is the following year, and an ``LSTM(32) -> Dense(1)`` model is trained with the
mean squared error. The last 15% of the training windows (the years just before the test
period) are used for validation: EarlyStopping(patience=30) stops training and restores
the weights of the epoch with the lowest validation loss.

The test RMSE is reported in the original units (sunspot number) and compared with the
naive "last value" forecast (next year = this year), the usual baseline for a series
like this one.

    python examples/forecast_sunspots.py                 # about 2 seconds
    python examples/forecast_sunspots.py --plot sunspots.png

Measured on 2026-11-26 on a shared 2-core Intel Xeon VM (AVX-512 path), default options
(seed 0; 2.2 s for the whole script): training stopped after 44 epochs (best epoch 14,
0.2 s of training); on the 60 held-out years the LSTM's RMSE is 18.7 (MAE 14.5)
against 32.9 (MAE 25.1) for the last-value forecast. Seeds 1-4: RMSE 18.0-19.9.
"""

import argparse
import os
import time

import numpy as np

from fastlstm import callbacks, optimizers, utils
from fastlstm.layers import LSTM, Dense, Input
from fastlstm.models import Sequential


def load_series():
    """The yearly sunspot numbers 1700-2008 as (years, values) float64 arrays."""
    from statsmodels.datasets import sunspots
    frame = sunspots.load_pandas().data
    return (frame["YEAR"].to_numpy(dtype=np.float64).astype(np.int64),
            frame["SUNACTIVITY"].to_numpy(dtype=np.float64))


def make_windows(series, window):
    """x[i] = series[i:i + window] (as (window, 1)), y[i] = series[i + window]."""
    n = len(series) - window
    x = np.stack([series[i:i + window] for i in range(n)])[:, :, None]
    y = series[window:, None]
    return x.astype(np.float32), y.astype(np.float32)


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def mae(a, b):
    return float(np.mean(np.abs(np.asarray(a) - np.asarray(b))))


def build_model(window, units, learning_rate):
    model = Sequential([Input((window, 1)), LSTM(units), Dense(1)])
    model.compile(optimizer=optimizers.Adam(learning_rate), loss="mse")
    return model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=300,
                   help="maximum number of epochs (EarlyStopping usually stops earlier)")
    p.add_argument("--patience", type=int, default=30, help="EarlyStopping patience")
    p.add_argument("--window", type=int, default=12, help="years of history per input")
    p.add_argument("--units", type=int, default=32, help="LSTM units")
    p.add_argument("--test-years", type=int, default=60, help="held-out final years")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (few epochs, small model) to check that it works")
    p.add_argument("--plot", metavar="PATH",
                   help="save the loss curves and the test forecast as a PNG")
    p.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2),
                   help="fit's verbosity (default 0: only the summary is printed)")
    args = p.parse_args(argv)
    # counts must be at least 1 (--epochs 0 ended in a KeyError once the data had loaded)
    for name in ("epochs", "window", "units", "test_years", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a number >= 1, "
                    f"got {getattr(args, name)}")
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        p.error(f"--plot: cannot write {args.plot!r}: no such folder")  # now, not after training
    if args.quick:
        args.epochs, args.units, args.patience = min(args.epochs, 5), 8, 5
    return args


def main(argv=None):
    args = parse_args(argv)
    utils.set_random_seed(args.seed)
    years, values = load_series()
    w, n_test = args.window, args.test_years
    if not 0 < n_test < len(values) - 2 * w:
        raise SystemExit(f"--test-years must be in (0, {len(values) - 2 * w})")
    split = len(values) - n_test               # values[split:] are the test years

    # Standardize with statistics of the training years only (no look-ahead).
    mean, std = values[:split].mean(), values[:split].std()
    x, y = make_windows((values - mean) / std, w)
    target_index = np.arange(w, len(values))    # the year each window predicts
    train, test = target_index < split, target_index >= split

    model = build_model(w, args.units, args.learning_rate)
    stop = callbacks.EarlyStopping(monitor="val_loss", patience=args.patience,
                                   restore_best_weights=True)
    start = time.perf_counter()
    history = model.fit(x[train], y[train], epochs=args.epochs, batch_size=args.batch_size,
                        validation_split=0.15, callbacks=[stop], verbose=args.verbose)
    seconds = time.perf_counter() - start

    predicted = model.predict(x[test], verbose=0)[:, 0].astype(np.float64) * std + mean
    actual = values[target_index[test]]
    last_value = values[target_index[test] - 1]
    results = {
        "rmse": rmse(predicted, actual), "mae": mae(predicted, actual),
        "baseline_rmse": rmse(last_value, actual), "baseline_mae": mae(last_value, actual),
        "epochs_run": len(history.history["loss"]), "best_epoch": stop.best_epoch + 1,
        "train_seconds": seconds,
    }
    test_years = years[target_index[test]]
    print(f"Sunspots: {len(values)} years {years[0]}-{years[-1]}; window {w} years; "
          f"test on {test_years[0]}-{test_years[-1]} ({int(test.sum())} years)")
    print(f"Trained {results['epochs_run']} epochs (best {results['best_epoch']}) "
          f"in {seconds:.1f} s")
    print(f"  LSTM              RMSE {results['rmse']:6.2f}   MAE {results['mae']:6.2f}")
    print(f"  last-value naive  RMSE {results['baseline_rmse']:6.2f}   "
          f"MAE {results['baseline_mae']:6.2f}")
    print("  year  actual  LSTM  last-value")
    for i in range(0, len(actual), max(1, len(actual) // 6)):
        print(f"  {test_years[i]}  {actual[i]:6.1f} {predicted[i]:6.1f} {last_value[i]:6.1f}")

    if args.plot:
        from matplotlib.figure import Figure
        fig = Figure(figsize=(11, 3.8), layout="constrained")
        ax_loss, ax_fc = fig.subplots(1, 2, width_ratios=(1, 2))
        history.plot(keys="loss", ax=ax_loss)
        shown = years >= test_years[0] - 3 * n_test // 2
        ax_fc.plot(years[shown], values[shown], color="0.6", label="sunspot number")
        ax_fc.plot(test_years, predicted, label=f"LSTM (RMSE {results['rmse']:.1f})")
        ax_fc.plot(test_years, last_value, "--",
                   label=f"last value (RMSE {results['baseline_rmse']:.1f})")
        ax_fc.axvline(test_years[0] - 0.5, color="k", lw=0.8)
        ax_fc.set_xlabel("year")
        ax_fc.set_title("one-year-ahead forecast of the held-out years")
        ax_fc.legend(loc="upper left")
        fig.savefig(args.plot)
        print(f"Saved the figure to {args.plot}")
    return results


if __name__ == "__main__":
    main()
