#!/usr/bin/env python3
"""A tiny forward + backward of every cell on the GPU, for compute-sanitizer (not a pytest
module: its name does not start with test_).

    compute-sanitizer --tool memcheck  --error-exitcode 99 python tests/cuda/sanitizer_case.py
    compute-sanitizer --tool racecheck --error-exitcode 99 python tests/cuda/sanitizer_case.py

Cells: LSTM with projection, GRU in both forms (reset_after True and False), RNN tanh and relu;
each as 2 layers x 2 directions with ragged lengths and dropout, training forward, backward
with gradient accumulation, and an inference forward; plus one single-layer call (reverse) and
one batch_first stack; float32 and float64. Every device result is checked against the CPU
kernels on the same inputs (same seed, so same dropout masks): exit status 1 on a mismatch,
0 when all agree. The array library's memory pool is switched off (CuPy's allocator,
PYTORCH_NO_CUDA_MEMORY_CACHING for torch) so each array is its own cudaMalloc and memcheck sees
accesses past its end.

    --lib cupy|torch   device arrays of this library (default: CuPy if installed, else torch)
    --lib numpy        no GPU: the CPU against itself (checks this script, not the kernels)
"""

import argparse
import os
import sys
import time
import zlib

import numpy as np

CELLS = [("lstm", True, 3), ("gru", True, 0), ("gru", False, 0), ("rnn_tanh", True, 0),
         ("rnn_relu", True, 0)]  # (mode, reset_after, proj_size)
T, B, I, H = 5, 3, 4, 6
LENGTHS = np.array([5, 2, 4], dtype=np.int64)
TOL = {np.float32: 1e-4, np.float64: 1e-10}


def pick_library(name):
    if name == "numpy":  # a host-only dry run of this script's logic (CPU against CPU)
        return "numpy", lambda a: a.copy(), lambda a: a
    if name in (None, "cupy"):
        try:
            import cupy
            cupy.cuda.set_allocator(None)  # plain cudaMalloc/cudaFree per array
            return "cupy", cupy.asarray, lambda a: a.get()
        except ImportError:
            if name == "cupy":
                raise
    os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")  # before torch's first alloc
    import torch
    return ("torch", lambda a: torch.as_tensor(a, device="cuda"),
            lambda a: a.detach().cpu().numpy())


def params(mode, proj, dtype, rng, layers=2, D=2):
    G = {"lstm": 4, "gru": 3}.get(mode, 1)
    R = proj or H
    p = {}
    for l in range(layers):
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            p["weight_ih" + sfx] = rng.uniform(-0.5, 0.5, (G * H, I if l == 0 else D * R))
            p["weight_hh" + sfx] = rng.uniform(-0.5, 0.5, (G * H, R))
            p["bias_ih" + sfx] = rng.uniform(-0.5, 0.5, G * H)
            p["bias_hh" + sfx] = rng.uniform(-0.5, 0.5, G * H)
            if proj:
                p["weight_hr" + sfx] = rng.uniform(-0.5, 0.5, (proj, H))
    return {k: v.astype(dtype) for k, v in p.items()}, R


def rel(a, b):
    s = float(np.abs(b).max()) if b.size else 0.0
    return float(np.abs(a.astype(np.float64) - b).max() / (s or 1.0)) if b.size else 0.0


