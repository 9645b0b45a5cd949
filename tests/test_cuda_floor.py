"""_C.cuda_barrier_floor (issue 12's floor, csrc/cuda/floor.cu) where it cannot run: arguments
are checked first, and the refusal says why (no CUDA backend, or no usable device).
tests/cuda/test_cuda_persistent.py runs it on a GPU."""

import pytest

import fusedrnn
from fusedrnn._loader import _C

pytestmark = pytest.mark.skipif(fusedrnn.cuda.is_available(), reason="a GPU is usable here")


def test_barrier_floor_without_a_gpu_raises_clearly():
    for kind in ("grid_sync", "flag"):
        with pytest.raises(RuntimeError,
                           match=r"built without CUDA|no CUDA device is usable in this process"):
            _C.cuda_barrier_floor(kind)


def test_barrier_floor_checks_its_arguments_first():
    with pytest.raises(ValueError, match="kind must be 'grid_sync' or 'flag', got 'spin'"):
        _C.cuda_barrier_floor("spin")
    # the numeric arguments are checked by the CUDA side (a build without it refuses first)
    bad = ValueError if _C.WITH_CUDA else RuntimeError
    for kw in ({"threads": 0}, {"threads": 1025}, {"steps": 0}, {"blocks": -1},
               {"h_floats": -1}):
        with pytest.raises(bad, match="need blocks >= 0|built without CUDA"):
            _C.cuda_barrier_floor("flag", **kw)
