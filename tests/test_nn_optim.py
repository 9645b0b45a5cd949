"""fusedrnn.nn / optim / init: the pure-NumPy training toolkit.

Gradients are checked against central finite differences in float64; losses, optimisers,
gradient clipping and schedulers against PyTorch (skipped without torch); initialisers by their
properties (orthogonality, bounds, statistics).
"""

import importlib
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest


def _load_toolkit():
    """``from fusedrnn import nn, optim, init`` when the installed package has them; otherwise
    (a source tree whose compiled package predates these files) load the three files by path.
    They depend on NumPy only, never on fusedrnn._C or on each other."""
    try:
        from fusedrnn import init, nn, optim  # noqa: F401
        return nn, optim, init
    except ImportError:
        pass
    src = Path(__file__).resolve().parents[1] / "python" / "fusedrnn"
    mods = []
    for name in ("nn", "optim", "init"):
        mod_name = f"_fusedrnn_source_{name}"
        if mod_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(mod_name, src / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = mod
            spec.loader.exec_module(mod)
        mods.append(sys.modules[mod_name])
    return tuple(mods)


nn, optim, init = _load_toolkit()


def _torch():
    return pytest.importorskip("torch")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _fd_grad(f, x, eps=1e-6):
    """Central finite-difference gradient of scalar f() w.r.t. array x (modified in place)."""
    g = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


# --------------------------------------------------------------------------------------------
# stand-in for the RNN modules (torch-like attributes and names)


class FakeRNN:
    """Parameters named and shaped like torch.nn.RNN/LSTM/GRU (weight_ih_l0, ..._reverse)."""

    GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bidirectional=False,
                 proj_size=0, bias=True, dtype=np.float64, seed=0):
        self.mode, self.hidden_size, self.num_layers = mode, hidden_size, num_layers
        self.bidirectional, self.proj_size = bidirectional, proj_size
        G, H = self.GATES[mode], hidden_size
        R = proj_size or H
        D = 2 if bidirectional else 1
        rng = np.random.default_rng(seed)
        self._p = {}
        for layer in range(num_layers):
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                inp = input_size if layer == 0 else R * D
                self._p["weight_ih" + sfx] = rng.standard_normal((G * H, inp)).astype(dtype)
                self._p["weight_hh" + sfx] = rng.standard_normal((G * H, R)).astype(dtype)
                if bias:
                    self._p["bias_ih" + sfx] = rng.standard_normal(G * H).astype(dtype)
                    self._p["bias_hh" + sfx] = rng.standard_normal(G * H).astype(dtype)
                if proj_size:
                    self._p["weight_hr" + sfx] = rng.standard_normal((R, H)).astype(dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self._p.items()}
        self.training = True

    def named_parameters(self):
        yield from self._p.items()

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)

    def train(self, mode=True):
        self.training = mode
        return self


def test_fake_rnn_matches_torch_names_and_shapes():
    torch = _torch()
    for mode, cls, kw in [("LSTM", torch.nn.LSTM, dict(proj_size=3)), ("GRU", torch.nn.GRU, {}),
                          ("RNN_TANH", torch.nn.RNN, {})]:
        t = cls(5, 7, num_layers=2, bidirectional=True, **kw)
        f = FakeRNN(mode, 5, 7, num_layers=2, bidirectional=True, **kw)
        assert [(k, tuple(v.shape)) for k, v in t.named_parameters()] == \
               [(k, v.shape) for k, v in f.named_parameters()]


# --------------------------------------------------------------------------------------------
# Linear


def test_linear_init_shapes_and_bounds():
    lin = nn.Linear(50, 30, rng=np.random.default_rng(0))
    assert lin.weight.shape == (30, 50) and lin.bias.shape == (30,)
    assert lin.weight.dtype == np.float32
    k = 1 / math.sqrt(50)
    for p in lin.parameters():
        assert np.all(np.abs(p) <= k)
    assert abs(lin.weight.std() - k / math.sqrt(3)) < 0.05 * k
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    assert set(lin.grads) == {"weight", "bias"}
    a, b = nn.Linear(4, 3, seed=7), nn.Linear(4, 3, rng=7)
    np.testing.assert_array_equal(a.weight, b.weight)
    nb = nn.Linear(4, 3, bias=False, dtype=np.float64)
    assert [n for n, _ in nb.named_parameters()] == ["weight"] and nb.weight.dtype == np.float64


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_finite_differences(bias):
    rng = np.random.default_rng(1)
    lin = nn.Linear(4, 3, bias=bias, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 5, 4))
    r = rng.standard_normal((2, 5, 3))

    def f():
        return float((lin(x) * r).sum())

    f()
    dx = lin.backward(r)
    np.testing.assert_allclose(dx, _fd_grad(f, x), rtol=1e-6, atol=1e-9)
    for name, p in lin.named_parameters():
        np.testing.assert_allclose(lin.grads[name], _fd_grad(f, p), rtol=1e-6, atol=1e-9)


