"""Native fused kernels on arrays: whole stacks, and single layers as one-layer stacks.

Arrays may be NumPy arrays or anything with ``__dlpack__`` (torch tensors, passed detached);
outputs come back as the same kind, allocated by the caller's library (NumPy, or torch's
allocator), and so does the training state a forward keeps for backward (``ctx.reserve``).

Device arrays: when fusedrnn is built with the CUDA backend (:func:`fusedrnn.cuda.is_available`),
CuPy arrays and torch CUDA tensors run on their device, on the framework's current stream
(torch: ``torch.cuda.current_stream``; CuPy: ``cupy.cuda.get_current_stream``; at backward
time, the stream current then), and come back as the same kind on the same device. Objects with
only ``__cuda_array_interface__`` (Numba) are read too, taken to be on x's device. Every array
of a call must be on x's device, ``lengths`` included (for a device x an int64 array there; it
is copied to the host once per call to be checked), and C-contiguous: a strided device array
raises ``ValueError`` rather than being copied. Without the CUDA backend a device array raises
``TypeError``.

Single layer (shapes as ``torch.nn.RNN/LSTM/GRU``; ``G`` = 1, 4 or 3 gates, ``R`` =
hidden_size, or proj_size for an LSTM with projection):

============  ==========================  ===================================================
argument      shape                       meaning
============  ==========================  ===================================================
x             (T, B, I)                   input, float32 or float64 (CUDA also bfloat16,
                                          float16); every array: same dtype
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
the states after each sequence's last valid step; ``ctx`` (None unless ``training``). The
backward functions take ``ctx`` and the gradients of the outputs (each may be None for zero)
and return a dict with keys ``x, h0, weight_ih, weight_hh`` and, where they apply,
``c0, bias_ih, bias_hh, weight_hr``.

The GIL is released while the kernels run. ``ctx`` keeps references to the input, initial
state and weight arrays; a training forward stamps their contents (a fast checksum, computed
where the arrays live: a NumPy uint64 array for host arrays, a uint8 device array for device
ones) and backward raises ``RuntimeError`` if one of them was modified in place in between
(an optimizer step, ``load_state_dict``, a reused input buffer), as torch does, rather than
combining old activations with new values. A device backward reads the comparison back, so it
waits for its stream once; ``check_inplace=False`` skips the stamps (the torch adapter does:
torch's version counters guard it).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from fusedrnn._loader import _C

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward",
           "gru_backward", "stack_forward", "stack_backward", "StackContext", "MODES"]

#: Stack modes (``gru`` also takes ``reset_after``).
MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")

Array = Any  # a numpy.ndarray, or an array with __dlpack__ (e.g. a torch tensor)


_KINDS = {(mode, reset_after): _C.CELLS["gru_v1" if mode == "gru" and not reset_after
                                      else mode]["kind"]
          for mode in MODES for reset_after in (True, False)}


def _kind(mode: str, reset_after: bool = True) -> int:
    try:
        return _KINDS[mode, bool(reset_after)]
    except (KeyError, TypeError):
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}") from None


def _allocator(x: Array) -> Optional[Callable[[Tuple[int, ...], str], Array]]:
    """``alloc(shape, dtype_name)`` in the library of ``x``: outputs and the training state
    are owned by the caller's array library (torch's allocator for torch tensors, on the
    tensor's device; CuPy's memory pool for CuPy arrays, on the array's device); None for NumPy
    and any other host array (the native side allocates NumPy arrays itself, faster than a call
    back). A device array of another library gets None, which the native side refuses with an
    error naming x's device."""
    if isinstance(x, np.ndarray):
        return None
    module = type(x).__module__
    if module.startswith("torch"):
        import torch

        device = x.device
        return lambda shape, dtype: torch.empty(shape, dtype=getattr(torch, dtype),
                                                device=device)
    if module.startswith("cupy"):
        import cupy

        device_id = x.device.id

        def alloc(shape, dtype):
            with cupy.cuda.Device(device_id):
                return cupy.empty(shape, dtype=dtype)
        return alloc
    return None


def _stream(x: Array) -> int:
    """The stream a call on ``x`` runs on, as the native side takes it (a ``cudaStream_t`` as an
    int, 0 for the legacy default stream): the framework's current stream on x's device (torch,
    CuPy); 0 for host arrays and other libraries."""
    if isinstance(x, np.ndarray):
        return 0
    module = type(x).__module__
    if module.startswith("torch"):
        if x.device.type != "cuda":
            return 0
        import torch

        return torch.cuda.current_stream(x.device).cuda_stream
    if module.startswith("cupy"):
        import cupy

        with cupy.cuda.Device(x.device.id):
            return cupy.cuda.get_current_stream().ptr
    return 0


