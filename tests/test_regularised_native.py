"""The regularised kernels (fusedrnn.regularised, csrc/cpu/regularised_driver.h) against the
float64 reference (fusedrnn.reference_regularised, itself checked by finite differences in
tests/test_reference_regularised.py): every option x cell x layers/directions/lengths x dtype,
forward and every gradient, with the kernels' own masks fed to the reference."""

import numpy as np
import pytest

from fusedrnn import reference as ref
from fusedrnn import regularised as fr
from fusedrnn.regularised import Regularisation

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}

# (name, options, modes it applies to)
VARIANTS = [
    ("plain", dict(), ("lstm", "gru", "gru_v1", "rnn_tanh", "rnn_relu")),
    ("layer_norm", dict(layer_norm=True), ("lstm", "gru", "rnn_tanh", "rnn_relu")),
    ("zoneout", dict(zoneout_h=0.3, zoneout_c=0.2), ("lstm",)),
    ("zoneout_h", dict(zoneout_h=0.3), ("gru", "gru_v1", "rnn_tanh")),
    ("recurrent_dropout", dict(recurrent_dropout=0.3),
     ("lstm", "gru", "gru_v1", "rnn_relu")),
    ("dropconnect", dict(dropconnect=0.4), ("lstm", "gru", "gru_v1", "rnn_tanh")),
    ("gate_clip", dict(gate_clip=0.8), ("lstm",)),
    ("cell_clip", dict(cell_clip=(-0.5, 0.7)), ("lstm",)),
    ("peepholes", dict(peepholes=True), ("lstm",)),
    ("everything", dict(layer_norm=True, zoneout_h=0.2, zoneout_c=0.1, recurrent_dropout=0.25,
                        dropconnect=0.2, gate_clip=1.5, cell_clip=1.2, peepholes=True),
     ("lstm",)),
    ("ln_zoneout_dropout", dict(layer_norm=True, zoneout_h=0.2, recurrent_dropout=0.2,
                                dropconnect=0.2), ("gru", "rnn_tanh")),
]

LAYOUTS = {
    "one": dict(num_layers=1, bidirectional=False),
    "two_bidir_lengths": dict(num_layers=2, bidirectional=True, lengths=[7, 3, 5], dropout=0.3),
    "two_batch_first": dict(num_layers=2, bidirectional=False, batch_first=True,
                            lengths=[2, 7, 6]),
}


def _cases():
    for name, opts, modes in VARIANTS:
        for mode in modes:
            for layout in LAYOUTS:
                yield pytest.param(name, opts, mode, layout, id=f"{name}-{mode}-{layout}")


def _setup(mode, opts, layout, dt, proj=0, seed=0):
    reset_after = mode != "gru_v1"
    base = "gru" if mode == "gru_v1" else mode
    reg = Regularisation(**opts)
    rng = np.random.default_rng(seed)
    T, B, I, H = 7, 3, 5, 8
    lay = dict(LAYOUTS[layout])
    L, D = lay["num_layers"], 2 if lay["bidirectional"] else 1
    R = proj or H
    G = GATES[base]
    params = {}
    for l in range(L):
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            i_l = I if l == 0 else D * R
            params["weight_ih" + sfx] = rng.uniform(-.6, .6, (G * H, i_l))
            params["weight_hh" + sfx] = rng.uniform(-.6, .6, (G * H, R))
            params["bias_ih" + sfx] = rng.uniform(-.5, .5, G * H)
            params["bias_hh" + sfx] = rng.uniform(-.5, .5, G * H)
            if proj:
                params["weight_hr" + sfx] = rng.uniform(-.6, .6, (proj, H))
    for name, shape in fr.param_shapes(base, reg, H, L, D == 2).items():
        params[name] = rng.uniform(0.5, 1.5, shape) if "weight" in name and "peep" not in name \
            else rng.uniform(-.5, .5, shape)
    params = {k: v.astype(dt) for k, v in params.items()}
    x = rng.standard_normal((B, T, I) if lay.get("batch_first") else (T, B, I)).astype(dt)
    h0 = rng.standard_normal((L * D, B, R)).astype(dt)
    c0 = rng.standard_normal((L * D, B, H)).astype(dt) if base == "lstm" else None
    return base, reset_after, reg, params, x, h0, c0, lay, rng


