"""Bit-identity check of two fusedrnn builds: run a fixed set of stack forward/backward cases on
each build, save every output and gradient, and compare the files bit for bit.

    PYTHONPATH=<build A>/python python bench/tools/bit_identity.py --out a.npz
    PYTHONPATH=<build B>/python python bench/tools/bit_identity.py --out b.npz
    python bench/tools/bit_identity.py --compare a.npz b.npz

The cases: every cell (rnn_tanh, rnn_relu, lstm, lstm with proj_size, gru, gru with
reset_after=False), float32 and float64, 2 layers, bidirectional, ragged lengths,
B in {1, 3, 8, 33}, T*B below and above 256 rows (the dot-kernel / BLAS input projection
crossover), batch_first off and on, h0/c0 given or not, one case with dropout and one with NaN
in the padding of x; each under 1 and 2 threads (H = 64: two loop threads of 32 units), and in
one process per instruction set (FUSEDRNN_ISA=generic, avx2, avx512; read at import; a path
the CPU lacks falls back, and the file records the path actually run). Only the stack_* API.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ISAS = ("generic", "avx2", "avx512")
CELLS = [  # name: (mode, reset_after, proj_size, bias)
    ("rnn_tanh", ("rnn_tanh", True, 0, True)),
    ("rnn_relu", ("rnn_relu", True, 0, False)),
    ("lstm", ("lstm", True, 0, True)),
    ("lstm_proj", ("lstm", True, 24, True)),
    ("gru", ("gru", True, 0, True)),
    ("gru_v1", ("gru", False, 0, True)),
]
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
H, I, LAYERS = 64, 24, 2


def cases():
    for cell, spec in CELLS:
        for dtype in ("float32", "float64"):
            for B in (1, 3, 8, 33):
                # T*B <= 256 rows, then > 256
                for T in (max(1, min(6, 256 // B)), 256 // B + 1 + (B == 1) * 20):
                    for batch_first in (False, True):
                        name = f"{cell}/{dtype}/B{B}/T{T}/{'bf' if batch_first else 'tm'}"
                        dropout = 0.3 if (cell == "lstm" and dtype == "float32" and B == 8
                                          and not batch_first) else 0.0
                        nan_pad = cell == "gru" and B == 8 and not batch_first
                        yield name, spec, dtype, B, T, batch_first, dropout, nan_pad


def run_case(F, spec, dtype, B, T, batch_first, dropout, nan_pad, case_index):
    mode, reset_after, P, bias = spec
    rng = np.random.default_rng(1000 + case_index)
    dt = np.dtype(dtype)
    G, R, D = GATES[mode], (P or H), 2
    w = 0.1 if mode == "rnn_relu" else 0.3  # relu at 0.3 overflows within 277 steps
    params = {}
    for layer in range(LAYERS):
        inp = I if layer == 0 else D * R
        for sfx in ("", "_reverse"):
            params[f"weight_ih_l{layer}{sfx}"] = rng.uniform(-w, w, (G * H, inp)).astype(dt)
            params[f"weight_hh_l{layer}{sfx}"] = rng.uniform(-w, w, (G * H, R)).astype(dt)
            if bias:
                params[f"bias_ih_l{layer}{sfx}"] = rng.uniform(-w, w, G * H).astype(dt)
                params[f"bias_hh_l{layer}{sfx}"] = rng.uniform(-w, w, G * H).astype(dt)
            if P:
                params[f"weight_hr_l{layer}{sfx}"] = rng.uniform(-w, w, (P, H)).astype(dt)
    lengths = rng.integers(1, T + 1, B).astype(np.int64)
    lengths[rng.integers(0, B)] = T
    x = rng.standard_normal((T, B, I)).astype(dt)
    if nan_pad:
        for b in range(B):
            x[lengths[b]:, b] = np.nan
    if batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    with_h0 = case_index % 2 == 0
    h0 = rng.standard_normal((LAYERS * D, B, R)).astype(dt) if with_h0 else None
    c0 = (rng.standard_normal((LAYERS * D, B, H)).astype(dt)
          if with_h0 and mode == "lstm" else None)
    y, h_n, c_n, ctx = F.stack_forward(mode, x, params, num_layers=LAYERS, bidirectional=True,
                                       h0=h0, c0=c0, lengths=lengths, batch_first=batch_first,
                                       dropout=dropout, seed=1234, reset_after=reset_after,
                                       training=True)
    dy = rng.standard_normal(y.shape).astype(dt)
    dh_n = rng.standard_normal(h_n.shape).astype(dt)
    dc_n = rng.standard_normal(c_n.shape).astype(dt) if c_n is not None else None
    out = {"y": y, "h_n": h_n}
    if c_n is not None:
        out["c_n"] = c_n
    if dropout:
        for i, m in enumerate(ctx.keep_masks):
            out[f"keep_mask{i}"] = np.asarray(m)
    dx, dh0, dc0, grads = F.stack_backward(ctx, dy, dh_n, dc_n)
    out["dx"], out["dh0"] = dx, dh0
    if dc0 is not None:
        out["dc0"] = dc0
    for k, v in grads.items():
        out[f"grad/{k}"] = v
    return out


def child(isa, path):
    import fusedrnn
    from fusedrnn import functional as F
    arrays = {f"{isa}/_meta/simd_path": np.array(fusedrnn.config()["simd_path"])}
    for threads in (1, 2):
        fusedrnn.set_num_threads(threads)
        for i, (name, *rest) in enumerate(cases()):
            for k, v in run_case(F, *rest, i).items():
                arrays[f"{isa}/threads{threads}/{name}/{k}"] = np.asarray(v)
    np.savez(path, **arrays)


def run_all(out, isas):
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for isa in isas:
            part = os.path.join(tmp, f"{isa}.npz")
            env = dict(os.environ, FUSEDRNN_ISA=isa)
            subprocess.run([sys.executable, os.path.abspath(__file__), "--child", isa, part],
                           env=env, check=True)
            with np.load(part) as z:
                arrays.update({k: z[k] for k in z.files})
                print(f"{isa}: simd path {z[f'{isa}/_meta/simd_path']}, "
                      f"{len(z.files) - 1} arrays")
    np.savez(out, **arrays)
    print(f"wrote {out}: {len(arrays)} arrays")


def as_bits(a):
    if a.dtype.kind in "fiub" and a.dtype.itemsize in (1, 2, 4, 8):
        return a.view(f"u{a.dtype.itemsize}")
    return a  # strings (metadata)


def compare(a_path, b_path):
    with np.load(a_path) as za, np.load(b_path) as zb:
        ka, kb = set(za.files), set(zb.files)
        differ = []
        for k in sorted(ka & kb):
            a, b = za[k], zb[k]
            if a.dtype != b.dtype or a.shape != b.shape:
                differ.append(f"{k}: dtype/shape {a.dtype}{a.shape} vs {b.dtype}{b.shape}")
            elif not np.array_equal(as_bits(a), as_bits(b)):
                n = int(np.count_nonzero(as_bits(a) != as_bits(b)))
                differ.append(f"{k}: {n} of {a.size} elements differ in their bits")
        for k in sorted(ka - kb):
            differ.append(f"{k}: only in {a_path}")
        for k in sorted(kb - ka):
            differ.append(f"{k}: only in {b_path}")
        for line in differ:
            print("DIFF", line)
        print(f"compared {len(ka & kb)} arrays ({len(ka)} in {a_path}, {len(kb)} in {b_path}): "
              f"{len(differ)} differ" + ("" if differ else " -- bit-identical"))
        return 1 if differ else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the outputs and gradients of this build here (.npz)")
    ap.add_argument("--isa", nargs="*", default=list(ISAS), choices=ISAS)
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
    elif a.compare:
        sys.exit(compare(*a.compare))
    elif a.out:
        run_all(a.out, a.isa)
    else:
        ap.error("give --out or --compare")


if __name__ == "__main__":
    main()
