"""The CUDA backend's code on the host: every kernel functor, the step sequence and the GEMM
tiles of csrc/device, run by the host executor (_C._testing.set_device_emulation), against the
float64 reference (the cases of test_native) and against the CPU backend (whole stacks).

Each launch's elements run in ascending, descending and permuted order: a kernel that reads,
within one launch, what another element of it writes (a race on a GPU) gives different
results in different orders. Scratch buffers start as NaN, so a read of never-written device
memory shows. What this cannot see: the CUDA launch mechanics, streams and allocation
(csrc/cuda), which only tests/cuda on a GPU exercises.
"""

import itertools

import numpy as np
import pytest

from fusedrnn import _C
from fusedrnn import functional as F

import test_native as tn

ORDERS = [0, 1, 2]


@pytest.fixture(params=ORDERS, ids=["ascending", "descending", "permuted"])
def emulated(request):
    old = _C._testing.set_device_emulation(request.param)
    try:
        yield request.param
    finally:
        _C._testing.set_device_emulation(old)


def emulation_off():
    return _C._testing.set_device_emulation(-1)


# The sweep at T = 7 (every cell, B, H, dtype, ragged and reverse), in one order; the
# other groups in every order.
@pytest.mark.parametrize("cell", tn.CELLS)
def test_sweep_matches_reference(cell):
    old = _C._testing.set_device_emulation(0)
    try:
        for p in tn.SWEEP:
            if p[0] == cell and p[1] == 7:
                tn.case_sweep(*p)
    finally:
        _C._testing.set_device_emulation(old)


@pytest.mark.parametrize("group", ["no_bias", "threaded"])
def test_groups_match_reference(group, emulated):
    tn.run_group(group, "cpu", f"device emulation order {emulated}")


def test_long_matches_reference():
    old = _C._testing.set_device_emulation(2)
    try:
        tn.run_group("long", "cpu", "device emulation")
    finally:
        _C._testing.set_device_emulation(old)


def stack_case(mode, L, D, T, B, I, H, P, dtype, rng, bias=True):
    G = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}[mode]
    R = P or H
    params = {}
    for l, d in itertools.product(range(L), range(D)):
        sfx = f"_l{l}" + ("_reverse" if d else "")
        inp = I if l == 0 else D * R
        params["weight_ih" + sfx] = rng.uniform(-0.5, 0.5, (G * H, inp)).astype(dtype)
        params["weight_hh" + sfx] = rng.uniform(-0.5, 0.5, (G * H, R)).astype(dtype)
        if bias:
            params["bias_ih" + sfx] = rng.uniform(-0.3, 0.3, G * H).astype(dtype)
            params["bias_hh" + sfx] = rng.uniform(-0.3, 0.3, G * H).astype(dtype)
        if P:
            params["weight_hr" + sfx] = rng.uniform(-0.5, 0.5, (P, H)).astype(dtype)
    return params


STACKS = [
    # mode, reset_after, L, D, P, batch_first, dropout, lengths, dtype
    ("lstm", True, 2, 2, 0, False, 0.0, None, np.float64),
    ("lstm", True, 3, 2, 3, True, 0.4, [5, 1, 3, 5], np.float64),
    ("gru", True, 2, 2, 0, True, 0.3, [2, 5, 5, 1], np.float64),
    ("gru", False, 3, 1, 0, False, 0.5, [5, 4, 1, 2], np.float64),
    ("rnn_tanh", True, 2, 2, 0, False, 0.2, None, np.float32),
    ("rnn_relu", True, 2, 1, 0, True, 0.0, [3, 5, 1, 4], np.float32),
    ("lstm", True, 1, 2, 2, False, 0.0, [5, 2, 5, 3], np.float32),
]


@pytest.mark.parametrize("case", STACKS, ids=[f"{c[0]}-{'ra' if c[1] else 'rb'}-L{c[2]}D{c[3]}"
                                               f"P{c[4]}-bf{int(c[5])}-p{c[6]}-"
                                               f"{np.dtype(c[8]).name}" for c in STACKS])
