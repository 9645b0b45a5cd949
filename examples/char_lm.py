"""Character-level LSTM language model on the Python documentation, trained with truncated BPTT.

The text is the prose of the Python documentation topics that ship with CPython
(``pydoc_data.topics.topics``, PSF licence): no download needed. The model is
Embedding -> fusedrnn.LSTM -> Linear, trained with cross-entropy on the next character.

Truncated backpropagation through time: the training text is cut into ``batch_size``
parallel streams, read in chunks of ``bptt`` characters. The LSTM's final (h, c) of one
chunk is the initial state of the next (the model sees the whole stream), but the gradient
stops at the chunk boundary: backward gets no gradient for the final state and the gradient
it returns for the initial state is dropped.

At the end the trained weights are loaded into ``fusedrnn.LSTMCell`` objects (one per
layer: ``weight_ih_l0`` -> ``weight_ih`` etc.) and text is sampled one character at a time
with a temperature.

    python examples/char_lm.py                 # about a minute on 2 cores
    python examples/char_lm.py --quick
"""

from __future__ import annotations

import math
import time

import numpy as np
from tqdm import tqdm

import _cli  # examples/_cli.py: the options every example shares
import fusedrnn
from fusedrnn import init, nn, optim

# Settings that --quick shortens (anything given explicitly on the command line wins).
FULL = dict(epochs=3, max_chars=200_000, hidden_size=256, batch_size=32, sample_len=400)
QUICK = dict(epochs=2, max_chars=60_000, hidden_size=128, batch_size=16, sample_len=100)
PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def load_text(max_chars):
    """The documentation topics in sorted-key order, concatenated, cut to ``max_chars``."""
    from pydoc_data.topics import topics

    parts, total = [], 0
    for key in sorted(topics):
        parts.append(topics[key])
        total += len(topics[key]) + 1
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


def batchify(ids, batch_size):
    """(N,) ids -> (N // batch_size, batch_size): column b is a contiguous stream of text."""
    n = len(ids) // batch_size
    return np.ascontiguousarray(ids[:n * batch_size].reshape(batch_size, n).T)


def unigram_entropy_bits(ids, vocab_size):
    """Entropy of the character frequencies (bits/char): what a model without context gets."""
    p = np.bincount(ids, minlength=vocab_size) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


class CharLM:
    """Embedding -> LSTM -> Linear, with the forward pass and its backward written out."""

    def __init__(self, vocab_size, embed_size, hidden_size, num_layers, rng):
        self.emb = nn.Embedding(vocab_size, embed_size, rng=rng)
        self.lstm = fusedrnn.LSTM(embed_size, hidden_size, num_layers=num_layers, rng=rng)
        self.head = nn.Linear(hidden_size, vocab_size, rng=rng)
        init.unit_forget_bias_(self.lstm)                # forget gates start open
        self.params = nn.collect_parameters(emb=self.emb, lstm=self.lstm, head=self.head)

    def forward(self, tokens, state=None):
        """tokens (T, B) int -> logits (T, B, V), final (h, c)."""
        e = self.emb(tokens)                             # (T, B, E)
        y, state = self.lstm(e, state)                   # (T, B, H), ((L, B, H), (L, B, H))
        return self.head(y), state

    def backward(self, dlogits):
        """Gradient of the loss w.r.t. the logits of the last forward -> parameter grads.
        No gradient flows into the final state or out of the initial one (truncated BPTT)."""
        dy = self.head.backward(dlogits)
        de, _ = self.lstm.backward(dy)
        self.emb.backward(de)


def evaluate_bpc(model, data, bptt):
    """Bits per character of ``data`` (T, B), reading it in chunks with the state carried."""
    model.params.eval()
    state, total_nats, count = None, 0.0, 0
    for i in range(0, len(data) - 1, bptt):
        x, target = data[i:i + bptt], data[i + 1:i + 1 + bptt]
        x = x[:len(target)]
        logits, state = model.forward(x, state)
        loss, _ = nn.cross_entropy(logits, target, reduction="sum")
        total_nats += loss
        count += target.size
    return total_nats / count / math.log(2)


def sample(model, itos, stoi, prime, length, temperature, rng):
    """Generates text one character at a time with LSTMCells holding the LSTM's weights."""
    lstm = model.lstm
    cells = []
    for layer in range(lstm.num_layers):
        in_size = lstm.input_size if layer == 0 else lstm.hidden_size
        cell = fusedrnn.LSTMCell(in_size, lstm.hidden_size)
        cell.load_state_dict({n: getattr(lstm, f"{n}_l{layer}") for n in PARAM_NAMES})
        cells.append(cell)
    model.params.eval()

    H = lstm.hidden_size
    state = [(np.zeros(H, np.float32), np.zeros(H, np.float32)) for _ in cells]

    def step(char_id):
        """One character through embedding, every cell and the head -> logits (V,)."""
        inp = model.emb(np.array(char_id))               # (E,)
        for layer, cell in enumerate(cells):
            state[layer] = cell(inp, state[layer])       # (h, c), each (H,)
            inp = state[layer][0]
        return model.head(inp)

    prime_ids = [stoi[ch] for ch in prime]
    for char_id in prime_ids:
        logits = step(char_id)

    # Check: after the prime the cells hold the state the fused LSTM computes in one call.
    _, (h_n, _) = lstm(model.emb(np.array(prime_ids)))   # unbatched (T, E) input
    cell_diff = float(max(np.abs(h_n[layer] - state[layer][0]).max()
                          for layer in range(len(cells))))

    out = []
    for _ in range(length):
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        char_id = int(rng.choice(len(p), p=p / p.sum()))
        out.append(itos[char_id])
        logits = step(char_id)
    return prime + "".join(out), cell_diff


