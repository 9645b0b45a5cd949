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

On a GPU (a fusedrnn built with CUDA, :func:`fusedrnn.cuda.is_available`, and CuPy installed),
``module.to("cuda")`` makes the parameters and their gradients CuPy arrays on the device;
forward, backward, ``zero_grad``, ``state_dict``/``load_state_dict`` and ``to_torch`` then work
on CuPy arrays, and ``module.to("cpu")`` brings everything back to NumPy. ``fusedrnn.optim``,
``fusedrnn.optim.clip_grad_*`` and the ``fusedrnn.nn`` layers are NumPy-only.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Tuple, Union

import numpy as np

from fusedrnn import cuda as _cuda
from fusedrnn import functional as F
from fusedrnn.nn import Module, _float_dtype, _make_rng
from fusedrnn.spec import (TORCH_MODES, CellSpec, CellSpecFields, RNNSpec, RNNSpecFields,
                           reject_proj_size,
                           rnn_mode, split_state)

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "from_torch"]

State = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]


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


def _expand(a, axis):
    """``np.expand_dims(a, axis)`` for NumPy and CuPy arrays alike (a view)."""
    return a[(slice(None),) * axis + (None,)]


def _import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise ImportError("module.to('cuda') keeps the parameters as CuPy arrays, and CuPy is "
                          "not installed: pip install the CuPy wheel of your CUDA version "
                          "(cupy-cuda12x, cupy-cuda13x)") from e
    return cupy


def _parse_device(device):
    """("cpu", None) or ("cuda", index or None) from "cpu", "cuda", "cuda:N" (or an object whose
    str() is one, such as a torch.device)."""
    text = str(device)
    if text == "cpu":
        return "cpu", None
    if text == "cuda":
        return "cuda", None
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


