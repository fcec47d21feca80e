"""Train a one-layer LSTM with fastlstm's functional API and plain gradient descent.

The task: read a sequence of numbers and output, at its last valid step, the sum of the
sequence (sequences have random lengths, right-padded). Only numpy and fastlstm are used:
fastlstm.ops runs the fused forward and backward, the rest (a linear read-out, the loss, the
update) is a few lines of numpy.

    python examples/train_functional.py [--steps N] [--seed S]
"""

import argparse

import numpy as np

import fastlstm
from fastlstm import ops


def make_batch(rng, T, B):
    lengths = rng.integers(1, T + 1, size=B)
    x = rng.uniform(-1, 1, size=(T, B, 1)).astype(np.float32)
    x[np.arange(T)[:, None] >= lengths[None, :]] = 0.0  # padding (ignored by the kernels)
    target = x.sum(axis=0)[:, 0] / 4  # (B,)
    return x, lengths, target


def main(steps=300, T=20, B=64, H=32, learning_rate=0.3, seed=0):
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(1 + H)
    params = {
        "kernel": (scale * rng.standard_normal((1, 4 * H))).astype(np.float32),
        "recurrent_kernel": (scale * rng.standard_normal((H, 4 * H))).astype(np.float32),
        "bias": np.zeros(4 * H, np.float32),
        "w_out": (scale * rng.standard_normal(H)).astype(np.float32),
    }
    params["bias"][H:2 * H] = 1.0  # forget gate bias 1, as Keras's unit_forget_bias does
    print(fastlstm.cpu_info())
    for step in range(steps + 1):
        x, lengths, target = make_batch(rng, T, B)
        # h_n is each sequence's state after its last valid step.
        y, h_n, c_n, saved = ops.lstm_forward(x, params["kernel"], params["recurrent_kernel"],
                                              params["bias"], lengths=lengths)
        prediction = h_n @ params["w_out"]
        error = prediction - target
        loss = float(np.mean(error ** 2))
        # Backward: loss -> prediction -> h_n -> the LSTM's inputs and weights.
        d_prediction = 2 * error / B
        grads = {"w_out": h_n.T @ d_prediction}
        dh_n = np.outer(d_prediction, params["w_out"]).astype(np.float32)
        _, _, _, grads["kernel"], grads["recurrent_kernel"], grads["bias"] = ops.lstm_backward(
            saved, dy=None, dh_n=dh_n)
        for name in params:
            params[name] -= learning_rate * grads[name]
        if step % 50 == 0:
            print(f"step {step:4d}  loss {loss:.5f}")
    return loss


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="gradient steps (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 0:
        parser.error(f"--steps: expected a number >= 0, got {args.steps}")
    main(steps=args.steps, seed=args.seed)
