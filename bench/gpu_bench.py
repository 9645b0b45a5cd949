#!/usr/bin/env python3
"""fusedrnn's CUDA kernels vs torch.nn.LSTM/GRU/RNN on cuDNN, on one GPU (issue 11 item 7).

Peers, on the same weights and inputs (torch tensors on the device):

* ``fusedrnn`` -- :mod:`fusedrnn.functional` on CUDA tensors (``lstm/gru/rnn_forward`` +
  ``*_backward`` for one layer, ``stack_forward``/``stack_backward`` for stacks), run on
  torch's current stream;
* ``cudnn``    -- ``torch.nn.LSTM / GRU / RNN(tanh)`` on the device (cuDNN): inference in
  ``eval()`` under ``no_grad``, training as forward + ``y.sum().backward()``.

Configurations: bench/harness.py's (``grid``: lstm, gru, rnn_tanh x H 256 512 1024 x B 1 16 64
x T 50 100, I = H; ``stack``: 2-layer bidirectional LSTM H 512 B 32 T 100; ``deepbench``: its
LSTM inference shapes) plus ``deepbench_train``, DeepBench's training shapes that fit: LSTM
H 512 1024 2048 x B 16 32 64 128, T 25, I = H, and GRU H 1536 B 32 T 187; and ``f64``: two of
them in float64 (every other row is float32). Modes ``forward`` (inference) and ``fwd+bwd``
(a training step). Rows run in that order of priority (deepbench_train, f64, stack, grid,
deepbench) until ``--budget-s`` is spent; rows left are recorded as skipped.

Validation, per configuration, before it is timed (bench/harness.py's helpers and tolerances):
fusedrnn on the device against the float64 NumPy reference at T = 5 (outputs and every
gradient within 1e-9), and at full size against cuDNN (outputs within 1e-4, gradients of
y.sum() within 1e-3; float64 rows 1e-9). A row that fails is recorded and not timed; the exit
status is then 1. An exception in a row is recorded in that row (``error``) and the run goes on.

float32 is compared fairly: ``torch.backends.cudnn.rnn.fp32_precision`` is set to ``'ieee'``
(no TF32 in cuDNN's RNNs; torch's default there is ``'tf32'``) where torch has it, else
``torch.backends.cudnn.allow_tf32 = False``; the JSON records what it was and what was set.
Each row records the cuDNN algorithm torch picks for it (``get_algo`` in torch's
aten/src/ATen/native/cudnn/RNN.cpp, re-implemented in :func:`cudnn_algo`).

Timing: CUDA events around each call on torch's current stream (no synchronisation between
calls; a host check every few calls stops a peer after ``--peer-budget`` seconds, at least 3
calls kept), after warm-up calls; the median is reported. FLOPs as the CPU harness: forward
``2*T*B*(I+H)*G*H`` per layer and direction (the GEMMs), a training step 3x that; TFLOP/s from
the median. ``ratio`` = fusedrnn ms / cuDNN ms (< 1: fusedrnn faster); the plot shows
cuDNN ms / fusedrnn ms per configuration (above 1: fusedrnn faster), float32 and float64 bars.

    python bench/gpu_bench.py --quick --out gpu.json --png gpu.png   # a subset, ~1 minute
    python bench/gpu_bench.py --budget-s 240                          # everything that fits

Writes JSON (``--out``, default bench/results/gpu-<host>-<date>.json) and a PNG (``--png``,
default beside the JSON) with the device, driver/runtime, torch, CUDA and cuDNN versions.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness as hz  # noqa: E402  (cases, data, validation helpers and tolerances)
import microbench as mb  # noqa: E402  (rel_err, JSON, environment facts)

PEERS = ("fusedrnn", "cudnn")
MIN_REPEATS = 3
SYNC_EVERY = 5              # calls queued between two host checks of the peer budget
F64_TOL = 1e-9              # float64 rows vs cuDNN float64
SUITE_ORDER = ("deepbench_train", "f64", "stack", "grid", "deepbench")

np = torch = fusedrnn = F = None  # imported in main()


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a subset: DeepBench training LSTM H 512/1024/2048 at B 64 and the GRU "
                        "row, the f64 rows, the stack, grid lstm/gru H 256/1024 B 1/64 T 50")
    p.add_argument("--suites", nargs="+", choices=SUITE_ORDER,
                   help="default: all (in the order above)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per peer (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls per peer (default 3)")
    p.add_argument("--peer-budget", type=float, default=0.5,
                   help="seconds of timed calls per peer and row after which its repeats stop "
                        "(at least 3 kept; default 0.5)")
    p.add_argument("--budget-s", type=float, default=600.0,
                   help="no new row starts after this many seconds (default 600); the rows "
                        "left are recorded as skipped")
    p.add_argument("--device", type=int, default=0, help="CUDA device (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON path (default bench/results/gpu-<host>-<date>.json)")
    p.add_argument("--png", help="plot path (default: the JSON path with .png)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="no GPU: run this script's whole pipeline on the CPU (fusedrnn's CPU "
                        "kernels, torch on the CPU, host timers) to check the script itself; "
                        "the numbers mean nothing")
    p.add_argument("--allow-tf32", action="store_true",
                   help="leave cuDNN's float32 precision as torch has it (not the fair "
                        "comparison; recorded)")
    args = p.parse_args(argv)
    args.suites = args.suites or list(SUITE_ORDER)
    if args.repeats < 1 or args.warmup < 0 or args.peer_budget <= 0:
        p.error("--repeats must be >= 1, --warmup >= 0, --peer-budget > 0")
    return args


# ------------------------------------------------------------------------------------------
# Configurations: (case, dtype name), in priority order
# ------------------------------------------------------------------------------------------

DEEPBENCH_TRAIN_LSTM_H = (512, 1024, 2048)
DEEPBENCH_TRAIN_LSTM_B = (16, 32, 64, 128)


def configs(args):
    quick = args.quick
    grid_args = argparse.Namespace(
        suites=[s for s in ("grid", "stack", "deepbench") if s in args.suites],
        cells=["lstm", "gru"] if quick else list(hz.CELLS),
        hidden=[256, 1024] if quick else [256, 512, 1024],
        batch=[1, 64] if quick else [1, 16, 64],
        seq_len=[50] if quick else [50, 100])
    harness_cases = hz.cases(grid_args)
    out = []
    for suite in args.suites:
        if suite == "deepbench_train":
            bs = (64,) if quick else DEEPBENCH_TRAIN_LSTM_B
            out += [(hz.Case("deepbench_train", "lstm", H, B, 25), "float32")
                    for H in DEEPBENCH_TRAIN_LSTM_H for B in bs]
            out.append((hz.Case("deepbench_train", "gru", 1536, 32, 187), "float32"))
        elif suite == "f64":
            out += [(hz.Case("deepbench_train", "lstm", 512, 64, 25), "float64"),
                    (hz.Case("grid", "gru", 256, 16, 50), "float64")]
        else:
            out += [(c, "float32") for c in harness_cases if c.suite == suite]
    if quick:
        out = [(c, dt) for c, dt in out if c.suite != "deepbench" or c.B == 4]
    return out


# ------------------------------------------------------------------------------------------
# cuDNN facts
# ------------------------------------------------------------------------------------------

def fp32_precision_state():
    """What cuDNN's RNNs do with float32 now: the new API's value where torch has it, else the
    legacy flag (reading the legacy flag while the new per-op ones differ raises in torch)."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        return {"api": "torch.backends.cudnn.rnn.fp32_precision", "value": rnn.fp32_precision}
    return {"api": "torch.backends.cudnn.allow_tf32", "value": torch.backends.cudnn.allow_tf32}


