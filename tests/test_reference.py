"""Checks of the pure-NumPy reference (``python/fusedrnn/reference.py``), the package's spec.

* Gradients of every single-layer cell (docs/design.md §2) and of whole stacks (layers x directions,
  ``batch_first``, lengths, dropout masks) against central finite differences in float64:
  ``max|g_fd - g| / max(max|g|, 1e-8) <= 1e-6`` for every gradient array (docs/design.md §7).
* Masking: outputs and ``dx`` past each sequence's length are exactly zero, and ``h_n`` is the
  output at the last valid step (forward) or at time 0 (reverse).
* Parity with ``torch.nn.RNN/LSTM/GRU`` in float64 (weights loaded by name through
  ``load_state_dict``), skipped when torch is absent.

The scalar loss is ``L = sum(y*Ry) + sum(h_n*Rh) (+ sum(c_n*Rc))`` with fixed random ``R``'s, so
its analytic gradients come from backward with ``dy=Ry, dh_n=Rh, dc_n=Rc``.

The reference is loaded straight from its file, so these tests run without the compiled
extension (``fusedrnn/__init__.py`` may import a native module that is not built yet).
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path

import numpy as np
import pytest
from _support import check_fd, fd_gradient, rel_err

_REF_PATH = Path(__file__).resolve().parents[1] / "python" / "fusedrnn" / "reference.py"


def _load_reference():
    # A private module name, not registered in sys.modules: other tests may import the real
    # `fusedrnn.reference` through the package.
    spec = importlib.util.spec_from_file_location("_fusedrnn_reference_under_test", _REF_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

TORCH_TOL = 1e-10

# Cells of docs/design.md §2: (mode, projection?, reset_after).
CELLS = {
    "rnn_tanh": ("rnn_tanh", False, True),
    "rnn_relu": ("rnn_relu", False, True),
    "lstm": ("lstm", False, True),
    "lstm_proj": ("lstm", True, True),
    "gru": ("gru", False, True),
    "gru_v1": ("gru", False, False),
}

# Small, awkward sizes: I != H, P < H.
T, B, I, H, P = 5, 4, 3, 4, 2
LENGTHS = np.array([5, 1, 3, 3])  # ties, a length-1 sequence, one full-length sequence
# Stacks (sizes kept separate so they can be shrunk if the runtime grows).
ST, SB, SI, SH, SP = T, B, I, H, P
SLENGTHS = LENGTHS
DROPOUT_P = 0.3


def _rng(*key):
    """A generator seeded from the test's parameters: every case is fixed and reproducible."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _uniform(rng, shape, scale=0.7):
    return rng.uniform(-scale, scale, shape)


# Central finite differences: shared with test_reference_regularised.py (tests/_support.py).
_rel_err = rel_err
_fd_gradient = fd_gradient
_check_fd = check_fd


# ReLU is not differentiable at 0: finite differences are only valid when no ReLU pre-activation
# lies within a step's reach of the kink. Without bias, an all-zero input row and state give a
# pre-activation of exactly 0, so data for rnn_relu is redrawn (deterministically) until every
# pre-activation the forward evaluates is at least RELU_MARGIN away from 0.
RELU_MARGIN = 1e-4
MAX_DRAWS = 200


def _relu_margin(monkeypatch, run):
    """Smallest |pre-activation| of any ReLU cell evaluated by run() (inf if there is none)."""
    seen = [np.inf]
    cell_forward = ref.rnn_cell_forward

    def spy(xp, hp, relu):
        if relu:
            seen.append(float(np.min(np.abs(xp + hp))))
        return cell_forward(xp, hp, relu)

    with monkeypatch.context() as m:
        m.setattr(ref, "rnn_cell_forward", spy)  # layer_forward looks it up at call time
        run()
    return min(seen)


def _loss(y, h_n, c_n, ry, rh, rc):
    val = np.sum(y * ry) + np.sum(h_n * rh)
    if c_n is not None:
        val += np.sum(c_n * rc)
    return float(val)


# --------------------------------------------------------------------------------------------
# Single layer, single direction, through the public per-cell functions.
# --------------------------------------------------------------------------------------------

