"""Regularised LSTMs (issue 14, item 6): each option's cost against fusedrnn's plain fused
LSTM, and its speed-up over the PyTorch way of getting it (a Python loop over time steps of
torch ops: ``LSTMCell`` where it fits, gates by hand with ``F.layer_norm``/``clamp``/peepholes
where it does not; DropConnect as AWD-LSTM's weight drop on ``torch.nn.LSTM``).

Every row runs through ``fusedrnn.torch`` (what a user calls): ``RegularisedLSTM`` for the
options, ``fusedrnn.torch.LSTM`` for the plain fused cell. Training = forward + backward of
``y.sum()`` in train mode (masks drawn); inference = forward in eval mode under ``no_grad``.
Libraries are timed in blocks, the order shuffled every round, the first call of each block
untimed; each number is the median over rounds.

    python bench/regularised_bench.py --out bench/results/regularised-issue14.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
import microbench as mb  # noqa: E402  (machine facts as every benchmark records them)

import fusedrnn  # noqa: E402
import fusedrnn.torch as ft  # noqa: E402

VARIANTS = {
    "layer_norm": dict(layer_norm=True),
    "zoneout": dict(zoneout_h=0.1, zoneout_c=0.05),
    "recurrent_dropout": dict(recurrent_dropout=0.25),
    "dropconnect": dict(dropconnect=0.5),
    "gate_clip": dict(gate_clip=3.0),
    "cell_clip": dict(cell_clip=3.0),
    "peepholes": dict(peepholes=True),
    "ln+zoneout": dict(layer_norm=True, zoneout_h=0.1, zoneout_c=0.05),
}
TARGET = {"layer_norm": 1.25, "ln+zoneout": 1.25}  # others: 1.1 (issue 14)


class TorchLoopLSTM(torch.nn.Module):
    """The PyTorch way: a loop over time of torch ops, one LSTM layer with the options."""

    def __init__(self, I, H, opts):
        super().__init__()
        self.H, self.o = H, opts
        self.cell = torch.nn.LSTMCell(I, H)
        if opts.get("layer_norm"):
            self.ln_ih, self.ln_hh = torch.nn.LayerNorm(4 * H), torch.nn.LayerNorm(4 * H)
            self.ln_c = torch.nn.LayerNorm(H)
        if opts.get("peepholes"):
            self.peep = torch.nn.Parameter(torch.zeros(3 * H))

    def forward(self, x):
        T, B, _ = x.shape
        H, o, cell = self.H, self.o, self.cell
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        custom = any(k in o for k in ("layer_norm", "gate_clip", "cell_clip", "peepholes"))
        zh, zc = o.get("zoneout_h", 0.0), o.get("zoneout_c", 0.0)
        rd = o.get("recurrent_dropout", 0.0)
        mask = None
        if rd and self.training:
            mask = torch.bernoulli(x.new_full((B, H), 1 - rd)) / (1 - rd)
        ys = []
        for t in range(T):
            hin = h * mask if mask is not None else h
            if not custom:
                hn, cn = cell(x[t], (hin, c))
            else:
                xp, hp = F.linear(x[t], cell.weight_ih), F.linear(hin, cell.weight_hh)
                if o.get("layer_norm"):
                    xp, hp = self.ln_ih(xp), self.ln_hh(hp)
                a = xp + hp + cell.bias_ih + cell.bias_hh
                ai, af, ag, ao = a.chunk(4, 1)
                if o.get("peepholes"):
                    pi, po, pf = self.peep.chunk(3)
                    ai, af = ai + pi * c, af + pf * c
                gc = o.get("gate_clip")
                if gc:
                    ai, af, ag = ai.clamp(-gc, gc), af.clamp(-gc, gc), ag.clamp(-gc, gc)
                cn = torch.sigmoid(af) * c + torch.sigmoid(ai) * torch.tanh(ag)
                if o.get("cell_clip"):
                    cn = cn.clamp(-o["cell_clip"], o["cell_clip"])
                if o.get("peepholes"):
                    ao = ao + po * cn
                if gc:
                    ao = ao.clamp(-gc, gc)
                hn = torch.sigmoid(ao) * torch.tanh(self.ln_c(cn) if o.get("layer_norm") else cn)
            if zh or zc:
                if self.training:
                    mh = torch.bernoulli(torch.full_like(h, zh))
                    mc = torch.bernoulli(torch.full_like(c, zc))
                else:
                    mh, mc = zh, zc
                hn, cn = mh * h + (1 - mh) * hn, mc * c + (1 - mc) * cn
            h, c = hn, cn
            ys.append(h)
        return torch.stack(ys)


class WeightDropLSTM(torch.nn.Module):
    """AWD-LSTM's DropConnect: torch.nn.LSTM run on a dropped-out copy of W_hh every call."""

    def __init__(self, I, H, p):
        super().__init__()
        self.lstm, self.p = torch.nn.LSTM(I, H), p

    def forward(self, x):
        w = F.dropout(self.lstm.weight_hh_l0, self.p, self.training)
        params = {n: v for n, v in self.lstm.named_parameters()}
        params["weight_hh_l0"] = w
        return torch.func.functional_call(self.lstm, params, (x,))[0]


