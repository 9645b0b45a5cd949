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

Each forward is one native call for the whole stack (all layers and directions) through the
custom operator ``torch.ops.fusedrnn.stack_forward`` (fusedrnn/_torch_ops.py; in eager mode the
same functions are called directly); its backward is one native BPTT call (``stack_backward``)
that returns the gradients of the input, ``h_0``, ``c_0`` and every parameter. Tensors cross to
the kernels through DLPack without copies (a non-contiguous CPU one is copied once; a
non-contiguous CUDA one is made contiguous by torch first); the outputs, the gradients and the
training state kept between forward and backward are allocated by torch's allocator on the
input's device, and that state is saved in the autograd context like any tensor (freed with the
graph after backward).

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
* The classes are not subclasses of torch.nn's: ``isinstance(m, torch.nn.LSTM)`` is False.
  Code that dispatches on torch.nn's exact classes (``quantize_dynamic``, a weights-only
  ``torch.load`` allowing ``torch.nn.LSTM``) takes :func:`to_torch` / :func:`swap_modules`,
  which share the parameters (docs/design.md §3.1 gives the reasons).
* ``torch.compile(fullgraph=True)`` and ``torch.export`` trace the custom operators (dynamic T
  and B); ``PackedSequence`` input compiles with graph breaks only, as for torch.nn (dynamo does
  not trace torch's ``pack_padded_sequence``). ``torch.func`` transforms and ONNX export run
  torch.nn's own ops on the parameters (as fast as torch.nn there; ``vmap`` then fails as for
  torch.nn); ``torch.onnx.export`` thus writes torch.nn's standard LSTM/GRU/RNN nodes. The GRU
  with ``reset_after=False`` cannot be exported so (``fusedrnn.onnx.export`` writes it from the
  NumPy module). TorchScript (``torch.jit.script``) is not supported.
* Modifying an input or a parameter in place between forward and backward raises PyTorch's
  usual "modified by an inplace operation" error (they are saved for backward).

Regularised layers and cells (not torch.nn drop-ins: torch.nn has no counterpart):
:class:`RegularisedLSTM`, :class:`RegularisedGRU`, :class:`RegularisedRNN` take torch.nn's
arguments plus keyword options (``layer_norm``, ``zoneout_h``/``zoneout_c``,
``recurrent_dropout``, ``dropconnect``, ``gate_clip``, ``cell_clip``, ``peepholes``,
``forget_bias``) and run :mod:`fusedrnn.regularised`'s fused CPU kernels;
:class:`RegularisedLSTMCell`, :class:`RegularisedGRUCell`, :class:`RegularisedRNNCell` take the
per-step options. CPU only, first-order gradients (see :class:`_RegularisedBase`).

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

from fusedrnn import _torch_ops  # noqa: F401 (registers torch.ops.fusedrnn.*)
from fusedrnn import cuda as _cuda
from fusedrnn._torch_ops import _Config
from fusedrnn.spec import (TORCH_MODES, CellSpec, CellSpecFields, RNNSpec, RNNSpecFields,
                           reject_proj_size,
                           rnn_mode, split_state)

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RNNBase", "RNNCellBase",
           "RegularisedRNN", "RegularisedLSTM", "RegularisedGRU", "RegularisedRNNCell",
           "RegularisedLSTMCell", "RegularisedGRUCell", "to_torch", "from_torch",
           "swap_modules"]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)
_CUDA_16BIT = (torch.bfloat16, torch.float16)  # stored in 16 bits, computed in float32


# --------------------------------------------------------------------------------------------
# tensors <-> arrays


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


