"""Pure-NumPy building blocks for training sequence models without PyTorch.

Layers (``Linear``, ``Embedding``) keep PyTorch's parameter names, shapes and default
initialisation, and do explicit backward passes: ``backward(dy)`` returns the gradient with
respect to the input and *accumulates* parameter gradients into ``module.grads`` (a dict with
the same keys as the parameters) until ``zero_grad()``. Losses are plain functions that return
``(loss, gradient w.r.t. their first argument)``. Everything here depends on NumPy only.

There is no autograd and no ``Sequential`` container: the forward pass is written out, and the
backward pass is the same chain read in reverse. A sequence classifier / language model with
a fused LSTM (``fusedrnn.LSTM``, same conventions as ``torch.nn.LSTM``) and a linear head::

    import numpy as np, fusedrnn
    from fusedrnn import nn, optim

    rng = np.random.default_rng(0)
    emb = nn.Embedding(vocab, 64, padding_idx=0, rng=rng)
    rnn = fusedrnn.LSTM(64, 256, num_layers=2)
    head = nn.Linear(256, vocab, rng=rng)
    model = nn.collect_parameters(emb=emb, rnn=rnn, head=head)   # one view of all parameters
    opt = optim.Adam(model, lr=1e-3)
    model.train()

    for tokens, lengths in batches:                   # tokens: (T+1, B) int, 0 = padding
        x, target = tokens[:-1], tokens[1:]           # next-token prediction
        mask = np.arange(len(x))[:, None] < lengths[None, :] - 1      # (T, B) valid steps
        # forward
        e = emb(x)                                    # (T, B, 64)
        y, _ = rnn(e, lengths=lengths - 1)            # (T, B, 256)
        logits = head(y)                              # (T, B, vocab)
        loss, dlogits = nn.cross_entropy(logits, target, mask=mask)
        # backward: the same chain, reversed
        opt.zero_grad()
        dy = head.backward(dlogits)                   # (T, B, 256), head.grads filled
        de, _ = rnn.backward(dy)                      # (T, B, 64),  rnn.grads filled
        emb.backward(de)                              # emb.grads filled
        optim.clip_grad_norm_(model, 1.0)
        opt.step()                                    # parameters updated in place

For sequence classification take the last valid output of each sequence, e.g.
``feat = y[lengths - 1, np.arange(B)]`` (B, H), and scatter the head's input gradient back:
``dy = np.zeros_like(y); dy[lengths - 1, np.arange(B)] = head.backward(dlogits)``.

A layer keeps its last training-mode input for ``backward``; one ``forward`` is matched by one
``backward`` (call ``backward`` several times to accumulate the same gradient again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from fusedrnn._loader import _C

__all__ = ["Module", "Linear", "Embedding", "ParamGroup", "collect_parameters", "mse_loss",
           "binary_cross_entropy_with_logits", "cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------
# helpers


def _make_rng(rng=None, seed=None):
    """A ``np.random.Generator`` from ``rng`` (Generator, int seed or None) or ``seed``."""
    if rng is not None and seed is not None:
        raise TypeError("give rng or seed, not both")
    if rng is None:
        rng = seed
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def _float_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt.name}")
    return dt


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _check_state_dict(named, state_dict, strict=True):
    """Validates ``state_dict`` against ``named`` ({name: array}); returns {name: array}
    (converted, same shapes) for the keys to load. Raises before anything is modified."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    missing = [k for k in named if k not in state_dict]
    unexpected = [k for k in state_dict if k not in named]
    if strict and missing:
        raise KeyError(f"missing key(s) in state_dict: {', '.join(map(repr, missing))}")
    if strict and unexpected:
        raise KeyError(f"unexpected key(s) in state_dict: {', '.join(map(repr, unexpected))}")
    out = {}
    for k, p in named.items():
        if k not in state_dict:
            continue
        v = state_dict[k]
        if hasattr(v, "detach") and hasattr(v, "cpu"):   # a torch tensor, without importing torch
            v = v.detach().cpu().numpy()
        elif type(v).__module__.startswith("cupy") and hasattr(v, "get"):  # a CuPy array
            v = v.get()
        try:
            v = np.asarray(v)
        except Exception as e:  # pragma: no cover - exotic objects
            raise TypeError(f"state_dict[{k!r}] is not array-like: {e}") from None
        if v.dtype.kind not in "fiub":
            raise TypeError(f"state_dict[{k!r}] must hold real numbers, got dtype {v.dtype}")
        if v.shape != p.shape:
            raise ValueError(f"state_dict[{k!r}] has shape {v.shape}, the parameter has "
                             f"shape {p.shape}")
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# modules


