"""Regularised recurrent cells in pure NumPy: the specification of the regularised kernels.

The native kernels (csrc/cpu/regularised_driver.h, exposed by :mod:`fusedrnn.regularised` and
``fusedrnn.torch.RegularisedLSTM/GRU/RNN``) are tested against it. Everything is re-exported by
:mod:`fusedrnn.reference` and follows its conventions (docs/design.md §2): ``x (T, B, I)``,
``W_ih (G*H, I)``, ``W_hh (G*H, R)``, biases ``(G*H,)``, PyTorch's gate order (LSTM i, f, g, o;
GRU r, z, n), ``lengths`` (outputs past a sequence's length are 0, ``h_n``/``c_n`` are the states
after its last valid step, padding takes no part in any gradient), ``reverse`` (each sequence
read backwards from its own last valid step), float64 by default. One layer, one direction::

    y, h_n, c_n, ctx = reg_layer_forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, *, <options>)
    grads = reg_layer_backward(ctx, dy, dh_n, dc_n)

``grads`` has the keys of :func:`fusedrnn.reference.layer_backward` plus those of the options'
parameters (``ln_weight_ih``, ``ln_weight_hh``, ``ln_weight_c``, ``ln_bias_c``,
``weight_peephole``). Whole stacks: :func:`fusedrnn.reference.stack_forward` with
``layer_options`` (and the options' parameters in ``params`` under the names of
:func:`reg_param_names`).

The options (any combination, unless stated; every mask is an explicit argument)
-------------------------------------------------------------------------------

**Layer normalisation** (Ba et al. 2016, in the form Haste implements: ``lmnt-com/haste``
``frameworks/pytorch/layer_norm_lstm.py``, ``layer_norm_gru.py``,
``lib/layer_norm_forward_gpu.cu.cc``, ``lib/layer_norm_lstm_forward_gpu.cu.cc``,
``lib/layer_norm_gru_forward_gpu.cu.cc``).
``LN(v; γ, β) = (v − mean(v)) / sqrt(var(v) + eps) ⊙ γ + β`` over the last axis, biased
variance, ``eps = 1e-5`` inside the square root (Haste: ``rsqrt(sumsq / H + 1e-5)``)::

    xp = LN(W_ih x; ln_weight_ih) + b_ih          # over the G*H gate vector
    hp = LN(W_hh h; ln_weight_hh) + b_hh          # likewise
    LSTM: c' = f⊙c + i⊙g (unnormalised, carried);  h' = o ⊙ tanh(LN(c'; ln_weight_c, ln_bias_c))
    GRU (reset_after=True only): r, z, n from xp and hp as the plain cell (n uses r ⊙ hp_n)
    RNN: h' = act(xp + hp)

so ``b_ih``/``b_hh`` are the normalisations' β (added after them; ``None`` = no β).
Parameters: ``ln_weight_ih (G*H,)``, ``ln_weight_hh (G*H,)`` and, for the LSTM (required
there), ``ln_weight_c (H,)``, ``ln_bias_c (H,)``. All of a cell's LN parameters or none.

*Haste's weights map over* (Haste keeps ``x @ kernel`` layouts and its own gate orders)::

    LayerNormLSTM  kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,): gates i, g, f, o;
                   gamma (2, 4H): gamma[0] input, gamma[1] recurrent; gamma_h, beta_h (H,)
      weight_ih    = blocks(kernel.T)[i, f, g, o]      i.e. Haste blocks [0, 2, 1, 3]
      weight_hh    = blocks(recurrent_kernel.T)[0, 2, 1, 3]
      ln_weight_ih = blocks(gamma[0])[0, 2, 1, 3];  ln_weight_hh = blocks(gamma[1])[0, 2, 1, 3]
      bias_ih      = blocks(bias)[0, 2, 1, 3];  bias_hh = 0   (Haste has one bias, added after
                     both normalisations: only bias_ih + bias_hh is seen)
      ln_weight_c  = gamma_h;  ln_bias_c = beta_h
    LayerNormGRU   kernel (I, 3H), recurrent_kernel (H, 3H), bias, recurrent_bias (3H,):
                   gates z, r, n (Haste calls n "h"); gamma (2, 3H)
      weight_ih = blocks(kernel.T)[1, 0, 2] (r, z, n), likewise weight_hh, ln_weight_ih
      (gamma[0]), ln_weight_hh (gamma[1]), bias_ih (bias), bias_hh (recurrent_bias); Haste's
      recurrent_bias sits inside r ⊙ (·) like b_hn here (PyTorch's reset_after form)

(the normalisations' mean and variance are over the whole gate vector, so permuting the gate
blocks with γ commutes with them). Haste's zoneout mask is 1 where the *new* value is kept:
``zoneout_h_mask = 1 − haste_mask``; its DropConnect ``F.dropout(recurrent_kernel)`` mask ``M``
(H, G*H) maps like the weights: ``dropconnect_mask = blocks(M.T)[perm]``. Haste has no
reverse direction and does not zero outputs past ``lengths`` (its final state is the one at
each length, as ``h_n`` here).

**Zoneout** (Krueger et al. 2017), separate rates for h and (LSTM) c. The cell computes its new
state (h~, c~) from the previous one, then each unit keeps its previous value where the
zoneout mask is 1::

    training:  h_t = m_h ⊙ h_{t-1} + (1 − m_h) ⊙ h~_t,   c_t = m_c ⊙ c_{t-1} + (1 − m_c) ⊙ c~_t
    inference: the same with m = p (the expectation):  h_t = p_h h_{t-1} + (1 − p_h) h~_t

``zoneout_h_mask (T, B, R)`` / ``zoneout_c_mask (T, B, H)`` (binary, indexed by time index, so
the reverse direction reads the mask at the time it processes) give training; the rates
``zoneout_h`` / ``zoneout_c`` (floats in [0, 1]) give inference; one or the other. As in
Haste's kernels (``lib/*_forward_gpu.cu.cc``: ``h_out = (h_new − h) * mask + h``, written to
``h[t+1]`` which is both the layer's output and the next step's state), the zoned-out h_t is
both the output y_t and the state fed forward. (Haste's TensorFlow ``ZoneoutWrapper`` instead
outputs the cell's h~ and carries the zoned-out state; not modelled.) Haste zones out h only;
c follows the paper: h~_t is computed from the cell's own c~_t (o ⊙ tanh(c~_t)), not from the
zoned-out c_t. Zoneout applies to every mode (c only to the LSTM); with a projection h is
(P,).

**Recurrent (variational) dropout** (Gal & Ghahramani 2016; Keras ``recurrent_dropout``): one
mask per sequence, ``recurrent_dropout_mask (B, R)``, already scaled (0 or 1/(1−p)), multiplies
h_{t-1} wherever it enters ``W_hh`` at every step (GRU ``reset_after=False``: in ``r ⊙ h``
too); the GRU's direct path ``z ⊙ h_{t-1}`` and zoneout use the unmasked state. (Keras 2's
``implementation=1`` draws one mask per gate; that is not modelled.)

**DropConnect** on ``W_hh`` (Wan et al. 2013; Haste's ``dropout``): ``dropconnect_mask
(G*H, R)``, already scaled, one per call: the layer uses ``W_hh ⊙ mask`` at every step;
``grads["weight_hh"]`` is the gradient of ``W_hh`` (the mask applied to it).

**Clipping** (LSTM only), two different things:

* ``gate_clip = c > 0``: ONNX ``LSTM`` attribute ``clip`` ("Cell clip threshold. Clipping bounds
  the elements of a tensor in the range of [-threshold, +threshold] and is applied to the input
  of activations"; onnxruntime's ``uni_directional_lstm.cc`` clips each gate's pre-activation,
  peephole term and biases included, before its activation, and neither c_t nor the input of
  h(C_t)). Each of i, f, g, o is ``act(clip(a, −c, c))``.
* ``cell_clip = c`` (meaning ``(−c, c)``) or ``(lo, hi)``: cuDNN ``cudnnRNNSetClip``
  (``CUDNN_RNN_CLIP_MINMAX``, "LSTM cell clipping", lclip/rclip) and TensorFlow's
  ``LSTMBlockCell``/``BlockLSTM`` ``cell_clip``: the new cell state is clipped,
  ``c~ = clip(f⊙c + i⊙g, lo, hi)``, and that clipped value is carried, returned as ``c_n``, fed
  to tanh (and LN) for h and to the output peephole (TF's documented order). cuDNN does not
  document where exactly it clips; one public measurement (a cuDNN test harness) reports it
  clipping where the state is read (so c0 is clipped on its first read and ``cy`` is returned
  unclipped): that gives the same y and h_n for c0 within [lo, hi], and c_n here = clip(cy).

The gradient through a clip is zero where the value was clipped (strictly outside the bounds),
one elsewhere.

**Peepholes** (Gers & Schmidhuber 2000; ONNX input ``P``, oneDNN ``weights_peephole``):
``weight_peephole (3H,)`` in ONNX's order ``P[iof]`` = [p_i, p_o, p_f]::

    a_i += p_i ⊙ c_{t-1},  a_f += p_f ⊙ c_{t-1},  a_o += p_o ⊙ c_t  (c_t the new, clipped state)

Order mapping: ONNX ``P[iof]`` is taken as is (one direction's row); oneDNN's
``weights_peephole`` (L, D, 3, H) is [i, f, o]: ``weight_peephole = P_dnnl[[0, 2, 1]]``;
TensorFlow's ``wci, wcf, wco``: ``concat(wci, wco, wcf)``. Peephole terms are added after the
layer normalisations and biases, before ``gate_clip``.

Unsupported combinations raise: layer normalisation of the GRU with ``reset_after=False``
(``NotImplementedError``: its recurrent pre-activation is not one gate vector, ``W_hn`` acts on
``r ⊙ h``); ``gate_clip``, ``cell_clip``, peepholes or ``zoneout_c`` on a non-LSTM mode
(``NotImplementedError`` / ``ValueError``, naming the option).

The LSTM step order in full::

    xp, hp as above (hp from W_hh ⊙ dropconnect and h_{t-1} ⊙ recurrent_dropout)
    a = xp + hp;  a_i += p_i c_{t-1};  a_f += p_f c_{t-1}
    i, f, g = σ(clip_g(a_i)), σ(clip_g(a_f)), tanh(clip_g(a_g))
    c~ = clip_c(f c_{t-1} + i g);  o = σ(clip_g(a_o + p_o c~))
    h~ = W_hr (o tanh(LN_c(c~)))        (W_hr with proj_size, LN_c with layer norm)
    h_t, c_t = zoneout(h_{t-1}, h~), zoneout(c_{t-1}, c~)
"""