def _run_stack(cfg, x, h0, c0, weights, dropout_active, seed=None):
    """Runs the stack (fusedrnn/_torch_ops.py: the custom operator where anything traces, the
    same functions directly in eager mode), differentiable where a gradient is needed. Returns
    (y, h_n, c_n or None)."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *weights))
    lengths = cfg.lengths
    if isinstance(lengths, np.ndarray):
        lengths = torch.from_numpy(lengths)
    y, h_n, c_n, _ = _torch_ops.run_stack(
        x, h0, c0, list(weights), lengths, seed if seed is not None else _NO_SEED,
        cfg.mode, cfg.num_layers, cfg.bidirectional, cfg.batch_first, cfg.dropout,
        cfg.reset_after, "bias_ih_l0" in cfg.names, "weight_hr_l0" in cfg.names,
        # dropout needs the kernel's training mode even when no gradient is wanted (as in
        # torch.nn.LSTM under torch.no_grad() in train mode)
        needs_grad or dropout_active, needs_grad=needs_grad)
    return y, h_n, (c_n if cfg.mode == "lstm" else None)


_NO_SEED = torch.zeros((), dtype=torch.int64)


def _use_torch_nn_ops():
    """Where fusedrnn's kernels cannot go, the modules run torch.nn's own ops on their
    parameters: ONNX export (so both exporters write the standard RNN nodes) and torch.func
    transforms (grad, vmap, jacrev...: torch's custom-operator autograd does not support them,
    and the kernels have no batching rule)."""
    return torch.onnx.is_in_onnx_export() or torch._C._are_functorch_transforms_active()


def _as_torch_nn(module):
    """``module`` as the torch.nn module of the same class and configuration holding the very
    same Parameter objects (built on the meta device, then given ours): what ONNX export
    traces, so both exporters emit the standard ONNX LSTM/GRU/RNN nodes they emit for torch.nn
    (their translation of fusedrnn's kernels would be no more than that)."""
    spec = module.spec
    if spec.mode == "gru" and not spec.reset_after:
        raise RuntimeError(
            "torch.onnx.export: a GRU with reset_after=False has no torch.nn counterpart to "
            "export; fusedrnn.onnx.export writes it (ONNX GRU, linear_before_reset=0) from the "
            "NumPy module (fusedrnn.GRU with reset_after=False and these weights)")
    kind = type(module).__name__
    base = kind if kind in _TORCH_NN_CLASSES else next(
        c.__name__ for c in type(module).__mro__ if c.__name__ in _TORCH_NN_CLASSES)
    twin = _same_configuration(getattr(torch.nn, base), module, base)
    twin.train(module.training)
    # the module's current tensors (under torch.func.functional_call: the substituted ones)
    for name, param in module.named_parameters():
        twin._parameters[name] = param
    if not base.endswith("Cell"):
        twin._init_flat_weights()  # torch.nn.RNNBase's list of the tensors it runs on
    return twin


_TORCH_NN_CLASSES = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")


def _same_configuration(cls, like, kind):
    """A parameter-less (meta device) ``cls`` configured as ``like`` (a torch.nn or a
    fusedrnn.torch module of class ``kind``: both expose torch.nn's attributes)."""
    kw = dict(bias=like.bias, device="meta", dtype=next(like.parameters()).dtype)
    if kind in ("RNN", "RNNCell"):
        kw["nonlinearity"] = like.nonlinearity
    if not kind.endswith("Cell"):
        kw.update(num_layers=like.num_layers, batch_first=like.batch_first,
                  dropout=like.dropout, bidirectional=like.bidirectional)
    if kind == "LSTM":
        kw["proj_size"] = like.proj_size
    # a one-layer dropout notice is torch.nn's to give (at construction); building is no part
    # of a torch.func transform
    with warnings.catch_warnings(), torch._C._DisableFuncTorch():
        warnings.simplefilter("ignore")
        return cls(like.input_size, like.hidden_size, **kw)


def _draw_seed():
    """One draw from PyTorch's default generator (so torch.manual_seed controls dropout), as a
    0-d tensor: it stays in a compiled graph."""
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)


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
        if _use_torch_nn_ops():
            return _as_torch_nn(self)(input, hx)
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
            lengths = lens.to(device=x.device, dtype=torch.int64)
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
                      seed=0, reset_after=spec.reset_after, lengths=lengths)
        y, h_n, c_n = self._run_layers(cfg, x, h0, c0 if is_lstm else None, weights,
                                       dropout_active)

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


    def _run_layers(self, cfg, x, h0, c0, weights, dropout_active):
        """The stack on prepared tensors (time-major unless ``cfg.batch_first``). Returns
        (y, h_n, c_n or None)."""
        return _run_stack(cfg, x, h0, c0, weights, dropout_active,
                          _draw_seed() if dropout_active else None)


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

    def __call__(self, *args, **kwargs):
        if _use_torch_nn_ops():
            return _as_torch_nn(self)(*args, **kwargs)
        return super().__call__(*args, **kwargs)

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
        _, h_n, c_n = self._run_step(cfg, input.unsqueeze(0), h0, c0, weights)
        h1 = h_n[0] if is_batched else h_n[0, 0]
        c1 = None if c_n is None else (c_n[0] if is_batched else c_n[0, 0])
        return h1, c1


    def _run_step(self, cfg, x, h0, c0, weights):
        """One step as a one-layer stack (x (1, B, I)): (y, h_n, c_n or None)."""
        return _run_stack(cfg, x, h0, c0, weights, False)


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


