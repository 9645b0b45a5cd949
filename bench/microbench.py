#!/usr/bin/env python3
"""fusedrnn microbenchmark: one LSTM / GRU layer, forward and forward+backward (docs/design.md §7).

Peers, measured side by side in the same run, one configuration at a time (each peer's calls
in one block, with a pause between blocks so that idle OpenMP/OpenBLAS threads of one library
do not steal the cores from the next):

* ``fusedrnn``  -- :mod:`fusedrnn.functional` (the native fused kernels);
* ``numpy_ref`` -- :mod:`fusedrnn.reference` in float32 (pure NumPy; slow, so fewer repeats);
* ``torch``     -- ``torch.nn.LSTM`` / ``torch.nn.GRU`` on the CPU with the same weights, when
  PyTorch can be imported (``--no-torch`` or ``FUSEDRNN_BENCH_NO_TORCH=1`` skips it).

Modes: ``forward`` is inference (``training=False``; torch under ``no_grad``); ``fwd+bwd`` is a
training forward followed by the backward of ``y.sum()`` (``dy`` = ones; no gradient flows into
``h_n``/``c_n``). Every peer computes the gradients of x, h0 (c0) and all weights and biases.

Before any timing each configuration is validated: fusedrnn against the reference in float64
(T=5, same H and B; forward and every gradient within 1e-9 relative), and fusedrnn float32
against torch float32 (full size; outputs within 1e-4, gradients within 1e-3 relative). A
failure exits with status 1 before anything is timed.

Timing: warm-up calls, then the median of ``--repeats`` calls (time.perf_counter, GC off); a
peer whose calls pass ``--budget`` seconds stops after at least 3 (marked ``*`` in the table).
FLOPs: forward ``2*T*B*(I+H)*G*H``, forward+backward 3x that. Ratios are ``peer_ms /
fusedrnn_ms``: above 1 means fusedrnn is faster.

    python bench/microbench.py                 # full default run (a few minutes on 2 cores)
    python bench/microbench.py --quick         # H=256 only, fewer repeats (< 1 minute)
    python bench/microbench.py --threads 4 --out /tmp/mb.json
    python bench/microbench.py --unset-openblas-env   # re-run without OPENBLAS_CORETYPE/_L2_SIZE

Results go to ``bench/results/microbench-<host>-<date>.json``: machine, versions, fusedrnn
config, threads, OpenBLAS environment, validation errors and one record per (config, peer).

Only the standard library is imported at module level: the thread environment variables must
be set before NumPy, fusedrnn and torch load their OpenMP / BLAS runtimes.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import socket
import statistics
import sys
import time

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Recorded, not set (except OMP_WAIT_POLICY with --omp-wait-policy): they change timings.
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND", "OMP_PLACES")
# Set in the re-executed child by --unset-openblas-env: JSON of the values that were removed.
REEXEC_MARK = "FUSEDRNN_BENCH_REMOVED_OPENBLAS_ENV"
NO_TORCH_VAR = "FUSEDRNN_BENCH_NO_TORCH"

CELLS = ("lstm", "gru")              # gates per cell: fusedrnn.spec.GATES (load_libraries)
MODES = ("forward", "fwd+bwd")
PEERS = ("fusedrnn", "numpy_ref", "torch")
REF_T = 5                            # sequence length of the float64 reference check
REF_TOL = 1e-9                       # fusedrnn vs reference, float64, relative
TORCH_OUT_TOL = 1e-4                 # fusedrnn vs torch, float32 outputs, relative
TORCH_GRAD_TOL = 1e-3                # fusedrnn vs torch, float32 gradients, relative
MIN_REPEATS = 3                      # timed calls kept even past the time budget
PEER_PAUSE_S = 0.2                   # idle time between two peers' timing blocks

# Imported by load_libraries() once the thread environment is set.
np = fusedrnn = F = ref = torch = GATES = None


# ------------------------------------------------------------------------------------------
# Command line and process environment
# ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2,
                   help="threads for fusedrnn, torch and the BLAS libraries (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="H=256 only and fewer repeats (finishes in well under a minute)")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden sizes H (default 256 512)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes B (default 1 16)")
    p.add_argument("--seq-len", type=int, default=50, help="sequence length T (default 50)")
    p.add_argument("--cells", nargs="+", choices=sorted(CELLS), default=list(CELLS))
    p.add_argument("--repeats", type=int, help="timed calls for fusedrnn and torch (default 20)")
    p.add_argument("--numpy-repeats", type=int, help="timed calls for the NumPy reference (3)")
    p.add_argument("--warmup", type=int,
                   help="untimed calls per peer before timing (default 3, --quick 1; NumPy "
                        "reference: at most 1)")
    p.add_argument("--budget", type=float,
                   help="seconds of timed calls per peer and configuration after which the "
                        f"repeats stop early (at least {MIN_REPEATS} are kept; default 10, "
                        "--quick 2)")
    p.add_argument("--omp-wait-policy", choices=["passive", "active"],
                   help="set OMP_WAIT_POLICY for the process (default: leave it as it is)")
    p.add_argument("--no-torch", action="store_true",
                   help=f"skip PyTorch even if it is installed (also: {NO_TORCH_VAR}=1)")
    p.add_argument("--unset-openblas-env", action="store_true",
                   help="re-execute with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from "
                        "the environment (default: leave them as they are)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON output path (default "
                                 "bench/results/microbench-<host>-<date>.json)")
    args = p.parse_args(argv)
    quick = args.quick
    args.hidden = args.hidden or ([256] if quick else [256, 512])
    args.batch = args.batch or [1, 16]
    args.repeats = args.repeats or (7 if quick else 20)
    args.numpy_repeats = args.numpy_repeats or (2 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.budget = args.budget if args.budget is not None else (2.0 if quick else 10.0)
    args.no_torch = args.no_torch or os.environ.get(NO_TORCH_VAR, "") not in ("", "0")
    if args.threads < 1 or args.repeats < 1 or args.numpy_repeats < 1 or args.warmup < 0:
        p.error("--threads, --repeats and --numpy-repeats must be >= 1, --warmup >= 0")
    return args


def reexec_without_openblas_env(script=None):
    """Replaces this process by the same command with OPENBLAS_CORETYPE/_L2_SIZE removed.

    OpenBLAS reads them when the library loads, so they are removed from a fresh process
    rather than from this one. ``script``: the script to re-run (default this file; other
    benchmarks importing this module pass their own ``__file__``). Returns only in the
    re-executed child."""
    if REEXEC_MARK in os.environ:
        return
    env = dict(os.environ)
    removed = {k: env.pop(k, None) for k in OPENBLAS_VARS}
    env[REEXEC_MARK] = json.dumps(removed)
    print(f"--unset-openblas-env: re-executing without {', '.join(OPENBLAS_VARS)} "
          f"(were: {removed})", flush=True)
    script = os.path.abspath(script or __file__)
    os.execve(sys.executable, [sys.executable, script, *sys.argv[1:]], env)


def set_thread_env(args):
    for var in THREAD_VARS:
        os.environ[var] = str(args.threads)
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()


def load_libraries(want_torch):
    """Imports NumPy, fusedrnn and (optionally) torch. Returns a note when torch is skipped."""
    global np, fusedrnn, F, ref, torch, GATES
    import numpy as np
    import fusedrnn
    from fusedrnn.spec import GATES
    import fusedrnn.functional as F
    import fusedrnn.reference as ref
    if not want_torch:
        return f"torch skipped (--no-torch or {NO_TORCH_VAR})"
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install
        torch = None
        return f"torch skipped (import failed: {type(e).__name__}: {e})"
    return None


def set_threads(threads):
    fusedrnn.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------
# Machine and version facts
# ------------------------------------------------------------------------------------------

def cpu_facts():
    model, cores = None, set()
    phys = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = (s.strip() for s in line.partition(":"))
                if key == "model name" and model is None:
                    model = val
                elif key == "physical id":
                    phys = val
                elif key == "core id":
                    cores.add((phys, val))
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu_model": model or platform.processor() or None,
            "logical_cpus": os.cpu_count(), "physical_cores": len(cores) or None,
            "usable_cpus": affinity}


def environment_facts(args, torch_note):
    removed = os.environ.get(REEXEC_MARK)
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        **cpu_facts(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "torch_note": torch_note,
        "torch_num_threads": torch.get_num_threads() if torch is not None else None,
        "fusedrnn": fusedrnn.__version__,
        "fusedrnn_config": fusedrnn.config(),
        "threads": args.threads,
        "thread_env": {v: os.environ.get(v) for v in THREAD_VARS},
        "wait_env": {v: os.environ.get(v) for v in WAIT_VARS},
        "openblas_env": {v: os.environ.get(v) for v in OPENBLAS_VARS},
        "openblas_env_unset": removed is not None,
        "openblas_env_removed": json.loads(removed) if removed else None,
    }


def print_environment(env):
    cfg = env["fusedrnn_config"]
    lines = [
        "fusedrnn microbenchmark",
        f"  machine   : {env['hostname']} | {env['platform']}",
        f"  cpu       : {env['cpu_model']} | logical {env['logical_cpus']}, physical cores "
        f"{env['physical_cores']}, usable {env['usable_cpus']}",
        f"  versions  : python {env['python']}, numpy {env['numpy']}, "
        f"torch {env['torch'] or '-'}, fusedrnn {env['fusedrnn']}",
        "  fusedrnn  : " + ", ".join(f"{k}={v}" for k, v in cfg.items()),
        f"  threads   : {env['threads']} (fusedrnn {cfg['num_threads']}, torch "
        f"{env['torch_num_threads'] or '-'}; " +
        ", ".join(f"{k}={v}" for k, v in env["thread_env"].items()) + ")",
        "  omp env   : " + ", ".join(f"{k}={v if v is not None else '(unset)'}"
                                     for k, v in env["wait_env"].items()),
        "  openblas  : " + ", ".join(f"{k}={v if v is not None else '(unset)'}"
                                     for k, v in env["openblas_env"].items()),
    ]
    if env["openblas_env_unset"]:
        lines.append(f"  NOTE      : --unset-openblas-env: re-executed with both variables "
                     f"removed (previous values: {env['openblas_env_removed']})")
    if env["torch_note"]:
        lines.append(f"  NOTE      : {env['torch_note']}")
    print("\n".join(lines), flush=True)


# ------------------------------------------------------------------------------------------
# Problems and peers
# ------------------------------------------------------------------------------------------

class Problem:
    """Inputs of one layer: x (T,B,I), weights and biases in PyTorch layout, h0, c0."""

    def __init__(self, cell, T, B, H, dtype, seed):
        G, I = GATES[cell], H
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(H)  # torch.nn.LSTM/GRU's init range
        u = lambda *shape: rng.uniform(-k, k, shape).astype(dtype)
        self.cell, self.T, self.B, self.H, self.I, self.G = cell, T, B, H, I, G
        self.x = rng.standard_normal((T, B, I)).astype(dtype)
        self.w_ih, self.w_hh = u(G * H, I), u(G * H, H)
        self.b_ih, self.b_hh = u(G * H), u(G * H)
        self.h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
        self.c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype) if cell == "lstm" else None

    def args(self):
        a = (self.x, self.w_ih, self.w_hh, self.b_ih, self.b_hh, self.h0)
        return a + (self.c0,) if self.cell == "lstm" else a

    def flops(self, mode):
        fwd = 2 * self.T * self.B * (self.I + self.H) * self.G * self.H
        return fwd if mode == "forward" else 3 * fwd


def layer_fns(module, cell):
    """(forward, backward) of `module` (fusedrnn.functional or fusedrnn.reference)."""
    if cell == "lstm":
        return module.lstm_forward, module.lstm_backward
    return module.gru_forward, module.gru_backward


def numpy_api_runner(module, prob, mode):
    """A zero-argument callable running one mode with the NumPy-array API of `module`."""
    fwd, bwd = layer_fns(module, prob.cell)
    args = prob.args()
    if mode == "forward":
        return lambda: fwd(*args, training=False)
    dy = np.ones((prob.T, prob.B, prob.H), prob.x.dtype)  # gradient of y.sum()

    def run():
        ctx = fwd(*args, training=True)[-1]
        return bwd(ctx, dy)
    return run


def torch_module(prob):
    """torch.nn.LSTM/GRU holding the problem's weights (float32 or float64, as the problem)."""
    cls = torch.nn.LSTM if prob.cell == "lstm" else torch.nn.GRU
    m = cls(prob.I, prob.H, num_layers=1).to(torch.from_numpy(prob.x).dtype)
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            torch_name = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0",
                          "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}[name]
            getattr(m, torch_name).copy_(torch.from_numpy(getattr(prob, name)))
    return m


