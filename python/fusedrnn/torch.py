"""PyTorch modules backed by fusedrnn's kernels: drop-in ``torch.nn.RNN/LSTM/GRU`` and cells.

``import fusedrnn`` never imports PyTorch; only ``import fusedrnn.torch`` does (PyTorch is an
optional dependency).

Switching a model from ``torch.nn.LSTM`` is a change of import::

    # before                                  # after
    from torch.nn import LSTM                 from fusedrnn.torch import LSTM

    rnn = LSTM(64, 256, num_layers=2, batch_first=True, bidirectional=True)
    y, (h_n, c_n) = rnn(x)                    # same shapes, same results, same gradients

Nothing else changes: the constructors take exactly the arguments of ``torch.nn.RNN``,
``torch.nn.LSTM`` and ``torch.nn.GRU`` (and ``RNNCell``, ``LSTMCell``, ``GRUCell``); the
parameters are ``torch.nn.Parameter`` objects with PyTorch's names, shapes and initialisation
(U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), drawn in PyTorch's order, so a fixed
``torch.manual_seed`` gives the very same weights as ``torch.nn.LSTM``), so ``state_dict()``
loads into and from the PyTorch classes unchanged; ``forward(input, hx=None)`` takes and
returns what PyTorch's does: ``(T, B, I)`` or ``(B, T, I)`` (``batch_first``) tensors, unbatched
``(T, I)`` tensors, and ``PackedSequence`` input (output then is a ``PackedSequence`` with the
input's ``sorted_indices``/``unsorted_indices``, and ``h_n``/``c_n`` come back in the caller's
batch order). ``GRU``/``GRUCell`` take one extra keyword, ``reset_after=True`` (PyTorch's form);
``reset_after=False`` is the original Cho et al. GRU, which PyTorch does not have.

Each forward is one native call for the whole stack (all layers and directions) through a
``torch.autograd.Function``; its backward is one native BPTT call that returns the gradients of
the input, ``h_0``, ``c_0`` and every parameter. Tensors cross to the kernels through DLPack
without copies (a non-contiguous one is copied once); the outputs, the gradients and the training
state kept between forward and backward are allocated by torch's allocator, and that state is
saved in the autograd context like any tensor (freed with the graph after backward).

Differences from PyTorch, all deliberate:

* CPU only, float32 and float64. A CUDA (or other non-CPU) tensor, or another dtype, raises a
  ``RuntimeError``/``TypeError`` that says so; use ``torch.nn.LSTM`` there.
* Every tensor of a call (input, states, parameters) must have the parameters' dtype; a mix
  raises a ``ValueError`` naming the odd one. torch.nn is inconsistent there (``LSTMCell``
  with float32 weights and a float64 ``c`` returns float64 states; a float64 ``LSTM`` casts a
  float32 ``c_0``; a float64 ``h_0`` with float32 weights fails inside oneDNN), so no single
  rule would match it.
* Dropout (between layers, training mode only, as in PyTorch) draws its masks from fusedrnn's
  own counter-based generator, seeded by one ``torch.randint`` draw from PyTorch's default
  generator per forward: ``torch.manual_seed`` makes runs reproducible, but the masks are not
  the ones ``torch.nn.LSTM`` would draw. Without active dropout no random number is drawn, so
  the rest of a program's random stream is the same as with ``torch.nn.LSTM``.
* First-order gradients only: differentiating a gradient of these modules (double backward,
  e.g. ``autograd.grad(..., create_graph=True)`` then a backward through its result) raises a
  ``RuntimeError`` rather than silently treating the gradient as a constant.
* ``torch.compile`` runs the native call eagerly (a graph break around it); TorchScript
  (``torch.jit.script``) is not supported.
* Modifying an input or a parameter in place between forward and backward raises PyTorch's
  usual "modified by an inplace operation" error (they are saved for backward).

Threads and OpenMP: fusedrnn runs its parallel regions on GNU OpenMP (``libgomp``); its BLAS
(``scipy-openblas32``) runs single-threaded inside those regions, so it starts no thread pool of
its own. The Linux PyTorch wheels bundle a ``libgomp.so.1`` with the same soname as the system's,
so in one process the dynamic loader maps only the first one loaded and both libraries share that
single runtime and its worker threads (measured with the torch 2.13 CPU wheel, in either import
order). fusedrnn names its thread count on every region (``fusedrnn.set_num_threads``) and does
not change the runtime's default, so ``torch.set_num_threads`` and ``fusedrnn.set_num_threads``
stay independent. With a PyTorch built on another OpenMP (Intel ``libiomp5``, LLVM ``libomp``:
conda/MKL builds, macOS) the two runtimes live side by side, each with its own worker threads;
they run one after the other (never nested), but one runtime's workers spinning after its region
ends can take cores from the other's next region. If that shows in a profile, cap the spin time
(``OMP_WAIT_POLICY=passive``, ``KMP_BLOCKTIME=0``) or give each fewer threads. Called from
inside torch's intra-op parallel region, fusedrnn gets (and correctly uses) a one-thread team.
``DataLoader`` workers and other forked children work after the parent ran fusedrnn: multi-
threaded work on the thread that forked runs on a helper thread fusedrnn starts in the child
(GNU OpenMP's worker pool of that thread is stale there).
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from torch.nn import Parameter, init
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fusedrnn import functional as _F

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RNNBase", "RNNCellBase"]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)
_KERNEL_MODES = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}
_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


# --------------------------------------------------------------------------------------------
# tensors <-> arrays


def _detached(t):
    """The tensor as the kernels take it (DLPack refuses tensors that require grad)."""
    return None if t is None else t.detach()


def _describe(obj):
    """A value's type, and its items' types for a tuple or list."""
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of ({', '.join(type(o).__name__ for o in obj)})"
    return type(obj).__name__


def _check_tensors(owner, tensors):
    """Every tensor on the CPU, in float32 or float64, all of one dtype (that of the weights)."""
    for name, t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            what = ("CUDA tensors are not supported in this version of fusedrnn.torch"
                    if t.device.type == "cuda" else "only CPU tensors are supported")
            raise RuntimeError(f"{owner}: {name} is on {t.device}: {what}. Move the module and "
                               f"its inputs to the CPU, or use the torch.nn class on this "
                               f"device.")
        if t.layout != torch.strided:
            raise TypeError(f"{owner}: {name} must be a dense (strided) tensor, got {t.layout}")
    dtype = tensors[0][1].dtype
    if dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{owner}: fusedrnn supports float32 and float64, but the parameters "
                        f"are {dtype}; convert the module with .float() or .double()")
    for name, t in tensors[1:]:
        if t is not None and t.dtype != dtype:
            raise ValueError(f"{owner}: {name} is {t.dtype} but the parameters are {dtype}; all "
                            f"tensors must share one dtype")


class _Config:
    """What one native stack call needs besides the tensors."""

    __slots__ = ("mode", "names", "num_layers", "bidirectional", "batch_first", "dropout",
                 "seed", "reset_after", "lengths")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def _native_forward(cfg, x, h0, c0, weights, training):
    """One native stack call on tensors: outputs (and, training, the reserve in the returned
    context) are torch tensors from torch's allocator."""
    params = {n: w.detach() for n, w in zip(cfg.names, weights)}
    return _F.stack_forward(cfg.mode, x.detach(), params, num_layers=cfg.num_layers,
                            bidirectional=cfg.bidirectional, h0=_detached(h0),
                            c0=_detached(c0), lengths=cfg.lengths,
                            batch_first=cfg.batch_first, dropout=cfg.dropout, seed=cfg.seed,
                            reset_after=cfg.reset_after, training=training,
                            # in-place changes are caught by autograd's version counters
                            # (save_for_backward below), as for torch.nn
                            check_inplace=False)


