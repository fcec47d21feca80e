"""Learning rate schedules with Keras 3's names, arguments and formulas
(``keras.optimizers.schedules``), reached as ``fastlstm.optimizers.schedules``::

    lr = fastlstm.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=1000, decay_rate=0.9)
    opt = fastlstm.optimizers.Adam(learning_rate=lr)

A schedule is called with the optimizer's step count (``iterations``, 0 on the first step) and
returns the learning rate as a float (computed in float64; Keras computes in float32). Unlike a
plain callable, a schedule is saved with the optimizer's config and rebuilt on loading.
"""

import math
import numbers

import numpy as np

from ._configurable import Configurable

__all__ = ["LearningRateSchedule", "ExponentialDecay", "InverseTimeDecay",
           "PiecewiseConstantDecay", "CosineDecay", "serialize", "deserialize"]


def _number(name, value, *, positive=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"Argument `{name}` must be a finite{' positive' if positive else ''} "
                         f"number. Received: {name}={value!r}")
    return float(value)


class LearningRateSchedule(Configurable):
    """Base class: subclasses implement ``__call__(step) -> float`` and ``get_config()``
    (``from_config`` and ``repr`` from the constructor arguments, as initializers have)."""

    def __call__(self, step):
        raise NotImplementedError


class _StepDecay(LearningRateSchedule):
    """The arguments of ExponentialDecay and InverseTimeDecay, and their step ratio
    step / decay_steps (floored with ``staircase=True``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name=None):
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _number("decay_steps", decay_steps, positive=True)
        self.decay_rate = _number("decay_rate", decay_rate)
        self.staircase = bool(staircase)
        self.name = type(self).__name__ if name is None else name

    def _ratio(self, step):
        p = float(step) / self.decay_steps
        return math.floor(p) if self.staircase else p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class ExponentialDecay(_StepDecay):
    """initial_learning_rate * decay_rate ** (step / decay_steps) (the exponent floored
    with ``staircase=True``)."""

    def __call__(self, step):
        # (NumPy's pow, as Keras's: inf past float64's range, NaN for a negative rate and a
        # fractional exponent, where Python's ** raises OverflowError or returns a complex)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return float(self.initial_learning_rate
                         * np.power(np.float64(self.decay_rate), np.float64(self._ratio(step))))


class InverseTimeDecay(_StepDecay):
    """initial_learning_rate / (1 + decay_rate * step / decay_steps) (the ratio floored with
    ``staircase=True``)."""

    def __call__(self, step):
        # (inf or NaN where the denominator reaches 0, as Keras, not ZeroDivisionError)
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.float64(self.initial_learning_rate)
                         / (1.0 + self.decay_rate * np.float64(self._ratio(step))))


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] while step <= boundaries[0], values[i] while boundaries[i-1] < step <=
    boundaries[i], values[-1] after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        boundaries, values = list(boundaries), list(values)
        if len(boundaries) != len(values) - 1:
            raise ValueError("The length of boundaries should be 1 less than the length of "
                             f"values. Received: boundaries={boundaries} of length "
                             f"{len(boundaries)}, and values={values} of length {len(values)}.")
        self.boundaries = [_number("boundaries", b) for b in boundaries]
        self.values = [_number("values", v) for v in values]
        self.name = name

    def __call__(self, step):
        step = float(step)
        for b, v in zip(self.boundaries, self.values):
            if step <= b:
                return v
        return self.values[-1]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay from initial_learning_rate (or, after ``warmup_steps`` of linear warmup,
    from ``warmup_target``) to ``alpha`` times it over ``decay_steps``."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate)
        self.decay_steps = _number("decay_steps", decay_steps, positive=True)
        self.alpha = _number("alpha", alpha)
        self.warmup_target = None if warmup_target is None else \
            _number("warmup_target", warmup_target)
        self.warmup_steps = _number("warmup_steps", warmup_steps)
        self.name = name

    def _decayed(self, step, lr):
        fraction = min(step, self.decay_steps) / self.decay_steps
        return lr * ((1.0 - self.alpha) * 0.5 * (1.0 + math.cos(math.pi * fraction))
                     + self.alpha)

    def __call__(self, step):
        step = float(step)
        if self.warmup_target is None:
            return self._decayed(step, self.initial_learning_rate)
        if step < self.warmup_steps:
            return self.initial_learning_rate + (self.warmup_target - self.initial_learning_rate) \
                * step / self.warmup_steps
        return self._decayed(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


_CLASSES = {cls.__name__: cls for cls in (ExponentialDecay, InverseTimeDecay,
                                          PiecewiseConstantDecay, CosineDecay)}


def serialize(schedule):
    """{"class_name": ..., "config": ...} (Keras's form)."""
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config):
    """A schedule from ``serialize()`` output or a Keras schedule config."""
    cls = _CLASSES.get(config.get("class_name")) if isinstance(config, dict) else None
    if cls is None:
        raise ValueError(f"Unknown learning rate schedule {config!r}. Valid: "
                         f"{', '.join(sorted(_CLASSES))}")
    return cls.from_config(dict(config.get("config") or {}))