def parse_args(argv):
    p = _cli.parser(__doc__)
    p.add_argument("--epochs", type=int,
                   help=f"passes over the training text (default {FULL['epochs']})")
    p.add_argument("--max-chars", type=int,
                   help=f"characters of text used (default {FULL['max_chars']})")
    p.add_argument("--hidden-size", type=int, help=f"LSTM units (default {FULL['hidden_size']})")
    p.add_argument("--num-layers", type=int, default=1, help="LSTM layers (default 1)")
    p.add_argument("--embed-size", type=int, default=32, help="embedding width (default 32)")
    p.add_argument("--batch-size", type=int,
                   help=f"parallel streams (default {FULL['batch_size']})")
    p.add_argument("--bptt", type=int, default=64, help="characters per chunk (default 64)")
    p.add_argument("--lr", type=float, default=1e-2,
                   help="Adam learning rate, cosine-annealed to a tenth (default 1e-2)")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm (default 1.0)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail (default 0.1)")
    p.add_argument("--sample-len", type=int,
                   help=f"characters to sample (default {FULL['sample_len']})")
    p.add_argument("--temperature", type=float, default=0.7,
                   help="sampling temperature (default 0.7)")
    p.add_argument("--prime", default="The ", help="text that starts the sample")
    return _cli.parse(p, argv, QUICK, FULL)


def main(argv=None):
    args = parse_args(argv)  # also applies --threads
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    text = load_text(args.max_chars)
    itos = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(itos)}
    ids = np.array([stoi[ch] for ch in text], dtype=np.int64)
    n_val = int(len(ids) * args.val_fraction)
    train = batchify(ids[:-n_val], args.batch_size)      # (N, B) streams
    val = batchify(ids[-n_val:], 8)
    V = len(itos)
    unigram_bits = unigram_entropy_bits(ids[:-n_val], V)

    model = CharLM(V, args.embed_size, args.hidden_size, args.num_layers, rng)
    chunks = range(0, len(train) - 1, args.bptt)
    opt = optim.Adam(model.params, lr=args.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=args.epochs * len(chunks), eta_min=args.lr / 10)
    initial_bpc = evaluate_bpc(model, val, args.bptt)

    bar = tqdm(total=args.epochs * len(chunks), desc="char_lm", disable=args.no_progress)
    losses, val_bpc = [], initial_bpc
    for epoch in range(args.epochs):
        bar.set_description(f"char_lm epoch {epoch + 1}/{args.epochs}")
        model.params.train()
        state = None                                       # zeros at the start of the text
        for i in chunks:
            x, target = train[i:i + args.bptt], train[i + 1:i + 1 + args.bptt]
            x = x[:len(target)]
            # forward from the state the previous chunk ended in
            logits, state = model.forward(x, state)
            loss, dlogits = nn.cross_entropy(logits, target)
            # backward within the chunk only, then clip and update
            opt.zero_grad()
            model.backward(dlogits)
            optim.clip_grad_norm_(model.params, args.clip)
            opt.step()
            sched.step()
            losses.append(loss)
            bar.update()
            if len(losses) % 10 == 0:
                bar.set_postfix(bpc=f"{np.mean(losses[-10:]) / math.log(2):.3f}",
                                val_bpc=f"{val_bpc:.3f}")
        val_bpc = evaluate_bpc(model, val, args.bptt)
        bar.set_postfix(bpc=f"{np.mean(losses[-10:]) / math.log(2):.3f}", val_bpc=f"{val_bpc:.3f}")
    bar.close()

    text_out, cell_diff = sample(model, itos, stoi, args.prime, args.sample_len,
                                 args.temperature, rng)
    print(f"--- sample (temperature {args.temperature}) ---\n{text_out}\n---")
    metrics = dict(val_bpc=val_bpc, initial_val_bpc=initial_bpc, unigram_bpc=unigram_bits,
                   uniform_bpc=math.log2(V), first_loss=float(np.mean(losses[:10])),
                   final_loss=float(np.mean(losses[-10:])), vocab_size=V, chars=len(text),
                   steps=len(losses), cell_max_abs_diff=cell_diff, sample=text_out,
                   wall_s=time.perf_counter() - start)
    print(f"char_lm: validation {val_bpc:.3f} bits/char (unigram {unigram_bits:.3f}, "
          f"untrained {initial_bpc:.3f}), {len(text) // 1000} kB text, {len(losses)} steps "
          f"in {metrics['wall_s']:.1f} s")
    return metrics


if __name__ == "__main__":
    main()