def test_stack_matches_cpu_backend(case, emulated):
    """Whole stacks (layers, directions, dropout with its keep-bits, batch-first, lengths,
    projection): the device code against the CPU backend, forward and every gradient."""
    mode, reset_after, L, D, P, batch_first, p, lengths, dtype = case
    rng = np.random.default_rng(11)
    T, B, I, H = 5, 4, 3, 6
    params = stack_case(mode, L, D, T, B, I, H, P, dtype, rng)
    R = P or H
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * D, B, R)).astype(dtype)
    c0 = rng.standard_normal((L * D, B, H)).astype(dtype) if mode == "lstm" else None
    dy = rng.standard_normal((B, T, D * R) if batch_first else (T, B, D * R)).astype(dtype)
    dh = rng.standard_normal((L * D, B, R)).astype(dtype)
    dc = rng.standard_normal((L * D, B, H)).astype(dtype) if mode == "lstm" else None
    lens = None if lengths is None else np.array(lengths, dtype=np.int64)
    kw = dict(num_layers=L, bidirectional=D == 2, h0=h0, c0=c0, lengths=lens,
              batch_first=batch_first, dropout=p, seed=77, reset_after=reset_after)

    def both():
        y, h_n, c_n, ctx = F.stack_forward(mode, x, params, **kw)
        dx, dh0, dc0, grads = F.stack_backward(ctx, dy, dh, dc)
        masks = ctx.keep_masks
        return dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0, **grads), masks

    got, got_masks = both()
    order = emulation_off()
    try:
        want, want_masks = both()
    finally:
        _C._testing.set_device_emulation(order)
    assert len(got_masks) == len(want_masks)
    for a, b in zip(got_masks, want_masks):
        np.testing.assert_array_equal(a, b)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for k, w in want.items():
        if w is None:
            assert got[k] is None, k
            continue
        scale = max(1.0, float(np.abs(w).max()))
        err = float(np.abs(got[k].astype(np.float64) - w).max()) / scale
        assert err <= tol, f"{k}: {err:.3e} > {tol:.1e}"


def test_inference_matches_training(emulated):
    rng = np.random.default_rng(4)
    params = stack_case("gru", 2, 2, 6, 3, 4, 5, 0, np.float64, rng)
    x = rng.standard_normal((6, 3, 4))
    lens = np.array([6, 1, 4])
    for reset_after in (True, False):
        a = F.stack_forward("gru", x, params, num_layers=2, bidirectional=True, lengths=lens,
                            reset_after=reset_after, training=True)
        b = F.stack_forward("gru", x, params, num_layers=2, bidirectional=True, lengths=lens,
                            reset_after=reset_after, training=False)
        for u, v in zip(a[:2], b[:2]):
            np.testing.assert_array_equal(u, v)


def test_nan_padding_does_not_reach_weight_gradients(emulated):
    rng = np.random.default_rng(8)
    params = stack_case("lstm", 1, 1, 4, 3, 2, 3, 0, np.float64, rng)
    x = rng.standard_normal((4, 3, 2))
    lens = np.array([4, 2, 1])
    for b, n in enumerate(lens):
        x[n:, b] = np.nan
    y, h, c, ctx = F.stack_forward("lstm", x, params, lengths=lens)
    _, _, _, grads = F.stack_backward(ctx, np.ones_like(y))
    for k, g in grads.items():
        assert np.isfinite(g).all(), k
    assert np.isfinite(y).all()


def test_accumulate_and_empty_batch(emulated):
    rng = np.random.default_rng(9)
    params = stack_case("rnn_tanh", 2, 1, 3, 2, 2, 4, 0, np.float64, rng)
    x = rng.standard_normal((3, 2, 2))
    y, h, _, ctx = F.stack_forward("rnn_tanh", x, params, num_layers=2)
    _, _, _, g1 = F.stack_backward(ctx, np.ones_like(y))
    acc = {k: v.copy() for k, v in g1.items()}
    F.stack_backward(ctx, np.ones_like(y), grads=acc)
    for k in g1:
        np.testing.assert_allclose(acc[k], 2 * g1[k], rtol=1e-14, atol=0)
    empty = np.zeros((3, 0, 2))
    y, h, _, ctx = F.stack_forward("rnn_tanh", empty, params, num_layers=2)
    assert y.shape == (3, 0, 4) and h.shape == (2, 0, 4)
    dx, dh0, _, grads = F.stack_backward(ctx, np.zeros_like(y))
    assert dx.shape == empty.shape
    for g in grads.values():
        assert not g.any()


@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_cublas_mapping(ta, tb):
    """The row-major -> column-major mapping of the cuBLAS GEMM (device/blas_mapping.h), run
    on the CPU's column-major BLAS: cuBLAS takes the same call."""
    rng = np.random.default_rng(3)
    M, N, K = 5, 7, 3
    a = rng.standard_normal((K, M) if ta else (M, K))
    b = rng.standard_normal((N, K) if tb else (K, N))
    want = (a.T if ta else a) @ (b.T if tb else b)
    np.testing.assert_allclose(_C._testing.colmajor_gemm(ta, tb, a, b), want, rtol=1e-13)