def torch_inputs(prob, requires_grad):
    x = torch.from_numpy(prob.x).clone().requires_grad_(requires_grad)
    h0 = torch.from_numpy(prob.h0)[None].clone().requires_grad_(requires_grad)
    if prob.cell == "gru":
        return x, h0, (h0,)
    c0 = torch.from_numpy(prob.c0)[None].clone().requires_grad_(requires_grad)
    return x, (h0, c0), (h0, c0)


def torch_run(module, mode, inputs):
    """The timed call for a torch module: no_grad forward, or forward + y.sum().backward().
    ``inputs(requires_grad)`` gives (x, hx, leaf tensors). Shared with harness.py."""
    if mode == "forward":
        x, hx, _ = inputs(False)

        def run():
            with torch.no_grad():
                return module(x, hx)
        return run
    x, hx, leaves = inputs(True)

    def run_train():
        module.zero_grad(set_to_none=True)
        for t in (x, *leaves):
            t.grad = None
        y, _ = module(x, hx)
        y.sum().backward()
    return run_train


def torch_runner(prob, mode):
    return torch_run(torch_module(prob), mode, lambda rg: torch_inputs(prob, rg))


def make_runners(prob, mode):
    runners = {"fusedrnn": numpy_api_runner(F, prob, mode),
               "numpy_ref": numpy_api_runner(ref, prob, mode)}
    if torch is not None:
        runners["torch"] = torch_runner(prob, mode)
    return runners


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------