class StackContext:
    """What :func:`stack_backward` needs from a training :func:`stack_forward`: the call's
    arguments (references, not copies), its training state ``reserve`` (a uint8 array of the
    caller's library, laid out by ``_C.state_layout``) and the content stamps of the arrays
    backward reads. Nothing is kept on the C++ side.

    A caller that keeps the arrays itself (the torch adapter saves them for autograd) takes
    them with :meth:`saved_arrays`, drops them with :meth:`release_arrays` and hands them back
    with :meth:`restore_arrays` before backward."""

    __slots__ = ("mode", "kind", "layer", "num_layers", "bidirectional", "reverse", "batch_first",
                 "dropout", "seed", "lengths", "param_names", "stamps", "x", "h0", "c0",
                 "params", "reserve")

    def __init__(self, mode, kind, layer, num_layers, bidirectional, reverse, batch_first,
                 dropout, seed, lengths, stamps, x, h0, c0, params, reserve) -> None:
        self.mode, self.kind, self.layer = mode, kind, layer
        self.num_layers, self.bidirectional, self.reverse = num_layers, bidirectional, reverse
        self.batch_first, self.dropout, self.seed = batch_first, dropout, seed
        self.lengths, self.stamps = lengths, stamps
        self.x, self.h0, self.c0, self.reserve = x, h0, c0, reserve
        self.params = params
        self.param_names = list(params)  # the order of saved_arrays/restore_arrays

    @property
    def dtype(self) -> np.dtype:
        return self.params["weight_ih_l0"].dtype

    def saved_arrays(self) -> tuple:
        """``(x, h0, c0, reserve, *params)`` in ``param_names`` order (None where absent)."""
        return (self.x, self.h0, self.c0, self.reserve,
                *(self.params[n] for n in self.param_names))

    def release_arrays(self) -> None:
        self.x = self.h0 = self.c0 = self.reserve = self.params = None

    def restore_arrays(self, arrays: Sequence[Array]) -> None:
        """Takes back what :meth:`saved_arrays` returned (or the same arrays, detached)."""
        self.x, self.h0, self.c0, self.reserve = arrays[:4]
        self.params = dict(zip(self.param_names, arrays[4:]))

    def _shape(self) -> Tuple[int, int, int]:
        T, B = (self.x.shape[1], self.x.shape[0]) if self.batch_first else self.x.shape[:2]
        return T, B, self.params["weight_hh_l0"].shape[1]

    @property
    def keep_masks(self) -> list:
        """Dropout keep-masks after each layer but the last, (T, B, D*R) time-major bools
        of the reserve's library and device (None where no dropout was applied)."""
        T, B, R = self._shape()
        D = 2 if self.bidirectional else 1
        w_ih = self.params["weight_ih_l0"]
        w_hr = self.params.get("weight_hr_l0")
        H = w_hr.shape[1] if w_hr is not None else R
        lay = _C.state_layout(self.kind, T, B, w_ih.shape[1], H,
                              0 if w_hr is None else w_hr.shape[0], self.num_layers,
                              self.bidirectional, self.batch_first, self.dropout,
                              self.dtype.itemsize)
        n = T * B * D * R
        out = []
        for off in lay["keep"]:
            if off < 0:
                out.append(None)
                continue
            piece = self.reserve[off:off + n]
            if type(piece).__module__.startswith("torch"):
                import torch
                out.append(piece.view(torch.bool).reshape(T, B, D * R).clone())
            else:  # NumPy, or CuPy (same view/copy API, on the reserve's device)
                out.append(piece.view(np.bool_).reshape(T, B, D * R).copy())
        return out

    def __repr__(self) -> str:
        return (f"<fusedrnn StackContext {self.mode} num_layers={self.num_layers} "
                f"bidirectional={self.bidirectional}>")


