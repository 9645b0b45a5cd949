"""Optimisers, gradient clipping and learning-rate schedules on NumPy arrays.

The update rules are those of ``torch.optim`` (2.x, single-tensor path), term for term, so a
run gives the same parameters as PyTorch's up to rounding.

``params`` is any object with ``named_parameters()`` (yielding ``(name, ndarray)``) and a
``grads`` mapping with the same names: a ``fusedrnn`` RNN module, a ``fusedrnn.nn`` layer, or a
``fusedrnn.nn.ParamGroup`` over several modules. Parameters are read through
``named_parameters()`` at every ``step()`` and updated IN PLACE (other code holds references to
the arrays). A parameter whose gradient is missing (or None) is skipped, as PyTorch skips
parameters whose ``.grad`` is None. Optimiser state (moment buffers, step counts) is kept per
parameter name, in the parameter's dtype.

Each optimiser has one parameter group, ``opt.param_groups[0]`` (a dict with ``'lr'`` and the
hyper-parameters), which is what the schedulers below change; ``opt.lr`` reads/writes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "clip_grad_norm_",
           "clip_grad_value_", "LRScheduler", "StepLR", "CosineAnnealingLR"]


def _check_params(params):
    if not (hasattr(params, "named_parameters") and hasattr(params, "grads")):
        raise TypeError(f"params must have named_parameters() and a grads mapping (a module or "
                        f"nn.ParamGroup), got {type(params).__name__}")
    named = list(params.named_parameters())
    if not named:
        raise ValueError("optimizer got an empty parameter list")
    for name, p in named:
        if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
            raise TypeError(f"parameter {name!r} must be a float numpy array, got "
                            f"{type(p).__name__} {getattr(p, 'dtype', '')}")
    return params


def _nonneg(name, v):
    if not (isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    if not v >= 0.0:
        raise ValueError(f"Invalid {name}: {v}")
    return float(v)


class Optimizer:
    """Base class. ``params``: object with ``named_parameters()`` and ``grads``; ``defaults``:
    hyper-parameters (dict) of the single parameter group."""

    def __init__(self, params, defaults):
        self.params = _check_params(params)
        self.param_groups = [dict(defaults)]
        self.state = {}                    # parameter name -> dict of buffers

    @property
    def lr(self):
        """The learning rate of the (single) parameter group."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        """Sets the learning rate (a non-negative number)."""
        self.param_groups[0]["lr"] = _nonneg("lr", value)

    def zero_grad(self):
        """Zeroes the gradients (``params.zero_grad()`` if it exists, else in place)."""
        if hasattr(self.params, "zero_grad"):
            self.params.zero_grad()
        else:
            for g in self.params.grads.values():
                if g is not None:
                    g.fill(0)

    def _pairs(self):
        """(name, param, grad) for the parameters that have a gradient."""
        grads = self.params.grads
        for name, p in self.params.named_parameters():
            g = grads.get(name)
            if g is None:
                continue
            g = np.asarray(g)
            if g.shape != p.shape:
                raise ValueError(f"gradient of {name!r} has shape {g.shape}, the parameter "
                                 f"{p.shape}")
            yield name, p, g.astype(p.dtype, copy=False)

    def step(self):
        """One update of every parameter that has a gradient, in place."""
        group = self.param_groups[0]
        for name, p, g in self._pairs():
            st = self.state.get(name)
            if st is not None and any(isinstance(v, np.ndarray) and v.shape != p.shape
                                      for v in st.values()):
                raise ValueError(f"optimizer state of {name!r} does not match the parameter's "
                                 f"shape {p.shape}")
            if st is None:
                st = self.state[name] = {}
            self._update(p, g, st, group)

    def _update(self, p, g, state, group):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self):
        """``{'state': {name: {buffer: copy}}, 'param_groups': [dict]}``."""
        return {"state": {k: {b: (v.copy() if isinstance(v, np.ndarray) else v)
                              for b, v in st.items()} for k, st in self.state.items()},
                "param_groups": [dict(g) for g in self.param_groups]}

    def load_state_dict(self, state_dict):
        """Restores what :meth:`state_dict` returned (buffers copied)."""
        groups = state_dict["param_groups"]
        if len(groups) != 1:
            raise ValueError(f"expected 1 parameter group, got {len(groups)}")
        names = {n for n, _ in self.params.named_parameters()}
        unknown = [k for k in state_dict["state"] if k not in names]
        if unknown:
            raise KeyError(f"optimizer state for unknown parameter(s): {unknown}")
        self.state = {k: {b: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                          for b, v in st.items()} for k, st in state_dict["state"].items()}
        self.param_groups = [dict(groups[0])]

    def __repr__(self):
        hp = ", ".join(f"{k}={v!r}" for k, v in self.param_groups[0].items())
        return f"{type(self).__name__}({hp})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    g = ±grad + weight_decay·p; with momentum: buf = g at the first step, then
    buf = momentum·buf + (1 - dampening)·g; g = g + momentum·buf (nesterov) or buf;
    p -= lr·g. Nesterov needs momentum > 0 and dampening = 0."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, *, maximize=False):
        lr, momentum = _nonneg("lr", lr), _nonneg("momentum", momentum)
        dampening, weight_decay = _nonneg("dampening", dampening), _nonneg("weight_decay",
                                                                           weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=bool(nesterov), weight_decay=weight_decay,
                                      maximize=bool(maximize)))

    def _update(self, p, g, st, h):
        g = -g if h["maximize"] else g
        if h["weight_decay"] != 0:
            g = g + h["weight_decay"] * p
        mom = h["momentum"]
        if mom != 0:
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = np.array(g, dtype=p.dtype, copy=True)
            else:
                buf *= mom
                buf += (1 - h["dampening"]) * g
            g = g + mom * buf if h["nesterov"] else buf
        p -= h["lr"] * g


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam``; AMSGrad optional.

    t += 1; g = ±grad (+ weight_decay·p, L2 coupled); m += (1-β1)(g - m);
    v = β2·v + (1-β2)·g²; (amsgrad: v̂ = max(v̂, v), used instead of v);
    p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False):
        lr, eps = _nonneg("lr", lr), _nonneg("eps", eps)
        weight_decay = _nonneg("weight_decay", weight_decay)
        b1, b2 = betas
        for i, b in enumerate((b1, b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        super().__init__(params, dict(lr=lr, betas=(float(b1), float(b2)), eps=eps,
                                      weight_decay=weight_decay, amsgrad=bool(amsgrad),
                                      maximize=bool(maximize)))

    def _update(self, p, g, st, h):
        if not st:
            st["step"] = 0
            st["exp_avg"] = np.zeros_like(p)
            st["exp_avg_sq"] = np.zeros_like(p)
            if h["amsgrad"]:
                st["max_exp_avg_sq"] = np.zeros_like(p)
        g = -g if h["maximize"] else g
        lr, (b1, b2), eps, wd = h["lr"], h["betas"], h["eps"], h["weight_decay"]
        st["step"] += 1
        t = st["step"]
        if wd != 0:
            if self._decoupled:
                p *= 1 - lr * wd
            else:
                g = g + wd * p
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m += (1 - b1) * (g - m)
        v *= b2
        v += (1 - b2) * (g * g)
        bias_correction1 = 1 - b1 ** t
        bias_correction2 = 1 - b2 ** t
        step_size = lr / bias_correction1
        bc2_sqrt = bias_correction2 ** 0.5
        if h["amsgrad"]:
            vmax = st.get("max_exp_avg_sq")
            if vmax is None:
                vmax = st["max_exp_avg_sq"] = np.zeros_like(p)
            np.maximum(vmax, v, out=vmax)
            denom = np.sqrt(vmax) / bc2_sqrt + eps
        else:
            denom = np.sqrt(v) / bc2_sqrt + eps
        p -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``:
    ``p *= 1 - lr·weight_decay`` before the Adam step (the gradient is not decayed)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)


class RMSprop(Optimizer):
    """RMSprop, as ``torch.optim.RMSprop``.

    g = ±grad + weight_decay·p; s = α·s + (1-α)·g²; centered: ḡ += (1-α)(g - ḡ),
    avg = sqrt(s - ḡ²) + eps, else avg = sqrt(s) + eps; momentum > 0: buf = momentum·buf +
    g/avg, p -= lr·buf; else p -= lr·g/avg."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False):
        lr, alpha, eps = _nonneg("lr", lr), _nonneg("alpha", alpha), _nonneg("eps", eps)
        weight_decay, momentum = _nonneg("weight_decay", weight_decay), _nonneg("momentum",
                                                                                momentum)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=bool(centered),
                                      maximize=bool(maximize)))

    def _update(self, p, g, st, h):
        if not st:
            st["step"] = 0
            st["square_avg"] = np.zeros_like(p)
            if h["momentum"] > 0:
                st["momentum_buffer"] = np.zeros_like(p)
            if h["centered"]:
                st["grad_avg"] = np.zeros_like(p)
        g = -g if h["maximize"] else g
        st["step"] += 1
        if h["weight_decay"] != 0:
            g = g + h["weight_decay"] * p
        alpha, eps = h["alpha"], h["eps"]
        sq = st["square_avg"]
        sq *= alpha
        sq += (1 - alpha) * (g * g)
        if h["centered"]:
            ga = st.setdefault("grad_avg", np.zeros_like(p))
            ga += (1 - alpha) * (g - ga)
            avg = np.sqrt(sq - ga * ga) + eps
        else:
            avg = np.sqrt(sq) + eps
        if h["momentum"] > 0:
            buf = st.setdefault("momentum_buffer", np.zeros_like(p))
            buf *= h["momentum"]
            buf += g / avg
            p -= h["lr"] * buf
        else:
            p -= h["lr"] * (g / avg)