def test_device_stamps_catch_every_change():
    """The device backend's content stamps (device/stamps.h): the same contents give the same
    stamp wherever they live; a change of one element anywhere (first, last, past a chunk
    boundary, a swap) changes it; the comparison names the first changed array."""
    rng = np.random.default_rng(12)
    arrays = [rng.standard_normal(n).astype(dt) for n, dt in
              [(1, np.float32), (511, np.float32), (512, np.float32), (1300, np.float64),
               (3, np.float64)]] + [rng.standard_normal((40, 30)).astype(np.float32)] * 40
    s0 = _C._testing.device_stamps(arrays)
    assert s0.shape == (len(arrays),) and s0.dtype == np.uint64
    np.testing.assert_array_equal(s0, _C._testing.device_stamps([a.copy() for a in arrays]))
    assert _C._testing.device_changed_stamp(arrays, s0) == -1
    for k, i in [(0, 0), (1, 510), (2, 511), (3, 1299), (3, 600), (4, 1), (44, 1199)]:
        changed = [a.copy() for a in arrays]
        flat = changed[k].reshape(-1)
        flat[i] = np.nextafter(flat[i], np.inf)
        s1 = _C._testing.device_stamps(changed)
        assert s1[k] != s0[k], (k, i)
        assert _C._testing.device_changed_stamp(changed, s0) == k
    swapped = [a.copy() for a in arrays]
    swapped[3][[5, 6]] = swapped[3][[6, 5]]
    assert _C._testing.device_changed_stamp(swapped, s0) == 3
    assert _C._testing.device_stamps([np.zeros(4, np.float32)])[0] != \
        _C._testing.device_stamps([np.zeros(5, np.float32)])[0]


# --- the persistent loops (csrc/device/persistent.h) on the host grid runner ------------------
# Blocks run as threads meeting at a barrier; a block's threads as loops per phase, ascending
# or descending (order 1). Grids of 1-4 blocks of 7-64 threads: H not a multiple of the
# blocks, fewer threads than rows (one k-slice) and more (several).

GRIDS = [(1, 7), (3, 32), (4, 64), (2, 5)]


@pytest.fixture(params=GRIDS, ids=[f"{b}blocks-{t}threads" for b, t in GRIDS])
def persistent(request):
    blocks, threads = request.param
    _C._testing.set_persistent_emulation(1, blocks, threads)
    try:
        yield request.param
    finally:
        _C._testing.set_persistent_emulation(0)


PERSISTENT_CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def test_persistent_plan():
    kinds = {name: c["kind"] for name, c in _C.CELLS.items()}
    _C._testing.set_persistent_emulation(1, 3, 32)
    try:
        for name in PERSISTENT_CELLS:
            for forward in (True, False):
                p = _C._testing.persistent_plan(kinds[name], 5, 17, 0, 4, forward)
                assert p["persistent"] and p["blocks"] == 3 and p["threads"] == 32, (name, p)
        assert not _C._testing.persistent_plan(kinds["gru_v1"], 5, 17, 0, 4, True)["persistent"]
        assert not _C._testing.persistent_plan(kinds["lstm"], 5, 17, 9, 4, True)["persistent"]
        assert _C._testing.persistent_plan(kinds["lstm"], 5, 2, 0, 4, True)["blocks"] == 2
        _C._testing.set_persistent_emulation(2, 3, 32)  # auto: batch above the crossover
        assert not _C._testing.persistent_plan(kinds["lstm"], 64, 17, 0, 4, True)["persistent"]
    finally:
        _C._testing.set_persistent_emulation(0)
    assert _C._testing.persistent_plan(kinds["lstm"], 5, 17, 0, 4, True)["why"] == "off"


@pytest.mark.parametrize("cell", PERSISTENT_CELLS)
def test_persistent_sweep_matches_reference(cell, persistent):
    old = _C._testing.set_device_emulation(1 if persistent == (3, 32) else 0)
    try:
        for p in tn.SWEEP:
            if p[0] == cell and p[1] == 7 and p[4] == "f64":
                tn.case_sweep(*p)
        tn.case_no_bias(cell, "f32", True)
        tn.case_threaded(cell, "f64", True, False)
    finally:
        _C._testing.set_device_emulation(old)


def test_persistent_long_sequences(persistent):
    old = _C._testing.set_device_emulation(0)
    try:
        for cell in PERSISTENT_CELLS:
            tn.case_long(cell, "f32")
    finally:
        _C._testing.set_device_emulation(old)