def _outputs(y, h_n, c_n):
    return (y, h_n) if c_n is None else (y, h_n, c_n)


_NO_DOUBLE_BACKWARD = (
    "fusedrnn.torch does not support double backward: this graph differentiates the gradient "
    "of a fusedrnn RNN (autograd.grad(..., create_graph=True) followed by a backward through "
    "its result, e.g. a gradient penalty). Use the torch.nn class for higher-order gradients.")


class _DoubleBackwardError(torch.autograd.Function):
    """Identity on the first-order gradients computed under ``create_graph=True``, attached to
    what they depend on (the forward's inputs and the incoming gradients), whose backward
    raises. Without it those gradients would be constants to autograd and any term built on
    them would silently contribute nothing."""

    @staticmethod
    def forward(ctx, n_grads, *tensors):
        return tuple(g.view_as(g) for g in tensors[:n_grads])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_DOUBLE_BACKWARD)


class _StackFunction(torch.autograd.Function):
    """``(cfg, x, h0, c0, *weights) -> (y, h_n[, c_n])`` through one native stack call."""

    @staticmethod
    def forward(ctx, cfg, x, h0, c0, *weights):
        y, h_n, c_n, nctx = _native_forward(cfg, x, h0, c0, weights, training=True)
        ctx.set_materialize_grads(False)  # unused outputs arrive as None: the kernel's zeros
        # The training state is a tensor saved like the inputs (autograd frees it with the
        # graph and checks the inputs' version counters for in-place changes); the native
        # context keeps only the call's configuration in between.
        ctx.save_for_backward(x, h0, c0, nctx.reserve, *weights)
        nctx.release_arrays()
        ctx.nctx = nctx
        ctx.names = cfg.names
        return _outputs(y, h_n, c_n)

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n=None):
        saved = ctx.saved_tensors  # raises if an input or a weight was modified in place
        nctx = ctx.nctx
        nctx.restore_arrays([_detached(t) for t in saved])
        try:
            dx, dh0, dc0, grads = _F.stack_backward(nctx, _detached(dy), _detached(dh_n),
                                                    _detached(dc_n))
        finally:
            nctx.release_arrays()
        need = ctx.needs_input_grad
        wrap = lambda a, i: a if need[i] and a is not None else None
        out = [None, wrap(dx, 1), wrap(dh0, 2), wrap(dc0, 3)]
        out += [wrap(grads[n], 4 + i) for i, n in enumerate(ctx.names)]
        if torch.is_grad_enabled():
            # create_graph=True: the gradients must stay connected to what they depend on, and
            # differentiating them must raise (no double backward yet), not give zero.
            sources = [t for t in (*saved, dy, dh_n, dc_n)
                       if isinstance(t, torch.Tensor) and t.requires_grad]
            at = [i for i, g in enumerate(out) if g is not None]
            if sources and at:
                linked = _DoubleBackwardError.apply(len(at), *(out[i] for i in at), *sources)
                for i, g in zip(at, linked):
                    out[i] = g
        return tuple(out)


