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
without copies (a non-contiguous CPU one is copied once; a non-contiguous CUDA one is made
contiguous by torch first); the outputs, the gradients and the training state kept between
forward and backward are allocated by torch's allocator on the input's device, and that state is
saved in the autograd context like any tensor (freed with the graph after backward).

CUDA: with a fusedrnn built with the CUDA backend and a GPU (:func:`fusedrnn.cuda.is_available`),
CUDA tensors run on fusedrnn's CUDA kernels, on torch's current stream
(``torch.cuda.current_stream``), so ``model.cuda()`` works as with ``torch.nn.LSTM``.

Differences from PyTorch, all deliberate:

* CPU and CUDA tensors, float32 and float64; on CUDA also bfloat16 and float16 (stored in 16
  bits, computed in float32). A CUDA tensor where fusedrnn has no CUDA backend or no GPU, a
  tensor on another device, or another dtype (``.half()``/``.bfloat16()`` modules on the CPU,
  which torch.nn runs), raises a ``RuntimeError``/``TypeError`` that says so and what to do;
  use ``torch.nn.LSTM`` there. Every tensor of a call must be on the parameters' device
  (``RuntimeError`` naming the odd one, as torch.nn).
* Every tensor of a call (input, states, parameters) must have the parameters' dtype. A layer's
  input of another dtype raises torch.nn's own ``ValueError`` and message; any other mix raises
  a ``RuntimeError`` naming the odd one, where torch.nn raises ``RuntimeError`` from inside its
  kernels with their words (which vary by device: oneDNN on the CPU), or, inconsistently,
  casts (``LSTMCell`` with float32 weights and a float64 ``c`` returns float64 states; a
  float64 ``LSTM`` casts a float32 ``c_0``). The cells check sizes before dtypes, as torch.nn.
* Under CPU autocast to bfloat16 the layers run and return float32 (torch.nn returns bfloat16
  there); the values agree to bfloat16's precision.
* Dropout (between layers, training mode only, as in PyTorch) draws its masks from fusedrnn's
  own counter-based generator, seeded by one ``torch.randint`` draw from PyTorch's default
  generator per forward: ``torch.manual_seed`` makes runs reproducible, but the masks are not
  the ones ``torch.nn.LSTM`` would draw. Without active dropout no random number is drawn, so
  the rest of a program's random stream is the same as with ``torch.nn.LSTM``. ``dropout=1``
  zeroes every inter-layer activation, as torch.nn.
