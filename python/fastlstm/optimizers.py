"""Keras-style optimizers that update NumPy (or CuPy) arrays in place.

    opt = fastlstm.optimizers.Adam(learning_rate=1e-3, global_clipnorm=1.0)
    opt.apply_gradients(zip(grads, weights))     # (gradient, variable) pairs, Keras order
    opt.apply(grads, weights)                    # same thing, two lists

Names, defaults and update formulas follow Keras 3 (keras.optimizers.SGD, Adam, AdamW,
RMSprop). The split is Keras's too: the base class ``Optimizer`` does argument checks,
gradient clipping, decoupled weight decay, the step counter ``iterations`` and the
per-variable state slots; a subclass only implements

* ``build(variables)``: call ``super().build(variables)``, then create its slots with
  ``self.add_slot(name, variables)`` (zeros shaped and typed like each variable);
* ``update_step(gradient, variable, learning_rate)``: update ``variable`` in place, finding
  its slots with ``self.get_slot(name, variable)``.

Variables are float32 or float64 arrays -- ``numpy.ndarray``, or CuPy arrays for a model on
the "cuda" device (see fastlstm.set_device), whose slots then live on the device too and whose
updates never read anything back to the host -- updated in place and kept in their own dtype:
gradients are cast to the variable's dtype and every hyperparameter is turned into a scalar of
that dtype, so a float32 variable is updated in float32 arithmetic.
A gradient of ``None`` skips its variable for that step (it is neither decayed nor updated;
its slots are left as they are). The optimizer builds itself on its first call; later calls
must pass the same variables (the same array objects, in the same order: the slots are matched
by position), else ValueError, as in Keras: one optimizer instance serves one set of variables
(one model), so a second model needs a new instance. An optimizer built by ``set_state`` (before
its first update) takes the variables of its first call as its own.

``learning_rate`` is a float or a callable schedule ``lr(iterations) -> float`` evaluated
with the number of steps taken so far (0 on the first step). The ``learning_rate`` property
returns the current value as a float and is settable (a float or a new schedule), e.g. by a
ReduceLROnPlateau-style callback.

Clipping (at most one of the three; each must be > 0), applied before weight decay and the
update: ``clipvalue`` clips every element to [-v, v]; ``clipnorm`` rescales each gradient
whose L2 norm exceeds it to that norm; ``global_clipnorm`` rescales all gradients together by
``clipnorm / max(global_norm, clipnorm)``, global_norm being the L2 norm of all of them.

Saving: ``get_config()`` returns a JSON-able dict (``"class_name"`` plus the constructor
arguments; a ``fastlstm.optimizers.schedules`` schedule is stored as its config and rebuilt,
any other callable schedule is stored as its current value, the callable itself is not
serialised) and ``get(config)`` / ``Cls.from_config(config)`` rebuild the optimizer.
``get_state()`` returns ``{"iterations": int, slot_name: [array per variable], ...}`` (NumPy
copies, also for slots on the device) and ``set_state(state)`` restores it exactly, building
the slots from the state if the optimizer has not been built yet (they move to the variables'
device on the first update).
"""

import copy
import math
import numbers
import sys

import numpy as np

from . import _core
from ._device import array_module, copy_into, is_array, to_host, to_numpy_copy
from . import _schedules as schedules

# `from fastlstm.optimizers.schedules import ExponentialDecay`, as from keras.optimizers.schedules
sys.modules.setdefault(__name__ + ".schedules", schedules)

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "get", "serialize", "deserialize",
           "schedules"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# keys of a Keras 3 optimizer config with no fastlstm counterpart, and their no-op values
# (ema_momentum and ema_overwrite_frequency act only with use_ema: dropped whatever they are)
_KERAS_ONLY = {"use_ema": False, "loss_scale_factor": None, "gradient_accumulation_steps": None}


# --------------------------------------------------------------------------- helpers