@pytest.mark.parametrize("case", [c for c in STACKS if c[0] != "gru" or c[1]],
                         ids=lambda c: f"{c[0]}-L{c[2]}D{c[3]}P{c[4]}")
def test_persistent_stacks_match_cpu_backend(case, persistent):
    """Whole stacks on the persistent loops (the projection layer and the two-phase GRU fall
    back to the step loop inside the same stack) against the CPU backend."""
    order = _C._testing.set_device_emulation(0)
    try:
        test_stack_matches_cpu_backend(case, 0)
    finally:
        _C._testing.set_device_emulation(order)


# The H200 (sm_90): 132 multiprocessors, 227 KiB of shared memory per block (opt-in), and the
# persistent kernels' 256 threads per block (csrc/cuda/exec.cuh).
H200 = dict(max_blocks=132, threads=256, shared_limit=232448, auto_max_batch=16)


@pytest.mark.parametrize("gates", [4, 3, 1], ids=["lstm", "gru", "rnn"])
def test_persistent_plan_on_an_h200_covers_the_targets(gates):
    """Issue 12's targets (B in {1, 4, 8}, H in {256, 512, 1024}, fp32) fit on an H200, forward
    and backward, in at most 227 KiB per block; B = 64 at H = 1024 does not (the step loop
    runs), nor does auto pick B > 16; the plan never exceeds the limit it is given."""
    for B in (1, 4, 8):
        for H in (256, 512, 1024):
            for forward in (True, False):
                p = _C._testing.plan_persistent(1, True, gates, B, H, 4, forward, **H200)
                assert p["persistent"], (B, H, forward, p)
                assert p["blocks"] == min(H, 132) and p["shared_bytes"] <= H200["shared_limit"]
    big = _C._testing.plan_persistent(1, True, gates, 64, 1024, 4, True, **H200)
    assert not big["persistent"] and "shared memory" in big["why"]
    assert not _C._testing.plan_persistent(2, True, gates, 32, 256, 4, True, **H200)["persistent"]
    assert _C._testing.plan_persistent(2, True, gates, 16, 256, 4, True, **H200)["persistent"]
    assert not _C._testing.plan_persistent(1, False, gates, 1, 256, 4, True, **H200)["persistent"]
    rng = np.random.default_rng(0)
    for _ in range(200):
        B, H, limit = int(rng.integers(1, 65)), int(rng.integers(1, 3000)), \
            int(rng.integers(1 << 12, 1 << 18))
        p = _C._testing.plan_persistent(1, True, gates, B, H, 4, bool(rng.integers(2)),
                                        max_blocks=132, threads=256, shared_limit=limit,
                                        auto_max_batch=16)
        assert not p["persistent"] or p["shared_bytes"] <= limit


def test_persistent_partition_arithmetic():
    """device::unit_range: every unit is owned by exactly one block, in order, and block sizes
    differ by at most one, for H not a multiple of the blocks too."""
    for H in (1, 2, 7, 131, 132, 133, 1030):
        for blocks in (1, 3, 132):
            nb = min(H, blocks)
            ranges = _C._testing.unit_ranges(H, nb)
            assert ranges[0][0] == 0 and ranges[-1][1] == H
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [u1 - u0 for u0, u1 in ranges]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1, (H, nb, sizes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
def test_device_gemm_block_program(ta, tb, dtype):
    """The device backend's own GEMM (GemmBlock: 64x64 tiles, K in chunks of 16 through shared
    memory), every transpose, edge tiles (M, N, K not multiples of the tile), K = 0, alpha,
    beta; beta = 0 never reads C (NaN there stays out)."""
    rng = np.random.default_rng(5)
    for (M, N, K), order in zip([(1, 1, 1), (67, 130, 33), (64, 64, 16), (5, 3, 0),
                                 (129, 17, 70)], [0, 1, 0, 1, 0]):
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
        b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
        want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
        c = np.full((M, N), np.nan, dtype)
        _C._testing.device_gemm(ta, tb, a, b, c, order=order)
        tol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(c, want, rtol=tol, atol=tol * max(1, K))
        c0 = rng.standard_normal((M, N)).astype(dtype)
        c = c0.copy()
        _C._testing.device_gemm(ta, tb, a, b, c, alpha=0.5, beta=-2.0, order=order)
        np.testing.assert_allclose(c, 0.5 * want - 2.0 * c0, rtol=tol, atol=tol * max(1, K))