class _ParamModule(Module, CellSpecFields):
    """fusedrnn.nn.Module with PyTorch's RNN initialisation; starts in eval mode. ``spec``
    (:mod:`fusedrnn.spec`) holds the configuration; ``input_size`` ... read it."""

    def _init_params(self, dtype, rng):
        Module.__init__(self)
        self.dtype = _as_dtype(dtype)
        bound = 1.0 / np.sqrt(self.hidden_size)  # PyTorch's default for RNNs and their cells
        for name, shape in self.spec.param_shapes().items():
            self._register_parameter(name, rng.uniform(-bound, bound, shape).astype(self.dtype))
        self.training = False
        self._device = "cpu"

    # -- devices ------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        """Where the parameters are: "cpu" (NumPy arrays) or "cuda:N" (CuPy arrays)."""
        return self._device

    def to(self, device):
        """Moves the parameters and their gradients to ``device`` and returns self: "cpu"
        (NumPy arrays) or "cuda" / "cuda:N" (CuPy arrays on that device; "cuda" is CuPy's
        current device). Needs a fusedrnn built with CUDA and a GPU (``RuntimeError`` otherwise,
        saying which is missing) and CuPy (``ImportError``).

        A move replaces the parameter and gradient arrays (on the same device nothing
        changes): build optimizers and :func:`fusedrnn.nn.collect_parameters` views after it,
        and note that ``fusedrnn.optim`` is NumPy-only. The state a training-mode forward kept
        for ``backward`` is dropped (run the forward again). On a CUDA device the module takes
        and returns CuPy arrays on that device, and ``state_dict()`` holds CuPy copies."""
        kind, index = _parse_device(device)
        if kind == "cpu":
            target = "cpu"

            def move(a):
                return a if isinstance(a, np.ndarray) else a.get()  # CuPy -> NumPy
        else:
            if not _cuda.is_available():
                raise RuntimeError(f"{type(self).__name__}.to({device!r}): "
                                   f"{_cuda._why_unavailable()}")
            cupy = _import_cupy()
            if index is None:
                index = cupy.cuda.Device().id
            count = _cuda.device_count()
            if index >= count:
                raise ValueError(f"{type(self).__name__}.to({device!r}): this process sees "
                                 f"{count} CUDA device{'' if count == 1 else 's'}")
            target = f"cuda:{index}"

            def move(a):
                if isinstance(a, cupy.ndarray) and a.device.id == index:
                    return a
                with cupy.cuda.Device(index):  # copy() also copies from another device
                    return cupy.asarray(a) if isinstance(a, np.ndarray) else a.copy()
        if target == self._device:
            return self
        for name, p in list(self._parameters.items()):
            self._parameters[name] = move(p)
        for name, g in list(self.grads.items()):
            self.grads[name] = None if g is None else move(g)
        self._drop_saved()
        self._device = target
        return self

    def cuda(self, device: Optional[int] = None):
        """``to("cuda")`` (or ``to(f"cuda:{device}")``)."""
        return self.to("cuda" if device is None else f"cuda:{int(device)}")

    def cpu(self):
        """``to("cpu")``."""
        return self.to("cpu")

    def _drop_saved(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _as_array(self, value, name):
        """``value`` as an array of the parameters' kind: NumPy on the CPU (torch tensors are
        copied to NumPy; a CuPy array raises), a CuPy array on the module's device for a CUDA
        module (anything else raises: no implicit copies to the device)."""
        owner = type(self).__name__
        if self._device == "cpu":
            if not hasattr(value, "detach") and hasattr(value, "__cuda_array_interface__"):
                raise ValueError(f"{owner}: {name} is a {type(value).__name__} on a CUDA device "
                                 f"but the module is on cpu: move the module with "
                                 f".to('cuda'), or the array to the host")
            return _to_numpy(value)
        cupy = sys.modules["cupy"]  # imported by to()
        if value is None:
            raise ValueError(f"{owner}: {name} must be a CuPy array, got None")
        if not isinstance(value, cupy.ndarray):
            raise ValueError(f"{owner}: {name} is a {type(value).__name__} but the module is on "
                             f"{self._device}: pass a CuPy array on that device (cupy.asarray), "
                             f"or move the module with .to('cpu')")
        if f"cuda:{value.device.id}" != self._device:
            raise ValueError(f"{owner}: {name} is on cuda:{value.device.id} but the module is "
                             f"on {self._device}")
        return value

    def _as_optional(self, value, name):
        return None if value is None else self._as_array(value, name)

    def load_state_dict(self, state_dict, strict: bool = True):
        """As :meth:`fusedrnn.nn.Module.load_state_dict`; values (NumPy, torch or CuPy arrays)
        are copied onto the module's device."""
        if self._device == "cpu":
            return super().load_state_dict(state_dict, strict)
        from fusedrnn.nn import _check_state_dict

        cupy = sys.modules["cupy"]
        checked = _check_state_dict(dict(self.named_parameters()), state_dict, strict)
        for k, v in checked.items():
            p = self._parameters[k]
            with cupy.cuda.Device(p.device.id):
                p[...] = cupy.asarray(v, dtype=p.dtype)

    @property
    def mode(self) -> str:
        """torch.nn's mode name: 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU'."""
        return TORCH_MODES[self.spec.mode]

    def _torch_class(self, torch, cell):
        """The torch.nn class and its dtype keyword for :meth:`to_torch`."""
        name = {"lstm": "LSTM", "gru": "GRU"}.get(self.spec.mode, "RNN") + ("Cell" if cell else "")
        if self.spec.mode == "gru" and not self.reset_after:
            raise ValueError(f"torch.nn.{name} has no reset_after=False form")
        kw = dict(dtype=torch.float64 if self.dtype == np.float64 else torch.float32)
        if self.spec.nonlinearity:
            kw["nonlinearity"] = self.spec.nonlinearity
        return getattr(torch.nn, name), kw

    def _load_into(self, m):
        import torch

        host = {k: v.copy() if isinstance(v, np.ndarray) else v.get()
                for k, v in self._parameters.items()}
        m.load_state_dict({k: torch.from_numpy(v) for k, v in host.items()})
        if self._device != "cpu":
            m.to(self._device)
        return m.train(self.training)


class _RNNBase(_ParamModule, RNNSpecFields):

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, dtype=None, *,
                 reset_after: bool = True, seed=None, rng=None):
        self.spec = RNNSpec(mode, input_size, hidden_size, num_layers, bias, batch_first,
                            dropout, bidirectional, proj_size, reset_after)
        self._rng = _make_rng(rng, seed)
        self._ctx = None
        self._init_params(dtype, self._rng)

    def _drop_saved(self):
        self._ctx = None

    @property
    def num_directions(self) -> int:
        return self.spec.num_directions

    def __repr__(self):
        return f"{type(self).__name__}({self.spec.extra_repr(nonlinearity=True)})"

    # -- forward / backward -------------------------------------------------------------------

    def forward(self, x, hx: Optional[State] = None, *, lengths=None,
                need_grad: Optional[bool] = None):
        """Runs the stack. ``x``: (T, B, input_size), (B, T, input_size) with ``batch_first``,
        or unbatched (T, input_size). ``hx``: h0 (L*D, B, R), or (h0, c0) for the LSTM with
        c0 (L*D, B, H) (no batch axis for unbatched input). ``lengths``: (B,) valid steps per
        sequence, any order. Keeps what backward needs in training mode or with
        ``need_grad=True``.

        Returns ``(y, h_n)``, or ``(y, (h_n, c_n))`` for the LSTM: y (T, B, D*R)."""
        spec = self.spec
        h0, c0 = spec.split_hx(hx, type(self).__name__)
        x, h0, c0 = (self._as_array(x, "x"), self._as_optional(h0, "h0"),
                     self._as_optional(c0, "c0"))
        batched, _ = spec.check_forward(x, h0, c0, owner=type(self).__name__, style="numpy")
        if x.dtype != self.dtype:
            raise TypeError(f"x must have dtype {self.dtype} like the module's parameters, got "
                            f"{x.dtype}")
        if not batched:
            if lengths is not None:
                raise ValueError("lengths needs batched input")
            x = _expand(x, spec.batch_axis)
            h0 = None if h0 is None else h0[:, None]
            c0 = None if c0 is None else c0[:, None]
        keep = self.training if need_grad is None else bool(need_grad)
        seed = int(self._rng.integers(0, 2**63)) if self._draws_masks() else 0
        y, h_n, c_n, ctx = self._run_forward(x, h0, c0, lengths, seed, keep)
        self._ctx = (ctx, not batched) if keep else None
        if not batched:
            y = y[0] if spec.batch_first else y[:, 0]
            h_n = h_n[:, 0]
            c_n = c_n[:, 0] if c_n is not None else None
        return (y, (h_n, c_n)) if spec.is_lstm else (y, h_n)

    __call__ = forward

    def backward(self, dy, dstate: Optional[State] = None):
        """BPTT through the last forward call that kept its state. ``dy`` like y (None for
        zero); ``dstate``: dh_n, or (dh_n, dc_n) for the LSTM (None for zero), shaped like the
        forward's h_n/c_n. Adds the parameter gradients into :attr:`grads`.

        Returns ``(dx, dh0)``, or ``(dx, (dh0, dc0))`` for the LSTM."""
        if self._ctx is None:
            raise RuntimeError("backward needs a forward call in training mode (module.train()) "
                               "or with need_grad=True")
        ctx, unbatched = self._ctx
        spec = self.spec
        dh_n, dc_n = spec.split_hx(dstate, type(self).__name__, label="dstate",
                                   names=("dh_n", "dc_n"))
        if unbatched:
            def expand(name, a, axis):
                if a is None:
                    return None
                a = self._as_array(a, name)
                if a.ndim != 2:
                    raise ValueError(f"{name} must be 2-D for unbatched input (like the "
                                     f"forward's output), got shape {a.shape}")
                return _expand(a, axis)
            dh_n = expand("dh_n", dh_n, 1)
            dc_n = expand("dc_n", dc_n, 1)
            dy = expand("dy", dy, spec.batch_axis)
        dx, dh0, dc0 = self._run_backward(ctx, dy, dh_n, dc_n)
        if unbatched:
            dx = dx[0] if spec.batch_first else dx[:, 0]
            dh0 = dh0[:, 0]
            dc0 = dc0[:, 0] if dc0 is not None else None
        return (dx, (dh0, dc0)) if spec.is_lstm else (dx, dh0)

    def _draws_masks(self) -> bool:
        """Whether this forward draws random masks (a seed from the module's generator)."""
        return bool(self.training and self.spec.dropout)

    def _run_forward(self, x, h0, c0, lengths, seed, keep):
        """The native stack on prepared arrays: (y, h_n, c_n, ctx or None)."""
        spec = self.spec
        return F.stack_forward(
            spec.mode, x, self._parameters, num_layers=spec.num_layers,
            bidirectional=spec.bidirectional, h0=h0, c0=c0, lengths=lengths,
            batch_first=spec.batch_first, dropout=spec.dropout if self.training else 0.0,
            seed=seed, reset_after=spec.reset_after, training=keep)

    def _run_backward(self, ctx, dy, dh_n, dc_n):
        """BPTT through ctx, parameter gradients added into ``grads``: (dx, dh0, dc0)."""
        dx, dh0, dc0, _ = F.stack_backward(ctx, dy, dh_n, dc_n, grads=self.grads)
        return dx, dh0, dc0

    # -- PyTorch interop ----------------------------------------------------------------------

    def to_torch(self):
        """An equivalent ``torch.nn.RNN/LSTM/GRU`` with the same weights (imports torch)."""
        import torch

        spec = self.spec
        cls, kw = self._torch_class(torch, cell=False)
        kw.update(num_layers=spec.num_layers, bias=spec.bias, batch_first=spec.batch_first,
                  dropout=spec.dropout, bidirectional=spec.bidirectional)
        if spec.is_lstm:
            kw["proj_size"] = spec.proj_size
        return self._load_into(cls(spec.input_size, spec.hidden_size, **kw))


