"""The CUDA kernels against the float64 NumPy reference: the CPU suite's sweep with
``backend="cuda"``, every gradient, the same bounds (tests/test_native.py's docstring: float64
within 1e-10 of the reference, float32 within 2x the float32 error scale of the problem).

The case functions are tests/test_native.py's own; inputs and lengths go to the device through
``_support.to_backend`` (CuPy if installed, else torch; ``cuda-torch`` names torch), outputs
come back through ``to_numpy``. The reference side of a case is cached per session, so a case
re-run with the other array library costs only the device calls.
"""

import itertools
import zlib

import numpy as np
import pytest

import test_native as tn
from _cuda_support import CELLS, LIBS

CUDA = "cuda"  # the preferred library (CuPy when installed)
OTHER = [f"cuda-{lib}" for lib in LIBS if lib == "torch" and "cupy" in LIBS]


@pytest.mark.parametrize("cell,T,B,H,dt,ragged,reverse", tn.SWEEP,
                         ids=["-".join(map(str, p)) for p in tn.SWEEP])
def test_sweep_matches_reference(cell, T, B, H, dt, ragged, reverse):
    tn.case_sweep(cell, T, B, H, dt, ragged, reverse, backend=CUDA)


@pytest.mark.parametrize("cell,dt,reverse", tn.NO_BIAS)
def test_no_bias_no_initial_state(cell, dt, reverse):
    tn.case_no_bias(cell, dt, reverse, backend=CUDA)


@pytest.mark.parametrize("cell,dt,ragged,reverse", tn.THREADED)
def test_h70_uneven_blocks(cell, dt, ragged, reverse):
    """The CPU suite's two-thread case (H = 70, P = 36): on the GPU, hidden sizes that are no
    multiple of a warp or a tile."""
    tn.case_threaded(cell, dt, ragged, reverse, backend=CUDA)


@pytest.mark.parametrize("cell,dt", tn.LONG)
def test_long_sequences(cell, dt):
    tn.case_long(cell, dt, backend=CUDA)


# Larger than any CPU case: B past a warp and past 64, H past 128, I != H, P odd, T * B =
# 804 rows in the weight-gradient reductions.
LARGE = list(itertools.product(CELLS, ["f32", "f64"], [False, True]))


@pytest.mark.parametrize("cell,dt,reverse", LARGE)
def test_large_tiles(cell, dt, reverse):
    dtype = tn.dtype_of(dt)
    T, B, I, H = 12, 67, 45, 129
    rng = np.random.default_rng(zlib.crc32(f"large-{cell}-{tn.seed}".encode()))
    case = tn.make_case(cell, T, B, I, H, dtype, rng)
    for k in ("w_ih", "w_hh", "w_hr"):  # keep the pre-activations O(1) at these widths
        if case[k] is not None:
            case[k] = case[k] * (1.5 / np.sqrt(case[k].shape[1]))
    lengths = np.array([1 + (5 * b) % T for b in range(B)])  # every length from 1 to T
    assert lengths.min() == 1 and lengths.max() == T
    out, grad = tn.compare(case, dtype, lengths, reverse, f"{cell} large {dt}",
                           reduction_rows=T * B, backend=CUDA)
    for b, L in enumerate(lengths):
        assert not out["y"][L:, b].any() and not grad["x"][L:, b].any()


@pytest.mark.parametrize("cell", CELLS)
def test_inference_equals_training_forward(cell):
    rng = np.random.default_rng(3)
    case = tn.cast(tn.make_case(cell, 9, 3, 4, 16, np.float32, rng), np.float32)
    lengths = np.array([9, 4, 1])
    for reverse in (False, True):
        tr_out, _ = tn.run(tn.F, case, lengths, reverse, training=True, backend=CUDA)
        inf_out, _ = tn.run(tn.F, case, lengths, reverse, training=False, backend=CUDA)
        for k in tr_out:
            np.testing.assert_array_equal(tr_out[k], inf_out[k])


@pytest.mark.parametrize("backend", OTHER or ["cuda-torch"])
@pytest.mark.parametrize("group", ["sweep_T7", "no_bias", "threaded"])
def test_other_array_library(group, backend):
    """The same cases with torch CUDA tensors in and out (the sweep above uses CuPy when it is
    installed): DLPack versus __cuda_array_interface__, torch's allocator for the outputs."""
    if not OTHER:
        pytest.skip("one array library here: the sweep above already used it")
    tn.run_group(group, backend, f"backend={backend}")


def test_repeated_calls_are_bitwise_identical():
    """Same inputs, same results, call after call (a race or an unwritten output would move
    them): a training forward and backward, five times."""
    rng = np.random.default_rng(8)
    case = tn.cast(tn.make_case("lstm_proj", 15, 37, 21, 97, np.float32, rng), np.float32)
    lengths = np.array([15 - b % 15 for b in range(37)])
    first = tn.run(tn.F, case, lengths, False, backend=CUDA)
    for _ in range(4):
        again = tn.run(tn.F, case, lengths, False, backend=CUDA)
        for a, b in zip(first, again):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