from __future__ import annotations

import numbers

import numpy as np

from fusedrnn.reference import (
    GATES, MODES, _time_index, gru_cell_backward, gru_cell_forward, gru_v1_cell_backward_n,
    gru_v1_cell_forward, gru_v1_cell_gates, rnn_cell_backward, rnn_cell_forward, sigmoid)

__all__ = [
    "LN_EPS", "REG_PARAM_KEYS", "layer_norm_forward", "layer_norm_backward",
    "reg_lstm_cell_forward", "reg_lstm_cell_backward", "reg_layer_forward",
    "reg_layer_backward", "reg_param_names", "unit_forget_bias",
]

#: Haste's layer-norm epsilon (added to the biased variance inside the square root).
LN_EPS = 1e-5

#: The options' parameters, by their single-layer names (stack names add ``_l{k}[_reverse]``).
REG_PARAM_KEYS = ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c", "weight_peephole")


# --------------------------------------------------------------------------------------------
# Layer normalisation over the last axis.
# --------------------------------------------------------------------------------------------

def layer_norm_forward(v, gamma, beta=None, eps=LN_EPS):
    """``(v − mean) / sqrt(var + eps) ⊙ gamma (+ beta)`` over the last axis (biased variance).

    Returns (y, saved) with saved = (v_hat, 1/sqrt(var + eps))."""
    mu = v.mean(axis=-1, keepdims=True)
    d = v - mu
    rstd = 1.0 / np.sqrt((d * d).mean(axis=-1, keepdims=True) + eps)
    v_hat = d * rstd
    y = v_hat * gamma
    if beta is not None:
        y = y + beta
    return y, (v_hat, rstd)


