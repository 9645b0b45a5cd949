"""How much a small recurrent call's time depends on where its arrays lie: the same GRU
(H=256, B=1, T=50, inference, float32, 2 threads) timed with its weights and input allocated
after a growing pad (each pad shifts the later NumPy allocations by 1 KiB). Found while A/B-ing
two builds: the call is bimodal here (fast and ~35% slower modes alternating with the
addresses, in either build), so an A/B of such a row must vary addresses, or it measures the
heap, not the code.

    python bench/tools/address_sensitivity.py [--out result.json]
"""
import argparse
import json
import os
import platform
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--pads", type=int, default=8)
    a = ap.parse_args()
    import fusedrnn
    from fusedrnn import functional as F
    fusedrnn.set_num_threads(2)
    H, B, T, G = 256, 1, 50, 3
    rows, keep = [], []
    for pad in range(a.pads):
        keep.append(np.empty(pad * 1024 + 64, np.uint8))  # shifts the allocations below
        rng = np.random.default_rng(0)
        p = {"weight_ih_l0": rng.uniform(-.1, .1, (G * H, H)).astype(np.float32),
             "weight_hh_l0": rng.uniform(-.1, .1, (G * H, H)).astype(np.float32),
             "bias_ih_l0": np.zeros(G * H, np.float32), "bias_hh_l0": np.zeros(G * H, np.float32)}
        x = rng.standard_normal((T, B, H)).astype(np.float32)
        for _ in range(5):
            F.stack_forward("gru", x, p, training=False)
        ts = []
        for _ in range(30):
            t0 = time.perf_counter()
            F.stack_forward("gru", x, p, training=False)
            ts.append(time.perf_counter() - t0)
        rows.append({"pad_kib": pad, "median_ms": float(np.median(ts)) * 1e3,
                     "w_hh_addr_mod_4096": int(p["weight_hh_l0"].ctypes.data % 4096),
                     "x_addr_mod_4096": int(x.ctypes.data % 4096)})
        keep.append((p, x))
        print(rows[-1])
    if a.out:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                   if ln.startswith("model name"))
        json.dump({"machine": platform.node(), "cpu_model": cpu, "cores": os.cpu_count(),
                   "threads": 2, "fusedrnn": fusedrnn.__file__, "rows": rows},
                  open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