def rel_err(a, b):
    """max |a - b| / max |b| (b is the trusted side)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(b))), 1e-30)
    return float(np.max(np.abs(a - b))) / scale


def outputs(module, prob, training):
    """Forward outputs (y, h_n[, c_n]) and the context."""
    fwd, _ = layer_fns(module, prob.cell)
    out = fwd(*prob.args(), training=training)
    return out[:-1], out[-1]


def validate_against_reference(cell, H, B, seed):
    """fusedrnn vs the NumPy reference in float64, T=REF_T: errors by quantity."""
    prob = Problem(cell, REF_T, B, H, np.float64, seed)
    errs = {}
    names = ("y", "h_n", "c_n")
    want, ref_ctx = outputs(ref, prob, True)
    for training in (False, True):
        got, ctx = outputs(F, prob, training)
        for name, g, w in zip(names, got, want):
            errs[f"{name}{'' if training else '(inference)'}"] = rel_err(g, w)
    rng = np.random.default_rng(seed + 1)
    dy = rng.standard_normal((REF_T, B, H))
    douts = (dy, rng.standard_normal((B, H))) + ((rng.standard_normal((B, H)),)
                                                if cell == "lstm" else ())
    g_want = layer_fns(ref, cell)[1](ref_ctx, *douts)
    g_got = layer_fns(F, cell)[1](ctx, *douts)
    if set(g_got) != set(g_want):
        raise AssertionError(f"gradient keys differ: {sorted(g_got)} vs {sorted(g_want)}")
    errs.update({f"d{k}": rel_err(g_got[k], g_want[k]) for k in g_want})
    return errs


def torch_gradients(prob):
    """Gradients of y.sum() from torch, keyed as fusedrnn's backward keys them."""
    m = torch_module(prob)
    x, hx, leaves = torch_inputs(prob, True)
    y, _ = m(x, hx)
    y.sum().backward()
    grads = {"x": x.grad, "h0": leaves[0].grad[0], "weight_ih": m.weight_ih_l0.grad,
             "weight_hh": m.weight_hh_l0.grad, "bias_ih": m.bias_ih_l0.grad,
             "bias_hh": m.bias_hh_l0.grad}
    if prob.cell == "lstm":
        grads["c0"] = leaves[1].grad[0]
    return {k: v.numpy() for k, v in grads.items()}