def layer_norm_backward(saved, dy, gamma):
    """Returns (dv, dgamma, dbeta) for :func:`layer_norm_forward` (dgamma/dbeta summed over
    every leading axis)."""
    v_hat, rstd = saved
    dv_hat = dy * gamma
    dv = rstd * (dv_hat - dv_hat.mean(axis=-1, keepdims=True)
                 - v_hat * (dv_hat * v_hat).mean(axis=-1, keepdims=True))
    lead = tuple(range(dy.ndim - 1))
    return dv, (dy * v_hat).sum(axis=lead), dy.sum(axis=lead)


def _clip(v, bounds):
    """(clip(v, lo, hi), mask of the entries passed through) or (v, None) without bounds."""
    if bounds is None:
        return v, None
    lo, hi = bounds
    return np.clip(v, lo, hi), (v >= lo) & (v <= hi)


def _through(mask, d):
    """The gradient through a clip: d where the value passed, 0 where it was clipped."""
    return d if mask is None else np.where(mask, d, 0).astype(d.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# The LSTM step with peepholes, both clips and the cell-state normalisation. (RNN and GRU steps
# are fusedrnn.reference's: their regularisations all act outside the cell.)
# --------------------------------------------------------------------------------------------

def reg_lstm_cell_forward(xp, hp, c_prev, *, peephole=None, gate_clip=None, cell_clip=None,
                          ln_c=None, ln_eps=LN_EPS):
    """One LSTM step (module docstring, "The LSTM step order"). ``gate_clip``/``cell_clip``:
    (lo, hi) or None; ``ln_c``: (gamma, beta) or None. With every option None this is
    :func:`fusedrnn.reference.lstm_cell_forward`'s arithmetic.

    Returns (out, c', saved); out = o ⊙ tanh(LN_c(c')), before any projection."""
    H = c_prev.shape[-1]
    a = xp + hp
    a_i, a_f, a_g, a_o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    if peephole is not None:
        p_i, p_o, p_f = peephole[:H], peephole[H:2 * H], peephole[2 * H:]
        a_i = a_i + p_i * c_prev
        a_f = a_f + p_f * c_prev
    pre = [a_i, a_f, a_g]   # the gates' inputs before gate_clip (a_o appended below)
    a_i, k_i = _clip(a_i, gate_clip)
    a_f, k_f = _clip(a_f, gate_clip)
    a_g, k_g = _clip(a_g, gate_clip)
    i = sigmoid(a_i)
    f = sigmoid(a_f)
    g = np.tanh(a_g)
    c_raw = f * c_prev + i * g
    c, k_c = _clip(c_raw, cell_clip)
    if peephole is not None:
        a_o = a_o + p_o * c
    pre.append(a_o)
    a_o, k_o = _clip(a_o, gate_clip)
    o = sigmoid(a_o)
    if ln_c is not None:
        nc, ln_saved = layer_norm_forward(c, ln_c[0], ln_c[1], ln_eps)
    else:
        nc, ln_saved = c, None
    tc = np.tanh(nc)
    saved = dict(i=i, f=f, g=g, o=o, c_prev=c_prev, c=c, tc=tc, c_raw=c_raw, pre=pre,
                 keep=(k_i, k_f, k_g, k_o), keep_c=k_c, peephole=peephole, ln_c=ln_c,
                 ln_saved=ln_saved)
    return o * tc, c, saved


def reg_lstm_cell_backward(saved, dout, dc):
    """Given d(out) and d(c') (from the carried state), returns (d pre-activation (N, 4H),
    d c_prev, parameter grads: {"weight_peephole", "ln_weight_c", "ln_bias_c"} as they apply,
    summed over the rows)."""
    s = saved
    i, f, g, o, c_prev, c, tc = s["i"], s["f"], s["g"], s["o"], s["c_prev"], s["c"], s["tc"]
    k_i, k_f, k_g, k_o = s["keep"]
    H = c.shape[-1]
    extra = {}
    dnc = dout * o * (1 - tc * tc)
    if s["ln_c"] is not None:
        dln, extra["ln_weight_c"], extra["ln_bias_c"] = layer_norm_backward(
            s["ln_saved"], dnc, s["ln_c"][0])
        dc = dc + dln
    else:
        dc = dc + dnc
    da_o = _through(k_o, dout * tc * o * (1 - o))
    if s["peephole"] is not None:
        dc = dc + da_o * s["peephole"][H:2 * H]
    dc = _through(s["keep_c"], dc)   # now d(f c_prev + i g)
    da_i = _through(k_i, dc * g * i * (1 - i))
    da_f = _through(k_f, dc * c_prev * f * (1 - f))
    da_g = _through(k_g, dc * i * (1 - g * g))
    dc_prev = dc * f
    if s["peephole"] is not None:
        p = s["peephole"]
        dc_prev = dc_prev + da_i * p[:H] + da_f * p[2 * H:]
        extra["weight_peephole"] = np.concatenate(
            [(da_i * c_prev).sum(0), (da_o * c).sum(0), (da_f * c_prev).sum(0)])
    return np.concatenate([da_i, da_f, da_g, da_o], axis=1), dc_prev, extra


# --------------------------------------------------------------------------------------------
# Argument checks.
# --------------------------------------------------------------------------------------------

def _check_shape(name, a, shape):
    if a is not None and tuple(np.shape(a)) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(np.shape(a))}")