def _make_layer_params(rng, mode, proj, bias, in_size, hidden, proj_size):
    G = ref.GATES[mode]
    rec = proj_size if proj else hidden
    p = {"weight_ih": _uniform(rng, (G * hidden, in_size)),
         "weight_hh": _uniform(rng, (G * hidden, rec))}
    if bias:
        p["bias_ih"] = _uniform(rng, (G * hidden,))
        p["bias_hh"] = _uniform(rng, (G * hidden,))
    if proj:
        p["weight_hr"] = _uniform(rng, (proj_size, hidden))
    return p


def _single_forward(cell, x, p, h0, c0, lengths, reverse):
    mode, _, reset_after = CELLS[cell]
    args = (x, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"), h0)
    kw = dict(lengths=lengths, reverse=reverse)
    if mode.startswith("rnn"):
        y, h_n, ctx = ref.rnn_forward(*args, nonlinearity=mode[4:], **kw)
        return y, h_n, None, ctx
    if mode == "lstm":
        return ref.lstm_forward(*args, c0, w_hr=p.get("weight_hr"), **kw)
    y, h_n, ctx = ref.gru_forward(*args, reset_after=reset_after, **kw)
    return y, h_n, None, ctx


def _single_backward(cell, ctx, dy, dh_n, dc_n):
    mode = CELLS[cell][0]
    if mode.startswith("rnn"):
        return ref.rnn_backward(ctx, dy, dh_n)
    if mode == "lstm":
        return ref.lstm_backward(ctx, dy, dh_n, dc_n)
    return ref.gru_backward(ctx, dy, dh_n)


def _check_masking(y, h_n, dx, lengths, reverse):
    """Outputs and dx past each length are 0; h_n is the output at the last step processed."""
    for b, L in enumerate(lengths):
        assert np.all(y[L:, b] == 0), b
        assert np.all(dx[L:, b] == 0), b
        np.testing.assert_array_equal(h_n[b], y[0 if reverse else L - 1, b])


@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("give_h0", [False, True], ids=["zero_h0", "h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_single_layer_gradients(cell, bias, give_h0, reverse, use_lengths, request,
                                monkeypatch):
    mode, proj, _ = CELLS[cell]
    is_lstm = mode == "lstm"
    R = P if proj else H
    rng = _rng("single", cell, bias, give_h0, reverse, use_lengths)
    lengths = LENGTHS if use_lengths else None

    def forward(perturbing=None):
        states = give_h0 or perturbing in ("h0", "c0")
        return _single_forward(cell, arrays["x"], params,
                               arrays["h0"] if states else None,
                               arrays.get("c0") if states else None, lengths, reverse)

    for _ in range(MAX_DRAWS):
        params = _make_layer_params(rng, mode, proj, bias, I, H, P)
        arrays = dict(params)
        arrays["x"] = rng.standard_normal((T, B, I))
        # Without given initial states the forward gets None; their gradients (at zero) are
        # still checked, by perturbing an explicit zero array.
        arrays["h0"] = rng.standard_normal((B, R)) if give_h0 else np.zeros((B, R))
        if is_lstm:
            arrays["c0"] = rng.standard_normal((B, H)) if give_h0 else np.zeros((B, H))
        if _relu_margin(monkeypatch, forward) >= RELU_MARGIN:
            break
    else:
        pytest.fail("no ReLU-smooth test data drawn")
    ry = rng.standard_normal((T, B, R))
    rh = rng.standard_normal((B, R))
    rc = rng.standard_normal((B, H)) if is_lstm else None

    y, h_n, c_n, ctx = forward()
    assert y.shape == (T, B, R) and h_n.shape == (B, R)
    assert (c_n is None) != is_lstm
    if is_lstm:
        assert c_n.shape == (B, H)
    grads = _single_backward(cell, ctx, ry, rh, rc)

    expected = {"x", "h0", "weight_ih", "weight_hh"} | ({"c0"} if is_lstm else set())
    expected |= {"bias_ih", "bias_hh"} if bias else set()
    expected |= {"weight_hr"} if proj else set()
    assert set(grads) == expected

    _check_masking(y, h_n, grads["x"], LENGTHS if use_lengths else [T] * B, reverse)

    # Backward leaves its inputs (x, weights, states) untouched.
    y2, h2, c2, _ = forward()
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(h2, h_n)

    def loss(perturbing=None):
        y, h_n, c_n, _ = forward(perturbing)
        return _loss(y, h_n, c_n, ry, rh, rc)

    _check_fd(loss, arrays, grads, request)


@pytest.mark.parametrize("cell", list(CELLS))
def test_full_lengths_same_as_none(cell):
    """lengths == T everywhere is exactly the unmasked computation, forward and backward."""
    mode, proj, _ = CELLS[cell]
    R = P if proj else H
    rng = _rng("full_lengths", cell)
    params = _make_layer_params(rng, mode, proj, True, I, H, P)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, R))
    c0 = rng.standard_normal((B, H))
    dy, dh = rng.standard_normal((T, B, R)), rng.standard_normal((B, R))
    dc = rng.standard_normal((B, H))
    for reverse in (False, True):
        a = _single_forward(cell, x, params, h0, c0, None, reverse)
        b = _single_forward(cell, x, params, h0, c0, np.full(B, T), reverse)
        for u, v in zip(a[:3], b[:3]):
            if u is not None:
                np.testing.assert_array_equal(u, v)
        ga = _single_backward(cell, a[3], dy, dh, dc)
        gb = _single_backward(cell, b[3], dy, dh, dc)
        assert set(ga) == set(gb)
        for k in ga:
            np.testing.assert_array_equal(ga[k], gb[k])