# --------------------------------------------------------------------------------------------
# Regularised RNN / LSTM / GRU (fusedrnn.regularised: layer norm, zoneout, recurrent dropout,
# DropConnect, clipping, peepholes), CPU kernels.


class _RegularisedStack(torch.autograd.Function):
    """The regularised stack (fusedrnn.regularised) as one autograd node: forward and BPTT are
    one native call per layer and direction. First-order only."""

    @staticmethod
    def forward(ctx, meta, x, h0, c0, *tensors):
        import fusedrnn.regularised as fr
        names = meta["names"]
        arrays = {n: t.detach().numpy() for n, t in zip(names, tensors)}
        lengths = meta["lengths"]
        y, h_n, c_n, rctx = fr.stack_forward(
            meta["mode"], x.detach().numpy(), arrays, reg=meta["reg"],
            num_layers=meta["num_layers"], bidirectional=meta["bidirectional"],
            h0=None if h0 is None else h0.detach().numpy(),
            c0=None if c0 is None else c0.detach().numpy(),
            lengths=None if lengths is None else lengths.numpy(),
            batch_first=meta["batch_first"], dropout=meta["dropout"], seed=meta["seed"],
            reset_after=meta["reset_after"], training=meta["needs_grad"],
            stochastic=meta["stochastic"], check_inplace=False)  # autograd's version counters
        ctx.rctx = rctx
        ctx.names = names
        ctx.has_state = (h0 is not None, c0 is not None)
        # saved so autograd's version counters catch an in-place change before backward
        ctx.save_for_backward(x, h0, c0, *tensors)
        out = (torch.from_numpy(y), torch.from_numpy(h_n))
        return out + ((torch.from_numpy(c_n),) if c_n is not None else (None,))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        import fusedrnn.regularised as fr
        ctx.saved_tensors  # noqa: B018 (raises if one was modified in place)

        def arr(t):
            return None if t is None else t.detach().contiguous().numpy()

        dx, dh0, dc0, grads = fr.stack_backward(ctx.rctx, arr(dy), arr(dh_n), arr(dc_n))
        weights = [torch.from_numpy(grads[n]) if n in grads else None for n in ctx.names]
        return (None, torch.from_numpy(dx),
                torch.from_numpy(dh0) if ctx.has_state[0] else None,
                torch.from_numpy(dc0) if ctx.has_state[1] and dc0 is not None else None,
                *weights)


