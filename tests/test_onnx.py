"""fusedrnn.onnx: export to ONNX (checked, run by ONNX Runtime against the module's own
forward), load back (identical parameters and forward), load of torch.onnx.export's models, and
the refusals of what either side cannot represent."""

import io
import itertools
import subprocess
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import fusedrnn  # noqa: E402
from fusedrnn import onnx as fonnx  # noqa: E402

T, B, I, H = 5, 5, 3, 4
# unsorted, a tie (3, 3), a length-1 sequence and a full one
LENGTHS = np.array([3, 1, T, 3, 2], np.int32)
KINDS = ("lstm", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu")
TOL32 = 1e-5
WORST = {}  # ORT vs fusedrnn, float32: output -> (error, case)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    if WORST:  # shown with pytest -s
        print("\nONNX Runtime vs fusedrnn (float32), worst relative errors: " + ", ".join(
            f"{k} {e:.2e} ({case})" for k, (e, case) in sorted(WORST.items())))


def make_module(kind, layers=1, bidirectional=False, batch_first=False, bias=True,
                dtype=np.float32, seed=0, input_size=I, hidden_size=H):
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
              bias=bias, dtype=dtype, seed=seed)
    if kind == "lstm":
        return fusedrnn.LSTM(input_size, hidden_size, **kw)
    if kind.startswith("gru"):
        return fusedrnn.GRU(input_size, hidden_size, reset_after=kind == "gru", **kw)
    return fusedrnn.RNN(input_size, hidden_size, nonlinearity=kind[4:], **kw)


def inputs(m, seed=1):
    """x, hx (h0 or (h0, c0)) for module m."""
    rng = np.random.default_rng(seed)
    s = m.spec
    x = rng.standard_normal((B, T, I) if s.batch_first else (T, B, I)).astype(m.dtype)
    shape = (s.num_layers * s.num_directions, B, s.hidden_size)
    h0 = rng.standard_normal(shape).astype(m.dtype)
    hx = (h0, rng.standard_normal(shape).astype(m.dtype)) if s.is_lstm else h0
    return x, hx


def module_outputs(m, x, hx=None, lengths=None):
    y, state = m(x, hx, lengths=lengths)
    return [y, *state] if m.spec.is_lstm else [y, state]


def feeds(m, x, hx=None, lengths=None):
    f = {"x": x}
    if lengths is not None:
        f["sequence_lens"] = lengths
    if hx is not None:
        f["h0"] = hx[0] if m.spec.is_lstm else hx
        if m.spec.is_lstm:
            f["c0"] = hx[1]
    return f


def run_ort(model, f):
    so = ort.SessionOptions()
    so.log_severity_level = 4  # failures raise; ORT need not also log them
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, f)))


def rel_err(got, want):
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def assert_same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]), k


CONFIGS = [pytest.param(*c, id=f"{c[0]}-L{c[1]}-{'bi' if c[2] else 'uni'}-"
                         f"{'bf' if c[3] else 'tm'}-{'bias' if c[4] else 'nobias'}")
           for c in itertools.product(KINDS, (1, 2), (False, True), (False, True), (True, False))]