def _compiler_disable(fn):
    """``torch.compile`` runs the native call eagerly (a graph break), without a warning."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


@_compiler_disable
def _run_stack(cfg, x, h0, c0, weights, dropout_active):
    """Runs the stack; goes through autograd only when a gradient is needed."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *weights))
    if needs_grad:
        out = _StackFunction.apply(cfg, x, h0, c0, *weights)
    else:
        # dropout needs the kernel's training mode even when no gradient is wanted (as in
        # torch.nn.LSTM under torch.no_grad() in train mode)
        out = _outputs(*_native_forward(cfg, x, h0, c0, weights,
                                             training=dropout_active)[:3])
    return out if len(out) == 3 else (out[0], out[1], None)


def _draw_seed():
    """One draw from PyTorch's default generator (so torch.manual_seed controls dropout)."""
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64).item())


# --------------------------------------------------------------------------------------------
# RNN / LSTM / GRU


class RNNBase(torch.nn.Module):
    """Base of :class:`RNN`, :class:`LSTM` and :class:`GRU`: the bookkeeping of
    ``torch.nn.RNNBase`` (same attributes, parameter names, shapes, order and initialisation)
    with a forward pass through fusedrnn's native stack kernels."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
                 dtype=None, *, reset_after=True):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if mode not in _GATES:
            raise ValueError("Unrecognized RNN mode: " + str(mode))
        if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
                or not 0 <= dropout <= 1):
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             "probability of an element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        for name, value in (("bias", bias), ("batch_first", batch_first),
                            ("bidirectional", bidirectional), ("reset_after", reset_after)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers), ("proj_size", proj_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable "
                             "projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")

        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = int(proj_size)
        self.reset_after = reset_after
        num_directions = 2 if bidirectional else 1
        gate_size = _GATES[mode] * hidden_size
        real_hidden_size = proj_size if proj_size > 0 else hidden_size

        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = [("weight_ih", (gate_size, layer_input_size)),
                          ("weight_hh", (gate_size, real_hidden_size))]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for base, shape in shapes:
                    name = f"{base}_l{layer}{suffix}"
                    setattr(self, name, Parameter(torch.empty(shape, **factory_kwargs)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as PyTorch."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op (kept so that code written for ``torch.nn.LSTM`` runs unchanged)."""

    @property
    def _flat_weights(self):
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self):
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        if self.mode == "GRU" and self.reset_after is not True:
            s += ", reset_after={reset_after}"
        return s.format(**self.__dict__)

    # -- forward ------------------------------------------------------------------------------

    @property
    def _cls(self):
        return type(self).__name__

    def _state_shapes(self, batch):
        d = 2 if self.bidirectional else 1
        r = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (self.num_layers * d, batch, r), (self.num_layers * d, batch, self.hidden_size)

    def _split_hx(self, hx):
        """(h0, c0) from the user's hx (c0 None unless LSTM)."""
        if hx is None:
            return None, None
        if self.mode == "LSTM":
            if (not isinstance(hx, (tuple, list)) or len(hx) != 2
                    or not all(isinstance(s, torch.Tensor) for s in hx)):
                raise TypeError(f"{self._cls}: hx must be a tuple (h_0, c_0) of tensors, got "
                                f"{_describe(hx)}")
            return hx[0], hx[1]
        if not isinstance(hx, torch.Tensor):
            raise TypeError(f"{self._cls}: hx must be a tensor, got {type(hx).__name__}")
        return hx, None

    def forward(self, input, hx=None):
        """``input``: (T, B, I), (B, T, I) with ``batch_first``, unbatched (T, I), or a
        ``PackedSequence``; ``hx``: h_0 (RNN, GRU) or (h_0, c_0) (LSTM), each (L*D, B, R/H)
        ((L*D, R/H) for unbatched input), None for zeros.

        Returns ``(output, h_n)`` or, for the LSTM, ``(output, (h_n, c_n))``, as PyTorch."""
        cls = self._cls
        is_lstm = self.mode == "LSTM"
        h0, c0 = self._split_hx(hx)
        packed = isinstance(input, PackedSequence)
        lengths = None
        sorted_indices = unsorted_indices = None
        is_batched = True
        batch_first = self.batch_first
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if data.dim() != 2:
                raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
            x_check = data
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"{cls}: input must be a tensor or a PackedSequence, got "
                                f"{type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{cls}: Expected input to be 2D or 3D, got {input.dim()}D "
                                 f"instead")
            is_batched = input.dim() == 3
            states = [s for s in (h0, c0) if s is not None]
            want = 3 if is_batched else 2
            if any(s.dim() != want for s in states):
                dims = ", ".join(f"{s.dim()}-D" for s in states)
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                what = "hx and cx" if is_lstm else "hx"
                raise RuntimeError(f"For {kind} input, {what} should also be {want}-D but got "
                                   f"({dims}) tensor(s)")
            if not is_batched:
                input = input.unsqueeze(0 if batch_first else 1)
                h0 = None if h0 is None else h0.unsqueeze(1)
                c0 = None if c0 is None else c0.unsqueeze(1)
            x_check = input

        weights = self._flat_weights
        _check_tensors(cls, list(zip(self._flat_weights_names, weights))
                       + [("input", x_check), ("hx" if not is_lstm else "hx[0]", h0),
                          ("hx[1]", c0)])
        if x_check.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {x_check.size(-1)}")
        if packed:
            batch = int(batch_sizes[0])
        else:
            batch = input.size(0) if batch_first else input.size(1)
        h_shape, c_shape = self._state_shapes(batch)
        for state, shape, label in ((h0, h_shape, "hidden[0]" if is_lstm else "hidden"),
                                    (c0, c_shape, "hidden[1]")):
            if state is not None and tuple(state.shape) != shape:
                raise RuntimeError(f"Expected {label} size {shape}, got {list(state.shape)}")

        if packed:
            # sorted order, time-major (PackedSequence data does not depend on batch_first)
            x, lens = pad_packed_sequence(PackedSequence(data, batch_sizes), batch_first=False)
            lengths = lens.numpy().astype(np.int64)
            batch_first = False
            if sorted_indices is not None:
                h0 = None if h0 is None else h0.index_select(1, sorted_indices)
                c0 = None if c0 is None else c0.index_select(1, sorted_indices)
        else:
            x = input

        dropout_active = self.training and self.dropout > 0 and self.num_layers > 1
        cfg = _Config(mode=_KERNEL_MODES[self.mode],
                      names=tuple(self._flat_weights_names), num_layers=self.num_layers,
                      bidirectional=self.bidirectional, batch_first=batch_first,
                      dropout=self.dropout if dropout_active else 0.0,
                      seed=_draw_seed() if dropout_active else 0,
                      reset_after=self.reset_after, lengths=lengths)
        y, h_n, c_n = _run_stack(cfg, x, h0, c0 if is_lstm else None, weights, dropout_active)

        if packed:
            out_data = pack_padded_sequence(y, lens, batch_first=False, enforce_sorted=True).data
            output = PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
                c_n = None if c_n is None else c_n.index_select(1, unsorted_indices)
        else:
            output = y
            if not is_batched:
                output = output.squeeze(0 if batch_first else 1)
                h_n = h_n.squeeze(1)
                c_n = None if c_n is None else c_n.squeeze(1)
        return (output, (h_n, c_n)) if is_lstm else (output, h_n)