class _RegularisedBase(RNNBase):
    """Base of :class:`RegularisedRNN`, :class:`RegularisedLSTM` and :class:`RegularisedGRU`:
    torch.nn's RNN/LSTM/GRU (same arguments, parameters, inputs and outputs) plus the options
    of :class:`fusedrnn.regularised.Regularisation` as keyword arguments, and their parameters
    (``ln_weight_ih_l0`` ..., ``weight_peephole_l0`` ...). Training mode draws the masks
    (zoneout, recurrent dropout, DropConnect, dropout between layers) from fusedrnn's
    counter-based generator, seeded by one ``torch.randint`` draw per forward; eval mode runs
    zoneout's expectation and no dropout. CPU tensors, float32 and float64 (the CUDA backend
    has no regularised kernels yet: ``NotImplementedError``); first-order gradients (a
    ``create_graph=True`` backward raises)."""

    def __init__(self, mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, proj_size, device, dtype, reg, forget_bias=None,
                 reset_after=True):
        import fusedrnn.regularised as fr
        reg.check_mode(rnn_mode_of(mode), reset_after)
        self.reg = reg
        self.forget_bias = forget_bias
        if forget_bias is not None and mode != "LSTM":
            raise ValueError("forget_bias is for the LSTM only")
        self._reg_shapes = fr.param_shapes(rnn_mode_of(mode), reg, hidden_size, num_layers,
                                           bidirectional)
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, reset_after=reset_after)

    def _register_reg_params(self):
        for name, shape in self._reg_shapes.items():
            if name not in self._parameters:
                ref = self.weight_ih_l0
                setattr(self, name, Parameter(torch.empty(shape, device=ref.device,
                                                          dtype=ref.dtype)))

    def reset_parameters(self) -> None:
        """torch.nn's initialisation for torch.nn's parameters; layer-norm gains 1 and the cell
        state's shift 0 (Haste), peepholes 0; with ``forget_bias`` the LSTM's forget-gate bias
        (``bias_ih`` rows H:2H, ``bias_hh`` there 0)."""
        self._register_reg_params()
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        with torch.no_grad():
            for name, weight in self.named_parameters():
                if name in self._reg_shapes:
                    base = name.rsplit("_l", 1)[0]
                    weight.fill_(1.0 if base.startswith("ln_weight") else 0.0)
                else:
                    init.uniform_(weight, -stdv, stdv)
            if self.forget_bias is not None and self.bias:
                H = self.hidden_size
                for name, weight in self.named_parameters():
                    if name.startswith("bias_ih"):
                        weight[H:2 * H] = float(self.forget_bias)
                    elif name.startswith("bias_hh"):
                        weight[H:2 * H] = 0.0

    def extra_repr(self) -> str:
        opts = [f"{f}={getattr(self.reg, f)!r}" for f in (
            "layer_norm", "zoneout_h", "zoneout_c", "recurrent_dropout", "dropconnect",
            "gate_clip", "cell_clip", "peepholes") if getattr(self.reg, f) != getattr(
                type(self.reg)(), f)]
        if self.forget_bias is not None:
            opts.append(f"forget_bias={self.forget_bias!r}")
        return ", ".join([super().extra_repr()] + opts)

    def forward(self, input, hx=None):
        if _use_torch_nn_ops():
            raise RuntimeError(
                f"{type(self).__name__}: torch.func transforms and ONNX export run torch.nn's "
                f"own ops, and torch.nn has no regularised RNN cells")
        return super().forward(input, hx)

    def _run_layers(self, cfg, x, h0, c0, weights, dropout_active):
        stochastic = self.training and (
            dropout_active or any(getattr(self.reg, f) for f in (
                "zoneout_h", "zoneout_c", "recurrent_dropout", "dropconnect")))
        if not stochastic and not self.reg.deterministic_active:
            # every option is a dropout, off here (eval mode): the plain fused stack
            return super()._run_layers(cfg, x, h0, c0, weights, dropout_active)
        return _run_regularised(self, cfg, x, h0, c0, weights, stochastic, "")


def _run_regularised(module, cfg, x, h0, c0, weights, stochastic, suffix):
    """The regularised stack of ``module`` (a layer, or a cell with ``suffix="_l0"`` naming its
    option parameters as a one-layer stack's) through one autograd node."""
    if x.device.type != "cpu":
        raise NotImplementedError(
            f"{type(module).__name__}: the regularised kernels run on the CPU; the CUDA "
            f"backend has no regularised kernels yet (got a tensor on {x.device})")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{type(module).__name__}: float32 or float64 tensors, got {x.dtype}")
    reg_names = list(module._reg_shapes)
    reg_tensors = [getattr(module, n) for n in reg_names]
    for name, t in zip(reg_names, reg_tensors):
        if t.dtype != x.dtype or t.device != x.device:
            raise RuntimeError(f"{type(module).__name__}: {name} is {t.dtype} on {t.device}, "
                               f"the input {x.dtype} on {x.device}")
    tensors = list(weights) + reg_tensors
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *tensors))
    lengths = cfg.lengths
    if lengths is not None:
        lengths = lengths.detach().to("cpu")
    meta = dict(names=list(cfg.names) + [n + suffix for n in reg_names], mode=module.spec.mode,
                reg=module.reg, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional,
                batch_first=cfg.batch_first, dropout=cfg.dropout,
                seed=int(_draw_seed()) if stochastic else 0, reset_after=cfg.reset_after,
                lengths=lengths, needs_grad=needs_grad, stochastic=stochastic)
    return _RegularisedStack.apply(meta, x.contiguous(), h0, c0, *tensors)


