"""NumPy reference LSTM: the oracle every fastlstm kernel is checked against.

Written straight from the equations, one time step at a time, for readability
rather than speed.  Gate order along the last axis is i, f, g, o (blocks of H):

    z_t = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias      z_t: (B, 4H) = [z_i | z_f | z_g | z_o]
    i = sigmoid(z_i)   f = sigmoid(z_f)   g = tanh(z_g)   o = sigmoid(z_o)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Shapes: x (T, B, I) time-major; kernel (I, 4H); recurrent_kernel (H, 4H);
bias (4H,) or None; h0, c0 (B, H) or None (= zeros); y (T, B, H); h_n, c_n (B, H).

Everything is computed in the dtype of ``x`` (float16, float32, float64 and
longdouble all work; nothing is upcast).  inf and NaN propagate as IEEE
arithmetic says, without RuntimeWarnings.

Only light validation is done here; the checked public API is ``fastlstm.ops``.
"""

import numpy as np

__all__ = ["LSTMSaved", "lstm_forward", "lstm_backward"]


def sigmoid(z):
    """Logistic function as 0.5 * (1 + tanh(z / 2)): never overflows, exact 0/1 at -inf/+inf."""
    return 0.5 * (1 + np.tanh(z / 2))


class LSTMSaved:
    """What ``lstm_backward`` needs from ``lstm_forward(..., training=True)``.

    All arrays are private read-only copies in the compute dtype, stored in
    *processing order*: for ``reverse=True`` each sequence's valid steps are
    already flipped (see ``_flip_valid``), so step s is the s-th step the
    recurrence ran:

      x                 (T, B, I)   inputs in processing order, 0 past each length
      kernel            (I, 4H)
      recurrent_kernel  (H, 4H)
      has_bias          bool        whether a bias was given (dbias is None if not)
      lengths           (B,) int64  valid steps per sequence
      reverse           bool
      mask              (T, B) bool mask[s, b] = s < lengths[b]
      h                 (T+1, B, H) h[0] = h0, h[s+1] = state after step s
      c                 (T+1, B, H) same for the cell state
      gates             (T, B, 4H)  activated [i | f | g | o] at step s
      tanh_c            (T, B, H)   tanh of the candidate cell state of step s

    Rows of step s with mask[s, b] False carry the state unchanged
    (h[s+1, b] = h[s, b]); their gates are computed but unused.
    """

    __slots__ = ("x", "kernel", "recurrent_kernel", "has_bias", "lengths", "reverse",
                 "mask", "h", "c", "gates", "tanh_c")

    def __init__(self, **fields):
        for name in self.__slots__:
            value = fields.pop(name)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
            setattr(self, name, value)
        if fields:
            raise TypeError(f"unexpected fields {sorted(fields)}")

    def __repr__(self):
        T, B, I = self.x.shape
        H = self.h.shape[2]
        return (f"LSTMSaved(T={T}, B={B}, I={I}, H={H}, dtype={self.x.dtype}, "
                f"has_bias={self.has_bias}, reverse={self.reverse})")


def _lengths_array(lengths, T, B):
    """lengths as a (B,) int64 array; None means every sequence has T steps."""
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (B,) or not (lengths.dtype.kind in "iu" or lengths.size == 0):
        raise ValueError(f"lengths must be an integer array of shape ({B},), got "
                         f"shape {lengths.shape} dtype {lengths.dtype}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths must satisfy 0 <= lengths[b] <= T = {T}, got {lengths}")
    return lengths.astype(np.int64)


def _flip_valid(a, lengths):
    """Reverse a[:lengths[b], b] along axis 0 for every b; entries past lengths[b] stay put.

    a: (T, B, ...); lengths: (B,).  This is an involution: _flip_valid(_flip_valid(a)) == a.
    """
    T, B = a.shape[:2]
    t = np.arange(T)[:, None]                                  # (T, 1)
    src = np.where(t < lengths, lengths - 1 - t, t)           # (T, B) source time index
    return a[src, np.arange(B)]


