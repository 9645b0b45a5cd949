"""Native fused kernels on NumPy arrays: one layer, one direction, forward and BPTT.

Shapes (as ``torch.nn.RNN/LSTM/GRU``; ``G`` = 1, 4 or 3 gates, ``R`` = hidden_size, or
proj_size for an LSTM with projection):

============  ==========================  ===================================================
argument      shape                       meaning
============  ==========================  ===================================================
x             (T, B, I)                   input, float32 or float64 (every array: same dtype)
w_ih          (G*H, I)                    input weights, gate blocks in PyTorch order
w_hh          (G*H, R)                    recurrent weights
b_ih, b_hh    (G*H,) or None              biases (both or neither)
h0            (B, R) or None              initial hidden state (zeros)
c0            (B, H) or None              initial cell state, LSTM (zeros)
w_hr          (P, H) or None              LSTM projection (``proj_size`` = P)
lengths       (B,) integers or None       valid steps per sequence, each in [1, T]
reverse       bool                        run the reverse direction (each sequence read
                                          backwards from its own last valid step)
training      bool                        keep what backward needs and return it as ``ctx``
============  ==========================  ===================================================

Outputs: ``y`` (T, B, R), zero past each sequence's length; ``h_n`` (B, R) and ``c_n`` (B, H),
the states after each sequence's last valid step; ``ctx``, an opaque context (None unless
``training``). The backward functions take ``ctx`` and the gradients of the outputs (each may
be None for zero) and return a dict with keys ``x, h0, weight_ih, weight_hh`` and, where they
apply, ``c0, bias_ih, bias_hh, weight_hr``.

The GIL is released while the kernels run. ``ctx`` keeps references to the input, initial
state and weight arrays; a training forward stamps their contents (a fast checksum) and
backward raises ``RuntimeError`` if one of them was modified in place in between (an optimizer
step, ``load_state_dict``, a reused input buffer), as torch does, rather than combining old
activations with new values.
"""

from __future__ import annotations

from fusedrnn._loader import _C

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward",
           "gru_backward", "stack_forward", "stack_backward", "MODES"]

#: Stack modes (``gru`` also takes ``reset_after``).
MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")

_RNN_KINDS = {"tanh": _C.KIND_RNN_TANH, "relu": _C.KIND_RNN_RELU}


def _check_ctx(ctx, fn, kinds):
    if not isinstance(ctx, _C.Context):
        raise TypeError(f"{fn}: ctx must be the context returned by a forward call with "
                        f"training=True, got {type(ctx).__name__}")
    if ctx.kind not in kinds:
        raise ValueError(f"{fn}: ctx comes from a {ctx.kind!r} forward, expected one of {kinds}")


def rnn_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                lengths=None, reverse=False, training=True):
    """Vanilla RNN layer, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Returns ``(y, h_n, ctx)``: y (T, B, H), h_n (B, H)."""
    if nonlinearity not in _RNN_KINDS:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    y, h_n, _, ctx = _C.forward(_RNN_KINDS[nonlinearity], x, w_ih, w_hh, b_ih, b_hh, h0, None,
                                None, lengths, reverse, training)
    return y, h_n, ctx


def rnn_backward(ctx, dy=None, dh_n=None):
    """Gradients of :func:`rnn_forward`: dict with x, h0, weight_ih, weight_hh(, biases)."""
    _check_ctx(ctx, "rnn_backward", ("rnn_tanh", "rnn_relu"))
    return _C.backward(ctx, dy, dh_n, None)


def lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_hr=None,
                 lengths=None, reverse=False, training=True):
    """LSTM layer (gates i, f, g, o), optionally with projection ``h = W_hr (o tanh(c))``.

    Returns ``(y, h_n, c_n, ctx)``: y (T, B, R), h_n (B, R), c_n (B, H)."""
    return _C.forward(_C.KIND_LSTM, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, lengths, reverse,
                      training)


def lstm_backward(ctx, dy=None, dh_n=None, dc_n=None):
    """Gradients of :func:`lstm_forward`: dict with x, h0, c0, weight_ih, weight_hh
    (, bias_ih, bias_hh, weight_hr)."""
    _check_ctx(ctx, "lstm_backward", ("lstm",))
    return _C.backward(ctx, dy, dh_n, dc_n)


