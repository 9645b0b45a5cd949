"""Next-value prediction on noisy sine waves with a fused LSTM and a linear head.

Every training sequence is a sine wave with its own random period and phase plus Gaussian
noise; at each step the model sees the noisy value x_t and predicts the next noisy value
x_{t+1}. The best any model can do is the noise variance (the noise is unpredictable); the
trivial baseline "predict the last value" pays twice the noise variance plus the drift of the
wave between steps. Training uses Adam with a cosine learning-rate schedule and gradient
clipping; the written-out loop is: forward, loss, backward through the head and the LSTM,
clip, step.

    python examples/sine_wave.py                    # ~1500 steps, plot in examples/output/
    python examples/sine_wave.py --quick --plot /tmp/sine.png
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import _cli  # examples/_cli.py: the options every example shares
import fusedrnn
from fusedrnn import nn, optim

DEFAULT_PLOT = Path(__file__).resolve().parent / "output" / "sine_wave.png"

# Settings that --quick shortens (anything given explicitly on the command line wins).
FULL = dict(steps=1500, hidden_size=48, batch_size=32, seq_len=80)
QUICK = dict(steps=300, hidden_size=32, batch_size=32, seq_len=60)


def make_batch(rng, batch_size, seq_len, noise, min_period=10.0, max_period=40.0):
    """Noisy sine waves, time-major. Returns (inputs (T, B, 1), targets (T, B, 1), clean
    next values (T, B, 1)), float32: targets[t] is the noisy value after inputs[t]."""
    period = rng.uniform(min_period, max_period, size=batch_size)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=batch_size)
    t = np.arange(seq_len + 1)[:, None]                          # (T+1, 1)
    clean = np.sin(2.0 * math.pi * t / period + phase)           # (T+1, B)
    noisy = clean + noise * rng.standard_normal(clean.shape)
    x = noisy[:-1, :, None].astype(np.float32)
    y = noisy[1:, :, None].astype(np.float32)
    return x, y, clean[1:, :, None].astype(np.float32)


def save_plot(path, inputs, targets, clean, pred, test_mse, baseline_mse):
    """Prediction vs target on one test sequence (1-D arrays), written as PNG with Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = np.arange(1, len(targets) + 1)                       # targets are x_{t+1}
    ax.plot(steps, clean, color="0.6", lw=1, ls="--", label="underlying sine")
    ax.plot(steps, targets, ".", color="tab:blue", ms=4, label="target (noisy next value)")
    ax.plot(steps, pred, color="tab:red", lw=1.5, label="LSTM prediction")
    ax.set_xlabel("time step")
    ax.set_title(f"fusedrnn.LSTM next-value prediction: test MSE {test_mse:.4f} "
                 f"(last-value baseline {baseline_mse:.4f})", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8,
              frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def parse_args(argv):
    p = _cli.parser(__doc__)
    p.add_argument("--steps", type=int, help=f"training steps (default {FULL['steps']})")
    p.add_argument("--hidden-size", type=int, help=f"LSTM units (default {FULL['hidden_size']})")
    p.add_argument("--num-layers", type=int, default=1, help="LSTM layers (default 1)")
    p.add_argument("--batch-size", type=int,
                   help=f"sequences per step (default {FULL['batch_size']})")
    p.add_argument("--seq-len", type=int, help=f"steps per sequence (default {FULL['seq_len']})")
    p.add_argument("--noise", type=float, default=0.1, help="noise std (default 0.1)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm (default 1.0)")
    p.add_argument("--test-size", type=int, default=256, help="test sequences (default 256)")
    p.add_argument("--plot", default=str(DEFAULT_PLOT), help="PNG path ('' for no plot)")
    return _cli.parse(p, argv, QUICK, FULL)


def main(argv=None):
    args = parse_args(argv)  # also applies --threads
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    test_rng = np.random.default_rng(args.seed + 1_000_003)   # a fixed test set per seed

    # Model: LSTM over the sequence, then a linear read-out at every step.
    lstm = fusedrnn.LSTM(1, args.hidden_size, num_layers=args.num_layers, rng=rng)
    head = nn.Linear(args.hidden_size, 1, rng=rng)
    model = nn.collect_parameters(lstm=lstm, head=head)
    opt = optim.Adam(model, lr=args.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=args.steps, eta_min=args.lr / 20)

    model.train()                                  # fusedrnn modules start in eval mode
    losses = []
    bar = tqdm(range(args.steps), desc="sine_wave", disable=args.no_progress)
    for step in bar:
        x, target, _ = make_batch(rng, args.batch_size, args.seq_len, args.noise)
        # forward
        y, _ = lstm(x)                             # (T, B, H)
        pred = head(y)                             # (T, B, 1)
        loss, dpred = nn.mse_loss(pred, target)
        # backward: the same chain in reverse, then clip and update
        opt.zero_grad()
        dy = head.backward(dpred)                  # (T, B, H); head.grads filled
        lstm.backward(dy)                          # lstm.grads filled (dx unused)
        optim.clip_grad_norm_(model, args.clip)
        opt.step()
        sched.step()
        losses.append(loss)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}", lr=f"{opt.lr:.1e}")

    # Test: fresh waves, inference mode (nothing saved for backward).
    model.eval()
    x, target, clean = make_batch(test_rng, args.test_size, args.seq_len, args.noise)
    y, _ = lstm(x)
    pred = head(y)
    test_mse = float(np.mean((pred - target) ** 2))
    baseline_mse = float(np.mean((x - target) ** 2))       # predict x_{t+1} = x_t
    clean_mse = float(np.mean((pred - clean) ** 2))        # distance to the noise-free wave

    plot = None
    if args.plot:
        plot = str(save_plot(args.plot, x[:, 0, 0], target[:, 0, 0], clean[:, 0, 0],
                             pred[:, 0, 0], test_mse, baseline_mse))

    metrics = dict(test_mse=test_mse, baseline_mse=baseline_mse,
                   ratio_to_baseline=test_mse / baseline_mse, noise_floor=args.noise ** 2,
                   clean_mse=clean_mse, first_loss=float(np.mean(losses[:10])),
                   final_loss=float(np.mean(losses[-10:])), steps=args.steps, plot=plot,
                   wall_s=time.perf_counter() - start)
    print(f"sine_wave: test MSE {test_mse:.4f} vs last-value baseline {baseline_mse:.4f} "
          f"({metrics['ratio_to_baseline']:.2f}x; noise floor {metrics['noise_floor']:.4f}), "
          f"{args.steps} steps in {metrics['wall_s']:.1f} s"
          + (f", plot: {plot}" if plot else ""))
    return metrics


if __name__ == "__main__":
    main()
