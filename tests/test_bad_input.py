"""Bad input to every public entry point: a clear exception naming the argument, never a crash
or a silent wrong answer."""

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional as F

T, B, I, H = 4, 3, 5, 6


def arrays(dtype=np.float32, G=4, P=0, seed=0):
    rng = np.random.default_rng(seed)
    u = lambda *s: rng.uniform(-1, 1, s).astype(dtype)
    R = P or H
    return dict(x=u(T, B, I), w_ih=u(G * H, I), w_hh=u(G * H, R), b_ih=u(G * H), b_hh=u(G * H),
                h0=u(B, R), c0=u(B, H), w_hr=u(P, H) if P else None)


def lstm(**over):
    a = arrays()
    a.update(over)
    return F.lstm_forward(a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"],
                          w_hr=a["w_hr"], lengths=a.get("lengths"))


def gru(**over):
    a = arrays(G=3)
    a.update(over)
    return F.gru_forward(a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"],
                         lengths=a.get("lengths"))


def rnn(**over):
    a = arrays(G=1)
    a.update(over)
    return F.rnn_forward(a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"],
                         lengths=a.get("lengths"))


FORWARDS = {"lstm": (lstm, 4), "gru": (gru, 3), "rnn": (rnn, 1)}
f32 = lambda *s: np.zeros(s, np.float32)


@pytest.mark.parametrize("cell", FORWARDS)
@pytest.mark.parametrize("arg,value,match", [
    ("x", f32(T, B), r"x must be 3-D"),
    ("x", f32(T, B, I, 1), r"x must be 3-D"),
    ("x", f32(0, B, I), r"x must have shape \(T, B, input_size\) with T >= 1"),
    ("x", f32(T, B, 0), r"x must have shape \(T, B, input_size\) with T >= 1"),
    ("x", f32(T, B, I + 1), r"w_ih must have shape"),
    ("w_ih", f32(4 * H), r"w_ih must be 2-D"),
    ("w_ih", f32(12 * H, I + 2), r"w_ih must|w_hh must"),
    ("w_hh", f32(5, H), r"w_hh must have shape"),
    ("w_hh", f32(12 * H, H + 1), r"w_hh must have shape"),
    ("b_ih", f32(5), r"b_ih must have shape"),
    ("b_hh", f32(12 * H, 1), r"b_hh must have shape"),
    ("b_ih", None, r"b_ih and b_hh must be given together"),
    ("h0", f32(B + 1, H), r"h0 must have shape \(batch, hidden_size\) = \(3, 6\)"),
    ("h0", f32(1, B, H), r"h0 must have shape"),
    ("lengths", np.array([T, T]), r"lengths must have shape \(batch,\)"),
    ("lengths", np.array([T, 0, 1]), r"lengths must lie in \[1, T\] = \[1, 4\]"),
    ("lengths", np.array([T + 1, 1, 1]), r"lengths must lie in \[1, T\]"),
    ("lengths", np.array([-1, 1, 1]), r"lengths must lie in \[1, T\]"),
])
def test_value_errors_name_the_argument(cell, arg, value, match):
    fn, G = FORWARDS[cell]
    if isinstance(value, np.ndarray) and value.shape[:1] == (12 * H,):
        value = np.zeros((G * H,) + value.shape[1:], value.dtype)  # right rows, wrong rest
    with pytest.raises(ValueError, match=match):
        fn(**{arg: value})


def test_lstm_specific_value_errors():
    with pytest.raises(ValueError, match=r"c0 must have shape \(batch, hidden_size\)"):
        lstm(c0=f32(B, H + 1))
    with pytest.raises(ValueError, match=r"w_hr must have shape \(proj_size, hidden_size\)"):
        lstm(w_hr=f32(2, H + 1), w_hh=f32(4 * H, 2), h0=f32(B, 2))
    with pytest.raises(ValueError, match=r"w_hh must have shape \(G\*hidden_size, proj_size\)"):
        lstm(w_hr=f32(2, H))  # w_hh still (4H, H)
    with pytest.raises(ValueError, match=r"h0 must have shape \(batch, proj_size\)"):
        lstm(w_hr=f32(2, H), w_hh=f32(4 * H, 2))  # h0 still (B, H)