def _reference_options(ctx, reg, base):
    out = []
    for k, masks in enumerate(ctx.masks):
        o = dict(ctx.layers[k]["opts"])
        assert all(o[key] is masks[key] for key in masks)  # ctx.masks: what the kernels used
        for key in ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c",
                    "weight_peephole"):
            o.pop(key, None)
        o = {key: (v.astype(np.float64) if isinstance(v, np.ndarray) else v)
             for key, v in o.items()}
        o.pop("ln_eps", None)
        if "gate_clip" in o:  # the kernels take (lo, hi); the reference its symmetric bound
            o["gate_clip"] = o["gate_clip"][1]
        out.append(o)
    return out


def _run_both(name, opts, mode, layout, dt, proj=0, training=True):
    base, reset_after, reg, params, x, h0, c0, lay, rng = _setup(mode, opts, layout, dt, proj)
    kw = dict(num_layers=lay["num_layers"], bidirectional=lay["bidirectional"],
              lengths=lay.get("lengths"), batch_first=lay.get("batch_first", False))
    y, h_n, c_n, ctx = fr.stack_forward(base, x, params, reg=reg, h0=h0, c0=c0, seed=11,
                                        reset_after=reset_after, training=training,
                                        dropout=lay.get("dropout", 0.0), **kw)
    f64 = {k: v.astype(np.float64) for k, v in params.items()}
    if training:
        layer_options = _reference_options(ctx, reg, base)
        between = [None if m is None else m.astype(np.float64) for m in ctx.between]
        between = None if not between or all(m is None for m in between) else between
    else:
        layer_options = {}
        if reg.zoneout_h:
            layer_options["zoneout_h"] = reg.zoneout_h
        if reg.zoneout_c and base == "lstm":
            layer_options["zoneout_c"] = reg.zoneout_c
        if reg.gate_clip is not None:
            layer_options["gate_clip"] = reg.gate_clip
        if reg.cell_clip is not None:
            layer_options["cell_clip"] = reg.cell_clip
        between = None
    yr, hr, cr, rctx = ref.stack_forward(
        base, x.astype(np.float64), f64, h0=h0.astype(np.float64),
        c0=None if c0 is None else c0.astype(np.float64), reset_after=reset_after,
        dropout_masks=between, layer_options=layer_options, **kw)
    return dict(y=(y, yr), h_n=(h_n, hr), c_n=(c_n, cr)), ctx, rctx, (y, h_n, c_n), rng


def _tol(dt):
    return (1e-10, 1e-10) if dt == np.float64 else (2e-4, 2e-4)


def _close(name, got, want, dt):
    rtol, atol = _tol(dt)
    scale = max(1.0, float(np.max(np.abs(want)))) if np.size(want) else 1.0
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol,
                               atol=atol * scale, err_msg=name)