def set_fp32_ieee():
    """cuDNN RNNs in IEEE float32 (see the module docstring). Returns (before, after)."""
    before = fp32_precision_state()
    if before["api"].endswith("fp32_precision"):
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
    return before, fp32_precision_state()


_CUDNN_MODE = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU"}


def cudnn_algo(cell, H, I, B, T, layers, directions, dtype, forward, prop, proj=0, packed=False):
    """The cuDNN RNN algorithm torch asks for: ``get_algo`` of torch's
    aten/src/ATen/native/cudnn/RNN.cpp (as in torch 2.x with cuDNN >= 8.2.1):

    * proj_size != 0 -> STANDARD;
    * unpacked input, not float64, compute capability >= 6 and a small hidden size
      (forward: RNN H <= 384, LSTM/GRU H <= 192; backward: RNN H <= 256, LSTM/GRU H <= 128)
      -> PERSIST_STATIC_SMALL_H;
    * unpacked float16 meeting the persistent heuristics -> PERSIST_STATIC (not used here);
    * else STANDARD."""
    mode = _CUDNN_MODE[cell]
    if proj:
        return "CUDNN_RNN_ALGO_STANDARD"
    if not packed:
        if dtype != "float64" and prop.major >= 6:
            rnn = mode.startswith("RNN")
            limit = (384 if rnn else 192) if forward else (256 if rnn else 128)
            if H <= limit:
                return "CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H"
        if dtype == "float16":
            common = (layers == 1 and H <= 1024 and directions == 1 and H % 128 == 0
                      and I % 128 == 0)
            device = (prop.major >= 8 and prop.multi_processor_count >= 98 and prop.minor != 6
                      and mode != "GRU" and B % 8 == 0 and B <= 128
                      and (mode == "LSTM" or B < 96 or H < 896))
            if common and device:
                return "CUDNN_RNN_ALGO_PERSIST_STATIC"
    return "CUDNN_RNN_ALGO_STANDARD"