@pytest.mark.parametrize("cell", FORWARDS)
@pytest.mark.parametrize("arg", ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"])
def test_wrong_dtype_is_a_type_error(cell, arg):
    fn, G = FORWARDS[cell]
    a = arrays(G=G)
    if arg == "x":
        for bad in (a["x"].astype(np.int32), a["x"].astype(np.complex64)):
            with pytest.raises(TypeError, match=r"x must have dtype float32 or float64"):
                fn(x=bad)
        with pytest.raises(TypeError, match=r"x has dtype float16, and 16-bit storage \(float16, "
                                            r"bfloat16\) runs on CUDA devices only"):
            fn(x=a["x"].astype(np.float16))
    else:
        with pytest.raises(TypeError, match=rf"{arg} must have dtype float32 \(the dtype of x\), "
                                            r"got float64"):
            fn(**{arg: a[arg].astype(np.float64)})


def test_non_arrays_and_bad_lengths_types():
    a = arrays()
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray or an array with "
                                        r"__dlpack__ \(e.g. a torch tensor\), got list"):
        lstm(x=a["x"].tolist())
    with pytest.raises(TypeError, match=r"w_hh must be a numpy.ndarray"):
        lstm(w_hh="weights")
    with pytest.raises(TypeError, match=r"lengths must be an integer array, got float64"):
        lstm(lengths=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match=r"c0 must have dtype float32"):
        lstm(c0=a["c0"].astype(np.float64))
    # Plain Python integer lists are fine for lengths.
    y, *_ = lstm(lengths=[4, 1, 2])
    assert not y[1:, 1].any()


def test_wrong_cell_arguments():
    a = arrays(G=3)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        F.rnn_forward(a["x"], a["w_ih"][:H], a["w_hh"][:H], nonlinearity="sigmoid")
    *_, ctx = F.gru_forward(a["x"], a["w_ih"], a["w_hh"])
    with pytest.raises(ValueError, match=r"lstm_backward: ctx comes from a 'gru' forward"):
        F.lstm_backward(ctx, None)
    with pytest.raises(TypeError, match=r"gru_backward: ctx must be the context"):
        F.gru_backward({"not": "a context"}, None)


def test_backward_gradient_shapes_and_dtypes():
    y, h, c, ctx = lstm()
    with pytest.raises(ValueError, match=r"dy must have shape \(T, batch, output_size\) like y"):
        F.lstm_backward(ctx, np.zeros((T, B, H + 1), np.float32))
    with pytest.raises(ValueError, match=r"dh_n must have shape"):
        F.lstm_backward(ctx, None, np.zeros((B, H + 1), np.float32))
    with pytest.raises(ValueError, match=r"dc_n must have shape"):
        F.lstm_backward(ctx, None, None, np.zeros((B + 1, H), np.float32))
    with pytest.raises(TypeError, match=r"dy must have dtype float32"):
        F.lstm_backward(ctx, np.zeros((T, B, H)))
    with pytest.raises(TypeError, match=r"dh_n must be a numpy.ndarray"):
        F.lstm_backward(ctx, None, [[0.0] * H] * B)


@pytest.mark.parametrize("cell", FORWARDS)
def test_non_contiguous_inputs_work(cell):
    fn, G = FORWARDS[cell]
    a = arrays(G=G, dtype=np.float64)
    # Fortran-ordered, strided and transposed views of the same values.
    strided = dict(x=np.asfortranarray(a["x"]),
                   w_ih=np.repeat(a["w_ih"], 2, axis=1)[:, ::2],
                   w_hh=np.asfortranarray(a["w_hh"]),
                   h0=a["h0"].T.copy().T,
                   b_ih=np.repeat(a["b_ih"], 3)[::3], b_hh=a["b_hh"], c0=a["c0"])
    assert not strided["w_ih"].flags.c_contiguous and not strided["h0"].flags.c_contiguous
    if cell != "lstm":
        del strided["c0"]
    base = fn(**{k: a[k] for k in strided})
    out = fn(**strided)
    for u, v in zip(base, out):
        if isinstance(u, np.ndarray):
            np.testing.assert_array_equal(u, v)


def test_nan_passes_through():
    a = arrays(G=4)
    x = a["x"].copy()
    x[1, 0, 2] = np.nan
    y, h, c, ctx = lstm(x=x)
    assert np.isnan(y[1:, 0]).all(), "NaN propagates forward in its sequence"
    assert np.isfinite(y[:, 1:]).all() and np.isfinite(y[0]).all(), "other sequences untouched"
    g = F.lstm_backward(ctx, np.ones_like(y))
    assert np.isnan(g["weight_ih"]).any() and np.isfinite(g["x"][:, 1:]).all()
    # NaN weights: NaN out, no crash.
    y, *_ = rnn(w_hh=np.full((H, H), np.nan, np.float32))
    assert np.isnan(y[1:]).all()
    y, *_ = F.rnn_forward(np.full((2, 1, 1), np.nan), np.ones((1, 1)), np.ones((1, 1)),
                          nonlinearity="relu")
    assert np.isnan(y).all(), "relu keeps NaN as NaN"


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match=r"n must lie in \[1, 1024\]"):
        fusedrnn.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int"):
        fusedrnn.set_num_threads(1.5)


