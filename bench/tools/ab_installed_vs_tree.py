"""A/B of two fusedrnn builds side by side: the one installed in this Python (or, with --base,
another source tree's) against the working tree's (python/fusedrnn with its built _C beside it,
on PYTHONPATH). Alternating processes (order rotated every round), the median of 15 timed calls
per process after 3 untimed ones, the median over rounds. float32, 2 threads,
OPENBLAS_CORETYPE/L2_SIZE unset. The last rows time one small step through the single-layer
API (the Python path a cell's step takes).

    python bench/tools/ab_installed_vs_tree.py --tree python --rounds 5 --out result.json
    python bench/tools/ab_installed_vs_tree.py --base /tmp/old/python --tree python --out r.json
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

CONFIGS = [  # name: (mode, H, B, T, training)
    ("lstm H256 B64 T50 train", ("lstm", 256, 64, 50, True)),
    ("gru H512 B16 T100 train", ("gru", 512, 16, 100, True)),
    ("lstm H512 B1 T50 infer", ("lstm", 512, 1, 50, False)),
    ("lstm H256 B64 T50 infer", ("lstm", 256, 64, 50, False)),
    ("gru H256 B64 T50 infer", ("gru", 256, 64, 50, False)),
    ("gru H256 B1 T50 infer", ("gru", 256, 1, 50, False)),
    ("gru H256 B1 T50 train", ("gru", 256, 1, 50, True)),
    ("lstm H256 B1 T1 train (cell step)", ("lstm", 256, 1, 1, True)),
    ("rnn H1024 B64 T50 train", ("rnn_tanh", 1024, 64, 50, True)),
    ("layer api lstm H64 B1 T1 train", ("layer:lstm", 64, 1, 1, True)),
    ("layer api gru H64 B1 T1 infer", ("layer:gru", 64, 1, 1, False)),
]


def child():
    import fusedrnn
    from fusedrnn import functional as F
    fusedrnn.set_num_threads(2)
    out = {"fusedrnn": fusedrnn.__file__}
    for name, (mode, H, B, T, train) in CONFIGS:
        layer_api = mode.startswith("layer:")
        mode = mode.split(":")[-1]
        rng = np.random.default_rng(0)
        G = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[mode]
        p = {"weight_ih_l0": rng.uniform(-.1, .1, (G * H, H)).astype(np.float32),
             "weight_hh_l0": rng.uniform(-.1, .1, (G * H, H)).astype(np.float32),
             "bias_ih_l0": np.zeros(G * H, np.float32), "bias_hh_l0": np.zeros(G * H, np.float32)}
        x = rng.standard_normal((T, B, H)).astype(np.float32)

        def run():
            if layer_api:
                fwd = F.lstm_forward if mode == "lstm" else F.gru_forward
                out = fwd(x, *p.values(), training=train)
                if train:
                    (F.lstm_backward if mode == "lstm" else F.gru_backward)(out[-1], out[0])
                return
            y, h, c, ctx = F.stack_forward(mode, x, p, training=train)
            if train:
                F.stack_backward(ctx, y)
        for _ in range(3):
            run()
        ts = []
        for _ in range(15):
            t0 = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t0)
        out[name] = float(np.median(ts))
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", default="python", help="directory holding the tree's fusedrnn")
    ap.add_argument("--base", help="directory holding the baseline's fusedrnn (default: the "
                    "installed one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "PYTHONPATH")}
    envs = {"installed": base if not a.base else dict(base, PYTHONPATH=os.path.abspath(a.base)),
            "tree": dict(base, PYTHONPATH=os.path.abspath(a.tree))}
    runs = {"installed": [], "tree": []}
    for r in range(a.rounds):
        for which in (("installed", "tree") if r % 2 == 0 else ("tree", "installed")):
            p = subprocess.run([sys.executable, __file__, "--child"], env=envs[which],
                               capture_output=True, text=True, check=True)
            runs[which].append(json.loads(p.stdout))
    rows = {}
    for name, _ in CONFIGS:
        i = float(np.median([d[name] for d in runs["installed"]]))
        t = float(np.median([d[name] for d in runs["tree"]]))
        rows[name] = {"installed_ms": i * 1e3, "tree_ms": t * 1e3, "tree_over_installed": t / i}
        print(f"{name:36s} installed {i * 1e3:9.3f} ms  tree {t * 1e3:9.3f} ms  ratio {t / i:.3f}")
    cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
               if ln.startswith("model name"))
    json.dump({"machine": platform.node(), "cpu_model": cpu, "cores": os.cpu_count(),
               "threads": 2, "python": platform.python_version(), "numpy": np.__version__,
               "openblas_env_unset": True, "rounds": a.rounds, "repeats_per_process": 15,
               "builds": {k: v[0]["fusedrnn"] for k, v in runs.items()},
               "loadavg_after": open("/proc/loadavg").read().split()[:3], "rows": rows},
              open(a.out, "w"), indent=1)


if __name__ == "__main__":
    child() if "--child" in sys.argv else main()
