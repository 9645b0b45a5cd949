"""Helpers of tests/cuda: device arrays of either library, comparisons, cuDNN's float32 mode.

Imported by the test modules of this directory (by name; conftest.py is not importable, see
tests/_support.py). Nothing here touches a GPU at import time: without one every test of the
directory is skipped by conftest.py, but the modules are still imported to be collected.
"""

import contextlib

import numpy as np

from _support import DEVICE_LIBRARIES, device_libraries, to_numpy

# The libraries tests are parametrised over: those that work here, or both names where none
# does (every test is skipped then, and the ids stay the same on every machine).
LIBS = device_libraries() or list(DEVICE_LIBRARIES)

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru", "gru_v1"]
EPS32 = float(np.finfo(np.float32).eps)


def mode_of(cell):
    """functional's mode of a test cell name (lstm_proj -> lstm, gru_v1 -> gru)."""
    return "lstm" if cell.startswith("lstm") else ("gru" if cell.startswith("gru") else cell)


def xp(lib):
    if lib == "cupy":
        import cupy
        return cupy
    import torch
    return torch


def put(a, lib, device=0):
    """A NumPy array (or None, or a non-array, passed through) as a device array of `lib` on
    CUDA device `device`, same dtype."""
    if not isinstance(a, np.ndarray):
        return a
    if lib == "cupy":
        import cupy
        with cupy.cuda.Device(device):
            return cupy.asarray(a)
    import torch
    return torch.as_tensor(a, device=f"cuda:{device}")


def put_all(d, lib, device=0):
    return {k: put(v, lib, device) for k, v in d.items()}


def get(a):
    return to_numpy(a)


def where(a):
    """("numpy", None), ("cupy", device id) or ("torch", device index) of an array."""
    if isinstance(a, np.ndarray):
        return ("numpy", None)
    mod = type(a).__module__
    if mod.startswith("cupy"):
        return ("cupy", a.device.id)
    if mod.startswith("torch"):
        return ("torch", a.device.index if a.device.type == "cuda" else a.device.type)
    return (type(a).__name__, None)


def strided(a, lib):
    """A non-contiguous device view with the values of NumPy array `a` (every other element of
    a twice-as-wide last axis)."""
    shape = a.shape[:-1] + (2 * a.shape[-1],)
    if lib == "cupy":
        import cupy
        wide = cupy.zeros(shape, dtype=a.dtype)
        wide[..., ::2] = cupy.asarray(a)
        view = wide[..., ::2]
        assert not view.flags.c_contiguous
        return view
    import torch
    wide = torch.zeros(shape, dtype=getattr(torch, a.dtype.name), device="cuda")
    wide[..., ::2] = torch.as_tensor(a, device="cuda")
    view = wide[..., ::2]
    assert not view.is_contiguous()
    return view


def synchronize(lib):
    if lib == "cupy":
        import cupy
        cupy.cuda.get_current_stream().synchronize()
    else:
        import torch
        torch.cuda.synchronize()


def rel(a, b):
    """max |a - b| / max |b| on NumPy copies (b the trusted side; 0/0 counts as 0)."""
    a = np.asarray(get(a), np.float64)
    b = np.asarray(get(b), np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if b.size == 0:
        return 0.0
    scale = float(np.abs(b).max())
    return float(np.abs(a - b).max()) / (scale if scale > 0 else 1.0)


def device_count():
    import fusedrnn.cuda
    return fusedrnn.cuda.device_count()


@contextlib.contextmanager
def ieee_fp32():
    """cuDNN's float32 RNNs in IEEE float32 (no TF32 tensor-core math) inside the block:
    ``torch.backends.cudnn.rnn.fp32_precision = 'ieee'`` where torch has it (>= 2.9; the
    legacy ``allow_tf32`` is then never read: reading it while conv and rnn differ raises),
    else ``torch.backends.cudnn.allow_tf32 = False``. Yields a line saying what was set."""
    import torch
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        before = rnn.fp32_precision
        rnn.fp32_precision = "ieee"
        try:
            yield f"torch.backends.cudnn.rnn.fp32_precision {before} -> ieee"
        finally:
            rnn.fp32_precision = before
    else:
        before = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield f"torch.backends.cudnn.allow_tf32 {before} -> False"
        finally:
            torch.backends.cudnn.allow_tf32 = before


SPIN_CYCLES = 200_000_000  # ~0.1 s at the H200's 1.98 GHz: longer than any launch here


def spin(lib, cycles=SPIN_CYCLES):
    """Queues a kernel that busy-waits `cycles` clock cycles on the library's current stream:
    work queued after it on that stream starts late, work on another stream does not wait."""
    if lib == "torch":
        import torch
        torch.cuda._sleep(int(cycles))
        return
    import cupy
    kernel = cupy.RawKernel(r"""
        extern "C" __global__ void fusedrnn_test_spin(long long cycles) {
            long long start = clock64();
            while (clock64() - start < cycles) { }
        }""", "fusedrnn_test_spin")
    kernel((1,), (1,), (np.int64(cycles),))


def side_stream(lib):
    """A new non-blocking stream of `lib` (no implicit ordering with the legacy default
    stream) and a context manager that makes it current."""
    if lib == "cupy":
        import cupy
        s = cupy.cuda.Stream(non_blocking=True)
        return s, s
    import torch
    s = torch.cuda.Stream()  # torch's pool streams are created non-blocking
    return s, torch.cuda.stream(s)
