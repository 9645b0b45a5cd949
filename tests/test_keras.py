"""fusedrnn.from_keras: Keras 3 LSTM / GRU / SimpleRNN (and Bidirectional, stacks) weights to
fusedrnn modules.

Two independent checks:

* against Keras' cell equations written out here in NumPy from the Keras-layout weights
  (kernel (I, G*H), recurrent_kernel (H, G*H), Keras' gate orders and biases): needs no Keras;
* against Keras itself (torch backend) where it is installed; those tests skip without it.
"""

import os

import numpy as np
import pytest

import fusedrnn
from fusedrnn import from_keras

# --------------------------------------------------------------------------------------------
# Keras' equations (keras/src/layers/rnn/{lstm,gru,simple_rnn}.py), batch-major, written from
# the Keras documentation's cell definitions; nothing here uses fusedrnn's code.


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def keras_lstm(x, kernel, recurrent_kernel, bias=None, state=None):
    """x (B, T, I) -> outputs (B, T, H), [h, c]. Gates i, f, c, o; one bias."""
    B, T, _ = x.shape
    H = recurrent_kernel.shape[0]
    h, c = state if state is not None else (np.zeros((B, H), x.dtype), np.zeros((B, H), x.dtype))
    ys = []
    for t in range(T):
        z = x[:, t] @ kernel + h @ recurrent_kernel
        if bias is not None:
            z = z + bias
        i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        ys.append(h)
    return np.stack(ys, 1), [h, c]


def keras_gru(x, kernel, recurrent_kernel, bias=None, state=None, *, reset_after=True):
    """x (B, T, I) -> outputs, [h]. Gates z, r, h. reset_after=True: bias (2, 3H) = [input,
    recurrent], r multiplies (h @ U_h + b_rh); False: bias (3H,), r multiplies h before U_h."""
    B, T, _ = x.shape
    H = recurrent_kernel.shape[0]
    h = state[0] if state is not None else np.zeros((B, H), x.dtype)
    b_in = b_rec = None
    if bias is not None:
        b_in, b_rec = (bias[0], bias[1]) if reset_after else (bias, None)
    ys = []
    for t in range(T):
        xk = x[:, t] @ kernel
        if b_in is not None:
            xk = xk + b_in
        x_z, x_r, x_h = xk[:, :H], xk[:, H:2 * H], xk[:, 2 * H:]
        if reset_after:
            hk = h @ recurrent_kernel
            if b_rec is not None:
                hk = hk + b_rec
            z = _sigmoid(x_z + hk[:, :H])
            r = _sigmoid(x_r + hk[:, H:2 * H])
            hh = np.tanh(x_h + r * hk[:, 2 * H:])
        else:
            z = _sigmoid(x_z + h @ recurrent_kernel[:, :H])
            r = _sigmoid(x_r + h @ recurrent_kernel[:, H:2 * H])
            hh = np.tanh(x_h + (r * h) @ recurrent_kernel[:, 2 * H:])
        h = z * h + (1 - z) * hh
        ys.append(h)
    return np.stack(ys, 1), [h]


def keras_simple_rnn(x, kernel, recurrent_kernel, bias=None, state=None, *, activation="tanh"):
    B, T, _ = x.shape
    H = recurrent_kernel.shape[0]
    h = state[0] if state is not None else np.zeros((B, H), x.dtype)
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0))
    ys = []
    for t in range(T):
        a = x[:, t] @ kernel + h @ recurrent_kernel
        if bias is not None:
            a = a + bias
        h = act(a)
        ys.append(h)
    return np.stack(ys, 1), [h]


# case name -> (Keras class name, config, equations, gates)
CASES = {
    "lstm": ("LSTM", {}, keras_lstm, 4),
    "gru": ("GRU", {"reset_after": True}, keras_gru, 3),
    "gru_v1": ("GRU", {"reset_after": False},
               lambda *a, **k: keras_gru(*a, reset_after=False, **k), 3),
    "rnn_tanh": ("SimpleRNN", {"activation": "tanh"}, keras_simple_rnn, 1),
    "rnn_relu": ("SimpleRNN", {"activation": "relu"},
                 lambda *a, **k: keras_simple_rnn(*a, activation="relu", **k), 1),
}


