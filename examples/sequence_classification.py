"""Sequence classification: a fused GRU reads scikit-learn's 8x8 digit images row by row.

Each image (``sklearn.datasets.load_digits``, 1797 images shipped with scikit-learn) becomes
an 8-step sequence of 8 pixel intensities. A ``fusedrnn.GRU`` (``batch_first=True``) runs
over the rows, a linear head reads the GRU output at the last step, and ``cross_entropy``
trains the lot with Adam. The head's input gradient is scattered back into the last time
step of ``dy`` before the GRU's backward pass.

    python examples/sequence_classification.py             # ~97% test accuracy
    python examples/sequence_classification.py --quick --epochs 2
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import _cli  # examples/_cli.py: the options every example shares
import fusedrnn
from fusedrnn import nn, optim

# Settings that --quick shortens (anything given explicitly on the command line wins).
FULL = dict(epochs=30, hidden_size=128)
QUICK = dict(epochs=4, hidden_size=64)


def load_data(seed, test_size):
    """Digits as sequences: x (N, 8 rows, 8 pixels) float32 in [0, 1], labels (N,) int."""
    images, labels = load_digits(return_X_y=True)              # (1797, 64) in 0..16
    x = (images / 16.0).astype(np.float32).reshape(-1, 8, 8)   # row t is time step t
    return train_test_split(x, labels, test_size=test_size, random_state=seed,
                            stratify=labels)


def predict(gru, head, x):
    """Class logits (N, 10) from the last step's output, in inference mode."""
    y, _ = gru(x)                                    # (N, 8, H), batch_first
    return head(y[:, -1])


def parse_args(argv):
    p = _cli.parser(__doc__)
    p.add_argument("--epochs", type=int,
                   help=f"passes over the training set (default {FULL['epochs']})")
    p.add_argument("--hidden-size", type=int, help=f"GRU units (default {FULL['hidden_size']})")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm (default 1.0)")
    p.add_argument("--test-size", type=float, default=0.25, help="test fraction (default 0.25)")
    return _cli.parse(p, argv, QUICK, FULL)


def main(argv=None):
    args = parse_args(argv)  # also applies --threads
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    x_train, x_test, y_train, y_test = load_data(args.seed, args.test_size)

    gru = fusedrnn.GRU(8, args.hidden_size, batch_first=True, rng=rng)
    head = nn.Linear(args.hidden_size, 10, rng=rng)
    model = nn.collect_parameters(gru=gru, head=head)
    opt = optim.Adam(model, lr=args.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=args.epochs)

    n_batches = -(-len(x_train) // args.batch_size)
    bar = tqdm(total=args.epochs * n_batches, desc="digits", disable=args.no_progress)
    first_loss, test_acc = None, float("nan")
    for epoch in range(args.epochs):
        bar.set_description(f"digits epoch {epoch + 1}/{args.epochs}")
        model.train()
        order = rng.permutation(len(x_train))
        epoch_loss = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            x, target = x_train[idx], y_train[idx]
            # forward: GRU over the 8 rows, head on the last step
            y, _ = gru(x)                              # (B, 8, H)
            logits = head(y[:, -1])                    # (B, 10)
            loss, dlogits = nn.cross_entropy(logits, target)
            # backward: head, then the GRU with the gradient at its last step only
            opt.zero_grad()
            dy = np.zeros_like(y)
            dy[:, -1] = head.backward(dlogits)
            gru.backward(dy)
            optim.clip_grad_norm_(model, args.clip)
            opt.step()
            epoch_loss += loss * len(idx)
            first_loss = loss if first_loss is None else first_loss
            bar.update()
        sched.step()
        model.eval()
        test_acc = float(np.mean(predict(gru, head, x_test).argmax(-1) == y_test))
        bar.set_postfix(loss=f"{epoch_loss / len(order):.3f}", test_acc=f"{test_acc:.3f}")
    bar.close()

    train_acc = float(np.mean(predict(gru, head, x_train).argmax(-1) == y_train))
    metrics = dict(test_accuracy=test_acc, train_accuracy=train_acc,
                   first_loss=float(first_loss), final_loss=epoch_loss / len(order),
                   n_train=len(x_train), n_test=len(x_test), epochs=args.epochs,
                   wall_s=time.perf_counter() - start)
    print(f"sequence_classification: test accuracy {test_acc:.3f} on {len(x_test)} digits "
          f"(train {train_acc:.3f}, chance 0.1), {args.epochs} epochs in "
          f"{metrics['wall_s']:.1f} s")
    return metrics


if __name__ == "__main__":
    main()
