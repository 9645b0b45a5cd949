"""Regularised recurrent stacks on the fused CPU kernels: layer normalisation, zoneout, recurrent
(variational) dropout, DropConnect on ``W_hh``, LSTM gate and cell clipping, and peepholes.

The math is :mod:`fusedrnn.reference_regularised`'s (the spec, with its finite-difference
tests); each layer and direction runs as one native call, its whole time loop fused in C++
(``csrc/cpu/regularised_driver.h``), forward and BPTT. This module only strings layers and
directions together and draws the masks. ::

    reg = Regularisation(layer_norm=True, zoneout_h=0.1, zoneout_c=0.05)
    params = init_params("lstm", input_size=32, hidden_size=128, num_layers=2, reg=reg)
    y, h_n, c_n, ctx = stack_forward("lstm", x, params, reg=reg, num_layers=2, seed=7)
    dx, dh0, dc0, grads = stack_backward(ctx, dy)

Shapes are :func:`fusedrnn.functional.stack_forward`'s: ``x (T, B, I)`` (``(B, T, I)`` with
``batch_first``), ``h0 (L*D, B, R)``, ``c0 (L*D, B, H)``, ``lengths (B,)``; ``params`` by
PyTorch's names plus the options' (:func:`param_names`): ``ln_weight_ih_l0 (G*H,)``,
``ln_weight_hh_l0 (G*H,)``, ``ln_weight_c_l0 (H,)``, ``ln_bias_c_l0 (H,)`` (LSTM layer norm),
``weight_peephole_l0 (3H,)`` (ONNX's [p_i, p_o, p_f]). NumPy float32 or float64 arrays on the
CPU (the CUDA backend has no regularised kernels yet: docs/design.md §3.6).

Randomness. Every mask comes from the counter-based generator the dropout kernels share
(``csrc/core/dropout.h``), as a pure function of ``seed``, the option and the layer-direction
index ``k = l*D + d``: in training, zoneout draws a binary mask per time step, batch row and
unit (1 = keep the previous value, with probability ``zoneout_h``/``zoneout_c``); recurrent
dropout one mask per sequence ``(B, R)`` scaled by ``1/(1-p)``; DropConnect one ``(G*H, R)``
mask per call; dropout between layers one ``(T, B, D*R)`` mask. In inference zoneout uses its
expectation (``h_t = p h_{t-1} + (1-p) h~_t``) and the dropouts are off. ``ctx.masks[k]`` holds
a training call's masks (what :func:`fusedrnn.reference.stack_forward` takes as
``layer_options`` to check the kernels).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from fusedrnn._loader import _C
from fusedrnn.reference_regularised import LN_EPS, _bounds, _check_rate

__all__ = ["Regularisation", "RegContext", "stack_forward", "stack_backward", "param_names",
           "param_shapes", "init_params", "MODES", "RegularisedRNN", "RegularisedLSTM",
           "RegularisedGRU", "from_haste"]

MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_KIND = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3, "gru_v1": 4}

# The generator's purpose tags: one independent stream family per kind of mask.
_ZONEOUT_H, _ZONEOUT_C, _RECURRENT, _DROPCONNECT, _BETWEEN = 0x5A48, 0x5A43, 0x5244, 0x4443, 0x4C44


def _rate(name, v):
    _check_rate(name, v)
    return float(v)


@dataclass(frozen=True)
class Regularisation:
    """The options of a regularised stack (every layer and direction alike).

    ``layer_norm``: Ba et al.'s layer normalisation in Haste's form (the input and recurrent
    projections normalised separately over the G*H gate vector, and the LSTM's cell state
    before its tanh; learnable gains, the biases as the normalisations' shifts; ``ln_eps``).
    ``zoneout_h``/``zoneout_c``: zoneout rates of h and (LSTM) c. ``recurrent_dropout``: Gal &
    Ghahramani's variational dropout on h where it enters ``W_hh``. ``dropconnect``: dropout on
    ``W_hh``'s entries, one mask per call. ``gate_clip`` (LSTM, ONNX ``clip``): each gate's
    pre-activation clipped to [-c, c]. ``cell_clip`` (LSTM, cuDNN/TensorFlow ``cell_clip``):
    the new cell state clipped to [-c, c] or to a pair (lo, hi). ``peepholes`` (LSTM): i and f
    see c_{t-1}, o sees c_t (one ``weight_peephole (3H,)`` per layer and direction).
    """

    layer_norm: bool = False
    zoneout_h: float = 0.0
    zoneout_c: float = 0.0
    recurrent_dropout: float = 0.0
    dropconnect: float = 0.0
    gate_clip: Optional[float] = None
    cell_clip: Optional[Union[float, Tuple[float, float]]] = None
    peepholes: bool = False
    ln_eps: float = LN_EPS

    def __post_init__(self):
        for name in ("zoneout_h", "zoneout_c", "recurrent_dropout", "dropconnect"):
            _rate(name, getattr(self, name))
        if self.recurrent_dropout == 1.0 or self.dropconnect == 1.0:
            raise ValueError("recurrent_dropout and dropconnect must be < 1 (a mask scaled by "
                             "1/(1-p))")
        _bounds("gate_clip", self.gate_clip, True)
        _bounds("cell_clip", self.cell_clip, False)
        if not (isinstance(self.ln_eps, numbers.Real) and self.ln_eps > 0):
            raise ValueError(f"ln_eps must be > 0, got {self.ln_eps!r}")

    @property
    def active(self) -> bool:
        """Whether any option differs from the plain cell."""
        return any(getattr(self, f.name) != f.default for f in fields(self) if f.name != "ln_eps")

    @property
    def deterministic_active(self) -> bool:
        """Whether an option changes inference (the dropouts do not: they are off there)."""
        return bool(self.layer_norm or self.zoneout_h or self.zoneout_c or self.peepholes
                    or self.gate_clip is not None or self.cell_clip is not None)

    def check_mode(self, mode: str, reset_after: bool = True) -> None:
        """Raises for an option the cell does not have (``NotImplementedError``/``ValueError``,
        naming it)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "lstm":
            lstm_only = [n for n in ("gate_clip", "cell_clip") if getattr(self, n) is not None]
            lstm_only += ["peepholes"] if self.peepholes else []
            if lstm_only:
                raise NotImplementedError(
                    f"{', '.join(lstm_only)}: defined for the LSTM only, not mode {mode!r}")
            if self.zoneout_c:
                raise ValueError(f"zoneout_c: only the LSTM has a cell state to zone out, not "
                                 f"mode {mode!r} (use zoneout_h)")
        if mode == "gru" and not reset_after and self.layer_norm:
            raise NotImplementedError(
                "layer normalisation of the GRU with reset_after=False: its recurrent "
                "pre-activation is not one gate vector (W_hn acts on r*h); use reset_after=True")


def param_names(mode: str, reg: Regularisation, layer: int, direction: int) -> List[str]:
    """The options' parameter names of one layer and direction (``ln_weight_ih_l0`` ...)."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    keys = []
    if reg.layer_norm:
        keys += ["ln_weight_ih", "ln_weight_hh"]
        if mode == "lstm":
            keys += ["ln_weight_c", "ln_bias_c"]
    if reg.peepholes:
        keys.append("weight_peephole")
    return [k + sfx for k in keys]


def param_shapes(mode: str, reg: Regularisation, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False) -> Dict[str, Tuple[int]]:
    """Name -> shape of every option parameter of a stack (the plain ones not included)."""
    G, H = _GATES[mode], hidden_size
    size = {"ln_weight_ih": G * H, "ln_weight_hh": G * H, "ln_weight_c": H, "ln_bias_c": H,
            "weight_peephole": 3 * H}
    out = {}
    for layer in range(num_layers):
        for d in range(2 if bidirectional else 1):
            for name in param_names(mode, reg, layer, d):
                out[name] = (size[name.rsplit("_l", 1)[0]],)
    return out


def init_params(mode: str, reg: Regularisation, hidden_size: int, num_layers: int = 1,
                bidirectional: bool = False, dtype=np.float32) -> Dict[str, np.ndarray]:
    """The options' parameters at their usual initial values: layer-norm gains 1 and the cell
    state's shift 0 (Haste's), peepholes 0 (the plain LSTM)."""
    out = {}
    for name, shape in param_shapes(mode, reg, hidden_size, num_layers, bidirectional).items():
        base = name.rsplit("_l", 1)[0]
        out[name] = np.ones(shape, dtype) if base in ("ln_weight_ih", "ln_weight_hh",
                                                      "ln_weight_c") else np.zeros(shape, dtype)
    return out


def _bits(shape, p, seed, purpose, index, keep):
    return _C.draw_bits(list(shape), float(p), int(seed) & (2**64 - 1), purpose, int(index), keep)


def _scaled(shape, p, seed, purpose, index, dt):
    """keep / (1 - p) with the keep bits of :func:`_bits` (keep=True)."""
    return _C.draw_scaled_mask(list(shape), float(p), int(seed) & (2**64 - 1), purpose,
                               int(index), dt == np.float64)


def _layer_options(reg, mode, stochastic, seed, k, T, B, H, R, dt):
    """The native options of layer-direction k, and the masks drawn (stochastic)."""
    G = _GATES[mode]
    o: Dict[str, Any] = {}
    masks: Dict[str, np.ndarray] = {}
    if reg.gate_clip is not None:
        o["gate_clip"] = _bounds("gate_clip", reg.gate_clip, True)
    if reg.cell_clip is not None:
        o["cell_clip"] = _bounds("cell_clip", reg.cell_clip, False)
    if reg.layer_norm:
        o["ln_eps"] = float(reg.ln_eps)
    if stochastic:
        if reg.zoneout_h:
            masks["zoneout_h_mask"] = _bits((T, B, R), reg.zoneout_h, seed, _ZONEOUT_H, k, False)
        if reg.zoneout_c and mode == "lstm":
            masks["zoneout_c_mask"] = _bits((T, B, H), reg.zoneout_c, seed, _ZONEOUT_C, k, False)
        if reg.recurrent_dropout:
            masks["recurrent_dropout_mask"] = _scaled((B, R), reg.recurrent_dropout, seed,
                                                      _RECURRENT, k, dt)
        if reg.dropconnect:
            masks["dropconnect_mask"] = _scaled((G * H, R), reg.dropconnect, seed,
                                                _DROPCONNECT, k, dt)
        o.update(masks)
    else:
        if reg.zoneout_h:
            o["zoneout_h"] = float(reg.zoneout_h)
        if reg.zoneout_c and mode == "lstm":
            o["zoneout_c"] = float(reg.zoneout_c)
    return o, masks


_HASTE_PERM = {"lstm": (0, 2, 1, 3), "gru": (1, 0, 2)}  # our gate blocks from Haste's


def from_haste(kind: str, state: Dict[str, Any], *, layer: int = 0, direction: int = 0,
               dtype=None) -> Dict[str, np.ndarray]:
    """Haste's ``LayerNormLSTM``/``LayerNormGRU`` weights (its PyTorch ``state_dict``, or the
    same arrays by name) as this module's parameters of one layer and direction:

    * LSTM (``kind="lstm"``): ``kernel (I, 4H)``, ``recurrent_kernel (H, 4H)``, ``bias (4H,)``
      (gates i, g, f, o), ``gamma (2, 4H)``, ``gamma_h (H,)``, ``beta_h (H,)``;
    * GRU (``kind="gru"``, ``reset_after=True``): ``kernel (I, 3H)``, ``recurrent_kernel
      (H, 3H)``, ``bias``, ``recurrent_bias (3H,)`` (gates z, r, n), ``gamma (2, 3H)``.

    Kernels are transposed and their gate blocks reordered to PyTorch's (i, f, g, o / r, z, n);
    ``gamma[0]``/``gamma[1]`` become ``ln_weight_ih``/``ln_weight_hh``; Haste's one LSTM bias
    is ``bias_ih`` with ``bias_hh`` zero (the cell only sees their sum); ``gamma_h``/``beta_h``
    are ``ln_weight_c``/``ln_bias_c``. Use ``Regularisation(layer_norm=True, zoneout_h=p)``
    (Haste's ``zoneout``) and ``dropconnect`` (Haste's ``dropout``). Tensors are converted
    with ``numpy.asarray``; ``dtype`` (default: the kernel's)."""
    if kind not in _HASTE_PERM:
        raise ValueError(f"kind must be 'lstm' or 'gru', got {kind!r}")
    perm = _HASTE_PERM[kind]
    G = len(perm)
    need = ["kernel", "recurrent_kernel", "bias", "gamma"] + (
        ["gamma_h", "beta_h"] if kind == "lstm" else ["recurrent_bias"])
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"from_haste: the {kind} state is missing {', '.join(missing)}")

    def arr(name):
        a = state[name]
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        return a if dtype is None else a.astype(dtype)

    kernel, rec = arr("kernel"), arr("recurrent_kernel")
    if kernel.ndim != 2 or kernel.shape[1] % G:
        raise ValueError(f"kernel must have shape (input_size, {G}*H), got {kernel.shape}")
    H = kernel.shape[1] // G
    shapes = {"recurrent_kernel": (H, G * H), "bias": (G * H,), "gamma": (2, G * H),
              "gamma_h": (H,), "beta_h": (H,), "recurrent_bias": (G * H,)}
    for name in need[1:]:
        if arr(name).shape != shapes[name]:
            raise ValueError(f"{name} must have shape {shapes[name]}, got {arr(name).shape}")

    def blocks(a):  # gate blocks along the first axis, reordered to ours
        parts = np.split(a, G, axis=0)
        return np.ascontiguousarray(np.concatenate([parts[k] for k in perm], axis=0))

    dt = kernel.dtype if dtype is None else np.dtype(dtype)
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    gamma = arr("gamma")
    out = {"weight_ih" + sfx: blocks(kernel.T), "weight_hh" + sfx: blocks(rec.T),
           "bias_ih" + sfx: blocks(arr("bias")),
           "bias_hh" + sfx: (blocks(arr("recurrent_bias")) if kind == "gru"
                             else np.zeros(G * H, dt)),
           "ln_weight_ih" + sfx: blocks(gamma[0]), "ln_weight_hh" + sfx: blocks(gamma[1])}
    if kind == "lstm":
        out["ln_weight_c" + sfx] = np.ascontiguousarray(arr("gamma_h"))
        out["ln_bias_c" + sfx] = np.ascontiguousarray(arr("beta_h"))
    return out