def test_linear_accumulates_and_zero_grad_keeps_identity():
    rng = np.random.default_rng(2)
    lin = nn.Linear(3, 2, dtype=np.float64, rng=rng)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    gw = lin.grads["weight"]
    lin(x)
    lin.backward(dy)
    once = lin.grads["weight"].copy()
    lin.backward(dy)
    np.testing.assert_allclose(lin.grads["weight"], 2 * once)
    lin.zero_grad()
    assert lin.grads["weight"] is gw and not gw.any()


def test_linear_matches_torch():
    torch = _torch()
    rng = np.random.default_rng(3)
    lin = nn.Linear(6, 4, dtype=np.float64, rng=rng)
    t = torch.nn.Linear(6, 4, dtype=torch.float64)
    lin.load_state_dict(t.state_dict())
    x, dy = rng.standard_normal((3, 2, 6)), rng.standard_normal((3, 2, 4))
    xt = torch.tensor(x, requires_grad=True)
    yt = t(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(lin(x), yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lin.backward(dy), xt.grad.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lin.grads["weight"], t.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(lin.grads["bias"], t.bias.grad.numpy(), rtol=1e-12)


def test_linear_modes_and_bad_input():
    lin = nn.Linear(3, 2)
    assert lin.training
    lin.eval()
    assert not lin.training
    y = lin(np.ones((5, 3), np.float32))
    assert y.shape == (5, 2)
    with pytest.raises(RuntimeError, match="training mode"):
        lin.backward(np.ones((5, 2), np.float32))
    lin.train()
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        lin(np.ones((5, 4), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        lin(np.ones((5, 3), np.float64))
    lin(np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="dy must have shape"):
        lin.backward(np.ones((5, 3), np.float32))
    with pytest.raises(AttributeError, match="in place"):
        lin.weight = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError):
        nn.Linear(0, 3)
    with pytest.raises(TypeError):
        nn.Linear(3, 3, dtype=np.int32)


# --------------------------------------------------------------------------------------------
# Embedding


def test_embedding_init_and_forward():
    emb = nn.Embedding(200, 50, padding_idx=-1, rng=0)
    assert emb.padding_idx == 199 and not emb.weight[199].any()
    w = emb.weight[:199]
    assert abs(w.mean()) < 0.03 and abs(w.std() - 1) < 0.03
    idx = np.array([[1, 2], [199, 1]])
    np.testing.assert_array_equal(emb(idx), emb.weight[idx])
    with pytest.raises(IndexError):
        emb(np.array([200]))
    with pytest.raises(IndexError):
        emb(np.array([-1]))
    with pytest.raises(TypeError):
        emb(np.array([1.0]))


def test_embedding_gradient_finite_differences_and_padding():
    rng = np.random.default_rng(4)
    emb = nn.Embedding(6, 3, padding_idx=2, dtype=np.float64, rng=rng)
    idx = np.array([[0, 2, 5], [5, 5, 2], [1, 0, 3]])        # repeats and padding
    r = rng.standard_normal(idx.shape + (3,))

    def f():
        return float((emb.weight[idx] * r).sum())

    emb(idx)
    assert emb.backward(r) is None
    fd = _fd_grad(f, emb.weight)
    fd[2] = 0                                                # padding row: no gradient
    np.testing.assert_allclose(emb.grads["weight"], fd, rtol=1e-6, atol=1e-9)
    assert not emb.grads["weight"][2].any() and not emb.grads["weight"][4].any()


def test_embedding_matches_torch():
    torch = _torch()
    rng = np.random.default_rng(5)
    emb = nn.Embedding(7, 4, padding_idx=0, dtype=np.float64, rng=rng)
    t = torch.nn.Embedding(7, 4, padding_idx=0, dtype=torch.float64)
    t.load_state_dict({"weight": torch.tensor(emb.weight)})
    idx = rng.integers(0, 7, size=(5, 3))
    dy = rng.standard_normal((5, 3, 4))
    t(torch.tensor(idx)).backward(torch.tensor(dy))
    np.testing.assert_array_equal(emb(idx), t(torch.tensor(idx)).detach().numpy())
    emb.backward(dy)
    np.testing.assert_allclose(emb.grads["weight"], t.weight.grad.numpy(), rtol=1e-12,
                               atol=1e-14)


# --------------------------------------------------------------------------------------------
# state dicts


def test_state_dict_roundtrip_keeps_identity():
    a, b = nn.Linear(3, 2, rng=0), nn.Linear(3, 2, rng=1)
    sd = a.state_dict()
    assert sd["weight"] is not a.weight
    w = b.weight
    b.load_state_dict(sd)
    assert b.weight is w
    np.testing.assert_array_equal(b.weight, a.weight)
    np.testing.assert_array_equal(b.bias, a.bias)


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "dtype", "not_mapping"])
def test_load_state_dict_errors_leave_module_unchanged(case):
    lin = nn.Linear(3, 2, rng=0)
    before = lin.state_dict()
    good = nn.Linear(3, 2, rng=1).state_dict()
    if case == "missing":
        del good["bias"]
        exc, match = KeyError, "bias"
    elif case == "extra":
        good["scale"] = np.ones(2)
        exc, match = KeyError, "scale"
    elif case == "shape":
        good["bias"] = np.ones(3)
        exc, match = ValueError, "bias"
    elif case == "dtype":
        good["bias"] = np.array(["a", "b"])
        exc, match = TypeError, "bias"
    else:
        good = [("weight", np.ones((2, 3)))]
        exc, match = TypeError, "mapping"
    with pytest.raises(exc, match=match):
        lin.load_state_dict(good)
    for k, v in lin.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_non_strict():
    lin = nn.Linear(3, 2, rng=0)
    lin.load_state_dict({"bias": np.zeros(2), "other": 1}, strict=False)
    assert not lin.bias.any()
    with pytest.raises(ValueError):
        lin.load_state_dict({"bias": np.zeros(3)}, strict=False)


def test_param_group_names_grads_and_atomic_load():
    rnn = FakeRNN("LSTM", 3, 4)
    head = nn.Linear(4, 2, dtype=np.float64, rng=0)
    grp = nn.collect_parameters(rnn=rnn, head=head)
    names = [n for n, _ in grp.named_parameters()]
    assert names == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
                     "head.weight", "head.bias"]
    assert grp["head"] is head and grp.rnn is rnn
    assert grp.grads["head.weight"] is head.grads["weight"]
    assert sorted(grp.grads) == sorted(names) and len(grp.grads) == 6
    head.grads["weight"] += 1
    rnn.grads["bias_ih_l0"] += 1
    grp.zero_grad()
    assert not head.grads["weight"].any() and not rnn.grads["bias_ih_l0"].any()
    grp.eval()
    assert not head.training and not rnn.training and not grp.training
    grp.train()
    assert grp.training
    sd = grp.state_dict()
    before = {k: v.copy() for k, v in sd.items()}
    bad = {k: v + 1 for k, v in sd.items()}
    bad["head.bias"] = np.zeros(5)                    # last key wrong: nothing may change
    with pytest.raises(ValueError, match="head.bias"):
        grp.load_state_dict(bad)
    for k, v in grp.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    good = {k: v + 1 for k, v in sd.items()}
    grp.load_state_dict(good)
    np.testing.assert_array_equal(rnn._p["weight_hh_l0"], before["rnn.weight_hh_l0"] + 1)
    with pytest.raises(KeyError, match="rnn.bias_hh_l0"):
        grp.load_state_dict({k: v for k, v in good.items() if k != "rnn.bias_hh_l0"})
    with pytest.raises(TypeError):
        nn.collect_parameters(rnn=rnn, other=object())


