"""Second-order gradients through fusedrnn.torch (issue 13 item 1): ``torch.autograd.
gradgradcheck`` (float64, finite differences of the gradient) on every cell and layout, and the
second-order results against torch.nn's on the same weights. Under ``create_graph=True`` the
adapter differentiates a recomputation in torch.nn's own ops with the call's dropout masks
(python/fusedrnn/torch.py, _StackFunction)."""

import pytest

torch = pytest.importorskip("torch")

import fusedrnn.torch as ft  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

LAYERS = [
    ("LSTM", dict()),
    ("LSTM", dict(proj_size=2)),
    ("GRU", dict()),
    ("RNN", dict(nonlinearity="tanh")),
    ("RNN", dict(nonlinearity="relu")),
]


def pair(kind, **kw):
    torch.manual_seed(1)
    theirs = getattr(torch.nn, kind)(2, 3, **kw).double()
    ours = getattr(ft, kind)(2, 3, **kw).double()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def as_function(m, lengths=None, batch_first=False):
    names = [n for n, _ in m.named_parameters()]

    def f(x, h0, *params):
        out = torch.func.functional_call(m, dict(zip(names, params)), (
            x if lengths is None else pack_padded_sequence(x, lengths, batch_first=batch_first,
                                                           enforce_sorted=False), h0))
        y, state = out
        if lengths is not None:
            y = pad_packed_sequence(y, batch_first=batch_first)[0]
        h = state[0] if isinstance(state, tuple) else state
        return y, h
    return f, [p.detach().clone().requires_grad_() for p in m.parameters()]


@pytest.mark.parametrize("kind,kw", LAYERS, ids=[f"{k}-{kw}" for k, kw in LAYERS])
@pytest.mark.parametrize("layout", ["plain", "2-layer-bidir-batch-first", "packed"])
def test_gradgradcheck(kind, kw, layout):
    extra = dict(num_layers=2, bidirectional=True, batch_first=True) \
        if layout.startswith("2-layer") else {}
    _, ours = pair(kind, **kw, **extra)
    D, L = (2, 2) if extra else (1, 1)
    R = kw.get("proj_size") or 3
    bf = bool(extra)
    x = torch.randn((2, 4, 2) if bf else (4, 2, 2), dtype=torch.double, requires_grad=True)
    h0 = torch.randn(L * D, 2, R, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([4, 2]) if layout == "packed" else None
    f, params = as_function(ours, lengths, bf)
    if kind == "LSTM":  # zero states (the states' path: the next test, against torch.nn)
        fn, args = (lambda x, *p: f(x, None, *p)), (x, *params)
    else:
        fn, args = f, (x, h0, *params)
    assert torch.autograd.gradgradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_gradgradcheck(kind):
    torch.manual_seed(2)
    cell = getattr(ft, kind)(2, 3).double()
    names = [n for n, _ in cell.named_parameters()]
    x = torch.randn(2, 2, dtype=torch.double, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]

    def fn(x, *p):
        out = torch.func.functional_call(cell, dict(zip(names, p)), (x,))
        return out[0] if isinstance(out, tuple) else out
    assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_second_order_matches_torch_with_states_and_lengths():
    theirs, ours = pair("LSTM", num_layers=2, bidirectional=True)
    x0 = torch.randn(5, 3, 2, dtype=torch.double)
    h0 = torch.randn(4, 3, 3, dtype=torch.double)
    c0 = torch.randn(4, 3, 3, dtype=torch.double)
    got = []
    for m in (theirs, ours):
        m.zero_grad()
        x = x0.clone().requires_grad_()
        packed = pack_padded_sequence(x, torch.tensor([5, 1, 3]), enforce_sorted=False)
        y, (h, c) = m(packed, (h0, c0))
        loss = pad_packed_sequence(y)[0].pow(2).sum() + c.sum()
        d, = torch.autograd.grad(loss, x, create_graph=True)
        (loss + d.pow(2).sum()).backward()
        got.append([x.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_dropout_masks_of_the_call_are_used():
    """With inter-layer dropout, the recomputation applies the forward's own masks: its first-
    order gradient equals the kernels' (create_graph=False) for the same call."""
    torch.manual_seed(3)
    m = ft.GRU(2, 3, num_layers=3, dropout=0.5).double().train()
    x = torch.randn(6, 2, 2, dtype=torch.double, requires_grad=True)
    y, _ = m(x)
    plain = torch.autograd.grad(y.pow(2).sum(), [x, *m.parameters()], retain_graph=True)
    graph = torch.autograd.grad(y.pow(2).sum(), [x, *m.parameters()], create_graph=True)
    assert any(g.requires_grad for g in graph)
    for a, b in zip(plain, graph):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)