class RegContext:
    """What :func:`stack_backward` needs from a training :func:`stack_forward`.

    ``masks[k]``: the masks layer-direction ``k = l*D + d`` used (keys of
    :func:`fusedrnn.reference_regularised.reg_layer_forward`); ``between``: the dropout masks
    after each layer but the last ((T, B, D*R), scaled), or None."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self) -> str:
        return f"<fusedrnn RegContext {self.mode} num_layers={self.num_layers} D={self.D}>"


def _as_array(name, a, dt=None):
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray on the CPU (the regularised kernels "
                        f"run on the CPU backend), got {type(a).__name__}")
    if dt is not None and a.dtype != dt:
        raise TypeError(f"{name} must have x's dtype {dt}, got {a.dtype}")
    return a


def stack_forward(mode: str, x: np.ndarray, params: Dict[str, np.ndarray], *,
                  reg: Regularisation, num_layers: int = 1, bidirectional: bool = False,
                  h0: Optional[np.ndarray] = None, c0: Optional[np.ndarray] = None,
                  lengths: Optional[Sequence[int]] = None, batch_first: bool = False,
                  dropout: float = 0.0, seed: int = 0, reset_after: bool = True,
                  training: bool = True, stochastic: Optional[bool] = None,
                  check_inplace: bool = True
                  ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[RegContext]]:
    """A regularised stack (module docstring). Returns ``(y, h_n, c_n, ctx)`` as
    :func:`fusedrnn.functional.stack_forward`: y (T, B, D*R) (batch-first if asked), h_n
    (L*D, B, R), c_n (L*D, B, H) or None, ctx (None unless ``training``).

    ``training`` keeps what :func:`stack_backward` needs; ``stochastic`` (default: ``training``)
    draws the masks (zoneout, recurrent dropout, DropConnect, dropout between layers) rather
    than running inference's expectation: a module in eval mode that still wants gradients
    runs ``training=True, stochastic=False``. A training forward stamps the contents of what
    :func:`stack_backward` reads (x, the weights, the options' parameters and masks) and
    backward raises ``RuntimeError`` naming one that was modified in place in between
    (``check_inplace=False`` skips it: the torch adapter has autograd's version counters)."""
    stochastic = training if stochastic is None else bool(stochastic)
    if not isinstance(reg, Regularisation):
        raise TypeError(f"reg must be a fusedrnn.regularised.Regularisation, got "
                        f"{type(reg).__name__}")
    reg.check_mode(mode, reset_after)
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays keyed by name, got "
                        f"{type(params).__name__}")
    x = _as_array("x", x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must have dtype float32 or float64, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D, got shape {x.shape}")
    dt = x.dtype
    dropout = _rate("dropout", dropout)
    if not isinstance(num_layers, numbers.Integral) or num_layers < 1:
        raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
    D = 2 if bidirectional else 1
    xt = np.ascontiguousarray(x.swapaxes(0, 1)) if batch_first else x
    T, B = xt.shape[:2]
    is_lstm = mode == "lstm"
    kind = _KIND["gru_v1" if mode == "gru" and not reset_after else mode]
    expected = {}
    for layer in range(num_layers):
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            for base in ("weight_ih", "weight_hh"):
                expected[base + sfx] = True
            for name in param_names(mode, reg, layer, d):
                expected[name] = True
    missing = [n for n in expected if n not in params]
    if missing:
        raise ValueError(f"params is missing {', '.join(missing)}")
    extra = [n for n in params if n.rsplit("_l", 1)[0] in (
        "ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c", "weight_peephole")
        and n not in expected]
    if extra:
        raise ValueError(f"params has {', '.join(extra)}, which these options do not use")
    for n, a in params.items():
        _as_array(n, a, dt)
    h0 = _as_array("h0", h0, dt)
    c0 = _as_array("c0", c0, dt)
    if lengths is not None:
        lengths = np.asarray(lengths)
    if h0 is not None and (h0.ndim != 3 or h0.shape[0] != num_layers * D):
        raise ValueError(f"h0 must have shape (num_layers*D={num_layers * D}, B, R), got "
                         f"{h0.shape}")
    if c0 is not None and (not is_lstm or c0.ndim != 3 or c0.shape[0] != num_layers * D):
        raise ValueError(f"c0 must have shape (num_layers*D={num_layers * D}, B, H) (LSTM only),"
                         f" got {c0.shape}")

    if not training and not stochastic and not reg.deterministic_active:
        # inference where every option is a dropout (off here): the plain fused stack
        from fusedrnn import functional
        plain = {n: a for n, a in params.items() if n.rsplit("_l", 1)[0] in (
            "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
        y, h_n, c_n, _ = functional.stack_forward(
            mode, x, plain, num_layers=num_layers, bidirectional=bidirectional, h0=h0, c0=c0,
            lengths=lengths, batch_first=batch_first, reset_after=reset_after, training=False)
        return y, h_n, c_n, None

    layer_in = xt
    h_n, c_n, layers, masks, between = [], [], [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            k = layer * D + d
            w_hh = params["weight_hh" + sfx]
            w_hr = params.get("weight_hr" + sfx)
            R = w_hh.shape[1]
            H = params["weight_ih" + sfx].shape[0] // _GATES[mode]
            opts, m = _layer_options(reg, mode, stochastic, seed, k, T, B, H, R, dt)
            for name in param_names(mode, reg, layer, d):
                opts[name[:-len(sfx)]] = params[name]
            args = (kind, layer_in, params["weight_ih" + sfx], w_hh, params.get("bias_ih" + sfx),
                    params.get("bias_hh" + sfx), w_hr, None if h0 is None else h0[k],
                    None if c0 is None else c0[k], lengths, bool(d))
            y, h, c, reserve, stamps = _C.reg_layer_forward(*args, training, opts,
                                                            check_inplace)
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
            layers.append(dict(args=args[:7], opts=opts, reserve=reserve, stamps=stamps))
            masks.append(m)
        out = outs[0] if D == 1 else np.concatenate(outs, axis=2)
        if layer < num_layers - 1 and stochastic and dropout > 0:
            keep = _bits(out.shape, dropout, seed, _BETWEEN, layer, True)
            mask = keep.astype(dt) * (dt.type(1 / (1 - dropout)) if dropout < 1 else dt.type(0))
            out = out * mask
            between.append(mask)
        else:
            between.append(None)
        layer_in = out
    y = np.ascontiguousarray(layer_in.swapaxes(0, 1)) if batch_first else layer_in
    ctx = None
    if training:
        ctx = RegContext(mode=mode, num_layers=num_layers, D=D, batch_first=batch_first,
                         lengths=lengths, layers=layers, masks=masks, between=between[:-1],
                         shape=(T, B), dtype=dt)
    return y, np.stack(h_n), (np.stack(c_n) if is_lstm else None), ctx


def stack_backward(ctx: RegContext, dy: Optional[np.ndarray] = None,
                   dh_n: Optional[np.ndarray] = None, dc_n: Optional[np.ndarray] = None
                   ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Dict[str, np.ndarray]]:
    """BPTT through a training :func:`stack_forward`. Returns ``(dx, dh0, dc0, grads)``, grads
    keyed by parameter name (the options' included)."""
    if not isinstance(ctx, RegContext):
        raise TypeError(f"ctx must be the context of a training stack_forward, got "
                        f"{type(ctx).__name__}")
    L, D = ctx.num_layers, ctx.D
    is_lstm = ctx.mode == "lstm"
    dt = ctx.dtype
    if dy is not None:
        dy = _as_array("dy", dy, dt)
        if ctx.batch_first:
            dy = dy.swapaxes(0, 1)
    grads: Dict[str, np.ndarray] = {}
    dh0: List[Optional[np.ndarray]] = [None] * (L * D)
    dc0: List[Optional[np.ndarray]] = [None] * (L * D)
    dout = dy
    for layer in reversed(range(L)):
        dx_layer = None
        for d in range(D):
            k = layer * D + d
            lc = ctx.layers[k]
            R = lc["args"][3].shape[1]
            dyk = None if dout is None else np.ascontiguousarray(dout[:, :, d * R:(d + 1) * R])
            g = _C.reg_layer_backward(
                *lc["args"], ctx.lengths, bool(d), lc["opts"], lc["reserve"], lc["stamps"], dyk,
                None if dh_n is None else np.ascontiguousarray(dh_n[k]),
                None if (dc_n is None or not is_lstm) else np.ascontiguousarray(dc_n[k]))
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            for key, v in g.items():
                if key not in ("x", "h0", "c0"):
                    grads[key + sfx] = v
            dh0[k] = g["h0"]
            dc0[k] = g.get("c0")
            dx_layer = g["x"] if dx_layer is None else dx_layer + g["x"]
        if layer > 0 and ctx.between[layer - 1] is not None:
            dx_layer = dx_layer * ctx.between[layer - 1]
        dout = dx_layer
    dx = np.ascontiguousarray(dout.swapaxes(0, 1)) if ctx.batch_first else dout
    return dx, np.stack(dh0), (np.stack(dc0) if is_lstm else None), grads


# --------------------------------------------------------------------------------------------
# NumPy modules (fusedrnn.LSTM's API: forward/backward, grads, state_dict ...)

from fusedrnn.modules import _RNNBase  # noqa: E402  (modules does not import this module)
from fusedrnn.spec import rnn_mode as _rnn_mode  # noqa: E402


class _RegularisedModule(_RNNBase):
    """fusedrnn.RNN/LSTM/GRU (NumPy, CPU) with the options of :class:`Regularisation` and
    their parameters; training mode draws the masks from the module's generator (one seed
    per forward), eval mode runs zoneout's expectation. ``to_torch()`` gives the matching
    ``fusedrnn.torch.Regularised*`` module; ONNX export raises where an option changes
    inference."""

    _torch_name = ""

    def __init__(self, mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, proj_size, dtype, reg, forget_bias=None, reset_after=True,
                 seed=None, rng=None):
        reg.check_mode(mode.lower(), reset_after)
        self.reg = reg
        self.forget_bias = forget_bias
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, dtype, reset_after=reset_after, seed=seed,
                         rng=rng)
        spec = self.spec
        for name, value in init_params(spec.mode, reg, spec.hidden_size, spec.num_layers,
                                       spec.bidirectional, self.dtype).items():
            self._register_parameter(name, value)
        if forget_bias is not None:
            if spec.mode != "lstm":
                raise ValueError("forget_bias is for the LSTM only")
            H = spec.hidden_size
            for name, value in self._parameters.items():
                if name.startswith("bias_ih"):
                    value[H:2 * H] = forget_bias
                elif name.startswith("bias_hh"):
                    value[H:2 * H] = 0

    def __repr__(self):
        opts = ", ".join(f"{f.name}={getattr(self.reg, f.name)!r}" for f in fields(self.reg)
                         if getattr(self.reg, f.name) != f.default)
        return f"{type(self).__name__}({self.spec.extra_repr(nonlinearity=True)}" + \
            (f", {opts})" if opts else ")")

    def _draws_masks(self):
        r = self.reg
        return bool(self.training and (self.spec.dropout or r.zoneout_h or r.zoneout_c
                                       or r.recurrent_dropout or r.dropconnect))

    def _run_forward(self, x, h0, c0, lengths, seed, keep):
        spec = self.spec
        return stack_forward(
            spec.mode, x, self._parameters, reg=self.reg, num_layers=spec.num_layers,
            bidirectional=spec.bidirectional, h0=h0, c0=c0, lengths=lengths,
            batch_first=spec.batch_first, dropout=spec.dropout if self.training else 0.0,
            seed=seed, reset_after=spec.reset_after, training=keep, stochastic=self.training)

    def _run_backward(self, ctx, dy, dh_n, dc_n):
        dx, dh0, dc0, grads = stack_backward(ctx, dy, dh_n, dc_n)
        for name, g in grads.items():
            self.grads[name] += g
        return dx, dh0, dc0

    def to_torch(self):
        """The matching ``fusedrnn.torch.Regularised*`` module with these weights."""
        import torch

        import fusedrnn.torch as ft
        spec, r = self.spec, self.reg
        kw = dict(num_layers=spec.num_layers, bias=spec.bias, batch_first=spec.batch_first,
                  dropout=spec.dropout, bidirectional=spec.bidirectional,
                  dtype=getattr(torch, self.dtype.name), layer_norm=r.layer_norm,
                  zoneout_h=r.zoneout_h, recurrent_dropout=r.recurrent_dropout,
                  dropconnect=r.dropconnect, ln_eps=r.ln_eps)
        if spec.mode == "lstm":
            kw.update(proj_size=spec.proj_size, zoneout_c=r.zoneout_c, gate_clip=r.gate_clip,
                      cell_clip=r.cell_clip, peepholes=r.peepholes)
        elif spec.mode == "gru":
            kw["reset_after"] = spec.reset_after
        else:
            kw["nonlinearity"] = spec.nonlinearity
        m = getattr(ft, self._torch_name)(spec.input_size, spec.hidden_size, **kw)
        m.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self._parameters.items()})
        return m.train(self.training)


class RegularisedLSTM(_RegularisedModule):
    """:class:`fusedrnn.LSTM` with the regularisation options (keyword only; see
    :class:`Regularisation`) and ``forget_bias`` (the forget gate's initial bias)."""

    _torch_name = "RegularisedLSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, dtype=None, *,
                 layer_norm: bool = False, zoneout_h: float = 0.0, zoneout_c: float = 0.0,
                 recurrent_dropout: float = 0.0, dropconnect: float = 0.0,
                 gate_clip: Optional[float] = None, cell_clip=None, peepholes: bool = False,
                 ln_eps: float = LN_EPS, forget_bias: Optional[float] = None, seed=None,
                 rng=None):
        reg = Regularisation(layer_norm, zoneout_h, zoneout_c, recurrent_dropout, dropconnect,
                             gate_clip, cell_clip, peepholes, ln_eps)
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, dtype, reg, forget_bias, seed=seed,
                         rng=rng)