# --------------------------------------------------------------------------------------------
# losses


def _check_loss_fd(fn, x, *args, **kw):
    loss, g = fn(x, *args, **kw)
    if kw.get("reduction") == "none":
        fd = _fd_grad(lambda: float(np.sum(fn(x, *args, **kw)[0])), x)
    else:
        fd = _fd_grad(lambda: fn(x, *args, **kw)[0], x)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    return loss


MASK_TB = np.array([[1, 1, 1], [1, 0, 1], [1, 0, 0], [0, 0, 0]], bool)       # (T=4, B=3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_losses_finite_differences(reduction, mask):
    rng = np.random.default_rng(6)
    m = {None: None, "bool": MASK_TB, "float": MASK_TB * rng.uniform(0.5, 2, MASK_TB.shape)}[mask]
    x = rng.standard_normal((4, 3, 5))
    y = rng.standard_normal((4, 3, 5))
    _check_loss_fd(nn.mse_loss, x, y, mask=m, reduction=reduction)
    yb = rng.uniform(0, 1, (4, 3, 5))
    _check_loss_fd(nn.binary_cross_entropy_with_logits, x, yb, mask=m, reduction=reduction,
                   pos_weight=rng.uniform(0.5, 3, 5))
    t = rng.integers(0, 5, (4, 3))
    t[0, 1] = -100
    _check_loss_fd(nn.cross_entropy, x, t, mask=m, reduction=reduction, label_smoothing=0.1)
    _check_loss_fd(nn.cross_entropy, x, t, mask=m, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_match_torch(reduction):
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 5)) * 3
    # mse with a (T, B) mask == torch on the selected rows
    y = rng.standard_normal((4, 3, 5))
    xt = torch.tensor(x[MASK_TB], requires_grad=True)
    lt = F.mse_loss(xt, torch.tensor(y[MASK_TB]), reduction=reduction)
    lt.backward(torch.ones_like(lt))
    loss, g = nn.mse_loss(x, y, mask=MASK_TB, reduction=reduction)
    np.testing.assert_allclose(np.asarray(loss)[MASK_TB] if reduction == "none" else loss,
                               lt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(g[MASK_TB], xt.grad.numpy(), rtol=1e-12)
    assert not g[~MASK_TB].any()
    # BCE with logits, pos_weight, mask
    yb = (rng.uniform(size=(4, 3, 5)) > 0.5).astype(np.float64)
    pw = rng.uniform(0.5, 3, 5)
    for p in (None, pw):
        xt = torch.tensor(x[MASK_TB], requires_grad=True)
        lt = F.binary_cross_entropy_with_logits(
            xt, torch.tensor(yb[MASK_TB]), reduction=reduction,
            pos_weight=None if p is None else torch.tensor(p))
        lt.backward(torch.ones_like(lt))
        loss, g = nn.binary_cross_entropy_with_logits(x, yb, mask=MASK_TB, pos_weight=p,
                                                      reduction=reduction)
        np.testing.assert_allclose(np.asarray(loss)[MASK_TB] if reduction == "none" else loss,
                                   lt.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(g[MASK_TB], xt.grad.numpy(), rtol=1e-12, atol=1e-15)
    # cross entropy: ignore_index, label smoothing, mask (== torch with masked -> ignore_index)
    t = rng.integers(0, 5, (4, 3))
    t[0, 2] = -1
    for ls in (0.0, 0.2):
        for mask in (None, MASK_TB):
            tt = t.copy()
            if mask is not None:
                tt[~mask] = -1
            xt = torch.tensor(x.reshape(-1, 5), requires_grad=True)
            lt = F.cross_entropy(xt, torch.tensor(tt.reshape(-1)), ignore_index=-1,
                                 label_smoothing=ls, reduction=reduction)
            lt.backward(torch.ones_like(lt))
            loss, g = nn.cross_entropy(x, t, mask=mask, ignore_index=-1, label_smoothing=ls,
                                       reduction=reduction)
            np.testing.assert_allclose(np.reshape(loss, -1) if reduction == "none" else loss,
                                       lt.detach().numpy(), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(g.reshape(-1, 5), xt.grad.numpy(), rtol=1e-12,
                                       atol=1e-15)


def test_losses_stable_float32_and_extremes():
    x = np.array([[-1000.0, 0.0, 1000.0]], np.float32)
    loss, g = nn.binary_cross_entropy_with_logits(x, np.array([[1.0, 0.5, 0.0]], np.float32),
                                                  reduction="none")
    np.testing.assert_allclose(loss, [[1000.0, math.log(2), 1000.0]], rtol=1e-6)
    np.testing.assert_allclose(g, [[-1.0, 0.0, 1.0]], atol=1e-7)
    assert g.dtype == np.float32
    loss, g = nn.cross_entropy(np.array([[1e4, -1e4, 0.0]], np.float32), np.array([1]))
    assert math.isclose(loss, 2e4, rel_tol=1e-6) and np.isfinite(g).all()
    assert g.dtype == np.float32


def test_losses_all_masked_and_bad_input():
    x = np.zeros((2, 3))
    loss, g = nn.cross_entropy(x, np.array([-100, -100]))
    assert math.isnan(loss) and not g.any()
    loss, g = nn.mse_loss(x, x + 1, mask=np.zeros(2, bool))
    assert math.isnan(loss) and not g.any()
    assert nn.mse_loss(x, x + 1, mask=np.zeros(2, bool), reduction="sum")[0] == 0
    with pytest.raises(ValueError, match="reduction"):
        nn.mse_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="shape"):
        nn.mse_loss(x, x[:1])
    with pytest.raises(IndexError, match="out of range"):
        nn.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        nn.cross_entropy(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="agree"):
        nn.cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="broadcast"):
        nn.mse_loss(x, x, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.cross_entropy(x, np.array([0, 1]), label_smoothing=1.5)


# --------------------------------------------------------------------------------------------
# optimisers vs torch.optim

OPT_CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.5, maximize=True)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.02, weight_decay=0.05, amsgrad=True, maximize=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.02, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.005, momentum=0.7, centered=True, weight_decay=0.1)),
]

