"""The global random state behind initializers, dropout and shuffling.

Every random draw in fastlstm's model API goes through ``generator(seed)``: with a seed
it is a fresh ``numpy.random.Generator`` of its own (reproducible on its own), without one
it is the package-wide generator, which ``set_seed(n)`` (``fastlstm.utils.set_random_seed``)
re-creates so that a whole run is reproducible.

The draws happen on the host for either device (see fastlstm.set_device): a model on "cuda"
uploads its initial weights and dropout masks, so it sees the same random numbers as the same
model on "cpu".
"""

import operator

import numpy as np

_global = np.random.default_rng()


def set_seed(seed):
    """Re-create the package-wide generator from ``seed`` (an integer >= 0)."""
    global _global
    _global = np.random.default_rng(check_seed(seed, "seed"))


def check_seed(seed, name="seed"):
    """``seed`` as a non-negative int; TypeError/ValueError naming ``name`` otherwise."""
    try:
        if isinstance(seed, bool):
            raise TypeError
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"{name}: expected an integer seed, got {type(seed).__name__}") from None
    if value < 0:
        raise ValueError(f"{name}: expected an integer seed >= 0, got {value}")
    return value


def generator(seed=None):
    """A Generator: a new one seeded with ``seed``, or the package-wide one for None."""
    if seed is None:
        return _global
    return np.random.default_rng(check_seed(seed))
