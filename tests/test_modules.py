"""fusedrnn.RNN/LSTM/GRU and cells: parity with torch.nn, native stacks vs the reference,
dropout, the training interface and bad input."""

import itertools

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional as F
from fusedrnn import reference as ref

MODULES = {"rnn_tanh": (fusedrnn.RNN, dict(nonlinearity="tanh")),
           "rnn_relu": (fusedrnn.RNN, dict(nonlinearity="relu")),
           "lstm": (fusedrnn.LSTM, {}), "lstm_proj": (fusedrnn.LSTM, dict(proj_size=2)),
           "gru": (fusedrnn.GRU, {})}
T, B, I, H = 6, 4, 3, 5
LENGTHS = np.array([4, 6, 1, 4])  # unsorted, a tie, a length-1 sequence
WORST = {}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    s = np.abs(b).max()
    return float(np.abs(a - b).max() / (s if s > 0 else 1.0))


def make(cell, dtype=np.float32, seed=0, **kw):
    cls, extra = MODULES[cell]
    return cls(I, H, dtype=dtype, seed=seed, **{**extra, **kw})


def random_io(m, rng, batch_first, unbatched=False):
    D, R = m.num_directions, m.proj_size or m.hidden_size
    LD = m.num_layers * D
    xs = (T, I) if unbatched else ((B, T, I) if batch_first else (T, B, I))
    ys = xs[:-1] + (D * R,)
    u = lambda *s: rng.uniform(-1, 1, s).astype(m.dtype)
    hs = (LD, R) if unbatched else (LD, B, R)
    cs = (LD, H) if unbatched else (LD, B, H)
    return dict(x=u(*xs), h0=u(*hs), c0=u(*cs), dy=u(*ys), dh=u(*hs), dc=u(*cs))


def run_fused(m, io, lengths):
    lstm = m.mode == "LSTM"
    m.zero_grad()
    m.train()
    hx = (io["h0"], io["c0"]) if lstm else io["h0"]
    y, st = m(io["x"], hx, lengths=lengths)
    dx, dst = m.backward(io["dy"], (io["dh"], io["dc"]) if lstm else io["dh"])
    out = dict(y=y, h_n=st[0] if lstm else st, dx=dx, dh0=dst[0] if lstm else dst)
    if lstm:
        out.update(c_n=st[1], dc0=dst[1])
    out.update({"grad " + k: v.copy() for k, v in m.grads.items()})
    return out


def run_torch(m, io, lengths):
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    tm = m.to_torch().train()
    lstm = m.mode == "LSTM"
    t = {k: torch.tensor(v, requires_grad=k in ("x", "h0", "c0")) for k, v in io.items()}
    hx = (t["h0"], t["c0"]) if lstm else t["h0"]
    inp = t["x"]
    if lengths is not None:
        inp = pack_padded_sequence(inp, torch.tensor(lengths), batch_first=m.batch_first,
                                   enforce_sorted=False)
    y, st = tm(inp, hx)
    if lengths is not None:
        y, _ = pad_packed_sequence(y, batch_first=m.batch_first, total_length=T)
    h_n = st[0] if lstm else st
    loss = (y * t["dy"]).sum() + (h_n * t["dh"]).sum()
    if lstm:
        loss = loss + (st[1] * t["dc"]).sum()
    loss.backward()
    out = dict(y=y, h_n=h_n, dx=t["x"].grad, dh0=t["h0"].grad)
    if lstm:
        out.update(c_n=st[1], dc0=t["c0"].grad)
    out.update({"grad " + k: p.grad for k, p in tm.named_parameters()})
    return {k: v.detach().numpy() for k, v in out.items()}


PARITY = list(itertools.product(MODULES, [1, 2, 3], [False, True], [False, True],
                                [False, True], ["f32", "f64"]))


@pytest.mark.parametrize("cell,layers,bidir,batch_first,ragged,dt", PARITY,
                         ids=["-".join(map(str, p)) for p in PARITY])
