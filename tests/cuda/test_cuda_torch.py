"""fusedrnn.torch on CUDA tensors against torch.nn on CUDA (cuDNN): forward and every gradient,
multi-layer, bidirectional, proj_size, packed sequences, batch_first, cells, a swapped-in model.

Bounds as tests/test_torch_adapter.py (same helpers, same inputs, on the device): float64 within
1e-10; float32 within 2e-5, and our float32 error against torch's float64 result at most 4x
torch's own float32 error there (plus 16 ulps). cuDNN runs float32 RNNs in TF32 unless told
otherwise; every float32 comparison here runs with ``torch.backends.cudnn.rnn.fp32_precision =
'ieee'`` (the ``ieee_fp32`` fixture), the fair float32 comparison.

A model switches between cuDNN and fusedrnn by its import: the drop-in tests build the same
model from torch.nn and fusedrnn.torch classes, load one state_dict and compare.
"""

import warnings
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedrnn.torch as ft  # noqa: E402
import test_torch_adapter as ta  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

from _cuda_support import LIBS  # noqa: E402

DEV = "cuda"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
BOUND = {"float32": 2e-5, "float64": 1e-10}
EPS32 = float(np.finfo(np.float32).eps)
IDX = ("batch_sizes", "sorted_indices", "unsorted_indices")


@pytest.fixture(autouse=True)
def _torch_with_cuda():
    if "torch" not in LIBS:
        pytest.skip("this torch has no CUDA (CuPy alone makes the device arrays here)")


def pair(kind, layers, bidir, batch_first, dtype, **extra):
    """(torch.nn module, fusedrnn.torch module) on the GPU with the same weights."""
    r, o = ta.make_pair(kind, layers, bidir, batch_first, dtype, **extra)
    return r.to(DEV), o.to(DEV)


def leaves(raw, dtype):
    x, h0, c0, coef = raw
    f = lambda t: None if t is None else t.to(DEV, dtype).clone().requires_grad_()
    return f(x), f(h0), f(c0), {k: v.to(DEV, dtype) for k, v in coef.items()}


