import os

import numpy as np
import pytest

# Helpers that test modules import (to_backend, to_numpy, record_error...) live in _support.py:
# conftest.py is not importable by name once tests/cuda/conftest.py is loaded (see there).
from _support import WORST, cuda_available


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
# GPU is present (_support.cuda_available). FUSEDRNN_TEST_BACKENDS=cpu,cuda (comma-separated)
# asks for a list explicitly; a backend asked for but not available is skipped with the reason.
# Inputs go to a backend through to_backend, outputs come back through to_numpy (_support.py).

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