def test_parity_with_torch(cell, layers, bidir, batch_first, ragged, dt):
    pytest.importorskip("torch")
    import warnings

    dtype = np.float32 if dt == "f32" else np.float64
    m = make(cell, dtype, num_layers=layers, bidirectional=bidir, batch_first=batch_first)
    io = random_io(m, np.random.default_rng(layers * 7 + bidir), batch_first)
    lengths = LENGTHS if ragged else None
    ours = run_fused(m, io, lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "LSTM with projections is not supported..."
        theirs = run_torch(m, io, lengths)
    assert ours.keys() == theirs.keys()
    # float32: ours and torch (oneDNN / ATen) each round differently along chains of up to
    # 3 layers x 6 steps x 2 directions; 5e-6 of an array's scale is ~40 ulps (worst seen: 9e-7).
    bound = 1e-10 if dtype == np.float64 else 5e-6
    for k in ours:
        err = rel(ours[k], theirs[k])
        kind = "outputs" if k in ("y", "h_n", "c_n") else "gradients"
        WORST[(dt, kind)] = max(WORST.get((dt, kind), 0.0), err)
        assert err <= bound, f"{k}: {err:.3e} > {bound:.1e}"


def test_report_parity_worst(request):
    """Runs last in this file: prints the worst parity errors of the sweep (when it ran)."""
    if WORST:
        lines = [f"{dt} {kind}: {err:.3e}" for (dt, kind), err in sorted(WORST.items())]
        print("\nparity with torch.nn, worst relative errors (%d configs): %s"
              % (len(PARITY), "; ".join(lines)))


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru",
                                  "gru_v1"])
