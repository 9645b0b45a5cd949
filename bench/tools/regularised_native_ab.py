"""Native-level A/B of the regularised kernels against the plain fused LSTM, no torch adapter:
fusedrnn.regularised.stack_forward/backward against fusedrnn.functional.stack_forward/backward
on the same NumPy weights (LSTM, H = I = 256, T = 50, float32). Interleaved blocks, the first
call of each untimed, medians; ratios over the plain kernels in the same run.

    python bench/tools/regularised_native_ab.py [--batches 1 16 64] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fusedrnn.functional as F
import fusedrnn.regularised as fr
from fusedrnn.regularised import Regularisation

OPTIONS = {"cell_clip": dict(cell_clip=100.0), "gate_clip": dict(gate_clip=100.0),
           "zoneout": dict(zoneout_h=0.1, zoneout_c=0.1), "peepholes": dict(peepholes=True),
           "layer_norm": dict(layer_norm=True), "dropconnect": dict(dropconnect=0.3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    H = I = 256
    T = 50
    rng = np.random.default_rng(0)
    for B in a.batches:
        p = {k: rng.uniform(-.06, .06, s).astype(np.float32) for k, s in [
            ("weight_ih_l0", (4 * H, I)), ("weight_hh_l0", (4 * H, H)),
            ("bias_ih_l0", (4 * H,)), ("bias_hh_l0", (4 * H,))]}
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        for mode in ("inference", "training"):
            def plain(x=x, p=p, mode=mode):
                if mode == "inference":
                    return F.stack_forward("lstm", x, p, training=False)
                y, _, _, ctx = F.stack_forward("lstm", x, p, check_inplace=False)
                return F.stack_backward(ctx, y)
            fns = {"plain": plain}
            for name, kw in OPTIONS.items():
                reg = Regularisation(**kw)
                if mode == "inference" and not reg.deterministic_active:
                    continue  # dropouts are off in inference: the plain kernels run
                pp = dict(p, **fr.init_params("lstm", reg, H))

                def run(pp=pp, reg=reg, x=x, mode=mode):
                    if mode == "inference":
                        return fr.stack_forward("lstm", x, pp, reg=reg, training=False)
                    y, _, _, ctx = fr.stack_forward("lstm", x, pp, reg=reg, check_inplace=False)
                    return fr.stack_backward(ctx, y)
                fns[name] = run
            samples = {k: [] for k in fns}
            calls = 5 if mode == "inference" else 3
            for _ in range(a.rounds):
                for k, f in fns.items():
                    f()
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        f()
                    samples[k].append((time.perf_counter() - t0) / calls)
            med = {k: statistics.median(v) for k, v in samples.items()}
            print(f"{mode:9s} B={B:3d} plain {1e3 * med['plain']:7.2f} ms  " + "  ".join(
                f"{k} x{v / med['plain']:.2f}" for k, v in med.items() if k != "plain"),
                flush=True)


if __name__ == "__main__":
    main()