# --------------------------------------------------------------------------------------------
# gradient clipping


def _grad_arrays(obj):
    """Gradient arrays of: an object with ``named_parameters()`` + ``grads`` (module,
    ParamGroup), a mapping name -> gradient, one array, or an iterable of arrays."""
    if hasattr(obj, "named_parameters") and hasattr(obj, "grads"):
        grads = obj.grads
        out = []
        for name, _ in obj.named_parameters():
            g = grads.get(name)
            if g is not None:
                out.append(g)
        return out
    if isinstance(obj, Mapping):
        return [g for g in obj.values() if g is not None]
    if isinstance(obj, np.ndarray):
        return [obj]
    return [g for g in obj if g is not None]


def _vector_norm(x, p):
    x = np.abs(np.asarray(x, dtype=np.float64)).ravel()
    if p == math.inf:
        return float(x.max()) if x.size else 0.0
    if p == -math.inf:
        return float(x.min()) if x.size else math.inf
    if p == 0:
        return float(np.count_nonzero(x))
    if p == 1:
        return float(x.sum())
    if p == 2:
        # Not np.dot: that wakes NumPy's threaded BLAS, whose pool then spins and slows the
        # next fusedrnn call (measured ~2-3x on 2 cores); NumPy's pairwise sum needs no BLAS.
        return float(np.sqrt((x * x).sum()))
    return float((x ** p).sum() ** (1.0 / p))