class RNN(RNNBase):
    """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act tanh or relu: a drop-in
    ``torch.nn.RNN`` (same arguments, parameters, ``state_dict``, inputs and outputs) on
    fusedrnn's kernels. See the module docstring."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None):
        if nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype)
        self.nonlinearity = nonlinearity


class LSTM(RNNBase):
    """LSTM (gates i, f, g, o; optional projection ``proj_size``): a drop-in ``torch.nn.LSTM``
    (same arguments, parameters, ``state_dict``, inputs and outputs) on fusedrnn's kernels.

    Switch a model by changing the import: ``from fusedrnn.torch import LSTM`` instead of
    ``from torch.nn import LSTM``. See the module docstring."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)


class GRU(RNNBase):
    """GRU (gates r, z, n): a drop-in ``torch.nn.GRU`` (same arguments, parameters,
    ``state_dict``, inputs and outputs) on fusedrnn's kernels. ``reset_after=False`` (keyword
    only, not in PyTorch) selects the original Cho et al. form
    ``n = tanh(W_in x + b_in + W_hn (r h) + b_hn)``; parameter shapes are the same."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, reset_after=True):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, reset_after=reset_after)


# --------------------------------------------------------------------------------------------
# cells


class RNNCellBase(torch.nn.Module):
    """Base of the cells: ``torch.nn.RNNCellBase``'s parameters (``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh``) and initialisation; one step through the native stack (T=1)."""

    def __init__(self, mode, input_size, hidden_size, bias, device=None, dtype=None, *,
                 reset_after=True):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be greater than zero")
        for name, value in (("bias", bias), ("reset_after", reset_after)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        self._mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.bias = bias
        self.reset_after = reset_after
        g = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}[mode] * hidden_size
        self.weight_ih = Parameter(torch.empty((g, input_size), **factory_kwargs))
        self.weight_hh = Parameter(torch.empty((g, hidden_size), **factory_kwargs))
        if bias:
            self.bias_ih = Parameter(torch.empty(g, **factory_kwargs))
            self.bias_hh = Parameter(torch.empty(g, **factory_kwargs))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as PyTorch."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += ", nonlinearity={nonlinearity}"
        if self._mode == "gru" and self.reset_after is not True:
            s += ", reset_after={reset_after}"
        return s.format(**self.__dict__)

    def _step(self, input, states):
        """One step; ``states``: list of (B, H)/(H,) tensors or Nones. Returns (h', c' or None)."""
        cls = type(self).__name__
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{cls}: input must be a tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{cls}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        labels = ["hidden"] if len(states) == 1 else ["hx[0]", "hx[1]"]
        for label, s in zip(labels, states):
            if s is not None and not isinstance(s, torch.Tensor):
                raise TypeError(f"{cls}: {label} must be a tensor, got {type(s).__name__}")
            if s is not None and s.dim() not in (1, 2):
                raise ValueError(f"{cls}: Expected {label} to be 1D or 2D, got {s.dim()}D "
                                 f"instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            states = [None if s is None else s.unsqueeze(0) for s in states]
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        weights = [getattr(self, n) for n in names]
        _check_tensors(cls, list(zip(names, weights))
                       + [("input", input)] + list(zip(labels, states)))
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.input_size}")
        for i, s in enumerate(states):
            if s is None:
                continue
            if s.dim() != 2 or s.size(0) != input.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{i} "
                                   f"batch size {s.size(0) if s.dim() == 2 else list(s.shape)}")
            if s.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {s.size(1)}, "
                                   f"expected {self.hidden_size}")
        h0 = None if states[0] is None else states[0].unsqueeze(0)
        c0 = None
        if len(states) == 2 and states[1] is not None:
            c0 = states[1].unsqueeze(0)
        cfg = _Config(mode=self._mode, names=tuple(n + "_l0" for n in names), num_layers=1,
                      bidirectional=False, batch_first=False, dropout=0.0, seed=0,
                      reset_after=self.reset_after, lengths=None)
        _, h_n, c_n = _run_stack(cfg, input.unsqueeze(0), h0, c0, weights, False)
        h1 = h_n[0] if is_batched else h_n[0, 0]
        c1 = None if c_n is None else (c_n[0] if is_batched else c_n[0, 0])
        return h1, c1


