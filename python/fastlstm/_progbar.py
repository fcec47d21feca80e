"""Keras-style text progress bar, used by ``fastlstm.callbacks.ProgbarLogger``.

    bar = Progbar(target=125)
    for step in range(1, 126):
        ...
        bar.update(step, [("loss", loss), ("accuracy", acc)])

With ``verbose=1`` the bar is redrawn in place (``"\\r"``) while the work runs, in the
Keras 3 layout::

      7/125 ━━━━━━━━━━━━━━━━━━━━ 1s 4ms/step - accuracy: 0.9120 - loss: 0.2311

where ``1s`` is the estimated time left; the last update of a run ("finalize") shows the
elapsed time instead and ends the line.  Values are printed ``.4f``, or ``.4e`` when their
absolute value is below 1e-3 and not zero.  When ``sys.stdout`` is not a terminal (output
captured or piped to a file) no in-place update is written: only the final line appears.
With ``verbose=2`` only the final line is written, as ``125/125 - 1s - 4ms/step - loss: ...``;
``verbose=0`` writes nothing.

Metric values passed to :meth:`Progbar.update` are averaged over the steps (weighted by
the number of steps each update covers) unless their name is in ``stateful_metrics``, in
which case the latest value is shown as is.  Non-numeric values are shown with ``str``.

The bar looks up ``sys.stdout`` each time it writes, so redirecting stdout after the bar
is created (e.g. pytest's ``capsys``) works.  Times come from the module function
``_clock`` (``time.monotonic``).
"""

import math
import numbers
import operator
import re
import sys
import time

import numpy as np

__all__ = ["Progbar", "format_metric_value", "format_step_time", "format_eta"]

_BAR_CHAR = "\u2501"  # ━ (heavy horizontal line), as Keras 3 draws it
_REST_CHAR = "\u2500"  # ─ (light line): the part not done, when drawn without colours
_BOLD = "\x1b[1m"
_GREEN = "\x1b[32m"
_GREY = "\x1b[37m"
_RESET = "\x1b[0m"
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def _clock():
    """Seconds from an arbitrary origin; a module function so tests can replace it."""
    return time.monotonic()


def _is_tty(stream):
    """Whether the bar may redraw itself with carriage returns: a terminal, or a Jupyter
    kernel's output (not a terminal, but it renders carriage returns as Keras relies on)."""
    if "ipykernel" in sys.modules and type(stream).__module__.startswith("ipykernel"):
        return True
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


def _write(text):
    stream = sys.stdout
    if stream is None:  # pythonw and friends
        return
    stream.write(text)
    stream.flush()


def _as_scalar(value):
    """The value as a Python float when it is numeric, else None.

    Numbers (Python or NumPy, bools included) are converted directly; a numeric array is
    reduced to its mean, as Keras does.  Anything else (strings, empty or complex arrays,
    arbitrary objects) gives None and is displayed with ``str``.
    """
    if isinstance(value, (numbers.Real, np.bool_)):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.size == 0 or not (np.issubdtype(arr.dtype, np.floating)
                                 or np.issubdtype(arr.dtype, np.integer)
                                 or arr.dtype == np.bool_):
            return None
        return float(arr.mean(dtype=np.float64))
    return None


def format_metric_value(value):
    """Format one metric value: ``.4f``, or ``.4e`` when 0 < abs(value) < 1e-3.

    NaN and infinities come out as ``nan`` / ``inf`` / ``-inf``; a non-numeric value is
    formatted with ``str``.
    """
    x = _as_scalar(value)
    if x is None:
        return str(value)
    if x != 0.0 and abs(x) < 1e-3:
        return f"{x:.4e}"
    return f"{x:.4f}"


def format_step_time(seconds, unit_name="step"):
    """Time per step as Keras shows it: ``2s/step``, ``4ms/step`` or ``50us/step``."""
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s/{unit_name}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/{unit_name}"
    return f"{seconds * 1e6:.0f}us/{unit_name}"


def format_eta(seconds):
    """Remaining time: ``3s`` under a minute, ``1:15`` under an hour, else ``1:01:40``."""
    total = int(max(seconds, 0.0))
    if seconds > 3600:
        return f"{total // 3600}:{(total % 3600) // 60:02d}:{total % 60:02d}"
    if seconds > 60:
        return f"{total // 60}:{total % 60:02d}"
    return f"{total}s"


