"""Device arrays through the Python layer: functional on torch CUDA tensors, CuPy arrays and
__cuda_array_interface__ objects, on non-default streams; the NumPy modules moved with
``to("cuda")``; ``fusedrnn.torch`` modules on CUDA. Each against the CPU path on the same
inputs (float64, 1e-10). Needs a GPU and a fusedrnn built with CUDA; skipped otherwise."""

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional as F
from fusedrnn import reference as ref

if not fusedrnn.cuda.is_available():
    pytest.skip(f"fusedrnn cannot run on CUDA here: {fusedrnn.cuda._why_unavailable()}",
                allow_module_level=True)

T, B, I, H = 6, 3, 4, 5
LENGTHS = np.array([T, 2, 1], np.int64)
TOL = dict(rtol=0, atol=1e-10)


def np_params(mode, layers=2, D=2, seed=0):
    rng = np.random.default_rng(seed)
    G = ref.GATES[mode]
    p = {}
    for l in range(layers):
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            p["weight_ih" + sfx] = rng.uniform(-.5, .5, (G * H, I if l == 0 else D * H))
            p["weight_hh" + sfx] = rng.uniform(-.5, .5, (G * H, H))
            p["bias_ih" + sfx] = rng.uniform(-.5, .5, G * H)
            p["bias_hh" + sfx] = rng.uniform(-.5, .5, G * H)
    return p


def cpu_run(mode, x, p, dy, **kw):
    y, h_n, c_n, ctx = F.stack_forward(mode, x, p, num_layers=2, bidirectional=True, **kw)
    return (y, h_n, c_n), F.stack_backward(ctx, dy)


def inputs(seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, I)), rng.standard_normal((T, B, 2 * H))


def close(got, want, host):
    if want is None:
        assert got is None
        return
    np.testing.assert_allclose(host(got), want, **TOL)


# --- torch CUDA tensors ----------------------------------------------------------------------

@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return torch


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_torch_tensors_on_a_side_stream_match_the_cpu(torch, mode):
    x, dy = inputs()
    want_fwd, want_bwd = cpu_run(mode, x, np_params(mode), dy, lengths=LENGTHS)
    dev = torch.device("cuda:0")
    tp = {k: torch.from_numpy(v).to(dev) for k, v in np_params(mode).items()}
    tx, tdy = torch.from_numpy(x).to(dev), torch.from_numpy(dy).to(dev)
    tl = torch.from_numpy(LENGTHS).to(dev)
    s = torch.cuda.Stream(dev)
    s.wait_stream(torch.cuda.current_stream(dev))  # the inputs were made on the default stream
    with torch.cuda.stream(s):
        y, h_n, c_n, ctx = F.stack_forward(mode, tx, tp, num_layers=2, bidirectional=True,
                                           lengths=tl)
        back = F.stack_backward(ctx, tdy)
    torch.cuda.current_stream(dev).wait_stream(s)
    host = lambda t: t.cpu().numpy()  # noqa: E731
    assert isinstance(y, torch.Tensor) and y.device == dev and ctx.reserve.device == dev
    assert isinstance(ctx.stamps, torch.Tensor) and ctx.stamps.device == dev
    for got, want in zip((y, h_n, c_n), want_fwd):
        close(got, want, host)
    for got, want in zip(back[:3], want_bwd[:3]):
        close(got, want, host)
    for k, g in want_bwd[3].items():
        close(back[3][k], g, host)


def test_torch_dropout_masks_are_the_cpus(torch):
    x, dy = inputs()
    p = np_params("lstm")
    _, _, _, ctx = F.stack_forward("lstm", x, p, num_layers=2, bidirectional=True, dropout=0.4,
                                   seed=11)
    tp = {k: torch.from_numpy(v).cuda() for k, v in p.items()}
    _, _, _, tctx = F.stack_forward("lstm", torch.from_numpy(x).cuda(), tp, num_layers=2,
                                     bidirectional=True, dropout=0.4, seed=11)
    cpu_masks, dev_masks = ctx.keep_masks, tctx.keep_masks
    assert dev_masks[0].device.type == "cuda"
    np.testing.assert_array_equal(dev_masks[0].cpu().numpy(), cpu_masks[0])


def test_cuda_array_interface_weights(torch):
    class CaiOnly:
        def __init__(self, t):
            self.t = t  # keeps the memory alive
            self.__cuda_array_interface__ = t.__cuda_array_interface__

    x, dy = inputs()
    want_fwd, _ = cpu_run("gru", x, np_params("gru"), dy)
    tp = {k: CaiOnly(torch.from_numpy(v).cuda()) for k, v in np_params("gru").items()}
    y, h_n, _, _ = F.stack_forward("gru", torch.from_numpy(x).cuda(), tp, num_layers=2,
                                   bidirectional=True)
    close(y, want_fwd[0], lambda t: t.cpu().numpy())
    close(h_n, want_fwd[1], lambda t: t.cpu().numpy())