def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _check_real(name, value, *, low=None, high=None, low_open=False, high_open=False,
                allow_none=False):
    """Validate a scalar hyperparameter; returns it as a Python float (or None)."""
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"Argument `{name}` must be a number. Received: {name}=None")
    if not _is_real(value):
        raise ValueError(f"Argument `{name}` must be a number. Received: {name}={value!r}")
    value = float(value)
    conds = []
    if low is not None:
        conds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        conds.append(f"{'<' if high_open else '<='} {high}")
    bad = (not math.isfinite(value)
           or (low is not None and (value <= low if low_open else value < low))
           or (high is not None and (value >= high if high_open else value > high)))
    if bad:
        where = f" ({' and '.join(conds)})" if conds else ""
        raise ValueError(f"Argument `{name}` must be a finite number{where}. "
                         f"Received: {name}={value!r}")
    return value


def _check_learning_rate(value):
    if callable(value) and not _is_real(value):
        return value
    return _check_real("learning_rate", value, low=0.0)


# --------------------------------------------------------------------------- base class

class Optimizer:
    """Base class: clipping, weight decay, step counter and state slots.

    Subclasses implement ``build(variables)`` and ``update_step(gradient, variable,
    learning_rate)``; see the module docstring.
    """

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None):
        self._learning_rate = _check_learning_rate(learning_rate)
        self.weight_decay = _check_real("weight_decay", weight_decay, low=0.0, allow_none=True)
        set_clips = [n for n, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                                    ("global_clipnorm", global_clipnorm)) if v is not None]
        if len(set_clips) > 1:
            raise ValueError("Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can "
                             f"be set. Received: {', '.join(set_clips)}")
        self.clipnorm = _check_real("clipnorm", clipnorm, low=0.0, low_open=True,
                                    allow_none=True)
        self.clipvalue = _check_real("clipvalue", clipvalue, low=0.0, low_open=True,
                                     allow_none=True)
        self.global_clipnorm = _check_real("global_clipnorm", global_clipnorm, low=0.0,
                                           low_open=True, allow_none=True)
        if name is None:
            name = type(self).__name__.lower()
        if not isinstance(name, str):
            raise ValueError(f"Argument `name` must be a string. Received: name={name!r}")
        self.name = name
        self._iterations = 0
        self.built = False
        self._var_specs = None      # [(shape, dtype)] of the variables it was built for
        self._variables = None      # those variables (the arrays themselves; None: not yet bound)
        self._slots = {}            # slot name -> [array per variable]
        self._index_by_id = {}      # id(variable) -> position, valid during one apply

    # ------------------------------------------------------------------ properties

    @property
    def iterations(self):
        """Number of steps applied so far (an int)."""
        return self._iterations

    @property
    def learning_rate(self):
        """The learning rate for the next step, as a float (a schedule is evaluated)."""
        return self._current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value):
        self._learning_rate = _check_learning_rate(value)

    def _current_learning_rate(self):
        lr = self._learning_rate
        if callable(lr):
            value = lr(self._iterations)
            if isinstance(value, np.ndarray) and value.shape == ():
                value = value.item()
            elif not _is_real(value) and hasattr(value, "__float__") and \
                    not isinstance(value, (bool, np.bool_)) and tuple(getattr(value, "shape", ())) == ():
                value = float(value)    # a 0-d tensor, e.g. from a Keras schedule
            try:
                return _check_real("learning_rate", value, low=0.0)
            except ValueError as e:
                raise ValueError(f"The learning rate schedule returned an invalid value at "
                                 f"iterations={self._iterations}: {e}") from None
        return lr

    # ------------------------------------------------------------------ building / slots

    def build(self, variables):
        """Record the variables' shapes and dtypes; subclasses then add their slots."""
        variables = self._check_variables(variables)
        self._var_specs = [(v.shape, v.dtype) for v in variables]
        self._variables = None      # bound by the first apply (set_state builds from copies)
        self._slots = {}
        self.built = True

    def add_slot(self, name, variables):
        """Create (and return) one zero array per variable, shaped and typed like it (and
        of its array module)."""
        arrays = [array_module(v).zeros(v.shape, dtype=v.dtype) for v in variables]
        self._slots[name] = arrays
        return arrays

    def get_slot(self, name, variable):
        """The slot array ``name`` of ``variable`` (during an update step)."""
        return self._slots[name][self._get_variable_index(variable)]

    def _get_variable_index(self, variable):
        try:
            return self._index_by_id[id(variable)]
        except KeyError:
            raise ValueError("Unknown variable: it is not among the variables of the current "
                             "apply() call.") from None

    @staticmethod
    def _check_variables(variables):
        variables = list(variables)
        seen = set()
        for i, v in enumerate(variables):
            if not is_array(v):
                raise TypeError(f"Variable {i} must be a numpy.ndarray or a CuPy array (it is "
                                f"updated in place); got {type(v).__name__}")
            if v.dtype not in _FLOATS:
                raise TypeError(f"Variable {i} must be float32 or float64; got {v.dtype}")
            if not getattr(v.flags, "writeable", True):   # CuPy arrays are always writeable
                raise ValueError(f"Variable {i} is read-only; it must be writeable to be "
                                 "updated in place")
            if id(v) in seen:
                raise ValueError(f"Variable {i} appears more than once in the variables")
            seen.add(id(v))
        return variables

    def _check_known(self, variables, bind=True):
        specs = self._var_specs
        if len(variables) != len(specs):
            raise ValueError(f"{type(self).__name__} was built for {len(specs)} variables but "
                             f"got {len(variables)}; an optimizer can only be used with the "
                             "variables it was built with.")
        for i, (v, (shape, dtype)) in enumerate(zip(variables, specs)):
            if v.shape != shape or v.dtype != dtype:
                raise ValueError(f"Variable {i} has shape {v.shape} and dtype {v.dtype} but "
                                 f"{type(self).__name__} was built with shape {shape} and "
                                 f"dtype {dtype} for it; an optimizer can only be used with "
                                 "the variables it was built with.")
        if self._variables is None:
            if bind:
                self._variables = list(variables)
            return
        for i, (v, mine) in enumerate(zip(variables, self._variables)):
            if v is not mine:
                raise ValueError(f"Variable {i} is not one of the variables {type(self).__name__} "
                                 f"{self.name!r} was built with (its slots hold their state, matched "
                                 "by position); an optimizer instance serves one set of variables: "
                                 "give each model its own (e.g. compile(optimizer=Adam(...)) with a new "
                                 "Adam, or optimizer='adam').")

    # ------------------------------------------------------------------ applying

    def apply_gradients(self, grads_and_vars):
        """Apply a list of (gradient, variable) pairs; returns ``iterations``."""
        pairs = list(grads_and_vars)
        for i, p in enumerate(pairs):
            if not (isinstance(p, (tuple, list)) and len(p) == 2):
                raise ValueError(f"apply_gradients expects (gradient, variable) pairs; item "
                                 f"{i} is {type(p).__name__}")
        grads = [p[0] for p in pairs]
        variables = [p[1] for p in pairs]
        return self.apply(grads, variables)

    def apply(self, gradients, variables):
        """Update ``variables`` in place from ``gradients``; returns ``iterations``."""
        grads = list(gradients)
        variables = list(variables)
        if len(grads) != len(variables):
            raise ValueError(f"Got {len(grads)} gradients for {len(variables)} variables")
        if not grads:
            return self._iterations     # nothing to do (Keras: a no-op)
        variables = self._check_variables(variables)
        if self.built:
            self._check_known(variables, bind=False)

        # Everything is checked before anything is modified (the optimizer is built and
        # bound to the variables only once the call is known to be valid).
        positions = [i for i, g in enumerate(grads) if g is not None]
        if not positions:
            raise ValueError("No gradients provided for any variable.")
        vs = [variables[i] for i in positions]
        gs = []
        for i in positions:
            g, v = grads[i], variables[i]
            xp = array_module(v)
            g = to_host(g) if xp is np else xp.asarray(g)   # to the variable's device
            if g.dtype.kind not in "fiu":
                raise TypeError(f"Gradient {i} must be a real numeric array; got {g.dtype}")
            if g.shape != v.shape:
                raise ValueError(f"Gradient {i} has shape {g.shape} but its variable has "
                                 f"shape {v.shape}")
            gs.append(g.astype(v.dtype, copy=False))
        lr = self._current_learning_rate()
        if not self.built:
            self.build(variables)
        self._check_known(variables)
        self._move_slots(variables)

        gs = self._clip_gradients(gs)
        self._apply_weight_decay(vs, lr)
        self._index_by_id = {id(v): i for i, v in enumerate(variables)}
        try:
            for g, v in zip(gs, vs):
                self.update_step(g, v, lr)
        finally:
            self._index_by_id = {}
        self._iterations += 1
        return self._iterations

    def _move_slots(self, variables):
        """Put each slot array on its variable's device (slots restored by set_state before
        the first update are NumPy arrays; the variables may live on the GPU)."""
        for arrays in self._slots.values():
            for j, (a, v) in enumerate(zip(arrays, variables)):
                xp = array_module(v)
                if array_module(a) is not xp:
                    arrays[j] = xp.asarray(to_numpy_copy(a)) if xp is not np \
                        else to_numpy_copy(a)

    def _clip_gradients(self, grads):
        # Never modifies the caller's arrays: every branch builds new ones. The norms stay
        # arrays of the gradients' module: on the GPU nothing is read back to decide.
        if self.clipvalue is not None:
            return [array_module(g).clip(g, g.dtype.type(-self.clipvalue),
                                         g.dtype.type(self.clipvalue))
                    for g in grads]
        if self.clipnorm is not None:
            out = []
            for g in grads:
                xp = array_module(g)
                g64 = g.astype(np.float64)
                norm = xp.sqrt(xp.sum(g64 * g64))
                # norm <= clipnorm (or NaN): a factor of exactly 1; max() keeps 0 out of the
                # division that where() evaluates on both sides
                scale = xp.where(norm > self.clipnorm,
                                 self.clipnorm / xp.maximum(norm, self.clipnorm), 1.0)
                out.append(g * scale.astype(g.dtype))
            return out
        if self.global_clipnorm is not None:
            sq = 0.0
            for g in grads:
                g64 = g.astype(np.float64)
                sq = sq + array_module(g).sum(g64 * g64)
            xp = array_module(grads[0])
            scale = self.global_clipnorm / xp.maximum(xp.sqrt(sq), self.global_clipnorm)
            return [g * scale.astype(g.dtype) for g in grads]
        return grads

    def _apply_weight_decay(self, variables, learning_rate):
        if self.weight_decay is None:
            return
        for v in variables:
            t = v.dtype.type
            v -= v * t(self.weight_decay) * t(learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        """Update ``variable`` in place. Implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} does not implement update_step")

    # ------------------------------------------------------------------ state

    def get_state(self):
        """``{"iterations": int, slot_name: [array copy per variable], ...}``."""
        state = {"iterations": int(self._iterations)}
        for name, arrays in self._slots.items():
            state[name] = [to_numpy_copy(a) for a in arrays]
        return state

    def set_state(self, state):
        """Restore what ``get_state`` returned (values are copied in)."""
        if not isinstance(state, dict) or "iterations" not in state:
            raise ValueError("set_state expects a dict from get_state() with an "
                             "'iterations' entry")
        it = state["iterations"]
        it_arr = np.asarray(it)
        if it_arr.shape != () or it_arr.dtype.kind not in "iu" or int(it_arr) < 0:
            raise ValueError(f"state['iterations'] must be a non-negative integer; got {it!r}")
        slots = {k: v for k, v in state.items() if k != "iterations"}
        for k, arrays in slots.items():
            if not isinstance(arrays, (list, tuple)):
                raise ValueError(f"state[{k!r}] must be a list of arrays")
        if not self.built and slots:
            # Every slot is shaped like the variables: build from the first one.
            first = [to_numpy_copy(a) for a in next(iter(slots.values()))]
            for a in first:
                if a.dtype not in _FLOATS:
                    raise ValueError(f"state arrays must be float32 or float64; got {a.dtype}")
            # built first as a throw-away copy, so that a refused state leaves self unbuilt
            probe = copy.copy(self)
            probe.build([np.zeros(a.shape, dtype=a.dtype) for a in first])
            self._check_state_slots(slots, probe._slots)
            self.build([np.zeros(a.shape, dtype=a.dtype) for a in first])
        elif self.built:
            self._check_state_slots(slots, self._slots)
        if self.built:
            for k, arrays in slots.items():
                for a, m in zip(arrays, self._slots[k]):
                    copy_into(m, to_numpy_copy(a))
        elif slots:
            raise ValueError("set_state: state has slots but the optimizer could not be "
                             "built from it")
        self._iterations = int(it_arr)

    def _check_state_slots(self, slots, mine):
        """Raise unless the state's slots match ``mine`` (names, counts, shapes, dtypes)."""
        if set(slots) != set(mine):
            raise ValueError(f"State has slots {sorted(slots)} but {type(self).__name__} "
                             f"{self.name!r} has slots {sorted(mine)}")
        for k, arrays in slots.items():
            if len(arrays) != len(mine[k]):
                raise ValueError(f"state[{k!r}] has {len(arrays)} arrays; expected "
                                 f"{len(mine[k])}")
            for j, (a, m) in enumerate(zip(arrays, mine[k])):
                a = a if isinstance(a, np.ndarray) else to_numpy_copy(a)
                if a.shape != m.shape or a.dtype != m.dtype:
                    raise ValueError(f"state[{k!r}][{j}] has shape {a.shape} and dtype "
                                     f"{a.dtype}; expected {m.shape} and {m.dtype}")

    # ------------------------------------------------------------------ config

    def get_config(self):
        """JSON-able dict: ``"class_name"`` and the constructor arguments."""
        return {
            "class_name": type(self).__name__,
            "name": self.name,
            "learning_rate": schedules.serialize(self._learning_rate)
            if isinstance(self._learning_rate, schedules.LearningRateSchedule)
            else float(self._current_learning_rate()),
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "clipvalue": self.clipvalue,
            "global_clipnorm": self.global_clipnorm,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild from ``get_config()`` (or a bare dict of constructor arguments)."""
        config = dict(config)
        class_name = config.pop("class_name", None)
        if "config" in config and isinstance(config["config"], dict) and not (
                set(config) - {"config", "module", "registered_name"}):
            config = dict(config["config"])     # Keras serialize() form
            config.pop("ema_momentum", None)
            config.pop("ema_overwrite_frequency", None)
            for key, default in _KERAS_ONLY.items():   # Keras features fastlstm lacks
                if key in config:
                    value = config.pop(key)
                    if value != default:
                        raise ValueError(f"Argument `{key}` is not supported by fastlstm "
                                         f"optimizers. Received: {key}={value!r}")
        if isinstance(config.get("learning_rate"), dict):   # a schedule (ours or Keras's)
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        if class_name is not None:
            target = _lookup(class_name)
            if cls is not Optimizer and target is not cls:
                raise ValueError(f"Config is for {target.__name__}, not {cls.__name__}")
            cls = target
        elif cls is Optimizer:
            raise ValueError("Optimizer.from_config needs a 'class_name' entry")
        return cls(**config)

    def __repr__(self):
        return (f"{type(self).__name__}(name={self.name!r}, "
                f"learning_rate={self._learning_rate!r}, iterations={self._iterations})")


# --------------------------------------------------------------------------- fused updates

def _fusable(variable, *others):
    """Whether the kernels' fused update can take these arrays: NumPy arrays (not CuPy, not
    subclasses) of one float dtype and shape, C-contiguous, the variable and slots writeable,
    no two sharing memory."""
    if type(variable) is not np.ndarray or variable.dtype not in _FLOATS:
        return False
    arrays = (variable,) + others
    if not all(type(a) is np.ndarray and a.dtype == variable.dtype and a.shape == variable.shape
               and a.flags.c_contiguous for a in arrays):
        return False
    if not all(a.flags.writeable for a in (variable,) + others[1:]):
        return False
    return not any(np.may_share_memory(a, b) for i, a in enumerate(arrays)
                   for b in arrays[i + 1:])


# --------------------------------------------------------------------------- SGD

class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, as keras.optimizers.SGD.

    momentum 0: ``w -= lr * g``. Otherwise ``m = momentum * m - lr * g`` then ``w += m``, or
    with nesterov ``w += momentum * m - lr * g`` (with the updated m).
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name="SGD"):
        super().__init__(learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name)
        self.momentum = _check_real("momentum", momentum, low=0.0, high=1.0)
        self.nesterov = bool(nesterov)

    def build(self, variables):
        super().build(variables)
        if self.momentum != 0:
            self.add_slot("momentums", variables)

    def update_step(self, gradient, variable, learning_rate):
        t = variable.dtype.type
        lr = t(learning_rate)
        m = self.get_slot("momentums", variable) if self.momentum != 0 else None
        if _fusable(variable, gradient, *([] if m is None else [m])):
            # the same element-wise arithmetic in one pass on the kernels' threads (NOTES 53)
            _core.sgd_update(variable, gradient, m, float(lr), self.momentum, self.nesterov)
            return
        if self.momentum != 0:
            mu = t(self.momentum)
            m = self.get_slot("momentums", variable)
            m *= mu
            m -= gradient * lr
            if self.nesterov:
                variable += m * mu - gradient * lr
            else:
                variable += m
        else:
            variable -= gradient * lr

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


# --------------------------------------------------------------------------- Adam / AdamW

class Adam(Optimizer):
    """Adam, as keras.optimizers.Adam (epsilon outside the square root, "epsilon hat")."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="adam"):
        super().__init__(learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name)
        self.beta_1 = _check_real("beta_1", beta_1, low=0.0, high=1.0, high_open=True)
        self.beta_2 = _check_real("beta_2", beta_2, low=0.0, high=1.0, high_open=True)
        self.epsilon = _check_real("epsilon", epsilon, low=0.0)
        self.amsgrad = bool(amsgrad)

    def build(self, variables):
        super().build(variables)
        self.add_slot("momentums", variables)
        self.add_slot("velocities", variables)
        if self.amsgrad:
            self.add_slot("velocity_hats", variables)

    def update_step(self, gradient, variable, learning_rate):
        t = variable.dtype.type
        lr = t(learning_rate)
        local_step = t(self.iterations + 1)
        beta_1_power = t(self.beta_1) ** local_step
        beta_2_power = t(self.beta_2) ** local_step
        m = self.get_slot("momentums", variable)
        v = self.get_slot("velocities", variable)
        xp = array_module(variable)
        alpha = lr * np.sqrt(t(1) - beta_2_power) / (t(1) - beta_1_power)   # host scalars
        if not self.amsgrad and _fusable(variable, gradient, m, v):
            # the same element-wise arithmetic in one pass on the kernels' threads (NOTES 53)
            _core.adam_update(variable, gradient, m, v, 1 - self.beta_1, 1 - self.beta_2,
                              float(alpha), self.epsilon)
            return
        m += (gradient - m) * t(1 - self.beta_1)
        v += (xp.square(gradient) - v) * t(1 - self.beta_2)
        if self.amsgrad:
            v_hat = self.get_slot("velocity_hats", variable)
            xp.maximum(v_hat, v, out=v_hat)
            v = v_hat
        variable -= (m * alpha) / (xp.sqrt(v) + t(self.epsilon))

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                      amsgrad=self.amsgrad)
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay, as keras.optimizers.AdamW.

    Each step first does ``w -= w * weight_decay * lr``, then the Adam update.
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="adamw"):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: "
                             "weight_decay=None")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=amsgrad, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name)


