"""Helpers for the model API: reproducibility, label encoding and sequence padding.

    fastlstm.utils.set_random_seed(42)      # weights, dropout and shuffling reproducible
    y_onehot = fastlstm.utils.to_categorical(labels, num_classes=10)
    x = fastlstm.utils.pad_sequences(list_of_int_lists, maxlen=50, padding="post")
"""

import operator
import random

import numpy as np

from . import _random
from ._progbar import Progbar

__all__ = ["set_random_seed", "to_categorical", "pad_sequences", "Progbar", "PyDataset",
           "Sequence"]


class PyDataset:
    """Base class for batch datasets, as ``keras.utils.PyDataset``: subclass it, call
    ``super().__init__(**kwargs)``, define ``__len__`` (the number of batches) and
    ``__getitem__(index)`` (batch ``index``: ``(x, y)`` or ``(x, y, sample_weight)``), and
    optionally ``on_epoch_begin`` / ``on_epoch_end``; ``fit``, ``evaluate`` and ``predict``
    take it as ``x``. ``workers``, ``use_multiprocessing`` and ``max_queue_size`` are
    accepted for Keras code and have no effect: batches are read in the calling thread, in
    order (shuffled per epoch by ``fit(shuffle=True)``)."""

    # (class defaults too, for subclasses that do not call super().__init__)
    workers = 1
    use_multiprocessing = False
    max_queue_size = 10

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self.workers = workers
        self.use_multiprocessing = use_multiprocessing
        self.max_queue_size = max_queue_size

    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError

    @property
    def num_batches(self):
        """``len(self)`` (Keras's name; None where ``__len__`` is not defined)."""
        try:
            return len(self)
        except NotImplementedError:
            return None

    def on_epoch_begin(self):
        """Called at the start of every epoch of ``fit``."""

    def on_epoch_end(self):
        """Called at the end of every epoch of ``fit``."""


Sequence = PyDataset    # Keras 3's alias (keras.utils.Sequence)


def set_random_seed(seed):
    """Seed fastlstm's generator (initializers, dropout, shuffling in fit), Python's
    ``random`` and NumPy's legacy global generator, as ``keras.utils.set_random_seed`` does."""
    seed = _random.check_seed(seed, "seed")
    _random.set_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def to_categorical(x, num_classes=None):
    """Integer class labels (any shape) -> one-hot float32 array with a new last axis.

    A trailing axis of size 1 is dropped first, as Keras does."""
    y = np.asarray(x)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("x: expected integer class labels, got non-integral values")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iub":
        raise TypeError(f"x: expected integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.ndim > 1 and y.shape[-1] == 1:
        y = y.reshape(y.shape[:-1])
    if y.size and y.min() < 0:
        raise ValueError(f"x: class labels must be >= 0, got {y.min()}")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    else:
        try:
            num_classes = operator.index(num_classes)
        except TypeError:
            raise TypeError(f"num_classes: expected an integer, got {num_classes!r}") from None
        if y.size and y.max() >= num_classes:
            raise ValueError(f"x: label {y.max()} does not fit num_classes={num_classes}")
    out = np.zeros(y.shape + (num_classes,), dtype=np.float32)
    if y.size:
        np.put_along_axis(out, y[..., None], 1.0, axis=-1)
    return out


def _check_fits(s, dtype, i):
    """Refuse values that an integer ``dtype`` cannot hold (NaN, infinities, out of range),
    which the assignment would silently wrap (Keras raises for them too)."""
    if dtype.kind not in "iu" or s.dtype.kind not in "iuf" or not s.size:
        return
    if s.dtype.kind == "f" and not np.all(np.isfinite(s)):
        raise ValueError(f"sequences: sequence {i} holds NaN or infinite values, which dtype "
                         f"{dtype} cannot hold")
    info = np.iinfo(dtype)
    # compared as Python ints: a float compared with info.max would round the bound up
    # (float32(2**31 - 1) is 2**31), letting 2**31 through to wrap
    low, high = int(np.trunc(s.min())), int(np.trunc(s.max()))   # (the cast truncates toward zero)
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise ValueError(f"sequences: sequence {i} holds {bad!r}, outside the range of dtype "
                         f"{dtype} [{info.min}, {info.max}]; pass a wider dtype")


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre",
                  value=0.0):
    """A list of sequences (lists or arrays, possibly of feature vectors) -> one array of
    shape (n, maxlen, ...), padded and truncated at the start ('pre', Keras's default) or
    the end ('post'). fastlstm's LSTM accepts both paddings through masks."""
    if padding not in ("pre", "post"):
        raise ValueError(f"padding: expected 'pre' or 'post', got {padding!r}")
    if truncating not in ("pre", "post"):
        raise ValueError(f"truncating: expected 'pre' or 'post', got {truncating!r}")
    try:
        seqs = [np.asarray(s) for s in sequences]
    except TypeError:
        raise TypeError("sequences: expected a list of sequences") from None
    for i, s in enumerate(seqs):
        if s.ndim == 0:     # e.g. one flat sequence [1, 2, 3] instead of a list of them
            raise ValueError(f"sequences: expected a list of sequences, but item {i} is not a "
                             f"sequence: {s.item()!r}")
    lengths = [len(s) for s in seqs]
    if maxlen is None:
        maxlen = max(lengths, default=0)
    else:
        try:
            maxlen = operator.index(maxlen)
        except TypeError:
            raise TypeError(f"maxlen: expected an integer, got {maxlen!r}") from None
        if maxlen < 0:
            raise ValueError(f"maxlen: expected an integer >= 0, got {maxlen}")
    sample_shape = ()
    for s in seqs:
        if s.ndim > 1:
            sample_shape = s.shape[1:]
            break
    out = np.full((len(seqs), maxlen) + sample_shape, value, dtype=dtype)
    for i, s in enumerate(seqs):
        if not len(s) or maxlen == 0:
            continue
        s = s[-maxlen:] if truncating == "pre" else s[:maxlen]
        if s.shape[1:] != sample_shape:
            raise ValueError(f"sequences: sequence {i} has items of shape {s.shape[1:]}, "
                             f"expected {sample_shape}")
        _check_fits(s, out.dtype, i)
        if padding == "post":
            out[i, :len(s)] = s
        else:
            out[i, -len(s):] = s
    return out