@pytest.mark.parametrize("layers,bidir", [(1, True), (2, False), (3, True)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_native_stack_matches_reference(cell, layers, bidir, batch_first):
    mode = "lstm" if cell.startswith("lstm") else ("gru" if cell.startswith("gru") else cell)
    m = make("gru" if mode == "gru" else cell, np.float64, num_layers=layers,
             bidirectional=bidir, batch_first=batch_first, dropout=0.3)
    reset_after = cell != "gru_v1"
    rng = np.random.default_rng(3)
    io = random_io(m, rng, batch_first)
    c0 = io["c0"] if mode == "lstm" else None
    dc = io["dc"] if mode == "lstm" else None
    p = dict(m.named_parameters())
    kw = dict(num_layers=layers, bidirectional=bidir, h0=io["h0"], c0=c0, lengths=LENGTHS,
              batch_first=batch_first, reset_after=reset_after)
    y, h, c, ctx = F.stack_forward(mode, io["x"], p, dropout=0.3, seed=11, **kw)
    masks = [mk / 0.7 for mk in ctx.keep_masks]
    assert len(masks) == layers - 1
    ry, rh, rc, rctx = ref.stack_forward(mode, io["x"], p, dropout_masks=masks or None, **kw)
    got = F.stack_backward(ctx, io["dy"], io["dh"], dc)
    want = ref.stack_backward(rctx, io["dy"], io["dh"], dc)
    pairs = [(y, ry), (h, rh)] + ([(c, rc)] if c is not None else [])
    pairs += [(a, b) for a, b in zip(got[:3], want[:3]) if b is not None]
    assert got[3].keys() == want[3].keys()
    pairs += [(got[3][k], want[3][k]) for k in want[3]]
    for a, b in pairs:
        assert rel(a, b) <= 1e-10


def test_dropout_masks_and_determinism():
    m = fusedrnn.LSTM(I, 64, num_layers=3, dropout=0.4, seed=0).train()
    x = np.random.default_rng(0).standard_normal((20, 8, I)).astype(np.float32)
    p = dict(m.named_parameters())
    y1, *_, c1 = F.stack_forward("lstm", x, p, num_layers=3, dropout=0.4, seed=5)
    y2, *_, c2 = F.stack_forward("lstm", x, p, num_layers=3, dropout=0.4, seed=5)
    y3, *_, c3 = F.stack_forward("lstm", x, p, num_layers=3, dropout=0.4, seed=6)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, y3)
    for mk in c1.keep_masks:
        n = mk.size
        kept = mk.mean()
        assert abs(kept - 0.6) < 4 * np.sqrt(0.6 * 0.4 / n), kept  # Binomial, 4 sigma
    a, b = c1.keep_masks
    assert abs(np.mean(a & b) - 0.36) < 4 * np.sqrt(0.36 * 0.64 / a.size)  # layers independent
    # Thread count does not change the masks (counter-based generator).
    old = fusedrnn.get_num_threads()
    try:
        fusedrnn.set_num_threads(1)
        y4, *_ = F.stack_forward("lstm", x, p, num_layers=3, dropout=0.4, seed=5)
    finally:
        fusedrnn.set_num_threads(old)
    np.testing.assert_allclose(y4, y1, rtol=1e-5, atol=1e-6)
    # Module: the same seed gives the same sequence of masks; eval mode ignores dropout.
    ma = fusedrnn.LSTM(I, 16, num_layers=2, dropout=0.5, seed=1).train()
    mb = fusedrnn.LSTM(I, 16, num_layers=2, dropout=0.5, seed=1).train()
    np.testing.assert_array_equal(ma(x)[0], mb(x)[0])
    m0 = fusedrnn.LSTM(I, 16, num_layers=2, dropout=0.0, seed=1)
    np.testing.assert_array_equal(m0.train()(x)[0], m0.eval()(x)[0])
    ma.eval()
    np.testing.assert_array_equal(ma(x)[0], ma(x)[0])
    ma.load_state_dict(m0.state_dict())
    np.testing.assert_array_equal(ma(x)[0], m0(x)[0])


def test_grads_accumulate_and_zero_grad():
    m = make("gru", np.float64, num_layers=2, bidirectional=True).train()
    io = random_io(m, np.random.default_rng(1), False)
    m(io["x"])
    m.backward(io["dy"])
    once = {k: v.copy() for k, v in m.grads.items()}
    m(io["x"])
    m.backward(io["dy"])
    for k in once:
        np.testing.assert_allclose(m.grads[k], 2 * once[k], rtol=1e-12, atol=1e-14)
    m.zero_grad()
    assert all(not g.any() for g in m.grads.values())


def test_truncated_bptt_by_passing_state():
    """Two halves with the state passed on equal one full sequence, outputs and gradients of the
    second half's input."""
    m = make("lstm", np.float64).train()
    x = np.random.default_rng(2).standard_normal((8, B, I))
    y_full, (h_full, c_full) = m(x)
    y1, s1 = m(x[:4])
    y2, s2 = m(x[4:], s1)
    np.testing.assert_allclose(np.concatenate([y1, y2]), y_full, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(s2[0], h_full, rtol=1e-12, atol=1e-14)
    dy = np.ones_like(y2)
    dx2, (dh0, dc0) = m.backward(dy)
    m(x)
    dx_full, _ = m.backward(np.concatenate([np.zeros_like(y1), dy]))
    np.testing.assert_allclose(dx2, dx_full[4:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", list(MODULES))
def test_unbatched_input(cell):
    m = make(cell, np.float64, num_layers=2, bidirectional=True).train()
    io = random_io(m, np.random.default_rng(4), False, unbatched=True)
    lstm = m.mode == "LSTM"
    hx = (io["h0"], io["c0"]) if lstm else io["h0"]
    y, st = m(io["x"], hx)
    yb, stb = m(io["x"][:, None], (io["h0"][:, None], io["c0"][:, None]) if lstm
                else io["h0"][:, None])
    np.testing.assert_array_equal(y, yb[:, 0])
    assert y.ndim == 2 and (st[0] if lstm else st).ndim == 2
    m(io["x"], hx)
    dx, _ = m.backward(io["dy"])
    assert dx.shape == io["x"].shape


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_cells_match_torch_and_bptt_through_steps_equals_layer(cell):
    rng = np.random.default_rng(8)
    cls = {"rnn_tanh": fusedrnn.RNNCell, "lstm": fusedrnn.LSTMCell, "gru": fusedrnn.GRUCell}[cell]
    c = cls(I, H, dtype=np.float64, seed=3).train()
    layer = make(cell, np.float64)
    layer.load_state_dict({k + "_l0": v for k, v in c.state_dict().items()})
    layer.train()
    x = rng.standard_normal((T, B, I))
    dy = rng.standard_normal((T, B, H))
    state = None
    hs = []
    for t in range(T):
        state = c(x[t], state)
        hs.append(state[0] if cell == "lstm" else state)
    y, _ = layer(x)
    np.testing.assert_allclose(np.stack(hs), y, rtol=1e-12, atol=1e-14)
    # BPTT through the cell calls, newest first.
    dh = np.zeros((B, H))
    dc = np.zeros((B, H))
    dxs = []
    for t in reversed(range(T)):
        if cell == "lstm":
            dx, (dh, dc) = c.backward(dh + dy[t], dc)
        else:
            dx, dh = c.backward(dh + dy[t])
        dxs.append(dx)
    dx_layer, _ = layer.backward(dy)
    np.testing.assert_allclose(np.stack(dxs[::-1]), dx_layer, rtol=1e-10, atol=1e-12)
    for k in c.grads:
        np.testing.assert_allclose(c.grads[k], layer.grads[k + "_l0"], rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="backward needs a forward call"):
        c.backward(dh)
    torch = pytest.importorskip("torch")
    tc = c.to_torch()
    xt = torch.tensor(x[0])
    h_ours = c.eval()(x[0])
    h_t = tc(xt)
    h_ours = h_ours[0] if cell == "lstm" else h_ours
    h_t = h_t[0] if cell == "lstm" else h_t
    np.testing.assert_allclose(h_ours, h_t.detach().numpy(), rtol=1e-12, atol=1e-14)
    back = fusedrnn.from_torch(tc)
    for k, v in c.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)


def test_state_dict_round_trip_with_torch():
    torch = pytest.importorskip("torch")
    tm = torch.nn.GRU(I, H, num_layers=2, bidirectional=True, batch_first=True)
    m = fusedrnn.from_torch(tm)
    assert (m.num_layers, m.bidirectional, m.batch_first) == (2, True, True)
    assert list(m.state_dict()) == list(tm.state_dict())
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(m.state_dict()[k], v.numpy())
    m2 = fusedrnn.GRU(I, H, num_layers=2, bidirectional=True, batch_first=True, seed=9)
    m2.load_state_dict(tm.state_dict())  # torch tensors load directly
    np.testing.assert_array_equal(m2.weight_hh_l1_reverse, tm.weight_hh_l1_reverse.detach())


# --- bad input: clear errors, module unchanged -------------------------------------------------

def snapshot(m):
    return ({k: v.copy() for k, v in m.state_dict().items()},
            {k: v.copy() for k, v in m.grads.items()})


def assert_unchanged(m, snap):
    params, grads = snap
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, params[k])
    for k, v in m.grads.items():
        np.testing.assert_array_equal(v, grads[k])


def test_module_bad_input_leaves_it_unchanged():
    m = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=True, seed=0).train()
    x = np.zeros((T, B, I), np.float32)
    m(x)
    m.backward(np.ones((T, B, 2 * H), np.float32))
    snap = snapshot(m)
    ctx_before = m._ctx
    cases = [
        (ValueError, r"x.shape\[-1\] must equal input_size = 3, got 4",
         lambda: m(np.zeros((T, B, I + 1), np.float32))),
        (ValueError, r"x must be 3-D", lambda: m(np.zeros((T,), np.float32))),
        (TypeError, r"x must have dtype float32", lambda: m(x.astype(np.float64))),
        (ValueError, r"h0 must have shape \(4, 4, 5\)",
         lambda: m(x, (np.zeros((2, B, H), np.float32), np.zeros((4, B, H), np.float32)))),
        (ValueError, r"c0 must have shape \(4, 4, 5\)",
         lambda: m(x, (np.zeros((4, B, H), np.float32), np.zeros((4, B, H + 1), np.float32)))),
        (TypeError, r"hx must be a tuple \(h0, c0\)", lambda: m(x, np.zeros((4, B, H)))),
        (ValueError, r"lengths must lie in \[1, T\] = \[1, 6\]",
         lambda: m(x, lengths=np.array([7, 1, 1, 1]))),
        (ValueError, r"lengths must have shape \(batch,\)", lambda: m(x, lengths=[1, 2])),
        (KeyError, r"missing key\(s\) in state_dict: 'weight_hh_l1_reverse'",
         lambda: m.load_state_dict({k: v for k, v in m.state_dict().items()
                                    if k != "weight_hh_l1_reverse"})),
        (KeyError, r"unexpected key\(s\) in state_dict: 'weight_hr_l0'",
         lambda: m.load_state_dict({**m.state_dict(), "weight_hr_l0": np.zeros((2, H))})),
        (ValueError, r"state_dict\['weight_ih_l1'\] has shape \(20, 3\), the parameter has "
                     r"shape \(20, 10\)",
         lambda: m.load_state_dict({**{k: v + 1 for k, v in m.state_dict().items()},
                                    "weight_ih_l1": np.zeros((4 * H, I))})),
        (ValueError, r"dy must have shape like y = \(6, 4, 10\)",
         lambda: m.backward(np.ones((T, B, H), np.float32))),
        (TypeError, r"dstate must be a tuple", lambda: m.backward(None, np.zeros((4, B, H)))),
        (AttributeError, r"parameter 'weight_hh_l0' cannot be rebound",
         lambda: setattr(m, "weight_hh_l0", np.zeros((3, 3)))),
    ]
    for exc, match, fn in cases:
        with pytest.raises(exc, match=match):
            fn()
        assert_unchanged(m, snap)
    assert m._ctx is ctx_before, "a failed forward must not replace the saved context"


def test_backward_without_training_forward():
    m = make("gru")
    m(np.zeros((T, B, I), np.float32))  # eval mode: nothing kept
    with pytest.raises(RuntimeError, match="backward needs a forward call in training mode"):
        m.backward(np.zeros((T, B, H), np.float32))
    y, _ = m(np.zeros((T, B, I), np.float32), need_grad=True)
    dx, _ = m.backward(np.ones_like(y))
    assert dx.shape == (T, B, I)


def test_constructor_validation():
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        fusedrnn.LSTM(3, 4, proj_size=4)
    # messages are torch.nn's (fusedrnn.spec); tests/test_spec.py checks the types against it
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        fusedrnn.modules._RNNBase("GRU", 3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        fusedrnn.GRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"dropout should be a number in range \[0, 1\]"):
        fusedrnn.GRU(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        fusedrnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        fusedrnn.GRU(3, 4, dtype=np.int32)
    with pytest.raises(TypeError, match="hidden_size should be of type int, got: float"):
        fusedrnn.LSTM(3, 4.0)


def test_default_init_is_pytorch_uniform():
    m = fusedrnn.LSTM(16, 100, num_layers=2, seed=0)
    w = np.concatenate([p.ravel() for p in m.parameters()])
    bound = 1 / np.sqrt(100)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert abs(w.mean()) < 0.01 * bound * 3 and abs(w.std() - bound / np.sqrt(3)) < 0.01 * bound
    a = fusedrnn.GRU(4, 8, seed=7).state_dict()
    b = fusedrnn.GRU(4, 8, seed=7).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