def _check_mask(name, m, shape):
    _check_shape(name, m, shape)
    m = np.asarray(m)
    if not np.all((m == 0) | (m == 1)):
        raise ValueError(f"{name} must be binary (0 or 1 in every entry)")


def _check_rate(name, p):
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a rate in [0, 1], got {p!r}")


def _bounds(name, v, symmetric_only):
    if v is None:
        return None
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        if not float(v) > 0:
            raise ValueError(f"{name} must be > 0, got {v!r}")
        return (-float(v), float(v))
    if symmetric_only:
        raise ValueError(f"{name} must be a positive number, got {v!r}")
    try:
        lo, hi = (float(b) for b in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number or a pair (lo, hi), got {v!r}") \
            from None
    if not lo <= hi:
        raise ValueError(f"{name}: lo must be <= hi, got ({lo}, {hi})")
    return (lo, hi)


def _options(mode, reset_after, T, B, G, H, R, o):
    """Checks the regularisation options; returns the normalised ones."""
    is_lstm = mode == "lstm"
    lstm_only = [k for k in ("gate_clip", "cell_clip", "weight_peephole")
                 if o[k] is not None and not is_lstm]
    if lstm_only:
        raise NotImplementedError(
            f"{', '.join(lstm_only)}: defined for the LSTM only, not mode {mode!r}")
    for k in ("zoneout_c", "zoneout_c_mask"):
        if o[k] is not None and not is_lstm:
            raise ValueError(f"{k}: only the LSTM has a cell state to zone out, not mode "
                             f"{mode!r} (use zoneout_h / zoneout_h_mask)")
    ln_keys = ("ln_weight_ih", "ln_weight_hh") + (("ln_weight_c", "ln_bias_c") if is_lstm else ())
    given = [k for k in ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c")
             if o[k] is not None]
    layer_norm = bool(given)
    if layer_norm:
        if not is_lstm and ("ln_weight_c" in given or "ln_bias_c" in given):
            raise ValueError(f"ln_weight_c/ln_bias_c: only the LSTM normalises a cell state, "
                             f"not mode {mode!r}")
        missing = [k for k in ln_keys if o[k] is None]
        if missing:
            raise ValueError(f"layer normalisation takes all of {', '.join(ln_keys)}; "
                             f"missing {', '.join(missing)}")
        if mode == "gru" and not reset_after:
            raise NotImplementedError(
                "layer normalisation of the GRU with reset_after=False: its recurrent "
                "pre-activation is not one gate vector (W_hn acts on r*h); use reset_after=True")
        _check_shape("ln_weight_ih", o["ln_weight_ih"], (G * H,))
        _check_shape("ln_weight_hh", o["ln_weight_hh"], (G * H,))
        _check_shape("ln_weight_c", o["ln_weight_c"], (H,))
        _check_shape("ln_bias_c", o["ln_bias_c"], (H,))
    for state, width in (("h", R), ("c", H)):
        rate, mask = o["zoneout_" + state], o[f"zoneout_{state}_mask"]
        if rate is not None and mask is not None:
            raise ValueError(f"zoneout_{state} (inference: the expectation) and "
                             f"zoneout_{state}_mask (training) are exclusive; give one")
        if rate is not None:
            _check_rate("zoneout_" + state, rate)
        if mask is not None:
            _check_mask(f"zoneout_{state}_mask", mask, (T, B, width))
    _check_shape("recurrent_dropout_mask", o["recurrent_dropout_mask"], (B, R))
    _check_shape("dropconnect_mask", o["dropconnect_mask"], (G * H, R))
    _check_shape("weight_peephole", o["weight_peephole"], (3 * H,))
    o = dict(o, layer_norm=layer_norm, gate_clip=_bounds("gate_clip", o["gate_clip"], True),
             cell_clip=_bounds("cell_clip", o["cell_clip"], False))
    return o


# --------------------------------------------------------------------------------------------
# One layer, one direction.
# --------------------------------------------------------------------------------------------

def _zoneout(rate, mask, ti, act, dt):
    """The zoneout factor m of the active rows at this step (array), the rate, or None."""
    if mask is not None:
        return np.asarray(mask, dt)[ti, act]
    return rate


def reg_layer_forward(mode, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *,
                      w_hr=None, lengths=None, reverse=False, reset_after=True,
                      ln_weight_ih=None, ln_weight_hh=None, ln_weight_c=None, ln_bias_c=None,
                      ln_eps=LN_EPS, zoneout_h=None, zoneout_c=None, zoneout_h_mask=None,
                      zoneout_c_mask=None, recurrent_dropout_mask=None, dropconnect_mask=None,
                      gate_clip=None, cell_clip=None, weight_peephole=None):
    """Runs one regularised layer in one direction (options: module docstring).

    With no option given it computes exactly what :func:`fusedrnn.reference.layer_forward`
    does. Returns (y, h_n, c_n or None, ctx)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    x = np.asarray(x)
    dt = x.dtype
    T, B, _ = x.shape
    G = GATES[mode]
    H = w_ih.shape[0] // G
    R = w_hh.shape[1]
    is_lstm = mode == "lstm"
    relu = mode == "rnn_relu"
    v1 = mode == "gru" and not reset_after
    opt = _options(mode, reset_after, T, B, G, H, R, dict(
        ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh, ln_weight_c=ln_weight_c,
        ln_bias_c=ln_bias_c, zoneout_h=zoneout_h, zoneout_c=zoneout_c,
        zoneout_h_mask=zoneout_h_mask, zoneout_c_mask=zoneout_c_mask,
        recurrent_dropout_mask=recurrent_dropout_mask, dropconnect_mask=dropconnect_mask,
        gate_clip=gate_clip, cell_clip=cell_clip, weight_peephole=weight_peephole))
    ln = opt["layer_norm"]
    lengths = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
    h = np.zeros((B, R), dt) if h0 is None else np.array(h0, dt)
    c = None
    if is_lstm:
        c = np.zeros((B, H), dt) if c0 is None else np.array(c0, dt)
    rd = None if recurrent_dropout_mask is None else np.asarray(recurrent_dropout_mask, dt)
    w_rec = w_hh if dropconnect_mask is None else w_hh * np.asarray(dropconnect_mask, dt)
    ln_c = (ln_weight_c, ln_bias_c) if (ln and is_lstm) else None

    # Input projection hoisted over all T*B rows (padding rows too: they are never read).
    xp = (x.reshape(T * B, -1) @ w_ih.T).reshape(T, B, G * H)
    ln_ih_saved = None
    if ln:
        xp, ln_ih_saved = layer_norm_forward(xp, ln_weight_ih, None, ln_eps)
    if b_ih is not None:
        xp = xp + b_ih
    y = np.zeros((T, B, R), dt)
    steps = []
    for s in range(T):
        act = np.nonzero(s < lengths)[0]
        if act.size == 0:
            break
        ti = _time_index(s, act, lengths, reverse)
        xs = xp[ti, act]
        hprev = h[act]
        hd = hprev if rd is None else hprev * rd[act]   # what W_hh sees
        cprev = c[act] if is_lstm else None
        ln_hh_saved = None
        out = None
        if v1:
            hp_rz = hd @ w_rec[:2 * H].T
            if b_hh is not None:
                hp_rz = hp_rz + b_hh[:2 * H]
            r, z, rh = gru_v1_cell_gates(xs, hp_rz, hd)
            hp_n = rh @ w_rec[2 * H:].T
            if b_hh is not None:
                hp_n = hp_n + b_hh[2 * H:]
            hnew, saved = gru_v1_cell_forward(xs, hp_n, r, z, hprev)  # direct path: hprev
            saved = (saved, rh)
        else:
            hp = hd @ w_rec.T
            if ln:
                hp, ln_hh_saved = layer_norm_forward(hp, ln_weight_hh, None, ln_eps)
            if b_hh is not None:
                hp = hp + b_hh
            if is_lstm:
                out, cnew, saved = reg_lstm_cell_forward(
                    xs, hp, cprev, peephole=weight_peephole, gate_clip=opt["gate_clip"],
                    cell_clip=opt["cell_clip"], ln_c=ln_c, ln_eps=ln_eps)
                hnew = out @ w_hr.T if w_hr is not None else out
            elif mode == "gru":
                hnew, saved = gru_cell_forward(xs, hp, hprev)
            else:
                hnew, saved = rnn_cell_forward(xs, hp, relu)
        m_h = _zoneout(zoneout_h, zoneout_h_mask, ti, act, dt)
        if m_h is not None:
            hnew = m_h * hprev + (1 - m_h) * hnew
        m_c = None
        if is_lstm:
            m_c = _zoneout(zoneout_c, zoneout_c_mask, ti, act, dt)
            c[act] = cnew if m_c is None else m_c * cprev + (1 - m_c) * cnew
        h[act] = hnew
        y[ti, act] = hnew
        steps.append(dict(act=act, ti=ti, hd=hd, saved=saved, out=out, ln_hh=ln_hh_saved,
                          m_h=m_h, m_c=m_c))
    ctx = dict(regularised=True, mode=mode, x=x, w_ih=w_ih, w_hh=w_hh, w_rec=w_rec, w_hr=w_hr,
               has_bias=b_ih is not None, reset_after=reset_after, steps=steps, T=T, B=B, H=H,
               R=R, lengths=lengths, layer_norm=ln, ln_weight_ih=ln_weight_ih,
               ln_weight_hh=ln_weight_hh, ln_ih_saved=ln_ih_saved, ln_c=ln_c,
               peephole=weight_peephole is not None, recurrent_dropout_mask=rd,
               dropconnect_mask=dropconnect_mask)
    return y, h, c, ctx


def reg_layer_backward(ctx, dy=None, dh_n=None, dc_n=None):
    """BPTT for :func:`reg_layer_forward`. Returns the grads dict (module docstring)."""
    mode, x, w_ih, w_rec, w_hr = ctx["mode"], ctx["x"], ctx["w_ih"], ctx["w_rec"], ctx["w_hr"]
    T, B, H, R = ctx["T"], ctx["B"], ctx["H"], ctx["R"]
    G = GATES[mode]
    dt = x.dtype
    is_lstm = mode == "lstm"
    relu = mode == "rnn_relu"
    v1 = mode == "gru" and not ctx["reset_after"]
    ln = ctx["layer_norm"]
    rd = ctx["recurrent_dropout_mask"]
    dh = np.zeros((B, R), dt) if dh_n is None else np.array(dh_n, dt)
    dc = np.zeros((B, H), dt) if not is_lstm or dc_n is None else np.array(dc_n, dt)
    dy = np.zeros((T, B, R), dt) if dy is None else np.asarray(dy, dt)
    dxp = np.zeros((T, B, G * H), dt)
    dw_rec = np.zeros_like(w_rec)
    db_hh = np.zeros(G * H, dt)
    dw_hr = np.zeros_like(w_hr) if w_hr is not None else None
    extra = {}

    def accumulate(grads):
        for k, v in grads.items():
            extra[k] = v if k not in extra else extra[k] + v

    for st in reversed(ctx["steps"]):
        act, ti, hd, saved = st["act"], st["ti"], st["hd"], st["saved"]
        dht = dh[act] + dy[ti, act]           # d h_t (the zoned-out state)
        m_h = st["m_h"]
        dhnew = dht if m_h is None else (1 - m_h) * dht
        if v1:
            saved, rh = saved
            r, z = saved[0], saved[1]
            dn, dz = gru_v1_cell_backward_n(saved, dhnew)
            drh = dn @ w_rec[2 * H:]
            dr = drh * hd * r * (1 - r)
            drz = np.concatenate([dr, dz], axis=1)
            dxs = np.concatenate([dr, dz, dn], axis=1)
            dw_rec[:2 * H] += drz.T @ hd
            dw_rec[2 * H:] += dn.T @ rh
            db_hh += dxs.sum(0)
            # d h_{t-1}: z (direct) + r (through r*h, masked) + W_rz (masked, added below);
            # summed in fusedrnn.reference's order
            drh_h = drh * r if rd is None else drh * r * rd[act]
            direct = dhnew * z + drh_h
            dhd = drz @ w_rec[:2 * H]
        else:
            if is_lstm:
                if w_hr is not None:
                    dw_hr += dhnew.T @ st["out"]
                    dout = dhnew @ w_hr
                else:
                    dout = dhnew
                dct = dc[act]
                m_c = st["m_c"]
                dcnew = dct if m_c is None else (1 - m_c) * dct
                dxs, dcp, g = reg_lstm_cell_backward(saved, dout, dcnew)
                accumulate(g)
                dc[act] = dcp if m_c is None else dcp + m_c * dct
                dhp, direct = dxs, None
            elif mode == "gru":
                dxs, dhp, direct = gru_cell_backward(saved, dhnew)
            else:
                dxs = rnn_cell_backward(saved, dhnew, relu)
                dhp, direct = dxs, None
            db_hh += dhp.sum(0)
            if ln:
                dhp, dg, _ = layer_norm_backward(st["ln_hh"], dhp, ctx["ln_weight_hh"])
                accumulate({"ln_weight_hh": dg})
            dw_rec += dhp.T @ hd
            dhd = dhp @ w_rec
        dprev = dhd if rd is None else dhd * rd[act]
        if direct is not None:
            dprev = dprev + direct
        if m_h is not None:
            dprev = dprev + m_h * dht
        dh[act] = dprev
        dxp[ti, act] = dxs

    valid = np.arange(T)[:, None] < ctx["lengths"][None, :]
    dxp2 = dxp.reshape(T * B, G * H)
    grads_bias_ih = dxp2.sum(0)
    if ln:
        # The input normalisation, on the valid rows only (padding rows may hold NaN).
        rows = np.nonzero(valid.reshape(-1))[0]
        v_hat, rstd = ctx["ln_ih_saved"]
        d_rows, dg, _ = layer_norm_backward(
            (v_hat.reshape(T * B, -1)[rows], rstd.reshape(T * B, 1)[rows]), dxp2[rows],
            ctx["ln_weight_ih"])
        dxp2 = np.zeros_like(dxp2)
        dxp2[rows] = d_rows
        extra["ln_weight_ih"] = dg
    x_valid = np.where(valid[:, :, None], x, 0).astype(dt, copy=False)
    dw_hh = dw_rec if ctx["dropconnect_mask"] is None else \
        dw_rec * np.asarray(ctx["dropconnect_mask"], dt)
    grads = {
        "x": (dxp2 @ w_ih).reshape(x.shape),
        "h0": dh,
        "weight_ih": dxp2.T @ x_valid.reshape(T * B, -1),
        "weight_hh": dw_hh,
    }
    if is_lstm:
        grads["c0"] = dc
    if ctx["has_bias"]:
        grads["bias_ih"] = grads_bias_ih
        grads["bias_hh"] = db_hh
    if w_hr is not None:
        grads["weight_hr"] = dw_hr
    zero = {"ln_weight_ih": G * H, "ln_weight_hh": G * H, "ln_weight_c": H, "ln_bias_c": H,
            "weight_peephole": 3 * H}
    wanted = []
    if ln:
        wanted += ["ln_weight_ih", "ln_weight_hh"] + (["ln_weight_c", "ln_bias_c"] if is_lstm
                                                      else [])
    if ctx["peephole"]:
        wanted.append("weight_peephole")
    for k in wanted:   # a parameter no step reached (T = 0 steps) still gets its zero gradient
        grads[k] = extra.get(k, np.zeros(zero[k], dt))
    return grads


# --------------------------------------------------------------------------------------------
# Names and initialisation.
# --------------------------------------------------------------------------------------------

def reg_param_names(layer, direction, *, mode="lstm", layer_norm=False, peephole=False):
    """Names of the options' parameters of one stack layer and direction (0 forward, 1
    reverse), in :func:`fusedrnn.reference.param_names`' style: ``ln_weight_ih_l0``,
    ``weight_peephole_l1_reverse`` ... (the plain ones come from ``param_names``)."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    keys = []
    if layer_norm:
        keys += ["ln_weight_ih", "ln_weight_hh"] + (["ln_weight_c", "ln_bias_c"]
                                                    if mode == "lstm" else [])
    if peephole:
        if mode != "lstm":
            raise NotImplementedError(f"peepholes: defined for the LSTM only, not mode {mode!r}")
        keys.append("weight_peephole")
    return [k + sfx for k in keys]