class RNN(_RNNBase):
    """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``; ``nonlinearity`` 'tanh'/'relu'.
    Arguments as ``torch.nn.RNN`` plus ``seed``/``rng`` for the initialisation."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, dtype=None, *, seed=None,
                 rng=None, **kwargs):
        reject_proj_size(kwargs, "RNN")
        super().__init__(rnn_mode(nonlinearity), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, dtype, seed=seed, rng=rng)

    @property
    def nonlinearity(self) -> str:
        return self.spec.nonlinearity


class LSTM(_RNNBase):
    """LSTM (gates i, f, g, o), optional projection ``proj_size``. Arguments as
    ``torch.nn.LSTM`` plus ``seed``/``rng`` for the initialisation."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, dtype=None, *, seed=None,
                 rng=None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, dtype, seed=seed, rng=rng)


class GRU(_RNNBase):
    """GRU (gates r, z, n). ``reset_after=True`` is PyTorch's/cuDNN's form; ``False`` the
    original Cho et al. form (no PyTorch equivalent). Arguments as ``torch.nn.GRU`` plus
    ``reset_after`` and ``seed``/``rng``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype=None, *, reset_after: bool = True,
                 seed=None, rng=None, **kwargs):
        reject_proj_size(kwargs, "GRU")
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, dtype, reset_after=reset_after, seed=seed, rng=rng)


# ---------------------------------------------------------------------------------------------
# Cells: one fused step. Each training-mode call pushes its context; backward pops the latest,
# so BPTT through a Python loop of steps runs backward calls in reverse order.
# ---------------------------------------------------------------------------------------------

class _CellBase(_ParamModule):
    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True,
                 dtype=None, *, reset_after: bool = True, seed=None, rng=None):
        self.spec = CellSpec(mode, input_size, hidden_size, bias, reset_after)
        self._stack = []
        self._init_params(dtype, _make_rng(rng, seed))

    def __repr__(self):
        return f"{type(self).__name__}({self.spec.extra_repr()})"

    def _prepare(self, x, states, labels):
        """x as a (1, B, I) sequence, the states as (B, H) arrays, and whether x was
        unbatched."""
        x = self._as_array(x, "x")
        states = [self._as_optional(s, label) for s, label in zip(states, labels)]
        batched = self.spec.check_step(x, states, owner=type(self).__name__, style="numpy",
                                       labels=labels)
        if x.dtype != self.dtype:
            raise TypeError(f"x must have dtype {self.dtype}, got {x.dtype}")
        if not batched:
            x = x[None]
            states = [None if s is None else s[None] for s in states]
        return x[None], states, not batched

    def _run(self, x, h, c=None, need_grad=None):
        kw = dict(training=self.training if need_grad is None else bool(need_grad))
        w, spec = self._parameters, self.spec
        b_ih, b_hh = w.get("bias_ih"), w.get("bias_hh")
        if spec.is_lstm:
            y, h1, c1, ctx = F.lstm_forward(x, w["weight_ih"], w["weight_hh"], b_ih, b_hh, h, c,
                                            **kw)
        elif spec.mode == "gru":
            y, h1, ctx = F.gru_forward(x, w["weight_ih"], w["weight_hh"], b_ih, b_hh, h,
                                       reset_after=spec.reset_after, **kw)
            c1 = None
        else:
            y, h1, ctx = F.rnn_forward(x, w["weight_ih"], w["weight_hh"], b_ih, b_hh, h,
                                       nonlinearity=spec.nonlinearity, **kw)
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

        cls, kw = self._torch_class(torch, cell=True)
        return self._load_into(cls(self.input_size, self.hidden_size, self.bias, **kw))

    def clear_saved(self) -> None:
        """Drops the contexts kept by training-mode calls that will not be back-propagated."""
        self._stack.clear()

    _drop_saved = clear_saved


class _SingleStateCell(_CellBase):
    def forward(self, x, hx=None, *, need_grad: Optional[bool] = None):
        """One step. ``x``: (B, input_size) or (input_size,); ``hx``: (B, H) or (H,).
        Returns h' like hx."""
        xb, (h,), unbatched = self._prepare(x, [hx], ["hx"])
        h1, _, ctx = self._run(xb, h, need_grad=need_grad)
        if ctx is not None:
            self._stack.append((ctx, unbatched))
        return h1[0] if unbatched else h1

    __call__ = forward

    def backward(self, dh):
        """Back-propagates the most recent kept step: ``dh`` like h'. Adds parameter gradients
        into :attr:`grads`. Returns ``(dx, dh_prev)``."""
        ctx, unbatched = self._latest()
        dh = self._as_array(dh, "dh")
        dh = dh[None] if unbatched else dh
        fn = F.gru_backward if self.spec.mode == "gru" else F.rnn_backward
        g = fn(ctx, None, dh)
        self._stack.pop()
        self._accumulate({k: v for k, v in g.items() if k.startswith(("weight", "bias"))})
        dx, dh0 = g["x"][0], g["h0"]
        return (dx[0], dh0[0]) if unbatched else (dx, dh0)


