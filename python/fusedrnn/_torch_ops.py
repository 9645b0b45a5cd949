"""fusedrnn's stack as torch custom operators (``torch.library.custom_op``), the one path every
fusedrnn.torch module takes into the kernels:

* ``fusedrnn::stack_forward(x, h0, c0, weights, lengths, seed, <config>)
  -> (y, h_n, c_n, reserve)``: c_n is empty (0,) for cells without a cell state; reserve is the
  uint8 training state backward reads (empty (0,) when ``training`` is False);
* ``fusedrnn::stack_backward(x, h0, c0, weights, lengths, reserve, dy, dh_n, dc_n, <config>)
  -> (dx, dh0, dc0, weight_grads)``.

Both have fake (meta) implementations, so ``torch.compile(fullgraph=True)`` and
``torch.export`` trace through them with dynamic T and B (the reserve's size is data-dependent
to the tracer: an unbacked size), and ``stack_forward``'s autograd is registered
(``register_autograd``): backward runs ``stack_backward``; under ``create_graph=True`` it
differentiates a recomputation in torch.nn's own RNN ops instead (double backward).

``weights`` is ``RNNBase._flat_weights`` order (per layer and direction: weight_ih,
weight_hh, [bias_ih, bias_hh], [weight_hr]); ``lengths`` (B,) int64, on the CPU or on x's CUDA
device; ``seed`` a 0-d int64 tensor (dropout's keep-bits), so drawing it stays in the graph.
"""

from __future__ import annotations

import functools
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fusedrnn import functional as _F
from fusedrnn.reference import param_names

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_TORCH_CLASS = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


class _Config:
    """What one stack call needs besides the tensors (the ops' non-tensor arguments)."""

    __slots__ = ("mode", "names", "num_layers", "bidirectional", "batch_first", "dropout",
                 "seed", "reset_after", "lengths")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


@functools.lru_cache(maxsize=256)
def weight_names(mode: str, num_layers: int, bidirectional: bool, has_bias: bool,
                 has_proj: bool) -> Tuple[str, ...]:
    """PyTorch's flat weight names in ``_flat_weights`` order (cached: every call needs them)."""
    return tuple(n for l in range(num_layers) for d in range(2 if bidirectional else 1)
                 for n in param_names(l, d, bias=has_bias, proj=has_proj))


def _detached(t):
    """The tensor as the kernels take it: detached (DLPack refuses tensors that require grad)
    and, on a CUDA device, contiguous (the native side copies strided host arrays itself, but
    makes no device copies; autograd hands expanded gradients to backward)."""
    if t is None:
        return None
    t = t.detach()
    return t if t.device.type == "cpu" else t.contiguous()


def _lengths_arg(lengths: Optional[Tensor]):
    """lengths as the native call takes them: NumPy int64 on the CPU, the tensor on a device."""
    if lengths is None:
        return None
    return lengths.numpy().astype(np.int64) if lengths.device.type == "cpu" else lengths


def follow_torch_threads() -> None:
    """fusedrnn.torch runs on torch's intra-op thread count (``torch.set_num_threads``;
    DataLoader workers set it to 1) until ``fusedrnn.set_num_threads`` is called, after which
    fusedrnn's own count holds. Checked before every kernel call; a change costs one store."""
    import fusedrnn
    if fusedrnn._threads_set_explicitly:
        return
    n = max(1, min(torch.get_num_threads(), fusedrnn._C.MAX_THREADS))
    if n != fusedrnn._C.get_num_threads():
        fusedrnn._C.set_num_threads(n)


def _context(x, h0, c0, weights, lengths, reserve, mode, num_layers, bidirectional,
             batch_first, dropout, reset_after, has_bias, has_proj):
    names = weight_names(mode, num_layers, bidirectional, has_bias, has_proj)
    return _F.StackContext(mode, _F._kind(mode, reset_after), False, num_layers, bidirectional,
                           False, batch_first, dropout, 0, _lengths_arg(lengths), None,
                           _detached(x), _detached(h0), _detached(c0),
                           {n: _detached(w) for n, w in zip(names, weights)}, reserve)


# ---- forward ---------------------------------------------------------------------------------