def clip_grad_norm_(module_or_params, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scales all gradients in place so that their joint ``norm_type``-norm is at most
    ``max_norm``, as ``torch.nn.utils.clip_grad_norm_``: total = ‖(‖g_1‖, ‖g_2‖, ...)‖,
    g *= min(1, max_norm / (total + 1e-6)).

    ``module_or_params``: a module / ParamGroup (its ``grads``), a dict name -> gradient, or
    gradient arrays. ``norm_type`` may be ``inf``. Returns the total norm before clipping (a
    float). A non-finite total raises RuntimeError if ``error_if_nonfinite``, else the
    gradients are scaled by NaN as PyTorch does."""
    grads = _grad_arrays(module_or_params)
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not grads:
        return 0.0
    total = _vector_norm([_vector_norm(g, norm_type) for g in grads], norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is "
                           f"non-finite ({total}), so it cannot be clipped")
    coef = max_norm / (total + 1e-6)          # inf total -> 0, NaN total -> NaN, as torch
    if not coef >= 1.0:
        with np.errstate(invalid="ignore", over="ignore"):
            for g in grads:
                g *= np.asarray(coef, dtype=g.dtype)
    return total


def clip_grad_value_(module_or_params, clip_value: float) -> None:
    """Clamps every gradient to [-clip_value, clip_value] in place, as
    ``torch.nn.utils.clip_grad_value_``. Arguments as :func:`clip_grad_norm_`."""
    clip_value = float(clip_value)
    for g in _grad_arrays(module_or_params):
        np.clip(g, -clip_value, clip_value, out=g)


# --------------------------------------------------------------------------------------------
# learning-rate schedules


class LRScheduler:
    """Base class, as ``torch.optim.lr_scheduler.LRScheduler``: at construction records
    ``initial_lr`` in each parameter group (``base_lrs``) and applies epoch 0; ``step()``
    advances one epoch and writes the new ``lr`` into the optimiser. Call ``opt.step()`` before
    ``sched.step()``."""

    def __init__(self, optimizer, last_epoch: int = -1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(optimizer).__name__} is not an optimizer (no param_groups)")
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for i, g in enumerate(optimizer.param_groups):
                if "initial_lr" not in g:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] "
                                   f"when resuming scheduler with last_epoch >= 0")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        self.step()
        self._is_initial = False

    def get_lr(self):  # pragma: no cover - abstract
        """The learning rates for the current ``last_epoch`` (one per group)."""
        raise NotImplementedError

    def step(self):
        """Advances one epoch and sets the optimiser's learning rate(s)."""
        self._step_count += 1
        self.last_epoch += 1
        lrs = self.get_lr()
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self):
        """The learning rates set by the last ``step()`` (a list, one per group)."""
        return list(self._last_lr)

    def state_dict(self):
        """Scheduler attributes (everything but the optimiser)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        """Restores :meth:`state_dict`."""
        self.__dict__.update(state_dict)


class StepLR(LRScheduler):
    """lr = initial_lr · gamma^(epoch // step_size), as ``torch.optim.lr_scheduler.StepLR``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) \
                or step_size <= 0:
            raise ValueError(f"step_size must be a positive int, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Learning rates for the current ``last_epoch`` (PyTorch's chainable form)."""
        groups = self.optimizer.param_groups
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [g["lr"] for g in groups]
        return [g["lr"] * self.gamma for g in groups]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from initial_lr to ``eta_min`` over ``T_max`` epochs (then back up,
    periodically), as ``torch.optim.lr_scheduler.CosineAnnealingLR``, including its recursive
    form: lr ≈ eta_min + (initial_lr - eta_min)(1 + cos(π·epoch/T_max))/2."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        if isinstance(T_max, bool) or not isinstance(T_max, (int, np.integer)) or T_max <= 0:
            raise ValueError(f"T_max must be a positive int, got {T_max!r}")
        self.T_max = int(T_max)
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        """Learning rates for the current ``last_epoch`` (PyTorch's recursive form)."""
        groups = self.optimizer.param_groups
        e, T, lo = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return [g["lr"] for g in groups]
        if self._step_count == 1 and e > 0:
            return [lo + (b - lo) * (1 + math.cos(e * math.pi / T)) / 2 for b in self.base_lrs]
        if (e - 1 - T) % (2 * T) == 0:
            return [g["lr"] + (b - lo) * (1 - math.cos(math.pi / T)) / 2
                    for b, g in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
                * (g["lr"] - lo) + lo for g in groups]