def stack_forward(mode: str, x: Array, params: Dict[str, Array], *, num_layers: int = 1,
                  bidirectional: bool = False, h0: Optional[Array] = None,
                  c0: Optional[Array] = None, lengths: Optional[Array] = None,
                  batch_first: bool = False, dropout: float = 0.0, seed: int = 0,
                  reset_after: bool = True, training: bool = True, check_inplace: bool = True,
                  reverse: bool = False, _layer: bool = False
                  ) -> Tuple[Array, Array, Optional[Array], Optional[StackContext]]:
    """A whole multi-layer, optionally bidirectional network in one native call, as
    ``torch.nn.RNN/LSTM/GRU``.

    ``mode``: one of :data:`MODES`. ``x``: (T, B, I), or (B, T, I) with ``batch_first``.
    ``params``: dict keyed by PyTorch's names (``weight_ih_l0``, ``weight_hh_l0_reverse``,
    ``bias_ih_l1``, ``weight_hr_l0``...; biases all present or all absent, ``weight_hr_*`` for an
    LSTM with projection). ``h0``: (L*D, B, R); ``c0``: (L*D, B, H) (LSTM); ``lengths``: (B,) in
    any order. ``dropout``: probability applied to every layer's output but the last when
    ``training``; its masks are a pure function of ``seed`` (same seed, same masks).
    ``reverse`` (unidirectional only): every layer reads each sequence backwards.

    Returns ``(y, h_n, c_n, ctx)``: y (T, B, D*R) (batch-first if asked), h_n (L*D, B, R),
    c_n (L*D, B, H) or None, ctx (a :class:`StackContext`, None unless ``training``).
    ``ctx.keep_masks`` holds the dropout masks (time-major bools). A training forward stamps
    the contents of ``x``, ``h0``, ``c0`` and the parameters (on their device) and
    :func:`stack_backward` raises ``RuntimeError`` if one was modified in place in between
    (``check_inplace=False`` skips the stamps, for a caller that tracks modifications itself,
    as the torch adapter does with autograd's version counters)."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays keyed by PyTorch's names, got "
                        f"{type(params).__name__}")
    # the context keeps its own dict: the caller may change theirs before backward
    return _forward(_kind(mode, reset_after), mode, x, dict(params), num_layers, bidirectional,
                    reverse, h0, c0, lengths, batch_first, float(dropout),
                    int(seed) & (2**64 - 1), training, bool(check_inplace), _layer)


def _forward(kind, mode, x, params, num_layers, bidirectional, reverse, h0, c0, lengths,
             batch_first, dropout, seed, training, check_inplace, layer):
    """The native call and the context, arguments checked and converted (positional: this runs
    once per cell step in a Python loop)."""
    if type(x) is np.ndarray:  # the common case, without two calls per step
        alloc, stream = None, 0
    else:
        alloc, stream = _allocator(x), _stream(x)
    y, h_n, c_n, reserve, stamps = _C.stack_forward(
        kind, x, params, num_layers, bidirectional, reverse, h0, c0, lengths, batch_first,
        dropout, seed, training, check_inplace, alloc, layer, stream)
    ctx = None
    if training:
        ctx = StackContext(mode, kind, layer, num_layers, bidirectional, reverse, batch_first,
                           dropout, seed, lengths, stamps, x, h0, c0, params, reserve)
    return y, h_n, c_n, ctx


def stack_backward(ctx: StackContext, dy: Optional[Array] = None,
                   dh_n: Optional[Array] = None, dc_n: Optional[Array] = None, *,
                   grads: Optional[Dict[str, Array]] = None
                   ) -> Tuple[Array, Array, Optional[Array], Dict[str, Array]]:
    """BPTT through :func:`stack_forward`. ``dy`` like y, ``dh_n`` like h_n, ``dc_n`` like c_n
    (each None for zero).

    Returns ``(dx, dh0, dc0, grads)`` with ``grads`` keyed by PyTorch's parameter names. When a
    ``grads`` dict of C-contiguous arrays is passed, gradients are *added* into it in place
    (accumulation across calls) and that dict is returned."""
    if not isinstance(ctx, StackContext) or ctx.layer:
        what = "a single-layer forward's context" if isinstance(ctx, StackContext) else \
            type(ctx).__name__
        raise TypeError("stack_backward: ctx must be the context returned by stack_forward with "
                        f"training=True, got {what}")
    return _stack_backward(ctx, dy, dh_n, dc_n, grads)


def _stack_backward(ctx, dy, dh_n, dc_n, grads):
    if ctx.reserve is None:
        raise RuntimeError("stack_backward: this context's arrays were released "
                           "(release_arrays) and not restored")
    # x is the forward's array: its library allocates the gradients; the stream is the one
    # current now (torch runs a backward on the forward's stream, CuPy on the caller's)
    return _C.stack_backward(ctx.kind, ctx.x, ctx.params, ctx.num_layers, ctx.bidirectional,
                             ctx.reverse, ctx.h0, ctx.c0, ctx.lengths, ctx.batch_first,
                             ctx.dropout, ctx.seed, ctx.reserve, ctx.stamps, dy, dh_n, dc_n,
                             grads, _allocator(ctx.x), ctx.layer, _stream(ctx.x))


# ---------------------------------------------------------------------------------------------
# One layer, one direction: a one-layer stack (reverse=True reads the sequences backwards).

_LAYER_NAMES = (("w_ih", "weight_ih_l0"), ("w_hh", "weight_hh_l0"), ("b_ih", "bias_ih_l0"),
                ("b_hh", "bias_hh_l0"), ("w_hr", "weight_hr_l0"))


def _layer_forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, lengths, reverse, training,
                   reset_after=True):
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih and b_hh must be given together or both be None")
    # w_ih and w_hh always (None is reported as a wrong type), the rest when given
    params = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh}
    if b_ih is not None:
        params["bias_ih_l0"] = b_ih
        params["bias_hh_l0"] = b_hh
    if w_hr is not None:
        params["weight_hr_l0"] = w_hr
    return _forward(_kind(mode, reset_after), mode, x, params, 1, False, bool(reverse), h0, c0,
                    lengths, False, 0.0, 0, bool(training), True, True)


def _layer_backward(ctx, fn, modes, dy, dh_n, dc_n):
    if not isinstance(ctx, StackContext) or not ctx.layer:
        raise TypeError(f"{fn}: ctx must be the context returned by a forward call with "
                        f"training=True, got {type(ctx).__name__}")
    if ctx.mode not in modes:
        raise ValueError(f"{fn}: ctx comes from a {ctx.mode!r} forward, expected one of {modes}")
    dx, dh0, dc0, g = _stack_backward(ctx, dy, dh_n, dc_n, None)
    out = {"x": dx, "h0": dh0}
    if dc0 is not None:
        out["c0"] = dc0
    for _, name in _LAYER_NAMES:
        if name in g:
            out[name[:-3]] = g[name]
    return out


_RNN_MODES = {"tanh": "rnn_tanh", "relu": "rnn_relu"}


def rnn_forward(x: Array, w_ih: Array, w_hh: Array, b_ih: Optional[Array] = None,
                b_hh: Optional[Array] = None, h0: Optional[Array] = None, *,
                nonlinearity: str = "tanh", lengths: Optional[Array] = None,
                reverse: bool = False, training: bool = True
                ) -> Tuple[Array, Array, Optional[StackContext]]:
    """Vanilla RNN layer, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Returns ``(y, h_n, ctx)``: y (T, B, H), h_n (B, H)."""
    if nonlinearity not in _RNN_MODES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    y, h_n, _, ctx = _layer_forward(_RNN_MODES[nonlinearity], x, w_ih, w_hh, b_ih, b_hh, h0,
                                    None, None, lengths, reverse, training)
    return y, h_n, ctx


def rnn_backward(ctx: StackContext, dy: Optional[Array] = None,
                 dh_n: Optional[Array] = None) -> Dict[str, Array]:
    """Gradients of :func:`rnn_forward`: dict with x, h0, weight_ih, weight_hh(, biases)."""
    return _layer_backward(ctx, "rnn_backward", ("rnn_tanh", "rnn_relu"), dy, dh_n, None)


def lstm_forward(x: Array, w_ih: Array, w_hh: Array, b_ih: Optional[Array] = None,
                 b_hh: Optional[Array] = None, h0: Optional[Array] = None,
                 c0: Optional[Array] = None, *, w_hr: Optional[Array] = None,
                 lengths: Optional[Array] = None, reverse: bool = False, training: bool = True
                 ) -> Tuple[Array, Array, Array, Optional[StackContext]]:
    """LSTM layer (gates i, f, g, o), optionally with projection ``h = W_hr (o tanh(c))``.

    Returns ``(y, h_n, c_n, ctx)``: y (T, B, R), h_n (B, R), c_n (B, H)."""
    return _layer_forward("lstm", x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, lengths, reverse,
                          training)


def lstm_backward(ctx: StackContext, dy: Optional[Array] = None, dh_n: Optional[Array] = None,
                  dc_n: Optional[Array] = None) -> Dict[str, Array]:
    """Gradients of :func:`lstm_forward`: dict with x, h0, c0, weight_ih, weight_hh
    (, bias_ih, bias_hh, weight_hr)."""
    return _layer_backward(ctx, "lstm_backward", ("lstm",), dy, dh_n, dc_n)


def gru_forward(x: Array, w_ih: Array, w_hh: Array, b_ih: Optional[Array] = None,
                b_hh: Optional[Array] = None, h0: Optional[Array] = None, *,
                reset_after: bool = True, lengths: Optional[Array] = None,
                reverse: bool = False, training: bool = True
                ) -> Tuple[Array, Array, Optional[StackContext]]:
    """GRU layer (gates r, z, n). ``reset_after=True`` is PyTorch's/cuDNN's form,
    ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``; ``False`` is the original form,
    ``n = tanh(W_in x + b_in + W_hn (r h) + b_hn)``.

    Returns ``(y, h_n, ctx)``: y (T, B, H), h_n (B, H)."""
    y, h_n, _, ctx = _layer_forward("gru", x, w_ih, w_hh, b_ih, b_hh, h0, None, None, lengths,
                                    reverse, training, reset_after=reset_after)
    return y, h_n, ctx


def gru_backward(ctx: StackContext, dy: Optional[Array] = None,
                 dh_n: Optional[Array] = None) -> Dict[str, Array]:
    """Gradients of :func:`gru_forward`: dict with x, h0, weight_ih, weight_hh(, biases)."""
    return _layer_backward(ctx, "gru_backward", ("gru",), dy, dh_n, None)