def _forward_impl(x, h0, c0, weights, lengths, seed, mode, num_layers, bidirectional,
                  batch_first, dropout, reset_after, has_bias, has_proj, training):
    follow_torch_threads()
    names = weight_names(mode, num_layers, bidirectional, has_bias, has_proj)
    y, h_n, c_n, ctx = _F.stack_forward(
        mode, _detached(x), {n: _detached(w) for n, w in zip(names, weights)},
        num_layers=num_layers, bidirectional=bidirectional, h0=_detached(h0), c0=_detached(c0),
        lengths=_lengths_arg(lengths), batch_first=batch_first, dropout=dropout,
        seed=int(seed.item()) if dropout > 0 else 0, reset_after=reset_after, training=training,
        # in-place changes are caught by autograd's version counters (saved tensors), as for
        # torch.nn
        check_inplace=False)
    if c_n is None:
        c_n = x.new_empty(0)
    reserve = ctx.reserve if ctx is not None else x.new_empty(0, dtype=torch.uint8)
    return y, h_n, c_n, reserve


@torch.library.custom_op("fusedrnn::stack_forward", mutates_args=())
def stack_forward(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], weights: List[Tensor],
                  lengths: Optional[Tensor], seed: Tensor, mode: str, num_layers: int,
                  bidirectional: bool, batch_first: bool, dropout: float, reset_after: bool,
                  has_bias: bool, has_proj: bool, training: bool
                  ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward_impl(x, h0, c0, weights, lengths, seed, mode, num_layers, bidirectional,
                         batch_first, dropout, reset_after, has_bias, has_proj, training)


@stack_forward.register_fake
def _(x, h0, c0, weights, lengths, seed, mode, num_layers, bidirectional, batch_first, dropout,
      reset_after, has_bias, has_proj, training):
    D = 2 if bidirectional else 1
    R = weights[1].shape[1]
    H = weights[1].shape[0] // GATES[mode]
    T, B = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    y = x.new_empty((B, T, D * R) if batch_first else (T, B, D * R))
    h_n = x.new_empty((num_layers * D, B, R))
    c_n = x.new_empty((num_layers * D, B, H)) if mode == "lstm" else x.new_empty(0)
    n = torch.library.get_ctx().new_dynamic_size() if training else 0
    return y, h_n, c_n, x.new_empty((n,), dtype=torch.uint8)


# ---- backward --------------------------------------------------------------------------------

def _backward_impl(x, h0, c0, weights, lengths, reserve, dy, dh_n, dc_n, mode, num_layers,
                   bidirectional, batch_first, dropout, reset_after, has_bias, has_proj):
    follow_torch_threads()
    ctx = _context(x, h0, c0, weights, lengths, reserve, mode, num_layers, bidirectional,
                   batch_first, dropout, reset_after, has_bias, has_proj)
    dx, dh0, dc0, grads = _F.stack_backward(ctx, _detached(dy), _detached(dh_n),
                                            _detached(dc_n))
    if dc0 is None:
        dc0 = x.new_empty(0)
    return dx, dh0, dc0, [grads[n] for n in ctx.param_names]


@torch.library.custom_op("fusedrnn::stack_backward", mutates_args=())
def stack_backward(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], weights: List[Tensor],
                   lengths: Optional[Tensor], reserve: Tensor, dy: Optional[Tensor],
                   dh_n: Optional[Tensor], dc_n: Optional[Tensor], mode: str, num_layers: int,
                   bidirectional: bool, batch_first: bool, dropout: float, reset_after: bool,
                   has_bias: bool, has_proj: bool
                   ) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
    return _backward_impl(x, h0, c0, weights, lengths, reserve, dy, dh_n, dc_n, mode,
                          num_layers, bidirectional, batch_first, dropout, reset_after, has_bias,
                          has_proj)


@stack_backward.register_fake
def _(x, h0, c0, weights, lengths, reserve, dy, dh_n, dc_n, mode, num_layers, bidirectional,
      batch_first, dropout, reset_after, has_bias, has_proj):
    D = 2 if bidirectional else 1
    R = weights[1].shape[1]
    H = weights[1].shape[0] // GATES[mode]
    B = x.shape[0] if batch_first else x.shape[1]
    dh0 = x.new_empty((num_layers * D, B, R))
    dc0 = x.new_empty((num_layers * D, B, H)) if mode == "lstm" else x.new_empty(0)
    return torch.empty_like(x), dh0, dc0, [torch.empty_like(w) for w in weights]


# ---- autograd --------------------------------------------------------------------------------