def test_layer_forward_matches_cell_functions():
    """The generic layer_forward is what the per-cell wrappers run."""
    rng = _rng("generic")
    params = _make_layer_params(rng, "lstm", True, True, I, H, P)
    x = rng.standard_normal((T, B, I))
    y, h_n, c_n, _ = ref.layer_forward("lstm", x, params["weight_ih"], params["weight_hh"],
                                       params["bias_ih"], params["bias_hh"],
                                       w_hr=params["weight_hr"], lengths=LENGTHS, reverse=True)
    y2, h2, c2, _ = _single_forward("lstm_proj", x, params, None, None, LENGTHS, True)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(h_n, h2)
    np.testing.assert_array_equal(c_n, c2)
    with pytest.raises(ValueError):
        ref.layer_forward("lstmx", x, params["weight_ih"], params["weight_hh"])
    with pytest.raises(ValueError):
        ref.rnn_forward(x, params["weight_ih"][:H], params["weight_hh"][:H, :H],
                        nonlinearity="sigmoid")


# --------------------------------------------------------------------------------------------
# Stacks: num_layers=2, directions, batch_first, lengths, initial states, dropout masks.
# --------------------------------------------------------------------------------------------

def _make_stack_params(rng, mode, proj, bias, num_layers, D, in_size, hidden, proj_size):
    R = proj_size if proj else hidden
    params = {}
    for l in range(num_layers):
        for d in range(D):
            p = _make_layer_params(rng, mode, proj, bias, in_size if l == 0 else D * R, hidden,
                                   proj_size)
            names = ref.param_names(l, d, bias=bias, proj=proj)
            order = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else []) \
                + (["weight_hr"] if proj else [])
            params.update({n: p[k] for n, k in zip(names, order)})
    return params


STACK_VARIANTS = {
    # bias, lengths, h0/c0 given, dropout masks, batch_first
    "full": (True, True, True, True, True),
    "plain": (False, False, False, False, False),
}


