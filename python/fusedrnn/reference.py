"""Pure-NumPy reference implementation: the specification every backend is tested against.

Everything here is written for clarity, not speed: one function per cell step (mirroring the
C++ cell headers in ``csrc/cells``), explicit loops over time, float64 by default (float32 is
accepted and computed in float32, which is how the float32 error bounds of the native kernels
are derived).

Conventions (docs/design.md §2), identical to ``torch.nn.RNN/LSTM/GRU``:

* ``x``: ``(T, B, I)``; ``W_ih``: ``(G*H, I)``; ``W_hh``: ``(G*H, R)``; biases ``(G*H,)``, where
  ``G`` is 1 (RNN), 4 (LSTM, gate rows i, f, g, o) or 3 (GRU, gate rows r, z, n) and ``R`` is the
  recurrent width: ``H``, or ``P`` for an LSTM with projection ``W_hr: (P, H)``.
* ``lengths``: ``(B,)`` integers in ``[1, T]``. Sequence ``b`` is valid for ``t < lengths[b]``;
  outputs past it are zero, ``h_n``/``c_n`` are the states after its last valid step. The reverse
  direction reads each sequence backwards from its own last valid step.

Single layer, single direction (the same signatures as :mod:`fusedrnn.functional`)::

    y, h_n, ctx = rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity="tanh", ...)
    y, h_n, c_n, ctx = lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr=None, ...)
    y, h_n, ctx = gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, reset_after=True, ...)
    grads = rnn_backward(ctx, dy, dh_n) / lstm_backward(ctx, dy, dh_n, dc_n) / gru_backward(...)

``grads`` is a dict with keys ``x, h0, weight_ih, weight_hh`` and, where they apply,
``c0, bias_ih, bias_hh, weight_hr``.

Whole stacks (layers x directions, dropout given explicit masks, ``batch_first``)::

    y, h_n, c_n, ctx = stack_forward(mode, x, params, num_layers=..., bidirectional=...)
    dx, dh0, dc0, grads = stack_backward(ctx, dy, dh_n, dc_n)

with ``params``/``grads`` keyed by PyTorch's names (``weight_ih_l0``, ``bias_hh_l1_reverse``...).

Regularised cells (reference only; the kernels come next), in
:mod:`fusedrnn.reference_regularised` and re-exported here: layer-normalised LSTM/GRU/RNN
(Haste's form), zoneout, recurrent (variational) dropout, DropConnect on ``W_hh``, LSTM gate
clipping (ONNX ``clip``) and cell-state clipping (cuDNN/TensorFlow), LSTM peepholes (ONNX
``P``), :func:`unit_forget_bias`::

    y, h_n, c_n, ctx = reg_layer_forward(mode, x, w_ih, w_hh, ..., zoneout_h_mask=..., ...)
    grads = reg_layer_backward(ctx, dy, dh_n, dc_n)

and whole stacks through :func:`stack_forward`'s ``layer_options``.

16-bit storage (bfloat16, float16; the CUDA backend stores them and computes in float32) is
modelled by :func:`quantize`: a low-precision run of the reference quantizes every input and
parameter, computes in float64 and quantizes every output (each output rounded once, as the
device backend does; ``docs/design.md`` §5).
"""

from __future__ import annotations

import numpy as np

from fusedrnn.spec import GATES, MODES

__all__ = [
    "MODES", "GATES", "sigmoid",
    "rnn_cell_forward", "rnn_cell_backward",
    "lstm_cell_forward", "lstm_cell_backward",
    "gru_cell_forward", "gru_cell_backward",
    "gru_v1_cell_gates", "gru_v1_cell_forward", "gru_v1_cell_backward_n", "gru_v1_cell_backward_rz",
    "layer_forward", "layer_backward",
    "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
    "stack_forward", "stack_backward", "param_names", "quantize", "STORAGE_FORMATS",
    # fusedrnn.reference_regularised (imported at the end of this module)
    "LN_EPS", "REG_PARAM_KEYS", "layer_norm_forward", "layer_norm_backward",
    "reg_lstm_cell_forward", "reg_lstm_cell_backward", "reg_layer_forward",
    "reg_layer_backward", "reg_param_names", "unit_forget_bias",
]