def test_config_and_version():
    c = fusedrnn.config()
    assert c["cuda"] in (True, False)
    for key in ("compiler", "blas", "blas_core", "num_threads", "simd_compiled", "simd_cpu"):
        assert c[key] not in ("", None)
    assert fusedrnn.__version__ == c["version"]


def stack_params(G=4, layers=2, D=2, dtype=np.float32):
    rng = np.random.default_rng(0)
    p = {}
    for l in range(layers):
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            p["weight_ih" + sfx] = rng.standard_normal(
                (G * H, I if l == 0 else D * H)).astype(dtype)
            p["weight_hh" + sfx] = rng.standard_normal((G * H, H)).astype(dtype)
            p["bias_ih" + sfx] = rng.standard_normal(G * H).astype(dtype)
            p["bias_hh" + sfx] = rng.standard_normal(G * H).astype(dtype)
    return p


def test_stack_forward_bad_input():
    x = np.zeros((T, B, I), np.float32)
    p = stack_params()
    kw = dict(num_layers=2, bidirectional=True)
    F.stack_forward("lstm", x, p, **kw)  # the valid call
    cases = [
        (ValueError, r"params is missing 'weight_hh_l1_reverse'",
         dict(params={k: v for k, v in p.items() if k != "weight_hh_l1_reverse"})),
        (ValueError, r"params has an unexpected key 'weight_ih_l2'",
         dict(params={**p, "weight_ih_l2": p["weight_ih_l1"]})),
        (ValueError, r"weight_ih_l1 must have shape .* = \(24, 12\), got \(24, 6\)",
         dict(params={**p, "weight_ih_l1": np.zeros((4 * H, H), np.float32)})),
        (TypeError, r"bias_hh_l0 must have dtype float32",
         dict(params={**p, "bias_hh_l0": p["bias_hh_l0"].astype(np.float64)})),
        (ValueError, r"h0 must have shape \(num_layers\*num_directions, batch, output_size\) = "
                     r"\(4, 3, 6\)", dict(h0=np.zeros((2, B, H), np.float32))),
        (ValueError, r"c0 is only defined for the LSTM", None),
        (ValueError, r"dropout must lie in \[0, 1\], got 1.5", dict(dropout=1.5)),
        (ValueError, r"num_layers must be >= 1", dict(num_layers=0)),
        (ValueError, r"mode must be one of", dict(mode="lstmx")),
        (ValueError, r"x must have at least one time step",
         dict(x=np.zeros((0, B, I), np.float32))),
        (ValueError, r"x must be 3-D with shape \(batch, T, input_size\)",
         dict(x=np.zeros((B, I), np.float32), batch_first=True)),
        (ValueError, r"lengths must lie in \[1, T\]", dict(lengths=[T, 0, 1])),
    ]
    for exc, match, over in cases:
        args = dict(mode="lstm", x=x, params=p, **kw)
        if over is None:  # c0 to a GRU
            args.update(mode="gru", params=stack_params(G=3),
                        c0=np.zeros((4, B, H), np.float32))
        else:
            args.update(over)
        mode, xx, pp = args.pop("mode"), args.pop("x"), args.pop("params")
        with pytest.raises(exc, match=match):
            F.stack_forward(mode, xx, pp, **args)


def test_stack_backward_bad_input():
    x = np.zeros((T, B, I), np.float32)
    p = stack_params()
    y, h, c, ctx = F.stack_forward("lstm", x, p, num_layers=2, bidirectional=True)
    with pytest.raises(TypeError, match="stack_backward: ctx must be the context"):
        F.stack_backward(None)
    with pytest.raises(ValueError, match=r"dy must have shape like y = \(4, 3, 12\)"):
        F.stack_backward(ctx, np.zeros((T, B, H), np.float32))
    with pytest.raises(ValueError, match=r"dc_n must have shape like c_n"):
        F.stack_backward(ctx, None, None, np.zeros((2, B, H), np.float32))
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    with pytest.raises(ValueError, match=r"grads is missing 'bias_ih_l0'"):
        F.stack_backward(ctx, None, grads={k: v for k, v in grads.items() if k != "bias_ih_l0"})
    with pytest.raises(ValueError, match=r"grads\['weight_hh_l0'\] must be C-contiguous"):
        F.stack_backward(ctx, None, grads={**grads, "weight_hh_l0": np.zeros((H, 4 * H),
                                                                             np.float32).T})
    with pytest.raises(TypeError, match=r"grads\['weight_ih_l0'\] must have dtype float32"):
        F.stack_backward(ctx, None, grads={**grads, "weight_ih_l0": grads["weight_ih_l0"] + 0.0j})
    # Inference gives no context.
    *_, none_ctx = F.stack_forward("lstm", x, p, num_layers=2, bidirectional=True,
                                   training=False)
    assert none_ctx is None
