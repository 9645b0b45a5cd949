"""fusedrnn.torch under torch's program transforms (issue 13 item 5, 7): the custom operators
pass ``torch.library.opcheck``; ``torch.compile(fullgraph=True)`` and ``torch.export`` trace
through them with dynamic T and B; ``torch.func`` transforms and ONNX export run torch.nn's own
ops on the module's parameters (python/fusedrnn/torch.py ``_use_torch_nn_ops``), so they
behave as for torch.nn, checked side by side."""

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedrnn.torch as ft  # noqa: E402
from fusedrnn import _torch_ops  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

SEED0 = torch.zeros((), dtype=torch.int64)

# torch's compiler and exporters warn about their own internals (torch.jit.script_method, the
# TorchScript exporter, pytree's LeafSpec) with torch.nn models as with ours; the project turns
# warnings into errors, so this module lets torch's deprecation notices through.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


def op_args(mode, L, bidir, proj, lengths, states, training, requires_grad):
    torch.manual_seed(0)
    G = _torch_ops.GATES[mode]
    H, I, T, B = 4, 3, 5, 3
    R = 2 if proj else H
    D = 2 if bidir else 1
    weights = []
    for name in _torch_ops.weight_names(mode, L, bidir, True, proj):
        inp = I if "_l0" in name else D * R
        shape = {"weight_ih": (G * H, inp), "weight_hh": (G * H, R), "bias_ih": (G * H,),
                 "bias_hh": (G * H,), "weight_hr": (R, H)}[name.split("_l")[0]]
        weights.append(torch.randn(*shape, dtype=torch.float64).requires_grad_(requires_grad))
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=requires_grad)
    h0 = c0 = None
    if states:
        h0 = torch.randn(L * D, B, R, dtype=torch.float64, requires_grad=requires_grad)
        if mode == "lstm":
            c0 = torch.randn(L * D, B, H, dtype=torch.float64, requires_grad=requires_grad)
    lens = torch.tensor([5, 2, 4]) if lengths else None
    return (x, h0, c0, weights, lens, SEED0, mode, L, bidir, False, 0.0, True, True, proj,
            training)


OP_CASES = [
    ("lstm", 2, True, False, False, True),
    ("lstm", 1, False, True, True, True),
    ("gru", 2, False, False, True, False),
    ("rnn_relu", 1, True, False, False, True),
]


@pytest.mark.parametrize("case", OP_CASES, ids=[f"{c[0]}-L{c[1]}-bi{int(c[2])}-proj{int(c[3])}"
                                                 f"-len{int(c[4])}-hx{int(c[5])}"
                                                 for c in OP_CASES])
