import os

import numpy as np
import pytest

# Worst errors seen by the native-vs-reference sweep, printed at the end of the run.
WORST = {}


def record_error(dtype, name, err, bound):
    key = np.dtype(dtype).name
    cur = WORST.get(key)
    if cur is None or err > cur[0]:
        WORST[key] = (err, name, bound)
    WORST.setdefault("configs_" + key, 0)


def count_config(dtype):
    key = "configs_" + np.dtype(dtype).name
    WORST[key] = WORST.get(key, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if not WORST:
        return
    tr = terminalreporter
    tr.section("fusedrnn native vs reference")
    for key in ("float32", "float64"):
        if key in WORST:
            err, name, bound = WORST[key]
            tr.write_line(f"{key}: {WORST.get('configs_' + key, 0)} configurations, worst "
                          f"error {err:.3e} (bound there {bound:.3e}) in {name}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --- backends ----------------------------------------------------------------------------------
# Tests that take `backend` run once per array backend: "cpu" (NumPy arrays, the CPU kernels)
# always; "cuda" (device arrays, the CUDA kernels) when the package was built with CUDA and a
# GPU is present. FUSEDRNN_TEST_BACKENDS=cpu,cuda (comma-separated) asks for a list explicitly;
# a backend asked for but not available is skipped with the reason.

def cuda_available():
    """(available, reason)."""
    import fusedrnn
    if not fusedrnn.config().get("cuda"):
        return False, "fusedrnn was built without CUDA"
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return True, ""
    except Exception:  # noqa: BLE001 - no CuPy or no driver: try torch
        pass
    try:
        import torch
        if torch.cuda.is_available():
            return True, ""
    except Exception:  # noqa: BLE001
        pass
    return False, "no GPU (or neither CuPy nor torch with CUDA to make device arrays)"


def _backend_params():
    asked = os.environ.get("FUSEDRNN_TEST_BACKENDS")
    ok, why = cuda_available()
    names = [b for b in asked.split(",") if b] if asked else ["cpu"] + (["cuda"] if ok else [])
    params = []
    for name in names:
        if name == "cuda" and not ok:
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=why)))
        elif name not in ("cpu", "cuda"):
            raise ValueError(f"FUSEDRNN_TEST_BACKENDS: unknown backend {name!r}")
        else:
            params.append(name)
    return params


BACKENDS = _backend_params()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def to_backend(a, backend):
    """An input array (NumPy, or None) as `backend` takes it: NumPy for "cpu", a device array
    (CuPy if installed, else a torch CUDA tensor) for "cuda". Non-arrays pass through."""
    if backend == "cpu" or not isinstance(a, np.ndarray):
        return a
    try:
        import cupy
        return cupy.asarray(a)
    except ImportError:
        import torch
        return torch.as_tensor(a, device="cuda")


def to_numpy(a):
    """An output array of any backend as a NumPy array (None and non-arrays pass through)."""
    if a is None or isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    return a


# --- run-time tuning -----------------------------------------------------------------------------

@pytest.fixture
def tuning():
    """Forces kernel paths for one test through fusedrnn._C._testing: tuning.set(name=value)
    sets knobs ('panel_min_rows', 'dot_projection_max_rows', 'poison_workspace'),
    tuning.isa(name) the instruction set. Everything is restored after the test. (The knobs are
    process-wide: tests that use this must not run native calls concurrently with a change.)"""
    from fusedrnn import _C
    t = _C._testing
    before = {name: t.get_tuning(name) for name in t.tuning_info()}
    isa_before = t.get_isa()

    class Tuning:
        @staticmethod
        def set(**knobs):
            for name, value in knobs.items():
                t.set_tuning(name, int(value))

        @staticmethod
        def isa(name):
            return t.set_isa(name)

        supported_isas = staticmethod(t.supported_isas)

    try:
        yield Tuning()
    finally:
        for name, value in before.items():
            t.set_tuning(name, value)
        t.set_isa(isa_before)
