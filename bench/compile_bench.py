"""torch.compile vs eager for a training step of Embedding -> 2-layer LSTM -> Linear (issue 13,
pytorch/examples' word_language_model shapes: emsize = nhid = 200, bptt 35, batch 20, vocab
10000), with fusedrnn.torch.LSTM and with torch.nn.LSTM, on the CPU. A step is forward, cross
entropy, backward and an SGD update. Each variant is timed in blocks (order rotated, the first
call of a block untimed), median ms per step. Writes JSON with the machine and versions.

    python bench/compile_bench.py --out bench/results/compile-issue13.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
import warnings

import torch

import fusedrnn
import microbench as mb  # bench/: machine facts as every benchmark records them
import fusedrnn.torch as ft


class WordModel(torch.nn.Module):
    def __init__(self, nn, vocab, emb, hidden):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, num_layers=2)
        self.out = torch.nn.Linear(hidden, vocab)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        return self.out(y)


def make_step(model, compiled):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fwd = torch.compile(model) if compiled else model

    def step(tokens, targets):
        opt.zero_grad(set_to_none=True)
        logits = fwd(tokens)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 targets.reshape(-1))
        loss.backward()
        opt.step()
        return loss
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--emb", type=int, default=200)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--T", type=int, default=35)
    p.add_argument("--B", type=int, default=20)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--per-block", type=int, default=5)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    tokens = torch.randint(0, a.vocab, (a.T, a.B))
    targets = torch.randint(0, a.vocab, (a.T, a.B))
    variants = {}
    for lib, nn in (("fusedrnn.torch", ft), ("torch.nn", torch.nn)):
        for compiled in (False, True):
            torch.manual_seed(1)
            model = WordModel(nn, a.vocab, a.emb, a.hidden)
            step = make_step(model, compiled)
            t0 = time.perf_counter()
            step(tokens, targets)  # compiles (compiled) / warms up
            variants[(lib, compiled)] = {"step": step, "first_call_s": time.perf_counter() - t0,
                                         "ms": []}
    keys = list(variants)
    for block in range(a.blocks):
        order = keys[block % len(keys):] + keys[:block % len(keys)]
        for k in order:
            v = variants[k]
            v["step"](tokens, targets)  # untimed first call of the block
            for _ in range(a.per_block):
                t0 = time.perf_counter()
                v["step"](tokens, targets)
                v["ms"].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for (lib, compiled), v in variants.items():
        rows.append({"lstm": lib, "compiled": compiled, "median_ms": statistics.median(v["ms"]),
                     "first_call_s": v["first_call_s"], "samples": len(v["ms"])})
    med = {(r["lstm"], r["compiled"]): r["median_ms"] for r in rows}
    ratios = {lib: med[(lib, False)] / med[(lib, True)] for lib in ("fusedrnn.torch", "torch.nn")}
    ratios["fusedrnn_compiled_vs_torch_compiled"] = med[("torch.nn", True)] / \
        med[("fusedrnn.torch", True)]
    for r in rows:
        print(f"{r['lstm']:15s} {'compiled' if r['compiled'] else 'eager   '} "
              f"{r['median_ms']:8.2f} ms/step (first call {r['first_call_s']:.1f} s)")
    print("eager/compiled:", {k: round(v, 3) for k, v in ratios.items()})
    doc = {"what": __doc__.split("\n\n")[0], "date": datetime.datetime.now().isoformat(),
           "machine": platform.machine(), **mb.cpu_facts(),
           "torch": torch.__version__, "fusedrnn": fusedrnn.__version__,
           "torch_threads": torch.get_num_threads(),
           "fusedrnn_threads": fusedrnn.get_num_threads(),
           "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE",
                                                  "OPENBLAS_L2_SIZE")},
           "shape": {"vocab": a.vocab, "emb": a.emb, "hidden": a.hidden, "T": a.T, "B": a.B},
           "rows": rows, "ratios": ratios,
           "timing": f"{a.blocks} blocks x {a.per_block} steps, order rotated, first call of "
                     "each block untimed; median"}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
