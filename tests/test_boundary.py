"""The native boundary: array views (NumPy and DLPack), caller-owned training state, devices.

One native entry point (``_C.stack_forward``/``_C.stack_backward``) takes NumPy arrays or any
object with ``__dlpack__`` and returns outputs of the caller's kind, allocated by the caller's
library, as is the training state kept between forward and backward (``ctx.reserve``)."""

import numpy as np
import pytest

from fusedrnn import functional as F
from fusedrnn import reference as ref
from fusedrnn._loader import _C

T, B, I, H = 5, 3, 4, 6


def stack_params(mode, layers=2, D=2, proj=0, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    G = ref.GATES[mode]
    R = proj or H
    p = {}
    for l in range(layers):
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            p["weight_ih" + sfx] = rng.uniform(-.5, .5, (G * H, I if l == 0 else D * R))
            p["weight_hh" + sfx] = rng.uniform(-.5, .5, (G * H, R))
            p["bias_ih" + sfx] = rng.uniform(-.5, .5, G * H)
            p["bias_hh" + sfx] = rng.uniform(-.5, .5, G * H)
            if proj:
                p["weight_hr" + sfx] = rng.uniform(-.5, .5, (proj, H))
    return {k: v.astype(dtype) for k, v in p.items()}


def test_cell_table_is_the_reference_gate_table():
    for name, info in _C.CELLS.items():
        mode = "gru" if name == "gru_v1" else name
        assert info["gates"] == ref.GATES[mode], name
    assert _C.CELLS["lstm"]["cell_state"] and not _C.CELLS["gru"]["cell_state"]


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_reserve_is_caller_owned_and_laid_out_by_state_layout(batch_first, dropout):
    p = stack_params("lstm", proj=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    y, h_n, c_n, ctx = F.stack_forward("lstm", x, p, num_layers=2, bidirectional=True,
                                       batch_first=batch_first, dropout=dropout, seed=7)
    lay = _C.state_layout(_C.CELLS["lstm"]["kind"], T, B, I, H, 2, 2, True, batch_first,
                          dropout, 4)
    assert isinstance(ctx.reserve, np.ndarray) and ctx.reserve.dtype == np.uint8
    assert ctx.reserve.shape == (lay["bytes"],)
    assert not ctx.reserve.flags.writeable  # backward's input: not to be changed in between
    assert all(o % 64 == 0 for o in lay["saved"] + lay["h_prev"] + lay["proj_in"])
    assert (lay["x_tb"] >= 0) == batch_first
    assert (lay["keep"][0] >= 0) == (dropout > 0)
    masks = ctx.keep_masks
    assert len(masks) == 1 and ((masks[0] is None) == (dropout == 0))
    if dropout:
        assert masks[0].shape == (T, B, 2 * 2) and 0 < masks[0].mean() < 1
    # inference keeps nothing
    assert F.stack_forward("lstm", x, p, num_layers=2, bidirectional=True,
                           batch_first=batch_first, training=False)[3] is None


def test_released_context_raises_and_restored_one_works():
    p = stack_params("gru")
    x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    _, _, _, ctx = F.stack_forward("gru", x, p, num_layers=2, bidirectional=True)
    first = F.stack_backward(ctx, np.ones((T, B, 2 * H), np.float32))
    arrays = ctx.saved_arrays()
    ctx.release_arrays()
    with pytest.raises(RuntimeError, match="released"):
        F.stack_backward(ctx, np.ones((T, B, 2 * H), np.float32))
    ctx.restore_arrays(arrays)
    again = F.stack_backward(ctx, np.ones((T, B, 2 * H), np.float32))
    np.testing.assert_array_equal(first[0], again[0])
    for k in first[3]:
        np.testing.assert_array_equal(first[3][k], again[3][k])


def test_reserve_from_another_call_is_rejected():
    p = stack_params("lstm")
    x = np.zeros((T, B, I), np.float32)
    _, _, _, ctx = F.stack_forward("lstm", x, p, num_layers=2, bidirectional=True)
    _, _, _, other = F.stack_forward("lstm", x[:2], p, num_layers=2, bidirectional=True)
    ctx.reserve = other.reserve
    with pytest.raises(ValueError, match=r"reserve must have shape"):
        F.stack_backward(ctx)


class FakeDeviceArray:
    """An array that says it lives on a CUDA device (DLPack device type 2)."""

    def __init__(self, device_type=2):
        self.device_type = device_type

    def __dlpack_device__(self):
        return (self.device_type, 0)

    def __dlpack__(self, stream=None):  # pragma: no cover - must not be reached
        raise AssertionError("a device array must be refused before it is exported")


@pytest.mark.parametrize("arg", ["x", "h0", "weight_hh_l0"])
def test_device_arrays_get_a_clear_error(arg):
    p = stack_params("rnn_tanh", layers=1, D=1)
    x = np.zeros((T, B, I), np.float32)
    h0 = np.zeros((1, B, H), np.float32)
    if arg == "x":
        x = FakeDeviceArray()
    elif arg == "h0":
        h0 = FakeDeviceArray()
    else:
        p[arg] = FakeDeviceArray()
    if _C.config()["cuda"]:
        pytest.skip("this build has the CUDA backend")
    with pytest.raises(TypeError, match=rf"{arg} is on cuda:0, but this fusedrnn was built "
                                        r"without CUDA"):
        F.stack_forward("rnn_tanh", x, p, h0=h0)


WITH_CUDA = _C.config()["cuda"]
needs_cpu_only_build = pytest.mark.skipif(WITH_CUDA, reason="this build has the CUDA backend")


@needs_cpu_only_build
@pytest.mark.parametrize("device_type, shown", [(13, "cuda:0"), (10, "device type 10:0")])
def test_other_device_types_get_the_built_without_cuda_error(device_type, shown):
    # 13 (CUDA managed memory) is taken as CUDA; any device array is refused before export
    p = stack_params("rnn_tanh", layers=1, D=1)
    with pytest.raises(TypeError, match=rf"x is on {shown}, but this fusedrnn was built "
                                        r"without CUDA"):
        F.stack_forward("rnn_tanh", FakeDeviceArray(device_type), p)


class FakeCudaArrayInterface:
    """An array with only __cuda_array_interface__ (as Numba's device arrays)."""

    __cuda_array_interface__ = {"shape": (B,), "typestr": "<i8", "data": (4096, False),
                                "strides": None, "version": 3, "stream": 1}


@needs_cpu_only_build
def test_cuda_array_interface_gets_the_built_without_cuda_error():
    p = stack_params("rnn_tanh", layers=1, D=1)
    with pytest.raises(TypeError, match=r"x is a CUDA array \(__cuda_array_interface__\), but "
                                        r"this fusedrnn was built without CUDA"):
        F.stack_forward("rnn_tanh", FakeCudaArrayInterface(), p)
    with pytest.raises(TypeError, match=r"weight_hh_l0 is a CUDA array"):
        F.stack_forward("rnn_tanh", np.zeros((T, B, I), np.float32),
                        {**p, "weight_hh_l0": FakeCudaArrayInterface()})


@pytest.mark.parametrize("lengths, shown", [(FakeDeviceArray(), "cuda:0"),
                                            (FakeCudaArrayInterface(),
                                             r"cuda \(__cuda_array_interface__\)")])
def test_device_lengths_with_a_host_x_name_both_devices(lengths, shown):
    # checked before lengths is exported or converted, in every build
    p = stack_params("lstm", layers=1, D=1)
    with pytest.raises(ValueError, match=rf"lengths is on {shown} but x is on cpu: lengths must "
                                         r"be on x's device"):
        F.stack_forward("lstm", np.zeros((T, B, I), np.float32), p, lengths=lengths)


@needs_cpu_only_build
def test_gemm_refuses_device_arrays():
    c = np.zeros((2, 2), np.float32)
    with pytest.raises(TypeError, match=r"a is on cuda:0, but this fusedrnn was built without"):
        _C.gemm(FakeDeviceArray(), c, c)


def test_stream_keyword_is_ignored_for_host_arrays():
    p = stack_params("lstm", layers=1, D=1)
    x = np.random.default_rng(3).standard_normal((T, B, I)).astype(np.float32)
    kind = _C.CELLS["lstm"]["kind"]
    args = (kind, x, p, 1, False, False, None, None, None, False, 0.0, 0, True, True, None)
    y0, _, _, r0, s0 = _C.stack_forward(*args)
    y1, _, _, r1, s1 = _C.stack_forward(*args, stream=12345)
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(s0, s1)  # host calls are stamped whatever the stream
    dy = np.ones_like(y0)
    back = (kind, x, p, 1, False, False, None, None, None, False, 0.0, 0)
    g0 = _C.stack_backward(*back, r0, s0, dy, None, None, None, None)
    g1 = _C.stack_backward(*back, r1, s1, dy, None, None, None, None, stream=7)
    np.testing.assert_array_equal(g0[0], g1[0])
    with pytest.raises(TypeError):
        _C.stack_forward(*args, stream=-1)


def test_stream_and_allocator_of_host_arrays():
    x = np.zeros((T, B, I), np.float32)
    assert F._stream(x) == 0 and F._allocator(x) is None
    assert F._stream(FakeDeviceArray()) == 0 and F._allocator(FakeDeviceArray()) is None


def test_non_array_argument_names_itself():
    p = stack_params("rnn_tanh", layers=1, D=1)
    p["weight_ih_l0"] = [[1.0]]
    with pytest.raises(TypeError, match=r"weight_ih_l0 must be a numpy.ndarray or an array "
                                        r"with __dlpack__"):
        F.stack_forward("rnn_tanh", np.zeros((T, B, I), np.float32), p)


# ---------------------------------------------------------------------------------------------
# torch tensors through functional (DLPack), skipped without torch

def torch_or_skip():
    return pytest.importorskip("torch")


def test_torch_cpu_tensors_run_on_the_default_stream_argument():
    torch = torch_or_skip()
    x = torch.zeros(T, B, I)
    assert F._stream(x) == 0
    assert F._allocator(x)((2, 3), "float64").dtype == torch.float64


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_relu"])
def test_torch_tensors_give_torch_outputs_equal_to_numpy(mode):
    torch = torch_or_skip()
    p = stack_params(mode, proj=2 if mode == "lstm" else 0, dtype=np.float64)
    x = np.random.default_rng(3).standard_normal((T, B, I))
    lengths = np.array([5, 2, 4])
    kw = dict(num_layers=2, bidirectional=True, lengths=lengths, dropout=0.3, seed=5)
    y, h_n, c_n, ctx = F.stack_forward(mode, x, p, **kw)
    pt = {k: torch.from_numpy(v) for k, v in p.items()}
    yt, h_nt, c_nt, ctxt = F.stack_forward(mode, torch.from_numpy(x), pt, **kw)
    assert isinstance(yt, torch.Tensor) and isinstance(ctxt.reserve, torch.Tensor)
    np.testing.assert_array_equal(yt.numpy(), y)
    np.testing.assert_array_equal(h_nt.numpy(), h_n)
    dy = np.random.default_rng(4).standard_normal(y.shape)
    dx, dh0, dc0, g = F.stack_backward(ctx, dy)
    dxt, dh0t, dc0t, gt = F.stack_backward(ctxt, torch.from_numpy(dy))
    assert isinstance(dxt, torch.Tensor)
    np.testing.assert_array_equal(dxt.numpy(), dx)
    np.testing.assert_array_equal(dh0t.numpy(), dh0)
    for k in g:
        assert isinstance(gt[k], torch.Tensor)
        np.testing.assert_array_equal(gt[k].numpy(), g[k])
    for a, b in zip(ctx.keep_masks, ctxt.keep_masks):
        np.testing.assert_array_equal(a, b.numpy())


def test_strided_torch_tensors_are_copied_once_and_correct():
    torch = torch_or_skip()
    p = stack_params("gru", layers=1, D=1)
    x = np.random.default_rng(5).standard_normal((T, B, I)).astype(np.float32)
    want = F.stack_forward("gru", x, p, training=False)[0]
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))).transpose(0, 1)
    assert not xt.is_contiguous()
    pt = {k: torch.from_numpy(np.asfortranarray(v)).t().contiguous().t() if v.ndim == 2
          else torch.from_numpy(v) for k, v in p.items()}
    got = F.stack_forward("gru", xt, pt, training=False)[0]
    np.testing.assert_array_equal(got.numpy(), want)