def rnn_mode_of(torch_mode):
    """fusedrnn.regularised's mode of torch.nn's mode name."""
    return torch_mode.lower()  # "LSTM", "GRU", "rnn_tanh", "rnn_relu" as RNNBase takes them


_REG_DOC = """

    Options (keyword only; :class:`fusedrnn.regularised.Regularisation`): ``layer_norm``,
    ``zoneout_h``, ``zoneout_c`` (LSTM), ``recurrent_dropout``, ``dropconnect``, ``gate_clip``
    (LSTM), ``cell_clip`` (LSTM), ``peepholes`` (LSTM), ``ln_eps``; ``forget_bias`` (LSTM: the
    forget gate's initial bias, Keras' ``unit_forget_bias`` is 1.0). See
    :class:`_RegularisedBase` for modes, devices and gradients."""


def _reg_kwargs(layer_norm, zoneout_h, zoneout_c, recurrent_dropout, dropconnect, gate_clip,
                cell_clip, peepholes, ln_eps):
    from fusedrnn.regularised import Regularisation
    return Regularisation(layer_norm=layer_norm, zoneout_h=zoneout_h, zoneout_c=zoneout_c,
                          recurrent_dropout=recurrent_dropout, dropconnect=dropconnect,
                          gate_clip=gate_clip, cell_clip=cell_clip, peepholes=peepholes,
                          ln_eps=ln_eps)


class RegularisedLSTM(_RegularisedBase):
    __doc__ = ("LSTM with the regularisations of :mod:`fusedrnn.regularised` (Haste's "
               "``LayerNormLSTM`` with ``layer_norm=True, zoneout_h=...``)." + _REG_DOC)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None, *,
                 layer_norm: bool = False, zoneout_h: float = 0.0, zoneout_c: float = 0.0,
                 recurrent_dropout: float = 0.0, dropconnect: float = 0.0,
                 gate_clip: Optional[float] = None, cell_clip=None, peepholes: bool = False,
                 ln_eps: float = 1e-5, forget_bias: Optional[float] = None):
        reg = _reg_kwargs(layer_norm, zoneout_h, zoneout_c, recurrent_dropout, dropconnect,
                          gate_clip, cell_clip, peepholes, ln_eps)
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype, reg, forget_bias)


class RegularisedGRU(_RegularisedBase):
    __doc__ = ("GRU with the regularisations of :mod:`fusedrnn.regularised` (layer norm, "
               "zoneout_h, recurrent_dropout, dropconnect)." + _REG_DOC)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *,
                 reset_after: bool = True, layer_norm: bool = False, zoneout_h: float = 0.0,
                 recurrent_dropout: float = 0.0, dropconnect: float = 0.0,
                 ln_eps: float = 1e-5):
        reg = _reg_kwargs(layer_norm, zoneout_h, 0.0, recurrent_dropout, dropconnect, None,
                          None, False, ln_eps)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype, reg,
                         reset_after=reset_after)


class RegularisedRNN(_RegularisedBase):
    __doc__ = ("Elman RNN with the regularisations of :mod:`fusedrnn.regularised` (layer "
               "norm, zoneout_h, recurrent_dropout, dropconnect)." + _REG_DOC)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None, *,
                 layer_norm: bool = False, zoneout_h: float = 0.0,
                 recurrent_dropout: float = 0.0, dropconnect: float = 0.0,
                 ln_eps: float = 1e-5):
        reg = _reg_kwargs(layer_norm, zoneout_h, 0.0, recurrent_dropout, dropconnect, None,
                          None, False, ln_eps)
        super().__init__(rnn_mode(nonlinearity), input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, 0, device, dtype, reg)

    @property
    def nonlinearity(self) -> str:
        return self.spec.nonlinearity