def stack_case(F, mode, reset_after, proj, dtype, put, get, batch_first=False):
    """One stack on the device and on the CPU; returns the worst relative error."""
    rng = np.random.default_rng(zlib.crc32(repr((mode, reset_after, proj, batch_first)).encode()))
    p, R = params(mode, proj, dtype, rng)
    lead = (B, T) if batch_first else (T, B)
    x = rng.uniform(-1, 1, lead + (I,)).astype(dtype)
    h0 = rng.uniform(-1, 1, (4, B, R)).astype(dtype)
    c0 = rng.uniform(-1, 1, (4, B, H)).astype(dtype) if mode == "lstm" else None
    dy = rng.uniform(-1, 1, lead + (2 * R,)).astype(dtype)
    kw = dict(num_layers=2, bidirectional=True, batch_first=batch_first, dropout=0.25, seed=7,
              reset_after=reset_after)
    results = []
    for on, back in ((put, get), (lambda a: a, lambda a: a)):
        dev = lambda a, on=on: None if a is None else on(a)
        dp = {k: dev(v) for k, v in p.items()}
        y, h_n, c_n, ctx = F.stack_forward(mode, dev(x), dp, h0=dev(h0), c0=dev(c0),
                                           lengths=dev(LENGTHS), **kw)
        acc = {k: dev(np.zeros_like(v)) for k, v in p.items()}
        dx, dh0, dc0, _ = F.stack_backward(ctx, dev(dy), h_n, c_n, grads=acc)
        F.stack_backward(ctx, dev(dy), h_n, c_n, grads=acc)  # accumulate a second time
        y_inf = F.stack_forward(mode, dev(x), dp, h0=dev(h0), c0=dev(c0), lengths=dev(LENGTHS),
                                training=False, **kw)[0]
        masks = [None if m is None else back(m) for m in ctx.keep_masks]
        out = [y, h_n, c_n, dx, dh0, dc0, y_inf, *acc.values()]
        results.append(([None if a is None else back(a) for a in out], masks))
    (dev_out, dev_masks), (cpu_out, cpu_masks) = results
    for a, b in zip(dev_masks, cpu_masks):
        if not np.array_equal(a, b):
            return float("inf")
    return max(rel(a, b) for a, b in zip(dev_out, cpu_out) if b is not None)


def layer_case(F, dtype, put, get):
    """lstm_forward/backward (projection, reverse, lengths) and gru_forward (reset_after=False)."""
    rng = np.random.default_rng(11)
    u = lambda *s: rng.uniform(-0.5, 0.5, s).astype(dtype)
    a = dict(x=u(T, B, I), w_ih=u(4 * H, I), w_hh=u(4 * H, 2), b_ih=u(4 * H), b_hh=u(4 * H),
             h0=u(B, 2), c0=u(B, H), w_hr=u(2, H), dy=u(T, B, 2))
    g = dict(w_ih=u(3 * H, I), w_hh=u(3 * H, H), h0=u(B, H))
    worst = 0.0
    res = []
    for on, back in ((put, get), (lambda v: v, lambda v: v)):
        d = {k: on(v) for k, v in a.items()}
        y, h, c, ctx = F.lstm_forward(d["x"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                                      d["h0"], d["c0"], w_hr=d["w_hr"], lengths=on(LENGTHS),
                                      reverse=True)
        grads = F.lstm_backward(ctx, d["dy"], h, c)
        y2, h2, ctx2 = F.gru_forward(d["x"], on(g["w_ih"]), on(g["w_hh"]), h0=on(g["h0"]),
                                     reset_after=False, lengths=on(LENGTHS))
        grads2 = F.gru_backward(ctx2, y2)
        res.append([back(v) for v in (y, h, c, y2, h2, *grads.values(), *grads2.values())])
    for x_dev, x_cpu in zip(*res):
        worst = max(worst, rel(x_dev, x_cpu))
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", choices=["cupy", "torch", "numpy"])
    args = ap.parse_args(argv)
    lib, put, get = pick_library(args.lib)
    from fusedrnn import functional as F
    t0 = time.perf_counter()
    failed = []
    for dtype in (np.float32, np.float64):
        for mode, reset_after, proj in CELLS:
            name = f"{mode}{'' if reset_after else '(v1)'}{f' proj={proj}' if proj else ''}"
            err = stack_case(F, mode, reset_after, proj, dtype, put, get)
            ok = err <= TOL[dtype]
            print(f"{np.dtype(dtype).name} {name:16s} 2L bi lengths dropout: max rel err vs "
                  f"CPU {err:.2e} {'ok' if ok else 'MISMATCH'}", flush=True)
            if not ok:
                failed.append(f"{np.dtype(dtype).name} {name}")
        err = stack_case(F, "lstm", True, 0, dtype, put, get, batch_first=True)
        err = max(err, layer_case(F, dtype, put, get))
        ok = err <= TOL[dtype]
        print(f"{np.dtype(dtype).name} batch_first stack + single-layer calls: max rel err vs "
              f"CPU {err:.2e} {'ok' if ok else 'MISMATCH'}", flush=True)
        if not ok:
            failed.append(f"{np.dtype(dtype).name} batch_first/single-layer")
    print(f"sanitizer_case ({lib} arrays): {len(failed)} mismatches in "
          f"{time.perf_counter() - t0:.1f} s" + (f": {failed}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