* Constructor arguments are checked by :mod:`fusedrnn.spec`, with ``torch.nn.RNNBase``'s
  exception types and messages. Where torch.nn is lenient or inconsistent: sizes may be any
  integral type (NumPy integers, which ``torch.nn.RNN/LSTM/GRU`` refuse); a ``bool`` size or a
  non-``bool`` ``bidirectional`` raises ``TypeError`` (torch.nn takes ``True`` as 1). The
  cells follow torch.nn's cells: any truthy ``bias``, ``hidden_size=0`` (outputs (B, 0)), an
  unknown ``nonlinearity`` raising ``RuntimeError`` at forward; but ``input_size=0`` raises
  ``ValueError`` (torch.nn's cells accept it; the kernels need an input).
* A sequence of length 0 raises torch.nn's ``RuntimeError``; a batch of 0 gives empty outputs
  and a working backward, as torch.nn. Behaviours checked against both implementations:
  tests/test_torch_conformance.py.
* Second-order gradients (``autograd.grad(..., create_graph=True)`` and a backward through
  the result: gradient penalties, Hessian-vector products): the kernels are first-order, so
  under ``create_graph=True`` the gradient is recomputed from torch.nn's own differentiable
  RNN ops with the call's dropout masks, at torch.nn's speed, and is differentiable. The GRU
  with ``reset_after=False`` has no torch.nn counterpart and raises a ``RuntimeError`` there
  (never a silently constant gradient).
* ``torch.compile`` runs the native call eagerly (a graph break around it); TorchScript
  (``torch.jit.script``) is not supported.
* Modifying an input or a parameter in place between forward and backward raises PyTorch's
  usual "modified by an inplace operation" error (they are saved for backward).

Threads and OpenMP: fusedrnn runs its parallel regions on GNU OpenMP (``libgomp``); its BLAS
(``scipy-openblas32``) runs single-threaded inside those regions, so it starts no thread pool of
its own. The Linux PyTorch wheels bundle a ``libgomp.so.1`` with the same soname as the system's,
so in one process the dynamic loader maps only the first one loaded and both libraries share that
single runtime and its worker threads (measured with the torch 2.13 CPU wheel, in either import
order). fusedrnn names its thread count on every region and does not change the runtime's
default. The modules here run on torch's thread count: before each kernel call they take
``torch.get_num_threads()`` as fusedrnn's count, so ``torch.set_num_threads(k)`` governs a model
as it does a torch.nn one, and DataLoader workers (torch sets their count to 1) do not
oversubscribe the cores; once ``fusedrnn.set_num_threads`` is called (explicitly, or through
``threadpoolctl``), fusedrnn's own count holds instead. With a PyTorch built on another
OpenMP (Intel ``libiomp5``, LLVM ``libomp``: conda/MKL builds, macOS) the two runtimes live
side by side, each with its own worker threads; they run one after the other (never nested),
but one runtime's workers spinning after its region ends can take cores from the other's next
region. If that shows in a profile, cap the spin time
(``OMP_WAIT_POLICY=passive``, ``KMP_BLOCKTIME=0``) or give each fewer threads. Called from
inside torch's intra-op parallel region, fusedrnn gets (and correctly uses) a one-thread team.
``DataLoader`` workers and other forked children work after the parent ran fusedrnn: multi-
threaded work on the thread that forked runs on a helper thread fusedrnn starts in the child
(GNU OpenMP's worker pool of that thread is stale there).
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch.nn import Parameter, init
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fusedrnn import cuda as _cuda
from fusedrnn import functional as _F
from fusedrnn.spec import (TORCH_MODES, CellSpec, CellSpecFields, RNNSpec, RNNSpecFields,
                           reject_proj_size,
                           rnn_mode, split_state)

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RNNBase", "RNNCellBase"]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)
_CUDA_16BIT = (torch.bfloat16, torch.float16)  # stored in 16 bits, computed in float32


# --------------------------------------------------------------------------------------------
# tensors <-> arrays


def _detached(t):
    """The tensor as the kernels take it: detached (DLPack refuses tensors that require grad)
    and, on a CUDA device, contiguous (the native side copies strided host arrays itself, but
    makes no device copies; autograd hands expanded gradients to backward)."""
    if t is None:
        return None
    t = t.detach()
    return t if t.device.type == "cpu" else t.contiguous()


def _check_tensors(owner, tensors, cell=False):
    """Every tensor on the CPU, or on a CUDA device where fusedrnn can run there, all on the
    device of the first (the weights), in float32 or float64 (on CUDA also the 16-bit types),
    all of one dtype (the weights'). A dtype mismatch raises as torch.nn does: ValueError for a
    layer's input, RuntimeError otherwise."""
    device = tensors[0][1].device
    for name, t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            if t.device.type != "cuda":
                what = "only CPU and CUDA tensors are supported"
            elif not _cuda.is_available():
                what = f"CUDA tensors need fusedrnn's CUDA backend, but {_cuda._why_unavailable()}"
            else:
                what = None
            if what is not None:
                raise RuntimeError(f"{owner}: {name} is on {t.device}: {what}. Move the module "
                                   f"and its inputs to the CPU, or use the torch.nn class on "
                                   f"this device.")
        if t.device != device:
            raise RuntimeError(f"{owner}: {name} is on {t.device} but the parameters are on "
                               f"{device}: all tensors must be on one device")
        if t.layout != torch.strided:
            raise TypeError(f"{owner}: {name} must be a dense (strided) tensor, got {t.layout}")
    dtype = tensors[0][1].dtype
    if dtype not in _SUPPORTED_DTYPES and not (dtype in _CUDA_16BIT and device.type == "cuda"):
        raise TypeError(f"{owner}: fusedrnn supports float32 and float64 (on CUDA also bfloat16 "
                        f"and float16, computed in float32), but the parameters are {dtype} on "
                        f"{device}; convert the module with .float() or .double()")
    for name, t in tensors[1:]:
        if t is not None and t.dtype != dtype:
            if name == "input" and not cell:  # torch.nn.RNNBase's own check and message
                raise ValueError(f"RNN input dtype ({t.dtype}) does not match weight dtype "
                                 f"({dtype}). Convert input: input.to({dtype}), or convert "
                                 f"model: model.to({t.dtype})")
            # torch.nn raises RuntimeError here (from its kernels, with their own wording)
            raise RuntimeError(f"{owner}: {name} is {t.dtype} but the parameters are {dtype}; "
                               f"all tensors must share one dtype")


class _Config:
    """What one native stack call needs besides the tensors."""

    __slots__ = ("mode", "names", "num_layers", "bidirectional", "batch_first", "dropout",
                 "seed", "reset_after", "lengths")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def _follow_torch_threads():
    """fusedrnn.torch runs on torch's intra-op thread count (``torch.set_num_threads``;
    DataLoader workers set it to 1) until ``fusedrnn.set_num_threads`` is called, after which
    fusedrnn's own count holds. Checked before every kernel call; a change costs one store."""
    import fusedrnn
    if fusedrnn._threads_set_explicitly:
        return
    n = max(1, min(torch.get_num_threads(), fusedrnn._C.MAX_THREADS))
    if n != fusedrnn._C.get_num_threads():
        fusedrnn._C.set_num_threads(n)


def _native_forward(cfg, x, h0, c0, weights, training):
    """One native stack call on tensors: outputs (and, training, the reserve in the returned
    context) are torch tensors from torch's allocator."""
    _follow_torch_threads()
    params = {n: _detached(w) for n, w in zip(cfg.names, weights)}
    return _F.stack_forward(cfg.mode, _detached(x), params, num_layers=cfg.num_layers,
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
    "fusedrnn.torch cannot differentiate the gradient of a GRU with reset_after=False (torch.nn "
    "has no such GRU whose differentiable ops it could use): this graph differentiates it "
    "(autograd.grad(..., create_graph=True) followed by a backward through its result).")

_TORCH_CLASS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


def _differentiable_stack(cfg, x, h0, c0, weights, masks):
    """The stack's forward in torch.nn's own differentiable ops (its RNN modules, one layer at
    a time, with fusedrnn's dropout ``masks``: (T, B, D*R) bools after each layer but the
    last, or None), for gradients that must themselves be differentiated (double backward).
    Returns (y, h_n, c_n or None) as the native call does."""
    from torch.func import functional_call

    w = dict(zip(cfg.names, weights))
    D = 2 if cfg.bidirectional else 1
    xt = x.transpose(0, 1) if cfg.batch_first else x
    T = xt.shape[0]
    lengths = None
    if cfg.lengths is not None:
        lengths = torch.as_tensor(np.asarray(cfg.lengths.cpu() if isinstance(
            cfg.lengths, torch.Tensor) else cfg.lengths), dtype=torch.int64)
    layer_in, h_n, c_n = xt, [], []
    for l in range(cfg.num_layers):
        mine = {n: t for n, t in w.items() if n.endswith(f"_l{l}") or
                n.endswith(f"_l{l}_reverse")}
        params = {n.replace(f"_l{l}", "_l0"): t for n, t in mine.items()}
        w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
        hidden = w_ih.shape[0] // {"lstm": 4, "gru": 3}.get(cfg.mode, 1)
        kw = dict(bias="bias_ih_l0" in params, bidirectional=D == 2, device="meta",
                  dtype=w_ih.dtype)
        if cfg.mode == "lstm" and "weight_hr_l0" in params:
            kw["proj_size"] = w_hh.shape[1]
        if cfg.mode.startswith("rnn"):
            kw["nonlinearity"] = "relu" if cfg.mode == "rnn_relu" else "tanh"
        module = getattr(torch.nn, _TORCH_CLASS[cfg.mode])(w_ih.shape[1], hidden, 1, **kw)
        part = slice(l * D, (l + 1) * D)
        hx = None if h0 is None else h0[part]
        if cfg.mode == "lstm":
            hx = None if h0 is None and c0 is None else (
                h0[part] if h0 is not None else None, c0[part] if c0 is not None else None)
            if hx is not None and (hx[0] is None or hx[1] is None):  # one given: zeros for other
                ref = next(t for t in hx if t is not None)
                hx = tuple(t if t is not None else torch.zeros(
                    D, ref.shape[1], (w_hh.shape[1] if i == 0 else hidden), dtype=ref.dtype,
                    device=ref.device) for i, t in enumerate(hx))
        inp = layer_in if lengths is None else pack_padded_sequence(layer_in, lengths,
                                                                    enforce_sorted=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the meta module's non-contiguous-weights notice
            out, state = functional_call(module, params, (inp, hx))
        if lengths is not None:
            out = pad_packed_sequence(out, total_length=T)[0]
        h_n.append(state[0] if cfg.mode == "lstm" else state)
        if cfg.mode == "lstm":
            c_n.append(state[1])
        if l < cfg.num_layers - 1 and masks is not None and masks[l] is not None:
            p = cfg.dropout
            out = out * torch.where(masks[l], 1.0 / (1.0 - p) if p < 1 else 0.0, 0.0).to(out)
        layer_in = out
    y = layer_in.transpose(0, 1) if cfg.batch_first else layer_in
    return y, torch.cat(h_n), (torch.cat(c_n) if c_n else None)


class _DoubleBackwardError(torch.autograd.Function):
    """Identity on the first-order gradients computed under ``create_graph=True``, attached to
    what they depend on (the forward's inputs and the incoming gradients), whose backward
    raises: where no differentiable recomputation exists (``_NO_DOUBLE_BACKWARD``), those
    gradients would otherwise be constants to autograd and any term built on them would
    silently contribute nothing."""

    @staticmethod
    def forward(ctx, n_grads, *tensors):
        return tuple(g.view_as(g) for g in tensors[:n_grads])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_DOUBLE_BACKWARD)


class _StackFunction(torch.autograd.Function):
    """``(cfg, x, h0, c0, *weights) -> (y, h_n[, c_n])`` through one native stack call.

    Backward runs fusedrnn's BPTT kernels. Under ``create_graph=True`` (the gradient will be
    differentiated: gradient penalties, Hessian-vector products) it instead recomputes the
    forward in torch.nn's own differentiable RNN ops with this call's dropout masks and lets
    autograd differentiate that, so the gradients are correct and differentiable; the GRU
    with ``reset_after=False`` (no torch.nn equivalent) raises there instead."""

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
        ctx.cfg = cfg
        ctx.names = cfg.names
        return _outputs(y, h_n, c_n)

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n=None):
        saved = ctx.saved_tensors  # raises if an input or a weight was modified in place
        nctx, cfg = ctx.nctx, ctx.cfg
        need = ctx.needs_input_grad
        if torch.is_grad_enabled() and not (cfg.mode == "gru" and not cfg.reset_after):
            return _StackFunction._differentiable_backward(ctx, saved, dy, dh_n, dc_n)
        nctx.restore_arrays([_detached(t) for t in saved])
        try:
            _follow_torch_threads()
            dx, dh0, dc0, grads = _F.stack_backward(nctx, _detached(dy), _detached(dh_n),
                                                    _detached(dc_n))
        finally:
            nctx.release_arrays()
        wrap = lambda a, i: a if need[i] and a is not None else None
        out = [None, wrap(dx, 1), wrap(dh0, 2), wrap(dc0, 3)]
        out += [wrap(grads[n], 4 + i) for i, n in enumerate(ctx.names)]
        if torch.is_grad_enabled():
            # create_graph=True without a differentiable recomputation: the gradients must stay
            # connected to what they depend on, and differentiating them must raise, not give 0.
            sources = [t for t in (*saved, dy, dh_n, dc_n)
                       if isinstance(t, torch.Tensor) and t.requires_grad]
            at = [i for i, g in enumerate(out) if g is not None]
            if sources and at:
                linked = _DoubleBackwardError.apply(len(at), *(out[i] for i in at), *sources)
                for i, g in zip(at, linked):
                    out[i] = g
        return tuple(out)

    @staticmethod
    def _differentiable_backward(ctx, saved, dy, dh_n, dc_n):
        nctx, cfg = ctx.nctx, ctx.cfg
        x, h0, c0, reserve, *weights = saved
        masks = None
        if cfg.dropout > 0 and cfg.num_layers > 1:
            nctx.restore_arrays([_detached(t) for t in saved])
            try:
                masks = nctx.keep_masks
            finally:
                nctx.release_arrays()
        with torch.enable_grad():
            outs = _differentiable_stack(cfg, x, h0, c0, weights, masks)
        pairs = [(o, g) for o, g in zip(outs, (dy, dh_n, dc_n)) if o is not None and g is not None]
        inputs = [(i, t) for i, t in enumerate((x, h0, c0, *weights), start=1)
                  if ctx.needs_input_grad[i] and t is not None]
        out = [None] * (4 + len(weights))
        if pairs and inputs:
            grads = torch.autograd.grad([o for o, _ in pairs], [t for _, t in inputs],
                                        [g for _, g in pairs], create_graph=True,
                                        allow_unused=True)
            for (i, t), g in zip(inputs, grads):
                out[i] = g if g is not None else torch.zeros_like(t)
        else:
            for i, t in inputs:
                out[i] = torch.zeros_like(t)
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


class RNNBase(RNNSpecFields, torch.nn.Module):
    """Base of :class:`RNN`, :class:`LSTM` and :class:`GRU`: the bookkeeping of
    ``torch.nn.RNNBase`` (same attributes, parameter names, shapes, order and initialisation)
    with a forward pass through fusedrnn's native stack kernels. The configuration lives in
    ``self.spec`` (:class:`fusedrnn.spec.RNNSpec`); ``input_size``, ``dropout`` ... read it,
    and assigning one re-validates it."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None, *,
                 reset_after: bool = True):
        super().__init__()
        self.spec = RNNSpec(mode, input_size, hidden_size, num_layers, bias, batch_first,
                            dropout, bidirectional, proj_size, reset_after)
        if self.spec.dropout_warning:
            warnings.warn(self.spec.dropout_warning, stacklevel=3)
        self._flat_weights_names = self.spec.flat_weights_names()
        self._all_weights = self.spec.all_weights()
        for name, shape in self.spec.param_shapes().items():
            setattr(self, name, Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    @property
    def mode(self) -> str:
        """'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU', as ``torch.nn.RNNBase.mode``."""
        return TORCH_MODES[self.spec.mode]

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as PyTorch."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
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
        return self.spec.extra_repr()

    # -- forward ------------------------------------------------------------------------------

    @property
    def _cls(self):
        return type(self).__name__

    def forward(self, input: Union[torch.Tensor, PackedSequence],
                hx: Optional[Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]] = None):
        """``input``: (T, B, I), (B, T, I) with ``batch_first``, unbatched (T, I), or a
        ``PackedSequence``; ``hx``: h_0 (RNN, GRU) or (h_0, c_0) (LSTM), each (L*D, B, R/H)
        ((L*D, R/H) for unbatched input), None for zeros.

        Returns ``(output, h_n)`` or, for the LSTM, ``(output, (h_n, c_n))``, as PyTorch:
        output (T, B, D*R) (or as the input's layout), h_n (L*D, B, R), c_n (L*D, B, H)."""
        cls, spec = self._cls, self.spec
        is_lstm = spec.is_lstm
        h0, c0 = spec.split_hx(hx, cls, array_type=torch.Tensor, kind="tensors")
        packed = isinstance(input, PackedSequence)
        lengths = sorted_indices = unsorted_indices = None
        batch_first = spec.batch_first
        if packed:
            x_check, batch_sizes, sorted_indices, unsorted_indices = input
            packed_batch = int(batch_sizes[0])
        elif not isinstance(input, torch.Tensor):
            raise TypeError(f"{cls}: input must be a tensor or a PackedSequence, got "
                            f"{type(input).__name__}")
        else:
            x_check, packed_batch = input, None
        is_batched, batch = spec.forward_layout(x_check, h0, c0, owner=cls, style="torch",
                                                packed_batch=packed_batch)
        weights = self._flat_weights
        _check_tensors(cls, list(zip(self._flat_weights_names, weights))
                       + [("input", x_check), ("hx" if not is_lstm else "hx[0]", h0),
                          ("hx[1]", c0)])
        spec.check_forward_sizes(x_check, h0, c0, is_batched, batch, style="torch")

        if packed:
            # sorted order, time-major (PackedSequence data does not depend on batch_first)
            x, lens = pad_packed_sequence(PackedSequence(x_check, batch_sizes),
                                          batch_first=False)
            # lens is on the CPU (as torch keeps batch_sizes); a device call takes its lengths
            # on x's device
            lengths = (lens.numpy().astype(np.int64) if x.device.type == "cpu"
                       else lens.to(device=x.device, dtype=torch.int64))
            batch_first = False
            if sorted_indices is not None:
                h0 = None if h0 is None else h0.index_select(1, sorted_indices)
                c0 = None if c0 is None else c0.index_select(1, sorted_indices)
        elif not is_batched:
            x = input.unsqueeze(spec.batch_axis)
            h0 = None if h0 is None else h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
        else:
            x = input
        if x.shape[1 if batch_first else 0] == 0:  # torch.nn's error (its type and words)
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

        dropout_active = self.training and spec.dropout > 0 and spec.num_layers > 1
        cfg = _Config(mode=spec.mode, names=tuple(self._flat_weights_names),
                      num_layers=spec.num_layers, bidirectional=spec.bidirectional,
                      batch_first=batch_first, dropout=spec.dropout if dropout_active else 0.0,
                      seed=_draw_seed() if dropout_active else 0,
                      reset_after=spec.reset_after, lengths=lengths)
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
                output = output.squeeze(spec.batch_axis)
                h_n = h_n.squeeze(1)
                c_n = None if c_n is None else c_n.squeeze(1)
        return (output, (h_n, c_n)) if is_lstm else (output, h_n)


class RNN(RNNBase):
    """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act tanh or relu: a drop-in
    ``torch.nn.RNN`` (same arguments, parameters, ``state_dict``, inputs and outputs) on
    fusedrnn's kernels. See the module docstring."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None,
                 **kwargs):
        reject_proj_size(kwargs, "RNN")
        super().__init__(rnn_mode(nonlinearity), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, device, dtype)

    @property
    def nonlinearity(self) -> str:
        return self.spec.nonlinearity


class LSTM(RNNBase):
    """LSTM (gates i, f, g, o; optional projection ``proj_size``): a drop-in ``torch.nn.LSTM``
    (same arguments, parameters, ``state_dict``, inputs and outputs) on fusedrnn's kernels.

    Switch a model by changing the import: ``from fusedrnn.torch import LSTM`` instead of
    ``from torch.nn import LSTM``. See the module docstring."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)


class GRU(RNNBase):
    """GRU (gates r, z, n): a drop-in ``torch.nn.GRU`` (same arguments, parameters,
    ``state_dict``, inputs and outputs) on fusedrnn's kernels. ``reset_after=False`` (keyword
    only, not in PyTorch) selects the original Cho et al. form
    ``n = tanh(W_in x + b_in + W_hn (r h) + b_hn)``; parameter shapes are the same."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *,
                 reset_after: bool = True, **kwargs):
        reject_proj_size(kwargs, "GRU")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, reset_after=reset_after)


# --------------------------------------------------------------------------------------------
# cells


class RNNCellBase(CellSpecFields, torch.nn.Module):
    """Base of the cells: ``torch.nn.RNNCellBase``'s parameters (``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh``) and initialisation; one step through the native stack (T=1).
    The configuration lives in ``self.spec`` (:class:`fusedrnn.spec.CellSpec`)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, device=None,
                 dtype=None, *, reset_after: bool = True):
        super().__init__()
        # torch.nn's cells take any bias (truthy or not) and hidden_size = 0
        self.spec = CellSpec(mode, input_size, hidden_size, bool(bias), reset_after,
                             empty_ok=True)
        for name, shape in self.spec.param_shapes().items():
            setattr(self, name, Parameter(torch.empty(shape, device=device, dtype=dtype)))
        if not self.spec.bias:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every parameter, as PyTorch."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        return self.spec.extra_repr()

    def _step(self, input, states):
        """One step; ``input`` (B, I) or (I,); ``states``: list of (B, H)/(H,) tensors or
        Nones. Returns (h', c' or None), each (B, H) or (H,) like the input."""
        cls, spec = type(self).__name__, self.spec
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{cls}: input must be a tensor, got {type(input).__name__}")
        labels = ["hidden"] if len(states) == 1 else ["hx[0]", "hx[1]"]
        for label, s in zip(labels, states):
            if s is not None and not isinstance(s, torch.Tensor):
                raise TypeError(f"{cls}: {label} must be a tensor, got {type(s).__name__}")
        is_batched = spec.step_layout(input, states, owner=cls, style="torch", labels=labels)
        names = list(spec.param_shapes())
        weights = [getattr(self, n) for n in names]
        # sizes first, then dtypes: torch.nn's order
        spec.check_step_sizes(input, states, is_batched, style="torch", labels=labels)
        _check_tensors(cls, list(zip(names, weights))
                       + [("input", input)] + list(zip(labels, states)), cell=True)
        if spec.hidden_size == 0:  # outputs (B, 0) / (0,), still in input's graph as torch's
            empty = input.matmul(self.weight_ih.t())
            return empty, (empty.clone() if len(states) == 2 else None)
        if not is_batched:
            input = input.unsqueeze(0)
            states = [None if s is None else s.unsqueeze(0) for s in states]
        h0 = None if states[0] is None else states[0].unsqueeze(0)
        c0 = None
        if len(states) == 2 and states[1] is not None:
            c0 = states[1].unsqueeze(0)
        cfg = _Config(mode=spec.mode, names=tuple(n + "_l0" for n in names), num_layers=1,
                      bidirectional=False, batch_first=False, dropout=0.0, seed=0,
                      reset_after=spec.reset_after, lengths=None)
        _, h_n, c_n = _run_stack(cfg, input.unsqueeze(0), h0, c0, weights, False)
        h1 = h_n[0] if is_batched else h_n[0, 0]
        c1 = None if c_n is None else (c_n[0] if is_batched else c_n[0, 0])
        return h1, c1


class RNNCell(RNNCellBase):
    """Elman RNN cell: a drop-in ``torch.nn.RNNCell`` on fusedrnn's kernels.
    ``forward(input, hx=None)``: input (B, I) or (I,), hx (B, H) or (H,); returns h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None):
        # torch.nn.RNNCell accepts any nonlinearity and raises at forward
        mode = {"tanh": "rnn_tanh", "relu": "rnn_relu"}.get(nonlinearity, "rnn_tanh")
        super().__init__(mode, input_size, hidden_size, bias, device, dtype)
        self._nonlinearity = nonlinearity

    @property
    def nonlinearity(self) -> str:
        return self._nonlinearity

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self._nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self._nonlinearity}")
        return self._step(input, [hx])[0]


class LSTMCell(RNNCellBase):
    """LSTM cell: a drop-in ``torch.nn.LSTMCell`` on fusedrnn's kernels.
    ``forward(input, hx=None)``: input (B, I) or (I,), hx (h, c) each (B, H) or (H,);
    returns (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None):
        super().__init__("lstm", input_size, hidden_size, bias, device, dtype)

    def forward(self, input: torch.Tensor,
                hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        h, c = split_state(hx, pair=True, owner="LSTMCell", names=("h", "c"),
                           array_type=torch.Tensor, kind="tensors")
        return self._step(input, [h, c])


class GRUCell(RNNCellBase):
    """GRU cell: a drop-in ``torch.nn.GRUCell`` on fusedrnn's kernels; ``reset_after=False``
    (keyword only, not in PyTorch) is the original Cho et al. form.
    ``forward(input, hx=None)``: input (B, I) or (I,), hx (B, H) or (H,); returns h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, reset_after: bool = True):
        super().__init__("gru", input_size, hidden_size, bias, device, dtype,
                         reset_after=reset_after)

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._step(input, [hx])[0]