class _RegularisedCellMixin:
    """A cell (one step) with the deterministic-per-step options: layer norm, zoneout (a mask
    per call in train mode), gate and cell clipping, peepholes. Recurrent dropout and
    DropConnect hold one mask for a whole sequence, which a cell called step by step cannot
    know: use the layer."""

    def _setup_reg(self, mode, hidden_size, reg):
        import fusedrnn.regularised as fr
        reg.check_mode(mode, getattr(self, "_reset_after_arg", True))
        self.reg = reg
        self._reg_shapes = {n[:-len("_l0")]: shape for n, shape in fr.param_shapes(
            mode, reg, hidden_size).items()}

    def reset_parameters(self) -> None:
        """torch.nn's initialisation; layer-norm gains 1, the cell state's shift 0, peepholes 0."""
        if not hasattr(self, "reg"):
            return
        for name, shape in self._reg_shapes.items():
            if name not in self._parameters:
                ref = self.weight_ih
                setattr(self, name, Parameter(torch.empty(shape, device=ref.device,
                                                          dtype=ref.dtype)))
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        with torch.no_grad():
            for name, weight in self.named_parameters():
                if name in self._reg_shapes:
                    weight.fill_(1.0 if name.startswith("ln_weight") else 0.0)
                else:
                    init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        opts = [f"{f}={getattr(self.reg, f)!r}" for f in (
            "layer_norm", "zoneout_h", "zoneout_c", "gate_clip", "cell_clip", "peepholes")
            if getattr(self.reg, f) != getattr(type(self.reg)(), f)]
        return ", ".join([self.spec.extra_repr()] + opts)

    def __call__(self, *args, **kwargs):
        if _use_torch_nn_ops():
            raise RuntimeError(
                f"{type(self).__name__}: torch.func transforms and ONNX export run torch.nn's "
                f"own ops, and torch.nn has no regularised RNN cells")
        return torch.nn.Module.__call__(self, *args, **kwargs)

    def _run_step(self, cfg, x, h0, c0, weights):
        stochastic = self.training and bool(self.reg.zoneout_h or self.reg.zoneout_c)
        return _run_regularised(self, cfg, x, h0, c0, weights, stochastic, "_l0")


def _cell_reg(layer_norm, zoneout_h, zoneout_c, gate_clip, cell_clip, peepholes, ln_eps):
    return _reg_kwargs(layer_norm, zoneout_h, zoneout_c, 0.0, 0.0, gate_clip, cell_clip,
                       peepholes, ln_eps)


class RegularisedLSTMCell(_RegularisedCellMixin, LSTMCell):
    """``torch.nn.LSTMCell`` with ``layer_norm``, ``zoneout_h``/``zoneout_c``, ``gate_clip``,
    ``cell_clip`` and ``peepholes`` (keyword only), parameters ``ln_weight_ih``,
    ``ln_weight_hh``, ``ln_weight_c``, ``ln_bias_c``, ``weight_peephole`` as they apply. One
    native step per call (CPU, float32/float64); zoneout draws a mask per call in train mode."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, layer_norm: bool = False, zoneout_h: float = 0.0,
                 zoneout_c: float = 0.0, gate_clip: Optional[float] = None, cell_clip=None,
                 peepholes: bool = False, ln_eps: float = 1e-5):
        self._pending_reg = _cell_reg(layer_norm, zoneout_h, zoneout_c, gate_clip, cell_clip,
                                      peepholes, ln_eps)
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def reset_parameters(self) -> None:
        if not hasattr(self, "reg"):
            self._setup_reg("lstm", self.hidden_size, self.__dict__.pop("_pending_reg"))
        _RegularisedCellMixin.reset_parameters(self)


class RegularisedGRUCell(_RegularisedCellMixin, GRUCell):
    """``torch.nn.GRUCell`` with ``layer_norm`` and ``zoneout_h`` (keyword only)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, reset_after: bool = True, layer_norm: bool = False,
                 zoneout_h: float = 0.0, ln_eps: float = 1e-5):
        self._pending_reg = _cell_reg(layer_norm, zoneout_h, 0.0, None, None, False, ln_eps)
        self._reset_after_arg = reset_after
        super().__init__(input_size, hidden_size, bias, device, dtype, reset_after=reset_after)

    def reset_parameters(self) -> None:
        if not hasattr(self, "reg"):
            self._setup_reg("gru", self.hidden_size, self.__dict__.pop("_pending_reg"))
        _RegularisedCellMixin.reset_parameters(self)