def compare(ref, ours, raw, dtype, packed, lengths, where, exact_of=None):
    r_out, r_grad = ta.run(ref, *leaves(raw, dtype), packed, lengths)
    o_out, o_grad = ta.run(ours, *leaves(raw, dtype), packed, lengths)
    assert r_out.keys() == o_out.keys() and r_grad.keys() == o_grad.keys()
    for k in IDX:
        if k in r_out:
            assert torch.equal(r_out[k].cpu(), o_out[k].cpu()), k
    dt = "float32" if dtype == torch.float32 else "float64"
    exact = exact_of() if exact_of is not None and dt == "float32" else None
    for group, theirs, mine, ex in (("outputs", r_out, o_out, exact and exact[0]),
                                    ("gradients", r_grad, o_grad, exact and exact[1])):
        for k in theirs:
            if k in IDX:
                continue
            assert mine[k].device == theirs[k].device, (k, mine[k].device)
            assert mine[k].dtype == theirs[k].dtype and mine[k].shape == theirs[k].shape, k
            err = ta.rel(mine[k], theirs[k])
            assert err <= BOUND[dt], f"{group} {k}: {err:.3e} > {BOUND[dt]:.0e} ({where})"
            if ex is not None:
                e_ours, e_torch = ta.rel(mine[k], ex[k]), ta.rel(theirs[k], ex[k])
                assert e_ours <= 4 * e_torch + 16 * EPS32, (group, k, e_ours, e_torch, where)


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["hx0", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("kind", ta.KINDS)
def test_parity_with_cudnn(kind, layers, bidir, batch_first, with_hx, packed, dt, ieee_fp32):
    dtype = DTYPES[dt]
    seed = zlib.crc32(repr(("cuda", kind, layers, bidir, batch_first, with_hx, packed)).encode())
    torch.manual_seed(seed)
    ref, ours = pair(kind, layers, bidir, batch_first, dtype)
    raw = ta.make_inputs(ref, dtype, with_hx, seed)

    def exact():  # torch.nn (cuDNN) in float64 on the upcast weights
        ref64 = pair(kind, layers, bidir, batch_first, torch.float64)[0]
        ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
        return ta.run(ref64, *leaves(raw, torch.float64), packed, ta.LENGTHS)

    where = f"{kind} L={layers} bi={bidir} bf={batch_first} hx={with_hx} packed={packed}"
    compare(ref, ours, raw, dtype, packed, ta.LENGTHS, where, exact)


# Sizes where the GPU kernels tile (and cuDNN may pick another algorithm): B and H past a warp.
MEDIUM = [("lstm", 2, True), ("lstm_proj", 2, True), ("gru", 2, True), ("rnn_tanh", 1, False),
          ("rnn_relu", 2, False)]


def sized_pair(kind, layers, bidir, dtype, I, H):
    kw = dict(num_layers=layers, bidirectional=bidir, dtype=dtype)
    if kind.startswith("rnn"):
        kw["nonlinearity"] = kind[4:]
        r, o = torch.nn.RNN(I, H, **kw), ft.RNN(I, H, **kw)
    elif kind.startswith("lstm"):
        kw["proj_size"] = H // 2 + 1 if kind == "lstm_proj" else 0
        r, o = torch.nn.LSTM(I, H, **kw), ft.LSTM(I, H, **kw)
    else:
        r, o = torch.nn.GRU(I, H, **kw), ft.GRU(I, H, **kw)
    o.load_state_dict(r.state_dict())
    return r.to(DEV), o.to(DEV)


def sized_inputs(m, T, B, I, seed):
    """ta.make_inputs for other sizes (float64, on the CPU; leaves() moves them)."""
    g = torch.Generator().manual_seed(seed)
    d = 2 if m.bidirectional else 1
    r = getattr(m, "proj_size", 0) or m.hidden_size
    hs, cs = (m.num_layers * d, B, r), (m.num_layers * d, B, m.hidden_size)
    f64 = dict(generator=g, dtype=torch.float64)
    x = torch.randn(T, B, I, **f64)
    h0 = torch.randn(hs, **f64) * 0.5
    c0 = torch.randn(cs, **f64) * 0.5 if isinstance(m, (torch.nn.LSTM, ft.LSTM)) else None
    coef = {"y": torch.randn(T * B * d * r, **f64), "h": torch.randn(hs, **f64),
            "c": torch.randn(cs, **f64)}
    return x, h0, c0, coef


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("kind,layers,bidir", MEDIUM)
def test_parity_medium_sizes(kind, layers, bidir, dt, ieee_fp32):
    T, B, I, H = 17, 40, 33, 96
    dtype = DTYPES[dt]
    seed = zlib.crc32(repr(("cuda-medium", kind, layers, bidir)).encode())
    torch.manual_seed(seed)
    ref, ours = sized_pair(kind, layers, bidir, dtype, I, H)
    raw = sized_inputs(ref, T, B, I, seed)
    lengths = [T - (b * 5) % T for b in range(B)]

    def exact():
        ref64 = sized_pair(kind, layers, bidir, torch.float64, I, H)[0]
        ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
        return ta.run(ref64, *leaves(raw, torch.float64), True, lengths)

    compare(ref, ours, raw, dtype, True, lengths, f"{kind} medium", exact)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("batched", [True, False])
def test_cells_match_torch_on_cuda(cell, batched):
    torch.manual_seed(3)
    I, H, B = 6, 9, 4
    kw = dict(dtype=torch.float64)
    if cell.startswith("rnn"):
        kw["nonlinearity"] = cell[4:]
    name = "RNNCell" if cell.startswith("rnn") else cell.upper() + "Cell"
    ref = getattr(torch.nn, name)(I, H, **kw)
    ours = getattr(ft, name)(I, H, **kw)
    ours.load_state_dict(ref.state_dict())
    ref, ours = ref.to(DEV), ours.to(DEV)
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=torch.float64, device=DEV)
    st = [torch.randn(*lead, H, dtype=torch.float64, device=DEV)
          for _ in range(2 if cell == "lstm" else 1)]
    results = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        ss = [s.clone().requires_grad_() for s in st]
        out = m(xx, tuple(ss) if cell == "lstm" else ss[0])
        outs = list(out) if cell == "lstm" else [out]
        sum((o * (k + 1.5)).sum() for k, o in enumerate(outs)).backward()
        results.append(outs + [xx.grad] + [s.grad for s in ss] + [p.grad for p in m.parameters()])
    for a, b in zip(results[1], results[0]):
        assert a.device == b.device and a.shape == b.shape and ta.rel(a, b) <= 1e-12


def test_unbatched_and_non_contiguous_input():
    torch.manual_seed(5)
    ref, ours = pair("lstm_proj", 2, True, False, torch.float64)
    x = torch.randn(ta.T, ta.I, dtype=torch.float64, device=DEV)
    (ro, (rh, rc)), (oo, (oh, oc)) = ref(x), ours(x)
    assert oo.shape == ro.shape and oh.shape == rh.shape and oc.shape == rc.shape
    assert max(ta.rel(oo, ro), ta.rel(oh, rh), ta.rel(oc, rc)) <= 1e-12
    # torch.nn takes a non-contiguous input; so must the drop-in
    xt = torch.randn(ta.B, ta.T, ta.I, dtype=torch.float64, device=DEV).transpose(0, 1)
    assert not xt.is_contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ref(xt)[0]
    assert ta.rel(ours(xt)[0], r) <= 1e-12