@pytest.mark.parametrize("dt", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,opts,mode,layout", list(_cases()))
def test_kernels_match_reference(name, opts, mode, layout, dt):
    outs, ctx, rctx, (y, h_n, c_n), rng = _run_both(name, opts, mode, layout, dt)
    for key, (got, want) in outs.items():
        if want is None:
            assert got is None
            continue
        _close(key, got, want, dt)
    dy = rng.standard_normal(y.shape).astype(dt)
    dh = rng.standard_normal(h_n.shape).astype(dt)
    dc = None if c_n is None else rng.standard_normal(c_n.shape).astype(dt)
    dx, dh0, dc0, grads = fr.stack_backward(ctx, dy, dh, dc)
    rdx, rdh0, rdc0, rgrads = ref.stack_backward(
        rctx, dy.astype(np.float64), dh.astype(np.float64),
        None if dc is None else dc.astype(np.float64))
    _close("dx", dx, rdx, dt)
    _close("dh0", dh0, rdh0, dt)
    if rdc0 is not None:
        _close("dc0", dc0, rdc0, dt)
    assert sorted(grads) == sorted(rgrads)
    for key in rgrads:
        _close(key, grads[key], rgrads[key], dt)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_inference_uses_the_expectation(mode):
    opts = dict(layer_norm=True, zoneout_h=0.3, **({"zoneout_c": 0.2, "gate_clip": 2.0,
                                                     "cell_clip": 1.0, "peepholes": True}
                                                    if mode == "lstm" else {}))
    outs, ctx, _, _, _ = _run_both("inference", opts, mode, "two_bidir_lengths", np.float64,
                                   training=False)
    assert ctx is None
    for key, (got, want) in outs.items():
        if want is not None:
            _close(key, got, want, np.float64)


@pytest.mark.parametrize("dt", [np.float64, np.float32], ids=["f64", "f32"])
def test_projection_with_every_option(dt):
    opts = dict(layer_norm=True, zoneout_h=0.2, zoneout_c=0.1, recurrent_dropout=0.2,
                dropconnect=0.2, gate_clip=1.5, cell_clip=1.2, peepholes=True)
    outs, ctx, rctx, (y, h_n, c_n), rng = _run_both("proj", opts, "lstm", "two_bidir_lengths",
                                                    dt, proj=3)
    for key, (got, want) in outs.items():
        _close(key, got, want, dt)
    dy = rng.standard_normal(y.shape).astype(dt)
    dx, dh0, dc0, grads = fr.stack_backward(ctx, dy)
    rdx, rdh0, rdc0, rgrads = ref.stack_backward(rctx, dy.astype(np.float64))
    _close("dx", dx, rdx, dt)
    for key in rgrads:
        _close(key, grads[key], rgrads[key], dt)


def test_masks_are_a_function_of_the_seed():
    reg = Regularisation(zoneout_h=0.3, zoneout_c=0.3, recurrent_dropout=0.3, dropconnect=0.3)
    _, _, _, params, x, h0, c0, _, _ = _setup("lstm", {}, "one", np.float64)
    runs = [fr.stack_forward("lstm", x, params, reg=reg, seed=s)[3] for s in (5, 5, 6)]
    for key in runs[0].masks[0]:
        assert np.array_equal(runs[0].masks[0][key], runs[1].masks[0][key])
        assert not np.array_equal(runs[0].masks[0][key], runs[2].masks[0][key])
    zh = runs[0].masks[0]["zoneout_h_mask"]
    assert zh.dtype == np.uint8 and 0.15 < zh.mean() < 0.45  # P(keep previous) = 0.3


def test_rates_zero_give_the_plain_kernels():
    """No option: the regularised loop computes what the plain fused kernels do."""
    from fusedrnn import functional as F
    _, _, reg, params, x, h0, c0, _, _ = _setup("lstm", {}, "one", np.float64)
    y, h_n, c_n, _ = fr.stack_forward("lstm", x, params, reg=reg, h0=h0, c0=c0)
    y2, h2, c2, _ = F.stack_forward("lstm", x, params, h0=h0, c0=c0, training=False)
    np.testing.assert_allclose(y, y2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_n, c2, rtol=1e-12, atol=1e-12)


def test_gradient_passes_through_clip_boundaries_only_inside():
    """Clipping everything (tiny bounds) zeroes the input weights' gradient through the gates
    it clips: gate_clip=1e-9 leaves only d(b) paths at exactly zero derivative."""
    reg = Regularisation(gate_clip=1e-9)
    _, _, _, params, x, h0, c0, _, _ = _setup("lstm", {}, "one", np.float64)
    y, h_n, c_n, ctx = fr.stack_forward("lstm", x, params, reg=reg, h0=h0, c0=c0)
    dx, dh0, dc0, grads = fr.stack_backward(ctx, np.ones_like(y))
    assert np.all(grads["weight_ih_l0"] == 0) and np.all(dx == 0)
    assert np.any(dc0 != 0)  # c still carries gradient through f * c_prev


@pytest.mark.parametrize("layer_norm", [True, False], ids=["by_rows", "by_units"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(threads, layer_norm):
    """Both time loops (rows: layer norm; units: the rest) on teams of 1-3 threads."""
    import fusedrnn
    opts = dict(layer_norm=layer_norm, zoneout_h=0.2, zoneout_c=0.1, recurrent_dropout=0.25,
                peepholes=True, gate_clip=1.5, cell_clip=1.0)
    before = fusedrnn.get_num_threads()
    try:
        fusedrnn.set_num_threads(threads)
        test_kernels_match_reference("threads", opts, "lstm", "two_bidir_lengths", np.float64)
    finally:
        fusedrnn.set_num_threads(before)


def _lstm_call(**over):
    _, _, reg, params, x, h0, c0, _, _ = _setup("lstm", dict(layer_norm=True, peepholes=True),
                                                "one", np.float32)
    kw = dict(reg=reg, h0=h0, c0=c0)
    kw.update(over.pop("kw", {}))
    params.update(over)
    return lambda: fr.stack_forward("lstm", x, params, **kw)


@pytest.mark.parametrize("over,exc,words", [
    (dict(ln_weight_c_l0=np.ones(3, np.float32)), ValueError, "ln_weight_c must have shape"),
    (dict(weight_peephole_l0=np.ones(24)), TypeError, "x's dtype"),
    (dict(kw=dict(reg=Regularisation(peepholes=True))), ValueError, "do not use"),
    (dict(kw=dict(h0=np.zeros((1, 3, 9), np.float32))), ValueError, "h0 must have shape"),
    (dict(kw=dict(lengths=[1, 2, 9])), ValueError, "lengths must lie in [1, T]"),
    (dict(kw=dict(reg="layer_norm")), TypeError, "Regularisation"),
])
def test_bad_input_raises_naming_the_argument(over, exc, words):
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("(", r"\(")):
        _lstm_call(**over)()


def test_options_a_cell_lacks_raise():
    with pytest.raises(NotImplementedError, match="peepholes"):
        Regularisation(peepholes=True).check_mode("gru")
    with pytest.raises(ValueError, match="zoneout_c"):
        Regularisation(zoneout_c=0.1).check_mode("rnn_tanh")
    with pytest.raises(NotImplementedError, match="reset_after=False"):
        Regularisation(layer_norm=True).check_mode("gru", reset_after=False)
    with pytest.raises(ValueError, match="rate"):
        Regularisation(zoneout_h=1.5)
    with pytest.raises(ValueError, match="< 1"):
        Regularisation(recurrent_dropout=1.0)
    with pytest.raises(ValueError, match="lo must be <= hi"):
        Regularisation(cell_clip=(1.0, -1.0))


def test_native_entry_checks_masks_and_rates():
    from fusedrnn._loader import _C
    _, _, _, params, x, h0, c0, _, _ = _setup("lstm", {}, "one", np.float32)
    args = (2, x, params["weight_ih_l0"], params["weight_hh_l0"], None, None, None, None, None,
            None, False)
    T, B = x.shape[:2]
    with pytest.raises(ValueError, match="binary"):
        _C.reg_layer_forward(*args, True, {"zoneout_h_mask": np.full((T, B, 8), 2, np.uint8)})
    with pytest.raises(TypeError, match="uint8 or bool"):
        _C.reg_layer_forward(*args, True, {"zoneout_h_mask": np.zeros((T, B, 8), np.float32)})
    with pytest.raises(ValueError, match="exclusive"):
        _C.reg_layer_forward(*args, True, {"zoneout_h": 0.2,
                                           "zoneout_h_mask": np.zeros((T, B, 8), np.uint8)})
    with pytest.raises(ValueError, match="unknown option"):
        _C.reg_layer_forward(*args, False, {"zonout_h": 0.2})
    with pytest.raises(ValueError, match="reserve must have shape"):
        _C.reg_layer_backward(*args[:7], None, False, {}, np.zeros(3, np.float32), None, None,
                              None, None)


def test_inference_with_only_dropouts_is_the_plain_stack():
    from fusedrnn import functional as F
    reg = Regularisation(recurrent_dropout=0.3, dropconnect=0.3)
    _, _, _, params, x, h0, c0, lay, _ = _setup("lstm", {}, "two_bidir_lengths", np.float64)
    kw = dict(num_layers=2, bidirectional=True, lengths=lay["lengths"], h0=h0, c0=c0)
    y, h_n, c_n, ctx = fr.stack_forward("lstm", x, params, reg=reg, training=False, dropout=0.3,
                                        **kw)
    y2, h2, c2, _ = F.stack_forward("lstm", x, params, training=False, **kw)
    assert ctx is None
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(c_n, c2)


# ------------------------------------------------------------------------------------------
# NumPy modules


def test_module_forward_backward_match_the_functions():
    import fusedrnn
    m = fusedrnn.RegularisedLSTM(5, 8, num_layers=2, bidirectional=True, dtype=np.float64,
                                 layer_norm=True, zoneout_h=0.2, zoneout_c=0.1,
                                 recurrent_dropout=0.2, peepholes=True, seed=3)
    rng = np.random.default_rng(0)
    for name, p in m.named_parameters():  # gains and peepholes away from their init
        if name.startswith(("ln_", "weight_peephole")):
            p[...] = rng.uniform(0.5, 1.5, p.shape)
    x = rng.standard_normal((6, 3, 5))
    m.train()
    y, (h, c) = m(x, lengths=[6, 2, 4])
    ctx = m._ctx[0]
    ref_y, ref_h, ref_c, rctx = _reference_replay(m, x, ctx, lengths=[6, 2, 4])
    np.testing.assert_allclose(y, ref_y, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(c, ref_c, rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    dx, (dh0, dc0) = m.backward(dy)
    rdx, rdh0, rdc0, rgrads = ref.stack_backward(rctx, dy)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-10)
    for name, g in rgrads.items():
        np.testing.assert_allclose(m.grads[name], g, rtol=1e-10, atol=1e-10, err_msg=name)
    m.backward(dy)  # gradients accumulate, as fusedrnn.LSTM's
    np.testing.assert_allclose(m.grads["ln_weight_c_l1"], 2 * rgrads["ln_weight_c_l1"],
                               rtol=1e-10)


def _reference_replay(m, x, ctx, lengths):
    """The reference stack on the module's parameters with the masks its forward drew."""
    params = {k: v for k, v in m.named_parameters()}
    opts = _reference_options(ctx, m.reg, "lstm")
    return ref.stack_forward("lstm", x, params, num_layers=2, bidirectional=True,
                             lengths=lengths, layer_options=opts)


def test_module_eval_to_torch_state_dict_and_onnx(tmp_path):
    torch = pytest.importorskip("torch")
    import fusedrnn
    m = fusedrnn.RegularisedGRU(4, 6, layer_norm=True, zoneout_h=0.3, seed=1)
    x = np.random.default_rng(1).standard_normal((5, 2, 4)).astype(np.float32)
    y, h = m(x)  # modules start in eval mode: zoneout's expectation
    t = m.to_torch()
    assert type(t).__name__ == "RegularisedGRU" and not t.training
    with torch.no_grad():
        np.testing.assert_allclose(y, t(torch.from_numpy(x))[0].numpy(), rtol=1e-6, atol=1e-6)
    m2 = fusedrnn.RegularisedGRU(4, 6, layer_norm=True, zoneout_h=0.3, seed=2)
    m2.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(m2(x)[0], y)
    assert "ln_weight_hh_l0" in m.state_dict()
    with pytest.raises(NotImplementedError, match="no standard ONNX node"):
        fusedrnn.onnx.export(m, tmp_path / "m.onnx")
    pytest.importorskip("onnx")
    only_dropouts = fusedrnn.RegularisedGRU(4, 6, recurrent_dropout=0.3)
    fusedrnn.onnx.export(only_dropouts, tmp_path / "d.onnx")  # inference: the plain GRU


def test_module_forget_bias_and_repr():
    import fusedrnn
    m = fusedrnn.RegularisedLSTM(3, 4, num_layers=2, forget_bias=1.0, cell_clip=(-2.0, 3.0))
    assert np.all(m.bias_ih_l1[4:8] == 1) and np.all(m.bias_hh_l0[4:8] == 0)
    assert "cell_clip=(-2.0, 3.0)" in repr(m)
    with pytest.raises(ValueError, match="forget_bias"):
        fusedrnn.regularised._RegularisedModule(
            "GRU", 3, 4, 1, True, False, 0.0, False, 0, None, Regularisation(), forget_bias=1.0)


def test_scaled_masks_are_the_keep_bits_on_any_thread_count():
    import fusedrnn
    from fusedrnn._loader import _C
    shape, p = (300, 700), 0.3  # past the parallel threshold
    before = fusedrnn.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            fusedrnn.set_num_threads(threads)
            out.append((_C.draw_bits(list(shape), p, 9, 77, 2, True),
                        _C.draw_scaled_mask(list(shape), p, 9, 77, 2, False),
                        _C.draw_bits(list(shape), p, 9, 77, 2, False)))
    finally:
        fusedrnn.set_num_threads(before)
    (keep, scaled, zoned), (keep2, scaled2, zoned2) = out
    assert np.array_equal(keep, keep2) and np.array_equal(scaled, scaled2)
    np.testing.assert_array_equal(scaled, keep.astype(np.float32) * np.float32(1 / 0.7))
    assert np.array_equal(zoned, 1 - keep) and 0.27 < zoned.mean() < 0.33
    with pytest.raises(ValueError, match="p < 1"):
        _C.draw_scaled_mask([3], 1.0, 0, 0, 0, False)


@pytest.mark.parametrize("zoneout", ["none", "inference"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_haste_weights_map_over(kind, zoneout):
    """from_haste + the kernels against the float64 reimplementation of Haste's equations
    (tests/test_reference_regularised.py), eval mode (Haste's inference)."""
    from test_reference_regularised import _haste_layer_norm_gru, _haste_layer_norm_lstm
    rng = np.random.default_rng(5)
    T, B, I, H = 6, 3, 4, 5
    G = 4 if kind == "lstm" else 3
    state = dict(kernel=rng.uniform(-.5, .5, (I, G * H)),
                 recurrent_kernel=rng.uniform(-.5, .5, (H, G * H)),
                 bias=rng.uniform(-.5, .5, G * H), gamma=rng.uniform(.6, 1.4, (2, G * H)))
    if kind == "lstm":
        state.update(gamma_h=rng.uniform(.6, 1.4, H), beta_h=rng.uniform(-.4, .4, H))
    else:
        state["recurrent_bias"] = rng.uniform(-.5, .5, G * H)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    p = 0.3 if zoneout == "inference" else 0.0
    reg = Regularisation(layer_norm=True, zoneout_h=p)
    params = fr.from_haste(kind, state)
    y, h_n, c_n, _ = fr.stack_forward(kind, x, params, reg=reg, h0=h0[None],
                                      c0=c0[None] if kind == "lstm" else None, training=False)
    if kind == "lstm":
        hs, _ = _haste_layer_norm_lstm(x, h0, c0, state["kernel"], state["recurrent_kernel"],
                                       state["bias"], state["gamma"], state["gamma_h"],
                                       state["beta_h"], p, None, False)
    else:
        hs = _haste_layer_norm_gru(x, h0, state["kernel"], state["recurrent_kernel"],
                                   state["bias"], state["recurrent_bias"], state["gamma"], p,
                                   None, False)
    np.testing.assert_allclose(y, hs[1:], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="missing"):
        fr.from_haste(kind, {"kernel": state["kernel"]})


@pytest.mark.parametrize("what", ["weight_hh_l0", "ln_weight_c_l0", "x"])
def test_in_place_change_before_backward_raises(what):
    """A training forward stamps what backward reads; a change in between raises instead of
    combining the old activations with the new values (as fusedrnn.functional)."""
    _, _, reg, params, x, h0, c0, _, _ = _setup("lstm", dict(layer_norm=True, zoneout_h=0.2),
                                                "one", np.float64)
    y, h_n, c_n, ctx = fr.stack_forward("lstm", x, params, reg=reg, h0=h0, c0=c0)
    fr.stack_backward(ctx, y)  # unchanged: fine, and repeatable
    (x if what == "x" else params[what])[..., 0] += 1.0
    with pytest.raises(RuntimeError, match="modified in place"):
        fr.stack_backward(ctx, y)
    y, h_n, c_n, ctx = fr.stack_forward("lstm", x, params, reg=reg, h0=h0, c0=c0,
                                        check_inplace=False)
    params["weight_hh_l0"][0, 0] += 1.0
    fr.stack_backward(ctx, y)  # not checked when asked not to


def test_mask_bits_follow_the_documented_generator():
    """draw_bits' integer test (top 53 bits >= ceil(p 2^53)) is dropout_keep's U >= p: checked
    against splitmix64 written out in Python, at p where the two forms could part (exact
    binary fractions, tiny and near-1 rates)."""
    from fusedrnn._loader import _C
    M = 2**64 - 1

    def splitmix64(z):
        z = (z + 0x9E3779B97F4A7C15) & M
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    seed, purpose, index, n = 12345, 0x4443, 3, 4000
    base = splitmix64(seed ^ purpose)
    stream = splitmix64(base ^ splitmix64((0xD1B54A32D192ED03 + index) & M))
    before = _C._testing.get_isa()
    try:
        for isa in _C._testing.supported_isas():  # the draws are compiled per instruction set
            _C._testing.set_isa(isa)
            for p in (0.0, 0.25, 0.5, 0.3, 1e-12, 1 - 2**-40, 1.0):
                want = np.array([float(splitmix64((stream + i) & M) >> 11) * 2.0**-53 >= p
                                 for i in range(n)])
                got = _C.draw_bits([n], p, seed, purpose, index, True).astype(bool)
                np.testing.assert_array_equal(got, want, err_msg=f"{isa} p={p}")
                if p < 1:
                    scaled = _C.draw_scaled_mask([n], p, seed, purpose, index, True)
                    np.testing.assert_array_equal(scaled, want / (1 - p), err_msg=f"{isa} p={p}")
    finally:
        _C._testing.set_isa(before)


@pytest.mark.parametrize("case", ["everything-lstm", "ln_zoneout_dropout-gru", "plain-gru_v1",
                                  "zoneout_h-rnn_tanh"])
def test_every_instruction_set(case):
    """The regularised loops are compiled per instruction set (cpu/kernels.inc): each path the
    machine has runs a few sweep cases (the sweep itself runs on the default path)."""
    from fusedrnn._loader import _C
    name, mode = case.split("-")
    opts = next(o for n, o, _ in VARIANTS if n == name)
    before = _C._testing.get_isa()
    try:
        for isa in _C._testing.supported_isas():
            _C._testing.set_isa(isa)
            for dt in (np.float64, np.float32):
                test_kernels_match_reference(name, opts, mode, "two_bidir_lengths", dt)
    finally:
        _C._testing.set_isa(before)