_CONFIG = ("mode", "num_layers", "bidirectional", "batch_first", "dropout", "reset_after",
           "has_bias", "has_proj")


def _setup_context(ctx, inputs, output):
    x, h0, c0, weights, lengths, seed, *config, training = inputs
    ctx.config = dict(zip(_CONFIG, config))
    ctx.training = training  # else the reserve is empty (decided here: its size is unbacked
    # to a tracer, which cannot branch on it)
    ctx.n_weights = len(weights)
    ctx.has_h0, ctx.has_c0, ctx.has_lengths = h0 is not None, c0 is not None, lengths is not None
    present = [t for t in (x, h0, c0, lengths) if t is not None]
    ctx.save_for_backward(*present, output[3], *weights)


def _maybe_detach(t):
    return None if t is None else t.detach()


def _unpack(ctx):
    saved = list(ctx.saved_tensors)  # raises if an input or a weight was modified in place
    x = saved.pop(0)
    h0 = saved.pop(0) if ctx.has_h0 else None
    c0 = saved.pop(0) if ctx.has_c0 else None
    lengths = saved.pop(0) if ctx.has_lengths else None
    reserve = saved.pop(0)
    return x, h0, c0, lengths, reserve, saved


def _backward(ctx, dy, dh_n, dc_n, _dreserve):
    x, h0, c0, lengths, reserve, weights = _unpack(ctx)
    cfg = ctx.config
    if cfg["mode"] != "lstm":
        dc_n = None
    if not ctx.training:
        # the forward ran with training=False (no state kept; its layers saw no dropout):
        # recompute it with its training state, then differentiate as usual
        cfg = dict(cfg, dropout=0.0)
        ctx.config = cfg
        reserve = torch.ops.fusedrnn.stack_forward(
            x.detach(), _maybe_detach(h0), _maybe_detach(c0), [w.detach() for w in weights],
            lengths, torch.zeros((), dtype=torch.int64), *(cfg[k] for k in _CONFIG), True)[3]
    if torch.is_grad_enabled() and not (cfg["mode"] == "gru" and not cfg["reset_after"]):
        return _differentiable_backward(ctx, x, h0, c0, lengths, reserve, weights, dy, dh_n,
                                        dc_n)
    backward = _backward_impl if getattr(ctx, "eager", False) else \
        torch.ops.fusedrnn.stack_backward
    dx, dh0, dc0, dws = backward(x, h0, c0, weights, lengths, reserve, dy, dh_n, dc_n,
                                 *(cfg[k] for k in _CONFIG))
    grads = [dx, dh0 if h0 is not None else None, dc0 if c0 is not None else None, list(dws)]
    if torch.is_grad_enabled():  # create_graph=True where nothing can differentiate this
        sources = [t for t in (x, h0, c0, *weights, dy, dh_n, dc_n)
                   if isinstance(t, torch.Tensor) and t.requires_grad]
        flat = [g for g in (grads[0], grads[1], grads[2], *grads[3]) if g is not None]
        if sources and flat:
            linked = iter(_DoubleBackwardError.apply(len(flat), *flat, *sources))
            grads = [next(linked) if g is not None else None for g in grads[:3]] + \
                [[next(linked) for _ in grads[3]]]
    return (grads[0], grads[1], grads[2], grads[3]) + (None,) * (2 + len(_CONFIG) + 1)


stack_forward.register_autograd(_backward, setup_context=_setup_context)


class _EagerStack(torch.autograd.Function):
    """The same forward, autograd formula and backward as the operator, called directly: in
    eager mode the dispatcher's round trips of a custom operator cost more than a small call's
    kernels (``run_stack`` takes this path when nothing traces). Arguments as the operator's,
    reordered for autograd.Function (which differentiates only top-level tensors):
    ``(config, x, h0, c0, lengths, seed, *weights)``."""

    @staticmethod
    def forward(config, x, h0, c0, lengths, seed, *weights):
        return _forward_impl(x, h0, c0, list(weights), lengths, seed, *config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        config, x, h0, c0, lengths, seed, *weights = inputs
        _setup_context(ctx, (x, h0, c0, weights, lengths, seed, *config), output)
        ctx.eager = True
        ctx.mark_non_differentiable(output[3])

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, dreserve):
        dx, dh0, dc0, dws = _backward(ctx, dy, dh_n, dc_n, dreserve)[:4]
        return (None, dx, dh0, dc0, None, None, *dws)