@pytest.mark.parametrize("kind,layers,bidir,batch_first,bias", CONFIGS)
def test_ort_matches_module_and_round_trip(tmp_path, kind, layers, bidir, batch_first, bias):
    m = make_module(kind, layers, bidir, batch_first, bias, seed=layers + 2 * bidir)
    x, hx = inputs(m)
    case = f"{kind} L{layers} D{1 + bidir} bf{int(batch_first)} bias{int(bias)}"
    path = tmp_path / "m.onnx"
    fonnx.export(m, path, sequence_lens=True, initial_states=True)
    full = onnx.load(str(path))
    onnx.checker.check_model(full)
    plain = fonnx.to_model(m)
    names = ["y", "h_n", "c_n"] if m.spec.is_lstm else ["y", "h_n"]
    assert [o.name for o in full.graph.output] == names
    assert [i.name for i in full.graph.input] == ["x", "sequence_lens", "h0"] + (
        ["c0"] if m.spec.is_lstm else [])
    for model, args in ((plain, (x,)), (full, (x, hx, LENGTHS))):
        want = module_outputs(m, *args)
        got = run_ort(model, feeds(m, *args))
        for name, w in zip(names, want):
            assert got[name].shape == w.shape, name
            err = rel_err(got[name], w)
            if err > WORST.get(name, (-1,))[0]:
                WORST[name] = (err, case + (" lengths+states" if len(args) > 1 else ""))
            assert err <= TOL32, (name, err)
        if len(args) > 1:  # padding past each length is zero in both
            y = got["y"]
            for b, n in enumerate(LENGTHS):
                assert not np.any((y[b, n:] if batch_first else y[n:, b]))
    back = fonnx.load(path)
    assert type(back) is type(m) and back.spec == m.spec
    assert_same_params(back, m)
    for a, b in zip(module_outputs(back, x, hx, LENGTHS), module_outputs(m, x, hx, LENGTHS)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_float64(kind):
    """Round trip in float64 always; ONNX Runtime only where it has double kernels."""
    m = make_module(kind, 2, True, False, True, dtype=np.float64)
    x, hx = inputs(m)
    model = fonnx.to_model(m, sequence_lens=True, initial_states=True)
    assert next(t for t in model.graph.initializer if t.name == "W0").data_type == \
        onnx.TensorProto.DOUBLE
    back = fonnx.load(model.SerializeToString())
    assert back.dtype == np.float64
    assert_same_params(back, m)
    want = module_outputs(m, x, hx, LENGTHS)
    for a, b in zip(module_outputs(back, x, hx, LENGTHS), want):
        assert np.array_equal(a, b)
    try:
        got = run_ort(model, feeds(m, x, hx, LENGTHS))
    except Exception as e:  # noqa: BLE001 - ORT's error types are not public
        text = str(e)
        if "double" in text or "NOT_IMPLEMENTED" in text:
            why = text.split("Status Message: ")[-1].split(" : ")[-1].strip()
            pytest.skip(f"ONNX Runtime {ort.__version__} has no float64 {kind} kernel on the CPU "
                        f"({why})")
        raise
    for g, w in zip(got.values(), want):
        assert rel_err(g, w) <= 1e-12


@pytest.mark.parametrize("opset", [fonnx.MIN_OPSET, 14, 21])
def test_opsets(opset):
    m = make_module("lstm", 2, True, True, True)
    x, hx = inputs(m)
    model = fonnx.to_model(m, opset=opset, sequence_lens=True, initial_states=True)
    assert model.opset_import[0].version == opset
    got = run_ort(model, feeds(m, x, hx, LENGTHS))
    for g, w in zip(got.values(), module_outputs(m, x, hx, LENGTHS)):
        assert rel_err(g, w) <= TOL32


def test_fixed_sizes_and_bad_arguments(tmp_path):
    m = make_module("gru", 1, False, True, True)
    model = fonnx.to_model(m, seq_len=T, batch=B)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [B, T, I]
    for bad in (fonnx.MIN_OPSET - 1, onnx.defs.onnx_opset_version() + 1, "17", True):
        with pytest.raises(ValueError, match="opset"):
            fonnx.to_model(m, opset=bad)
    with pytest.raises(TypeError, match="LSTM, GRU or RNN"):
        fonnx.export(fusedrnn.LSTMCell(I, H), tmp_path / "cell.onnx")
    params = m.state_dict()
    with pytest.raises(ValueError, match=r"missing \['bias_hh_l0'\]"):
        fonnx.build_model("gru", {k: v for k, v in params.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match="has shape"):
        fonnx.build_model("lstm", params)


def test_proj_size_raises(tmp_path):
    m = fusedrnn.LSTM(I, H, proj_size=2)
    with pytest.raises(ValueError, match="proj_size.*no ONNX equivalent"):
        fonnx.export(m, tmp_path / "p.onnx")
    with pytest.raises(ValueError, match="proj_size.*no ONNX equivalent"):
        fonnx.build_model("lstm", m.state_dict())
    assert not (tmp_path / "p.onnx").exists()


def test_import_fusedrnn_does_not_import_onnx():
    code = ("import sys, fusedrnn; fusedrnn.onnx.export; "
            "assert 'onnx' not in sys.modules, 'onnx imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- load: models from torch.onnx.export ---------------------------------------------------------

TORCH_CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(batch_first=True, bias=False)),
    ("GRU", dict(num_layers=2, batch_first=True)),
    ("GRU", dict(bidirectional=True)),
    ("RNN", dict(num_layers=2, nonlinearity="relu", bias=False, batch_first=True)),
    ("RNN", dict(bidirectional=True)),
]


@pytest.mark.parametrize("cls,kw", TORCH_CASES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={v}" for k, v in v.items()))
def test_load_torch_export(cls, kw):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = getattr(torch.nn, cls)(I, H, **kw).eval()
    bf = kw.get("batch_first", False)
    x = torch.randn((B, T, I) if bf else (T, B, I))
    f = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(tm, (x,), f, dynamo=False, input_names=["x"])
    except Exception as e:  # noqa: BLE001 - whatever the legacy exporter raises
        pytest.skip(f"torch.onnx.export(dynamo=False) fails with torch {torch.__version__}: "
                    f"{type(e).__name__}: {e}")
    m = fonnx.load(f.getvalue())
    assert m.spec == fusedrnn.from_torch(tm).spec
    L, D = tm.num_layers, 1 + tm.bidirectional
    h0 = torch.randn(L * D, B, H)
    hx = (h0, torch.randn(L * D, B, H)) if cls == "LSTM" else h0
    with torch.no_grad():
        want_y, want_state = tm(x, hx)
    np_hx = tuple(t.numpy() for t in hx) if cls == "LSTM" else hx.numpy()
    got = module_outputs(m, x.numpy(), np_hx)
    want = [want_y, *want_state] if cls == "LSTM" else [want_y, want_state]
    for g, w in zip(got, want):
        assert rel_err(g, w.numpy()) <= TOL32


# -- load: refusals ------------------------------------------------------------------------------

def exported(kind="lstm", layers=1, bidirectional=False):
    return fonnx.to_model(make_module(kind, layers, bidirectional))


def rnn_node(model, index=0):
    return [n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")][index]


def set_attr(node, name, value):
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute(name, value))


@pytest.mark.parametrize("kind,name,value", [
    ("lstm", "clip", 3.0),
    ("gru", "activation_alpha", [1.0, 1.0]),
    ("lstm", "activations", ["Sigmoid", "Tanh", "Relu"]),
    ("gru", "activations", ["HardSigmoid", "Tanh"]),
    ("rnn_tanh", "activations", ["Sigmoid"]),
    ("lstm", "input_forget", 1),
    ("gru", "layout", 1),
    ("lstm", "hidden_size", H + 1),
])
def test_load_rejects_attributes(kind, name, value):
    model = exported(kind)
    set_attr(rnn_node(model), name, value)
    with pytest.raises(ValueError, match=f"'{name}'"):
        fonnx.load(model)


def test_load_reverse_direction():
    model = exported("gru")
    set_attr(rnn_node(model), "direction", "reverse")
    with pytest.raises(NotImplementedError, match="reverse"):
        fonnx.load(model)


def test_load_rnn_directions_must_share_activation():
    model = exported("rnn_tanh", bidirectional=True)
    set_attr(rnn_node(model), "activations", ["Tanh", "Relu"])
    with pytest.raises(ValueError, match="'activations'"):
        fonnx.load(model)
    set_attr(rnn_node(model), "activations", ["relu", "relu"])  # case-insensitive
    assert fonnx.load(model).nonlinearity == "relu"


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_load_peepholes(value):
    model = exported("lstm")
    node = rnn_node(model)
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        np.full((1, 3 * H), value, np.float32), "P"))
    while len(node.input) < 7:
        node.input.append("")
    node.input.append("P")
    if value:
        with pytest.raises(ValueError, match="P"):
            fonnx.load(model)
    else:
        assert_same_params(fonnx.load(model), make_module("lstm"))


