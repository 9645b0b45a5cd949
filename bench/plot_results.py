#!/usr/bin/env python3
"""Plots fusedrnn's speed-up over PyTorch from a bench/harness.py JSON (matplotlib, Agg).

One panel per (cell, mode); in each, one pair of bars per configuration (1 and 2 threads, or
whatever thread counts the run had), log scale, a line at 1 (above: fusedrnn faster).

    python bench/plot_results.py bench/results/harness-<host>-<date>.json [--out plot.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CELL_ORDER = ("lstm", "gru", "rnn_tanh")
MODE_ORDER = ("forward", "fwd+bwd")
SUITE_ORDER = ("deepbench_train", "grid", "stack", "deepbench")


def groups(rows, series="threads"):
    """{(cell, mode): {label: {series value: speed-up}}}, in a stable order. `series` is the
    row field that tells the bars of one label apart (threads; gpu_bench.py: dtype)."""
    key = lambda r: (CELL_ORDER.index(r["cell"]) if r["cell"] in CELL_ORDER else 99,
                     MODE_ORDER.index(r["mode"]),
                     SUITE_ORDER.index(r["suite"]) if r["suite"] in SUITE_ORDER else 99,
                     r["H"], r["B"], r["T"], str(r[series]))
    out = {}
    for r in sorted(rows, key=key):
        if r.get("speedup_vs_torch") is None:
            continue
        panel = out.setdefault((r["cell"], r["mode"]), {})
        panel.setdefault(r["label"], {})[r[series]] = r["speedup_vs_torch"]
    return out


def _threads_name(t):
    return f"{t} thread{'s' if t > 1 else ''}"


def draw_panel(ax, title, bars, thread_counts, name=_threads_name,
               ylabel="torch ms / fusedrnn ms"):
    """Bars from 1 to each speed-up (up: fusedrnn faster, down: slower), log scale."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    labels = list(bars)
    x = np.arange(len(labels))
    width = 0.8 / len(thread_counts)
    all_vals = [1.0]
    for i, t in enumerate(thread_counts):
        vals = np.array([bars[lab].get(t, np.nan) for lab in labels])
        pos = x + (i - (len(thread_counts) - 1) / 2) * width
        ax.bar(pos, vals - 1.0, width, bottom=1.0, label=name(t))
        for xp, v in zip(pos, vals):
            if np.isfinite(v):
                ax.annotate(f"{v:.2g}", (xp, v), ha="center", fontsize=6, rotation=90,
                            va="bottom" if v >= 1 else "top",
                            xytext=(0, 2 if v >= 1 else -2), textcoords="offset points")
        all_vals += [v for v in vals if np.isfinite(v)]
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylim(min(all_vals) / 1.6, max(all_vals) * 1.6)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.6, max(len(labels), 4) - 0.4)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", which="major", alpha=0.3)


def plot(doc, path):
    """Writes the PNG for a harness result document `doc` to `path`. A document may say how
    in ``doc["plot"]``: ``series`` (the row field of the bars, default threads), ``ylabel``
    and ``title`` (bench/gpu_bench.py: dtype, cuDNN ms / fusedrnn ms, the GPU)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    how = doc.get("plot", {})
    series = how.get("series", "threads")
    rows = [r for r in doc["rows"] if series in r]
    panels = groups(rows, series)
    if not panels:
        raise ValueError("no rows with a torch timing to plot")
    values = sorted({r[series] for r in rows if r.get("speedup_vs_torch") is not None})
    name = _threads_name if series == "threads" else str
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 3.4 * len(panels)), squeeze=False)
    for ax, ((cell, mode), bars) in zip(axes[:, 0], panels.items()):
        draw_panel(ax, f"{cell} {mode}", bars, values, name,
                   how.get("ylabel", "torch ms / fusedrnn ms"))
    axes[0, 0].legend(fontsize=8)
    env = doc.get("environment", {})
    title = how.get("title") or (
        f"fusedrnn speed-up over PyTorch CPU (float32) -- {env.get('hostname', '?')}, "
        f"{env.get('cpu_model', '?')}, started {doc.get('started', '?')}")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="a bench/harness.py result file")
    ap.add_argument("--out", help="PNG path (default: the JSON path with .png)")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        doc = json.load(f)
    out = plot(doc, args.out or os.path.splitext(args.json)[0] + ".png")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
