"""Checks of the regularised reference cells (``python/fusedrnn/reference_regularised.py``,
re-exported by ``fusedrnn.reference``): the spec of the regularised kernels to come.

* Gradients of every option (layer normalisation, zoneout in training and in inference,
  recurrent dropout, DropConnect, gate clipping, cell clipping, peepholes, and all of a cell's
  options together) for every cell they apply to, against central finite differences in float64
  (``max|g_fd - g| / max(max|g|, 1e-8) <= 1e-6`` per gradient array, helpers in
  tests/_support.py), with lengths and both directions, initial states given or zero; and of
  whole stacks (2 layers, both directions, lengths, batch_first, dropout masks) with per-layer
  options. Clip bounds and ReLU kinks are kept out of the finite differences' reach: data is
  redrawn (deterministically) until every clipped quantity is at least MARGIN away from its
  bound, and at least one entry is clipped and one is not. Layer normalisation is smooth
  everywhere but curves on the scale sqrt(1e-5) ~ 3e-3 around the zero vector, which a zero
  initial state feeds it (W_hh 0 = 0, no bias before the normalisation): the step is
  FD_EPS_LN_ZERO there (the truncation error falls as the step squared: 3e-5 at 1e-6, 3e-7 at
  1e-7), and dropout masks keep a unit in every row so no other input is the zero vector.
* Neutral options are the plain cells exactly (fusedrnn.reference.layer_forward /
  stack_forward): zoneout masks all 0 or rates 0, recurrent-dropout and DropConnect masks all
  ones, huge clip bounds, zero peepholes. Zoneout masks all 1 freeze the state.
* Inference zoneout is the expectation of training zoneout (exact over one step, where each
  output element depends on its own mask bit only).
* The layer-normalised LSTM and GRU against an independent float64 reimplementation of Haste's
  equations in Haste's layout and gate orders, mapped through the module docstring's mapping
  (zoneout in training and inference, DropConnect, lengths).
* Peepholes and ``gate_clip`` against ONNX's LSTM equations in ONNX's layout (W[iofc], P[iof],
  clip on the activations' inputs), with lengths and reverse.
* NaN padding past the lengths takes no part in any output or gradient.
* Unsupported combinations and bad arguments raise, naming the option.

The loss is ``sum(y*Ry) + sum(h_n*Rh) (+ sum(c_n*Rc))``, so backward gets ``dy=Ry`` etc.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from _support import FD_EPS, check_fd

from fusedrnn import reference as ref
from fusedrnn import reference_regularised as reg

T, B, I, H, P = 5, 4, 3, 4, 2
LENGTHS = np.array([5, 1, 3, 3])
MARGIN = 1e-4       # distance kept between a clipped value (or a ReLU input) and its kink
MAX_DRAWS = 200
GATE_CLIP = 1.0
CELL_CLIP = (-0.5, 0.4)
ZONEOUT_P = 0.35
DROP_P = 0.3
FD_EPS_LN_ZERO = 1e-7   # the finite-difference step where LN sees the zero vector (docstring)

# (mode, projection?, reset_after)
CELLS = {
    "rnn_tanh": ("rnn_tanh", False, True),
    "rnn_relu": ("rnn_relu", False, True),
    "lstm": ("lstm", False, True),
    "lstm_proj": ("lstm", True, True),
    "gru": ("gru", False, True),
    "gru_v1": ("gru", False, False),
}

# option set -> the cells it is checked on
VARIANTS = {
    "layer_norm": ["lstm", "lstm_proj", "gru", "rnn_tanh"],
    "zoneout": ["lstm", "lstm_proj", "gru", "gru_v1", "rnn_tanh", "rnn_relu"],
    "zoneout_inference": ["lstm", "gru", "rnn_tanh"],
    "recurrent_dropout": ["lstm", "lstm_proj", "gru", "gru_v1", "rnn_tanh", "rnn_relu"],
    "dropconnect": ["lstm", "gru", "gru_v1", "rnn_tanh"],
    "gate_clip": ["lstm", "lstm_proj"],
    "cell_clip": ["lstm", "lstm_proj"],
    "peephole": ["lstm", "lstm_proj"],
    "all": ["lstm", "lstm_proj", "gru", "gru_v1", "rnn_tanh"],
}

# name -> (reverse, use lengths, give h0/c0, bias)
CONFIGS = {
    "fwd_lengths_h0": (False, True, True, True),
    "rev_lengths_zero": (True, True, False, True),
    "rev_full_nobias": (True, False, True, False),
}
EXTRA_CONFIG = {"layer_norm", "all"}   # the only variants also run without biases (LN's β)

CASES = [pytest.param(v, c, k, id=f"{v}-{c}-{k}") for v, cells in VARIANTS.items()
         for c in cells for k in CONFIGS if k != "rev_full_nobias" or v in EXTRA_CONFIG]


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _uniform(rng, shape, scale=0.7):
    return rng.uniform(-scale, scale, shape)


def _keep_mask(rng, shape, p):
    """A binary mask (1 with probability p) with at least one 0 and one 1."""
    m = (rng.random(shape) < p).astype(np.float64)
    m.reshape(-1)[0], m.reshape(-1)[-1] = 1.0, 0.0
    return m


def _loss(y, h_n, c_n, ry, rh, rc):
    val = np.sum(y * ry) + np.sum(h_n * rh)
    if c_n is not None:
        val += np.sum(c_n * rc)
    return float(val)


def _parts(variant, cell):
    """Which options a variant turns on for a cell."""
    mode, proj, reset_after = CELLS[cell]
    lstm = mode == "lstm"
    on = {variant} if variant != "all" else {
        "zoneout", "recurrent_dropout", "dropconnect"} | (
        {"layer_norm"} if (mode != "gru" or reset_after) else set()) | (
        {"gate_clip", "cell_clip", "peephole"} if lstm else set())
    return on


def _make_params(rng, mode, proj, bias, parts, in_size=I, hidden=H, proj_size=P):
    """Differentiable parameters (plain + the options'), single-layer names."""
    G = ref.GATES[mode]
    rec = proj_size if proj else hidden
    p = {"weight_ih": _uniform(rng, (G * hidden, in_size)),
         "weight_hh": _uniform(rng, (G * hidden, rec))}
    if bias:
        p["bias_ih"] = _uniform(rng, (G * hidden,))
        p["bias_hh"] = _uniform(rng, (G * hidden,))
    if proj:
        p["weight_hr"] = _uniform(rng, (proj_size, hidden))
    if "layer_norm" in parts:
        p["ln_weight_ih"] = 1 + _uniform(rng, (G * hidden,), 0.4)
        p["ln_weight_hh"] = 1 + _uniform(rng, (G * hidden,), 0.4)
        if mode == "lstm":
            p["ln_weight_c"] = 1 + _uniform(rng, (hidden,), 0.4)
            p["ln_bias_c"] = _uniform(rng, (hidden,), 0.4)
    if "peephole" in parts:
        p["weight_peephole"] = _uniform(rng, (3 * hidden,))
    return p


def _make_options(rng, mode, parts, T_, B_, G, hidden, rec, rec_in):
    """Non-differentiable options: masks (time-major), rates, clip bounds."""
    o = {}
    if "zoneout" in parts:
        o["zoneout_h_mask"] = _keep_mask(rng, (T_, B_, rec), ZONEOUT_P)
        if mode == "lstm":
            o["zoneout_c_mask"] = _keep_mask(rng, (T_, B_, hidden), ZONEOUT_P)
    if "zoneout_inference" in parts:
        o["zoneout_h"] = ZONEOUT_P
        if mode == "lstm":
            o["zoneout_c"] = 0.2
    if "recurrent_dropout" in parts:
        m = _keep_mask(rng, (B_, rec_in), 1 - DROP_P)
        m[:, 0] = 1   # no row of h dropped entirely (the zero vector into LN: docstring)
        o["recurrent_dropout_mask"] = m / (1 - DROP_P)
    if "dropconnect" in parts:
        o["dropconnect_mask"] = _keep_mask(rng, (G * hidden, rec_in), 1 - DROP_P) / (1 - DROP_P)
    if "gate_clip" in parts:
        o["gate_clip"] = GATE_CLIP
    if "cell_clip" in parts:
        o["cell_clip"] = CELL_CLIP
    return o


def _kinks(layer_ctxs, mode, opts):
    """(smallest distance of a clipped value to its bound, entries clipped, entries not
    clipped) over every step of the given layer contexts (ReLU inputs: _relu_inputs)."""
    margin, clipped, passed = np.inf, 0, 0
    for lc in layer_ctxs:
        for st in lc["steps"]:
            saved = st["saved"]
            if mode != "lstm":
                continue
            if opts.get("gate_clip") is not None:
                a = np.concatenate([v.ravel() for v in saved["pre"]])
                margin = min(margin, float(np.min(np.abs(np.abs(a) - opts["gate_clip"]))))
                clipped += int(np.sum(np.abs(a) > opts["gate_clip"]))
                passed += int(np.sum(np.abs(a) < opts["gate_clip"]))
            if opts.get("cell_clip") is not None:
                lo, hi = opts["cell_clip"]
                c = saved["c_raw"].ravel()
                margin = min(margin, float(np.min(np.abs(c - lo))), float(np.min(np.abs(c - hi))))
                clipped += int(np.sum((c < lo) | (c > hi)))
                passed += int(np.sum((c > lo) & (c < hi)))
    return margin, clipped, passed


def _relu_inputs(monkeypatch, run):
    """Smallest |input| of any ReLU step run() evaluates (the ReLU's output hides it)."""
    seen = [np.inf]
    inner = reg.rnn_cell_forward

    def spy(xp, hp, relu):
        if relu:
            seen.append(float(np.min(np.abs(xp + hp))))
        return inner(xp, hp, relu)

    with monkeypatch.context() as m:
        m.setattr(reg, "rnn_cell_forward", spy)   # reg_layer_forward looks it up per call
        run()
    return min(seen)


def _check_masking(y, h_n, dx, lengths, reverse):
    for b, L in enumerate(lengths):
        assert np.all(y[L:, b] == 0), b
        assert np.all(dx[L:, b] == 0), b
        np.testing.assert_array_equal(h_n[b], y[0 if reverse else L - 1, b])


def _layer_call(mode, reset_after, arrays, opts, states, lengths, reverse):
    p = arrays
    kw = {k: p[k] for k in reg.REG_PARAM_KEYS if k in p}
    return reg.reg_layer_forward(
        mode, p["x"], p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
        p["h0"] if states else None, p.get("c0") if states else None,
        w_hr=p.get("weight_hr"), lengths=lengths, reverse=reverse, reset_after=reset_after,
        **kw, **opts)


# --------------------------------------------------------------------------------------------
# Single layer: gradients against finite differences.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, cell, config", CASES)
def test_single_layer_gradients(variant, cell, config, request, monkeypatch):
    mode, proj, reset_after = CELLS[cell]
    reverse, use_lengths, give_h0, bias = CONFIGS[config]
    is_lstm = mode == "lstm"
    G = ref.GATES[mode]
    R = P if proj else H
    parts = _parts(variant, cell)
    lengths = LENGTHS if use_lengths else None
    rng = _rng("single", variant, cell, config)

    def forward(perturbing=None):
        states = give_h0 or perturbing in ("h0", "c0")
        return _layer_call(mode, reset_after, arrays, opts, states, lengths, reverse)

    for _ in range(MAX_DRAWS):
        params = _make_params(rng, mode, proj, bias, parts)
        opts = _make_options(rng, mode, parts, T, B, G, H, R, R)
        arrays = dict(params)
        arrays["x"] = rng.standard_normal((T, B, I))
        arrays["h0"] = rng.standard_normal((B, R)) if give_h0 else np.zeros((B, R))
        if is_lstm:
            arrays["c0"] = rng.standard_normal((B, H)) if give_h0 else np.zeros((B, H))
        margin, clipped, passed = _kinks([forward()[3]], mode, opts)
        if mode == "rnn_relu":
            margin = min(margin, _relu_inputs(monkeypatch, forward))
        clips = opts.get("gate_clip") is not None or opts.get("cell_clip") is not None
        if margin >= MARGIN and (not clips or (clipped and passed)):
            break
    else:
        pytest.fail("no test data drawn away from the clip bounds / ReLU kink")
    ry = rng.standard_normal((T, B, R))
    rh = rng.standard_normal((B, R))
    rc = rng.standard_normal((B, H)) if is_lstm else None

    y, h_n, c_n, ctx = forward()
    assert y.shape == (T, B, R) and h_n.shape == (B, R)
    assert (c_n is None) != is_lstm
    grads = reg.reg_layer_backward(ctx, ry, rh, rc)
    expected = {"x", "h0", "weight_ih", "weight_hh"} | ({"c0"} if is_lstm else set())
    expected |= set(params)
    assert set(grads) == expected

    _check_masking(y, h_n, grads["x"], LENGTHS if use_lengths else [T] * B, reverse)

    def loss(perturbing=None):
        y, h_n, c_n, _ = forward(perturbing)
        return _loss(y, h_n, c_n, ry, rh, rc)

    ln_at_zero = "layer_norm" in parts and not give_h0
    check_fd(loss, arrays, grads, request, eps=FD_EPS_LN_ZERO if ln_at_zero else FD_EPS)


# --------------------------------------------------------------------------------------------
# Neutral options are the plain cells; frozen state; expectation.
# --------------------------------------------------------------------------------------------

def _neutral(option, mode, G, R):
    if option == "zoneout_masks_0":
        o = {"zoneout_h_mask": np.zeros((T, B, R))}
        if mode == "lstm":
            o["zoneout_c_mask"] = np.zeros((T, B, H))
        return o
    if option == "zoneout_rates_0":
        return {"zoneout_h": 0.0, **({"zoneout_c": 0.0} if mode == "lstm" else {})}
    if option == "recurrent_dropout_ones":
        return {"recurrent_dropout_mask": np.ones((B, R))}
    if option == "dropconnect_ones":
        return {"dropconnect_mask": np.ones((G * H, R))}
    if option == "huge_gate_clip":
        return {"gate_clip": 1e300}
    if option == "huge_cell_clip":
        return {"cell_clip": (-1e300, 1e300)}
    if option == "zero_peepholes":
        return {"weight_peephole": np.zeros(3 * H)}
    assert option == "nothing"
    return {}


NEUTRAL = ["nothing", "zoneout_masks_0", "zoneout_rates_0", "recurrent_dropout_ones",
           "dropconnect_ones", "huge_gate_clip", "huge_cell_clip", "zero_peepholes"]
LSTM_ONLY = {"huge_gate_clip", "huge_cell_clip", "zero_peepholes"}


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell, option", [
    (c, o) for c in CELLS for o in NEUTRAL if o not in LSTM_ONLY or CELLS[c][0] == "lstm"])
