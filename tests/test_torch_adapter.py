"""fusedrnn.torch (the PyTorch adapter) against torch.nn: forward, every gradient, gradcheck,
packed sequences, unbatched input, dropout, a swapped-in training run and bad input.

Parity error of a tensor = max |ours - torch| / max |torch| (same state_dict, same inputs).
Bounds:
* float64: 1e-10 (both sides are float64 computations of the same formulas that differ only in
  summation order; observed ~1e-15).
* float32: 2e-5. Both sides round in float32 (u = 6e-8) with different GEMM blocking and gate
  fusion; along the longest chain here (3 layers x 5 steps x 2 directions, dot products of up
  to I+2H = 13 terms, weight gradients summed over T*B = 20 rows) differences of a few hundred
  ulps of the array's scale are what two correct float32 implementations produce. To show the
  bound is not hiding an error of ours, the float32 configurations also run torch in float64 on
  the same (upcast) weights: the summary prints our float32 error and torch's own float32 error
  against that float64 result side by side, and the test asserts ours is at most 4x torch's
  (plus a floor of 16 ulps).
"""

import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedrnn  # noqa: E402
import fusedrnn.torch as ft  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

T, B, I, H = 5, 4, 3, 5
LENGTHS = [3, 5, 1, 4]  # unsorted, with a length-1 sequence and a full-length one
KINDS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
BOUND = {"float32": 2e-5, "float64": 1e-10}
EPS32 = float(np.finfo(np.float32).eps)

# worst errors: (dtype, "outputs"|"gradients", "vs torch"|"ours vs f64"|"torch vs f64")
#   -> (err, where)
WORST = {}
COUNT = {}


class _Summary:
    def pytest_terminal_summary(self, terminalreporter):
        if not WORST:
            return
        tr = terminalreporter
        tr.section("fusedrnn.torch vs torch.nn (parity sweep)")
        for dt in DTYPES:
            if dt not in COUNT:
                continue
            tr.write_line(f"{dt}: {COUNT[dt]} configurations (bound {BOUND[dt]:.0e} of each "
                          f"tensor's max |value|)")
            for kind in ("outputs", "gradients"):
                for what in ("vs torch", "ours vs f64", "torch vs f64"):
                    if (dt, kind, what) in WORST:
                        err, where = WORST[(dt, kind, what)]
                        tr.write_line(f"  {kind:9s} {what:12s}: worst {err:.3e} ({where})")


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("fusedrnn-torch-adapter-summary"):
        pm.register(_Summary(), "fusedrnn-torch-adapter-summary")
    yield


def record(dt, kind, what, err, where):
    cur = WORST.get((dt, kind, what))
    if cur is None or err > cur[0]:
        WORST[(dt, kind, what)] = (err, where)


def rel(a, b):
    a = a.detach().double()
    b = b.detach().double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / max(scale, 1e-300)


# --------------------------------------------------------------------------------------------
# helpers