class Module:
    """Base class: named parameters (NumPy arrays), their gradients, a training flag.

    Attributes: ``training`` (bool, default True), ``grads`` (dict name -> array shaped like
    the parameter; backward passes accumulate into it). Parameters are reachable as attributes
    (``lin.weight``); they are updated in place by optimizers and ``load_state_dict``, so the
    arrays keep their identity for the module's whole life.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        self.grads = {}
        self.training = True

    def _register_parameter(self, name, array):
        self._parameters[name] = array
        self.grads[name] = np.zeros_like(array)

    def __getattr__(self, name):
        params = self.__dict__.get("_parameters")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if params is not None and name in params:
            raise AttributeError(f"parameter {name!r} cannot be rebound (optimizers hold it); "
                                 f"assign in place ({name}[...] = v) or use load_state_dict")
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        """The layer's computation; subclasses define it (``module(x)`` calls it)."""
        raise NotImplementedError

    # -- mode
    def train(self, mode: bool = True):
        """Sets training mode (forward keeps what backward needs); returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Sets evaluation mode (``train(False)``); returns self."""
        return self.train(False)

    # -- parameters
    def named_parameters(self, prefix: str = ""):
        """Yields ``(name, array)`` for every parameter, in registration order."""
        for k, v in self._parameters.items():
            yield prefix + k, v

    def parameters(self):
        """Yields every parameter array."""
        for _, v in self.named_parameters():
            yield v

    def zero_grad(self):
        """Sets every gradient in ``grads`` to zero, in place."""
        for k, p in self._parameters.items():
            g = self.grads.get(k)
            if g is None or g.shape != p.shape:
                self.grads[k] = np.zeros_like(p)
            else:
                g.fill(0)

    def state_dict(self):
        """An ``OrderedDict`` name -> copy of each parameter."""
        return OrderedDict((k, v.copy()) for k, v in self.named_parameters())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copies arrays from ``state_dict`` into the parameters, in place.

        Missing or unexpected keys raise ``KeyError`` (when ``strict``), a wrong shape
        ``ValueError``, a non-numeric value ``TypeError``, each naming the key; everything is
        checked before anything is written, so on error the module is unchanged. Values are
        cast to the parameter dtype. PyTorch tensors are accepted."""
        named = OrderedDict(self.named_parameters())
        checked = _check_state_dict(named, state_dict, strict)
        for k, v in checked.items():
            named[k][...] = v

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        """The text inside ``repr(module)``'s parentheses."""
        return ""


