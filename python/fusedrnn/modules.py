"""NumPy modules with the interface of ``torch.nn.RNN/LSTM/GRU`` and their cells.

Constructor arguments, defaults, parameter names and shapes follow PyTorch, so a PyTorch
``state_dict`` loads unchanged. The whole stack runs in one native call
(:func:`fusedrnn.functional.stack_forward`); this file is bookkeeping only.

Training interface (no autograd here, explicit backward)::

    lstm = fusedrnn.LSTM(64, 256, num_layers=2, bidirectional=True)   # eval mode
    lstm.train()
    y, (h_n, c_n) = lstm(x, lengths=L)          # keeps what backward needs
    dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))
    lstm.grads["weight_ih_l0"]                  # accumulates until lstm.zero_grad()

Unlike ``torch.nn``, a new module starts in eval mode (inference saves nothing); call
``train()`` or pass ``need_grad=True`` to a forward call to be able to run backward.
"""

from __future__ import annotations

import numpy as np

from fusedrnn import functional as F
from fusedrnn.nn import Module, _float_dtype, _make_rng

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "from_torch"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_FUNCTIONAL_MODE = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}


def _as_dtype(dtype):
    if dtype is None:
        return np.dtype(np.float32)
    if type(dtype).__module__.startswith("torch"):  # torch.float32 / torch.float64
        dtype = {"float": "float32", "double": "float64"}.get(str(dtype)[6:], str(dtype)[6:])
    try:
        return _float_dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}") from None


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class _ParamModule(Module):
    """fusedrnn.nn.Module with PyTorch's RNN initialisation; starts in eval mode."""

    def _init_params(self, shapes, rng):
        Module.__init__(self)
        bound = 1.0 / np.sqrt(self.hidden_size)  # PyTorch's default for RNNs and their cells
        for name, shape in shapes.items():
            self._register_parameter(name, rng.uniform(-bound, bound, shape).astype(self.dtype))
        self.training = False