@pytest.mark.parametrize("variant", list(STACK_VARIANTS))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_stack_gradients(cell, bidirectional, variant, request, monkeypatch):
    bias, use_lengths, give_h0, use_dropout, batch_first = STACK_VARIANTS[variant]
    mode, proj, reset_after = CELLS[cell]
    is_lstm = mode == "lstm"
    L, D = 2, (2 if bidirectional else 1)
    R = SP if proj else SH
    rng = _rng("stack", cell, bidirectional, variant)
    x_shape = (SB, ST, SI) if batch_first else (ST, SB, SI)
    y_shape = (SB, ST, D * R) if batch_first else (ST, SB, D * R)
    lengths = SLENGTHS if use_lengths else None
    masks = None
    if use_dropout:
        # (T, B, D*R) per layer but the last, already scaled; time-major even with batch_first.
        keep = rng.random((L - 1, ST, SB, D * R)) >= DROPOUT_P
        keep[..., 0, 0, 0] = False  # at least one dropped entry...
        keep[..., 0, 0, -1] = True  # ...and one kept
        masks = list(keep / (1 - DROPOUT_P))

    def forward(perturbing=None):
        states = give_h0 or perturbing in ("h0", "c0")
        return ref.stack_forward(mode, arrays["x"], params, num_layers=L,
                                 bidirectional=bidirectional,
                                 h0=arrays["h0"] if states else None,
                                 c0=arrays.get("c0") if states else None,
                                 lengths=lengths, batch_first=batch_first, dropout_masks=masks,
                                 reset_after=reset_after)

    for _ in range(MAX_DRAWS):
        params = _make_stack_params(rng, mode, proj, bias, L, D, SI, SH, SP)
        arrays = dict(params)
        arrays["x"] = rng.standard_normal(x_shape)
        arrays["h0"] = (rng.standard_normal((L * D, SB, R)) if give_h0
                        else np.zeros((L * D, SB, R)))
        if is_lstm:
            arrays["c0"] = (rng.standard_normal((L * D, SB, SH)) if give_h0
                            else np.zeros((L * D, SB, SH)))
        if _relu_margin(monkeypatch, forward) >= RELU_MARGIN:
            break
    else:
        pytest.fail("no ReLU-smooth test data drawn")
    ry = rng.standard_normal(y_shape)
    rh = rng.standard_normal((L * D, SB, R))
    rc = rng.standard_normal((L * D, SB, SH)) if is_lstm else None

    y, h_n, c_n, ctx = forward()
    assert y.shape == y_shape and h_n.shape == (L * D, SB, R)
    if is_lstm:
        assert c_n.shape == (L * D, SB, SH)
    else:
        assert c_n is None
    dx, dh0, dc0, grads = ref.stack_backward(ctx, ry, rh, rc)
    assert set(grads) == set(params)
    assert (dc0 is None) != is_lstm
    grads = dict(grads, x=dx, h0=dh0)
    if is_lstm:
        grads["c0"] = dc0

    # Masking, seen through the last layer (its output carries no dropout).
    y_tm = y.swapaxes(0, 1) if batch_first else y
    dx_tm = dx.swapaxes(0, 1) if batch_first else dx
    lens = SLENGTHS if use_lengths else [ST] * SB
    for d in range(D):
        _check_masking(y_tm[:, :, d * R:(d + 1) * R], h_n[(L - 1) * D + d], dx_tm, lens,
                       reverse=bool(d))

    def loss(perturbing=None):
        y, h_n, c_n, _ = forward(perturbing)
        return _loss(y, h_n, c_n, ry, rh, rc)

    _check_fd(loss, arrays, grads, request)


def test_stack_single_layer_is_layer_forward():
    """One unidirectional layer through stack_forward equals layer_forward exactly."""
    rng = _rng("stack1")
    params = _make_stack_params(rng, "gru", False, True, 1, 1, I, H, P)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((1, B, H))
    y, h_n, c_n, ctx = ref.stack_forward("gru", x, params, h0=h0, lengths=LENGTHS,
                                         reset_after=False)
    y1, h1, _, ctx1 = ref.layer_forward("gru", x, params["weight_ih_l0"],
                                        params["weight_hh_l0"], params["bias_ih_l0"],
                                        params["bias_hh_l0"], h0[0], lengths=LENGTHS,
                                        reset_after=False)
    assert c_n is None
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(h_n[0], h1)
    dy, dh = rng.standard_normal(y.shape), rng.standard_normal(h_n.shape)
    dx, dh0, dc0, grads = ref.stack_backward(ctx, dy, dh)
    g1 = ref.layer_backward(ctx1, dy, dh[0])
    assert dc0 is None
    np.testing.assert_array_equal(dx, g1["x"])
    np.testing.assert_array_equal(dh0[0], g1["h0"])
    for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        np.testing.assert_array_equal(grads[k + "_l0"], g1[k])