class Linear(Module):
    """Affine map ``y = x W^T + b`` on the last axis, as ``torch.nn.Linear``.

    Parameters: ``weight`` (out_features, in_features), ``bias`` (out_features,) unless
    ``bias=False``; both drawn from U(-k, k), k = 1/sqrt(in_features) (PyTorch's default).

    ``forward(x)``: x (..., in_features) -> (..., out_features), any number of leading dims.
    ``backward(dy)``: dy (..., out_features) -> dx (..., in_features); adds dW and db to
    ``grads``. ``rng`` is a Generator or an int seed (``seed`` is an alias).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=np.float32, *, rng=None, seed=None):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.dtype = _float_dtype(dtype)
        self._x = None
        self._register_parameter("weight", np.empty((self.out_features, self.in_features),
                                                    self.dtype))
        if bias:
            self._register_parameter("bias", np.empty((self.out_features,), self.dtype))
        self.reset_parameters(rng=rng, seed=seed)

    @property
    def has_bias(self):
        """True when the layer has a ``bias`` parameter."""
        return "bias" in self._parameters

    def reset_parameters(self, rng=None, seed=None):
        """Redraws weight and bias from U(±1/sqrt(in_features)), in place."""
        g = _make_rng(rng, seed)
        k = 1.0 / np.sqrt(self.in_features)
        for p in self._parameters.values():
            p[...] = g.uniform(-k, k, size=p.shape)

    def forward(self, x):
        """x (..., in_features) -> y (..., out_features). Keeps x for backward in training."""
        x = np.asarray(x)
        if x.dtype != self.dtype:
            raise TypeError(f"Linear: input dtype {x.dtype} differs from the parameter dtype "
                            f"{self.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: input must have shape (..., {self.in_features}), got "
                             f"{x.shape}")
        # GEMMs go through fusedrnn's BLAS on fusedrnn's threads, like the RNNs they feed:
        # NumPy's BLAS pool, left spinning after a matmul, slows the next RNN call (~2x).
        x2 = np.ascontiguousarray(x.reshape(-1, self.in_features))
        y = np.empty((x2.shape[0], self.out_features), self.dtype)
        if self.has_bias:
            y[...] = self.bias
        _C.gemm(x2, self.weight, y, False, True, 1.0, 1.0 if self.has_bias else 0.0)
        self._x = x2 if self.training else None
        self._lead = x.shape[:-1]
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, dy):
        """dy (..., out_features) -> dx (..., in_features); accumulates grads['weight'] (out,
        in) and grads['bias'] (out,). Needs a forward in training mode first."""
        if self._x is None:
            raise RuntimeError("Linear.backward needs a forward call in training mode first "
                               "(call .train())")
        x2 = self._x
        dy = np.asarray(dy)
        if dy.shape != self._lead + (self.out_features,):
            raise ValueError(f"Linear.backward: dy must have shape "
                             f"{self._lead + (self.out_features,)}, got {dy.shape}")
        dy2 = np.ascontiguousarray(dy.astype(self.dtype, copy=False).reshape(-1, self.out_features))
        _C.gemm(dy2, x2, self.grads["weight"], True, False, 1.0, 1.0)  # dW += dy^T x
        if self.has_bias:
            self.grads["bias"] += dy2.sum(axis=0)
        dx = np.empty((dy2.shape[0], self.in_features), self.dtype)
        _C.gemm(dy2, self.weight, dx, False, False, 1.0, 0.0)
        return dx.reshape(self._lead + (self.in_features,))

    def extra_repr(self):
        """Sizes, bias and dtype, for ``repr``."""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.has_bias}, dtype={self.dtype.name}")


class Embedding(Module):
    """Lookup table, as ``torch.nn.Embedding``: integer indices (...) -> vectors (..., D).

    Parameter ``weight`` (num_embeddings, embedding_dim), drawn from N(0, 1) (PyTorch's
    default); the ``padding_idx`` row (if given; negative counts from the end) starts at zero
    and never receives a gradient.

    ``forward(idx)``: integer array (...) in [0, num_embeddings) -> (..., embedding_dim).
    ``backward(dy)``: dy (..., embedding_dim) -> None; scatter-adds into grads['weight'].
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None,
                 dtype=np.float32, *, rng=None, seed=None):
        super().__init__()
        self.num_embeddings = _positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = _positive_int("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
                raise TypeError(f"padding_idx must be an int or None, got {padding_idx!r}")
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must be within [-{self.num_embeddings}, "
                                 f"{self.num_embeddings}), got {padding_idx}")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        self.dtype = _float_dtype(dtype)
        self._idx = None
        self._register_parameter("weight", np.empty((self.num_embeddings, self.embedding_dim),
                                                    self.dtype))
        self.reset_parameters(rng=rng, seed=seed)

    def reset_parameters(self, rng=None, seed=None):
        """Redraws weight from N(0, 1), padding row zero, in place."""
        g = _make_rng(rng, seed)
        self.weight[...] = g.standard_normal(self.weight.shape)
        if self.padding_idx is not None:
            self.weight[self.padding_idx] = 0

    def forward(self, idx):
        """idx: integer array (...) -> (..., embedding_dim) (a copy of the rows)."""
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding: indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise IndexError(f"Embedding: indices must be in [0, {self.num_embeddings}), got "
                             f"values in [{idx.min()}, {idx.max()}]")
        self._idx = idx.copy() if self.training else None
        return self.weight[idx]

    def backward(self, dy):
        """dy (..., embedding_dim) -> None; adds dy's rows into grads['weight'] at the indices
        of the last training-mode forward (repeated indices add up; padding_idx gets none)."""
        if self._idx is None:
            raise RuntimeError("Embedding.backward needs a forward call in training mode first "
                               "(call .train())")
        idx = self._idx
        dy = np.asarray(dy)
        if dy.shape != idx.shape + (self.embedding_dim,):
            raise ValueError(f"Embedding.backward: dy must have shape "
                             f"{idx.shape + (self.embedding_dim,)}, got {dy.shape}")
        flat = idx.reshape(-1)
        rows = dy.reshape(-1, self.embedding_dim).astype(self.dtype, copy=False)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            flat, rows = flat[keep], rows[keep]
        np.add.at(self.grads["weight"], flat, rows)
        return None

    def extra_repr(self):
        """Sizes, padding_idx and dtype, for ``repr``."""
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        return s + f", dtype={self.dtype.name}"


# --------------------------------------------------------------------------------------------
# several modules seen as one parameter set


class _GradsView(Mapping):
    """Live read view ``'prefix.name' -> module.grads[name]`` over a ParamGroup."""

    def __init__(self, group):
        self._group = group

    def _split(self, key):
        if not isinstance(key, str) or "." not in key:
            raise KeyError(key)
        mod, _, rest = key.partition(".")
        if mod not in self._group._modules:
            raise KeyError(key)
        return self._group._modules[mod], rest

    def __getitem__(self, key):
        m, rest = self._split(key)
        grads = m.grads
        if rest not in grads or grads[rest] is None:
            raise KeyError(key)
        return grads[rest]

    def __iter__(self):
        for name, m in self._group._modules.items():
            for k, v in m.grads.items():
                if v is not None:
                    yield f"{name}.{k}"

    def __len__(self):
        return sum(1 for _ in self)


class ParamGroup:
    """Several modules seen as one: prefixed names, one ``grads`` view, one ``zero_grad``.

    ``ParamGroup(rnn=lstm, head=linear).named_parameters()`` yields ``('rnn.weight_ih_l0',
    ...)``, ..., ``('head.weight', ...)``; ``grads`` is a live read-only mapping with the same
    keys onto each module's ``grads``, so one optimizer (or ``clip_grad_norm_``) drives all the
    modules. A module is anything with ``named_parameters()`` and a ``grads`` dict (ParamGroups
    nest). ``group['rnn']`` or ``group.rnn`` returns the module.
    """

    def __init__(self, **modules):
        if not modules:
            raise ValueError("ParamGroup needs at least one module")
        for name, m in modules.items():
            if not (hasattr(m, "named_parameters") and hasattr(m, "grads")):
                raise TypeError(f"module {name!r} ({type(m).__name__}) must have "
                                f"named_parameters() and a grads dict")
        object.__setattr__(self, "_modules", OrderedDict(modules))

    def __getitem__(self, name):
        return self._modules[name]

    def __getattr__(self, name):
        mods = self.__dict__.get("_modules")
        if mods is not None and name in mods:
            return mods[name]
        raise AttributeError(f"'ParamGroup' object has no attribute {name!r}")

    def __iter__(self):
        return iter(self._modules)

    def __len__(self):
        return len(self._modules)

    def items(self):
        """``(name, module)`` pairs."""
        return self._modules.items()

    @property
    def grads(self):
        """Live mapping ``'module.param' -> gradient array``."""
        return _GradsView(self)

    @property
    def training(self):
        """True when every module is in training mode."""
        return all(getattr(m, "training", True) for m in self._modules.values())

    def named_parameters(self, prefix: str = ""):
        """Yields ``('module.param', array)`` over all modules, in the order given."""
        for name, m in self._modules.items():
            for k, v in m.named_parameters():
                yield f"{prefix}{name}.{k}", v

    def parameters(self):
        """Yields every parameter array of every module."""
        for _, v in self.named_parameters():
            yield v

    def zero_grad(self):
        """Zeroes every module's gradients (each module's own ``zero_grad``)."""
        for m in self._modules.values():
            if hasattr(m, "zero_grad"):
                m.zero_grad()
            else:
                for g in m.grads.values():
                    if g is not None:
                        g.fill(0)

    def train(self, mode: bool = True):
        """Calls ``train(mode)`` on every module that has it; returns self."""
        for m in self._modules.values():
            if hasattr(m, "train"):
                m.train(mode)
        return self

    def eval(self):
        """``train(False)``; returns self."""
        return self.train(False)

    def state_dict(self):
        """``OrderedDict`` 'module.param' -> copy of the array."""
        return OrderedDict((k, np.array(v, copy=True)) for k, v in self.named_parameters())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Loads prefixed keys into each module, in place. Keys and shapes of *all* modules are
        checked first (KeyError / ValueError / TypeError naming the key), so on error nothing
        changes."""
        named = OrderedDict(self.named_parameters())
        checked = _check_state_dict(named, state_dict, strict)
        for k, v in checked.items():
            named[k][...] = v

    def __repr__(self):
        inner = ", ".join(f"{k}={m!r}" for k, m in self._modules.items())
        return f"ParamGroup({inner})"


def collect_parameters(**modules) -> ParamGroup:
    """``ParamGroup(**modules)``: one parameter set over several modules, names prefixed by the
    keyword (``collect_parameters(rnn=lstm, head=lin)`` -> 'rnn.weight_ih_l0', 'head.weight')."""
    return ParamGroup(**modules)


# --------------------------------------------------------------------------------------------
# losses


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _as_float(name, a):
    a = np.asarray(a)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
    return a


def _weights(mask, shape, dtype, fn):
    """Mask aligned with the *leading* dims of ``shape`` -> float weights of ``shape`` (or
    None)."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise TypeError(f"{fn}: mask must be bool or numeric, got dtype {m.dtype}")
    if m.ndim > len(shape):
        raise ValueError(f"{fn}: mask has {m.ndim} dims, more than the {len(shape)} leading "
                         f"dims it masks ({shape})")
    m = m.reshape(m.shape + (1,) * (len(shape) - m.ndim))
    try:
        return np.broadcast_to(m.astype(dtype), shape)
    except ValueError:
        raise ValueError(f"{fn}: mask of shape {np.shape(mask)} does not broadcast over the "
                         f"leading dims of {shape}") from None


def _reduce(loss, grad, w, reduction):
    """loss, grad: elementwise loss and d loss / d input (per element); w: weights or None.
    Returns (reduced loss, gradient of the reduced loss)."""
    if w is not None:
        loss = loss * w
        grad = grad * w.reshape(w.shape + (1,) * (grad.ndim - w.ndim))
    if reduction == "none":
        return loss, grad
    total = loss.sum(dtype=np.float64)
    if reduction == "sum":
        return float(total), grad
    denom = float(loss.size if w is None else w.sum(dtype=np.float64))
    if denom == 0:
        return float("nan"), np.zeros_like(grad)
    return float(total / denom), grad / np.asarray(denom, grad.dtype)


def mse_loss(pred, target, mask=None, reduction: str = "mean"):
    """Mean squared error, as ``torch.nn.functional.mse_loss``.

    pred, target: float arrays of the same shape (...). mask: bool/float array over the leading
    dims of pred (e.g. (T, B) for pred (T, B, F)), 0/False excludes an element; ``'mean'`` then
    divides by the (weighted) number of unmasked elements (NaN and zero gradient when none).
    Returns ``(loss, dpred)``: loss a float (or an array shaped like pred for
    ``reduction='none'``, masked entries 0); dpred shaped like pred, the gradient of the
    returned loss (of its sum for ``'none'``).
    """
    _check_reduction(reduction)
    pred = _as_float("pred", pred)
    target = np.asarray(target)
    if target.shape != pred.shape:
        raise ValueError(f"mse_loss: target shape {target.shape} differs from pred shape "
                         f"{pred.shape}")
    diff = pred - target.astype(pred.dtype, copy=False)
    w = _weights(mask, pred.shape, pred.dtype, "mse_loss")
    return _reduce(diff * diff, 2 * diff, w, reduction)


def _sigmoid(x):
    """Numerically stable logistic function."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def binary_cross_entropy_with_logits(logits, target, mask=None, pos_weight=None,
                                     reduction: str = "mean"):
    """Sigmoid + binary cross-entropy, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    logits, target: float arrays of the same shape (...); targets in [0, 1] (soft labels
    allowed). pos_weight: weight of the positive term, broadcast against the last axis (e.g.
    (C,) for logits (..., C)). mask: as in :func:`mse_loss`. Stable for any logit magnitude:
    ``loss = (1 - y) x + (1 + (pw - 1) y) softplus(-x)``.
    Returns ``(loss, dlogits)`` (dlogits shaped like logits).
    """
    _check_reduction(reduction)
    x = _as_float("logits", logits)
    y = np.asarray(target)
    if y.shape != x.shape:
        raise ValueError(f"binary_cross_entropy_with_logits: target shape {y.shape} differs "
                         f"from logits shape {x.shape}")
    y = y.astype(x.dtype, copy=False)
    softplus_neg = np.maximum(-x, 0) + np.log1p(np.exp(-np.abs(x)))   # log(1 + e^-x)
    sig = _sigmoid(x)
    if pos_weight is None:
        loss = (1 - y) * x + softplus_neg
        grad = sig - y
    else:
        pw = np.asarray(pos_weight, dtype=x.dtype)
        lw = 1 + (pw - 1) * y
        loss = (1 - y) * x + lw * softplus_neg
        grad = (1 - y) - lw * (1 - sig)
    w = _weights(mask, x.shape, x.dtype, "binary_cross_entropy_with_logits")
    return _reduce(loss, grad, w, reduction)


def _log_softmax(z):
    """Stable log-softmax over the last axis."""
    m = z.max(axis=-1, keepdims=True)
    s = z - m
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def cross_entropy(logits, target, mask=None, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean"):
    """Softmax cross-entropy with class indices, classes on the LAST axis.

    Same numbers as ``torch.nn.functional.cross_entropy`` (which puts classes on axis 1: for
    logits (T, B, C) call it on ``logits.reshape(-1, C)``). logits: float (..., C); target:
    integer (...), each in [0, C) or equal to ``ignore_index`` (excluded). label_smoothing ε
    in [0, 1]: the target distribution is (1 - ε) one-hot + ε / C. mask: bool/float over the
    leading dims of target, combined with ignore_index; ``'mean'`` divides by the (weighted)
    count of the included positions (NaN and zero gradient when none). Stable log-softmax.
    Returns ``(loss, dlogits)``: loss a float (array shaped like target for 'none'), dlogits
    (..., C) the gradient of the loss (of its sum for 'none').
    """
    _check_reduction(reduction)
    z = _as_float("logits", logits)
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must hold integer class indices, got dtype "
                        f"{t.dtype}")
    if z.ndim == 0 or t.shape != z.shape[:-1]:
        raise ValueError(f"cross_entropy: logits (..., C) and target (...) must agree, got "
                         f"{z.shape} and {t.shape}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    C = z.shape[-1]
    valid = t != ignore_index
    if np.any((t[valid] < 0) | (t[valid] >= C)):
        bad = t[valid][(t[valid] < 0) | (t[valid] >= C)][0]
        raise IndexError(f"cross_entropy: target {bad} out of range [0, {C}) "
                         f"(ignore_index={ignore_index})")
    safe_t = np.where(valid, t, 0)[..., None]
    logp = _log_softmax(z)
    eps = float(label_smoothing)
    nll = -np.take_along_axis(logp, safe_t, axis=-1)[..., 0]
    grad = np.exp(logp)                                  # softmax
    if eps:
        loss = (1 - eps) * nll - (eps / C) * logp.sum(axis=-1)
        grad -= np.asarray(eps / C, z.dtype)
        np.put_along_axis(grad, safe_t,
                          np.take_along_axis(grad, safe_t, axis=-1) - np.asarray(1 - eps, z.dtype),
                          axis=-1)
    else:
        loss = nll
        np.put_along_axis(grad, safe_t, np.take_along_axis(grad, safe_t, axis=-1) - 1, axis=-1)
    w = valid.astype(z.dtype)
    if mask is not None:
        w = w * _weights(mask, t.shape, z.dtype, "cross_entropy")
    return _reduce(loss, grad, w, reduction)