def cudnn_facts(case, dtype, x, prop):
    """Whether torch runs this row on cuDNN, and the algorithm of each pass."""
    used = bool(torch.backends.cudnn.enabled and torch.backends.cudnn.is_acceptable(x))
    if not used:
        return {"cudnn_used": False, "algo_forward": None, "algo_backward": None}
    algo = lambda fwd: cudnn_algo(case.cell, case.H, case.I, case.B, case.T, case.layers,
                                  case.directions, dtype, fwd, prop)
    return {"cudnn_used": True, "algo_forward": algo(True), "algo_backward": algo(False),
            "source": "re-implementation of torch's aten/src/ATen/native/cudnn/RNN.cpp "
                      "get_algo (not read back from cuDNN)"}


# ------------------------------------------------------------------------------------------
# Data on the device, runners, validation
# ------------------------------------------------------------------------------------------

def device_data(case, dtype, seed, device):
    """bench/harness.py's Data (torch module, parameters, x, h0, c0) moved to the device."""
    np_dtype = np.float64 if dtype == "float64" else np.float32
    d = hz.Data(case, np_dtype, seed)
    return d.moved(lambda a: torch.as_tensor(a, device=device), device)


def put_on(device):
    return lambda a: torch.as_tensor(a, device=device)


def get(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def cudnn_errors(dd, dtype):
    """Full size: fusedrnn's outputs and gradients of y.sum() against cuDNN's, on the device."""
    want = hz.torch_outputs(dd)
    got = [None if a is None else get(a) for a in hz.np_forward(F, dd, False)[0]]
    errs = hz.output_errors("fusedrnn ", got, want)
    g_want = hz.torch_gradients(dd)
    g_got = hz.np_runner(F, dd, "fwd+bwd")()
    errs.update({f"fusedrnn d{k}": mb.rel_err(get(g_got[k]), g_want[k]) for k in g_want})
    return errs


def validate(case, dtype, seed, device):
    """The two checks of the module docstring: a record with errors and failures."""
    rec = {}
    e64 = hz.reference_errors(case, seed + 1000, put_on(device), get)
    rec["reference_f64"] = {"T": hz.REF_T, "tol": hz.REF_TOL, "errors": e64,
                            "max_rel_err": max(e64.values()),
                            "failed": hz.failures(e64, lambda k: hz.REF_TOL)}
    dd = device_data(case, dtype, seed, device)
    e = cudnn_errors(dd, dtype)
    if dtype == "float64":
        tol_out = tol_grad = F64_TOL
    else:
        tol_out, tol_grad = hz.OUT_TOL, hz.GRAD_TOL
    tol = lambda k: tol_grad if " d" in k else tol_out
    rec["cudnn"] = {"T": case.T, "dtype": dtype, "tol_outputs": tol_out, "tol_grads": tol_grad,
                    "errors": e, "max_rel_err": max(e.values()), "failed": hz.failures(e, tol)}
    rec["ok"] = not (rec["reference_f64"]["failed"] or rec["cudnn"]["failed"])
    return rec, dd


def cudnn_runner(dd, mode):
    dd.module.train(mode != "forward")  # inference in eval mode: cuDNN's inference path
    return hz.torch_runner(dd, mode)


class _HostEvent:
    """torch.cuda.Event's timing interface on the host clock (--cpu-dry-run)."""

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def time_cuda(fn, repeats, warmup, budget_s, on_gpu=True):
    """Milliseconds per call from CUDA events on torch's current stream: warm-up calls, then
    up to `repeats` calls, queued back to back; every SYNC_EVERY calls the host waits and stops
    once the timed calls took `budget_s` (at least MIN_REPEATS kept). Also returns the host's
    wall time over all timed calls (ms, to the last synchronisation)."""
    event = (lambda: torch.cuda.Event(enable_timing=True)) if on_gpu else _HostEvent
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    pairs = []
    start = time.perf_counter()
    for i in range(repeats):
        a, b = event(), event()
        a.record()
        fn()
        b.record()
        pairs.append((a, b))
        if (i + 1) % SYNC_EVERY == 0 and i + 1 >= MIN_REPEATS:
            b.synchronize()
            if time.perf_counter() - start > budget_s:
                break
    sync()
    wall_ms = (time.perf_counter() - start) * 1e3
    return [a.elapsed_time(b) for a, b in pairs], wall_ms


def time_row(args, dd, mode):
    runners = {"fusedrnn": hz.np_runner(F, dd, mode), "cudnn": cudnn_runner(dd, mode)}
    times, walls = {}, {}
    for peer in PEERS:  # each peer in one block, as the CPU harness
        times[peer], walls[peer] = time_cuda(runners[peer], args.repeats, args.warmup,
                                             args.peer_budget, not args.cpu_dry_run)
    return times, walls


# ------------------------------------------------------------------------------------------
# Rows and table
# ------------------------------------------------------------------------------------------

def base_row(case, dtype, mode):
    return {"suite": case.suite, "cell": case.cell, "net": case.net(), "layers": case.layers,
            "directions": case.directions, "mode": mode, "H": case.H, "I": case.I,
            "B": case.B, "T": case.T, "dtype": dtype, "label": case.label(),
            "gflop": case.flops(mode) / 1e9}


def summarize(row, times, walls, args):
    flops = row["gflop"] * 1e9
    row["peers"] = {}
    for peer, t in times.items():
        med = statistics.median(t)
        row["peers"][peer] = {"median_ms": med, "min_ms": min(t), "max_ms": max(t),
                              "repeats": len(t), "repeats_requested": args.repeats,
                              "warmup": args.warmup, "times_ms": t,
                              "host_wall_ms": walls[peer], "tflops": flops / (med * 1e9)}
        # the events sit on torch's current stream: work queued on another stream would be
        # missed by them but not by the host's clock
        if sum(t) < 0.5 * walls[peer] and walls[peer] > 5.0:
            row.setdefault("warnings", []).append(
                f"{peer}: CUDA events cover {sum(t):.1f} ms of {walls[peer]:.1f} ms of host "
                "time (launch-bound, or work on another stream)")
    f, c = row["peers"]["fusedrnn"]["median_ms"], row["peers"]["cudnn"]["median_ms"]
    row["fusedrnn_tflops"] = row["peers"]["fusedrnn"]["tflops"]
    row["cudnn_tflops"] = row["peers"]["cudnn"]["tflops"]
    row["ratio"] = f / c                   # fusedrnn ms / cuDNN ms: < 1, fusedrnn faster
    row["speedup_vs_torch"] = c / f        # the plot's (and the CPU harness's) direction
    return row


TABLE = [  # (header, width, cell text)
    ("suite", 15, lambda r: r["suite"]),
    ("cell", 8, lambda r: r["cell"]),
    ("net", 5, lambda r: r["net"]),
    ("mode", 7, lambda r: r["mode"]),
    ("dtype", 7, lambda r: r["dtype"]),
    ("H", 4, lambda r: r["H"]),
    ("B", 3, lambda r: r["B"]),
    ("T", 3, lambda r: r["T"]),
    ("fused ms", 9, lambda r: _ms(r, "fusedrnn")),
    ("cuDNN ms", 9, lambda r: _ms(r, "cudnn")),
    ("f TFLOP/s", 9, lambda r: _num(r.get("fusedrnn_tflops"), ".2f")),
    ("c TFLOP/s", 9, lambda r: _num(r.get("cudnn_tflops"), ".2f")),
    ("f/cuDNN", 7, lambda r: _num(r.get("ratio"), ".2f")),
    ("algo f/b", 9, lambda r: _algos(r)),
    ("note", 0, lambda r: r.get("note", "")),
]


def _ms(row, peer):
    p = row.get("peers", {}).get(peer)
    if p is None:
        return "-"
    return f"{p['median_ms']:.3f}" + ("*" if p["repeats"] < p["repeats_requested"] else "")


def _num(v, fmt):
    return "-" if v is None else format(v, fmt)


def _algos(row):
    c = row.get("cudnn_algo") or {}
    short = lambda a: {"CUDNN_RNN_ALGO_STANDARD": "std",
                       "CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H": "psmallH",
                       "CUDNN_RNN_ALGO_PERSIST_STATIC": "pstatic"}.get(a, "-")
    if not c.get("cudnn_used"):
        return "-"
    return short(c["algo_forward"]) + ("/" + short(c["algo_backward"])
                                       if row["mode"] == "fwd+bwd" else "")


def table_header():
    return hz.table_header(TABLE)


def table_row(row):
    return hz.table_row(row, TABLE)


# ------------------------------------------------------------------------------------------
# Environment and main
# ------------------------------------------------------------------------------------------

def environment(args, fp32_before, fp32_after, device):
    """Machine, versions, the device and cuDNN's float32 mode; and the device's properties."""
    shim = argparse.Namespace(threads=None)
    env = mb.environment_facts(shim, None)
    for k in ("torch_note", "threads", "thread_env", "wait_env", "openblas_env",
              "openblas_env_unset", "openblas_env_removed", "torch_num_threads"):
        env.pop(k, None)
    if args.cpu_dry_run:
        prop = argparse.Namespace(major=0, minor=0, multi_processor_count=0, total_memory=0)
        name = "cpu (--cpu-dry-run)"
    else:
        prop = torch.cuda.get_device_properties(device)
        name = torch.cuda.get_device_name(device)
    env["device"] = {"index": device, "name": name, "capability": f"{prop.major}.{prop.minor}",
                     "multiprocessors": prop.multi_processor_count,
                     "memory_gib": round(prop.total_memory / 2**30, 1)}
    try:
        import fusedrnn.cuda as fcuda
        env["fusedrnn_cuda"] = {"device_name": fcuda.get_device_name(device),
                                "device_count": fcuda.device_count()}
        for name in ("runtime_version", "driver_version"):
            if hasattr(fcuda, name):
                env["fusedrnn_cuda"][name] = getattr(fcuda, name)()
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        env["fusedrnn_cuda"] = {"error": f"{type(e).__name__}: {e}"}
    env["torch_cuda"] = torch.version.cuda
    env["cudnn_version"] = torch.backends.cudnn.version()
    env["cudnn_enabled"] = torch.backends.cudnn.enabled
    env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    env["cudnn_rnn_fp32_precision_before"] = fp32_before
    env["cudnn_rnn_fp32_precision"] = fp32_after
    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    env["cuda_matmul_fp32_precision"] = matmul
    env["NVIDIA_TF32_OVERRIDE"] = os.environ.get("NVIDIA_TF32_OVERRIDE")
    env["timing"] = (f"CUDA events on torch's current stream, median of up to {args.repeats} "
                     f"calls after {args.warmup} warm-up calls, at least {MIN_REPEATS} past "
                     f"{args.peer_budget:g} s per peer and row")
    return env, prop


def cublas_status():
    try:
        import fusedrnn.cuda as fcuda
        return fcuda.cublas_status()
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        return f"unknown ({type(e).__name__}: {e})"


def print_environment(env):
    dev = env["device"]
    lines = [
        "fusedrnn GPU benchmark (fusedrnn CUDA vs torch.nn on cuDNN)",
        f"  device    : {dev['name']} (cc {dev['capability']}, {dev['multiprocessors']} SMs, "
        f"{dev['memory_gib']} GiB) | host {env['hostname']}",
        f"  versions  : python {env['python']}, numpy {env['numpy']}, torch {env['torch']} "
        f"(CUDA {env['torch_cuda']}), cuDNN {env['cudnn_version']}, fusedrnn {env['fusedrnn']}",
        f"  fusedrnn  : {env.get('fusedrnn_cuda')}",
        f"  cuDNN fp32: {env['cudnn_rnn_fp32_precision_before']['api']} was "
        f"{env['cudnn_rnn_fp32_precision_before']['value']!r}, now "
        f"{env['cudnn_rnn_fp32_precision']['value']!r}; matmul fp32_precision "
        f"{env['cuda_matmul_fp32_precision']!r}; NVIDIA_TF32_OVERRIDE "
        f"{env['NVIDIA_TF32_OVERRIDE']!r}",
        f"  timing    : {env['timing']}",
    ]
    print("\n".join(lines), flush=True)


def default_out_path():
    return mb.default_out_path().replace(os.sep + "microbench-", os.sep + "gpu-")


def write_plot(doc, png):
    try:
        import plot_results
        plot_results.plot(doc, png)
        return png
    except Exception as e:  # noqa: BLE001 - no matplotlib, or nothing to plot
        print(f"no plot ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def run_config(args, case, dtype, seed, prop):
    """Validation, then timing of each mode: the rows of one configuration."""
    device = "cpu" if args.cpu_dry_run else f"cuda:{args.device}"
    rows = [base_row(case, dtype, mode) for mode in case.modes]
    rec, dd = validate(case, dtype, seed, device)
    algo = cudnn_facts(case, dtype, dd.x, prop)
    for row in rows:
        row["validation"] = rec
        row["cudnn_algo"] = algo
    line = (f"  validate {case.cell:8s} {case.net():5s} H={case.H:<4d} B={case.B:<3d} "
            f"T={case.T:<3d} {dtype}: ref f64 {rec['reference_f64']['max_rel_err']:.1e} | "
            f"vs cuDNN {rec['cudnn']['max_rel_err']:.1e}")
    if not rec["ok"]:
        print(line + f"  FAILED: {rec['reference_f64']['failed'] + rec['cudnn']['failed']}",
              flush=True)
        for row in rows:
            row["note"] = "validation failed: not timed"
        return rows
    print(line, flush=True)
    for row in rows:
        summarize(row, *time_row(args, dd, row["mode"]), args)
    return rows


def main(argv=None):
    global np, torch, fusedrnn, F
    args = parse_args(argv)
    try:
        hz.load_libraries(argparse.Namespace(no_ort=True))  # NumPy, fusedrnn, torch
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    np, torch, fusedrnn, F = mb.np, mb.torch, mb.fusedrnn, mb.F
    if args.cpu_dry_run:
        print("--cpu-dry-run: everything on the CPU; the numbers mean nothing", flush=True)
    elif not torch.cuda.is_available():
        print("gpu_bench.py needs torch with CUDA and a GPU (or --cpu-dry-run)",
              file=sys.stderr)
        return 2
    elif not fusedrnn.config().get("cuda"):
        print("this fusedrnn was built without CUDA (FUSEDRNN_CUDA=ON pip install .)",
              file=sys.stderr)
        return 2
    else:
        torch.cuda.set_device(args.device)
    if args.allow_tf32:
        fp32_before = fp32_after = fp32_precision_state()
    else:
        fp32_before, fp32_after = set_fp32_ieee()
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    env, prop = environment(args, fp32_before, fp32_after, args.device)
    print_environment(env)
    all_configs = configs(args)
    out = args.out or default_out_path()
    png = None if args.no_plot else (args.png or os.path.splitext(out)[0] + ".png")
    dev = env["device"]["name"]
    doc = {"benchmark": "gpu_bench", "started": started.isoformat(timespec="seconds"),
           "args": vars(args), "environment": env, "rows": [],
           "plot": {"series": "dtype", "ylabel": "cuDNN ms / fusedrnn ms",
                    "title": f"fusedrnn CUDA speed-up over cuDNN (torch.nn) -- {dev}, cuDNN "
                             f"{env['cudnn_version']}, fp32 "
                             f"{env['cudnn_rnn_fp32_precision']['value']}, started "
                             f"{doc_started(started)}"}}
    print(f"\n{len(all_configs)} configurations, budget {args.budget_s:g} s; "
          "f/cuDNN = fusedrnn ms / cuDNN ms (< 1: fusedrnn faster); * = repeats cut by "
          "--peer-budget; algo: the cuDNN algorithm torch picks (forward/backward)\n", flush=True)
    rows, failed, errors, skipped = [], 0, 0, 0
    for i, (case, dtype) in enumerate(all_configs):
        if time.perf_counter() - t0 > args.budget_s:
            for mode in case.modes:
                r = base_row(case, dtype, mode)
                r["note"] = f"skipped: --budget-s {args.budget_s:g} spent"
                rows.append(r)
            skipped += 1
            continue
        try:
            new = run_config(args, case, dtype, args.seed + i, prop)
        except Exception as e:  # noqa: BLE001 - record the row and go on
            tb = traceback.format_exc(limit=6)
            print(f"  ERROR {case.label()} {dtype}: {type(e).__name__}: {e}", flush=True)
            new = []
            for mode in case.modes:
                r = base_row(case, dtype, mode)
                r["error"] = f"{type(e).__name__}: {e}"
                r["traceback"] = tb
                r["note"] = f"error: {type(e).__name__}"
                new.append(r)
            errors += 1
        failed += any(r.get("note", "").startswith("validation failed") for r in new)
        rows += new
        doc["rows"] = rows
        # which GEMM the rows ran on: cuBLAS (loaded at the first device GEMM) or the own kernel
        env.setdefault("fusedrnn_cuda", {})["cublas"] = cublas_status()
        mb.write_json(out, doc)  # after every configuration: a killed run keeps its rows
    print("\n" + table_header())
    for r in rows:
        print(table_row(r))
    doc["wall_s"] = time.perf_counter() - t0
    doc["summary"] = {"configs": len(all_configs), "validation_failed": failed,
                      "errors": errors, "skipped_for_budget": skipped,
                      "timed_rows": sum("peers" in r for r in rows)}
    mb.write_json(out, doc)
    if png:
        png = write_plot(doc, png)
    print(f"\n{doc['summary']}; wall {doc['wall_s']:.1f} s; results: {out}"
          + (f"; plot: {png}" if png else ""), flush=True)
    return 1 if failed or errors else 0


def doc_started(started):
    return started.strftime("%Y-%m-%d %H:%M")


if __name__ == "__main__":
    sys.exit(main())
