"""Per-call cost of a tiny fusedrnn.torch call (GRUCell 16 -> 16, batch 1: the kernels take a few
microseconds, the rest is the adapter's Python and autograd path) next to torch.nn.GRUCell, with
no gradient and as a training step (forward + backward). Median over 7 runs of 500 (200) calls.
The adapter's per-call path is what this measures: run it before and after changing it.

    python bench/torch_call_overhead.py --out bench/results/torch-call-overhead-<label>.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
import warnings

import torch

import fusedrnn
import fusedrnn.torch as ft
import microbench as mb  # bench/: machine facts as every benchmark records them


def per_call_us(fn, calls, runs=7):
    for _ in range(max(10, calls // 5)):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", default="")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    for name, nn in (("fusedrnn.torch", ft), ("torch.nn", torch.nn)):
        torch.manual_seed(0)
        cell = nn.GRUCell(16, 16)
        x, h = torch.randn(1, 16), torch.zeros(1, 16)
        xg = x.clone().requires_grad_()

        def no_grad(cell=cell, x=x, h=h):
            with torch.no_grad():
                cell(x, h)

        def train(cell=cell, xg=xg, h=h):
            cell(xg, h).sum().backward()
        rows.append({"module": name, "no_grad_us": per_call_us(no_grad, 500),
                     "train_step_us": per_call_us(train, 200)})
        print(f"{name:15s} no grad {rows[-1]['no_grad_us']:7.1f} us   train step "
              f"{rows[-1]['train_step_us']:7.1f} us")
    doc = {"what": __doc__.split("\n\n")[0], "label": a.label,
           "date": datetime.datetime.now().isoformat(), "machine": platform.machine(),
           **mb.cpu_facts(), "torch": torch.__version__, "fusedrnn": fusedrnn.__version__,
           "torch_threads": torch.get_num_threads(), "rows": rows}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
