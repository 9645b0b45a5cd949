"""Parameter initialisers, in place on NumPy arrays (and on modules, by parameter name).

Array initialisers mirror ``torch.nn.init``: each fills ``a`` in place and returns it; ``rng``
is a ``numpy.random.Generator``, an int seed, or None (fresh entropy). Values are drawn in
float64 and cast to ``a``'s dtype.

Module initialisers work on anything with ``named_parameters()`` (yielding PyTorch names:
``weight_ih_l0``, ``weight_hh_l1_reverse``, ``bias_ih_l0``, ``weight_hr_l0`` ...). RNN modules
are recognised by their ``mode`` ('RNN_TANH', 'RNN_RELU', 'LSTM', 'GRU') and ``hidden_size``
attributes (cells without ``mode`` are recognised by ``hidden_size`` and ``weight_hh`` rows =
G * hidden_size). A ``fusedrnn.nn.ParamGroup`` is handled module by module.

Typical recipe for an LSTM language model::

    init.pytorch_default_(model, rng)          # what torch does at construction
    init.orthogonal_recurrent_(lstm, rng)      # each gate block of W_hh orthogonal
    init.unit_forget_bias_(lstm)               # forget gate bias 1 (Jozefowicz et al. 2015)
"""

from __future__ import annotations

import math
import re

import numpy as np

from fusedrnn.nn import _make_rng
from fusedrnn.spec import GATES, TORCH_MODES

__all__ = ["uniform_", "normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
           "xavier_normal_", "orthogonal_", "pytorch_default_", "orthogonal_recurrent_",
           "unit_forget_bias_"]

_GATES = {TORCH_MODES[m]: g for m, g in GATES.items()}  # by torch.nn's mode names
_SUFFIX = r"(?:_l\d+(?:_reverse)?)?"
_W_HH = re.compile(r"weight_hh" + _SUFFIX + r"$")
_B_IH = re.compile(r"bias_ih" + _SUFFIX + r"$")
_B_HH = re.compile(r"bias_hh" + _SUFFIX + r"$")


def _rng(rng):
    return _make_rng(rng)


def _check(a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"expected a float array, got dtype {a.dtype}")
    return a


def _fans(a):
    if a.ndim < 2:
        raise ValueError(f"fan in/out need an array with at least 2 dims, got shape {a.shape}")
    receptive = int(np.prod(a.shape[2:])) if a.ndim > 2 else 1
    return a.shape[1] * receptive, a.shape[0] * receptive


def uniform_(a, low: float = 0.0, high: float = 1.0, rng=None):
    """Fills ``a`` (any shape) from U(low, high), in place; returns ``a``."""
    _check(a)
    a[...] = _rng(rng).uniform(low, high, size=a.shape)
    return a


def normal_(a, mean: float = 0.0, std: float = 1.0, rng=None):
    """Fills ``a`` (any shape) from N(mean, std²), in place; returns ``a``."""
    _check(a)
    a[...] = _rng(rng).normal(mean, std, size=a.shape)
    return a


def constant_(a, val: float):
    """Fills ``a`` with ``val``, in place; returns ``a``."""
    _check(a)
    a[...] = val
    return a


def zeros_(a):
    """Fills ``a`` with zeros, in place; returns ``a``."""
    return constant_(a, 0.0)


def ones_(a):
    """Fills ``a`` with ones, in place; returns ``a``."""
    return constant_(a, 1.0)


def xavier_uniform_(a, gain: float = 1.0, rng=None):
    """Glorot uniform: U(±gain·sqrt(6 / (fan_in + fan_out))) for ``a`` (out, in, *k), as
    ``torch.nn.init.xavier_uniform_``; in place, returns ``a``."""
    _check(a)
    fan_in, fan_out = _fans(a)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(a, -bound, bound, rng)


def xavier_normal_(a, gain: float = 1.0, rng=None):
    """Glorot normal: N(0, gain²·2 / (fan_in + fan_out)) for ``a`` (out, in, *k), as
    ``torch.nn.init.xavier_normal_``; in place, returns ``a``."""
    _check(a)
    fan_in, fan_out = _fans(a)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return normal_(a, 0.0, std, rng)


def orthogonal_(a, gain: float = 1.0, rng=None):
    """(Semi-)orthogonal matrix, as ``torch.nn.init.orthogonal_``: QR of a Gaussian matrix with
    the signs of R's diagonal folded into Q, times ``gain``.

    ``a``: (rows, cols, *k), treated as (rows, cols·prod(k)). Rows are orthonormal when
    rows <= cols, columns when rows >= cols. In place; returns ``a``."""
    _check(a)
    if a.ndim < 2:
        raise ValueError(f"orthogonal_ needs an array with at least 2 dims, got shape {a.shape}")
    rows = a.shape[0]
    cols = a.size // rows if rows else 0
    if a.size == 0:
        return a
    flat = _rng(rng).standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    d = np.sign(np.diag(r))
    d[d == 0] = 1
    q = q * d
    if rows < cols:
        q = q.T
    a[...] = (gain * q).reshape(a.shape)
    return a


# --------------------------------------------------------------------------------------------
# modules


