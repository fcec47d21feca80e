"""fastlstm._core: the compiled CPU kernels (private; use fastlstm.ops).

Every array argument must be a C-contiguous numpy array of exactly the dtype of x
(float32 or float64) and exactly the shape stated; lengths is int64. Anything else raises
TypeError or ValueError naming the argument.
"""

from typing import List, Optional, Tuple

import numpy as np

def forward(
    x: np.ndarray,                      # (T, B, I), or (B, T, I) with batch_major
    kernel: np.ndarray,                 # (I, 4H)
    recurrent_kernel: np.ndarray,       # (H, 4H)
    bias: Optional[np.ndarray],         # (4H,)
    h0: Optional[np.ndarray],           # (B, H)
    c0: Optional[np.ndarray],           # (B, H)
    lengths: Optional[np.ndarray],      # (B,) int64 in [0, T]
    reverse: bool,
    training: bool,
    packed: Optional["PackedWeights"] = None,  # pack_weights(kernel, recurrent_kernel), unchanged since
    batch_major: bool = False,          # x and y (B, T, .); gates and cells stay (T, B, .)
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """Returns (y (T,B,H) | (B,T,H), h_n (B,H), c_n (B,H), gates (T,B,4H) | None,
    cells (T,B,H) | None)."""

class PackedWeights:
    """kernel and recurrent_kernel packed for forward(); made by pack_weights()."""
    isa: str          # the instruction set that packed them (another one ignores them)
    I: int
    H: int
    dtype: np.dtype

def pack_weights(kernel: np.ndarray, recurrent_kernel: np.ndarray) -> PackedWeights:
    """kernel (I, 4H), recurrent_kernel (H, 4H), both float32 or both float64."""

def backward(
    x: np.ndarray,                      # as given to forward()
    kernel: np.ndarray,
    recurrent_kernel: np.ndarray,
    has_bias: bool,
    h0: Optional[np.ndarray],
    c0: Optional[np.ndarray],
    lengths: Optional[np.ndarray],
    reverse: bool,
    gates: np.ndarray,                  # (T, B, 4H) from forward(training=True)
    cells: np.ndarray,                  # (T, B, H)  from forward(training=True)
    dy: Optional[np.ndarray],           # (T, B, H), or (B, T, H) with batch_major
    dh_n: Optional[np.ndarray],         # (B, H)
    dc_n: Optional[np.ndarray],         # (B, H)
    need_dx: bool = True,               # False: dx's product skipped, dx None
    batch_major: bool = False,          # x, dy and dx (B, T, .), as forward()'s x and y
) -> Tuple[Optional[np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Returns (dx | None, dh0, dc0, dkernel, drecurrent_kernel, dbias | None)."""

def matmul(a: np.ndarray, b: np.ndarray, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """a (M, K) . b (K, N) (+ bias (N,)): 2-D, one float dtype, any strides of whole elements."""

def transpose(a: np.ndarray) -> np.ndarray:
    """A new C-contiguous copy of a.T; a 2-D, C-contiguous, float32 or float64."""

def adam_update(variable: np.ndarray, gradient: np.ndarray, m: np.ndarray, v: np.ndarray,
                c1: float, c2: float, alpha: float, epsilon: float) -> None:
    """One Adam step in place: m += (g - m) c1; v += (g g - v) c2;
    variable -= (m alpha) / (sqrt(v) + epsilon). One shape and float dtype, C-contiguous,
    not overlapping; the same bits as those NumPy expressions."""

def rmsprop_update(variable: np.ndarray, gradient: np.ndarray, v: np.ndarray,
                   mom: Optional[np.ndarray], rho: float, c: float, lr: float, epsilon: float,
                   momentum: float) -> None:
    """One RMSprop step in place (not centered): v = v rho + c g g;
    step = lr g / sqrt(v + epsilon); variable -= step, or mom = mom momentum + step and
    variable -= mom. Arrays as for adam_update."""

def sgd_update(variable: np.ndarray, gradient: np.ndarray, m: Optional[np.ndarray], lr: float,
               momentum: float, nesterov: bool) -> None:
    """One SGD step in place: m None: variable -= g lr; else m = m momentum - g lr and
    variable += m (nesterov: += m momentum - g lr). Arrays as for adam_update."""

def compiled_isas() -> List[str]: ...
def supported_isas() -> List[str]: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def threads_for_next_run() -> int: ...
def pool_info() -> Tuple[str, str, str, str]: ...  # (choice, last call ran on, OpenMP runtime
                                                   # path or "", "short team" / "forked" / "")
def set_pool(name: str) -> None: ...    # "auto" or "own"
def set_backoff(enabled: bool) -> None: ...
def set_cache_limit(nbytes: int) -> None: ...
def get_cache_limit() -> int: ...
def cached_bytes() -> int: ...
def clear_cache() -> None: ...
def set_poison(on: bool) -> None: ...
def get_poison() -> bool: ...
