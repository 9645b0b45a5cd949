"""16-bit storage on the GPU (bfloat16, float16 torch tensors; float32 math inside,
device/widened.h), on both time loops (FUSEDRNN_PERSISTENT=0 and 1):

* every cell, lengths, two bidirectional layers, forward and every gradient: each output the
  exact value of the same 16-bit inputs rounded once (the reference's low-precision run:
  ``_support.assert_rounded_once``, the bound tests/test_half_storage.py holds the host
  emulation of the same code to);
* against cuDNN in the same storage: the error against float64 on the same 16-bit inputs is at
  most twice the low-precision reference run's own error (one rounding of each output) plus
  float32's; cuDNN's error is printed beside it (it rounds h between steps, so it may be larger).
"""

import numpy as np
import pytest

from fusedrnn import functional as F
from fusedrnn import reference as ref

from _cuda_support import CELLS, LIBS, mode_of
from _support import assert_rounded_once

torch = pytest.importorskip("torch")

STORAGES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
T, B, I, H, P = 9, 5, 7, 13, 6
LENGTHS = np.array([9, 3, 1, 9, 6])


@pytest.fixture(autouse=True)
def _torch_with_cuda():
    if "torch" not in LIBS:
        pytest.skip("this torch has no CUDA")


def on_gpu(a, storage):
    return None if a is None else torch.from_numpy(a.astype(np.float32)).to("cuda",
                                                                              STORAGES[storage])


def back(a):
    return None if a is None else a.float().cpu().numpy().astype(np.float64)


@pytest.mark.parametrize("persistent", ["0", "1"], ids=["step-loop", "persistent"])
@pytest.mark.parametrize("storage", list(STORAGES))
@pytest.mark.parametrize("cell", CELLS)
def test_stack_rounds_once(cell, storage, persistent, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", persistent)
    mode, L, D = mode_of(cell), 2, 2
    proj = P if cell == "lstm_proj" else 0
    R = proj or H
    G = ref.GATES[mode]
    rng = np.random.default_rng(17)
    q = lambda a: None if a is None else ref.quantize(a, storage)  # noqa: E731
    params = {}
    for l in range(L):
        for d in range(D):
            names = ref.param_names(l, d, proj=bool(proj))
            shapes = [(G * H, I if l == 0 else D * R), (G * H, R), (G * H,), (G * H,)]
            for n, s in zip(names, shapes + ([(proj, H)] if proj else [])):
                params[n] = q(rng.uniform(-0.6, 0.6, s))
    u = lambda *s: q(rng.uniform(-1, 1, s))  # noqa: E731
    lstm = mode == "lstm"
    x, h0, c0 = u(T, B, I), u(L * D, B, R), u(L * D, B, H) if lstm else None
    dy, dh, dc = u(T, B, D * R), u(L * D, B, R), u(L * D, B, H) if lstm else None
    kw = dict(num_layers=L, bidirectional=True, lengths=LENGTHS,
              reset_after=cell != "gru_v1")
    g = lambda a: on_gpu(a, storage)  # noqa: E731
    y, h_n, c_n, ctx = F.stack_forward(mode, g(x), {k: g(v) for k, v in params.items()},
                                       h0=g(h0), c0=g(c0), **kw)
    dx, dh0, dc0, grads = F.stack_backward(ctx, g(dy), g(dh), g(dc))
    torch.cuda.synchronize()
    wy, wh, wc, rctx = ref.stack_forward(mode, x, params, h0=h0, c0=c0, **kw)
    wdx, wdh0, wdc0, wg = ref.stack_backward(rctx, dy, dh, dc)
    pairs = dict(y=(back(y), wy), h_n=(back(h_n), wh), c_n=(back(c_n), wc),
                 dx=(back(dx), wdx), dh0=(back(dh0), wdh0), dc0=(back(dc0), wdc0))
    pairs.update({k: (back(v), wg[k]) for k, v in grads.items()})
    assert_rounded_once(pairs, storage)


@pytest.mark.parametrize("persistent", ["0", "1"], ids=["step-loop", "persistent"])
@pytest.mark.parametrize("storage", list(STORAGES))
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_against_cudnn_same_storage(kind, storage, persistent, monkeypatch):
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", persistent)
    Tn, Bn, In, Hn = 40, 4, 32, 64
    dt = STORAGES[storage]
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(In, Hn).to("cuda", dt)
    x = torch.randn(Tn, Bn, In, device="cuda").to(dt)
    params = {k: v.detach().double().cpu().numpy() for k, v in theirs.named_parameters()}
    mode = kind.lower()
    want, _, _, _ = ref.stack_forward(mode, x.double().cpu().numpy(), params)
    with torch.no_grad():
        y_cudnn = theirs(x)[0]
        y_ours, _, _, _ = F.stack_forward(
            mode, x, {k: v.detach() for k, v in theirs.named_parameters()}, training=False)
    torch.cuda.synchronize()
    scale = max(1.0, float(np.abs(want).max()))
    lowp_run = float(np.abs(ref.quantize(want, storage) - want).max())
    err_ours = float(np.abs(back(y_ours) - want).max())
    err_cudnn = float(np.abs(back(y_cudnn) - want).max())
    print(f"{kind} {storage} persistent={persistent}: |ours - f64| {err_ours:.3e}, "
          f"|cuDNN - f64| {err_cudnn:.3e}, low-precision reference run {lowp_run:.3e}")
    assert err_ours <= 2 * lowp_run + 2e-5 * scale


@pytest.mark.parametrize("storage", list(STORAGES))
def test_torch_modules_in_16_bits(storage):
    """fusedrnn.torch modules converted with .bfloat16()/.half() on CUDA: forward and backward
    run (16-bit storage), the output within the bound of test_against_cudnn_same_storage."""
    import fusedrnn.torch as ft

    dt = STORAGES[storage]
    torch.manual_seed(0)
    m = ft.GRU(16, 32, num_layers=2).to("cuda", dt)
    x = torch.randn(20, 3, 16, device="cuda").to(dt).requires_grad_()
    y, h = m(x)
    y.float().pow(2).sum().backward()
    assert y.dtype == dt and x.grad.dtype == dt
    assert all(p.grad is not None and p.grad.dtype == dt for p in m.parameters())
    params = {k: v.detach().double().cpu().numpy() for k, v in m.named_parameters()}
    want, _, _, _ = ref.stack_forward("gru", x.detach().double().cpu().numpy(), params,
                                      num_layers=2)
    lowp_run = float(np.abs(ref.quantize(want, storage) - want).max())
    err = float(np.abs(back(y.detach()) - want).max())
    assert err <= 2 * lowp_run + 2e-5 * max(1.0, float(np.abs(want).max()))