def run_stack(x, h0, c0, weights, lengths, seed, *config, needs_grad: bool):
    """``stack_forward(...)``: through the custom operator where anything traces (dynamo, AOT
    autograd, export: tensors are then fake or functional, never plain), else directly (and
    without autograd's bookkeeping where no gradient is wanted)."""
    if type(x) is torch.Tensor and not torch.compiler.is_compiling():
        if not needs_grad:
            return _forward_impl(x, h0, c0, list(weights), lengths, seed, *config)
        return _EagerStack.apply(tuple(config), x, h0, c0, lengths, seed, *weights)
    return torch.ops.fusedrnn.stack_forward(x, h0, c0, list(weights), lengths, seed, *config)


# ---- second order ----------------------------------------------------------------------------

_NO_DOUBLE_BACKWARD = (
    "fusedrnn.torch cannot differentiate the gradient of a GRU with reset_after=False (torch.nn "
    "has no such GRU whose differentiable ops it could use): this graph differentiates it "
    "(autograd.grad(..., create_graph=True) followed by a backward through its result).")


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


def _differentiable_backward(ctx, x, h0, c0, lengths, reserve, weights, dy, dh_n, dc_n):
    cfg = ctx.config
    names = weight_names(cfg["mode"], cfg["num_layers"], cfg["bidirectional"], cfg["has_bias"],
                         cfg["has_proj"])
    masks = None
    if cfg["dropout"] > 0 and cfg["num_layers"] > 1:
        masks = _context(x, h0, c0, weights, lengths, reserve, *(cfg[k] for k in _CONFIG)
                         ).keep_masks
    rc = _Config(mode=cfg["mode"], names=names, num_layers=cfg["num_layers"],
                 bidirectional=cfg["bidirectional"], batch_first=cfg["batch_first"],
                 dropout=cfg["dropout"], seed=0, reset_after=cfg["reset_after"],
                 lengths=lengths)
    # cuDNN's RNN backward is not differentiable itself; torch's native RNN ops are
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        outs = differentiable_stack(rc, x, h0, c0, weights, masks)
    pairs = [(o, g) for o, g in zip(outs, (dy, dh_n, dc_n)) if o is not None and g is not None]
    every = [t for t in (x, h0, c0, *weights) if t is not None]
    wanted = [t for t in every if t.requires_grad]
    found = {}
    if pairs and wanted:
        got = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                  create_graph=True, allow_unused=True)
        found = {id(t): g for t, g in zip(wanted, got)}
    got = [found.get(id(t)) if t.requires_grad else None for t in every]
    got = [g if g is not None or not t.requires_grad else torch.zeros_like(t)
           for g, t in zip(got, every)]
    it = iter(got)
    dx = next(it)
    dh0 = next(it) if h0 is not None else None
    dc0 = next(it) if c0 is not None else None
    return (dx, dh0, dc0, list(it)) + (None,) * (2 + len(_CONFIG) + 1)


def differentiable_stack(cfg, x, h0, c0, weights, masks):
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
        params = {n.replace(f"_l{l}", "_l0"): t for n, t in w.items()
                  if n.endswith(f"_l{l}") or n.endswith(f"_l{l}_reverse")}
        w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
        hidden = w_ih.shape[0] // GATES[cfg.mode]
        kw = dict(bias="bias_ih_l0" in params, bidirectional=D == 2, device="meta",
                  dtype=w_ih.dtype)
        if "weight_hr_l0" in params:
            kw["proj_size"] = w_hh.shape[1]
        if cfg.mode.startswith("rnn"):
            kw["nonlinearity"] = "relu" if cfg.mode == "rnn_relu" else "tanh"
        module = getattr(torch.nn, _TORCH_CLASS[cfg.mode])(w_ih.shape[1], hidden, 1, **kw)
        part = slice(l * D, (l + 1) * D)
        hx = None if h0 is None else h0[part]
        if cfg.mode == "lstm":
            hx = None
            if h0 is not None or c0 is not None:  # one given: zeros for the other
                B = xt.shape[1]
                hx = (h0[part] if h0 is not None else xt.new_zeros(D, B, w_hh.shape[1]),
                      c0[part] if c0 is not None else xt.new_zeros(D, B, hidden))
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