def test_packed_sorted_input():
    torch.manual_seed(2)
    ref, ours = pair("gru", 2, True, False, torch.float64)
    x = torch.randn(ta.T, ta.B, ta.I, dtype=torch.float64, device=DEV)
    packed = pack_padded_sequence(x, torch.tensor([5, 4, 2, 1]), enforce_sorted=True)
    (ro, rh), (oo, oh) = ref(packed), ours(packed)
    assert oo.data.device == ro.data.device and torch.equal(oo.batch_sizes, ro.batch_sizes)
    assert ta.rel(oo.data, ro.data) <= 1e-12 and ta.rel(oh, rh) <= 1e-12


class _Model(torch.nn.Module):
    def __init__(self, rnn_cls, dtype):
        super().__init__()
        self.rnn = rnn_cls(5, 12, num_layers=2, batch_first=True, bidirectional=True,
                           dtype=dtype)
        self.head = torch.nn.Linear(24, 1, dtype=dtype)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(y[:, -1]).squeeze(-1) + h.sum(0).mean(-1)


@pytest.mark.parametrize("dt", list(DTYPES))
def test_swapped_model_trains_identically_on_cuda(dt, ieee_fp32):
    """The same model with torch.nn.LSTM (cuDNN) and with fusedrnn.torch.LSTM, one
    state_dict, eight SGD steps on the GPU: the same losses and parameters."""
    dtype = DTYPES[dt]
    torch.manual_seed(0)
    ref = _Model(torch.nn.LSTM, dtype).to(DEV)
    ours = _Model(ft.LSTM, dtype).to(DEV)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 7, 5, generator=g, dtype=dtype).to(DEV)
    target = torch.randn(16, generator=g, dtype=dtype).to(DEV)
    tol = 1e-10 if dt == "float64" else 1e-5
    losses = ta.sgd_losses({"ref": ref, "ours": ours}, x, target)
    for a, b in zip(losses["ours"], losses["ref"]):
        assert abs(a - b) <= tol * max(abs(b), 1.0), (losses["ours"], losses["ref"])
    assert losses["ours"][-1] < losses["ours"][0]
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert p.device == q.device and ta.rel(p, q) <= 10 * tol, n


def test_module_moves_between_devices():
    """.to('cuda') and back: same results on either side (float64)."""
    torch.manual_seed(6)
    m = ft.GRU(4, 10, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    y_cpu, h_cpu = m(x)
    m.to(DEV)
    y_gpu, h_gpu = m(x.to(DEV))
    assert y_gpu.device.type == "cuda" and h_gpu.device.type == "cuda"
    assert ta.rel(y_gpu, y_cpu) <= 1e-12 and ta.rel(h_gpu, h_cpu) <= 1e-12
    m.to("cpu")
    y_back, _ = m(x)
    assert ta.rel(y_back, y_cpu) <= 1e-12


def test_dropout_cuda_equals_cpu_for_the_same_torch_seed():
    """fusedrnn.torch draws its dropout seed from torch's default (CPU) generator and the
    kernels draw the same keep-bits from it on either device: one manual_seed, equal outputs
    and gradients on the CPU and the GPU."""
    torch.manual_seed(0)
    m = ft.LSTM(5, 11, num_layers=3, dropout=0.5, dtype=torch.float64).train()
    x = torch.randn(8, 4, 5, dtype=torch.float64)
    results = []
    for dev in ("cpu", DEV):
        m.to(dev)
        xx = x.to(dev).clone().requires_grad_()
        torch.manual_seed(100)
        y, (h, c) = m(xx)
        (y.sum() + h.sum()).backward()
        results.append([y, h, c, xx.grad] + [p.grad.clone() for p in m.parameters()])
        m.zero_grad()
    for a, b in zip(results[1], results[0]):
        assert a.device.type == "cuda" and ta.rel(a, b) <= 1e-10
    torch.manual_seed(101)
    other = m(x.to(DEV))[0]
    assert not torch.allclose(other.cpu(), results[0][0].detach())


def test_gradcheck_on_cuda():
    torch.manual_seed(9)
    m = ft.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2,
                dtype=torch.float64).to(DEV)
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *ps):
        y, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
        return y, h, c

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_saved_state_is_on_the_device_and_freed_with_the_graph():
    """torch's allocator owns the training state: the reserve lives on the GPU while the graph
    does and is returned to torch's allocator with it."""
    torch.manual_seed(4)
    m = ft.LSTM(64, 128, num_layers=2, dtype=torch.float32).to(DEV)
    x = torch.randn(50, 32, 64, device=DEV, requires_grad=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    y, _ = m(x)
    held = torch.cuda.memory_allocated() - before
    assert held > y.numel() * 4  # y and the reserve (saved activations) are device memory
    y.sum().backward()
    del y
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < held