@pytest.mark.parametrize("training", [True, False])
def test_forward_op_passes_opcheck(case, training):
    args = op_args(*case, training=training, requires_grad=True)
    result = torch.library.opcheck(torch.ops.fusedrnn.stack_forward.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_backward_op_passes_opcheck():
    x, h0, c0, weights, lens, seed, *config, _ = op_args(*OP_CASES[0], training=True,
                                                          requires_grad=False)
    y, h_n, c_n, reserve = torch.ops.fusedrnn.stack_forward(x, h0, c0, weights, lens, seed,
                                                            *config, True)
    mode, L, bidir, bf, p, ra, bias, proj = config
    args = (x, h0, c0, weights, lens, reserve, torch.randn_like(y), torch.randn_like(h_n),
            torch.randn_like(c_n), mode, L, bidir, bf, p, ra, bias, proj)
    result = torch.library.opcheck(torch.ops.fusedrnn.stack_backward.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


class TextModel(torch.nn.Module):
    """Embedding -> 2-layer LSTM -> Linear (the model the issue times compiled)."""

    def __init__(self, nn, vocab=50, emb=16, hidden=24):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, num_layers=2)
        self.out = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        return self.out(y)


def test_compile_fullgraph_dynamic_matches_eager():
    torch.manual_seed(0)
    model = TextModel(ft)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for T, B in ((7, 3), (4, 5)):
        tokens = torch.randint(0, 50, (T, B))
        outs = []
        for m in (model, compiled):
            model.zero_grad()
            y = m(tokens)
            y.pow(2).mean().backward()
            outs.append([y.detach()] + [p.grad.clone() for p in model.parameters()])
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_export_with_dynamic_shapes_keeps_the_operator():
    torch.manual_seed(0)
    model = TextModel(ft).eval()
    tokens = torch.randint(0, 50, (7, 3))
    T, B = torch.export.Dim("T", min=2), torch.export.Dim("B", min=2)
    ep = torch.export.export(model, (tokens,), dynamic_shapes={"tokens": {0: T, 1: B}})
    assert "fusedrnn.stack_forward" in str(ep.graph)
    other = torch.randint(0, 50, (5, 4))
    torch.testing.assert_close(ep.module()(other), model(other))


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("impl", ["torch.nn", "fusedrnn.torch"])
def test_packed_sequences_under_compile_as_torch(impl):
    """PackedSequence: compiled with graph breaks, as torch.nn (dynamo refuses to trace
    torch's own pack_padded_sequence, so fullgraph=True raises for both)."""
    nn = torch.nn if impl == "torch.nn" else ft
    torch.manual_seed(0)
    m = nn.GRU(3, 4, num_layers=2)
    x, lens = torch.randn(6, 3, 3), torch.tensor([6, 2, 4])

    def f(x, lens):
        y, h = m(pack_padded_sequence(x, lens, enforce_sorted=False))
        return pad_packed_sequence(y, total_length=x.shape[0])[0], h
    def g(x, lens):  # a function dynamo has not seen yet
        y, h = m(pack_padded_sequence(x, lens, enforce_sorted=False))
        return pad_packed_sequence(y, total_length=x.shape[0])[0], h

    got, want = torch.compile(f)(x, lens), f(x, lens)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with pytest.raises(Exception, match="pack_padded_sequence"):
        torch.compile(g, fullgraph=True)(x, lens)


def test_func_grad_and_jacrev_match_autograd():
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(3, 4, proj_size=2).double()
    ours = ft.LSTM(3, 4, proj_size=2).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(p, m):
        return torch.func.functional_call(m, p, (x,))[0].pow(2).sum()
    for got, want in ((torch.func.grad(loss)(params, ours), torch.func.grad(loss)(params, theirs)),
                      ):
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    y, _ = ours(x)
    y.pow(2).sum().backward()
    for k, p in ours.named_parameters():  # and the kernels' own autograd agrees
        torch.testing.assert_close(p.grad, torch.func.grad(loss)(params, ours)[k], rtol=1e-10,
                                   atol=1e-12)
    jac = torch.func.jacrev(lambda xx: ours(xx)[0].sum(0))(x)
    assert jac.shape == (2, 2, 5, 2, 3)


@pytest.mark.parametrize("impl", ["torch.nn", "fusedrnn.torch"])
def test_vmap_raises_as_torch(impl):
    nn = torch.nn if impl == "torch.nn" else ft
    m = nn.GRU(3, 4).eval()
    with pytest.raises(RuntimeError, match="Batching rule not implemented for aten::gru"):
        torch.func.vmap(lambda xx: m(xx)[0])(torch.randn(2, 5, 2, 3))


# ---- ONNX export -------------------------------------------------------------------------------

ONNX_CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True), (5, 2, 3)),
    ("LSTM", dict(batch_first=True), (2, 5, 3)),
    ("GRU", dict(num_layers=2), (5, 2, 3)),
    ("RNN", dict(nonlinearity="relu"), (5, 2, 3)),
    ("LSTMCell", dict(), (2, 3)),
    ("GRUCell", dict(), (2, 3)),
    ("RNNCell", dict(), (2, 3)),
]


@pytest.mark.filterwarnings("ignore")  # the TorchScript exporter's tracer warns as it goes
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("case", ONNX_CASES, ids=[f"{c[0]}-{c[1]}" for c in ONNX_CASES])
def test_onnx_export_writes_what_torch_writes(case, dynamo, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    kind, kw, shape = case
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(3, 4, **kw).eval()
    ours = getattr(ft, kind)(3, 4, **kw).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(*shape)
    ops = {}
    for name, m in (("torch.nn", theirs), ("fusedrnn.torch", ours)):
        path = str(tmp_path / f"{name}.onnx")
        torch.onnx.export(m, (x,), path, dynamo=dynamo)
        model = onnx.load(path)
        onnx.checker.check_model(model)
        ops[name] = sorted({n.op_type for n in model.graph.node})
        sess = ort.InferenceSession(path)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = ours(x)
        want = want[0] if isinstance(want, tuple) else want
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    assert ops["fusedrnn.torch"] == ops["torch.nn"]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("impl", ["torch.nn", "fusedrnn.torch"])
def test_onnx_export_of_a_projection_fails_as_torch(impl):
    """torch's TorchScript exporter refuses LSTMs with projections (its dynamo exporter writes
    a model ONNX Runtime rejects); ours, exporting torch.nn's ops, does the same."""
    pytest.importorskip("onnx")
    m = (torch.nn if impl == "torch.nn" else ft).LSTM(3, 4, proj_size=2)
    with pytest.raises(Exception, match="LSTMs with projections"):
        torch.onnx.export(m, (torch.randn(5, 2, 3),), io.BytesIO(), dynamo=False)


def test_onnx_export_of_the_original_gru_says_what_to_do():
    m = ft.GRU(3, 4, reset_after=False)
    with pytest.raises(RuntimeError, match="fusedrnn.onnx.export"):
        torch.onnx.export(m, (torch.randn(5, 2, 3),), io.BytesIO(), dynamo=False)