def torch_outputs(prob):
    m = torch_module(prob)
    x, hx, _ = torch_inputs(prob, False)
    with torch.no_grad():
        y, state = m(x, hx)
    state = state if prob.cell == "lstm" else (state,)
    return (y.numpy(),) + tuple(s[0].numpy() for s in state)


def validate_against_torch(prob):
    """fusedrnn float32 vs torch float32 on the benchmark problem: errors by quantity."""
    got, _ = outputs(F, prob, False)
    errs = {name: rel_err(g, w) for name, g, w in zip(("y", "h_n", "c_n"), got,
                                                       torch_outputs(prob))}
    g_got = numpy_api_runner(F, prob, "fwd+bwd")()
    g_want = torch_gradients(prob)
    errs.update({f"d{k}": rel_err(g_got[k], g_want[k]) for k in g_want})
    return errs


def check(errs, tol_for):
    """Names of the quantities whose error exceeds its tolerance."""
    return [k for k, e in errs.items() if not e <= tol_for(k)]  # NaN fails too


def validate_config(cell, H, B, prob32, seed):
    """Runs both checks; returns a record with max errors and any failures."""
    rec = {"cell": cell, "H": H, "B": B}
    ref_errs = validate_against_reference(cell, H, B, seed)
    rec["reference_f64"] = {"T": REF_T, "tol": REF_TOL, "max_rel_err": max(ref_errs.values()),
                            "errors": ref_errs, "failed": check(ref_errs, lambda k: REF_TOL)}
    if torch is not None:
        t_errs = validate_against_torch(prob32)
        tol = lambda k: TORCH_GRAD_TOL if k.startswith("d") else TORCH_OUT_TOL
        rec["torch_f32"] = {"T": prob32.T, "tol_outputs": TORCH_OUT_TOL,
                            "tol_grads": TORCH_GRAD_TOL, "errors": t_errs,
                            "max_rel_err_outputs": max(v for k, v in t_errs.items()
                                                       if not k.startswith("d")),
                            "max_rel_err_grads": max(v for k, v in t_errs.items()
                                                     if k.startswith("d")),
                            "failed": check(t_errs, tol)}
    return rec