def runner(model, x, train):
    model.train(train)
    if train:
        xg = x.clone().requires_grad_()

        def step():
            out = model(xg)
            out = out[0] if isinstance(out, tuple) else out
            out.sum().backward()
        return step

    def infer():
        with torch.no_grad():
            model(x)
    return infer


def time_blocks(fns, rounds, calls):
    """{name: median seconds per call}: blocks of `calls` timed calls per library, the first
    call of each block untimed, the order shuffled every round (a fixed rotation keeps the same
    neighbours: one peer always ran right after torch.nn.LSTM's block, whose threads were still
    spinning, and measured slow)."""
    names = list(fns)
    samples = {n: [] for n in names}
    rng = random.Random(0)
    for _ in range(rounds):
        order = names[:]
        rng.shuffle(order)
        for n in order:
            fns[n]()
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[n]()
            samples[n].append((time.perf_counter() - t0) / calls)
    return {n: statistics.median(v) for n, v in samples.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="B=16 only, 3 rounds (a smoke test)")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.quick:
        a.batches, a.rounds = [16], 3
    torch.set_num_threads(a.threads)
    fusedrnn.set_num_threads(a.threads)
    H = I = a.hidden
    rows = []
    for B in a.batches:
        x = torch.randn(a.steps, B, I)
        for train in (True, False):
            calls = max(1, int(40 / max(B, 4) * 4 / a.steps * 50)) if train else 3
            torch.manual_seed(0)
            fns = {"fused_plain": runner(ft.LSTM(I, H), x, train)}
            for v in a.variants:
                torch.manual_seed(0)
                fns["fused_" + v] = runner(ft.RegularisedLSTM(I, H, **VARIANTS[v]), x, train)
                torch.manual_seed(0)
                fns["torch_" + v] = runner(
                    WeightDropLSTM(I, H, VARIANTS[v]["dropconnect"]) if v == "dropconnect"
                    else TorchLoopLSTM(I, H, VARIANTS[v]), x, train)
            fns["torch_plain"] = runner(torch.nn.LSTM(I, H), x, train)
            t = time_blocks(fns, a.rounds, calls)
            mode = "training" if train else "inference"
            for v in a.variants:
                row = dict(mode=mode, B=B, H=H, T=a.steps, variant=v,
                           fused_ms=1e3 * t["fused_" + v], fused_plain_ms=1e3 * t["fused_plain"],
                           torch_way_ms=1e3 * t["torch_" + v],
                           torch_plain_ms=1e3 * t["torch_plain"])
                row["vs_plain"] = row["fused_ms"] / row["fused_plain_ms"]
                row["target"] = TARGET.get(v, 1.1)
                row["speedup_vs_torch_way"] = row["torch_way_ms"] / row["fused_ms"]
                rows.append(row)
                print(f"{mode:9s} B={B:3d} {v:18s} fused {row['fused_ms']:8.2f} ms  "
                      f"x{row['vs_plain']:.2f} of plain (target {row['target']})  "
                      f"torch way {row['torch_way_ms']:8.2f} ms  "
                      f"speed-up {row['speedup_vs_torch_way']:5.1f}x", flush=True)
    if a.out:
        doc = {"what": __doc__.split("\n\n")[0], "date": datetime.datetime.now().isoformat(),
               **mb.cpu_facts(), "torch": torch.__version__, "fusedrnn": fusedrnn.__version__,
               "threads": a.threads, "simd_path": fusedrnn.config()["simd_path"]
               if "simd_path" in fusedrnn.config() else None,
               "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE",
                                                               "OPENBLAS_L2_SIZE")},
               "rounds": a.rounds, "rows": rows}
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