def test_load_rejects_differing_layers():
    h, nh = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(0)
    w = lambda name, *shape: nh.from_array(rng.standard_normal(shape).astype(np.float32), name)
    nodes = [h.make_node("GRU", ["x", "W0", "R0"], ["Y0"], hidden_size=H, linear_before_reset=1),
             h.make_node("Squeeze", ["Y0", "ax"], ["x1"]),
             h.make_node("GRU", ["x1", "W1", "R1"], ["y"], hidden_size=H - 1,
                         linear_before_reset=1)]
    inits = [w("W0", 1, 3 * H, I), w("R0", 1, 3 * H, H), w("W1", 1, 3 * (H - 1), H),
             w("R1", 1, 3 * (H - 1), H - 1), nh.from_array(np.array([1], np.int64), "ax")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", 1, ["T", "B", I])],
                         [h.make_tensor_value_info("y", 1, ["T", 1, "B", H - 1])], inits)
    model = h.make_model(graph)
    with pytest.raises(ValueError, match="'hidden_size'"):
        fonnx.load(model)
    # the same sizes load, a Squeeze of axis 1 being valid glue for one direction
    set_attr(model.graph.node[2], "hidden_size", H)
    inits[2:4] = [w("W1", 1, 3 * H, H), w("R1", 1, 3 * H, H)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    m = fonnx.load(model)
    assert (m.num_layers, m.hidden_size, m.bias) == (2, H, False)


def test_load_rejects_wrong_glue_and_computed_weights():
    model = exported("lstm", 2, True)
    transpose = next(n for n in model.graph.node if n.name == "directions_last0")
    set_attr(transpose, "perm", [0, 1, 2, 3])  # directions concatenated over time: wrong
    with pytest.raises(ValueError, match="previous layer's output"):
        fonnx.load(model)
    model = exported("gru")
    node = rnn_node(model)
    model.graph.node.insert(0, onnx.helper.make_node("Identity", ["W0"], ["W0_copy"]))
    node.input[1] = "W0_copy"
    with pytest.raises(ValueError, match="initializer or a Constant"):
        fonnx.load(model)


def test_load_rejects_mixed_and_missing_nodes():
    model = exported("lstm")
    with pytest.raises(ValueError, match="no LSTM, GRU or RNN"):
        fonnx.load(onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])))
    gru = exported("gru")
    model.graph.node.extend([rnn_node(gru)])
    with pytest.raises(ValueError, match="mixes"):
        fonnx.load(model)