def keras_weights(rng, case, I, H, use_bias=True, dtype=np.float64):
    """Random weights in Keras' layout (scale keeps the gates away from saturation)."""
    _, config, _, G = CASES[case]
    w = [rng.normal(0, 0.4, (I, G * H)), rng.normal(0, 0.4, (H, G * H))]
    if use_bias:
        two = case == "gru" and config.get("reset_after", True)
        w.append(rng.normal(0, 0.4, (2, G * H) if two else (G * H,)))
    return [a.astype(dtype) for a in w]


def run_equations(case, x, weights, state=None):
    eq = CASES[case][2]
    bias = weights[2] if len(weights) == 3 else None
    return eq(x, weights[0], weights[1], bias, state)


def run_bidirectional(case, x, weights, states=None):
    """Keras' Bidirectional: the backward layer reads x reversed (go_backwards) and its
    outputs are flipped back; concat merge."""
    half = len(weights) // 2
    s_f = s_b = None
    if states is not None:
        n = len(states) // 2
        s_f, s_b = states[:n], states[n:]
    y_f, st_f = run_equations(case, x, weights[:half], s_f)
    y_b, st_b = run_equations(case, x[:, ::-1], weights[half:], s_b)
    return np.concatenate([y_f, y_b[:, ::-1]], -1), st_f + st_b


def rel_err(got, want):
    """max |got - want|, relative to max |want| where that exceeds 1."""
    err = np.max(np.abs(np.asarray(got, np.float64) - want))
    return float(err / max(1.0, np.max(np.abs(want))))


TOL = {np.float64: 1e-12, np.float32: 1e-5}

# --------------------------------------------------------------------------------------------
# against the equations (no Keras needed)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_single_layer_matches_equations(case, use_bias, dtype):
    rng = np.random.default_rng(7)
    B, T, I, H = 3, 6, 5, 4
    kind, config, _, _ = CASES[case]
    w = keras_weights(rng, case, I, H, use_bias, dtype)
    x = rng.normal(size=(B, T, I))
    m = from_keras(w, kind, {**config, "use_bias": use_bias})
    assert m.batch_first and m.bias == use_bias and m.dtype == dtype
    assert isinstance(m, {"LSTM": fusedrnn.LSTM, "GRU": fusedrnn.GRU,
                          "SimpleRNN": fusedrnn.RNN}[kind])
    want_y, want_states = run_equations(case, x, [a.astype(np.float64) for a in w])
    y, state = m(x.astype(dtype))
    h_n, c_n = state if case == "lstm" else (state, None)
    assert rel_err(y, want_y) < TOL[dtype]
    assert rel_err(h_n[-1], want_states[0]) < TOL[dtype]
    if c_n is not None:
        assert rel_err(c_n[-1], want_states[1]) < TOL[dtype]