def gru_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, reset_after=True,
                lengths=None, reverse=False, training=True):
    """GRU layer (gates r, z, n). ``reset_after=True`` is PyTorch's/cuDNN's form,
    ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``; ``False`` is the original form,
    ``n = tanh(W_in x + b_in + W_hn (r h) + b_hn)``.

    Returns ``(y, h_n, ctx)``: y (T, B, H), h_n (B, H)."""
    kind = _C.KIND_GRU if reset_after else _C.KIND_GRU_V1
    y, h_n, _, ctx = _C.forward(kind, x, w_ih, w_hh, b_ih, b_hh, h0, None, None, lengths,
                                reverse, training)
    return y, h_n, ctx


def gru_backward(ctx, dy=None, dh_n=None):
    """Gradients of :func:`gru_forward`: dict with x, h0, weight_ih, weight_hh(, biases)."""
    _check_ctx(ctx, "gru_backward", ("gru", "gru_v1"))
    return _C.backward(ctx, dy, dh_n, None)


def _stack_kind(mode, reset_after):
    kinds = {"rnn_tanh": _C.KIND_RNN_TANH, "rnn_relu": _C.KIND_RNN_RELU, "lstm": _C.KIND_LSTM,
             "gru": _C.KIND_GRU if reset_after else _C.KIND_GRU_V1}
    if mode not in kinds:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return kinds[mode]


def stack_forward(mode, x, params, *, num_layers=1, bidirectional=False, h0=None, c0=None,
                  lengths=None, batch_first=False, dropout=0.0, seed=0, reset_after=True,
                  training=True, check_inplace=True):
    """A whole multi-layer, optionally bidirectional network in one native call, as
    ``torch.nn.RNN/LSTM/GRU``.

    ``mode``: one of :data:`MODES`. ``x``: (T, B, I), or (B, T, I) with ``batch_first``.
    ``params``: dict keyed by PyTorch's names (``weight_ih_l0``, ``weight_hh_l0_reverse``,
    ``bias_ih_l1``, ``weight_hr_l0``...; biases all present or all absent, ``weight_hr_*`` for an
    LSTM with projection). ``h0``: (L*D, B, R); ``c0``: (L*D, B, H) (LSTM); ``lengths``: (B,) in
    any order. ``dropout``: probability applied to every layer's output but the last when
    ``training``; its masks are a pure function of ``seed`` (same seed, same masks).

    Returns ``(y, h_n, c_n, ctx)``: y (T, B, D*R) (batch-first if asked), h_n (L*D, B, R),
    c_n (L*D, B, H) or None, ctx (None unless ``training``). ``ctx.keep_masks`` holds the
    dropout masks (time-major bools). ``ctx`` refers to ``x``, ``h0``, ``c0`` and the parameter
    arrays: a training forward stamps their contents and :func:`stack_backward` raises
    ``RuntimeError`` if one was modified in place in between (``check_inplace=False`` skips
    the stamps, for a caller that tracks modifications itself, as the torch adapter does with
    autograd's version counters)."""
    seed = int(seed) & (2**64 - 1)
    return _C.stack_forward(_stack_kind(mode, reset_after), x, params, num_layers,
                            bidirectional, h0, c0, lengths, batch_first, float(dropout), seed,
                            training, bool(check_inplace))


def stack_backward(ctx, dy=None, dh_n=None, dc_n=None, *, grads=None):
    """BPTT through :func:`stack_forward`. ``dy`` like y, ``dh_n`` like h_n, ``dc_n`` like c_n
    (each None for zero).

    Returns ``(dx, dh0, dc0, grads)`` with ``grads`` keyed by PyTorch's parameter names. When a
    ``grads`` dict of C-contiguous arrays is passed, gradients are *added* into it in place
    (accumulation across calls) and that dict is returned."""
    if not isinstance(ctx, _C.StackContext):
        raise TypeError("stack_backward: ctx must be the context returned by stack_forward with "
                        f"training=True, got {type(ctx).__name__}")
    return _C.stack_backward(ctx, dy, dh_n, dc_n, grads)