# --------------------------------------------------------------------------- RMSprop

class RMSprop(Optimizer):
    """RMSprop, as keras.optimizers.RMSprop.

    ``v = rho * v + (1 - rho) * g^2``; centered: ``mg = rho * mg + (1 - rho) * g`` and
    denominator ``v - mg^2``, else ``v``; ``increment = lr * g / sqrt(denominator + epsilon)``;
    with momentum ``mom = momentum * mom + increment; w -= mom``, else ``w -= increment``.
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="rmsprop"):
        super().__init__(learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name)
        self.rho = _check_real("rho", rho, low=0.0, high=1.0)
        self.momentum = _check_real("momentum", momentum, low=0.0, high=1.0)
        self.epsilon = _check_real("epsilon", epsilon, low=0.0)
        self.centered = bool(centered)

    def build(self, variables):
        super().build(variables)
        self.add_slot("velocities", variables)
        if self.momentum > 0:
            self.add_slot("momentums", variables)
        if self.centered:
            self.add_slot("average_gradients", variables)

    def update_step(self, gradient, variable, learning_rate):
        xp = array_module(variable)
        t = variable.dtype.type
        lr = t(learning_rate)
        rho = t(self.rho)
        velocity = self.get_slot("velocities", variable)
        mom = self.get_slot("momentums", variable) if self.momentum > 0 else None
        if not self.centered and _fusable(variable, gradient, velocity,
                                          *([] if mom is None else [mom])):
            # the same element-wise arithmetic in one pass on the kernels' threads (NOTES 53)
            _core.rmsprop_update(variable, gradient, velocity, mom, self.rho, 1 - self.rho,
                                 float(lr), self.epsilon, self.momentum)
            return
        velocity *= rho
        velocity += t(1 - self.rho) * xp.square(gradient)
        if self.centered:
            average_grad = self.get_slot("average_gradients", variable)
            average_grad *= rho
            average_grad += t(1 - self.rho) * gradient
            denominator = velocity - xp.square(average_grad) + t(self.epsilon)
        else:
            denominator = velocity + t(self.epsilon)
        increment = (lr * gradient) / xp.sqrt(denominator)
        if self.momentum > 0:
            mom = self.get_slot("momentums", variable)
            mom *= t(self.momentum)
            mom += increment
            variable -= mom
        else:
            variable -= increment

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon,
                      centered=self.centered)
        return config


# --------------------------------------------------------------------------- lookup

_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def _lookup(name):
    cls = _BY_NAME.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"Could not interpret optimizer identifier: {name!r}. "
                         f"Valid names: {', '.join(repr(n) for n in _BY_NAME)}")
    return cls


def serialize(optimizer):
    """``optimizer.get_config()`` (a JSON-able dict with ``"class_name"``)."""
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"Expected an Optimizer; got {optimizer!r}")
    return optimizer.get_config()


def deserialize(config):
    """Optimizer from ``get_config()`` output or a Keras ``{"class_name", "config"}`` dict."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"Could not interpret optimizer identifier: {config!r}. A config "
                         "dict needs a 'class_name' entry; valid names: "
                         f"{', '.join(repr(n) for n in _BY_NAME)}")
    return _lookup(config["class_name"]).from_config(config)


def get(identifier):
    """An Optimizer from a name ('sgd', 'adam', 'adamw', 'rmsprop'; any case), an Optimizer
    instance (returned as is) or a config dict; ValueError for anything else."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        return _lookup(identifier)()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}. "
                     f"Valid names: {', '.join(repr(n) for n in _BY_NAME)}")
