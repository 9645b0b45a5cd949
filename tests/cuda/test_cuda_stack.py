"""Whole stacks on the GPU (layers x directions, batch_first, lengths, projection, dropout):
CUDA against the CPU kernels and the reference on identical dropout masks.

Dropout keep-bits come from one counter-based generator (csrc/core/dropout.h: splitmix64 of
seed, layer and element), so for the same seed the CUDA and the CPU forward must keep exactly
the same elements: ``StackContext.keep_masks`` is compared bit for bit. With those masks the
reference (``dropout_masks``, scaled by 1/(1-p)) gives the exact result: float64 within 1e-10
for the CUDA forward and every gradient, and float32 CUDA within 1e-4 of float32 CPU (a mask
that differed would move an output by O(1)).
"""

import itertools
import zlib

import numpy as np
import pytest

from fusedrnn import functional as F
from fusedrnn import reference as ref

from _cuda_support import CELLS, LIBS, get, mode_of, put, put_all, rel, where

I, H, P = 7, 13, 6
T, B = 9, 5
LENGTHS = np.array([9, 3, 1, 9, 6])  # unsorted, a tie at T, a length-1 sequence
P_DROP = 0.3


def params_for(cell, layers, bidir, dtype, rng):
    """Parameters keyed by PyTorch's names, uniform(-0.6, 0.6)."""
    mode = mode_of(cell)
    G = ref.GATES[mode]
    proj = cell == "lstm_proj"
    R = P if proj else H
    D = 2 if bidir else 1
    p = {}
    for l, d in itertools.product(range(layers), range(D)):
        in_size = I if l == 0 else D * R
        names = ref.param_names(l, d, proj=proj)
        shapes = [(G * H, in_size), (G * H, R), (G * H,), (G * H,)] + ([(P, H)] if proj else [])
        for n, s in zip(names, shapes):
            p[n] = (rng.uniform(-0.6, 0.6, s)).astype(dtype)
    return p, R


def make_io(cell, layers, bidir, batch_first, dtype, seed):
    rng = np.random.default_rng(seed)
    p, R = params_for(cell, layers, bidir, dtype, rng)
    D = 2 if bidir else 1
    u = lambda *s: rng.uniform(-1, 1, s).astype(dtype)
    lead = (B, T) if batch_first else (T, B)
    lstm = mode_of(cell) == "lstm"
    io = dict(x=u(*lead, I), h0=u(layers * D, B, R), c0=u(layers * D, B, H) if lstm else None,
              dy=u(*lead, D * R), dh=u(layers * D, B, R), dc=u(layers * D, B, H) if lstm else None)
    return p, io


def forward_backward(cell, p, io, on, layers, bidir, batch_first, dropout, seed, lengths):
    """stack_forward + stack_backward with arrays from `on(a)`. Returns (outputs, grads,
    keep masks), all NumPy."""
    kw = dict(num_layers=layers, bidirectional=bidir, h0=on(io["h0"]), c0=on(io["c0"]),
              lengths=on(lengths), batch_first=batch_first, dropout=dropout, seed=seed,
              reset_after=cell != "gru_v1")
    y, h_n, c_n, ctx = F.stack_forward(mode_of(cell), on(io["x"]), {k: on(v) for k, v in
                                                                    p.items()}, **kw)
    dx, dh0, dc0, grads = F.stack_backward(ctx, on(io["dy"]), on(io["dh"]), on(io["dc"]))
    outs = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0,
                **{"grad " + k: v for k, v in grads.items()})
    masks = [None if m is None else get(m) for m in ctx.keep_masks]
    return {k: get(v) for k, v in outs.items() if v is not None}, masks