class RNNCell(RNNCellBase):
    """Elman RNN cell: a drop-in ``torch.nn.RNNCell`` on fusedrnn's kernels.
    ``forward(input, hx=None)``: input (B, I) or (I,), hx (B, H) or (H,); returns h'."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        super().__init__("rnn_" + nonlinearity, input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None):
        return self._step(input, [hx])[0]


class LSTMCell(RNNCellBase):
    """LSTM cell: a drop-in ``torch.nn.LSTMCell`` on fusedrnn's kernels.
    ``forward(input, hx=None)``: input (B, I) or (I,), hx (h, c) each (B, H) or (H,);
    returns (h', c')."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__("lstm", input_size, hidden_size, bias, device, dtype)

    def forward(self, input, hx=None):
        if hx is None:
            states = [None, None]
        elif (isinstance(hx, (tuple, list)) and len(hx) == 2
              and all(isinstance(t, torch.Tensor) for t in hx)):
            states = list(hx)
        else:
            raise TypeError(f"LSTMCell: hx must be a tuple (h, c) of tensors, got "
                            f"{_describe(hx)}")
        return self._step(input, states)


class GRUCell(RNNCellBase):
    """GRU cell: a drop-in ``torch.nn.GRUCell`` on fusedrnn's kernels; ``reset_after=False``
    (keyword only, not in PyTorch) is the original Cho et al. form.
    ``forward(input, hx=None)``: input (B, I) or (I,), hx (B, H) or (H,); returns h'."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 reset_after=True):
        super().__init__("gru", input_size, hidden_size, bias, device, dtype,
                         reset_after=reset_after)

    def forward(self, input, hx=None):
        return self._step(input, [hx])[0]