def make_pair(kind, num_layers=1, bidirectional=False, batch_first=False, dtype=torch.float64,
              **extra):
    """(torch.nn module, fusedrnn.torch module) with the same weights (torch's init)."""
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
              dtype=dtype, **extra)
    if kind.startswith("rnn"):
        kw["nonlinearity"] = kind[4:]
        ref, ours = torch.nn.RNN(I, H, **kw), ft.RNN(I, H, **kw)
    elif kind.startswith("lstm"):
        if kind == "lstm_proj":
            kw["proj_size"] = 3
        ref, ours = torch.nn.LSTM(I, H, **kw), ft.LSTM(I, H, **kw)
    else:
        ref, ours = torch.nn.GRU(I, H, **kw), ft.GRU(I, H, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def state_shapes(m, batch=B):
    d = 2 if m.bidirectional else 1
    r = m.proj_size if getattr(m, "proj_size", 0) else m.hidden_size
    return (m.num_layers * d, batch, r), (m.num_layers * d, batch, m.hidden_size)


def run(m, x, h0, c0, coef, packed, lengths):
    """Forward, loss = sum of random-weighted outputs, backward. Returns (outputs, grads)."""
    inp = x
    if packed:
        inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=m.batch_first,
                                   enforce_sorted=False)
    is_lstm = isinstance(m, (torch.nn.LSTM, ft.LSTM))
    hx = None if h0 is None else ((h0, c0) if is_lstm else h0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "LSTM with projections is not supported..."
        out, hid = m(inp, hx)
    h_n, c_n = hid if is_lstm else (hid, None)
    outs = {}
    if packed:
        assert isinstance(out, PackedSequence)
        outs["y"] = out.data
        outs["batch_sizes"] = out.batch_sizes
        outs["sorted_indices"] = out.sorted_indices
        outs["unsorted_indices"] = out.unsorted_indices
    else:
        outs["y"] = out
    outs["h_n"] = h_n
    loss = (outs["y"] * coef["y"][: outs["y"].numel()].view_as(outs["y"])).sum()
    loss = loss + (h_n * coef["h"].view_as(h_n)).sum()
    if c_n is not None:
        outs["c_n"] = c_n
        loss = loss + (c_n * coef["c"].view_as(c_n)).sum()
    loss.backward()
    grads = {"x": x.grad}
    if h0 is not None:
        grads["h0"] = h0.grad
    if c0 is not None:
        grads["c0"] = c0.grad
    grads.update({n: p.grad for n, p in m.named_parameters()})
    return outs, grads


def make_inputs(m, dtype, with_hx, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if m.batch_first else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    hs, cs = state_shapes(m)
    h0 = torch.randn(hs, generator=g, dtype=torch.float64) * 0.5 if with_hx else None
    is_lstm = isinstance(m, (torch.nn.LSTM, ft.LSTM))
    c0 = torch.randn(cs, generator=g, dtype=torch.float64) * 0.5 if with_hx and is_lstm else None
    d = 2 if m.bidirectional else 1
    coef = {"y": torch.randn(T * B * d * hs[2], generator=g, dtype=torch.float64),
            "h": torch.randn(hs, generator=g, dtype=torch.float64),
            "c": torch.randn(cs, generator=g, dtype=torch.float64)}
    return x, h0, c0, coef


def leaves(x, h0, c0, coef, dtype):
    f = lambda t: None if t is None else t.to(dtype).clone().requires_grad_()
    return f(x), f(h0), f(c0), {k: v.to(dtype) for k, v in coef.items()}


# --------------------------------------------------------------------------------------------
# parity sweep


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["hx0", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_parity_with_torch(kind, layers, bidir, batch_first, with_hx, packed, dt):
    dtype = DTYPES[dt]
    seed = zlib.crc32(repr((kind, layers, bidir, batch_first, with_hx, packed)).encode())
    torch.manual_seed(seed)
    ref, ours = make_pair(kind, layers, bidir, batch_first, dtype)
    raw = make_inputs(ref, dtype, with_hx, seed)
    r_out, r_grad = run(ref, *leaves(*raw, dtype), packed, LENGTHS)
    o_out, o_grad = run(ours, *leaves(*raw, dtype), packed, LENGTHS)
    assert r_out.keys() == o_out.keys() and r_grad.keys() == o_grad.keys()
    for k in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        if k in r_out:
            assert torch.equal(r_out[k], o_out[k]), k
    where = f"{kind} L={layers} {'bi' if bidir else 'uni'} bf={batch_first} hx={with_hx} " \
            f"packed={packed}"
    COUNT[dt] = COUNT.get(dt, 0) + 1

    exact = None
    if dt == "float32":  # torch in float64 on the upcast weights: the float32 error scale
        ref64 = make_pair(kind, layers, bidir, batch_first, torch.float64)[0]
        ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
        exact = run(ref64, *leaves(*raw, torch.float64), packed, LENGTHS)

    for kind_, theirs, mine, ex in (("outputs", r_out, o_out, exact and exact[0]),
                                    ("gradients", r_grad, o_grad, exact and exact[1])):
        for k in theirs:
            if k in ("batch_sizes", "sorted_indices", "unsorted_indices"):
                continue
            err = rel(mine[k], theirs[k])
            record(dt, kind_, "vs torch", err, f"{k} in {where}")
            assert err <= BOUND[dt], f"{k}: {err:.3e} > {BOUND[dt]:.0e} ({where})"
            if ex is not None:
                e_ours, e_torch = rel(mine[k], ex[k]), rel(theirs[k], ex[k])
                record(dt, kind_, "ours vs f64", e_ours, f"{k} in {where}")
                record(dt, kind_, "torch vs f64", e_torch, f"{k} in {where}")
                assert e_ours <= 4 * e_torch + 16 * EPS32, (k, e_ours, e_torch, where)


# --------------------------------------------------------------------------------------------
# gradcheck (float64)


def gradcheck_module(m, x, hx=None, lengths=None, seed=None):
    """gradcheck over x, the states and every parameter of m (functional_call)."""
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    is_lstm = isinstance(m, ft.LSTM)
    states = [] if hx is None else ([*hx] if is_lstm else [hx])
    states = [s.detach().clone().requires_grad_() for s in states]
    x = x.detach().clone().requires_grad_()
    n_states = len(states)

    def f(x, *rest):
        st, ps = rest[:n_states], rest[n_states:]
        inp = x
        if lengths is not None:
            inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=m.batch_first,
                                       enforce_sorted=False)
        h = None if not st else (tuple(st) if is_lstm else st[0])
        if seed is not None:
            torch.manual_seed(seed)
        out, hid = torch.func.functional_call(m, dict(zip(names, ps)), (inp, h))
        if isinstance(out, PackedSequence):
            out = out.data
        return (out, *hid) if is_lstm else (out, hid)

    assert torch.autograd.gradcheck(f, (x, *states, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


GC_T, GC_B, GC_I, GC_H = 4, 3, 2, 3
GC_LENGTHS = [2, 4, 1]


@pytest.mark.parametrize("case", [
    dict(cls="LSTM", num_layers=2, bidirectional=True),
    dict(cls="LSTM", num_layers=2, bidirectional=True, proj_size=2, packed=True),
    dict(cls="LSTM", num_layers=1, batch_first=True, packed=True, hx=False),
    dict(cls="GRU", num_layers=2, bidirectional=True, packed=True),
    dict(cls="GRU", num_layers=2, bidirectional=True, batch_first=True),
    dict(cls="GRU", num_layers=2, reset_after=False, bidirectional=True, packed=True),
    dict(cls="RNN", num_layers=2, bidirectional=True, packed=True),
    dict(cls="RNN", num_layers=2, bidirectional=True, nonlinearity="relu"),
    dict(cls="LSTM", num_layers=3, dropout=0.4, bidirectional=True, seed=7),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gradcheck_modules(case):
    case = dict(case)
    cls = getattr(ft, case.pop("cls"))
    packed = case.pop("packed", False)
    with_hx = case.pop("hx", True)
    seed = case.pop("seed", None)
    torch.manual_seed(0)
    m = cls(GC_I, GC_H, dtype=torch.float64, **case).train()
    shape = (GC_B, GC_T, GC_I) if m.batch_first else (GC_T, GC_B, GC_I)
    x = torch.randn(shape, dtype=torch.float64)
    hx = None
    if with_hx:
        hs, cs = state_shapes(m, GC_B)
        hx = (torch.randn(hs, dtype=torch.float64), torch.randn(cs, dtype=torch.float64)) \
            if cls is ft.LSTM else torch.randn(hs, dtype=torch.float64)
    gradcheck_module(m, x, hx, GC_LENGTHS if packed else None, seed)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_v1"])
@pytest.mark.parametrize("batched", [True, False])
def test_gradcheck_cells(cell, batched):
    torch.manual_seed(0)
    if cell.startswith("rnn"):
        m = ft.RNNCell(GC_I, GC_H, nonlinearity=cell[4:], dtype=torch.float64)
    elif cell == "lstm":
        m = ft.LSTMCell(GC_I, GC_H, dtype=torch.float64)
    else:
        m = ft.GRUCell(GC_I, GC_H, dtype=torch.float64, reset_after=cell == "gru")
    lead = (GC_B,) if batched else ()
    x = torch.randn(*lead, GC_I, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(*lead, GC_H, dtype=torch.float64, requires_grad=True)
              for _ in range(2 if cell == "lstm" else 1)]
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *rest):
        st, ps = rest[:len(states)], rest[len(states):]
        h = tuple(st) if cell == "lstm" else st[0]
        return torch.func.functional_call(m, dict(zip(names, ps)), (x, h))

    assert torch.autograd.gradcheck(f, (x, *states, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# cells vs torch, unbatched input


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
def test_cells_match_torch(cell, batched, with_hx):
    torch.manual_seed(3)
    if cell.startswith("rnn"):
        ref = torch.nn.RNNCell(I, H, nonlinearity=cell[4:], dtype=torch.float64)
        ours = ft.RNNCell(I, H, nonlinearity=cell[4:], dtype=torch.float64)
    else:
        ref = getattr(torch.nn, cell.upper() + "Cell")(I, H, dtype=torch.float64)
        ours = getattr(ft, cell.upper() + "Cell")(I, H, dtype=torch.float64)
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in ours.named_parameters()]
    ours.load_state_dict(ref.state_dict())
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=torch.float64)
    st = [torch.randn(*lead, H, dtype=torch.float64) for _ in range(2 if cell == "lstm" else 1)]
    results = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        ss = [s.clone().requires_grad_() for s in st]
        hx = (tuple(ss) if cell == "lstm" else ss[0]) if with_hx else None
        out = m(xx, hx)
        outs = list(out) if cell == "lstm" else [out]
        sum((o * (k + 1.5)).sum() for k, o in enumerate(outs)).backward()
        results.append((outs, xx.grad, [s.grad for s in ss],
                        [p.grad for p in m.parameters()]))
    (ro, rx, rs, rp), (oo, ox, os_, op) = results
    for a, b in zip(oo, ro):
        assert a.shape == b.shape and rel(a, b) <= 1e-12
    assert rel(ox, rx) <= 1e-12
    if with_hx:
        for a, b in zip(os_, rs):
            assert rel(a, b) <= 1e-12
    for a, b in zip(op, rp):
        assert rel(a, b) <= 1e-12


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "lstm_proj", "gru"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_unbatched_input_matches_torch(kind, batch_first, with_hx):
    torch.manual_seed(5)
    ref, ours = make_pair(kind, 2, True, batch_first, torch.float64)
    x = torch.randn(T, I, dtype=torch.float64)
    hs, cs = state_shapes(ref, 1)
    hx = None
    if with_hx:
        h0 = torch.randn(hs[0], hs[2], dtype=torch.float64)
        hx = (h0, torch.randn(cs[0], cs[2], dtype=torch.float64)) if "lstm" in kind else h0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r_out, r_h = ref(x, hx)
    o_out, o_h = ours(x, hx)
    assert o_out.shape == r_out.shape == (T, 2 * hs[2])
    assert rel(o_out, r_out) <= 1e-12
    for a, b in zip(o_h if "lstm" in kind else [o_h], r_h if "lstm" in kind else [r_h]):
        assert a.shape == b.shape and a.dim() == 2 and rel(a, b) <= 1e-12


# --------------------------------------------------------------------------------------------
# construction, state_dict, dropout


@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"])
def test_same_init_and_state_dict_both_ways(kind):
    kw = dict(num_layers=2, bidirectional=True, bias=True)
    if kind.startswith("rnn"):
        mk = lambda ns: ns.RNN(I, H, nonlinearity=kind[4:], **kw)
    elif kind.startswith("lstm"):
        mk = lambda ns: ns.LSTM(I, H, proj_size=3 if kind == "lstm_proj" else 0, **kw)
    else:
        mk = lambda ns: ns.GRU(I, H, **kw)
    torch.manual_seed(11)
    ref = mk(torch.nn)
    torch.manual_seed(11)
    ours = mk(ft)
    assert isinstance(ours, torch.nn.Module)
    rs, os_ = ref.state_dict(), ours.state_dict()
    assert list(rs) == list(os_)
    for k in rs:
        assert rs[k].shape == os_[k].shape and torch.equal(rs[k], os_[k]), k
        assert isinstance(getattr(ours, k), torch.nn.Parameter)
    bound = 1 / H ** 0.5
    assert all(p.abs().max() <= bound for p in ours.parameters())
    # load both ways
    torch.manual_seed(12)
    ref2, ours2 = mk(torch.nn), mk(ft)
    ours2.load_state_dict(ref.state_dict())
    ref2.load_state_dict(ours.state_dict())
    for k in rs:
        assert torch.equal(ours2.state_dict()[k], rs[k])
        assert torch.equal(ref2.state_dict()[k], rs[k])
    assert repr(ours).replace("fusedrnn.torch.", "") == repr(ref)
    assert len(ours.all_weights) == len(ref.all_weights)
    ours.flatten_parameters()  # no-op, exists for drop-in use


@pytest.mark.parametrize("kind", ["rnn_relu", "lstm_proj", "gru"])
def test_no_bias_and_double_conversion(kind):
    torch.manual_seed(1)
    ref, ours = make_pair(kind, 2, True, False, torch.float32, bias=False)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert not any("bias" in n for n, _ in ours.named_parameters())
    ref, ours = ref.double(), ours.double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "LSTM with projections is not supported..."
        r = ref(x)[0]
    o = ours(x)[0]
    assert rel(o, r) <= 1e-12
    gr = torch.autograd.grad(r.square().sum(), [x, *ref.parameters()])
    go = torch.autograd.grad(o.square().sum(), [x, *ours.parameters()])
    assert all(rel(a, b) <= 1e-12 for a, b in zip(go, gr))


def test_tensors_cross_without_copies(monkeypatch):
    """Contiguous inputs and parameters reach the kernel as the tensors themselves (DLPack
    views, no NumPy round-trip); outputs and the training state are torch's allocations."""
    m = ft.LSTM(I, H, num_layers=2)
    x = torch.randn(T, B, I, requires_grad=True)
    seen = {}
    ops = ft._torch_ops  # the custom operator's implementation calls functional
    real = ops._F.stack_forward

    def spy(mode, xa, params, **kw):
        seen["x"], seen["params"] = xa, params
        seen["out"] = real(mode, xa, params, **kw)
        return seen["out"]

    monkeypatch.setattr(ops._F, "stack_forward", spy)
    y, (h_n, c_n) = m(x)
    assert isinstance(seen["x"], torch.Tensor) and seen["x"].data_ptr() == x.data_ptr()
    for n, p in m.named_parameters():
        assert seen["params"][n].data_ptr() == p.data_ptr(), n
    assert y.data_ptr() == seen["out"][0].data_ptr()
    assert c_n.data_ptr() == seen["out"][2].data_ptr()
    assert isinstance(seen["out"][3].reserve, torch.Tensor) or seen["out"][3].reserve is None


def test_inference_mode():
    torch.manual_seed(1)
    ref, ours = make_pair("lstm", 2, True, False, torch.float32)
    x = torch.randn(T, B, I)
    with torch.inference_mode():
        o, r = ours(x), ref(x)
    assert rel(o[0], r[0]) <= 5e-6 and rel(o[1][1], r[1][1]) <= 5e-6


def test_dropout_seeding_and_modes():
    x = torch.randn(T, B, I)
    torch.manual_seed(0)
    m = ft.LSTM(I, H, num_layers=3, dropout=0.5).train()
    torch.manual_seed(100)
    a = m(x)[0]
    torch.manual_seed(100)
    b = m(x)[0]
    torch.manual_seed(101)
    c = m(x)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    m.eval()
    e1, e2 = m(x)[0], m(x)[0]
    assert torch.equal(e1, e2) and not torch.allclose(a, e1)  # eval ignores dropout
    # dropout=0 in train mode == eval mode; equal to torch.nn.LSTM in eval mode
    m0 = ft.LSTM(I, H, num_layers=3, dropout=0.0)
    m0.load_state_dict(m.state_dict())
    assert torch.equal(m0.train()(x)[0], e1)
    ref = torch.nn.LSTM(I, H, num_layers=3, dropout=0.5)
    ref.load_state_dict(m.state_dict())
    assert rel(e1, ref.eval()(x)[0]) <= 5e-6
    # train mode applies dropout without autograd too (as torch.nn.LSTM under no_grad)
    m.train()
    with torch.no_grad():
        torch.manual_seed(100)
        assert torch.equal(m(x)[0], a)
    # the gradient uses the forward's masks
    xg = x.clone().requires_grad_()
    torch.manual_seed(100)
    y = m(xg)[0]
    y.sum().backward()
    torch.manual_seed(100)
    xg2 = x.clone().requires_grad_()
    m(xg2)[0].sum().backward()
    assert torch.equal(xg.grad, xg2.grad)


def test_no_draw_without_dropout():
    x = torch.randn(T, B, I)
    m = ft.LSTM(I, H, num_layers=2, dropout=0.5).eval()  # eval: dropout inactive
    g = ft.GRU(I, H, num_layers=2).train()  # train, dropout=0: inactive
    torch.manual_seed(5)
    ref_next = torch.rand(3)
    torch.manual_seed(5)
    m(x)
    g(x)
    assert torch.equal(torch.rand(3), ref_next)


# --------------------------------------------------------------------------------------------
# swap torch.nn.LSTM for fusedrnn.torch.LSTM in a model: identical training


class _Model(torch.nn.Module):
    def __init__(self, rnn_cls):
        super().__init__()
        self.rnn = rnn_cls(I, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(y[:, -1]).squeeze(-1) + h.sum(0).mean(-1)


def sgd_losses(models, x, target, steps=8):
    """{name: losses of `steps` SGD steps (momentum 0.5) of models[name] on one batch}."""
    losses = {}
    for name, model in models.items():
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        losses[name] = []
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), target)
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    return losses


def test_swapped_model_trains_identically():
    torch.manual_seed(0)
    ref = _Model(torch.nn.LSTM)
    ours = _Model(ft.LSTM)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x, target = torch.randn(8, 6, I, generator=g), torch.randn(8, generator=g)
    losses = sgd_losses({"ref": ref, "ours": ours}, x, target)
    print("\nswapped-model losses (torch.nn.LSTM / fusedrnn.torch.LSTM):",
          [f"{b:.7f}/{a:.7f}" for a, b in zip(losses["ours"], losses["ref"])])
    for a, b in zip(losses["ours"], losses["ref"]):
        assert abs(a - b) <= 1e-5 * max(abs(b), 1.0), (losses["ours"], losses["ref"])
    assert losses["ours"][-1] < losses["ours"][0]
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert rel(p, q) <= 1e-5, n


# --------------------------------------------------------------------------------------------
# autograd details


def test_inplace_modification_before_backward_is_detected():
    m = ft.GRU(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y, _ = m(x)
    with torch.no_grad():
        m.weight_hh_l0.mul_(2)
    with pytest.raises(RuntimeError, match="inplace"):
        y.sum().backward()


def test_only_some_outputs_used_and_retain_graph():
    torch.manual_seed(2)
    ref, ours = make_pair("lstm", 2, True, False, torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        _, (h_n, _) = m(xx)
        h_n[-1].sum().backward(retain_graph=True)
        h_n[-1].sum().backward()  # twice: accumulates
        grads.append(xx.grad)
    assert rel(grads[1], grads[0]) <= 1e-12


def test_no_grad_inference_and_frozen_weights():
    torch.manual_seed(2)
    ref, ours = make_pair("gru", 2, False, False, torch.float32)
    x = torch.randn(T, B, I)
    with torch.no_grad():
        y = ours(x)[0]
    assert y.grad_fn is None and rel(y, ref(x)[0]) <= 5e-6
    for p in ours.parameters():
        p.requires_grad_(False)
    xx = x.clone().requires_grad_()
    ours(xx)[0].sum().backward()
    xr = x.clone().requires_grad_()
    ref(xr)[0].sum().backward()
    assert rel(xx.grad, xr.grad) <= 5e-5
    assert all(p.grad is None for p in ours.parameters())


def test_non_contiguous_input():
    torch.manual_seed(2)
    ref, ours = make_pair("lstm", 1, True, False, torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64).transpose(0, 1)  # (T, B, I), not contiguous
    assert not x.is_contiguous()
    assert rel(ours(x)[0], ref(x)[0]) <= 1e-12


def test_packed_input_sorted_and_enforce_sorted():
    torch.manual_seed(2)
    ref, ours = make_pair("gru", 2, True, False, torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([5, 4, 2, 1]), enforce_sorted=True)
    assert packed.sorted_indices is None
    (ro, rh), (oo, oh) = ref(packed), ours(packed)
    assert oo.sorted_indices is None and torch.equal(oo.batch_sizes, ro.batch_sizes)
    assert rel(oo.data, ro.data) <= 1e-12 and rel(oh, rh) <= 1e-12


# --------------------------------------------------------------------------------------------
# bad input


def test_import_fusedrnn_does_not_import_torch():
    code = "import sys, fusedrnn; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_input_messages():
    m = ft.LSTM(I, H, num_layers=2)
    x = torch.randn(T, B, I)
    with pytest.raises(RuntimeError, match="input_size. Expected 3, got 4"):
        m(torch.randn(T, B, 4))
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        m(torch.randn(T, B, I, 1))
    good_h, good_c = torch.zeros(2, B, H), torch.zeros(2, B, H)
    with pytest.raises(RuntimeError,
                       match=r"Expected hidden\[0\] size \(2, 4, 5\), got \[1, 4, 5\]"):
        m(x, (torch.zeros(1, B, H), good_c))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size"):
        m(x, (good_h, torch.zeros(2, B, H + 1)))
    with pytest.raises(RuntimeError, match="should also be 3-D"):
        m(x, (torch.zeros(2, H), torch.zeros(2, H)))
    with pytest.raises(TypeError, match="tuple"):
        m(x, good_h)
    with pytest.raises(ValueError, match="float64"):
        m(x.double())
    with pytest.raises(RuntimeError, match="float64"):  # as torch.nn
        m(x, (good_h.double(), good_c))
    with pytest.raises(TypeError, match="float32 and float64"):
        ft.LSTM(I, H, dtype=torch.float16)(x.half())
    g = ft.GRU(I, H)
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 4, 5\), got \[1, 3, 5\]"):
        g(x, torch.zeros(1, 3, H))
    with pytest.raises(RuntimeError, match="should also be 2-D"):
        g(torch.randn(T, I), torch.zeros(1, 1, H))
    with pytest.raises(RuntimeError, match="hidden size"):
        g(pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False),
          torch.zeros(1, 2, H))
    # the module is unchanged by failed calls and still works
    assert rel(m(x)[0], m(x)[0]) == 0


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="dropout"):
        ft.LSTM(I, H, dropout=1.5)
    with pytest.raises(ValueError, match="proj_size"):
        ft.LSTM(I, H, proj_size=H)
    with pytest.raises(ValueError, match="nonlinearity"):
        ft.RNN(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        ft.GRU(I, H, proj_size=2)  # as torch.nn.GRU (was a TypeError)
    with pytest.raises(ValueError, match="hidden_size"):
        ft.GRU(I, 0)
    with pytest.raises(TypeError, match="input_size"):
        ft.GRUCell(2.5, H)
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        ft.LSTM(I, H, dropout=0.2)


def test_bad_cell_input():
    c = ft.LSTMCell(I, H)
    with pytest.raises(RuntimeError, match="inconsistent input_size: got 4 expected 3"):
        c(torch.randn(B, 4))
    with pytest.raises(RuntimeError, match="doesn't match hidden0 batch size"):
        c(torch.randn(B, I), (torch.zeros(B + 1, H), torch.zeros(B, H)))
    with pytest.raises(RuntimeError, match="hidden1 has inconsistent hidden_size"):
        c(torch.randn(B, I), (torch.zeros(B, H), torch.zeros(B, H + 1)))
    with pytest.raises(ValueError, match="1D or 2D"):
        c(torch.randn(1, B, I))
    with pytest.raises(TypeError, match="tuple"):
        c(torch.randn(B, I), torch.zeros(B, H))
    with pytest.raises(RuntimeError, match="float64"):  # as torch.nn
        ft.GRUCell(I, H)(torch.randn(B, I, dtype=torch.float64))


def test_non_cpu_tensors_are_refused():
    m = ft.LSTM(I, H).to("meta")
    with pytest.raises(RuntimeError, match="only CPU and CUDA tensors"):
        m(torch.empty(T, B, I, device="meta"))
    with pytest.raises(RuntimeError, match="only CPU and CUDA tensors"):
        ft.GRUCell(I, H).to("meta")(torch.empty(B, I, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_without_the_cuda_backend_are_refused():
    if fusedrnn.cuda.is_available():
        pytest.skip("fusedrnn runs CUDA tensors here (tests/cuda)")
    m = ft.LSTM(I, H).cuda()
    with pytest.raises(RuntimeError, match="CUDA tensors need fusedrnn's CUDA backend, but "):
        m(torch.randn(T, B, I, device="cuda"))
    with pytest.raises(RuntimeError, match="CUDA tensors need fusedrnn's CUDA backend"):
        ft.LSTM(I, H)(torch.randn(T, B, I, device="cuda"))


def test_torch_compile_runs_the_native_call_eagerly():
    torch.manual_seed(4)
    ref, ours = make_pair("lstm", 2, True, True, torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64)
    head = torch.nn.Linear(2 * H, 1, dtype=torch.float64)
    f = lambda m, xx: head(m(xx)[0]).square().sum()
    xr = x.clone().requires_grad_()
    f(ref, xr).backward()
    xo = x.clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(f, backend="eager")(ours, xo)
        out.backward()
    assert not [w for w in caught if "fusedrnn" in str(w.message)], [str(w.message) for w in caught]
    assert rel(out, f(ref, x)) <= 1e-12 and rel(xo.grad, xr.grad) <= 1e-12