@pytest.mark.parametrize("case", list(CASES))
def test_bidirectional_matches_equations(case):
    rng = np.random.default_rng(11)
    B, T, I, H = 2, 5, 3, 4
    kind, config, _, _ = CASES[case]
    w = keras_weights(rng, case, I, H) + keras_weights(rng, case, I, H)
    x = rng.normal(size=(B, T, I))
    n_states = 2 if case == "lstm" else 1
    states = [rng.normal(size=(B, H)) for _ in range(2 * n_states)]
    m = from_keras(w, "Bidirectional", {"layer": {"class_name": kind, "config": config}})
    assert m.bidirectional and m.dtype == np.float64
    want_y, want_states = run_bidirectional(case, x, w, states)
    if case == "lstm":   # Keras' [h_f, c_f, h_b, c_b]
        hx = (np.stack([states[0], states[2]]), np.stack([states[1], states[3]]))
        y, (h_n, c_n) = m(x, hx)
        np.testing.assert_allclose(c_n, np.stack([want_states[1], want_states[3]]), atol=1e-12)
        np.testing.assert_allclose(h_n, np.stack([want_states[0], want_states[2]]), atol=1e-12)
    else:
        y, h_n = m(x, np.stack(states))
        np.testing.assert_allclose(h_n, np.stack(want_states), atol=1e-12)
    np.testing.assert_allclose(y, want_y, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_stack_matches_equations(bidirectional):
    rng = np.random.default_rng(3)
    B, T, I, H, D = 2, 4, 3, 5, 2 if bidirectional else 1
    case = "gru_v1"
    per_layer = [keras_weights(rng, case, I if k < D else D * H, H) for k in range(2 * D)]
    layers = [per_layer[0] + per_layer[1], per_layer[2] + per_layer[3]] if bidirectional \
        else per_layer
    x = rng.normal(size=(B, T, I))
    want = x
    for w in layers:
        want, _ = (run_bidirectional if bidirectional else run_equations)(case, want, w)
    config = {"reset_after": False}
    if bidirectional:
        m = from_keras(layers, "Bidirectional", {"layer": {"class_name": "GRU", "config": config}})
    else:
        m = from_keras(layers, "gru", config)
    assert m.num_layers == 2 and m.bidirectional == bidirectional and not m.reset_after
    y, _ = m(x)
    np.testing.assert_allclose(y, want, atol=1e-12)


def test_lstm_initial_state_and_return_sequences_false():
    rng = np.random.default_rng(5)
    B, T, I, H = 3, 4, 2, 3
    w = keras_weights(rng, "lstm", I, H)
    x = rng.normal(size=(B, T, I))
    h0, c0 = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    want_y, (h, c) = keras_lstm(x, *w, state=(h0, c0))
    y, (h_n, c_n) = from_keras(w, "LSTM")(x, (h0[None], c0[None]))
    np.testing.assert_allclose(y, want_y, atol=1e-12)
    np.testing.assert_allclose(h_n[-1], want_y[:, -1], atol=1e-12)  # return_sequences=False
    np.testing.assert_allclose(c_n[-1], c, atol=1e-12)


# --------------------------------------------------------------------------------------------
# the conversion itself: layouts, options, errors (no Keras needed)


class LSTM:
    """Duck-typed stand-in for a built keras.layers.LSTM (the class name is what counts)."""

    def __init__(self, weights, **config):
        self.name = "fake_lstm"
        units = {"units": weights[1].shape[0]} if weights else {}
        self._weights, self._config = weights, {**units, **config}

    def get_weights(self):
        return list(self._weights)

    def get_config(self):
        return dict(self._config)


class Bidirectional:
    def __init__(self, layer, backward_layer, merge_mode="concat"):
        self.name = "fake_bidirectional"
        self.forward_layer, self.backward_layer, self.merge_mode = layer, backward_layer, \
            merge_mode

    def get_weights(self):
        return self.forward_layer.get_weights() + self.backward_layer.get_weights()


def test_parameters_in_pytorch_layout():
    rng = np.random.default_rng(0)
    I, H = 3, 2
    w = keras_weights(rng, "gru", I, H)
    sd = from_keras(w, "GRU").state_dict()
    z, r, n = (slice(k * H, (k + 1) * H) for k in range(3))
    np.testing.assert_array_equal(sd["weight_ih_l0"], np.concatenate([w[0][:, r], w[0][:, z],
                                                                      w[0][:, n]], 1).T)
    np.testing.assert_array_equal(sd["weight_hh_l0"][:H], w[1][:, r].T)
    np.testing.assert_array_equal(sd["bias_hh_l0"][H:2 * H], w[2][1, z])
    lw = keras_weights(rng, "lstm", I, H)
    sd = from_keras(lw, "lstm").state_dict()
    np.testing.assert_array_equal(sd["weight_ih_l0"], lw[0].T)
    np.testing.assert_array_equal(sd["bias_ih_l0"], lw[2])
    np.testing.assert_array_equal(sd["bias_hh_l0"], 0)
    v1 = keras_weights(rng, "gru_v1", I, H)
    sd = from_keras(v1, "GRU", {"reset_after": False}).state_dict()
    np.testing.assert_array_equal(sd["bias_hh_l0"], 0)


def test_duck_typed_layer_objects():
    rng = np.random.default_rng(1)
    B, T, I, H = 2, 3, 4, 3
    w = keras_weights(rng, "lstm", I, H)
    x = rng.normal(size=(B, T, I))
    m = from_keras(LSTM(w, return_sequences=True))
    np.testing.assert_allclose(m(x)[0], keras_lstm(x, *w)[0], atol=1e-12)
    wb = keras_weights(rng, "lstm", I, H)
    bi = Bidirectional(LSTM(w), LSTM(wb, go_backwards=True))
    np.testing.assert_allclose(from_keras(bi)(x)[0], run_bidirectional("lstm", x, w + wb)[0],
                               atol=1e-12)
    # a stack of two layer objects
    w2 = keras_weights(rng, "lstm", H, H)
    m = from_keras([LSTM(w, return_sequences=True), LSTM(w2)])
    np.testing.assert_allclose(m(x)[0], keras_lstm(keras_lstm(x, *w)[0], *w2)[0], atol=1e-12)


def test_batch_first_and_dtype_options():
    rng = np.random.default_rng(2)
    w = keras_weights(rng, "rnn_tanh", 3, 2, dtype=np.float32)
    assert from_keras(w, "SimpleRNN").dtype == np.float32
    assert from_keras(w, "SimpleRNN", dtype=np.float64).dtype == np.float64
    assert not from_keras(w, "SimpleRNN", batch_first=False).batch_first
    assert not from_keras(w, "simple_rnn", {"time_major": True}).batch_first
    assert from_keras(w, "simple_rnn", {"time_major": True}, batch_first=True).batch_first
    assert from_keras(w, "SimpleRNN", {"activation": "relu"}).nonlinearity == "relu"
    assert from_keras(w, "SimpleRNN").training is False
    # the reset_after form is read off the GRU bias when the config leaves it out
    assert not from_keras(keras_weights(rng, "gru_v1", 3, 2), "GRU").reset_after
    assert from_keras(keras_weights(rng, "gru", 3, 2), "GRU").reset_after
    # Keras' generic RNN of a cell, serialised
    m = from_keras(w, "RNN", {"cell": {"class_name": "SimpleRNNCell",
                                       "config": {"activation": "relu"}}})
    assert m.nonlinearity == "relu"


@pytest.mark.parametrize("kind, config, match", [
    ("LSTM", {"recurrent_activation": "hard_sigmoid"}, "recurrent_activation='hard_sigmoid'"),
    ("LSTM", {"activation": "relu"}, "activation='relu'"),
    ("GRU", {"activation": "sigmoid"}, "activation='sigmoid'"),
    ("GRU", {"recurrent_activation": {"module": "keras.activations", "class_name": "function",
                                      "config": "hard_sigmoid"}}, "'hard_sigmoid'"),
    ("SimpleRNN", {"activation": "elu"}, "activation='elu'"),
    ("SimpleRNN", {"activation": None}, "activation='linear'"),
    ("LSTM", {"go_backwards": True}, "go_backwards=True"),
    ("LSTM", {"units": 7}, "units=7"),
])
def test_unsupported_configs_raise(kind, config, match):
    rng = np.random.default_rng(0)
    case = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn_tanh"}[kind]
    with pytest.raises(ValueError, match=match):
        from_keras(keras_weights(rng, case, 3, 2), kind, config)


def test_bad_weights_and_arguments_raise():
    rng = np.random.default_rng(0)
    w = keras_weights(rng, "lstm", 3, 2)
    with pytest.raises(ValueError, match="3 weight arrays"):
        from_keras(w[:2], "LSTM", {"use_bias": True})
    with pytest.raises(ValueError, match="recurrent_kernel must have shape"):
        from_keras(w, "GRU")
    with pytest.raises(ValueError, match="kernel must have shape"):
        from_keras([w[0][:, :4], w[1], w[2]], "LSTM")
    with pytest.raises(ValueError, match=r"bias must have shape \(2, 6\)"):
        from_keras(keras_weights(rng, "gru_v1", 3, 2), "GRU", {"reset_after": True})
    with pytest.raises(TypeError, match="need kind"):
        from_keras(w)
    with pytest.raises(TypeError, match="expected a Keras LSTM"):
        from_keras(w, "ConvLSTM2D")
    with pytest.raises(TypeError, match="carries its own"):
        from_keras(LSTM(w), "LSTM")
    with pytest.raises(TypeError, match="expected a Keras layer"):
        from_keras(None)
    with pytest.raises(ValueError, match="no weights yet"):
        from_keras(LSTM([], units=2))
    with pytest.raises(ValueError, match="merge_mode='sum'"):
        from_keras(Bidirectional(LSTM(w), LSTM(w, go_backwards=True), merge_mode="sum"))
    with pytest.raises(ValueError, match="merge_mode=None"):
        from_keras(w + w, "Bidirectional", {"layer": {"class_name": "LSTM"}, "merge_mode": None})
    with pytest.raises(ValueError, match="go_backwards=False"):
        from_keras(Bidirectional(LSTM(w, go_backwards=True), LSTM(w)))
    with pytest.raises(ValueError, match="differ"):
        from_keras(Bidirectional(LSTM(w), LSTM(keras_weights(rng, "lstm", 3, 3),
                                               go_backwards=True)))
    with pytest.raises(ValueError, match="even number"):
        from_keras(w + w[:2], "Bidirectional", {"layer": {"class_name": "LSTM"}})
    # stacks
    w2 = keras_weights(rng, "lstm", 5, 2)
    with pytest.raises(ValueError, match="does not chain"):
        from_keras([w, w2], "LSTM")
    with pytest.raises(ValueError, match="return_sequences=False below the top"):
        from_keras([LSTM(w, return_sequences=False), LSTM(keras_weights(rng, "lstm", 2, 2))])
    with pytest.raises(ValueError, match="share kind"):
        from_keras([LSTM(w, return_sequences=True), LSTM(keras_weights(rng, "lstm", 2, 3))])


# --------------------------------------------------------------------------------------------
# against Keras itself (torch backend); skipped where Keras is not installed


# Keras 3's Variable.numpy() (layer.get_weights()) warns under NumPy 2 with the torch backend;
# the project's pytest settings turn warnings into errors.
keras_warnings = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:  # not installed, or its backend missing (an ImportError from inside keras)
        import keras
    except ImportError as e:
        pytest.skip(f"keras is not importable: {e}")
    return keras


def _keras_layer(keras, case, H, use_bias=True, **kw):
    kind, config, _, _ = CASES[case]
    cls = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU,
           "SimpleRNN": keras.layers.SimpleRNN}[kind]
    return cls(H, use_bias=use_bias, **config, **kw)


