"""The persistent time loops (issue 12; csrc/device/persistent.h run cooperatively by
csrc/cuda/grid.cuh) on a GPU, with ``FUSEDRNN_PERSISTENT=1`` set per test (the native side reads
it at every call):

* tests/test_native.py's sweep cases for the cells with a persistent loop (rnn_tanh, rnn_relu,
  lstm, gru with reset_after) against the float64 reference, with the sweep's bounds, at sizes
  that stress the unit partition: H = 1, 17, 33 (the sweep's), 133 and 1030 (neither a multiple
  of any GPU's multiprocessor count, so blocks own unequal unit counts; 1030 > the SMs, so
  blocks own several units), B = 1, T = 1, and ragged lengths with ties;
* the persistent loop against the per-step path (``FUSEDRNN_PERSISTENT=0``) on the same inputs:
  float64 within 1e-12 (relative to the reference's largest magnitude); float32 within the bound
  each path meets against the reference (2 x the problem's float32 error scale, floor 4 ulps:
  two float32 evaluations that sum in different orders differ by about one error scale);
* ``fusedrnn.cuda.persistent_plan`` agrees with the variable; ``_C.cuda_barrier_floor`` (the
  empty persistent loop of issue 12's floor) returns a positive, finite time per step and
  rejects what it cannot run.

Where the device cannot hold a case's plan (shared memory), the layer runs per step: the
vs-reference tests still hold, the persistent-vs-step comparison is skipped with the plan's
reason.
"""

import itertools
import math
import zlib

import numpy as np
import pytest

import fusedrnn
import fusedrnn.cuda as fcuda
import test_native as tn
from fusedrnn._loader import _C

CUDA = "cuda"
PCELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]  # the cells with a persistent loop
SWEEP_H = (1, 17, 33)   # tests/test_native.py's sweep sizes: its cases, unchanged
WIDE_H = (133, 1030)    # wider: weights scaled to keep the pre-activations O(1)
F64_AGREE = 1e-12       # persistent vs per-step, float64


@pytest.fixture
def persistent(monkeypatch):
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "1")


def partition_case(cell, T, B, H, dt):
    """(case64, label, reduction_rows): tests/test_native.py's sweep case for H <= 33 (same
    seed, so the same reference cache entry, and its bounds); wider cases with W_ih and W_hh
    scaled by 1.5 / sqrt(columns), as tests/cuda's large-tile case, whose longest float32 sums
    are the recurrent dot products (G*H terms in dh = dstep W_hh): the 4-ulp floor of their
    bound grows by sqrt(G*H / 64) (tests/test_native.py's ``compare``, reduction_rows)."""
    dtype = tn.dtype_of(dt)
    I = 5
    rng = np.random.default_rng(zlib.crc32(f"{cell}-{T}-{B}-{H}-{tn.seed}".encode()))
    case = tn.make_case(cell, T, B, I, H, dtype, rng)
    label = f"{cell} T={T} B={B} H={H} {dt}"
    rows = 0
    if H not in SWEEP_H:
        for k in ("w_ih", "w_hh"):
            case[k] = case[k] * (1.5 / np.sqrt(case[k].shape[1]))
        label += " scaled"
        rows = max(T * B, case["w_hh"].shape[0])
    return case, label, rows


def check_padding(out, grad, lengths):
    for b, L in enumerate(lengths):
        assert not out["y"][L:, b].any(), "outputs past a sequence's length must be 0"
        assert not grad["x"][L:, b].any(), "dx past a sequence's length must be 0"


# The sweep's shapes for the persistent cells at every partition size: all of
# (ragged, reverse) at the sweep's H, two of them at the wide ones.
PARTITION = ([(c, T, B, H, dt, g, r)
              for c, T, B, H, dt, (g, r) in itertools.product(
                  PCELLS, [1, 7], [1, 5], SWEEP_H, ["f32", "f64"],
                  [(False, False), (False, True), (True, False), (True, True)])]
             + [(c, T, B, H, dt, g, r)
                for c, T, B, H, dt, (g, r) in itertools.product(
                    PCELLS, [1, 7], [1, 5], WIDE_H, ["f32", "f64"],
                    [(False, False), (True, True)])])


@pytest.mark.parametrize("cell,T,B,H,dt,ragged,reverse", PARTITION,
                         ids=["-".join(map(str, p)) for p in PARTITION])
def test_persistent_matches_reference(cell, T, B, H, dt, ragged, reverse, persistent):
    case, label, rows = partition_case(cell, T, B, H, dt)
    lengths = tn.ragged_lengths(T, B) if ragged else None
    out, grad = tn.compare(case, tn.dtype_of(dt), lengths, reverse, label, reduction_rows=rows,
                           backend=CUDA)
    if ragged:
        check_padding(out, grad, lengths)


def _mode(cell):
    return "lstm" if cell.startswith("lstm") else ("gru" if cell.startswith("gru") else cell)