# 16-bit storage formats: (significant bits, frexp exponent of the smallest normal, largest
# finite value).
STORAGE_FORMATS = {
    "bfloat16": (8, -125, float.fromhex("0x1.fep127")),
    "float16": (11, -13, 65504.0),
}


def quantize(a, storage):
    """``a`` (any shape) rounded to the nearest value of ``storage`` ("bfloat16" or "float16"),
    ties to even, with that format's subnormals, overflow to inf and NaN kept; float64 out.
    Rounds the exact value once (float64 in: exact for float32 inputs)."""
    p, emin, largest = STORAGE_FORMATS[storage]
    a = np.asarray(a, dtype=np.float64)
    out = a.copy()
    finite = np.isfinite(a) & (a != 0)
    _, e = np.frexp(a[finite])
    quantum_exp = np.maximum(e, emin) - p  # the spacing of the format's values near |a|
    q = np.ldexp(np.rint(np.ldexp(a[finite], -quantum_exp)), quantum_exp)  # rint: ties to even
    out[finite] = np.where(np.abs(q) > largest, np.copysign(np.inf, q), q)
    return out

# MODES (recurrent modes; GRU also takes ``reset_after``) and GATES come from fusedrnn.spec.


def sigmoid(v):
    # 0.5 (1 + tanh(v/2)) is the logistic function without exp overflow for large |v|.
    return 0.5 * (1.0 + np.tanh(0.5 * v))


# --------------------------------------------------------------------------------------------
# Cell steps. Each works on a batch of rows: pre-activations `xp` (input part, with b_ih) and
# `hp` (recurrent part, with b_hh), each (N, G*H) with gate blocks of width H.
# Backward functions are written in terms of saved post-activation values, as the C++ cells are.
# --------------------------------------------------------------------------------------------

def rnn_cell_forward(xp, hp, relu):
    """h' = act(xp + hp). Returns (h', saved) with saved = h'."""
    a = xp + hp
    h = np.maximum(a, 0) if relu else np.tanh(a)
    return h, h


def rnn_cell_backward(saved, dh, relu):
    """d(pre-activation) for both xp and hp."""
    h = saved
    # relu as PyTorch's threshold_backward: 0 where h <= 0, dh elsewhere (a NaN h passes dh on)
    da = np.where(h <= 0, 0, dh).astype(dh.dtype, copy=False) if relu else dh * (1 - h * h)
    return da


def lstm_cell_forward(xp, hp, c_prev):
    """i,f,g,o from xp + hp; c' = f c + i g; out = o tanh(c').

    Returns (out, c', saved) with saved = (i, f, g, o, c_prev, tanh(c'))."""
    H = c_prev.shape[-1]
    a = xp + hp
    i = sigmoid(a[:, 0 * H:1 * H])
    f = sigmoid(a[:, 1 * H:2 * H])
    g = np.tanh(a[:, 2 * H:3 * H])
    o = sigmoid(a[:, 3 * H:4 * H])
    c = f * c_prev + i * g
    tc = np.tanh(c)
    return o * tc, c, (i, f, g, o, c_prev, tc)


def lstm_cell_backward(saved, dout, dc):
    """Given d(out) and d(c') (from the next step), returns (d pre-activation, d c_prev)."""
    i, f, g, o, c_prev, tc = saved
    dc = dc + dout * o * (1 - tc * tc)
    di = dc * g
    df = dc * c_prev
    dg = dc * i
    do = dout * tc
    da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)],
                        axis=1)
    return da, dc * f


def gru_cell_forward(xp, hp, h_prev):
    """PyTorch / cuDNN GRU (reset_after=True): n = tanh(xn + r (W_hn h + b_hn)).

    Returns (h', saved) with saved = (r, z, n, hp_n, h_prev)."""
    H = h_prev.shape[-1]
    r = sigmoid(xp[:, :H] + hp[:, :H])
    z = sigmoid(xp[:, H:2 * H] + hp[:, H:2 * H])
    hn = hp[:, 2 * H:]
    n = np.tanh(xp[:, 2 * H:] + r * hn)
    return (1 - z) * n + z * h_prev, (r, z, n, hn, h_prev)