class RegularisedRNNCell(_RegularisedCellMixin, RNNCell):
    """``torch.nn.RNNCell`` with ``layer_norm`` and ``zoneout_h`` (keyword only)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None, *,
                 layer_norm: bool = False, zoneout_h: float = 0.0, ln_eps: float = 1e-5):
        self._pending_reg = _cell_reg(layer_norm, zoneout_h, 0.0, None, None, False, ln_eps)
        super().__init__(input_size, hidden_size, bias, nonlinearity, device, dtype)

    def reset_parameters(self) -> None:
        if not hasattr(self, "reg"):
            self._setup_reg(self.spec.mode, self.hidden_size, self.__dict__.pop("_pending_reg"))
        _RegularisedCellMixin.reset_parameters(self)


# --------------------------------------------------------------------------------------------
# Conversions (the classes are not torch.nn's: docs/design.md §3.1 says why)


def to_torch(module: Union[RNNBase, RNNCellBase]) -> torch.nn.Module:
    """The torch.nn module of the same class and configuration holding the very same Parameter
    objects (no copy: training either trains both). For code that dispatches on the exact
    class: ``torch.ao.quantization.quantize_dynamic``, ``torch.load(weights_only=True)`` with
    ``safe_globals([torch.nn.LSTM])``. The GRU with ``reset_after=False`` has no torch.nn
    counterpart (RuntimeError)."""
    if not isinstance(module, (RNNBase, RNNCellBase)):
        raise TypeError(f"to_torch: expected a fusedrnn.torch module, got {type(module).__name__}")
    if getattr(module, "reg", None) is not None:
        raise TypeError(f"to_torch: {type(module).__name__} has no torch.nn counterpart "
                        f"(torch.nn has no regularised RNN cells)")
    return _as_torch_nn(module)  # built on the meta device; its parameters are ours


def from_torch(module: torch.nn.Module) -> Union[RNNBase, RNNCellBase]:
    """The fusedrnn.torch module of the same class and configuration as a torch.nn
    ``RNN/LSTM/GRU/RNNCell/LSTMCell/GRUCell``, holding its very Parameter objects (no copy)."""
    kind = type(module).__name__
    if not (isinstance(module, (torch.nn.RNNBase, torch.nn.RNNCellBase))
            and kind in _TORCH_NN_CLASSES):
        raise TypeError(f"from_torch: expected a torch.nn RNN/LSTM/GRU or cell, got {kind}")
    ours = _same_configuration(globals()[kind], module, kind)
    for name, param in module.named_parameters():
        ours._parameters[name] = param
    ours.train(module.training)
    return ours


def swap_modules(model: torch.nn.Module, to: str) -> torch.nn.Module:
    """Replaces, in place, every recurrent submodule of ``model`` (and ``model`` itself, which
    is returned) by its counterpart sharing the same Parameters: ``to="fusedrnn"`` turns
    torch.nn's into fusedrnn.torch's, ``to="torch"`` the reverse (before quantize_dynamic or a
    weights-only save that allows torch.nn's classes)."""
    if to not in ("fusedrnn", "torch"):
        raise ValueError(f"to must be 'fusedrnn' or 'torch', got {to!r}")

    def convert(m):
        if to == "torch" and isinstance(m, (RNNBase, RNNCellBase)) and \
                getattr(m, "reg", None) is None:
            return to_torch(m)
        if to == "fusedrnn" and type(m).__name__ in _TORCH_NN_CLASSES and \
                isinstance(m, (torch.nn.RNNBase, torch.nn.RNNCellBase)):
            return from_torch(m)
        return None

    top = convert(model)
    if top is not None:
        return top
    for name, child in list(model.named_children()):
        new = convert(child)
        if new is not None:
            setattr(model, name, new)
        else:
            swap_modules(child, to)
    return model