STACKS = [(cell, layers, bidir, bf) for cell in CELLS
          for layers, bidir in [(1, True), (2, False), (3, True)] for bf in [False, True]]


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("cell,layers,bidir,batch_first", STACKS)
def test_stack_dropout_cuda_matches_cpu_and_reference(cell, layers, bidir, batch_first, lib):
    seed = zlib.crc32(repr((cell, layers, bidir, batch_first)).encode())
    p, io = make_io(cell, layers, bidir, batch_first, np.float64, seed)
    common = (cell, p, io)
    kw = dict(layers=layers, bidir=bidir, batch_first=batch_first, dropout=P_DROP,
              seed=seed % 1000, lengths=LENGTHS)
    cuda, cuda_masks = forward_backward(*common, lambda a: put(a, lib), **kw)
    cpu, cpu_masks = forward_backward(*common, lambda a: a, **kw)

    assert len(cuda_masks) == len(cpu_masks) == layers - 1
    for l, (a, b) in enumerate(zip(cuda_masks, cpu_masks)):
        assert a.dtype == b.dtype == np.bool_ and a.shape == b.shape, (l, a.shape, b.shape)
        assert np.array_equal(a, b), f"layer {l}: {np.sum(a != b)} keep bits differ"

    # the reference on those masks
    masks = [m / (1 - P_DROP) for m in cpu_masks]
    rkw = dict(num_layers=layers, bidirectional=bidir, h0=io["h0"], c0=io["c0"],
               lengths=LENGTHS, batch_first=batch_first, reset_after=cell != "gru_v1")
    ry, rh, rc, rctx = ref.stack_forward(mode_of(cell), io["x"], p,
                                         dropout_masks=masks or None, **rkw)
    rdx, rdh0, rdc0, rgrads = ref.stack_backward(rctx, io["dy"], io["dh"], io["dc"])
    want = dict(y=ry, h_n=rh, c_n=rc, dx=rdx, dh0=rdh0, dc0=rdc0,
                **{"grad " + k: v for k, v in rgrads.items()})
    want = {k: v for k, v in want.items() if v is not None}
    assert cuda.keys() == cpu.keys() == want.keys()
    for k in want:
        assert rel(cuda[k], want[k]) <= 1e-10, (k, rel(cuda[k], want[k]))
        assert rel(cuda[k], cpu[k]) <= 1e-10, (k, rel(cuda[k], cpu[k]))


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("cell", CELLS)
def test_stack_dropout_float32_cuda_matches_cpu(cell, lib):
    seed = zlib.crc32(f"f32-{cell}".encode())
    p, io = make_io(cell, 3, True, False, np.float32, seed)
    kw = dict(layers=3, bidir=True, batch_first=False, dropout=0.45, seed=77, lengths=LENGTHS)
    cuda, cuda_masks = forward_backward(cell, p, io, lambda a: put(a, lib), **kw)
    cpu, cpu_masks = forward_backward(cell, p, io, lambda a: a, **kw)
    for a, b in zip(cuda_masks, cpu_masks):
        assert np.array_equal(a, b)
    for k in cpu:
        assert cuda[k].dtype == np.float32, k
        assert rel(cuda[k], cpu[k]) <= 1e-4, (k, rel(cuda[k], cpu[k]))


@pytest.mark.parametrize("lib", LIBS)
def test_dropout_masks_follow_the_seed_only(lib):
    """Same seed: same masks and bitwise-equal outputs (also across dtypes for the masks);
    another seed: other masks; keep rate 1-p, layers independent (4 sigma)."""
    p, io = make_io("lstm", 3, False, False, np.float32, 1)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    x = put(io["x"], lib)

    def fwd(params, seed, xx=x):
        y, _, _, ctx = F.stack_forward("lstm", xx, put_all(params, lib), num_layers=3,
                                       dropout=0.4, seed=seed)
        return get(y), [get(m) for m in ctx.keep_masks]

    y1, m1 = fwd(p, 5)
    y2, m2 = fwd(p, 5)
    y3, m3 = fwd(p, 6)
    _, m64 = fwd(p64, 5, put(io["x"].astype(np.float64), lib))
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, y3)
    for a, b, c, d in zip(m1, m2, m3, m64):
        assert np.array_equal(a, b) and np.array_equal(a, d) and not np.array_equal(a, c)
        assert abs(a.mean() - 0.6) < 4 * np.sqrt(0.24 / a.size)
    a, b = m1
    assert abs(np.mean(a & b) - 0.36) < 4 * np.sqrt(0.36 * 0.64 / a.size)


@pytest.mark.parametrize("lib", LIBS)
def test_inference_ignores_dropout_and_keeps_no_context(lib):
    p, io = make_io("gru", 2, True, False, np.float64, 2)
    on = lambda a: put(a, lib)
    args = ("gru", on(io["x"]), {k: on(v) for k, v in p.items()})
    y_inf, h_inf, _, ctx = F.stack_forward(*args, num_layers=2, bidirectional=True,
                                           dropout=0.5, seed=3, training=False)
    assert ctx is None
    y0, h0, _, _ = F.stack_forward(*args, num_layers=2, bidirectional=True, dropout=0.0)
    np.testing.assert_array_equal(get(y_inf), get(y0))
    np.testing.assert_array_equal(get(h_inf), get(h0))
    assert where(y_inf) == where(on(io["x"]))


@pytest.mark.parametrize("lib", LIBS)
def test_grads_accumulate_in_place_on_device(lib):
    p, io = make_io("lstm_proj", 2, True, True, np.float64, 4)
    on = lambda a: put(a, lib)
    dp = {k: on(v) for k, v in p.items()}
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, lengths=on(LENGTHS))
    _, _, _, ctx = F.stack_forward("lstm", on(io["x"]), dp, **kw)
    _, _, _, once = F.stack_backward(ctx, on(io["dy"]))
    acc = {k: on(np.full(v.shape, 0.5)) for k, v in p.items()}
    ident = {k: id(v) for k, v in acc.items()}
    for _ in range(2):
        out = F.stack_backward(ctx, on(io["dy"]), grads=acc)[3]
        assert out is acc and {k: id(v) for k, v in out.items()} == ident
    for k in p:
        assert where(acc[k]) == where(dp[k])
        np.testing.assert_allclose(get(acc[k]), 0.5 + 2 * get(once[k]), rtol=1e-12, atol=1e-12)