def _check_count(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Argument `{name}` must be an integer. Received: {name}={value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"Argument `{name}` must be an integer"
                        f"{' or None' if allow_none else ''}. "
                        f"Received: {name}={value!r}") from None
    if value < 0:
        raise ValueError(f"Argument `{name}` must be >= 0. Received: {name}={value}")
    return value


class Progbar:
    """A text progress bar (Keras 3 ``keras.utils.Progbar`` look and behaviour).

    Args:
        target: total number of steps, or None when unknown (then the bar shows
            ``current/Unknown`` and never finalizes by itself).
        width: number of bar characters.
        verbose: 0 (silent), 1 (bar redrawn in place), 2 (one line when finalized).
        interval: minimum number of seconds between two in-place redraws (the final
            update is always drawn).
        stateful_metrics: names whose values are shown as passed instead of averaged.
        unit_name: the unit in the time-per-unit field (``4ms/step``).
    """

    def __init__(self, target, width=20, verbose=1, interval=0.05, stateful_metrics=None,
                 unit_name="step"):
        self.target = _check_count("target", target, allow_none=True)
        width = _check_count("width", width)
        if width < 1:
            raise ValueError(f"Argument `width` must be >= 1. Received: width={width}")
        self.width = width
        if isinstance(verbose, (bool, np.bool_)) or verbose not in (0, 1, 2):
            raise ValueError(f"Argument `verbose` must be 0, 1 or 2. Received: verbose={verbose!r}")
        self.verbose = int(verbose)
        if (not isinstance(interval, numbers.Real) or isinstance(interval, (bool, np.bool_))
                or not interval >= 0 or math.isinf(interval)):
            raise ValueError("Argument `interval` must be a finite number of seconds >= 0. "
                             f"Received: interval={interval!r}")
        self.interval = float(interval)
        if stateful_metrics is None:
            stateful_metrics = ()
        elif isinstance(stateful_metrics, str):
            stateful_metrics = (stateful_metrics,)
        self.stateful_metrics = set(stateful_metrics)
        if not isinstance(unit_name, str):
            raise TypeError(f"Argument `unit_name` must be a string. Received: unit_name={unit_name!r}")
        self.unit_name = unit_name

        self._values = {}          # name -> [weighted sum, weight] (numeric) or the raw object
        self._order = []           # names in order of first appearance
        self._seen_so_far = 0
        self._start = _clock()
        self._first = None         # (time, step) of the first update past step 0
        self._last_draw = None     # time of the last in-place redraw
        self._prev_width = 0       # visible width of the line on screen (to blank leftovers)

    # ------------------------------------------------------------------ public API

    def update(self, current, values=None, finalize=None):
        """Move the bar to step ``current`` and record metric values.

        Args:
            current: the number of steps done (an integer >= 0).
            values: ``[(name, value), ...]`` (or a dict) for the step(s) since the last
                update.
            finalize: whether this is the last update; None means ``current >= target``
                (False when the target is unknown).
        """
        current = _check_count("current", current)
        if finalize is None:
            finalize = self.target is not None and current >= self.target
        finalize = bool(finalize)

        if values is None:
            values = ()
        elif isinstance(values, dict):
            values = values.items()
        weight = max(current - self._seen_so_far, 1)
        for name, value in values:
            if name not in self._values:
                self._order.append(name)
            x = _as_scalar(value)
            acc = self._values.get(name)
            if x is None:
                self._values[name] = value
            elif name in self.stateful_metrics:
                self._values[name] = [x, 1]
            elif isinstance(acc, list):
                acc[0] += x * weight
                acc[1] += weight
            else:
                self._values[name] = [x * weight, weight]
        self._seen_so_far = current

        now = _clock()
        per_step = self._step_time(current, now)

        if self.verbose == 1:
            if _is_tty(sys.stdout):
                if (not finalize and self._last_draw is not None
                        and now - self._last_draw < self.interval):
                    return
                line = self._line_v1(current, now, per_step, finalize, color=True)
                visible = len(_ANSI_RE.sub("", line))
                text = "\r" + line + " " * max(self._prev_width - visible, 0)
                if finalize:
                    text += "\n"
                    self._prev_width = 0
                else:
                    self._prev_width = visible
                _write(text)
                self._last_draw = now
            elif finalize:
                _write(self._line_v1(current, now, per_step, True, color=False) + "\n")
        elif self.verbose == 2 and finalize:
            _write(self._line_v2(current, now, per_step) + "\n")

    def add(self, n, values=None):
        """Advance the bar by ``n`` steps (``update(seen + n, values)``)."""
        self.update(self._seen_so_far + _check_count("n", n), values)

    # ------------------------------------------------------------------ helpers

    def _step_time(self, current, now):
        """Seconds per step, leaving out the first update (warm-up) once possible."""
        if current <= 0:
            return 0.0
        if self._first is None:
            self._first = (now, current)
            return (now - self._start) / current
        t1, c1 = self._first
        if current > c1:
            return (now - t1) / (current - c1)
        return (now - self._start) / current

    def _count(self, current):
        digits = len(str(self.target))
        return f"{current:{digits}d}/{self.target}"

    def _metrics(self):
        parts = []
        for name in self._order:
            value = self._values[name]
            if isinstance(value, list):
                text = format_metric_value(value[0] / max(value[1], 1))
            else:
                text = str(value)
            parts.append(f" - {name}: {text}")
        return "".join(parts)

    def _line_v1(self, current, now, per_step, finalize, color):
        bold, reset = (_BOLD, _RESET) if color else ("", "")
        if self.target is not None:
            frac = 1.0 if self.target == 0 else min(current / self.target, 1.0)
            done = int(self.width * frac)
            if color:
                rest = self.width - done
                bar = (f"{_GREEN}{_BAR_CHAR * done}{_RESET}" if done else "") + \
                    (f"{_GREY}{_BAR_CHAR * rest}{_RESET}" if rest else "")
            else:  # plain text: the part not done is drawn with a light line
                bar = _BAR_CHAR * done + _REST_CHAR * (self.width - done)
            head = f"{bold}{self._count(current)}{reset} {bar}"
            when = f"{_elapsed(now, self._start)}" if finalize else \
                format_eta(per_step * max(self.target - current, 0))
        else:
            head = f"{current:7d}/Unknown"
            when = _elapsed(now, self._start)
        return f"{head} {bold}{when}{reset} {format_step_time(per_step, self.unit_name)}" \
            f"{self._metrics()}"

    def _line_v2(self, current, now, per_step):
        count = self._count(current) if self.target is not None else f"{current}/Unknown"
        return (f"{count} - {_elapsed(now, self._start)} - "
                f"{format_step_time(per_step, self.unit_name)}{self._metrics()}")


def _elapsed(now, start):
    return f"{now - start:.0f}s"
