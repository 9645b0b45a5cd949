"""fusedrnn.cuda and the device-array contract of fusedrnn.functional: device queries, results
of the caller's kind on the caller's device, work on the caller's stream, several GPUs, and
the NumPy-style modules on the GPU."""

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional as F
from fusedrnn import reference as ref

from _cuda_support import (LIBS, device_count, get, put, put_all, rel, side_stream, spin,
                           synchronize, where, xp)

T, B, I, H = 7, 4, 5, 6
LENGTHS = np.array([7, 3, 1, 5])


def lstm_case(dtype=np.float64, seed=0, layers=2, bidir=True):
    rng = np.random.default_rng(seed)
    D = 2 if bidir else 1
    u = lambda *s: rng.uniform(-1, 1, s).astype(dtype)
    p = {}
    for l in range(layers):
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            p["weight_ih" + sfx] = u(4 * H, I if l == 0 else D * H)
            p["weight_hh" + sfx] = u(4 * H, H)
            p["bias_ih" + sfx] = u(4 * H)
            p["bias_hh" + sfx] = u(4 * H)
    return dict(x=u(T, B, I), h0=u(layers * D, B, H), c0=u(layers * D, B, H), params=p,
                dy=u(T, B, D * H)), dict(num_layers=layers, bidirectional=bidir)


def test_device_queries():
    import fusedrnn.cuda as fcuda
    assert fusedrnn.config()["cuda"] is True
    assert fcuda.is_available() is True
    n = fcuda.device_count()
    assert isinstance(n, int) and n >= 1
    if "torch" in LIBS:
        import torch
        assert n == torch.cuda.device_count()
    if "cupy" in LIBS:
        import cupy
        assert n == cupy.cuda.runtime.getDeviceCount()
    for i in range(n):
        name = fcuda.get_device_name(i)
        assert isinstance(name, str) and name.strip(), name
    if "torch" in LIBS:
        import torch
        assert fcuda.get_device_name(0) == torch.cuda.get_device_name(0)
    with pytest.raises((ValueError, IndexError, RuntimeError)):
        fcuda.get_device_name(n)
    print(f"\nfusedrnn.cuda: {n} device(s), 0 = {fcuda.get_device_name(0)}")


@pytest.mark.parametrize("lib", LIBS)
def test_results_are_of_the_callers_kind_on_its_device(lib):
    c, kw = lstm_case()
    on = lambda a: put(a, lib)
    x = on(c["x"])
    y, h_n, c_n, ctx = F.stack_forward("lstm", x, put_all(c["params"], lib), h0=on(c["h0"]),
                                       c0=on(c["c0"]), lengths=on(LENGTHS), **kw)
    for a in (y, h_n, c_n, ctx.reserve):
        assert where(a) == where(x), where(a)
    assert get(ctx.reserve).dtype == np.uint8
    dx, dh0, dc0, grads = F.stack_backward(ctx, on(c["dy"]))
    for a in (dx, dh0, dc0, *grads.values()):
        assert where(a) == where(x), where(a)
    # single-layer API too
    p = c["params"]
    y1, h1, c1, ctx1 = F.lstm_forward(x, on(p["weight_ih_l0"]), on(p["weight_hh_l0"]),
                                      lengths=on(LENGTHS))
    g1 = F.lstm_backward(ctx1, on(np.ones((T, B, H))))
    for a in (y1, h1, c1, *g1.values()):
        assert where(a) == where(x), where(a)


@pytest.mark.parametrize("lib", LIBS)
def test_cuda_matches_cpu_float64(lib):
    c, kw = lstm_case()
    on = lambda a: put(a, lib)
    y, h_n, c_n, ctx = F.stack_forward("lstm", on(c["x"]), put_all(c["params"], lib),
                                       h0=on(c["h0"]), c0=on(c["c0"]), lengths=on(LENGTHS),
                                       batch_first=False, **kw)
    got = [y, h_n, c_n, *F.stack_backward(ctx, on(c["dy"]))[:3]]
    ry, rh, rc, rctx = ref.stack_forward("lstm", c["x"], c["params"], h0=c["h0"], c0=c["c0"],
                                         lengths=LENGTHS, **kw)
    want = [ry, rh, rc, *ref.stack_backward(rctx, c["dy"])[:3]]
    for a, b in zip(got, want):
        assert rel(a, b) <= 1e-10