def gru_cell_backward(saved, dh):
    """Returns (d xp, d hp, d h_prev through the cell's direct path z h)."""
    r, z, n, hn, h_prev = saved
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_prev - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dxp = np.concatenate([dr, dz, dn], axis=1)
    dhp = np.concatenate([dr, dz, dn * r], axis=1)
    return dxp, dhp, dh * z


def gru_v1_cell_gates(xp, hp_rz, h_prev):
    """Original GRU (reset_after=False), first phase: r, z and the reset state r h."""
    H = h_prev.shape[-1]
    r = sigmoid(xp[:, :H] + hp_rz[:, :H])
    z = sigmoid(xp[:, H:2 * H] + hp_rz[:, H:2 * H])
    return r, z, r * h_prev


def gru_v1_cell_forward(xp, hp_n, r, z, h_prev):
    """Second phase: n = tanh(xn + W_hn (r h) + b_hn); h' = (1-z) n + z h.

    Returns (h', saved) with saved = (r, z, n, r h, h_prev)."""
    H = h_prev.shape[-1]
    n = np.tanh(xp[:, 2 * H:] + hp_n)
    return (1 - z) * n + z * h_prev, (r, z, n, r * h_prev, h_prev)


def gru_v1_cell_backward_n(saved, dh):
    """d(n pre-activation) (the same for xp_n and hp_n) and dz's pre-activation."""
    r, z, n, rh, h_prev = saved
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_prev - n) * z * (1 - z)
    return dn, dz


def gru_v1_cell_backward_rz(saved, drh, dh):
    """Given d(r h) = dn W_hn: dr's pre-activation and d h_prev through the direct paths."""
    r, z, n, rh, h_prev = saved
    dr = drh * h_prev * r * (1 - r)
    return dr, dh * z + drh * r


# --------------------------------------------------------------------------------------------
# One layer, one direction.
# --------------------------------------------------------------------------------------------

def _time_index(s, active, lengths, reverse):
    """Time index processed at step s by each active sequence."""
    if reverse:
        return lengths[active] - 1 - s
    return np.full(active.size, s)