def test_tensor_that_requires_grad_is_named():
    torch = torch_or_skip()
    p = {k: torch.from_numpy(v) for k, v in stack_params("lstm", layers=1, D=1).items()}
    x = torch.zeros(T, B, I, requires_grad=True)
    with pytest.raises(ValueError, match="x requires grad: .*pass a detached tensor"):
        F.stack_forward("lstm", x, p)


def test_torch_grads_accumulate_in_place_and_strided_grads_are_refused():
    torch = torch_or_skip()
    p = {k: torch.from_numpy(v) for k, v in stack_params("lstm", layers=1, D=1).items()}
    x = torch.randn(T, B, I)
    _, _, _, ctx = F.stack_forward("lstm", x, p)
    _, _, _, fresh = F.stack_backward(ctx, torch.ones(T, B, H))
    acc = {k: torch.ones_like(v) for k, v in p.items()}
    out = F.stack_backward(ctx, torch.ones(T, B, H), grads=acc)[3]
    assert out is acc
    for k in p:
        torch.testing.assert_close(acc[k], fresh[k] + 1, rtol=0, atol=1e-6)
    acc["weight_hh_l0"] = torch.zeros(H, 4 * H).t()  # right shape, transposed layout
    with pytest.raises(ValueError, match=r"grads\['weight_hh_l0'\] must be C-contiguous"):
        F.stack_backward(ctx, torch.ones(T, B, H), grads=acc)


