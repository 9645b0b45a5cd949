"""fusedrnn.torch.RegularisedLSTM/GRU/RNN: gradcheck on every option (training masks fixed by a
patched seed, and eval mode's expectation), agreement with a plain PyTorch loop of the same
equations, initialisation, state_dict, and the errors where no kernel exists."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedrnn.torch as ft  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

OPTIONS = {
    "layer_norm": dict(layer_norm=True),
    "zoneout": dict(zoneout_h=0.3),
    "zoneout_c": dict(zoneout_h=0.2, zoneout_c=0.3),
    "recurrent_dropout": dict(recurrent_dropout=0.3),
    "dropconnect": dict(dropconnect=0.3),
    "gate_clip": dict(gate_clip=0.4),
    "cell_clip": dict(cell_clip=0.5),
    "peepholes": dict(peepholes=True),
    "everything": dict(layer_norm=True, zoneout_h=0.2, zoneout_c=0.2, recurrent_dropout=0.2,
                       dropconnect=0.2, gate_clip=1.0, cell_clip=0.8, peepholes=True),
}
LSTM_ONLY = {"zoneout_c", "gate_clip", "cell_clip", "peepholes", "everything"}
CLASSES = {"lstm": ft.RegularisedLSTM, "gru": ft.RegularisedGRU, "rnn": ft.RegularisedRNN}


def _cases():
    for name in OPTIONS:
        for cls in CLASSES:
            if cls != "lstm" and name in LSTM_ONLY:
                continue
            yield pytest.param(name, cls, id=f"{name}-{cls}")


@pytest.fixture
def fixed_seed(monkeypatch):
    """One mask set for every call (gradcheck evaluates the function many times)."""
    monkeypatch.setattr(ft, "_draw_seed", lambda: torch.tensor(1234))


def _module(cls, opts, **kw):
    torch.manual_seed(0)
    m = CLASSES[cls](3, 4, dtype=torch.float64, **kw, **opts)
    with torch.no_grad():  # gains away from 1 and non-zero peepholes: every term matters
        for name, p in m.named_parameters():
            if name.startswith(("ln_", "weight_peephole")):
                p.uniform_(0.5, 1.5)
    return m


def _gradcheck_module(m, x, hx, fast=True):
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    lstm = isinstance(m, ft.RegularisedLSTM)

    def f(x, *rest):
        hx_ = (rest[0], rest[1]) if lstm else rest[0]
        ps = rest[2:] if lstm else rest[1:]
        with torch.nn.utils.stateless._reparametrize_module(m, dict(zip(names, ps))):
            out, h = m(x, hx_)
        if hasattr(out, "data") and not isinstance(out, torch.Tensor):
            out = out.data
        return (out, *h) if lstm else (out, h)

    states = hx if lstm else (hx,)
    assert gradcheck(f, (x, *states, *params), eps=1e-6, atol=1e-6, rtol=1e-5,
                     fast_mode=fast)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,cls", list(_cases()))
def test_gradcheck(name, cls, train, fixed_seed):
    m = _module(cls, OPTIONS[name], num_layers=2, bidirectional=True, dropout=0.2)
    m.train(train)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    hx = (h0, torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)) \
        if cls == "lstm" else h0
    _gradcheck_module(m, x, hx)


@pytest.mark.parametrize("cls", ["lstm", "gru", "rnn"])
def test_gradcheck_full_jacobian(cls, fixed_seed):
    """Every entry of the Jacobian (the sweep above checks random projections of it)."""
    opts = OPTIONS["everything"] if cls == "lstm" else dict(
        layer_norm=True, zoneout_h=0.3, recurrent_dropout=0.2, dropconnect=0.2)
    m = _module(cls, opts, num_layers=2, dropout=0.3)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    hx = (h0, torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)) \
        if cls == "lstm" else h0
    _gradcheck_module(m, x, hx, fast=False)


@pytest.mark.parametrize("cls", ["lstm", "gru"])
def test_gradcheck_packed_batch_first(cls, fixed_seed):
    opts = OPTIONS["everything"] if cls == "lstm" else dict(layer_norm=True, zoneout_h=0.3)
    m = _module(cls, opts, batch_first=True)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    data = packed.data.detach().requires_grad_()

    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())

    def f(d, *ps):
        seq = torch.nn.utils.rnn.PackedSequence(d, packed.batch_sizes, packed.sorted_indices,
                                                packed.unsorted_indices)
        with torch.nn.utils.stateless._reparametrize_module(m, dict(zip(names, ps))):
            out, h = m(seq)
        return (out.data, *h) if cls == "lstm" else (out.data, h)

    assert gradcheck(f, (data, *params), eps=1e-6, atol=1e-6, rtol=1e-5,
                     fast_mode=True)


def _torch_loop_lstm(m, x, h, c, masks=None):
    """The regularised LSTM written as a plain PyTorch loop (nn.functional ops per step): what a
    user writes today, and an independent check of the module (eval mode, or given masks)."""
    H = m.hidden_size
    ln = torch.nn.functional.layer_norm
    reg = m.reg
    w_ih, w_hh, b_ih, b_hh = m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0
    ys = []
    for t in range(x.shape[0]):
        xp, hp = x[t] @ w_ih.T, h @ w_hh.T
        if reg.layer_norm:
            xp = ln(xp, (4 * H,), m.ln_weight_ih_l0, None, 1e-5)
            hp = ln(hp, (4 * H,), m.ln_weight_hh_l0, None, 1e-5)
        a = xp + b_ih + hp + b_hh
        ai, af, ag, ao = a.chunk(4, 1)
        if reg.peepholes:
            p_i, p_o, p_f = m.weight_peephole_l0.chunk(3)
            ai, af = ai + p_i * c, af + p_f * c
        i, f, g = torch.sigmoid(ai), torch.sigmoid(af), torch.tanh(ag)
        cn = f * c + i * g
        if reg.cell_clip is not None:
            cn = cn.clamp(-reg.cell_clip, reg.cell_clip)
        if reg.peepholes:
            ao = ao + p_o * cn
        o = torch.sigmoid(ao)
        cc = ln(cn, (H,), m.ln_weight_c_l0, m.ln_bias_c_l0, 1e-5) if reg.layer_norm else cn
        hn = o * torch.tanh(cc)
        h = reg.zoneout_h * h + (1 - reg.zoneout_h) * hn
        c = reg.zoneout_c * c + (1 - reg.zoneout_c) * cn
        ys.append(h)
    return torch.stack(ys), h, c


def test_eval_mode_matches_a_torch_loop():
    opts = dict(layer_norm=True, zoneout_h=0.2, zoneout_c=0.1, cell_clip=0.9, peepholes=True)
    m = _module("lstm", opts).eval()
    x = torch.randn(6, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 3, 4, dtype=torch.float64)
    c0 = torch.randn(1, 3, 4, dtype=torch.float64)
    y, (h, c) = m(x, (h0, c0))
    y2, h2, c2 = _torch_loop_lstm(m, x, h0[0], c0[0])
    torch.testing.assert_close(y, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c[0], c2, rtol=1e-10, atol=1e-10)
    g1 = torch.autograd.grad(y.square().sum(), [x, m.ln_weight_c_l0, m.weight_peephole_l0])
    g2 = torch.autograd.grad(y2.square().sum(), [x, m.ln_weight_c_l0, m.weight_peephole_l0])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_no_option_is_the_plain_lstm():
    torch.manual_seed(3)
    plain = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    m = ft.RegularisedLSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    m.load_state_dict(plain.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x)[0], plain(x)[0], rtol=1e-10, atol=1e-10)


def test_initialisation_and_state_dict():
    torch.manual_seed(5)
    ref = torch.nn.LSTM(3, 4, num_layers=2)
    torch.manual_seed(5)
    m = ft.RegularisedLSTM(3, 4, num_layers=2, layer_norm=True, peepholes=True,
                           forget_bias=1.0)
    sd = m.state_dict()
    assert torch.equal(sd["weight_ih_l1"], ref.weight_ih_l1)  # torch.nn's draws, same order
    assert torch.all(sd["ln_weight_ih_l0"] == 1) and torch.all(sd["ln_bias_c_l1"] == 0)
    assert torch.all(sd["weight_peephole_l0"] == 0)
    assert torch.all(sd["bias_ih_l0"][4:8] == 1) and torch.all(sd["bias_hh_l1"][4:8] == 0)
    m2 = ft.RegularisedLSTM(3, 4, num_layers=2, layer_norm=True, peepholes=True)
    m2.load_state_dict(sd)
    x = torch.randn(4, 2, 3)
    m.eval(), m2.eval()
    torch.testing.assert_close(m(x)[0], m2(x)[0], rtol=0, atol=0)
    assert "layer_norm=True" in repr(m) and "forget_bias=1.0" in repr(m)


def test_training_masks_follow_torch_manual_seed():
    m = _module("lstm", dict(zoneout_h=0.3, zoneout_c=0.3, recurrent_dropout=0.3))
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(9)
    a = m(x)[0]
    torch.manual_seed(9)
    b = m(x)[0]
    c = m(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x)[0], m(x)[0])


def test_errors():
    with pytest.raises(TypeError, match="no torch.nn counterpart"):
        ft.to_torch(ft.RegularisedLSTM(3, 4, layer_norm=True))
    with pytest.raises(TypeError, match="unexpected keyword"):
        ft.RegularisedGRU(3, 4, peepholes=True)
    with pytest.raises(NotImplementedError, match="reset_after=False"):
        ft.RegularisedGRU(3, 4, layer_norm=True, reset_after=False)
    with pytest.raises(ValueError, match="rate"):
        ft.RegularisedLSTM(3, 4, zoneout_h=2.0)
    m = _module("lstm", dict(layer_norm=True))
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    y = m(x)[0]
    g, = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):  # first-order kernels: never a silently wrong 2nd order
        g.sum().backward()
    y = m(x)[0]
    with torch.no_grad():
        m.ln_weight_ih_l0.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    with pytest.raises(TypeError, match="float32 and float64"):
        ft.RegularisedLSTM(3, 4, layer_norm=True).half()(torch.randn(2, 1, 3).half())
    if torch.cuda.is_available():  # pragma: no cover - no GPU here
        with pytest.raises(NotImplementedError, match="CPU"):
            ft.RegularisedLSTM(3, 4, layer_norm=True).cuda()(torch.randn(2, 1, 3).cuda())


def test_unbatched_input_and_eval_no_grad():
    m = _module("gru", dict(layer_norm=True, zoneout_h=0.2)).eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        y, h = m(x)
        y2, h2 = m(x.unsqueeze(1))
    assert y.shape == (5, 4) and h.shape == (1, 4)
    torch.testing.assert_close(y, y2[:, 0], rtol=0, atol=0)
    np.testing.assert_array_equal(h.numpy(), h2[:, 0].numpy())


def test_eval_with_only_dropouts_is_the_plain_lstm():
    """In eval mode recurrent dropout and DropConnect are off: the plain fused stack runs (and
    gives torch.nn's result on the same weights)."""
    torch.manual_seed(4)
    plain = torch.nn.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    m = ft.RegularisedLSTM(3, 4, num_layers=2, dtype=torch.float64, recurrent_dropout=0.3,
                           dropconnect=0.4, dropout=0.2).eval()
    m.load_state_dict(plain.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    y = m(x)[0]
    torch.testing.assert_close(y, plain.eval()(x)[0], rtol=1e-10, atol=1e-10)
    y.sum().backward()
    assert x.grad is not None and m.weight_hh_l1.grad is not None


# ------------------------------------------------------------------------------------------
# Cells


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cls,opts", [
    ("RegularisedLSTMCell", dict(layer_norm=True, zoneout_h=0.2, zoneout_c=0.3, gate_clip=1.0,
                                 cell_clip=0.8, peepholes=True)),
    ("RegularisedGRUCell", dict(layer_norm=True, zoneout_h=0.3)),
    ("RegularisedRNNCell", dict(layer_norm=True, zoneout_h=0.3)),
])
def test_cells_gradcheck(cls, opts, train, fixed_seed):
    torch.manual_seed(0)
    cell = getattr(ft, cls)(3, 4, dtype=torch.float64, **opts).train(train)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name.startswith(("ln_", "weight_peephole")):
                p.uniform_(0.5, 1.5)
    lstm = cls == "RegularisedLSTMCell"
    names = [n for n, _ in cell.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in cell.parameters())
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)

    def f(x, h, c, *ps):
        with torch.nn.utils.stateless._reparametrize_module(cell, dict(zip(names, ps))):
            out = cell(x, (h, c)) if lstm else cell(x, h)
        return out if lstm else (out,)

    assert gradcheck(f, (x, h, c, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_cell_steps_equal_the_layer_in_eval_mode():
    """A loop of RegularisedLSTMCell steps with the layer's weights gives the layer's output."""
    torch.manual_seed(2)
    opts = dict(layer_norm=True, zoneout_h=0.2, zoneout_c=0.1, cell_clip=1.5, peepholes=True)
    layer = _module("lstm", opts).eval()
    cell = ft.RegularisedLSTMCell(3, 4, dtype=torch.float64, **opts).eval()
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        y, _ = layer(x)
        h = c = torch.zeros(2, 4, dtype=torch.float64)
        for t in range(6):
            h, c = cell(x[t], (h, c))
            torch.testing.assert_close(h, y[t], rtol=1e-12, atol=1e-12)
    assert "peepholes=True" in repr(cell) and "ln_weight_c" in dict(cell.named_parameters())
    with pytest.raises(TypeError, match="no torch.nn counterpart"):
        ft.to_torch(cell)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ft.RegularisedLSTMCell(3, 4, recurrent_dropout=0.2)