class RNNCell(_SingleStateCell):
    """One step of an Elman RNN (``torch.nn.RNNCell``)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", dtype=None, *, seed=None, rng=None):
        super().__init__(rnn_mode(nonlinearity), input_size, hidden_size, bias, dtype,
                         seed=seed, rng=rng)

    @property
    def nonlinearity(self) -> str:
        return self.spec.nonlinearity


class GRUCell(_SingleStateCell):
    """One step of a GRU (``torch.nn.GRUCell``; ``reset_after=False`` for the original form)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype=None, *,
                 reset_after: bool = True, seed=None, rng=None):
        super().__init__("gru", input_size, hidden_size, bias, dtype, reset_after=reset_after,
                         seed=seed, rng=rng)


class LSTMCell(_CellBase):
    """One step of an LSTM (``torch.nn.LSTMCell``)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype=None, *,
                 seed=None, rng=None):
        super().__init__("lstm", input_size, hidden_size, bias, dtype, seed=seed, rng=rng)

    def forward(self, x, hx: Optional[Tuple[Any, Any]] = None, *,
                need_grad: Optional[bool] = None):
        """One step. ``x``: (B, input_size) or (input_size,); ``hx``: (h, c), each (B, H) or
        (H,). Returns (h', c')."""
        h, c = split_state(hx, pair=True, owner="LSTMCell", names=("h", "c"))
        xb, (h, c), unbatched = self._prepare(x, [h, c], ["h", "c"])
        h1, c1, ctx = self._run(xb, h, c, need_grad=need_grad)
        if ctx is not None:
            self._stack.append((ctx, unbatched))
        return (h1[0], c1[0]) if unbatched else (h1, c1)

    __call__ = forward

    def backward(self, dh, dc=None):
        """Back-propagates the most recent kept step: ``dh``, ``dc`` like h', c' (``dc`` None
        for zero). Returns ``(dx, (dh_prev, dc_prev))``."""
        ctx, unbatched = self._latest()
        dh = self._as_array(dh, "dh")
        dc = self._as_optional(dc, "dc")
        if unbatched:
            dh = dh[None]
            dc = None if dc is None else dc[None]
        g = F.lstm_backward(ctx, None, dh, dc)
        self._stack.pop()
        self._accumulate({k: v for k, v in g.items() if k.startswith(("weight", "bias"))})
        dx, dh0, dc0 = g["x"][0], g["h0"], g["c0"]
        return (dx[0], (dh0[0], dc0[0])) if unbatched else (dx, (dh0, dc0))


def from_torch(module: Any) -> Union["_RNNBase", "_CellBase"]:
    """The fusedrnn equivalent of a ``torch.nn.RNN/LSTM/GRU/RNNCell/LSTMCell/GRUCell``, with its
    weights copied (float32 or float64)."""
    name = type(module).__name__
    dtype = next(module.parameters()).dtype
    dt = np.float64 if str(dtype) == "torch.float64" else np.float32
    sd = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    if name in ("LSTM", "GRU", "RNN"):
        kw = dict(num_layers=module.num_layers, bias=module.bias,
                  batch_first=module.batch_first, dropout=module.dropout,
                  bidirectional=bool(module.bidirectional),  # torch.nn takes any truth value
                  dtype=dt)
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