class _RNNBase(_ParamModule):
    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, dtype=None,
                 *, reset_after=True, seed=None, rng=None):
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers), ("proj_size", proj_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError("input_size, hidden_size and num_layers must be >= 1, got "
                             f"{input_size}, {hidden_size}, {num_layers}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if proj_size < 0:
            raise ValueError(f"proj_size must be >= 0, got {proj_size}")
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size is only supported by LSTM")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got {proj_size} "
                             f">= {hidden_size}")
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = int(proj_size)
        self.reset_after = bool(reset_after)
        self.dtype = _as_dtype(dtype)
        self._rng = _make_rng(rng, seed)
        self._ctx = None
        G, H = _GATES[mode], self.hidden_size
        R = self.proj_size or H
        D = 2 if self.bidirectional else 1
        shapes = {}
        for layer in range(self.num_layers):
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                in_l = self.input_size if layer == 0 else D * R
                shapes["weight_ih" + sfx] = (G * H, in_l)
                shapes["weight_hh" + sfx] = (G * H, R)
                if self.bias:
                    shapes["bias_ih" + sfx] = (G * H,)
                    shapes["bias_hh" + sfx] = (G * H,)
                if self.proj_size:
                    shapes["weight_hr" + sfx] = (self.proj_size, H)
        self._init_params(shapes, self._rng)

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def __repr__(self):
        args = [str(self.input_size), str(self.hidden_size)]
        if self.num_layers != 1:
            args.append(f"num_layers={self.num_layers}")
        if self.mode == "RNN_RELU":
            args.append("nonlinearity='relu'")
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                args.append(f"{name}={getattr(self, name)}")
        if self.mode == "GRU" and not self.reset_after:
            args.append("reset_after=False")
        return f"{type(self).__name__}({', '.join(args)})"

    # -- forward / backward -------------------------------------------------------------------

    def _check_state(self, name, state, batch, width, unbatched):
        if state is None:
            return None
        state = _to_numpy(state)
        LD = self.num_layers * self.num_directions
        want = (LD, width) if unbatched else (LD, batch, width)
        if state.shape != want:
            raise ValueError(f"{name} must have shape {want} (num_layers*num_directions, "
                             f"{'' if unbatched else 'batch, '}"
                             f"{'proj_size' if name == 'h0' and self.proj_size else 'hidden_size'})"
                             f", got {state.shape}")
        return state[:, None] if unbatched else state

    def forward(self, x, hx=None, *, lengths=None, need_grad=None):
        """Runs the stack. ``x``: (T, B, input_size), (B, T, input_size) with ``batch_first``,
        or unbatched (T, input_size). ``hx``: h0 (L*D, B, R), or (h0, c0) for the LSTM with
        c0 (L*D, B, H) (no batch axis for unbatched input). ``lengths``: (B,) valid steps per
        sequence, any order. Keeps what backward needs in training mode or with
        ``need_grad=True``.

        Returns ``(y, h_n)``, or ``(y, (h_n, c_n))`` for the LSTM: y (T, B, D*R)."""
        x = _to_numpy(x)
        if x.ndim not in (2, 3):
            raise ValueError(f"x must be 3-D (T, B, input_size) or 2-D unbatched (T, "
                             f"input_size), got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x.shape[-1] must equal input_size = {self.input_size}, got "
                             f"{x.shape[-1]}")
        if x.dtype != self.dtype:
            raise TypeError(f"x must have dtype {self.dtype} like the module's parameters, got "
                            f"{x.dtype}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None] if not self.batch_first else x[None]
            if lengths is not None:
                raise ValueError("lengths needs batched input")
        batch = x.shape[0] if self.batch_first else x.shape[1]
        R = self.proj_size or self.hidden_size
        is_lstm = self.mode == "LSTM"
        h0 = c0 = None
        if hx is not None:
            if is_lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError("hx must be a tuple (h0, c0) for the LSTM")
                h0 = self._check_state("h0", hx[0], batch, R, unbatched)
                c0 = self._check_state("c0", hx[1], batch, self.hidden_size, unbatched)
            else:
                h0 = self._check_state("h0", hx, batch, R, unbatched)
        keep = self.training if need_grad is None else bool(need_grad)
        seed = int(self._rng.integers(0, 2**63)) if (self.training and self.dropout) else 0
        y, h_n, c_n, ctx = F.stack_forward(
            _FUNCTIONAL_MODE[self.mode], x, self._parameters, num_layers=self.num_layers,
            bidirectional=self.bidirectional, h0=h0, c0=c0, lengths=lengths,
            batch_first=self.batch_first, dropout=self.dropout if self.training else 0.0,
            seed=seed, reset_after=self.reset_after, training=keep)
        self._ctx = (ctx, unbatched) if keep else None
        if unbatched:
            y = y[:, 0] if not self.batch_first else y[0]
            h_n = h_n[:, 0]
            c_n = c_n[:, 0] if c_n is not None else None
        return (y, (h_n, c_n)) if is_lstm else (y, h_n)

    __call__ = forward

    def backward(self, dy, dstate=None):
        """BPTT through the last forward call that kept its state. ``dy`` like y (None for
        zero); ``dstate``: dh_n, or (dh_n, dc_n) for the LSTM (None for zero). Adds the
        parameter gradients into :attr:`grads`.

        Returns ``(dx, dh0)``, or ``(dx, (dh0, dc0))`` for the LSTM."""
        if self._ctx is None:
            raise RuntimeError("backward needs a forward call in training mode (module.train()) "
                               "or with need_grad=True")
        ctx, unbatched = self._ctx
        is_lstm = self.mode == "LSTM"
        dh_n = dc_n = None
        if dstate is not None:
            if is_lstm:
                if not isinstance(dstate, (tuple, list)) or len(dstate) != 2:
                    raise TypeError("dstate must be a tuple (dh_n, dc_n) for the LSTM")
                dh_n, dc_n = dstate
            else:
                dh_n = dstate
        if unbatched:
            def expand(name, a, ndim, axis):
                if a is None:
                    return None
                a = _to_numpy(a)
                if a.ndim != ndim:
                    raise ValueError(f"{name} must be {ndim}-D for unbatched input (like the "
                                     f"forward's output), got shape {a.shape}")
                return np.expand_dims(a, axis)
            dh_n = expand("dh_n", dh_n, 2, 1)
            dc_n = expand("dc_n", dc_n, 2, 1)
            dy = expand("dy", dy, 2, 0 if self.batch_first else 1)
        dx, dh0, dc0, _ = F.stack_backward(ctx, dy, dh_n, dc_n, grads=self.grads)
        if unbatched:
            dx = dx[:, 0] if not self.batch_first else dx[0]
            dh0 = dh0[:, 0]
            dc0 = dc0[:, 0] if dc0 is not None else None
        return (dx, (dh0, dc0)) if is_lstm else (dx, dh0)

    # -- PyTorch interop ----------------------------------------------------------------------

    def to_torch(self):
        """An equivalent ``torch.nn.RNN/LSTM/GRU`` with the same weights (imports torch)."""
        import torch

        if self.mode == "GRU" and not self.reset_after:
            raise ValueError("torch.nn.GRU has no reset_after=False form")
        kw = dict(num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                  dropout=self.dropout, bidirectional=self.bidirectional,
                  dtype=torch.float64 if self.dtype == np.float64 else torch.float32)
        if self.mode == "LSTM":
            m = torch.nn.LSTM(self.input_size, self.hidden_size, proj_size=self.proj_size, **kw)
        elif self.mode == "GRU":
            m = torch.nn.GRU(self.input_size, self.hidden_size, **kw)
        else:
            m = torch.nn.RNN(self.input_size, self.hidden_size,
                             nonlinearity="tanh" if self.mode == "RNN_TANH" else "relu", **kw)
        m.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self._parameters.items()})
        return m.train(self.training)