def test_neutral_options_are_the_plain_cell(cell, option, reverse):
    mode, proj, reset_after = CELLS[cell]
    G = ref.GATES[mode]
    R = P if proj else H
    rng = _rng("neutral", cell, option, reverse)
    p = _make_params(rng, mode, proj, True, set())
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, R)), rng.standard_normal((B, H))
    c0 = c0 if mode == "lstm" else None
    dy, dh, dc = (rng.standard_normal((T, B, R)), rng.standard_normal((B, R)),
                  rng.standard_normal((B, H)))
    args = (mode, x, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], h0, c0)
    kw = dict(w_hr=p.get("weight_hr"), lengths=LENGTHS, reverse=reverse, reset_after=reset_after)
    a = ref.layer_forward(*args, **kw)
    b = reg.reg_layer_forward(*args, **kw, **_neutral(option, mode, G, R))
    for u, v in zip(a[:3], b[:3]):
        if u is not None:
            np.testing.assert_array_equal(u, v)
    ga = ref.layer_backward(a[3], dy, dh, dc)
    gb = reg.reg_layer_backward(b[3], dy, dh, dc)
    assert set(gb) == set(ga) | ({"weight_peephole"} if option == "zero_peepholes" else set())
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "rnn_tanh"])
def test_zoneout_masks_all_ones_freeze_the_state(cell):
    mode, proj, reset_after = CELLS[cell]
    R = P if proj else H
    rng = _rng("frozen", cell)
    p = _make_params(rng, mode, proj, True, set())
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, R)), rng.standard_normal((B, H))
    lstm = mode == "lstm"
    opts = {"zoneout_h_mask": np.ones((T, B, R))}
    if lstm:
        opts["zoneout_c_mask"] = np.ones((T, B, H))
    y, h_n, c_n, ctx = reg.reg_layer_forward(
        mode, x, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], h0,
        c0 if lstm else None, w_hr=p.get("weight_hr"), lengths=LENGTHS, reset_after=reset_after,
        **opts)
    for b, L in enumerate(LENGTHS):
        np.testing.assert_array_equal(y[:L, b], np.broadcast_to(h0[b], (L, R)))
    np.testing.assert_array_equal(h_n, h0)
    if lstm:
        np.testing.assert_array_equal(c_n, c0)
    # Nothing reaches the weights: the loss does not depend on them.
    g = reg.reg_layer_backward(ctx, rng.standard_normal(y.shape), rng.standard_normal(h_n.shape),
                               rng.standard_normal(c0.shape) if lstm else None)
    for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "x"):
        assert not np.any(g[k]), k


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru", "gru_v1", "rnn_tanh"])
def test_inference_zoneout_is_the_expectation(cell):
    """One step: each output element depends on its own mask bit only, so the expectation over
    the masks is p * (run with mask 1) + (1 - p) * (run with mask 0), exactly."""
    mode, proj, reset_after = CELLS[cell]
    R = P if proj else H
    lstm = mode == "lstm"
    rng = _rng("expectation", cell)
    p = _make_params(rng, mode, proj, True, {"layer_norm"} if cell == "lstm" else set())
    x = rng.standard_normal((1, B, I))
    h0, c0 = rng.standard_normal((B, R)), rng.standard_normal((B, H))
    ph, pc = 0.3, 0.6

    def run(**o):
        kw = {k: p[k] for k in reg.REG_PARAM_KEYS if k in p}
        return reg.reg_layer_forward(
            mode, x, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], h0,
            c0 if lstm else None, w_hr=p.get("weight_hr"), reset_after=reset_after, **kw, **o)

    rates = {"zoneout_h": ph, **({"zoneout_c": pc} if lstm else {})}
    ones = {"zoneout_h_mask": np.ones((1, B, R)),
            **({"zoneout_c_mask": np.ones((1, B, H))} if lstm else {})}
    zeros = {k: np.zeros_like(v) for k, v in ones.items()}
    yi, hi, ci, _ = run(**rates)
    y1, h1, c1, _ = run(**ones)
    y0, h0_, c0_, _ = run(**zeros)
    np.testing.assert_allclose(yi, ph * y1 + (1 - ph) * y0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(hi, ph * h1 + (1 - ph) * h0_, rtol=0, atol=1e-15)
    if lstm:
        np.testing.assert_allclose(ci, pc * c1 + (1 - pc) * c0_, rtol=0, atol=1e-15)
    # And it is not the plain cell (the rates matter).
    assert not np.allclose(yi, y0)


def test_zoneout_masks_are_read_by_time_index():
    """The reverse direction reads the mask at the time it processes: running reversed equals
    running forward on the time-flipped input and masks, flipped back."""
    rng = _rng("time_index")
    p = _make_params(rng, "lstm", False, True, set())
    x = rng.standard_normal((T, B, I))
    mh = _keep_mask(rng, (T, B, H), 0.4)
    mc = _keep_mask(rng, (T, B, H), 0.4)
    w = (p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
    yr, hr, cr, _ = reg.reg_layer_forward("lstm", x, *w, reverse=True, zoneout_h_mask=mh,
                                          zoneout_c_mask=mc)
    yf, hf, cf, _ = reg.reg_layer_forward("lstm", x[::-1], *w, zoneout_h_mask=mh[::-1],
                                          zoneout_c_mask=mc[::-1])
    np.testing.assert_array_equal(yr, yf[::-1])
    np.testing.assert_array_equal(hr, hf)
    np.testing.assert_array_equal(cr, cf)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_nan_padding_takes_no_part(cell):
    """NaN past each length (the input normalisation sees those rows too) changes nothing."""
    mode, proj, reset_after = CELLS[cell]
    parts = _parts("all", cell)
    rng = _rng("nan_padding", cell)
    arrays = _make_params(rng, mode, proj, True, parts)
    opts = _make_options(rng, mode, parts, T, B, ref.GATES[mode], H, H, H)
    arrays["x"] = rng.standard_normal((T, B, I))
    arrays["h0"], arrays["c0"] = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    dy, dh, dc = (rng.standard_normal((T, B, H)), rng.standard_normal((B, H)),
                  rng.standard_normal((B, H)))
    results = []
    for pad in (0.0, np.nan):
        x = arrays["x"].copy()
        for b, L in enumerate(LENGTHS):
            x[L:, b] = pad
        y, h_n, c_n, ctx = _layer_call(mode, reset_after, dict(arrays, x=x), opts, True,
                                       LENGTHS, True)
        results.append((y, h_n, c_n, reg.reg_layer_backward(ctx, dy, dh, dc)))
    (y0, h0, c0, g0), (y1, h1, c1, g1) = results
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(h0, h1)
    if c0 is not None:
        np.testing.assert_array_equal(c0, c1)
    for k in g0:
        np.testing.assert_array_equal(g0[k], g1[k], err_msg=k)


# --------------------------------------------------------------------------------------------
# Haste's layer-normalised LSTM and GRU, reimplemented from its equations in its own layout.
# --------------------------------------------------------------------------------------------

def _haste_ln(v, gamma, beta=None):
    mean = v.mean(axis=-1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    out = (v - mean) / np.sqrt(var + 1e-5) * gamma
    return out if beta is None else out + beta


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _haste_layer_norm_lstm(x, h0, c0, kernel, recurrent_kernel, bias, gamma, gamma_h, beta_h,
                           zoneout_prob, zoneout_mask, training):
    """Haste LayerNormLSTM: gates i, g, f, o; mask 1 keeps the new value. Returns h, c
    (T+1, B, H) with the initial states first."""
    hs, cs = [h0], [c0]
    wx = _haste_ln(x @ kernel, gamma[0])
    for t in range(x.shape[0]):
        v = _haste_ln(hs[t] @ recurrent_kernel, gamma[1]) + wx[t] + bias
        i, g, f, o = np.split(v, 4, axis=1)
        i, g, f, o = _sig(i), np.tanh(g), _sig(f), _sig(o)
        cs.append(f * cs[t] + i * g)
        h = o * np.tanh(_haste_ln(cs[-1], gamma_h, beta_h))
        if zoneout_prob:
            if training:
                h = (h - hs[t]) * zoneout_mask[t] + hs[t]
            else:
                h = zoneout_prob * hs[t] + (1 - zoneout_prob) * h
        hs.append(h)
    return np.stack(hs), np.stack(cs)


def _haste_layer_norm_gru(x, h0, kernel, recurrent_kernel, bias, recurrent_bias, gamma,
                          zoneout_prob, zoneout_mask, training):
    """Haste LayerNormGRU: gates z, r, n (Haste: "h"); recurrent bias inside r * (.)."""
    hs = [h0]
    wx = _haste_ln(x @ kernel, gamma[0]) + bias
    for t in range(x.shape[0]):
        rh = _haste_ln(hs[t] @ recurrent_kernel, gamma[1]) + recurrent_bias
        xz, xr, xn = np.split(wx[t], 3, axis=1)
        hz, hr, hn = np.split(rh, 3, axis=1)
        z, r = _sig(xz + hz), _sig(xr + hr)
        g = np.tanh(xn + r * hn)
        h = z * hs[t] + (1 - z) * g
        if zoneout_prob:
            if training:
                h = (h - hs[t]) * zoneout_mask[t] + hs[t]
            else:
                h = zoneout_prob * hs[t] + (1 - zoneout_prob) * h
        hs.append(h)
    return np.stack(hs)


def _blocks(a, perm, axis=0):
    """a's gate blocks (along axis) reordered: block k of the result is a's block perm[k]."""
    parts = np.split(a, len(perm), axis=axis)
    return np.concatenate([parts[k] for k in perm], axis=axis)


HASTE_LSTM_PERM = [0, 2, 1, 3]   # ours i, f, g, o from Haste's i, g, f, o
HASTE_GRU_PERM = [1, 0, 2]       # ours r, z, n from Haste's z, r, n


@pytest.mark.parametrize("zoneout", ["none", "training", "inference"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_norm_matches_haste(kind, zoneout):
    rng = _rng("haste", kind, zoneout)
    G = 4 if kind == "lstm" else 3
    perm = HASTE_LSTM_PERM if kind == "lstm" else HASTE_GRU_PERM
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    kernel = _uniform(rng, (I, G * H))
    recurrent_kernel = _uniform(rng, (H, G * H))
    bias = _uniform(rng, (G * H,))
    recurrent_bias = _uniform(rng, (G * H,))
    gamma = 1 + _uniform(rng, (2, G * H), 0.4)
    gamma_h, beta_h = 1 + _uniform(rng, (H,), 0.4), _uniform(rng, (H,), 0.4)
    # DropConnect as Haste applies it: F.dropout on recurrent_kernel (one scaled mask).
    dc_haste = _keep_mask(rng, (H, G * H), 1 - DROP_P) / (1 - DROP_P)
    haste_mask = _keep_mask(rng, (T, B, H), 1 - ZONEOUT_P)   # Haste: 1 keeps the new value
    training = zoneout == "training"
    prob = 0.0 if zoneout == "none" else ZONEOUT_P

    # The documented mapping.
    kw = dict(ln_weight_ih=_blocks(gamma[0], perm), ln_weight_hh=_blocks(gamma[1], perm),
              dropconnect_mask=_blocks(dc_haste.T, perm), lengths=LENGTHS)
    if zoneout == "training":
        kw["zoneout_h_mask"] = 1 - haste_mask
    elif zoneout == "inference":
        kw["zoneout_h"] = prob
    w_ih, w_hh = _blocks(kernel.T, perm), _blocks(recurrent_kernel.T, perm)
    if kind == "lstm":
        hs, cs = _haste_layer_norm_lstm(x, h0, c0, kernel, recurrent_kernel * dc_haste, bias,
                                        gamma, gamma_h, beta_h, prob, haste_mask, training)
        y, h_n, c_n, _ = ref.reg_layer_forward(
            "lstm", x, w_ih, w_hh, _blocks(bias, perm), np.zeros(4 * H), h0, c0,
            ln_weight_c=gamma_h, ln_bias_c=beta_h, **kw)
    else:
        hs = _haste_layer_norm_gru(x, h0, kernel, recurrent_kernel * dc_haste, bias,
                                   recurrent_bias, gamma, prob, haste_mask, training)
        y, h_n, c_n, _ = ref.reg_layer_forward(
            "gru", x, w_ih, w_hh, _blocks(bias, perm), _blocks(recurrent_bias, perm), h0, **kw)
    # Haste leaves outputs past a length unmasked and returns the state at each length.
    for b, L in enumerate(LENGTHS):
        np.testing.assert_allclose(y[:L, b], hs[1:L + 1, b], rtol=0, atol=1e-13)
        np.testing.assert_allclose(h_n[b], hs[L, b], rtol=0, atol=1e-13)
        if kind == "lstm":
            np.testing.assert_allclose(c_n[b], cs[L, b], rtol=0, atol=1e-13)


def test_layer_norm_eps_and_biased_variance():
    """LN_EPS is Haste's 1e-5 inside the square root of the biased variance."""
    assert reg.LN_EPS == 1e-5
    v = np.array([[1.0, 2.0, 4.0, 7.0]])
    y, _ = reg.layer_norm_forward(v, np.ones(4))
    d = v - 3.5
    np.testing.assert_allclose(y, d / np.sqrt((d * d).mean() + 1e-5), rtol=1e-15)


# --------------------------------------------------------------------------------------------
# ONNX's LSTM equations (peepholes P[iof], clip on the activations' inputs).
# --------------------------------------------------------------------------------------------

def _onnx_lstm(x, W, R, Bias, P_, h0, c0, clip, lengths, reverse):
    """ONNX LSTM (one direction; W[iofc] (4H, I), R[iofc] (4H, H), B = [Wb, Rb] (8H,),
    P[iof] (3H,)), each sequence on its own, outputs past its length 0."""
    Tn, Bn, _ = x.shape
    Hn = R.shape[1]
    y = np.zeros((Tn, Bn, Hn))
    h_n, c_n = h0.copy(), c0.copy()
    Wi, Wo, Wf, Wc = np.split(W, 4)
    Ri, Ro, Rf, Rc = np.split(R, 4)
    Wbi, Wbo, Wbf, Wbc, Rbi, Rbo, Rbf, Rbc = np.split(Bias, 8)
    Pi, Po, Pf = np.split(P_, 3)
    cl = lambda v: np.clip(v, -clip, clip)
    for b in range(Bn):
        h, c = h0[b], c0[b]
        for s in range(lengths[b]):
            t = lengths[b] - 1 - s if reverse else s
            xt = x[t, b]
            i = _sig(cl(Wi @ xt + Ri @ h + Pi * c + Wbi + Rbi))
            f = _sig(cl(Wf @ xt + Rf @ h + Pf * c + Wbf + Rbf))
            g = np.tanh(cl(Wc @ xt + Rc @ h + Wbc + Rbc))
            c = f * c + i * g
            o = _sig(cl(Wo @ xt + Ro @ h + Po * c + Wbo + Rbo))
            h = o * np.tanh(c)
            y[t, b] = h
        h_n[b], c_n[b] = h, c
    return y, h_n, c_n


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_peepholes_and_gate_clip_match_onnx(reverse):
    rng = _rng("onnx", reverse)
    x = 1.5 * rng.standard_normal((T, B, I))
    W, R = _uniform(rng, (4 * H, I), 1.0), _uniform(rng, (4 * H, H), 1.0)
    Bias, P_ = _uniform(rng, (8 * H,)), _uniform(rng, (3 * H,))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    clip = 0.8
    ye, he, ce = _onnx_lstm(x, W, R, Bias, P_, h0, c0, clip, LENGTHS, reverse)
    iofc_to_ifgo = [0, 2, 3, 1]
    y, h_n, c_n, ctx = ref.reg_layer_forward(
        "lstm", x, _blocks(W, iofc_to_ifgo), _blocks(R, iofc_to_ifgo),
        _blocks(Bias[:4 * H], iofc_to_ifgo), _blocks(Bias[4 * H:], iofc_to_ifgo), h0, c0,
        lengths=LENGTHS, reverse=reverse, weight_peephole=P_, gate_clip=clip)
    np.testing.assert_allclose(y, ye, rtol=0, atol=1e-14)
    np.testing.assert_allclose(h_n, he, rtol=0, atol=1e-14)
    np.testing.assert_allclose(c_n, ce, rtol=0, atol=1e-14)
    _, clipped, passed = _kinks([ctx], "lstm", {"gate_clip": clip})
    assert clipped and passed   # the clip did something, and not everything


def test_cell_clip_clips_the_carried_state():
    rng = _rng("cell_clip_state")
    p = _make_params(rng, "lstm", False, True, set())
    x = 2 * rng.standard_normal((T, B, I))
    lo, hi = CELL_CLIP
    y, h_n, c_n, ctx = reg.reg_layer_forward("lstm", x, p["weight_ih"], p["weight_hh"],
                                             p["bias_ih"], p["bias_hh"], cell_clip=CELL_CLIP)
    assert np.all((c_n >= lo) & (c_n <= hi))
    raw = np.concatenate([st["saved"]["c_raw"].ravel() for st in ctx["steps"]])
    assert np.any(raw < lo) and np.any(raw > hi)
    # A scalar bound c means (-c, c).
    a = reg.reg_layer_forward("lstm", x, p["weight_ih"], p["weight_hh"], cell_clip=0.3)
    b = reg.reg_layer_forward("lstm", x, p["weight_ih"], p["weight_hh"], cell_clip=(-0.3, 0.3))
    np.testing.assert_array_equal(a[0], b[0])


# --------------------------------------------------------------------------------------------
# Stacks: per-layer options through fusedrnn.reference.stack_forward.
# --------------------------------------------------------------------------------------------

ST, SB, SI, SH = 4, 3, 2, 3
SLENGTHS = np.array([4, 1, 3])


def _make_stack(rng, mode, num_layers, D, parts, proj_size=None):
    params, opts = {}, []
    R = proj_size or SH
    for l in range(num_layers):
        for d in range(D):
            p = _make_params(rng, mode, proj_size is not None, True, parts,
                             in_size=SI if l == 0 else D * R, hidden=SH, proj_size=proj_size)
            sfx = f"_l{l}" + ("_reverse" if d else "")
            params.update({k + sfx: v for k, v in p.items()})
            opts.append(_make_options(rng, mode, parts, ST, SB, ref.GATES[mode], SH, R, R))
    return params, opts


STACK_CELLS = {"lstm_all": ("lstm", None), "lstm_proj_all": ("lstm", 2), "gru_all": ("gru", None)}


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(STACK_CELLS))
def test_stack_gradients(cell, bidirectional, request):
    mode, proj_size = STACK_CELLS[cell]
    lstm = mode == "lstm"
    L, D = 2, (2 if bidirectional else 1)
    R = proj_size or SH
    parts = _parts("all", "lstm" if lstm else "gru")
    rng = _rng("stack", cell, bidirectional)
    keep = rng.random((L - 1, ST, SB, D * R)) >= DROP_P
    keep[..., 0] = True   # no layer input row entirely dropped (the zero vector into LN)
    masks = list(keep / (1 - DROP_P))

    def forward(perturbing=None):
        return ref.stack_forward(mode, arrays["x"], params, num_layers=L,
                                 bidirectional=bidirectional, h0=arrays["h0"],
                                 c0=arrays.get("c0"), lengths=SLENGTHS, batch_first=True,
                                 dropout_masks=masks, layer_options=opts)

    for _ in range(MAX_DRAWS):
        params, opts = _make_stack(rng, mode, L, D, parts, proj_size)
        arrays = dict(params)
        arrays["x"] = rng.standard_normal((SB, ST, SI))
        arrays["h0"] = rng.standard_normal((L * D, SB, R))
        if lstm:
            arrays["c0"] = rng.standard_normal((L * D, SB, SH))
        margin, clipped, passed = _kinks(forward()[3]["layers"], mode,
                                         {"gate_clip": GATE_CLIP, "cell_clip": CELL_CLIP}
                                         if lstm else {})
        if margin >= MARGIN and (not lstm or (clipped and passed)):
            break
    else:
        pytest.fail("no test data drawn away from the clip bounds")
    ry = rng.standard_normal((SB, ST, D * R))
    rh = rng.standard_normal((L * D, SB, R))
    rc = rng.standard_normal((L * D, SB, SH)) if lstm else None

    y, h_n, c_n, ctx = forward()
    dx, dh0, dc0, grads = ref.stack_backward(ctx, ry, rh, rc)
    assert set(grads) == set(params)
    grads = dict(grads, x=dx, h0=dh0)
    if lstm:
        grads["c0"] = dc0
    y_tm, dx_tm = y.swapaxes(0, 1), dx.swapaxes(0, 1)
    for d in range(D):
        _check_masking(y_tm[:, :, d * R:(d + 1) * R], h_n[(L - 1) * D + d], dx_tm, SLENGTHS,
                       reverse=bool(d))

    def loss(perturbing=None):
        y, h_n, c_n, _ = forward(perturbing)
        return _loss(y, h_n, c_n, ry, rh, rc)

    check_fd(loss, arrays, grads, request)


def test_stack_without_options_is_unchanged():
    """layer_options={} runs the regularised layers with nothing on: the plain stack, exactly;
    regularised parameters in params switch the regularised layers on by themselves."""
    rng = _rng("stack_plain")
    L, D = 2, 2
    params, _ = _make_stack(rng, "lstm", L, D, set(), proj_size=2)
    x = rng.standard_normal((ST, SB, SI))
    h0, c0 = rng.standard_normal((L * D, SB, 2)), rng.standard_normal((L * D, SB, SH))
    masks = list((rng.random((L - 1, ST, SB, D * 2)) >= DROP_P) / (1 - DROP_P))
    kw = dict(num_layers=L, bidirectional=True, h0=h0, c0=c0, lengths=SLENGTHS,
              dropout_masks=masks)
    a = ref.stack_forward("lstm", x, params, **kw)
    b = ref.stack_forward("lstm", x, params, layer_options={}, **kw)
    assert all(lc.get("regularised") for lc in b[3]["layers"])
    for u, v in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(u, v)
    dy, dh, dc = (rng.standard_normal(a[0].shape), rng.standard_normal(h0.shape),
                  rng.standard_normal(c0.shape))
    ga, gb = ref.stack_backward(a[3], dy, dh, dc), ref.stack_backward(b[3], dy, dh, dc)
    for u, v in zip(ga[:3], gb[:3]):
        np.testing.assert_array_equal(u, v)
    assert set(ga[3]) == set(gb[3])
    for k in ga[3]:
        np.testing.assert_array_equal(ga[3][k], gb[3][k], err_msg=k)

    # Zero peepholes by name: the regularised path without layer_options, same values.
    peep = {n: np.zeros(3 * SH) for l in range(L) for d in range(D)
            for n in reg.reg_param_names(l, d, peephole=True)}
    c = ref.stack_forward("lstm", x, {**params, **peep}, **kw)
    assert all(lc.get("regularised") for lc in c[3]["layers"])
    np.testing.assert_array_equal(a[0], c[0])
    gc = ref.stack_backward(c[3], dy, dh, dc)
    assert set(gc[3]) == set(params) | set(peep)


def test_stack_layer_options_checks():
    rng = _rng("stack_checks")
    params, _ = _make_stack(rng, "gru", 2, 1, set())
    x = rng.standard_normal((ST, SB, SI))
    with pytest.raises(ValueError, match="2 dicts"):
        ref.stack_forward("gru", x, params, num_layers=2, layer_options=[{}])
    with pytest.raises(ValueError, match="ln_weight_ih"):
        ref.stack_forward("gru", x, params, num_layers=2,
                          layer_options={"ln_weight_ih": np.ones(3 * SH)})
    with pytest.raises(ValueError, match="reverse"):
        ref.stack_forward("gru", x, params, num_layers=2, layer_options={"reverse": True})


# --------------------------------------------------------------------------------------------
# Unsupported combinations and bad arguments.
# --------------------------------------------------------------------------------------------

def _bad_call(mode, reset_after=True, **opts):
    G = ref.GATES[mode]
    rng = _rng("bad", mode)
    x = rng.standard_normal((T, B, I))
    return reg.reg_layer_forward(mode, x, _uniform(rng, (G * H, I)), _uniform(rng, (G * H, H)),
                                 reset_after=reset_after, **opts)


LN3 = dict(ln_weight_ih=np.ones(3 * H), ln_weight_hh=np.ones(3 * H))
BAD = [
    ("gru", False, LN3, NotImplementedError, "reset_after=False"),
    ("gru", True, dict(gate_clip=1.0), NotImplementedError, "gate_clip"),
    ("rnn_tanh", True, dict(cell_clip=1.0), NotImplementedError, "cell_clip"),
    ("gru", True, dict(weight_peephole=np.zeros(3 * H)), NotImplementedError, "weight_peephole"),
    ("gru", True, dict(zoneout_c=0.1), ValueError, "zoneout_c"),
    ("gru", True, dict(ln_weight_ih=np.ones(3 * H)), ValueError, "missing ln_weight_hh"),
    ("lstm", True, dict(ln_weight_ih=np.ones(4 * H), ln_weight_hh=np.ones(4 * H)), ValueError,
     "missing ln_weight_c, ln_bias_c"),
    ("gru", True, dict(LN3, ln_weight_c=np.ones(H)), ValueError, "ln_weight_c"),
    ("gru", True, dict(ln_weight_ih=np.ones(4 * H), ln_weight_hh=np.ones(3 * H)), ValueError,
     "ln_weight_ih must have shape"),
    ("lstm", True, dict(zoneout_h=0.1, zoneout_h_mask=np.zeros((T, B, H))), ValueError,
     "exclusive"),
    ("lstm", True, dict(zoneout_h=1.5), ValueError, "zoneout_h must be a rate"),
    ("lstm", True, dict(zoneout_c_mask=np.full((T, B, H), 0.5)), ValueError, "binary"),
    ("lstm", True, dict(zoneout_h_mask=np.zeros((T, B, H + 1))), ValueError, "zoneout_h_mask"),
    ("lstm", True, dict(recurrent_dropout_mask=np.ones((B + 1, H))), ValueError,
     "recurrent_dropout_mask"),
    ("lstm", True, dict(dropconnect_mask=np.ones((4 * H, H + 1))), ValueError, "dropconnect"),
    ("lstm", True, dict(gate_clip=(-1.0, 1.0)), ValueError, "gate_clip must be a positive"),
    ("lstm", True, dict(gate_clip=0.0), ValueError, "gate_clip must be > 0"),
    ("lstm", True, dict(cell_clip=(1.0, -1.0)), ValueError, "lo must be <= hi"),
    ("lstm", True, dict(weight_peephole=np.zeros(4 * H)), ValueError, "weight_peephole"),
]


@pytest.mark.parametrize("mode, reset_after, opts, exc, match", BAD,
                         ids=[f"{b[0]}-{b[4]}" for b in BAD])
def test_bad_options_raise(mode, reset_after, opts, exc, match):
    with pytest.raises(exc, match=match):
        _bad_call(mode, reset_after, **opts)


# --------------------------------------------------------------------------------------------
# Helpers: names, forget bias, float32.
# --------------------------------------------------------------------------------------------

def test_reg_param_names():
    assert reg.reg_param_names(0, 0, layer_norm=True) == [
        "ln_weight_ih_l0", "ln_weight_hh_l0", "ln_weight_c_l0", "ln_bias_c_l0"]
    assert reg.reg_param_names(1, 1, mode="gru", layer_norm=True, peephole=False) == [
        "ln_weight_ih_l1_reverse", "ln_weight_hh_l1_reverse"]
    assert reg.reg_param_names(0, 1, peephole=True) == ["weight_peephole_l0_reverse"]
    with pytest.raises(NotImplementedError, match="peepholes"):
        reg.reg_param_names(0, 0, mode="gru", peephole=True)


def test_unit_forget_bias():
    b_ih, b_hh = np.arange(8.0), np.arange(8.0) + 10
    n_ih, n_hh = ref.unit_forget_bias(b_ih, b_hh)
    np.testing.assert_array_equal(n_ih, [0, 1, 1, 1, 4, 5, 6, 7])
    np.testing.assert_array_equal(n_hh, [10, 11, 0, 0, 14, 15, 16, 17])
    np.testing.assert_array_equal(b_ih, np.arange(8.0))   # copies: inputs untouched
    n_ih, n_hh = ref.unit_forget_bias(b_ih, value=2.5)
    assert n_hh is None and list(n_ih[2:4]) == [2.5, 2.5]
    # Haste's forget_bias: its bias block [2H:3H] (i, g, f, o) lands on bias_ih[H:2H].
    haste = np.zeros(8)
    haste[4:6] = 1.0
    np.testing.assert_array_equal(_blocks(haste, HASTE_LSTM_PERM),
                                  ref.unit_forget_bias(np.zeros(8))[0])
    with pytest.raises(ValueError, match="4\\*H"):
        ref.unit_forget_bias(np.zeros(6))
    with pytest.raises(ValueError, match="bias_hh"):
        ref.unit_forget_bias(np.zeros(8), np.zeros(4))


def test_float32_runs_in_float32():
    rng = _rng("f32")
    parts = _parts("all", "lstm")
    p = _make_params(rng, "lstm", False, True, parts)
    opts = _make_options(rng, "lstm", parts, T, B, 4, H, H, H)
    x = rng.standard_normal((T, B, I))

    def run(dt):
        q = {k: v.astype(dt) for k, v in p.items()}
        kw = {k: q[k] for k in reg.REG_PARAM_KEYS if k in q}
        y, h_n, c_n, ctx = reg.reg_layer_forward(
            "lstm", x.astype(dt), q["weight_ih"], q["weight_hh"], q["bias_ih"], q["bias_hh"],
            lengths=LENGTHS, reverse=True, **kw, **opts)
        g = reg.reg_layer_backward(ctx, np.ones((T, B, H), dt))
        return y, g

    y32, g32 = run(np.float32)
    y64, g64 = run(np.float64)
    assert y32.dtype == np.float32 and all(v.dtype == np.float32 for v in g32.values())
    np.testing.assert_allclose(y32, y64, atol=1e-5)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], atol=1e-4 * max(1, np.abs(g64[k]).max()),
                                   err_msg=k)