class RegularisedGRU(_RegularisedModule):
    """:class:`fusedrnn.GRU` with layer norm, zoneout_h, recurrent dropout and DropConnect."""

    _torch_name = "RegularisedGRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype=None, *, reset_after: bool = True,
                 layer_norm: bool = False, zoneout_h: float = 0.0,
                 recurrent_dropout: float = 0.0, dropconnect: float = 0.0,
                 ln_eps: float = LN_EPS, seed=None, rng=None):
        reg = Regularisation(layer_norm, zoneout_h, 0.0, recurrent_dropout, dropconnect,
                             ln_eps=ln_eps)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, dtype, reg, reset_after=reset_after,
                         seed=seed, rng=rng)


class RegularisedRNN(_RegularisedModule):
    """:class:`fusedrnn.RNN` with layer norm, zoneout_h, recurrent dropout and DropConnect."""

    _torch_name = "RegularisedRNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, dtype=None, *,
                 layer_norm: bool = False, zoneout_h: float = 0.0,
                 recurrent_dropout: float = 0.0, dropconnect: float = 0.0,
                 ln_eps: float = LN_EPS, seed=None, rng=None):
        reg = Regularisation(layer_norm, zoneout_h, 0.0, recurrent_dropout, dropconnect,
                             ln_eps=ln_eps)
        super().__init__(_rnn_mode(nonlinearity), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, dtype, reg, seed=seed, rng=rng)

    @property
    def nonlinearity(self) -> str:
        return self.spec.nonlinearity