def _submodules(module):
    """A ParamGroup (anything with ``_modules`` mapping) -> its modules; else [module]."""
    mods = getattr(module, "_modules", None)
    if isinstance(mods, dict) and not hasattr(module, "hidden_size"):
        out = []
        for m in mods.values():
            out.extend(_submodules(m))
        return out
    if not hasattr(module, "named_parameters"):
        raise TypeError(f"expected a module with named_parameters(), got {type(module).__name__}")
    return [module]


def _is_rnn(module):
    return hasattr(module, "hidden_size") and (
        getattr(module, "mode", None) in _GATES
        or any(_W_HH.match(n) for n, _ in module.named_parameters()))


def _gates(module, name, w):
    """Number of gates of an RNN module, from ``mode`` or from weight_hh's rows."""
    H = int(module.hidden_size)
    mode = getattr(module, "mode", None)
    if mode is not None:
        if mode not in _GATES:
            raise ValueError(f"unknown RNN mode {mode!r}, expected one of {tuple(_GATES)}")
        G = _GATES[mode]
    else:
        G = w.shape[0] // H if H else 0
    if w.ndim != 2 or w.shape[0] != G * H:
        raise ValueError(f"{name} has shape {w.shape}, expected ({G}*{H}, ...) for hidden_size "
                         f"{H}")
    return G, H


def pytorch_default_(module, rng=None):
    """Re-initialises all parameters the way PyTorch does at construction, in place.

    RNN modules (``mode`` / ``hidden_size``): every parameter from U(±1/sqrt(hidden_size)).
    Embedding-like modules (``num_embeddings``): N(0, 1), padding row zero. Otherwise: each
    weight (ndim >= 2) from U(±1/sqrt(fan_in)), fan_in = shape[1]·prod(shape[2:]); each 1-D
    parameter from U(±1/sqrt(fan_in of the weight with the matching name)) ('bias' ->
    'weight', 'bias_ih_l0' -> 'weight_ih_l0'), or U(±1/sqrt(size)) without one. Returns
    ``module``."""
    g = _rng(rng)
    for m in _submodules(module):
        params = dict(m.named_parameters())
        if _is_rnn(m):
            k = 1.0 / math.sqrt(int(m.hidden_size))
            for p in params.values():
                uniform_(p, -k, k, g)
        elif hasattr(m, "num_embeddings"):
            for p in params.values():
                normal_(p, 0.0, 1.0, g)
            pad = getattr(m, "padding_idx", None)
            if pad is not None and "weight" in params:
                params["weight"][pad] = 0
        else:
            for name, p in params.items():
                if p.ndim >= 2:
                    fan_in = _fans(p)[0]
                else:
                    w = params.get(name.replace("bias", "weight"))
                    fan_in = _fans(w)[0] if w is not None and w.ndim >= 2 else max(p.size, 1)
                k = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
                uniform_(p, -k, k, g)
    return module


def orthogonal_recurrent_(module, rng=None, gain: float = 1.0):
    """Makes every gate block of every recurrent weight orthogonal, in place.

    For each ``weight_hh_l{k}[_reverse]`` (or a cell's ``weight_hh``) of shape (G·H, R), R =
    hidden_size (or proj_size), each (H, R) gate block is drawn independently with
    :func:`orthogonal_` (orthonormal rows/columns; square blocks are orthogonal). Other
    parameters are left alone. Raises ValueError for a module with no recurrent weights.
    Returns ``module``."""
    blocks = []                       # check everything before writing anything
    for m in _submodules(module):
        if not hasattr(m, "hidden_size"):
            continue
        for name, w in m.named_parameters():
            if _W_HH.match(name):
                G, H = _gates(m, name, w)
                blocks.extend(w[j * H:(j + 1) * H] for j in range(G))
    if not blocks:
        raise ValueError(f"{type(module).__name__} has no recurrent weights (weight_hh_l*) "
                         f"to initialise")
    g = _rng(rng)
    for blk in blocks:
        orthogonal_(blk, gain, g)
    return module


def unit_forget_bias_(module):
    """LSTM forget-gate bias 1, as Keras' ``unit_forget_bias``: in every layer and direction,
    ``bias_ih[H:2H] = 1`` and ``bias_hh[H:2H] = 0`` (their sum is what the cell sees). In place;
    other entries unchanged. Raises ValueError for non-LSTM modules or modules without biases.
    Returns ``module``."""
    targets = []                      # check everything before writing anything
    for m in _submodules(module):
        if not hasattr(m, "hidden_size"):
            continue
        params = dict(m.named_parameters())
        mode = getattr(m, "mode", None)
        if mode is None:
            whh = [w for n, w in params.items() if _W_HH.match(n)]
            if whh and whh[0].shape[0] == 4 * int(m.hidden_size):
                mode = "LSTM"
        if mode != "LSTM":
            raise ValueError(f"unit_forget_bias_ applies to LSTM modules, got mode {mode!r}")
        H = int(m.hidden_size)
        for name, b in params.items():
            if _B_IH.match(name) or _B_HH.match(name):
                if b.shape != (4 * H,):
                    raise ValueError(f"{name} has shape {b.shape}, expected ({4 * H},)")
                targets.append((b, H, 1.0 if _B_IH.match(name) else 0.0))
    if not targets:
        raise ValueError(f"{type(module).__name__} has no LSTM biases (bias_ih_l*/bias_hh_l*); "
                         f"was it built with bias=False?")
    for b, H, v in targets:
        b[H:2 * H] = v
    return module