AGREE = list(itertools.product(PCELLS, SWEEP_H + WIDE_H, ["f32", "f64"],
                               [(7, 5, True, True), (1, 1, False, False)]))


@pytest.mark.parametrize("cell,H,dt,shape", AGREE,
                         ids=[f"{c}-H{h}-{d}-T{s[0]}B{s[1]}" for c, h, d, s in AGREE])
def test_persistent_equals_per_step(cell, H, dt, shape, monkeypatch):
    T, B, ragged, reverse = shape
    dtype = tn.dtype_of(dt)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "1")
    plan = fcuda.persistent_plan(_mode(cell), H, B,
                                 dtype="float32" if dt == "f32" else "float64")
    if not (plan["forward"]["persistent"] or plan["backward"]["persistent"]):
        pytest.skip(f"no persistent loop planned here: {plan['forward']['why']}")
    case, label, rows = partition_case(cell, T, B, H, dt)
    lengths = tn.ragged_lengths(T, B) if ragged else None
    c32 = tn.cast(case, dtype)
    p_out, p_grad = tn.run(tn.F, c32, lengths, reverse, backend=CUDA)
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "0")
    s_out, s_grad = tn.run(tn.F, c32, lengths, reverse, backend=CUDA)
    ref_out, ref_grad, scale32 = tn.reference_side(
        case, dtype, lengths, reverse,
        (label, np.dtype(dtype).name, None if lengths is None else tuple(lengths), reverse,
         tn.seed))
    assert p_grad.keys() == s_grad.keys() == ref_grad.keys()
    for i, (group, p, s, r64) in enumerate((("out", p_out, s_out, ref_out),
                                            ("grad", p_grad, s_grad, ref_grad))):
        for k in r64:
            scale = float(np.abs(r64[k]).max()) or 1.0
            diff = float(np.abs(p[k].astype(np.float64) - s[k].astype(np.float64)).max())
            err = diff / scale
            floor = 4 * tn.EPS32 * np.sqrt(max(1.0, rows / 64))
            bound = F64_AGREE if dtype == np.float64 else 2 * max(scale32[i, k], floor)
            assert err <= bound, (f"{label}: persistent vs per-step {group} {k}: "
                                  f"{err:.3e} > {bound:.3e} (plan {plan})")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_plan_follows_the_variable(dtype, monkeypatch):
    """Small layers fit anywhere: persistent under 1, per step under 0; the cells with two
    exchanges per step never run persistently."""
    for mode in ("rnn_tanh", "rnn_relu", "lstm", "gru"):
        monkeypatch.setenv("FUSEDRNN_PERSISTENT", "1")
        plan = fcuda.persistent_plan(mode, 17, 3, dtype=dtype)
        for d in ("forward", "backward"):
            p = plan[d]
            assert p["persistent"], (mode, d, p)
            assert 1 <= p["blocks"] <= 17 and p["threads"] > 0 and p["shared_bytes"] > 0, p
        monkeypatch.setenv("FUSEDRNN_PERSISTENT", "0")
        assert not any(p["persistent"] for p in
                       fcuda.persistent_plan(mode, 17, 3, dtype=dtype).values())
    monkeypatch.setenv("FUSEDRNN_PERSISTENT", "1")
    assert not any(p["persistent"] for p in
                   fcuda.persistent_plan("lstm", 17, 3, proj_size=5, dtype=dtype).values())
    assert not any(p["persistent"] for p in
                   fcuda.persistent_plan("gru", 17, 3, reset_after=False,
                                         dtype=dtype).values())


@pytest.mark.parametrize("kind", ["grid_sync", "flag"])
@pytest.mark.parametrize("h_floats", [0, 1024])
def test_barrier_floor_is_a_positive_time(kind, h_floats):
    us = _C.cuda_barrier_floor(kind, steps=2000, h_floats=h_floats)
    assert isinstance(us, float) and math.isfinite(us) and 0 < us < 1000, us
    # fewer blocks than multiprocessors, and a warp per block, run too
    us = _C.cuda_barrier_floor(kind, blocks=4, threads=32, steps=500, h_floats=h_floats)
    assert math.isfinite(us) and us > 0, us
    print(f"\nbarrier floor {kind} h_floats={h_floats}: {us:.2f} us/step "
          f"on {fcuda.get_device_name(0)}")


def test_barrier_floor_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="kind must be 'grid_sync' or 'flag'"):
        _C.cuda_barrier_floor("spin")
    with pytest.raises(ValueError, match="cannot be co-resident"):
        _C.cuda_barrier_floor("grid_sync", blocks=1_000_000, steps=10)
    with pytest.raises(ValueError, match="exceed a block's shared memory"):
        _C.cuda_barrier_floor("flag", h_floats=1 << 24, steps=10)
    with pytest.raises(ValueError, match="threads"):
        _C.cuda_barrier_floor("flag", threads=2048, steps=10)
    with pytest.raises(ValueError, match="device must lie in"):
        _C.cuda_barrier_floor("flag", steps=10, device=fcuda.device_count())
    assert fusedrnn.cuda.is_available()