# --------------------------------------------------------------------------------------------
# Parity with PyTorch (float64), weights loaded by name.
# --------------------------------------------------------------------------------------------

TORCH_CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]  # torch's GRU: reset_after
TORCH_VARIANTS = {
    # num_layers, bidirectional, bias, lengths, h0/c0 given, batch_first
    "uni": (1, False, False, False, False, False),
    "bi_h0": (1, True, True, False, True, False),
    "l2_packed": (2, False, True, True, False, False),
    "l2_bi_packed_bf": (2, True, True, True, True, True),
}


@pytest.mark.parametrize("variant", list(TORCH_VARIANTS))
@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_torch_parity(cell, variant, request):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    num_layers, bidirectional, bias, use_lengths, give_h0, batch_first = TORCH_VARIANTS[variant]
    mode, proj, _ = CELLS[cell]
    is_lstm = mode == "lstm"
    L, D = num_layers, (2 if bidirectional else 1)
    R = P if proj else H
    rng = _rng("torch", cell, variant)
    params = _make_stack_params(rng, mode, proj, bias, L, D, I, H, P)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    h0 = rng.standard_normal((L * D, B, R)) if give_h0 else None
    c0 = rng.standard_normal((L * D, B, H)) if (give_h0 and is_lstm) else None
    lengths = LENGTHS if use_lengths else None
    ry = rng.standard_normal((B, T, D * R) if batch_first else (T, B, D * R))
    rh = rng.standard_normal((L * D, B, R))
    rc = rng.standard_normal((L * D, B, H)) if is_lstm else None

    # Reference.
    y, h_n, c_n, ctx = ref.stack_forward(mode, x, params, num_layers=L,
                                         bidirectional=bidirectional, h0=h0, c0=c0,
                                         lengths=lengths, batch_first=batch_first)
    dx, dh0, dc0, grads = ref.stack_backward(ctx, ry, rh, rc)

    # PyTorch.
    kw = dict(input_size=I, hidden_size=H, num_layers=L, bias=bias, batch_first=batch_first,
              bidirectional=bidirectional, dtype=torch.float64)
    if mode.startswith("rnn"):
        m = torch.nn.RNN(nonlinearity=mode[4:], **kw)
    elif is_lstm:
        m = torch.nn.LSTM(proj_size=P if proj else 0, **kw)
    else:
        m = torch.nn.GRU(**kw)
    m.load_state_dict({k: torch.tensor(v) for k, v in params.items()}, strict=True)
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True) if give_h0 else None
    c0t = torch.tensor(c0, requires_grad=True) if (give_h0 and is_lstm) else None
    hx = (h0t, c0t) if (is_lstm and give_h0) else h0t
    inp = xt
    if use_lengths:
        inp = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                   enforce_sorted=False)
    out, state = m(inp, hx)
    if use_lengths:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    ht, ct = state if is_lstm else (state, None)
    lt = (out * torch.tensor(ry)).sum() + (ht * torch.tensor(rh)).sum()
    if is_lstm:
        lt = lt + (ct * torch.tensor(rc)).sum()
    lt.backward()

    errors = {"y": _rel_err(y, out.detach().numpy()), "h_n": _rel_err(h_n, ht.detach().numpy()),
              "dx": _rel_err(dx, xt.grad.numpy())}
    if is_lstm:
        errors["c_n"] = _rel_err(c_n, ct.detach().numpy())
    if give_h0:
        errors["dh0"] = _rel_err(dh0, h0t.grad.numpy())
        if is_lstm:
            errors["dc0"] = _rel_err(dc0, c0t.grad.numpy())
    torch_params = dict(m.named_parameters())
    assert set(grads) == set(torch_params) == set(params)
    for name, p in torch_params.items():
        errors[name] = _rel_err(grads[name], p.grad.numpy())
    worst = max(errors, key=errors.get)
    request.node.user_properties.append(("torch_max_rel_err", errors[worst]))
    bad = {k: v for k, v in errors.items() if not v <= TORCH_TOL}
    assert not bad, f"relative errors vs torch above {TORCH_TOL}: {bad}"
