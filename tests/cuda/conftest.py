"""tests/cuda: the CUDA backend's suite. Every test here is skipped, with the reason, unless this
fusedrnn was built with CUDA, ``fusedrnn.cuda.is_available()`` is True and CuPy or torch with
CUDA can make device arrays (``_support.cuda_available``). The modules import without a GPU
(device work starts inside the tests), so collection here only reports skips.

Run on a GPU machine: ``python -m pytest tests/cuda -q`` (bench/gpu_check.sh does). Shared
helpers are in ``_cuda_support.py`` (import that, never ``conftest``: see tests/_support.py).
"""

import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # tests/, for _support (tests/conftest.py puts it there)
    sys.path.insert(0, str(HERE.parent))

from _support import cuda_available  # noqa: E402

CUDA_OK, WHY_NOT = cuda_available()


def pytest_report_header(config):
    return f"tests/cuda: {'runs' if CUDA_OK else 'skipped: ' + WHY_NOT}"


def pytest_collection_modifyitems(config, items):
    """Skips every item collected from this directory when the CUDA backend cannot run."""
    if CUDA_OK:
        return
    skip = pytest.mark.skip(reason=f"tests/cuda: {WHY_NOT}")
    for item in items:
        if HERE in pathlib.Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture
def ieee_fp32():
    """cuDNN's float32 RNN math in IEEE float32 (no TF32) for the test, restored after."""
    from _cuda_support import ieee_fp32 as ctx
    with ctx() as what:
        yield what