OPT_PARITY = {}          # config -> max relative difference, filled by the test below


def _parity_run(name, kw, steps=10, seed=8):
    """Runs fusedrnn.optim and torch.optim on the same random gradients; returns the max
    relative parameter difference (and asserts parameter identity is kept)."""
    torch = _torch()
    rng = np.random.default_rng(seed)
    head = nn.Linear(5, 3, dtype=np.float64, rng=rng)
    rnn = FakeRNN("GRU", 5, 4, seed=seed)
    grp = nn.collect_parameters(rnn=rnn, head=head)
    named = list(grp.named_parameters())
    ids = [id(p) for _, p in named]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for _, p in named]
    ours = getattr(optim, name)(grp, **kw)
    theirs = getattr(torch.optim, name)(tparams, foreach=False, **kw)
    for k in range(steps):
        scale = 2.0 ** (-k % 4)                      # varying scale: amsgrad's max matters
        for (n, p), tp in zip(named, tparams):
            g = rng.standard_normal(p.shape) * scale
            grp.grads[n][...] = g
            tp.grad = torch.tensor(g)
        ours.step()
        theirs.step()
    assert [id(p) for _, p in grp.named_parameters()] == ids
    return max(_rel(p, tp.detach().numpy()) for (_, p), tp in zip(named, tparams))