def lstm_forward(x, kernel, recurrent_kernel, bias=None, h0=None, c0=None,
                 lengths=None, reverse=False, training=True):
    """Run the LSTM over a time-major batch.

    x (T, B, I); kernel (I, 4H); recurrent_kernel (H, 4H); bias (4H,) or None;
    h0, c0 (B, H) or None (= zeros); lengths (B,) ints in [0, T] or None (= all T).
    Sequence b uses steps 0..lengths[b]-1 (in the order lengths[b]-1..0 when
    reverse=True); y[t, b] is 0 for t >= lengths[b], and h_n/c_n are the state
    after the last step run (h0/c0 when lengths[b] == 0).  All arrays are
    cast to x.dtype.

    Returns (y (T, B, H), h_n (B, H), c_n (B, H), saved), saved an LSTMSaved
    when training is true, else None.
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"x must have shape (T, B, I), got shape {x.shape}")
    dtype = x.dtype
    T, B, _ = x.shape
    K = np.asarray(kernel, dtype=dtype)                        # (I, 4H)
    R = np.asarray(recurrent_kernel, dtype=dtype)              # (H, 4H)
    H = R.shape[0]
    b = np.zeros(4 * H, dtype) if bias is None else np.asarray(bias, dtype=dtype)   # (4H,)
    h0 = np.zeros((B, H), dtype) if h0 is None else np.asarray(h0, dtype=dtype)     # (B, H)
    c0 = np.zeros((B, H), dtype) if c0 is None else np.asarray(c0, dtype=dtype)     # (B, H)
    lengths = _lengths_array(lengths, T, B)
    zero = np.zeros((), dtype)

    mask = np.arange(T)[:, None] < lengths                     # (T, B)
    xs = _flip_valid(x, lengths) if reverse else x             # processing order
    xs = np.where(mask[:, :, None], xs, zero)                  # (T, B, I), padding ignored

    h = np.empty((T + 1, B, H), dtype)
    c = np.empty((T + 1, B, H), dtype)
    gates = np.empty((T, B, 4 * H), dtype)
    tanh_c = np.empty((T, B, H), dtype)
    y = np.empty((T, B, H), dtype)
    h[0], c[0] = h0, c0
    # inf - inf and overflow to inf are legitimate IEEE results here (inf inputs,
    # float16 saturation); compute them silently instead of warning.
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(T):
            z = xs[s] @ K + h[s] @ R + b                        # (B, 4H)
            i = sigmoid(z[:, 0 * H:1 * H])
            f = sigmoid(z[:, 1 * H:2 * H])
            g = np.tanh(z[:, 2 * H:3 * H])
            o = sigmoid(z[:, 3 * H:4 * H])
            c_new = f * c[s] + i * g                            # (B, H)
            tc = np.tanh(c_new)
            h_new = o * tc
            m = mask[s][:, None]                                # (B, 1)
            c[s + 1] = np.where(m, c_new, c[s])
            h[s + 1] = np.where(m, h_new, h[s])
            y[s] = np.where(m, h_new, zero)
            gates[s] = np.concatenate([i, f, g, o], axis=1)
            tanh_c[s] = tc
    if reverse:
        y = _flip_valid(y, lengths)                             # back to original positions
    h_n, c_n = h[T].copy(), c[T].copy()
    if not training:
        return y, h_n, c_n, None
    saved = LSTMSaved(x=xs, kernel=K.copy(), recurrent_kernel=R.copy(), has_bias=bias is not None,
                      lengths=lengths, reverse=bool(reverse), mask=mask, h=h, c=c,
                      gates=gates, tanh_c=tanh_c)
    return y, h_n, c_n, saved


def lstm_backward(saved, dy, dh_n=None, dc_n=None):
    """Gradients of a scalar loss through ``lstm_forward``.

    saved: the LSTMSaved from lstm_forward(..., training=True) (not modified);
    dy (T, B, H) or None (= zeros); dh_n, dc_n (B, H) or None (= zeros):
    gradients of the loss w.r.t. y, h_n, c_n.  Cast to the forward dtype.

    Returns (dx (T, B, I), dh0 (B, H), dc0 (B, H), dkernel (I, 4H),
    drecurrent_kernel (H, 4H), dbias (4H,) or None when the forward had no bias).
    dx is 0 past each length.
    """
    if not isinstance(saved, LSTMSaved):
        raise TypeError("saved must be the LSTMSaved returned by "
                        "fastlstm.reference.lstm_forward(..., training=True), got "
                        f"{type(saved).__name__}")
    sv = saved
    T, B, I = sv.x.shape
    H = sv.h.shape[2]
    dtype = sv.x.dtype
    zero = np.zeros((), dtype)
    K, R, mask = sv.kernel, sv.recurrent_kernel, sv.mask

    dy = np.zeros((T, B, H), dtype) if dy is None else np.asarray(dy, dtype=dtype)
    if sv.reverse:
        dy = _flip_valid(dy, sv.lengths)                        # processing order
    dh = np.zeros((B, H), dtype) if dh_n is None else np.array(dh_n, dtype=dtype)  # dL/dh_s
    dc = np.zeros((B, H), dtype) if dc_n is None else np.array(dc_n, dtype=dtype)  # dL/dc_s

    dxs = np.zeros((T, B, I), dtype)
    dK = np.zeros((I, 4 * H), dtype)
    dR = np.zeros((H, 4 * H), dtype)
    db = np.zeros(4 * H, dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(T - 1, -1, -1):
            m = mask[s][:, None]                                # (B, 1)
            gs = sv.gates[s]
            i, f, g, o = (gs[:, k * H:(k + 1) * H] for k in range(4))
            tc = sv.tanh_c[s]
            dh_s = dh + np.where(m, dy[s], zero)                # y[s] = h_s on valid rows only
            dc_s = dc + dh_s * o * (1 - tc * tc)                # through h_s = o * tanh(c_s)
            do = dh_s * tc
            di = dc_s * g
            df = dc_s * sv.c[s]
            dg = dc_s * i
            dz = np.concatenate([di * i * (1 - i),              # sigmoid' = s (1 - s)
                                 df * f * (1 - f),
                                 dg * (1 - g * g),              # tanh' = 1 - tanh^2
                                 do * o * (1 - o)], axis=1)     # (B, 4H)
            dz = np.where(m, dz, zero)                          # padding steps do nothing
            dxs[s] = dz @ K.T
            dK += sv.x[s].T @ dz
            dR += sv.h[s].T @ dz
            db += dz.sum(axis=0)
            # valid rows: back through z and c_s = f c_{s-1} + ...; padding rows: identity
            dh = np.where(m, dz @ R.T, dh)
            dc = np.where(m, dc_s * f, dc)
    dx = _flip_valid(dxs, sv.lengths) if sv.reverse else dxs
    return dx, dh, dc, dK, dR, (db if sv.has_bias else None)