def test_torch_adapter_on_cuda_matches_cpu(torch):
    import fusedrnn.torch as ft
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    cpu = ft.LSTM(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    gpu = ft.LSTM(I, H, num_layers=2, bidirectional=True, dtype=torch.float64).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    for m, xx in ((cpu, x.clone()), (gpu, x.cuda())):  # leaves of their own
        xx.requires_grad_()
        y, (h_n, c_n) = m(xx)
        (y.sum() + h_n.square().sum()).backward()  # y's gradient arrives expanded
        m.out = (y.detach().cpu(), xx.grad.cpu(), m.weight_hh_l1.grad.cpu())
    for a, b in zip(cpu.out, gpu.out):
        np.testing.assert_allclose(b.numpy(), a.numpy(), **TOL)
    packed = pack_padded_sequence(x, torch.from_numpy(LENGTHS), enforce_sorted=False)
    yc, _ = cpu(packed)
    yg, _ = gpu(packed.to("cuda"))
    np.testing.assert_allclose(yg.data.cpu().numpy(), yc.data.detach().numpy(), **TOL)


# --- CuPy ----------------------------------------------------------------------------------

@pytest.fixture
def cupy():
    return pytest.importorskip("cupy")


def test_cupy_arrays_on_a_side_stream_match_the_cpu(cupy):
    x, dy = inputs()
    want_fwd, want_bwd = cpu_run("lstm", x, np_params("lstm"), dy, lengths=LENGTHS)
    cp = {k: cupy.asarray(v) for k, v in np_params("lstm").items()}
    cx, cdy, cl = cupy.asarray(x), cupy.asarray(dy), cupy.asarray(LENGTHS)
    cupy.cuda.get_current_stream().synchronize()
    with cupy.cuda.Stream(non_blocking=True) as s:
        y, h_n, c_n, ctx = F.stack_forward("lstm", cx, cp, num_layers=2, bidirectional=True,
                                           lengths=cl)
        back = F.stack_backward(ctx, cdy)
        s.synchronize()
    assert isinstance(y, cupy.ndarray) and isinstance(ctx.reserve, cupy.ndarray)
    for got, want in zip((y, h_n, c_n), want_fwd):
        close(got, want, cupy.asnumpy)
    for got, want in zip(back[:3], want_bwd[:3]):
        close(got, want, cupy.asnumpy)
    for k, g in want_bwd[3].items():
        close(back[3][k], g, cupy.asnumpy)


@pytest.mark.parametrize("cls", [fusedrnn.LSTM, fusedrnn.GRU])
def test_module_to_cuda_and_back(cupy, cls):
    x, dy = inputs()
    ref_m = cls(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=3).train()
    m = cls(I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=3).train()
    assert m.to("cuda") is m and m.device == "cuda:0"
    assert all(isinstance(p, cupy.ndarray) for p in m.parameters())
    assert all(isinstance(g, cupy.ndarray) for g in m.grads.values())
    want_y, _ = ref_m(x, lengths=LENGTHS)
    want_dx, _ = ref_m.backward(dy)
    y, _ = m(cupy.asarray(x), lengths=cupy.asarray(LENGTHS))
    dx, _ = m.backward(cupy.asarray(dy))
    close(y, want_y, cupy.asnumpy)
    close(dx, want_dx, cupy.asnumpy)
    for k, g in ref_m.grads.items():
        close(m.grads[k], g, cupy.asnumpy)
    # unbatched input on the device
    yu, _ = m(cupy.asarray(x[:, 0]))
    close(yu, ref_m(x[:, 0])[0], cupy.asnumpy)
    sd = m.state_dict()
    assert all(isinstance(v, cupy.ndarray) for v in sd.values())
    m.load_state_dict(ref_m.state_dict())  # NumPy values onto the device
    assert m.to("cpu") is m and m.device == "cpu"
    assert all(isinstance(p, np.ndarray) for p in m.parameters())
    for k, g in ref_m.grads.items():
        np.testing.assert_allclose(m.grads[k], g, **TOL)


def test_cell_to_cuda(cupy):
    rng = np.random.default_rng(5)
    x, h, dh = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal(
        (B, H))
    ref_c = fusedrnn.GRUCell(I, H, dtype=np.float64, seed=2).train()
    c = fusedrnn.GRUCell(I, H, dtype=np.float64, seed=2).train().to("cuda")
    h1 = c(cupy.asarray(x), cupy.asarray(h))
    close(h1, ref_c(x, h), cupy.asnumpy)
    dx, dh0 = c.backward(cupy.asarray(dh))
    want_dx, want_dh0 = ref_c.backward(dh)
    close(dx, want_dx, cupy.asnumpy)
    close(dh0, want_dh0, cupy.asnumpy)
    close(c.grads["weight_hh"], ref_c.grads["weight_hh"], cupy.asnumpy)