def layer_forward(mode, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_hr=None,
                  lengths=None, reverse=False, reset_after=True):
    """Runs one layer in one direction. Returns (y, h_n, c_n or None, ctx)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    x = np.asarray(x)
    dt = x.dtype
    T, B, _ = x.shape
    G = GATES[mode]
    H = w_ih.shape[0] // G
    R = w_hh.shape[1]  # recurrent width: H, or P with projection
    is_lstm = mode == "lstm"
    relu = mode == "rnn_relu"
    lengths = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
    h = np.zeros((B, R), dt) if h0 is None else np.array(h0, dt)
    c = None
    if is_lstm:
        c = np.zeros((B, H), dt) if c0 is None else np.array(c0, dt)

    # Input projection hoisted over all T*B rows, as the kernels do.
    xp = (x.reshape(T * B, -1) @ w_ih.T).reshape(T, B, G * H)
    if b_ih is not None:
        xp = xp + b_ih
    y = np.zeros((T, B, R), dt)
    steps = []  # per step: (active batch rows, their time index, saved values, extra)
    for s in range(T):
        act = np.nonzero(s < lengths)[0]
        if act.size == 0:
            break
        ti = _time_index(s, act, lengths, reverse)
        xs = xp[ti, act]
        hprev = h[act]
        if mode == "gru" and not reset_after:
            hp_rz = hprev @ w_hh[:2 * H].T
            if b_hh is not None:
                hp_rz = hp_rz + b_hh[:2 * H]
            r, z, rh = gru_v1_cell_gates(xs, hp_rz, hprev)
            hp_n = rh @ w_hh[2 * H:].T
            if b_hh is not None:
                hp_n = hp_n + b_hh[2 * H:]
            hnew, saved = gru_v1_cell_forward(xs, hp_n, r, z, hprev)
            out = hnew
        else:
            hp = hprev @ w_hh.T
            if b_hh is not None:
                hp = hp + b_hh
            if is_lstm:
                out, cnew, saved = lstm_cell_forward(xs, hp, c[act])
                c[act] = cnew
                hnew = out @ w_hr.T if w_hr is not None else out
            elif mode == "gru":
                hnew, saved = gru_cell_forward(xs, hp, hprev)
                out = hnew
            else:
                hnew, saved = rnn_cell_forward(xs, hp, relu)
                out = hnew
        h[act] = hnew
        y[ti, act] = hnew
        steps.append((act, ti, hprev, saved, out))
    ctx = dict(mode=mode, x=x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, has_bias=b_ih is not None,
               reset_after=reset_after, steps=steps, T=T, B=B, H=H, R=R, lengths=lengths)
    return y, h, c, ctx


def layer_backward(ctx, dy=None, dh_n=None, dc_n=None):
    """BPTT for :func:`layer_forward`. Returns the grads dict (see module docstring)."""
    mode, x, w_ih, w_hh, w_hr = ctx["mode"], ctx["x"], ctx["w_ih"], ctx["w_hh"], ctx["w_hr"]
    T, B, H, R = ctx["T"], ctx["B"], ctx["H"], ctx["R"]
    G = GATES[mode]
    dt = x.dtype
    is_lstm = mode == "lstm"
    relu = mode == "rnn_relu"
    dh = np.zeros((B, R), dt) if dh_n is None else np.array(dh_n, dt)
    dc = np.zeros((B, H), dt) if not is_lstm or dc_n is None else np.array(dc_n, dt)
    dy = np.zeros((T, B, R), dt) if dy is None else np.asarray(dy, dt)
    dxp = np.zeros((T, B, G * H), dt)   # d pre-activation of the input part, by time
    dw_hh = np.zeros_like(w_hh)
    db_hh = np.zeros(G * H, dt)
    dw_hr = np.zeros_like(w_hr) if w_hr is not None else None
    for act, ti, hprev, saved, out in reversed(ctx["steps"]):
        dhs = dh[act] + dy[ti, act]
        if mode == "gru" and not ctx["reset_after"]:
            dn, dz = gru_v1_cell_backward_n(saved, dhs)
            drh = dn @ w_hh[2 * H:]
            dr, dprev = gru_v1_cell_backward_rz(saved, drh, dhs)
            drz = np.concatenate([dr, dz], axis=1)
            dprev = dprev + drz @ w_hh[:2 * H]
            dxs = np.concatenate([dr, dz, dn], axis=1)
            dw_hh[:2 * H] += drz.T @ hprev
            dw_hh[2 * H:] += dn.T @ saved[3]
            db_hh += dxs.sum(0)
        else:
            if is_lstm:
                if w_hr is not None:
                    dw_hr += dhs.T @ out
                    dout = dhs @ w_hr
                else:
                    dout = dhs
                dxs, dcp = lstm_cell_backward(saved, dout, dc[act])
                dc[act] = dcp
                dhp, direct = dxs, 0
            elif mode == "gru":
                dxs, dhp, direct = gru_cell_backward(saved, dhs)
            else:
                dxs = rnn_cell_backward(saved, dhs, relu)
                dhp, direct = dxs, 0
            dprev = dhp @ w_hh + direct
            dw_hh += dhp.T @ hprev
            db_hh += dhp.sum(0)
        dh[act] = dprev
        dxp[ti, act] = dxs
    dxp2 = dxp.reshape(T * B, G * H)
    # Steps past a sequence's length take no part: their x (which may be NaN/inf padding, and
    # 0 * NaN is NaN) is left out of dW_ih, as torch's packed path never sees it.
    valid = np.arange(T)[:, None] < ctx["lengths"][None, :]
    x_valid = np.where(valid[:, :, None], x, 0).astype(dt, copy=False)
    grads = {
        "x": (dxp2 @ w_ih).reshape(x.shape),
        "h0": dh,
        "weight_ih": dxp2.T @ x_valid.reshape(T * B, -1),
        "weight_hh": dw_hh,
    }
    if is_lstm:
        grads["c0"] = dc
    if ctx["has_bias"]:
        grads["bias_ih"] = dxp2.sum(0)
        grads["bias_hh"] = db_hh
    if w_hr is not None:
        grads["weight_hr"] = dw_hr
    return grads


def rnn_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                lengths=None, reverse=False, training=True):
    """Vanilla RNN layer. Returns (y (T,B,H), h_n (B,H), ctx)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    y, h, _, ctx = layer_forward("rnn_" + nonlinearity, x, w_ih, w_hh, b_ih, b_hh, h0,
                                 lengths=lengths, reverse=reverse)
    return y, h, ctx if training else None


def lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_hr=None,
                 lengths=None, reverse=False, training=True):
    """LSTM layer. Returns (y (T,B,R), h_n (B,R), c_n (B,H), ctx); R = P with w_hr (P,H)."""
    y, h, c, ctx = layer_forward("lstm", x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr=w_hr,
                                 lengths=lengths, reverse=reverse)
    return y, h, c, ctx if training else None


def gru_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, reset_after=True,
                lengths=None, reverse=False, training=True):
    """GRU layer. Returns (y (T,B,H), h_n (B,H), ctx)."""
    y, h, _, ctx = layer_forward("gru", x, w_ih, w_hh, b_ih, b_hh, h0, lengths=lengths,
                                 reverse=reverse, reset_after=reset_after)
    return y, h, ctx if training else None


def rnn_backward(ctx, dy=None, dh_n=None):
    return layer_backward(ctx, dy, dh_n)


def lstm_backward(ctx, dy=None, dh_n=None, dc_n=None):
    return layer_backward(ctx, dy, dh_n, dc_n)


def gru_backward(ctx, dy=None, dh_n=None):
    return layer_backward(ctx, dy, dh_n)


# --------------------------------------------------------------------------------------------
# Whole stacks: layers x directions, PyTorch parameter names, dropout with explicit masks.
# --------------------------------------------------------------------------------------------