class RNN(_RNNBase):
    """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``; ``nonlinearity`` 'tanh'/'relu'.
    Arguments as ``torch.nn.RNN`` plus ``seed``/``rng`` for the initialisation."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=None, *, seed=None,
                 rng=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         dtype, seed=seed, rng=rng)

    @property
    def nonlinearity(self):
        return "tanh" if self.mode == "RNN_TANH" else "relu"


class LSTM(_RNNBase):
    """LSTM (gates i, f, g, o), optional projection ``proj_size``. Arguments as
    ``torch.nn.LSTM`` plus ``seed``/``rng`` for the initialisation."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, dtype=None, *, seed=None,
                 rng=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, dtype, seed=seed, rng=rng)


class GRU(_RNNBase):
    """GRU (gates r, z, n). ``reset_after=True`` is PyTorch's/cuDNN's form; ``False`` the
    original Cho et al. form (no PyTorch equivalent). Arguments as ``torch.nn.GRU`` plus
    ``reset_after`` and ``seed``/``rng``."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=None, *, reset_after=True, seed=None,
                 rng=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, dtype, reset_after=reset_after, seed=seed, rng=rng)


# ---------------------------------------------------------------------------------------------
# Cells: one fused step. Each training-mode call pushes its context; backward pops the latest,
# so BPTT through a Python loop of steps runs backward calls in reverse order.
# ---------------------------------------------------------------------------------------------

class _CellBase(_ParamModule):
    def __init__(self, mode, input_size, hidden_size, bias=True, dtype=None, *,
                 reset_after=True, seed=None, rng=None):
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.bias = bool(bias)
        self.reset_after = bool(reset_after)
        self.dtype = _as_dtype(dtype)
        self._stack = []
        G, H = _GATES[mode], self.hidden_size
        shapes = {"weight_ih": (G * H, self.input_size), "weight_hh": (G * H, H)}
        if self.bias:
            shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
        self._init_params(shapes, _make_rng(rng, seed))

    def __repr__(self):
        extra = "" if self.bias else ", bias=False"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra})"

    def _prepare(self, x, state, name):
        x = _to_numpy(x)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (batch, {self.input_size}) or "
                             f"({self.input_size},), got {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"x must have dtype {self.dtype}, got {x.dtype}")
        unbatched = x.ndim == 1
        xb = x[None] if unbatched else x
        if state is not None:
            state = _to_numpy(state)
            want = (self.hidden_size,) if unbatched else (xb.shape[0], self.hidden_size)
            if state.shape != want:
                raise ValueError(f"{name} must have shape {want}, got {state.shape}")
            state = state[None] if unbatched else state
        return xb[None], state, unbatched  # x as a T=1 sequence

    def _run(self, x, h, c=None, need_grad=None):
        kw = dict(training=self.training if need_grad is None else bool(need_grad))
        w = self._parameters
        b_ih, b_hh = w.get("bias_ih"), w.get("bias_hh")
        if self.mode == "LSTM":
            y, h1, c1, ctx = F.lstm_forward(x, w["weight_ih"], w["weight_hh"], b_ih, b_hh, h, c,
                                            **kw)
        elif self.mode == "GRU":
            y, h1, ctx = F.gru_forward(x, w["weight_ih"], w["weight_hh"], b_ih, b_hh, h,
                                       reset_after=self.reset_after, **kw)
            c1 = None
        else:
            y, h1, ctx = F.rnn_forward(x, w["weight_ih"], w["weight_hh"], b_ih, b_hh, h,
                                       nonlinearity="tanh" if self.mode == "RNN_TANH" else "relu",
                                       **kw)
            c1 = None
        return h1, c1, ctx

    def _latest(self):
        """The newest kept context; backward pops it only once it has succeeded, so a rejected
        call leaves the cell as it was."""
        if not self._stack:
            raise RuntimeError("backward needs a forward call in training mode (cell.train()) or "
                               "with need_grad=True, one per backward call")
        return self._stack[-1]

    def _accumulate(self, g):
        for name in self.grads:
            self.grads[name] += g[name]

    def to_torch(self):
        """An equivalent ``torch.nn`` cell with the same weights (imports torch)."""
        import torch

        if self.mode == "GRU" and not self.reset_after:
            raise ValueError("torch.nn.GRUCell has no reset_after=False form")
        dt = torch.float64 if self.dtype == np.float64 else torch.float32
        if self.mode == "LSTM":
            m = torch.nn.LSTMCell(self.input_size, self.hidden_size, self.bias, dtype=dt)
        elif self.mode == "GRU":
            m = torch.nn.GRUCell(self.input_size, self.hidden_size, self.bias, dtype=dt)
        else:
            m = torch.nn.RNNCell(self.input_size, self.hidden_size, self.bias,
                                 "tanh" if self.mode == "RNN_TANH" else "relu", dtype=dt)
        m.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self._parameters.items()})
        return m.train(self.training)

    def clear_saved(self):
        """Drops the contexts kept by training-mode calls that will not be back-propagated."""
        self._stack.clear()


class _SingleStateCell(_CellBase):
    def forward(self, x, hx=None, *, need_grad=None):
        """One step. ``x``: (B, input_size) or (input_size,); ``hx``: (B, H) or (H,).
        Returns h' like hx."""
        xb, h, unbatched = self._prepare(x, hx, "hx")
        h1, _, ctx = self._run(xb, h, need_grad=need_grad)
        if ctx is not None:
            self._stack.append((ctx, unbatched))
        return h1[0] if unbatched else h1

    __call__ = forward

    def backward(self, dh):
        """Back-propagates the most recent kept step: ``dh`` like h'. Adds parameter gradients
        into :attr:`grads`. Returns ``(dx, dh_prev)``."""
        ctx, unbatched = self._latest()
        dh = _to_numpy(dh)
        dh = dh[None] if unbatched else dh
        fn = F.gru_backward if self.mode == "GRU" else F.rnn_backward
        g = fn(ctx, None, dh)
        self._stack.pop()
        self._accumulate({k: v for k, v in g.items() if k.startswith(("weight", "bias"))})
        dx, dh0 = g["x"][0], g["h0"]
        return (dx[0], dh0[0]) if unbatched else (dx, dh0)


