"""The error 16-bit storage costs (issue 12): the reference's low-precision run (inputs and
parameters rounded to bfloat16/float16, float64 math, outputs rounded once:
``fusedrnn.reference.quantize``) against float64 on the unrounded values, per cell; and the
device backend's 16-bit path (run on the host by its test emulation, the same code a GPU runs)
against the same float64 result. Max |error| / max |value| over y and h_n. Writes JSON.

    python bench/lowp_error.py --out bench/results/lowp-error-issue12.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform

import numpy as np

import fusedrnn
import microbench as mb  # bench/: machine facts as every benchmark records them
from fusedrnn import _C
from fusedrnn import functional as F
from fusedrnn import reference as ref


def case(mode, T, B, H, seed):
    rng = np.random.default_rng(seed)
    G = ref.GATES[mode]
    k = 1 / np.sqrt(H)  # torch's initialisation range
    params = {n: rng.uniform(-k, k, s) for n, s in zip(
        ref.param_names(0, 0), [(G * H, H), (G * H, H), (G * H,), (G * H,)])}
    return params, rng.standard_normal((T, B, H))


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def emulated_16bit(mode, x, params, storage):
    import torch
    dt = getattr(torch, storage)
    t = lambda a: torch.from_numpy(a.astype(np.float32)).to(dt)  # noqa: E731
    old = _C._testing.set_device_emulation(0)
    try:
        y, h, _, _ = F.stack_forward(mode, t(x), {k: t(v) for k, v in params.items()},
                                     training=False)
    finally:
        _C._testing.set_device_emulation(old)
    return y.double().numpy(), h.double().numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, default=50)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--emulated-H", type=int, default=64,
                   help="H of the emulated device rows (the host emulation is slow)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rows = []
    for mode in ("lstm", "gru", "rnn_tanh"):
        for storage in ("bfloat16", "float16"):
            q = lambda v, s=storage: ref.quantize(v, s)  # noqa: E731
            row = {"cell": mode, "storage": storage, "T": a.T, "B": a.B}
            params, x = case(mode, a.T, a.B, a.H, 0)
            y64, h64, _, _ = ref.stack_forward(mode, x, params)
            yq, hq, _, _ = ref.stack_forward(mode, q(x), {k: q(v) for k, v in params.items()})
            row["H"] = a.H
            row["reference_lowp_vs_f64"] = {"y": rel(q(yq), y64), "h_n": rel(q(hq), h64)}
            row["reference_lowp_inputs_only_vs_f64"] = {"y": rel(yq, y64), "h_n": rel(hq, h64)}
            params, x = case(mode, a.T, a.B, a.emulated_H, 1)
            y64, h64, _, _ = ref.stack_forward(mode, x, params)
            yq, hq, _, _ = ref.stack_forward(mode, q(x), {k: q(v) for k, v in params.items()})
            ye, he = emulated_16bit(mode, x, params, storage)
            row["emulated"] = {"H": a.emulated_H,
                               "reference_lowp_vs_f64": {"y": rel(q(yq), y64),
                                                         "h_n": rel(q(hq), h64)},
                               "device_16bit_vs_f64": {"y": rel(ye, y64), "h_n": rel(he, h64)}}
            rows.append(row)
            print(f"{mode:8s} {storage:8s} H={a.H}: low-precision reference run vs f64 "
                  f"y {row['reference_lowp_vs_f64']['y']:.2e} | H={a.emulated_H}: reference "
                  f"{row['emulated']['reference_lowp_vs_f64']['y']:.2e}, device 16-bit "
                  f"{row['emulated']['device_16bit_vs_f64']['y']:.2e}", flush=True)
    doc = {"what": __doc__.split("\n\n")[0], "date": datetime.datetime.now().isoformat(),
           "machine": platform.machine(), **mb.cpu_facts(),
           "fusedrnn": fusedrnn.__version__, "numpy": np.__version__, "threads": 1,
           "rows": rows}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