def param_names(layer, direction, *, bias=True, proj=False):
    """PyTorch's parameter names for one layer and direction (0 forward, 1 reverse)."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    names = ["weight_ih" + sfx, "weight_hh" + sfx]
    if bias:
        names += ["bias_ih" + sfx, "bias_hh" + sfx]
    if proj:
        names.append("weight_hr" + sfx)
    return names


def _regularised_options(params, layer_options, num_layers, D):
    """Per (layer, direction) keyword arguments of :func:`reg_layer_forward`, or None when the
    stack runs the plain cells (no ``layer_options`` and no regularised parameter by name)."""
    reg_names = [k for k in params if k.rsplit("_l", 1)[0] in REG_PARAM_KEYS]
    if layer_options is None and not reg_names:
        return None
    if layer_options is None or isinstance(layer_options, dict):
        per = [dict(layer_options or {}) for _ in range(num_layers * D)]
    else:
        per = [dict(o or {}) for o in layer_options]
        if len(per) != num_layers * D:
            raise ValueError(f"layer_options: {num_layers * D} dicts (num_layers * directions, "
                             f"index l*D + d) or one dict for all, got {len(per)}")
    for o in per:
        clash = [k for k in o if k in REG_PARAM_KEYS or k in (
            "w_hr", "lengths", "reverse", "reset_after")]
        if clash:
            raise ValueError(f"layer_options: {', '.join(clash)} come from params and the stack's "
                             f"own arguments, not from layer_options")
    return per


def stack_forward(mode, x, params, *, num_layers=1, bidirectional=False, h0=None, c0=None,
                  lengths=None, batch_first=False, dropout_masks=None, reset_after=True,
                  layer_options=None):
    """A multi-layer, optionally bidirectional network, as ``torch.nn.RNN/LSTM/GRU``.

    ``x``: (T, B, I), or (B, T, I) with ``batch_first``. ``params``: dict keyed by PyTorch names.
    ``h0``: (L*D, B, R); ``c0``: (L*D, B, H) (LSTM). ``dropout_masks``: ``num_layers - 1``
    arrays of shape (T, B, D*R) (already scaled by 1/(1-p)), multiplied into each layer's output
    but the last's. Returns (y (T,B,D*R) or batch-first, h_n, c_n or None, ctx).

    Regularised cells (:mod:`fusedrnn.reference_regularised`): when ``layer_options`` is given,
    or ``params`` holds any of their parameters (names of :func:`reg_param_names`:
    ``ln_weight_ih_l0``, ``weight_peephole_l1_reverse`` ...), every layer runs
    :func:`reg_layer_forward` with its parameters from ``params`` and the keyword options of
    ``layer_options``: one dict for every layer and direction, or a list of ``num_layers * D``
    dicts (index ``l*D + d``; masks are per layer: ``zoneout_h_mask (T, B, R)``,
    ``recurrent_dropout_mask (B, R)``, ``dropconnect_mask (G*H, R)`` ...). Zoneout masks are
    time-major like ``x`` here, even with ``batch_first``. Without either, the plain cells run,
    exactly as before."""
    x = np.asarray(x)
    if batch_first:
        x = x.swapaxes(0, 1)
    D = 2 if bidirectional else 1
    is_lstm = mode == "lstm"
    layer_in = x
    h_n, c_n, layer_ctx = [], [], []
    reg_options = _regularised_options(params, layer_options, num_layers, D)
    for l in range(num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            k = l * D + d
            args = (mode, layer_in, params["weight_ih" + sfx], params["weight_hh" + sfx],
                    params.get("bias_ih" + sfx), params.get("bias_hh" + sfx),
                    None if h0 is None else h0[k], None if (c0 is None or not is_lstm) else c0[k])
            kw = dict(w_hr=params.get("weight_hr" + sfx), lengths=lengths, reverse=bool(d),
                      reset_after=reset_after)
            if reg_options is None:
                y, h, c, ctx = layer_forward(*args, **kw)
            else:
                kw.update({key: params[key + sfx] for key in REG_PARAM_KEYS
                           if key + sfx in params})
                y, h, c, ctx = reg_layer_forward(*args, **kw, **reg_options[k])
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
            layer_ctx.append(ctx)
        out = np.concatenate(outs, axis=2)
        if l < num_layers - 1 and dropout_masks is not None:
            out = out * dropout_masks[l]
        layer_in = out
    y = layer_in.swapaxes(0, 1) if batch_first else layer_in
    ctx = dict(mode=mode, num_layers=num_layers, D=D, layers=layer_ctx, batch_first=batch_first,
               dropout_masks=dropout_masks)
    return y, np.stack(h_n), (np.stack(c_n) if is_lstm else None), ctx


def stack_backward(ctx, dy=None, dh_n=None, dc_n=None):
    """BPTT through :func:`stack_forward`. Returns (dx, dh0, dc0 or None, grads by name)."""
    L, D = ctx["num_layers"], ctx["D"]
    is_lstm = ctx["mode"] == "lstm"
    grads = {}
    dh0 = [None] * (L * D)
    dc0 = [None] * (L * D)
    first = ctx["layers"][-1]
    T, B, R = first["T"], first["B"], first["R"]
    dt = first["x"].dtype
    if dy is None:
        dy = np.zeros((T, B, D * R), dt)
    else:
        dy = np.asarray(dy, dt)
        if ctx["batch_first"]:
            dy = dy.swapaxes(0, 1)
    dout = dy
    for l in reversed(range(L)):
        dx_layer = None
        for d in range(D):
            k = l * D + d
            lc = ctx["layers"][k]
            backward = reg_layer_backward if lc.get("regularised") else layer_backward
            g = backward(lc, dout[:, :, d * R:(d + 1) * R],
                         None if dh_n is None else dh_n[k],
                         None if (dc_n is None or not is_lstm) else dc_n[k])
            sfx = f"_l{l}" + ("_reverse" if d else "")
            for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr") \
                    + REG_PARAM_KEYS:
                if key in g:
                    grads[key + sfx] = g[key]
            dh0[k] = g["h0"]
            dc0[k] = g.get("c0")
            dx_layer = g["x"] if dx_layer is None else dx_layer + g["x"]
        if l > 0 and ctx["dropout_masks"] is not None:
            dx_layer = dx_layer * ctx["dropout_masks"][l - 1]
        dout = dx_layer
    dx = dout.swapaxes(0, 1) if ctx["batch_first"] else dout
    return dx, np.stack(dh0), (np.stack(dc0) if is_lstm else None), grads


# The regularised cells build on the functions above (the module imports them from here), so
# they are imported last.
from fusedrnn.reference_regularised import (  # noqa: E402
    LN_EPS, REG_PARAM_KEYS, layer_norm_backward, layer_norm_forward, reg_layer_backward,
    reg_layer_forward, reg_lstm_cell_backward, reg_lstm_cell_forward, reg_param_names,
    unit_forget_bias)
