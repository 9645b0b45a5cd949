"""fusedrnn.cuda and the device plumbing of the Python layer, as far as a machine without a GPU
(or a build without the CUDA backend) can check them: what is reported, what is refused and
with which message. tests/cuda runs the device paths themselves where a GPU is present."""

import sys

import numpy as np
import pytest

import fusedrnn
from fusedrnn import cuda
from fusedrnn._loader import _C


@pytest.fixture
def fresh_cuda(monkeypatch):
    """fusedrnn.cuda with its cached answer cleared (restored after the test)."""
    monkeypatch.setattr(cuda, "_available", None)
    return cuda


def test_import_and_answers_agree_with_the_build():
    assert fusedrnn.cuda is cuda and "cuda" in fusedrnn.__all__
    c = fusedrnn.config()
    assert cuda.is_built() == c["cuda"] == _C.WITH_CUDA
    assert cuda.device_count() == c["cuda_devices"] >= 0
    assert cuda.is_available() == (c["cuda"] and c["cuda_devices"] > 0)
    assert isinstance(c["cuda_error"], str)
    v = cuda.versions()
    assert set(v) == {"runtime", "driver"}
    if not cuda.is_built():
        assert v == {"runtime": 0, "driver": 0} and cuda.device_count() == 0


@pytest.mark.skipif(_C.WITH_CUDA, reason="this build has the CUDA backend")
def test_without_the_cuda_backend():
    assert not cuda.is_available()
    assert "built without CUDA" in cuda._why_unavailable()
    with pytest.raises(RuntimeError, match="built without CUDA"):
        cuda.get_device_name(0)


@pytest.mark.skipif(cuda.is_available(), reason="a GPU is usable here")
def test_device_name_of_a_device_that_is_not_there():
    with pytest.raises((RuntimeError, ValueError)):
        cuda.get_device_name(0)


def test_get_device_name_checks_its_argument():
    with pytest.raises(TypeError, match="device must be an int"):
        cuda.get_device_name("0")
    with pytest.raises(TypeError, match="device must be an int"):
        cuda.get_device_name(True)


def test_is_available_never_raises(fresh_cuda, monkeypatch):
    def broken():
        raise RuntimeError("cudaGetDeviceCount: cudaErrorUnknown")
    monkeypatch.setattr(_C, "WITH_CUDA", True)
    monkeypatch.setattr(_C, "cuda_device_count", broken)
    assert fresh_cuda.is_available() is False
    assert "cudaErrorUnknown" in fresh_cuda._why_unavailable()
    with pytest.raises(RuntimeError, match="cudaErrorUnknown"):
        fresh_cuda.device_count()


def test_no_device_reason(fresh_cuda, monkeypatch):
    monkeypatch.setattr(_C, "WITH_CUDA", True)
    monkeypatch.setattr(_C, "cuda_device_count", lambda: 0)
    assert fresh_cuda.is_available() is False
    assert "no CUDA device is usable" in fresh_cuda._why_unavailable()


def test_show_config_names_the_cuda_backend(capsys):
    fusedrnn.show_config()
    out = capsys.readouterr().out
    assert "CUDA backend" in out
    assert ("CUDA devices" in out) == cuda.is_built()


# ---------------------------------------------------------------------------------------------
# modules: to(), and arrays of the wrong device


class FakeCudaArray:
    """Something with __cuda_array_interface__ (a CuPy array, as far as a check can tell)."""

    __cuda_array_interface__ = {"shape": (5, 2, 3), "typestr": "<f4", "data": (4096, False),
                                "strides": None, "version": 3}
    ndim, shape, dtype = 3, (5, 2, 3), np.dtype(np.float32)


def test_cpu_module_to_cpu_keeps_its_arrays():
    m = fusedrnn.LSTM(3, 4)
    before = [id(p) for p in m.parameters()]
    assert m.device == "cpu"
    assert m.to("cpu") is m and m.cpu() is m
    assert [id(p) for p in m.parameters()] == before


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "cpu:0", 3])
def test_to_rejects_unknown_devices(device):
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        fusedrnn.GRU(3, 4).to(device)


@pytest.mark.skipif(cuda.is_available(), reason="a GPU is usable here")
@pytest.mark.parametrize("cls", [fusedrnn.LSTM, fusedrnn.GRUCell])
def test_to_cuda_without_a_usable_gpu_says_why(cls):
    m = cls(3, 4)
    with pytest.raises(RuntimeError, match=r"\.to\('cuda'\): " + cuda._why_unavailable()[:20]):
        m.to("cuda")
    with pytest.raises(RuntimeError):
        m.cuda()
    assert m.device == "cpu"


def test_to_cuda_without_cupy_says_so(fresh_cuda, monkeypatch):
    monkeypatch.setattr(fresh_cuda, "_available", True)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    m = fusedrnn.RNN(3, 4)
    with pytest.raises(ImportError, match="CuPy is not installed"):
        m.to("cuda:0")
    assert m.device == "cpu"


def test_cpu_module_refuses_device_arrays_by_name():
    m = fusedrnn.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"LSTM: x is a FakeCudaArray on a CUDA device but the "
                                         r"module is on cpu"):
        m(FakeCudaArray())
    c = fusedrnn.GRUCell(3, 4)
    with pytest.raises(ValueError, match=r"GRUCell: hx is a FakeCudaArray on a CUDA device"):
        c(np.zeros((2, 3), np.float32), FakeCudaArray())


def test_cpu_module_still_takes_torch_tensors():
    torch = pytest.importorskip("torch")
    m = fusedrnn.GRU(3, 4, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(m(torch.from_numpy(x))[0], m(x)[0])
    # unbatched input takes the same path (_expand instead of np.expand_dims)
    np.testing.assert_array_equal(m(x[:, 0])[0], m(x)[0][:, 0])


def test_state_dict_values_of_another_library_load():
    m = fusedrnn.LSTM(3, 4, seed=1)
    other = fusedrnn.LSTM(3, 4, seed=2)
    m.load_state_dict(other.state_dict())
    for a, b in zip(m.parameters(), other.parameters()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(fusedrnn.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_persistent_plan_without_a_gpu_raises_clearly():
    with pytest.raises(RuntimeError, match=r"built without CUDA|CUDA error in cudaGetDevice"):
        fusedrnn.cuda.persistent_plan("lstm", 256, 4)
    with pytest.raises(TypeError, match=r"dtype must be 'float32', 'float64', 'float16' or"):
        fusedrnn.cuda.persistent_plan("lstm", 256, 4, dtype="int8")
    with pytest.raises(ValueError, match=r"mode must be one of"):
        fusedrnn.cuda.persistent_plan("lstmx", 256, 4)


def test_persistent_counts_start_at_zero_without_a_gpu():
    if fusedrnn.cuda.is_available():
        pytest.skip("a GPU may have run persistent loops in this process")
    assert fusedrnn.cuda.persistent_counts() == {"launched": 0, "declined": 0}