def print_validation(rec):
    r = rec["reference_f64"]
    line = (f"  validate {rec['cell']:4s} H={rec['H']:<4d} B={rec['B']:<3d} "
            f"vs reference f64 (T={r['T']}): max rel err {r['max_rel_err']:.1e}")
    if "torch_f32" in rec:
        t = rec["torch_f32"]
        line += (f" | vs torch f32 (T={t['T']}): outputs {t['max_rel_err_outputs']:.1e}, "
                 f"grads {t['max_rel_err_grads']:.1e}")
    failed = r["failed"] + rec.get("torch_f32", {}).get("failed", [])
    print(line + ("" if not failed else f"  FAILED: {failed}"), flush=True)
    return not failed


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------

def time_peer(fn, repeats, warmup, budget_s):
    """Warm-up calls, then up to `repeats` timed calls (milliseconds), GC off.

    Stops early, after at least MIN_REPEATS calls, once the timed calls have taken
    `budget_s` seconds (so one pathological peer cannot stall the whole run)."""
    for _ in range(warmup):
        fn()
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    times = []
    try:
        start = time.perf_counter()
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            times.append((t1 - t0) * 1e3)
            if len(times) >= MIN_REPEATS and t1 - start > budget_s:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def time_config(runners, repeats, warmup, budget_s):
    """Times the peers of one configuration one after another: {peer: [ms, ...]}.

    Peers run in blocks, not call by call: one library's idle worker threads (OpenMP and
    OpenBLAS spin-wait after a parallel region) would otherwise steal the cores from the
    next library's calls. The pause lets them go to sleep before the next block."""
    times = {}
    for name, fn in runners.items():
        time.sleep(PEER_PAUSE_S)
        times[name] = time_peer(fn, repeats[name], warmup[name], budget_s)
    return times


def make_records(prob, mode, times, repeats, warmup, torch_note):
    """One JSON record per peer for this (config, mode)."""
    base = {"cell": prob.cell, "mode": mode, "H": prob.H, "B": prob.B, "T": prob.T,
            "I": prob.I, "dtype": "float32", "gflop": prob.flops(mode) / 1e9}
    fused_ms = statistics.median(times["fusedrnn"])
    records = []
    for peer in PEERS:
        rec = dict(base, peer=peer)
        if peer not in times:
            rec.update(skipped=True, note=torch_note, median_ms=None)
        else:
            t = times[peer]
            med = statistics.median(t)
            rec.update(skipped=False, median_ms=med, min_ms=min(t), max_ms=max(t),
                       repeats=len(t), repeats_requested=repeats[peer], warmup=warmup[peer],
                       times_ms=t,
                       gflops=prob.flops(mode) / (med * 1e6),
                       ratio_to_fusedrnn=med / fused_ms)
        records.append(rec)
    return records


# ------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------