def test_mixed_numpy_and_torch_arrays_in_one_call():
    torch = torch_or_skip()
    p = stack_params("rnn_tanh", layers=1, D=1)
    x = np.random.default_rng(6).standard_normal((T, B, I)).astype(np.float32)
    want = F.stack_forward("rnn_tanh", x, p, training=False)[0]
    mixed = dict(p, weight_hh_l0=torch.from_numpy(p["weight_hh_l0"]))
    got = F.stack_forward("rnn_tanh", x, mixed, training=False)[0]
    assert isinstance(got, np.ndarray)  # outputs follow x
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not WITH_CUDA or _C.cuda_device_count() > 0,
                    reason="needs a CUDA build on a machine without a usable GPU (CI)")
@pytest.mark.parametrize("arg", ["x", "weight_hh_l0"])
def test_cuda_build_without_a_gpu_says_so(arg):
    """The CUDA build on a machine with no GPU or driver (cudaGetDeviceCount: 35 or 100): a
    device array is refused by name before it is exported, nothing crashes."""
    p = stack_params("rnn_tanh", layers=1, D=1)
    x = np.zeros((T, B, I), np.float32)
    for fake, shown in ((FakeDeviceArray(), "is on cuda:0"),
                        (FakeCudaArrayInterface(), r"is a CUDA array")):
        if arg == "x":
            args = (fake, p)
        else:
            args = (x, {**p, arg: fake})
        with pytest.raises(RuntimeError, match=rf"{arg} {shown}.*no CUDA device is usable"):
            F.stack_forward("rnn_tanh", *args)