class RNNCell(_SingleStateCell):
    """One step of an Elman RNN (``torch.nn.RNNCell``)."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", dtype=None, *,
                 seed=None, rng=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, bias, dtype, seed=seed, rng=rng)


class GRUCell(_SingleStateCell):
    """One step of a GRU (``torch.nn.GRUCell``; ``reset_after=False`` for the original form)."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=None, *, reset_after=True,
                 seed=None, rng=None):
        super().__init__("GRU", input_size, hidden_size, bias, dtype, reset_after=reset_after,
                         seed=seed, rng=rng)


class LSTMCell(_CellBase):
    """One step of an LSTM (``torch.nn.LSTMCell``)."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=None, *, seed=None, rng=None):
        super().__init__("LSTM", input_size, hidden_size, bias, dtype, seed=seed, rng=rng)

    def forward(self, x, hx=None, *, need_grad=None):
        """One step. ``x``: (B, input_size) or (input_size,); ``hx``: (h, c), each (B, H) or
        (H,). Returns (h', c')."""
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError("hx must be a tuple (h, c) for LSTMCell")
        xb, h, unbatched = self._prepare(x, None if hx is None else hx[0], "h")
        c = None if hx is None else self._prepare(x, hx[1], "c")[1]
        h1, c1, ctx = self._run(xb, h, c, need_grad=need_grad)
        if ctx is not None:
            self._stack.append((ctx, unbatched))
        return (h1[0], c1[0]) if unbatched else (h1, c1)

    __call__ = forward

    def backward(self, dh, dc=None):
        """Back-propagates the most recent kept step. Returns ``(dx, (dh_prev, dc_prev))``."""
        ctx, unbatched = self._latest()
        dh = _to_numpy(dh)
        dc = None if dc is None else _to_numpy(dc)
        if unbatched:
            dh = dh[None]
            dc = None if dc is None else dc[None]
        g = F.lstm_backward(ctx, None, dh, dc)
        self._stack.pop()
        self._accumulate({k: v for k, v in g.items() if k.startswith(("weight", "bias"))})
        dx, dh0, dc0 = g["x"][0], g["h0"], g["c0"]
        return (dx[0], (dh0[0], dc0[0])) if unbatched else (dx, (dh0, dc0))


def from_torch(module):
    """The fusedrnn equivalent of a ``torch.nn.RNN/LSTM/GRU/RNNCell/LSTMCell/GRUCell``, with its
    weights copied (float32 or float64)."""
    name = type(module).__name__
    dtype = next(module.parameters()).dtype
    dt = np.float64 if str(dtype) == "torch.float64" else np.float32
    sd = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    if name in ("LSTM", "GRU", "RNN"):
        kw = dict(num_layers=module.num_layers, bias=module.bias,
                  batch_first=module.batch_first, dropout=module.dropout,
                  bidirectional=module.bidirectional, dtype=dt)
        if name == "LSTM":
            m = LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **kw)
        elif name == "GRU":
            m = GRU(module.input_size, module.hidden_size, **kw)
        else:
            m = RNN(module.input_size, module.hidden_size, nonlinearity=module.nonlinearity, **kw)
    elif name in ("LSTMCell", "GRUCell", "RNNCell"):
        kw = dict(bias=module.bias, dtype=dt)
        if name == "RNNCell":
            kw["nonlinearity"] = module.nonlinearity
        m = {"LSTMCell": LSTMCell, "GRUCell": GRUCell, "RNNCell": RNNCell}[name](
            module.input_size, module.hidden_size, **kw)
    else:
        raise TypeError(f"from_torch: expected torch.nn.RNN/LSTM/GRU or a cell, got {name}")
    m.load_state_dict(sd)
    return m.train(module.training)