@pytest.mark.parametrize("lib", LIBS)
def test_work_runs_on_the_callers_stream(lib):
    """On a non-blocking side stream: a long spin kernel, then the input is written, then
    fusedrnn runs. Queued on that stream, fusedrnn reads the input after it is written; on any
    other stream it would read the zeros that were there before."""
    c, kw = lstm_case(np.float32, seed=1)
    on = lambda a: put(a, lib)
    params = put_all(c["params"], lib)
    want = [get(a) for a in F.stack_forward("lstm", on(c["x"]), params, **kw)[:3]]
    mod = xp(lib)
    src = on(c["x"])
    x = mod.zeros(src.shape, dtype=src.dtype) if lib == "cupy" else mod.zeros_like(src)
    synchronize(lib)
    stream, current = side_stream(lib)
    with current:
        spin(lib)
        if lib == "cupy":
            x[...] = src
        else:
            x.copy_(src)
        y, h_n, c_n, ctx = F.stack_forward("lstm", x, params, **kw)
        dx = F.stack_backward(ctx, y)[0]  # consumes y on the same stream
    stream.synchronize()
    for a, b in zip((y, h_n, c_n), want):
        np.testing.assert_array_equal(get(a), b)
    assert np.isfinite(get(dx)).all()


def test_torch_module_runs_on_the_current_stream():
    if "torch" not in LIBS:
        pytest.skip("torch has no CUDA here")
    import torch
    import fusedrnn.torch as ft
    torch.manual_seed(0)
    m = ft.GRU(I, H, num_layers=2).to("cuda")
    src = torch.randn(T, B, I, device="cuda")
    want = m(src)[0].detach().cpu()
    x = torch.zeros_like(src)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        spin("torch")
        x.copy_(src)
        y = m(x)[0]
    s.synchronize()
    assert torch.equal(y.detach().cpu(), want)


def test_several_gpus():
    n = device_count()
    if n < 2:
        pytest.skip("one GPU here")
    lib = LIBS[0]
    c, kw = lstm_case()
    results = []
    for dev in range(n):
        on = lambda a, dev=dev: put(a, lib, dev)
        y, h_n, _, ctx = F.stack_forward("lstm", on(c["x"]), put_all(c["params"], lib, dev),
                                         lengths=on(LENGTHS), **kw)
        dx = F.stack_backward(ctx, on(c["dy"]))[0]
        assert where(y)[1] == where(dx)[1] == dev
        results.append([get(y), get(h_n), get(dx)])
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            assert rel(a, b) <= 1e-12


@pytest.mark.parametrize("lib", LIBS)
def test_tiny_shapes(lib):
    """T = 1, B = 1, H = 1 on the device (launch grids of one block)."""
    rng = np.random.default_rng(2)
    for mode, G in (("lstm", 4), ("gru", 3), ("rnn_relu", 1)):
        p = {"weight_ih_l0": rng.uniform(-1, 1, (G, 1)), "weight_hh_l0": rng.uniform(-1, 1, (G, 1)),
             "bias_ih_l0": rng.uniform(-1, 1, G), "bias_hh_l0": rng.uniform(-1, 1, G)}
        x = rng.uniform(-1, 1, (1, 1, 1))
        y, h, c, ctx = F.stack_forward(mode, put(x, lib), put_all(p, lib))
        ry, rh, rc, rctx = ref.stack_forward(mode, x, p)
        assert rel(y, ry) <= 1e-12 and rel(h, rh) <= 1e-12
        g = F.stack_backward(ctx, put(np.ones_like(x), lib))[3]
        rg = ref.stack_backward(rctx, np.ones_like(x))[3]
        for k in rg:
            assert rel(g[k], rg[k]) <= 1e-12, (mode, k)


def test_numpy_style_modules_move_to_the_gpu():
    """Issue 11 item 3: fusedrnn.LSTM/GRU/RNN get .to("cuda") / .to("cpu"); on the GPU they
    take device arrays (CuPy) and give the same results."""
    m = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=3)
    if not hasattr(m, "to"):
        pytest.skip("fusedrnn.LSTM has no .to() yet (issue 11 item 3)")
    if "cupy" not in LIBS:
        pytest.skip("the NumPy-style modules take CuPy arrays on the GPU; no CuPy here")
    import cupy
    x = np.random.default_rng(0).uniform(-1, 1, (T, B, I))
    m.train()
    y_cpu, (h_cpu, _) = m(x, lengths=LENGTHS)
    dx_cpu, _ = m.backward(np.ones_like(y_cpu))
    g_cpu = {k: v.copy() for k, v in m.grads.items()}
    m.zero_grad()
    m.to("cuda")
    y, (h, _) = m(cupy.asarray(x), lengths=cupy.asarray(LENGTHS))
    assert isinstance(y, cupy.ndarray)
    dx, _ = m.backward(cupy.ones_like(y))
    assert rel(y, y_cpu) <= 1e-12 and rel(h, h_cpu) <= 1e-12 and rel(dx, dx_cpu) <= 1e-12
    for k in g_cpu:
        assert rel(m.grads[k], g_cpu[k]) <= 1e-12, k
    m.to("cpu")
    assert isinstance(m(x, lengths=LENGTHS)[0], np.ndarray)
