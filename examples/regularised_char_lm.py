"""Layer norm and zoneout against a plain LSTM: the same character language model, the same budget.

The data and the truncated-BPTT recipe are examples/char_lm.py's (the Python documentation
topics that ship with CPython; the LSTM state carried between chunks, gradients stopped at
their boundary), here in PyTorch: ``Embedding -> LSTM -> Linear``. Two models train for the
same number of steps with the same seed, optimiser and schedule:

* ``plain``: ``fusedrnn.torch.LSTM`` (a drop-in ``torch.nn.LSTM``);
* ``ln+zoneout``: ``fusedrnn.torch.RegularisedLSTM(layer_norm=True, zoneout_h=...,
  zoneout_c=...)``, Ba et al.'s layer normalisation (Haste's form) and Krueger et al.'s zoneout,
  fused in the same kind of native loop.

After every epoch both are evaluated on held-out text (eval mode: zoneout's expectation); the
validation curves (bits per character) and the wall time go to ``--out`` (JSON) and ``--plot``
(PNG). Measured with the defaults (seed 0, 2 cores; bench/results/regularised-char-lm-issue14.*):
validation 2.09 bits/char with layer norm + zoneout against 2.30 for the plain LSTM after the
same 12 epochs (1056 steps), 42 s against 31 s of training.

    python examples/regularised_char_lm.py                      # ~80 s on 2 cores
    python examples/regularised_char_lm.py --quick
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import _cli  # examples/_cli.py: the options every example shares
from char_lm import batchify, load_text, unigram_entropy_bits

import fusedrnn.torch as ft

FULL = dict(epochs=12, max_chars=200_000, hidden_size=256, batch_size=32)
QUICK = dict(epochs=2, max_chars=40_000, hidden_size=64, batch_size=16)


class CharLM(torch.nn.Module):
    """Embedding -> (Regularised)LSTM -> Linear."""

    def __init__(self, vocab_size, embed_size, hidden_size, lstm_kwargs):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, embed_size)
        cls = ft.RegularisedLSTM if lstm_kwargs else ft.LSTM
        self.lstm = cls(embed_size, hidden_size, **lstm_kwargs)
        self.head = torch.nn.Linear(hidden_size, vocab_size)
        with torch.no_grad():  # forget gates start open (both models)
            self.lstm.bias_ih_l0[hidden_size:2 * hidden_size] = 1.0
            self.lstm.bias_hh_l0[hidden_size:2 * hidden_size] = 0.0

    def forward(self, tokens, state=None):
        y, state = self.lstm(self.emb(tokens), state)     # (T, B, H)
        return self.head(y), state


@torch.no_grad()
def evaluate_bpc(model, data, bptt):
    """Bits per character of ``data`` (T, B), read in chunks with the state carried."""
    model.eval()
    state, nats, count = None, 0.0, 0
    for i in range(0, len(data) - 1, bptt):
        x, target = data[i:i + bptt], data[i + 1:i + 1 + bptt]
        x = x[:len(target)]
        logits, state = model(x, state)
        nats += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"))
        count += target.numel()
    return nats / count / math.log(2)


def train_one(name, lstm_kwargs, train, val, V, args, bar):
    torch.manual_seed(args.seed)
    model = CharLM(V, args.embed_size, args.hidden_size, lstm_kwargs)
    chunks = list(range(0, len(train) - 1, args.bptt))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * len(chunks),
                                                       eta_min=args.lr / 10)
    curve = [dict(epoch=0, step=0, val_bpc=evaluate_bpc(model, val, args.bptt),
                  train_bpc=None, wall_s=0.0)]
    start, steps = time.perf_counter(), 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        state, nats, count = None, 0.0, 0
        for i in chunks:
            x, target = train[i:i + args.bptt], train[i + 1:i + 1 + args.bptt]
            x = x[:len(target)]
            logits, state = model(x, state)
            state = tuple(s.detach() for s in state)  # truncated BPTT
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), target.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            sched.step()
            nats += loss.item() * target.numel()
            count += target.numel()
            steps += 1
            bar.update()
        wall = time.perf_counter() - start
        curve.append(dict(epoch=epoch, step=steps, val_bpc=evaluate_bpc(model, val, args.bptt),
                          train_bpc=nats / count / math.log(2), wall_s=wall))
        bar.set_postfix({name: f"val {curve[-1]['val_bpc']:.3f}"})
    return curve


def plot(curves, unigram, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (name, curve), color in zip(curves.items(), ("tab:blue", "tab:red")):
        ep = [c["epoch"] for c in curve[1:]]
        ax.plot(ep, [c["val_bpc"] for c in curve[1:]], "-o", color=color,
                label=f"{name}: validation")
        ax.plot(ep, [c["train_bpc"] for c in curve[1:]], "--", color=color, alpha=0.6,
                label=f"{name}: training (train mode)")
    ax.axhline(unigram, color="gray", lw=0.8, ls=":", label="character frequencies alone")
    ax.set_xlabel("epoch (same steps, seed and schedule for both)")
    ax.set_ylabel("bits per character")
    ax.set_title("char LM on the Python docs: plain LSTM vs layer norm + zoneout")
    lo = min(min(c["val_bpc"], c["train_bpc"]) for cur in curves.values() for c in cur[1:])
    ax.set_ylim(lo - 0.1, min(unigram + 0.2, ax.get_ylim()[1]))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    p = _cli.parser(__doc__)
    p.add_argument("--epochs", type=int, help=f"passes over the text (default {FULL['epochs']})")
    p.add_argument("--max-chars", type=int, help=f"characters used (default {FULL['max_chars']})")
    p.add_argument("--hidden-size", type=int, help=f"LSTM units (default {FULL['hidden_size']})")
    p.add_argument("--embed-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, help=f"streams (default {FULL['batch_size']})")
    p.add_argument("--bptt", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam, cosine-annealed to a tenth")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--zoneout-h", type=float, default=0.1)
    p.add_argument("--zoneout-c", type=float, default=0.3)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--out", help="write the curves as JSON here")
    p.add_argument("--plot", default=str(Path(__file__).parent / "output" /
                                        "regularised_char_lm.png"), help="PNG of the curves")
    return _cli.parse(p, argv, QUICK, FULL)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    text = load_text(args.max_chars)
    itos = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(itos)}
    ids = np.array([stoi[ch] for ch in text], dtype=np.int64)
    n_val = int(len(ids) * args.val_fraction)
    train = torch.from_numpy(batchify(ids[:-n_val], args.batch_size))
    val = torch.from_numpy(batchify(ids[-n_val:], 8))
    V = len(itos)
    variants = {"plain": {},
                "ln+zoneout": dict(layer_norm=True, zoneout_h=args.zoneout_h,
                                   zoneout_c=args.zoneout_c)}
    steps = len(range(0, len(train) - 1, args.bptt)) * args.epochs
    bar = tqdm(total=steps * len(variants), desc="regularised_char_lm",
               disable=args.no_progress)
    curves = {name: train_one(name, kw, train, val, V, args, bar)
              for name, kw in variants.items()}
    bar.close()
    unigram = unigram_entropy_bits(ids[:-n_val], V)
    result = dict(
        args={k: v for k, v in vars(args).items() if k not in ("out", "plot")},
        unigram_bpc=unigram, uniform_bpc=math.log2(V), vocab_size=V, chars=len(text),
        curves=curves,
        best_val_bpc={n: min(c["val_bpc"] for c in cur[1:]) for n, cur in curves.items()},
        final_val_bpc={n: cur[-1]["val_bpc"] for n, cur in curves.items()},
        wall_s={n: cur[-1]["wall_s"] for n, cur in curves.items()})
    for n in curves:
        print(f"{n:11s}: validation {result['final_val_bpc'][n]:.3f} bits/char at the end, "
              f"best {result['best_val_bpc'][n]:.3f}; training {curves[n][-1]['train_bpc']:.3f}; "
              f"{result['wall_s'][n]:.1f} s")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(curves, unigram, args.plot)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