def _randomize(layer, rng):
    """Random weights (Keras initialises biases to zero, which would hide bias mistakes)."""
    layer.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32)
                       for w in layer.get_weights()])


def _np(keras, outs):
    return [keras.ops.convert_to_numpy(o) for o in outs]


def _check(got, want, tol=1e-5):
    assert rel_err(got, want) < tol, rel_err(got, want)


@keras_warnings
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_against_keras(keras, case, use_bias):
    rng = np.random.default_rng(21)
    B, T, I, H = 3, 7, 5, 4
    layer = _keras_layer(keras, case, H, use_bias, return_sequences=True, return_state=True)
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    layer(x)
    _randomize(layer, rng)
    out = _np(keras, layer(x))
    m = from_keras(layer)
    y, state = m(x)
    _check(y, out[0])
    if case == "lstm":
        _check(state[0][-1], out[1])
        _check(state[1][-1], out[2])
    else:
        _check(state[-1], out[1])
    # the same from the arrays and the config
    m2 = from_keras(layer.get_weights(), type(layer).__name__, layer.get_config())
    np.testing.assert_array_equal(m2(x)[0], y)


@keras_warnings
@pytest.mark.parametrize("case", ["lstm", "gru", "gru_v1", "rnn_relu"])
def test_bidirectional_against_keras(keras, case):
    rng = np.random.default_rng(22)
    B, T, I, H = 2, 6, 3, 4
    bi = keras.layers.Bidirectional(_keras_layer(keras, case, H, return_sequences=True,
                                                 return_state=True))
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    bi(x)
    _randomize(bi, rng)
    n = 2 if case == "lstm" else 1
    states = [rng.normal(size=(B, H)).astype(np.float32) for _ in range(2 * n)]
    out = _np(keras, bi(x, initial_state=states))
    m = from_keras(bi)
    if case == "lstm":
        y, (h_n, c_n) = m(x, (np.stack(states[0::2]), np.stack(states[1::2])))
        _check(h_n, np.stack([out[1], out[3]]))
        _check(c_n, np.stack([out[2], out[4]]))
    else:
        y, h_n = m(x, np.stack(states))
        _check(h_n, np.stack(out[1:]))
    _check(y, out[0])
    m2 = from_keras(bi.get_weights(), "Bidirectional", bi.get_config())
    np.testing.assert_array_equal(m2(x, (np.stack(states[0::2]), np.stack(states[1::2])))[0]
                                  if case == "lstm" else m2(x, np.stack(states))[0], y)


