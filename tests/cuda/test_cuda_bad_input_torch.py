"""Bad input on the CUDA path gives a clear error naming the argument and the devices: a CPU
``lengths`` with a device ``x`` and the other way round, mixed devices, non-contiguous device
arrays, a device that is not there, outputs on the wrong device. Needs a GPU, a fusedrnn built
with CUDA and torch with CUDA; skipped otherwise (tests/test_boundary.py and
tests/test_cuda_api.py check what a machine without a GPU can)."""

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional as F
from fusedrnn import reference as ref
from fusedrnn._loader import _C

if not fusedrnn.cuda.is_available():
    pytest.skip(f"fusedrnn cannot run on CUDA here: {fusedrnn.cuda._why_unavailable()}",
                allow_module_level=True)
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)

T, B, I, H = 5, 3, 4, 6
DEV = "cuda:0"


def params(mode="lstm", device=DEV, dtype=torch.float64, layers=1):
    rng = np.random.default_rng(0)
    G = ref.GATES[mode]
    p = {}
    for l in range(layers):
        p[f"weight_ih_l{l}"] = rng.uniform(-.5, .5, (G * H, I if l == 0 else H))
        p[f"weight_hh_l{l}"] = rng.uniform(-.5, .5, (G * H, H))
    return {k: torch.tensor(v, dtype=dtype, device=device) for k, v in p.items()}


def xs(device=DEV, dtype=torch.float64):
    return torch.randn(T, B, I, dtype=dtype, device=device)


class FakeDeviceArray:
    def __init__(self, device_type=2, device_id=0):
        self.dev = (device_type, device_id)

    def __dlpack_device__(self):
        return self.dev

    def __dlpack__(self, stream=None):  # pragma: no cover - must not be reached
        raise AssertionError("refused before it is exported")


class CudaArrayInterfaceOnly:
    """A torch CUDA tensor seen through __cuda_array_interface__ alone (as a Numba array)."""

    def __init__(self, t):
        self.t = t
        self.__cuda_array_interface__ = t.__cuda_array_interface__


# --- lengths -------------------------------------------------------------------------------

@pytest.mark.parametrize("lengths", [[T] * B, np.full(B, T), torch.full((B,), T)],
                         ids=["list", "numpy", "cpu-tensor"])
def test_host_lengths_with_a_device_x(lengths):
    with pytest.raises(ValueError, match=r"lengths is on cpu but x is on cuda:0: lengths must be "
                                         r"on x's device \(an int64 array there\)"):
        F.stack_forward("lstm", xs(), params(), lengths=lengths)


def test_device_lengths_with_a_host_x():
    p = {k: v.cpu() for k, v in params().items()}
    with pytest.raises(ValueError, match=r"lengths is on cuda:0 but x is on cpu: lengths must "
                                         r"be on x's device"):
        F.stack_forward("lstm", xs("cpu"), p, lengths=torch.full((B,), T, device=DEV))


def test_device_lengths_dtype_shape_and_values():
    p, x = params(), xs()
    with pytest.raises(TypeError, match=r"lengths must have dtype int64 \(the lengths of a "
                                        r"device call\), got int32"):
        F.stack_forward("lstm", x, p, lengths=torch.full((B,), T, dtype=torch.int32,
                                                         device=DEV))
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch,\) = \(3,\), got "
                                         r"\(4,\)"):
        F.stack_forward("lstm", x, p, lengths=torch.full((B + 1,), T, device=DEV))
    for bad in (0, T + 1, -1):
        lengths = torch.tensor([T, bad, 1], device=DEV)
        with pytest.raises(ValueError, match=rf"lengths must lie in \[1, T\] = \[1, {T}\], got "
                                             rf"lengths\[1\] = {bad}"):
            F.stack_forward("lstm", x, p, lengths=lengths)
    strided = torch.full((2 * B,), T, device=DEV)[::2]
    with pytest.raises(ValueError, match=r"lengths is a non-contiguous .* make it contiguous"):
        F.stack_forward("lstm", x, p, lengths=strided)


# --- devices and layouts -------------------------------------------------------------------

def test_non_contiguous_device_arrays_are_refused_not_copied():
    x = torch.randn(B, T, I, dtype=torch.float64, device=DEV).transpose(0, 1)
    with pytest.raises(ValueError, match=r"x is a non-contiguous \(or misaligned\) array on "
                                         r"cuda:0: make it contiguous first"):
        F.stack_forward("lstm", x, params())
    p = params()
    p["weight_hh_l0"] = torch.randn(H, 4 * H, dtype=torch.float64, device=DEV).t()
    with pytest.raises(ValueError, match=r"weight_hh_l0 is a non-contiguous"):
        F.stack_forward("lstm", xs(), p)


def test_host_arrays_in_a_device_call_name_themselves():
    p = params()
    p["weight_hh_l0"] = p["weight_hh_l0"].cpu()
    with pytest.raises(ValueError, match=r"weight_hh_l0 is on cpu but x is on cuda:0: every "
                                         r"array of a call must be on one device"):
        F.stack_forward("lstm", xs(), p)
    with pytest.raises(ValueError, match=r"h0 is on cpu but x is on cuda:0"):
        F.stack_forward("lstm", xs(), params(), h0=torch.zeros(1, B, H, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"weight_ih_l0 is on cuda:0 but x is on cpu"):
        F.stack_forward("lstm", xs("cpu"), params())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="one CUDA device")