@pytest.mark.parametrize("name,kw", OPT_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in
                                                       enumerate(OPT_CONFIGS)])
def test_optimizer_matches_torch(name, kw):
    err = _parity_run(name, kw)
    OPT_PARITY[f"{name}({kw})"] = err
    assert err <= 1e-6


def test_optimizer_float32_close_to_torch():
    torch = _torch()
    rng = np.random.default_rng(9)
    lin = nn.Linear(4, 3, rng=rng)
    tp = [torch.tensor(p.copy(), requires_grad=True) for p in lin.parameters()]
    ours, theirs = optim.Adam(lin, lr=0.01), torch.optim.Adam(tp, lr=0.01, foreach=False)
    for _ in range(10):
        for (n, p), t in zip(lin.named_parameters(), tp):
            g = rng.standard_normal(p.shape).astype(np.float32)
            lin.grads[n][...] = g
            t.grad = torch.tensor(g)
        ours.step()
        theirs.step()
    assert lin.weight.dtype == np.float32
    for p, t in zip(lin.parameters(), tp):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_optimizer_skips_missing_grads_zero_grad_and_state_dict():
    rnn = FakeRNN("RNN_TANH", 2, 3)
    head = nn.Linear(3, 1, dtype=np.float64, rng=0)
    grp = nn.collect_parameters(rnn=rnn, head=head)
    del rnn.grads["bias_hh_l0"]                       # e.g. a parameter with no gradient yet
    before = rnn._p["bias_hh_l0"].copy()
    for g in grp.grads.values():
        g[...] = 1.0
    opt = optim.SGD(grp, lr=0.1, momentum=0.9)
    opt.step()
    np.testing.assert_array_equal(rnn._p["bias_hh_l0"], before)
    sd = opt.state_dict()
    opt2 = optim.SGD(grp, lr=0.1, momentum=0.9)
    opt2.load_state_dict(sd)
    opt.step()
    w1 = head.weight.copy()
    head.weight[...] += 0.1 * 1.9                     # undo opt's second step ...
    opt2.step()                                        # ... and redo it from the loaded state
    np.testing.assert_allclose(head.weight, w1)
    opt.zero_grad()
    assert all(not g.any() for g in grp.grads.values())
    opt.lr = 0.5
    assert opt.param_groups[0]["lr"] == 0.5