def unit_forget_bias(bias_ih, bias_hh=None, *, value=1.0):
    """LSTM forget-gate bias initialisation (Jozefowicz et al. 2015; Keras
    ``unit_forget_bias=True``; Haste's ``forget_bias=1.0``): returns copies with the forget
    block (rows H:2H in PyTorch's i, f, g, o order) of ``bias_ih`` set to ``value`` and, if
    given, that of ``bias_hh`` set to 0, so the cell sees a forget bias of exactly ``value``;
    the other entries are unchanged. Returns (bias_ih, bias_hh or None).

    Keras and Haste have one bias: Keras' forget block is [H:2H] of its i, f, c, o bias, Haste's
    [2H:3H] of its i, g, f, o bias; both map to ``bias_ih[H:2H]`` (``bias_hh`` 0). In the
    layer-normalised LSTM the biases are the normalisations' β, added after them, so the same
    rows are the forget gate's bias there too. :func:`fusedrnn.init.unit_forget_bias_` does the
    same in place on every layer of a module."""
    b_ih = np.array(bias_ih, copy=True)
    if b_ih.ndim != 1 or b_ih.shape[0] % 4:
        raise ValueError(f"bias_ih must be an LSTM bias of shape (4*H,), got {b_ih.shape}")
    H = b_ih.shape[0] // 4
    b_ih[H:2 * H] = value
    b_hh = None
    if bias_hh is not None:
        b_hh = np.array(bias_hh, copy=True)
        if b_hh.shape != b_ih.shape:
            raise ValueError(f"bias_hh must have bias_ih's shape {b_ih.shape}, got {b_hh.shape}")
        b_hh[H:2 * H] = 0
    return b_ih, b_hh