TABLE_COLS = [("cell", 4), ("mode", 7), ("H", 4), ("B", 3), ("T", 3), ("fusedrnn ms", 11),
              ("GFLOP/s", 8), ("numpy ms", 9), ("torch ms", 9), ("numpy/fused", 11),
              ("torch/fused", 11)]


def fmt_row(values):
    return "  ".join(f"{v:>{w}}" for v, (_, w) in zip(values, TABLE_COLS))


def table_header():
    head = fmt_row([name for name, _ in TABLE_COLS])
    return head + "\n" + "-" * len(head)


def table_row(records):
    by_peer = {r["peer"]: r for r in records}
    f, n, t = by_peer["fusedrnn"], by_peer["numpy_ref"], by_peer["torch"]
    ms = lambda r: ("-" if r["median_ms"] is None else f"{r['median_ms']:.3f}" +
                    ("*" if r["repeats"] < r["repeats_requested"] else ""))
    ratio = lambda r: "-" if r["median_ms"] is None else f"{r['ratio_to_fusedrnn']:.2f}x"
    return fmt_row([f["cell"], f["mode"], f["H"], f["B"], f["T"], ms(f), f"{f['gflops']:.1f}",
                    ms(n), ms(t), ratio(n), ratio(t)])


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------

def default_out_path():
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "results", f"microbench-{host or 'cpu'}-{stamp}.json")


def configs(args):
    for cell in args.cells:
        for H in args.hidden:
            for B in args.batch:
                yield cell, H, B


def validate_all(args):
    vs_torch = (f"; vs torch f32 to {TORCH_OUT_TOL:g} outputs / {TORCH_GRAD_TOL:g} grads"
                if torch is not None else "; torch: skipped")
    print(f"\nValidation (fusedrnn vs reference f64 to {REF_TOL:g}{vs_torch})", flush=True)
    records, ok = [], True
    for i, (cell, H, B) in enumerate(configs(args)):
        prob32 = Problem(cell, args.seq_len, B, H, np.float32, args.seed + i)
        rec = validate_config(cell, H, B, prob32, args.seed + 1000 + i)
        ok = print_validation(rec) and ok
        records.append(rec)
    return records, ok


def benchmark_all(args, torch_note):
    repeats = {"fusedrnn": args.repeats, "numpy_ref": args.numpy_repeats,
               "torch": args.repeats}
    warmup = {"fusedrnn": args.warmup, "numpy_ref": min(args.warmup, 1), "torch": args.warmup}
    print(f"\nTiming: median of {args.repeats} calls (NumPy reference: {args.numpy_repeats}; "
          f"at least {MIN_REPEATS}, fewer past {args.budget:g} s per peer and config) after "
          f"{args.warmup} warm-up calls ({warmup['numpy_ref']}); float32, I=H;\n"
          f"ratios = peer ms / fusedrnn ms (>1: fusedrnn faster)\n")
    print(table_header(), flush=True)
    records = []
    for i, (cell, H, B) in enumerate(configs(args)):
        prob = Problem(cell, args.seq_len, B, H, np.float32, args.seed + i)
        for mode in MODES:
            times = time_config(make_runners(prob, mode), repeats, warmup, args.budget)
            recs = make_records(prob, mode, times, repeats, warmup, torch_note)
            print(table_row(recs), flush=True)
            records.extend(recs)
    return records


def write_json(path, doc):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main(argv=None):
    args = parse_args(argv)
    if args.unset_openblas_env:
        reexec_without_openblas_env()
    set_thread_env(args)
    torch_note = load_libraries(want_torch=not args.no_torch)
    set_threads(args.threads)
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()

    env = environment_facts(args, torch_note)
    print_environment(env)
    validation, ok = validate_all(args)
    doc = {"benchmark": "microbench", "started": started.isoformat(timespec="seconds"),
           "args": {k: v for k, v in vars(args).items()}, "environment": env,
           "validation": validation, "validation_ok": ok, "records": []}
    out = args.out or default_out_path()
    if not ok:
        write_json(out, doc)
        print(f"\nVALIDATION FAILED: nothing timed. Details in {out}", file=sys.stderr)
        return 1

    doc["records"] = benchmark_all(args, torch_note)
    doc["wall_s"] = time.perf_counter() - t0
    write_json(out, doc)
    print(f"\nwall time {doc['wall_s']:.1f} s; results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