def test_optimizer_bad_arguments():
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(lin, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        optim.Adam(lin, lr=-1.0)
    with pytest.raises(ValueError, match="beta"):
        optim.Adam(lin, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="named_parameters"):
        optim.SGD([np.zeros(3)], lr=0.1)
    lin.grads["weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="weight"):
        optim.RMSprop(lin).step()


# --------------------------------------------------------------------------------------------
# clipping and schedulers vs torch


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    torch = _torch()
    rng = np.random.default_rng(10)
    grp = nn.collect_parameters(rnn=FakeRNN("LSTM", 3, 2, seed=1),
                                head=nn.Linear(2, 2, dtype=np.float64, rng=rng))
    tps = []
    for n, p in grp.named_parameters():
        grp.grads[n][...] = rng.standard_normal(p.shape)
        t = torch.zeros(p.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(grp.grads[n].copy())
        tps.append(t)
    total = optim.clip_grad_norm_(grp, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tps, max_norm, norm_type, foreach=False)
    assert math.isclose(total, float(ttotal), rel_tol=1e-12)
    for (n, _), t in zip(grp.named_parameters(), tps):
        np.testing.assert_allclose(grp.grads[n], t.grad.numpy(), rtol=1e-12)


def test_clip_grad_value_and_other_inputs():
    torch = _torch()
    rng = np.random.default_rng(11)
    g = [rng.standard_normal((3, 4)) * 3, rng.standard_normal(5) * 3]
    tps = []
    for a in g:
        t = torch.zeros(a.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(a.copy())
        tps.append(t)
    optim.clip_grad_value_(g, 1.5)
    torch.nn.utils.clip_grad_value_(tps, 1.5, foreach=False)
    for a, t in zip(g, tps):
        np.testing.assert_array_equal(a, t.grad.numpy())
    d = {"a": np.full(4, 3.0)}
    assert optim.clip_grad_norm_(d, 1.0) == 6.0
    assert abs(np.linalg.norm(d["a"]) - 1.0) < 1e-6
    bad = {"a": np.array([np.inf, 1.0])}
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm_(bad, 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("sched,kw", [("StepLR", dict(step_size=3, gamma=0.5)),
                                      ("StepLR", dict(step_size=1)),
                                      ("CosineAnnealingLR", dict(T_max=7)),
                                      ("CosineAnnealingLR", dict(T_max=5, eta_min=0.01))])
def test_schedulers_match_torch(sched, kw):
    torch = _torch()
    lin = nn.Linear(2, 2, dtype=np.float64, rng=0)
    tp = [torch.tensor(p.copy(), requires_grad=True) for p in lin.parameters()]
    ours = optim.SGD(lin, lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD(tp, lr=0.1, momentum=0.9, foreach=False)
    s_ours = getattr(optim, sched)(ours, **kw)
    s_theirs = getattr(torch.optim.lr_scheduler, sched)(theirs, **kw)
    assert s_ours.get_last_lr() == pytest.approx(s_theirs.get_last_lr(), rel=1e-12)
    rng = np.random.default_rng(12)
    for _ in range(24):                              # past T_max: the periodic branch
        for (n, p), t in zip(lin.named_parameters(), tp):
            g = rng.standard_normal(p.shape)
            lin.grads[n][...] = g
            t.grad = torch.tensor(g)
        ours.step()
        theirs.step()
        s_ours.step()
        s_theirs.step()
        assert s_ours.get_last_lr() == pytest.approx(s_theirs.get_last_lr(), rel=1e-12,
                                                     abs=1e-15)
        assert ours.lr == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
    for p, t in zip(lin.parameters(), tp):
        assert _rel(p, t.detach().numpy()) < 1e-10


# --------------------------------------------------------------------------------------------
# init


def _assert_orthonormal(q, gain=1.0):
    q = np.asarray(q, np.float64) / gain
    r, c = q.shape
    eye = q @ q.T if r <= c else q.T @ q
    np.testing.assert_allclose(eye, np.eye(min(r, c)), atol=1e-5)


@pytest.mark.parametrize("shape", [(6, 6), (8, 3), (3, 8), (4, 2, 3)])
def test_orthogonal_(shape):
    a = np.empty(shape, np.float32)
    assert init.orthogonal_(a, gain=2.0, rng=0) is a
    _assert_orthonormal(a.reshape(shape[0], -1), 2.0)


def test_array_initialisers_statistics():
    rng = np.random.default_rng(13)
    a = np.empty((400, 300))
    init.xavier_uniform_(a, gain=2.0, rng=rng)
    bound = 2.0 * math.sqrt(6 / 700)
    assert np.abs(a).max() <= bound and abs(a.std() - bound / math.sqrt(3)) < 0.02 * bound
    init.xavier_normal_(a, rng=rng)
    assert abs(a.std() - math.sqrt(2 / 700)) < 0.02 * math.sqrt(2 / 700)
    init.uniform_(a, -0.5, 2.0, rng=rng)
    assert a.min() >= -0.5 and a.max() < 2.0 and abs(a.mean() - 0.75) < 0.01
    init.normal_(a, 1.0, 0.5, rng=rng)
    assert abs(a.mean() - 1) < 0.01 and abs(a.std() - 0.5) < 0.01
    assert not init.zeros_(a).any()
    assert (init.constant_(a, 3.0) == 3).all() and (init.ones_(a) == 1).all()
    with pytest.raises(TypeError):
        init.zeros_(np.zeros(3, np.int64))
    with pytest.raises(ValueError):
        init.xavier_uniform_(np.zeros(3))


@pytest.mark.parametrize("mode,kw", [("LSTM", dict(num_layers=2, bidirectional=True)),
                                     ("LSTM", dict(proj_size=3)),
                                     ("GRU", dict(num_layers=2)),
                                     ("RNN_RELU", dict(bidirectional=True))])
def test_orthogonal_recurrent_and_pytorch_default(mode, kw):
    m = FakeRNN(mode, 5, 6, **kw)
    before = {k: v.copy() for k, v in m.named_parameters()}
    init.orthogonal_recurrent_(m, rng=0)
    G, H = FakeRNN.GATES[mode], 6
    n_hh = 0
    for name, w in m.named_parameters():
        if name.startswith("weight_hh"):
            n_hh += 1
            for j in range(G):
                _assert_orthonormal(w[j * H:(j + 1) * H])
            if G > 1:
                assert not np.allclose(w[:H], w[H:2 * H])
        else:
            np.testing.assert_array_equal(w, before[name])
    assert n_hh == kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    init.pytorch_default_(m, rng=1)
    k = 1 / math.sqrt(6)
    allv = np.concatenate([p.ravel() for _, p in m.named_parameters()])
    assert np.abs(allv).max() <= k and abs(allv.std() - k / math.sqrt(3)) < 0.1 * k


def test_unit_forget_bias_and_module_initialisers():
    m = FakeRNN("LSTM", 3, 4, num_layers=2, bidirectional=True)
    before = {k: v.copy() for k, v in m.named_parameters()}
    head = nn.Linear(8, 2, rng=0)
    grp = nn.collect_parameters(rnn=m, head=head)
    init.unit_forget_bias_(grp)
    H = 4
    for name, b in m.named_parameters():
        if name.startswith("bias_"):
            expected = before[name].copy()
            expected[H:2 * H] = 1.0 if name.startswith("bias_ih") else 0.0
            np.testing.assert_array_equal(b, expected)
    s = m._p["bias_ih_l1_reverse"] + m._p["bias_hh_l1_reverse"]
    np.testing.assert_array_equal(s[H:2 * H], 1.0)
    with pytest.raises(ValueError, match="LSTM"):
        init.unit_forget_bias_(FakeRNN("GRU", 3, 4))
    with pytest.raises(ValueError, match="bias=False"):
        init.unit_forget_bias_(FakeRNN("LSTM", 3, 4, bias=False))
    with pytest.raises(ValueError, match="recurrent"):
        init.orthogonal_recurrent_(head)
    # pytorch_default_ on a group: RNN bound 1/sqrt(H), Linear 1/sqrt(fan_in), Embedding N(0,1)
    emb = nn.Embedding(50, 40, padding_idx=3, rng=0)
    emb.weight[...] = 7
    head.weight[...] = 7
    head.bias[...] = 7
    init.pytorch_default_(nn.collect_parameters(rnn=m, head=head, emb=emb), rng=2)
    assert np.abs(head.weight).max() <= 1 / math.sqrt(8)
    assert np.abs(head.bias).max() <= 1 / math.sqrt(8)
    assert not emb.weight[3].any() and abs(emb.weight.std() - 1) < 0.1
    assert max(np.abs(p).max() for _, p in m.named_parameters()) <= 0.5


# --------------------------------------------------------------------------------------------
# end to end


def test_training_loop_reduces_loss():
    """Per-step sequence classification with an embedding, a linear head, a mask, Adam and
    clipping: the documented forward/backward chain, no torch."""
    rng = np.random.default_rng(14)
    T, B, V, C = 6, 8, 10, 3
    tokens = rng.integers(1, V, (T, B))
    lengths = rng.integers(2, T + 1, B)
    mask = np.arange(T)[:, None] < lengths[None, :]
    tokens[~mask] = 0
    target = tokens % C
    emb = nn.Embedding(V, 16, padding_idx=0, rng=rng)
    head = nn.Linear(16, C, rng=rng)
    model = nn.collect_parameters(emb=emb, head=head)
    opt = optim.Adam(model, lr=0.05)
    sched = optim.StepLR(opt, step_size=50, gamma=0.5)
    model.train()
    losses = []
    for _ in range(60):
        logits = head(emb(tokens))
        loss, dlogits = nn.cross_entropy(logits, target, mask=mask)
        opt.zero_grad()
        emb.backward(head.backward(dlogits))
        optim.clip_grad_norm_(model, 5.0)
        opt.step()
        sched.step()
        losses.append(loss)
    assert losses[-1] < 0.1 * losses[0]
    assert not emb.weight[0].any()                   # padding row never moved
    assert sched.get_last_lr() == [pytest.approx(0.025)]


# --------------------------------------------------------------------------------------------
# with the real RNN modules (when the installed package has them)


def _fusedrnn_modules():
    try:
        import fusedrnn
    except ImportError:
        pytest.skip("fusedrnn is not importable")
    if not hasattr(fusedrnn, "LSTM"):
        pytest.skip("this fusedrnn has no RNN modules")
    return fusedrnn


def test_init_on_real_modules():
    fr = _fusedrnn_modules()
    cases = [(fr.LSTM(5, 6, num_layers=2, bidirectional=True), 4, ["_l1_reverse"]),
             (fr.LSTM(5, 6, proj_size=3), 4, ["_l0"]), (fr.GRU(5, 6), 3, ["_l0"]),
             (fr.RNN(5, 6, nonlinearity="relu"), 1, ["_l0"]), (fr.LSTMCell(5, 6), 4, [""]),
             (fr.GRUCell(5, 6), 3, [""])]
    for m, G, sfxs in cases:
        init.pytorch_default_(m, rng=0)
        k = 1 / math.sqrt(6)
        assert max(np.abs(p).max() for _, p in m.named_parameters()) <= k
        init.orthogonal_recurrent_(m, rng=1)
        params = dict(m.named_parameters())
        for sfx in sfxs:
            w = params["weight_hh" + sfx]
            for j in range(G):
                _assert_orthonormal(w[j * 6:(j + 1) * 6])
        if m.mode == "LSTM":
            init.unit_forget_bias_(m)
            for sfx in sfxs:
                assert (params["bias_ih" + sfx][6:12] == 1).all()
                assert not params["bias_hh" + sfx][6:12].any()
        else:
            with pytest.raises(ValueError, match="LSTM"):
                init.unit_forget_bias_(m)


def test_chain_with_real_lstm_matches_torch():
    """Embedding -> 2-layer bidirectional LSTM -> Linear -> masked cross-entropy, backward by
    hand, then 3 Adam steps: gradients and parameters equal torch's (float64)."""
    fr = _fusedrnn_modules()
    torch = _torch()
    rng = np.random.default_rng(15)
    T, B, V, E, H, C = 5, 3, 9, 4, 6, 4
    emb = nn.Embedding(V, E, padding_idx=0, dtype=np.float64, rng=rng)
    rnn = fr.LSTM(E, H, num_layers=2, bidirectional=True, dtype=np.float64)
    head = nn.Linear(2 * H, C, dtype=np.float64, rng=rng)
    model = nn.collect_parameters(emb=emb, rnn=rnn, head=head)
    init.pytorch_default_(rnn, rng=rng)
    init.unit_forget_bias_(rnn)
    t_emb = torch.nn.Embedding(V, E, padding_idx=0, dtype=torch.float64)
    t_rnn = torch.nn.LSTM(E, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    t_head = torch.nn.Linear(2 * H, C, dtype=torch.float64)
    for ours, theirs in ((emb, t_emb), (rnn, t_rnn), (head, t_head)):
        theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    t_named = [(f"{p}.{n}", t) for p, mod in (("emb", t_emb), ("rnn", t_rnn), ("head", t_head))
               for n, t in mod.named_parameters()]
    assert [n for n, _ in t_named] == [n for n, _ in model.named_parameters()]
    tok = rng.integers(1, V, (T, B))
    mask = np.ones((T, B), bool)
    mask[3:, 1] = False
    tok[~mask] = 0
    target = rng.integers(0, C, (T, B))
    opt = optim.Adam(model, lr=0.01, weight_decay=0.01)
    t_opt = torch.optim.Adam([t for _, t in t_named], lr=0.01, weight_decay=0.01, foreach=False)
    model.train()
    for _ in range(3):
        y, _ = rnn(emb(tok))
        loss, dlogits = nn.cross_entropy(head(y), target, mask=mask)
        opt.zero_grad()
        de, _ = rnn.backward(head.backward(dlogits))
        emb.backward(de)
        t_opt.zero_grad()
        tt = torch.tensor(np.where(mask, target, -100))
        t_loss = torch.nn.functional.cross_entropy(
            t_head(t_rnn(t_emb(torch.tensor(tok)))[0]).reshape(-1, C), tt.reshape(-1))
        t_loss.backward()
        assert math.isclose(loss, t_loss.item(), rel_tol=1e-10)
        for n, t in t_named:
            np.testing.assert_allclose(model.grads[n], t.grad.numpy(), rtol=1e-8, atol=1e-12)
        opt.step()
        t_opt.step()
    for (n, p), (_, t) in zip(model.named_parameters(), t_named):
        assert _rel(p, t.detach().numpy()) < 1e-8, n