@keras_warnings
def test_bidirectional_mask_is_lengths(keras):
    rng = np.random.default_rng(23)
    B, T, I, H = 3, 6, 2, 3
    bi = keras.layers.Bidirectional(keras.layers.GRU(H, return_sequences=True))
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    bi(x)
    _randomize(bi, rng)
    lengths = np.array([6, 2, 4])
    mask = np.arange(T)[None] < lengths[:, None]
    want = _np(keras, [bi(x, mask=mask)])[0]
    y, _ = from_keras(bi)(x, lengths=lengths)
    _check(y, want)


@keras_warnings
def test_stack_and_return_sequences_false_against_keras(keras):
    rng = np.random.default_rng(24)
    B, T, I, H = 2, 5, 3, 4
    layers = [keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True)),
              keras.layers.Bidirectional(keras.layers.LSTM(H))]
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    out = x
    for layer in layers:
        out = layer(out)
        _randomize(layer, rng)
    out = x
    for layer in layers:
        out = _np(keras, [layer(out)])[0]
    m = from_keras(layers)
    assert m.num_layers == 2 and m.bidirectional
    _, (h_n, _) = m(x)
    _check(np.concatenate([h_n[-2], h_n[-1]], -1), out)


@keras_warnings
def test_generic_rnn_and_go_backwards_against_keras(keras):
    rng = np.random.default_rng(25)
    B, T, I, H = 2, 5, 3, 4
    x = rng.normal(size=(B, T, I)).astype(np.float32)
    rnn = keras.layers.RNN(keras.layers.GRUCell(H, reset_after=False), return_sequences=True)
    rnn(x)
    _randomize(rnn, rng)
    m = from_keras(rnn)
    assert not m.reset_after
    _check(m(x)[0], _np(keras, [rnn(x)])[0])
    back = keras.layers.LSTM(H, go_backwards=True, return_sequences=True)
    back(x)
    _randomize(back, rng)
    with pytest.raises(ValueError, match="go_backwards=True"):
        from_keras(back)
    # what the message advises: the forward conversion on the time-reversed input
    m = from_keras(back.get_weights(), "LSTM", {**back.get_config(), "go_backwards": False})
    _check(m(np.ascontiguousarray(x[:, ::-1]))[0], _np(keras, [back(x)])[0])


@keras_warnings
def test_unsupported_keras_layers_raise(keras):
    x = np.zeros((1, 2, 3), np.float32)
    for layer, match in [(keras.layers.LSTM(2, recurrent_activation="hard_sigmoid"),
                          "recurrent_activation='hard_sigmoid'"),
                         (keras.layers.GRU(2, activation="relu"), "activation='relu'"),
                         (keras.layers.Bidirectional(keras.layers.LSTM(2), merge_mode="ave"),
                          "merge_mode='ave'")]:
        layer(x)
        with pytest.raises(ValueError, match=match):
            from_keras(layer)
    with pytest.raises(ValueError, match="no weights yet"):
        from_keras(keras.layers.LSTM(2))
    with pytest.raises(TypeError, match="Dense"):
        from_keras(keras.layers.Dense(2))