def test_arrays_on_two_devices():
    p = params()
    p["weight_ih_l0"] = p["weight_ih_l0"].to("cuda:1")
    with pytest.raises(ValueError, match=r"weight_ih_l0 is on cuda:1 but x is on cuda:0"):
        F.stack_forward("lstm", xs(), p)


def test_a_device_that_is_not_there():
    n = fusedrnn.cuda.device_count()
    with pytest.raises(ValueError, match=rf"x is on cuda:{n + 7}, but this process sees {n} "
                                         r"CUDA device"):
        F.stack_forward("lstm", FakeDeviceArray(2, n + 7), params())
    with pytest.raises(TypeError, match=r"x is on device type 10:0: fusedrnn takes CPU and "
                                        r"CUDA arrays only"):
        F.stack_forward("lstm", FakeDeviceArray(10, 0), params())


def test_requires_grad_is_refused():
    x = xs().requires_grad_()
    with pytest.raises(ValueError, match="x requires grad"):
        F.stack_forward("lstm", x, params())


def test_outputs_must_land_on_x_device():
    x, p = xs(), params()
    kind = _C.CELLS["lstm"]["kind"]
    args = (kind, x, p, 1, False, False, None, None, None, False, 0.0, 0, True, False)
    host = lambda shape, dt: torch.empty(shape, dtype=getattr(torch, dt))  # noqa: E731
    with pytest.raises(ValueError, match=r"the allocator returned an array on cpu, but x is on "
                                         r"cuda:0: outputs must be on x's device"):
        _C.stack_forward(*args, host)
    with pytest.raises(ValueError, match=r"x is on cuda:0, but no allocator was given"):
        _C.stack_forward(*args, None)


@pytest.mark.skipif(torch.cuda.device_count() != 1, reason="a __cuda_array_interface__ x is "
                    "taken to be on the only device")
def test_cuda_array_interface_x_needs_an_allocator_of_its_library():
    with pytest.raises(ValueError, match=r"x is on cuda:0, but no allocator was given"):
        F.stack_forward("lstm", CudaArrayInterfaceOnly(xs()), params())


def test_device_calls_are_stamped_on_the_device():
    """A training forward stamps x, h0, c0 and the parameters on the device; an in-place change
    before backward raises naming the array, as on the CPU; unchanged arrays pass."""
    x, p = xs(), params()
    y, _, _, ctx = F.stack_forward("lstm", x, p)
    assert isinstance(ctx.stamps, torch.Tensor) and ctx.stamps.device == x.device
    assert ctx.stamps.dtype == torch.uint8 and ctx.stamps.numel() == 8 * (1 + len(p))
    F.stack_backward(ctx, torch.ones_like(y))  # unchanged: fine, twice
    F.stack_backward(ctx, torch.ones_like(y))
    p["weight_hh_l0"][0, 0] += 1e-6
    with pytest.raises(RuntimeError, match=r"'weight_hh_l0' was modified \(by an inplace"):
        F.stack_backward(ctx, torch.ones_like(y))
    y, _, _, ctx = F.stack_forward("lstm", x, p)
    x[-1, -1, -1] = 7.0
    with pytest.raises(RuntimeError, match=r"'x' was modified"):
        F.stack_backward(ctx, torch.ones_like(y))
    kind = _C.CELLS["lstm"]["kind"]
    with pytest.raises(ValueError, match=r"stamps must have shape"):
        _C.stack_backward(kind, x, p, 1, False, False, None, None, None, False, 0.0, 0,
                          ctx.reserve, torch.zeros(3, dtype=torch.uint8, device=x.device),
                          None, None, None, None, F._allocator(x), stream=F._stream(x))
    _, _, _, ctx = F.stack_forward("lstm", x, p, check_inplace=False)
    assert ctx.stamps is None


# --- the torch adapter and the NumPy modules ---------------------------------------------------

def test_torch_adapter_mixed_devices():
    import fusedrnn.torch as ft

    with pytest.raises(RuntimeError, match=r"input is on cuda:0 but the parameters are on cpu: "
                                           r"all tensors must be on one device"):
        ft.LSTM(I, H)(torch.randn(T, B, I, device=DEV))
    m = ft.GRU(I, H).to(DEV)
    with pytest.raises(RuntimeError, match=r"input is on cpu but the parameters are on cuda:0"):
        m(torch.randn(T, B, I))
    with pytest.raises(RuntimeError, match=r"hx is on cpu but the parameters are on cuda:0"):
        m(torch.randn(T, B, I, device=DEV), torch.zeros(1, B, H))


def test_module_on_a_device_refuses_host_arrays():
    pytest.importorskip("cupy")
    m = fusedrnn.LSTM(I, H, dtype=np.float64).to("cuda")
    with pytest.raises(ValueError, match=r"LSTM: x is a ndarray but the module is on cuda:0"):
        m(np.zeros((T, B, I)))
    m.to("cpu")
    import cupy

    with pytest.raises(ValueError, match=r"x is a ndarray on a CUDA device but the module is "
                                         r"on cpu"):
        m(cupy.zeros((T, B, I)))
