#!/usr/bin/env python3
"""fusedrnn's CUDA kernels vs torch.nn.LSTM/GRU/RNN on cuDNN, on one GPU (issue 11 item 7,
issue 12's persistent kernels).

Peers, on the same weights and inputs (torch tensors on the device):

* ``fusedrnn`` -- :mod:`fusedrnn.functional` on CUDA tensors (``lstm/gru/rnn_forward`` +
  ``*_backward`` for one layer, ``stack_forward``/``stack_backward`` for stacks), run on
  torch's current stream;
* ``cudnn``    -- ``torch.nn.LSTM / GRU / RNN(tanh)`` on the device (cuDNN): inference in
  ``eval()`` under ``no_grad``, training as forward + ``y.sum().backward()``.

Issue 12 (persistent kernels) first:

* ``floor`` (before every row; not a suite): ``_C.cuda_barrier_floor``, the empty persistent
  loop of csrc/cuda/floor.cu on one block of 256 threads per multiprocessor, with
  cooperative_groups' ``grid.sync()`` and with an own flag/epoch barrier, each without and with
  an h broadcast of 1024 and 4096 floats per step: microseconds per step (median of
  ``--floor-repeats`` launches of ``--floor-steps`` steps) in ``doc["floor"]``;
* ``persistent``: the issue's target table, LSTM and GRU x B 1 4 8 x H 256 512 1024 x T 50 200,
  I = H, one layer, float32, inference and training, each timed three ways: fusedrnn with
  ``FUSEDRNN_PERSISTENT=1`` (``persistent``), with ``FUSEDRNN_PERSISTENT=0`` (``step``, the
  per-step kernels) and cuDNN; ``c/pers`` and ``c/step`` = cuDNN ms / fusedrnn ms, and the
  issue's targets (inference >= 2x cuDNN, training >= 1.5x) as met/missed flags of the
  persistent timing (``target_met``; ``target_met_step`` for the per-step one). Each row also
  records ``fusedrnn.cuda.persistent_plan`` under ``FUSEDRNN_PERSISTENT=1``: a row whose layer
  does not fit runs per step in both fusedrnn timings (noted);
* ``crossover``: LSTM H 512 T 50 float32 inference at B 1 2 4 8 16 32 64 128, the same three
  timings: where the persistent loop stops beating the per-step path decides ``auto``'s batch
  threshold (``kPersistentAutoMaxBatch`` in csrc/cuda/exec.cuh, read back through the plan);
  ``doc["crossover"]`` sums it up.

The variable is set in ``os.environ`` around each fusedrnn timing and validation (the native
side reads it at every call) and restored after; every other row runs as the process has it.
Both fusedrnn variants are validated as below before anything of the row is timed.

Issue 11's configurations: bench/harness.py's (``grid``: lstm, gru, rnn_tanh x H 256 512 1024 x
B 1 16 64 x T 50 100, I = H; ``stack``: 2-layer bidirectional LSTM H 512 B 32 T 100;
``deepbench``: its LSTM inference shapes) plus ``deepbench_train``, DeepBench's training shapes
that fit: LSTM H 512 1024 2048 x B 16 32 64 128, T 25, I = H, and GRU H 1536 B 32 T 187; and
``f64``: two of them in float64 (every other row is float32). Modes ``forward`` (inference) and
``fwd+bwd`` (a training step). Rows run in that order of priority (persistent, crossover,
deepbench_train, f64, stack, grid, deepbench) until ``--budget-s`` is spent (counted from the
start, the floor included); rows left are recorded as skipped.

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
cuDNN ms / fusedrnn ms per configuration (above 1: fusedrnn faster), float32 and float64 bars,
and for the persistent and crossover rows one bar per fusedrnn variant (persistent, per-step).

    python bench/gpu_bench.py --quick --out gpu.json --png gpu.png   # a subset, ~1 minute
    python bench/gpu_bench.py --budget-s 240                          # everything that fits
    python bench/gpu_bench.py --suites persistent crossover           # issue 12 only

Writes JSON (``--out``, default bench/results/gpu-<host>-<date>.json) and a PNG (``--png``,
default beside the JSON) with the device, driver/runtime, torch, CUDA and cuDNN versions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
SUITE_ORDER = ("persistent", "crossover", "bf16", "deepbench_train", "f64", "stack", "grid",
               "deepbench")
PERSISTENT_SUITES = ("persistent", "crossover", "bf16")  # timed persistent / per step / cuDNN
P_PEERS = ("persistent", "step", "cudnn")
PERSISTENT_ENV = "FUSEDRNN_PERSISTENT"
ENV_OF_PEER = {"persistent": "1", "step": "0", "cudnn": None}  # None: left as it is
PERSISTENT_TARGET = {"forward": 2.0, "fwd+bwd": 1.5}  # issue 12: cuDNN ms / fusedrnn ms
BF16_TARGET = 2.0   # issue 12: bfloat16 at B <= 8, against cuDNN in bfloat16 (inference)
BF16_B, BF16_H = (1, 4, 8), (256, 512, 1024)
# 16-bit rows against cuDNN in the same storage: a sanity gate before timing (cuDNN rounds h
# between steps, fusedrnn once per output); the derived bound is tests/cuda/test_cuda_half.py's.
LOWP_TOL = 0.05
P_CELLS, P_B, P_H, P_T = ("lstm", "gru"), (1, 4, 8), (256, 512, 1024), (50, 200)
CROSSOVER_B = (1, 2, 4, 8, 16, 32, 64, 128)
FLOOR_KINDS = ("grid_sync", "flag")
FLOOR_H = (0, 1024, 4096)
FLOOR_THREADS = 256

np = torch = fusedrnn = F = None  # imported in main()


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a subset: persistent lstm/gru H 256/1024 B 1/8 T 50, crossover B 1 8 "
                        "32 128, DeepBench training LSTM H 512/1024/2048 at B 64 and the GRU "
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
    p.add_argument("--no-floor", action="store_true", help="skip the barrier floor")
    p.add_argument("--floor-steps", type=int, default=10000,
                   help="steps of each barrier-floor launch (default 10000)")
    p.add_argument("--floor-repeats", type=int, default=3,
                   help="timed launches per barrier-floor configuration (default 3)")
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
    if args.floor_steps < 1 or args.floor_repeats < 1:
        p.error("--floor-steps and --floor-repeats must be >= 1")
    return args


# ------------------------------------------------------------------------------------------
# Configurations: (case, dtype name), in priority order
# ------------------------------------------------------------------------------------------

DEEPBENCH_TRAIN_LSTM_H = (512, 1024, 2048)
DEEPBENCH_TRAIN_LSTM_B = (16, 32, 64, 128)


@dataclasses.dataclass(frozen=True)
class PCase(hz.Case):
    """A configuration of the persistent or crossover suite (hz.Case labels only its own)."""

    def label(self):
        pre = {"persistent": "P ", "crossover": "X ", "bf16": "BF "}.get(self.suite)
        return super().label() if pre is None else f"{pre}H{self.H} B{self.B} T{self.T}"


def persistent_configs(quick):
    """The issue's target table, T = 50 first (a budget cut loses the long rows first)."""
    cells, bs, hs, ts = (P_CELLS, (1, 8), (256, 1024), (50,)) if quick else (P_CELLS, P_B, P_H,
                                                                           P_T)
    return [(PCase("persistent", cell, H, B, T), "float32")
            for T in ts for cell in cells for H in hs for B in bs]


def crossover_configs(quick):
    bs = (1, 8, 32, 128) if quick else CROSSOVER_B
    return [(PCase("crossover", "lstm", 512, B, 50, modes=("forward",)), "float32") for B in bs]


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
        if suite == "persistent":
            out += persistent_configs(quick)
        elif suite == "crossover":
            out += crossover_configs(quick)
        elif suite == "bf16":
            bs, hs = ((1, 8), (256, 1024)) if quick else (BF16_B, BF16_H)
            out += [(PCase("bf16", cell, H, B, 50, modes=("forward",)), "bfloat16")
                    for cell in P_CELLS for H in hs for B in bs]
        elif suite == "deepbench_train":
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
    storage = getattr(torch, dtype)  # bfloat16 rows: data drawn in float32, stored in 16 bits
    d = d.moved(lambda a: torch.as_tensor(a, device=device).to(storage), device)
    d.module = d.module.to(storage)
    return d


def put_on(device):
    return lambda a: torch.as_tensor(a, device=device)


def get(a):
    return hz.tensor_to_numpy(a) if isinstance(a, torch.Tensor) else a


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
    elif dtype in ("bfloat16", "float16"):
        tol_out = tol_grad = LOWP_TOL
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
# Issue 12: the barrier floor, FUSEDRNN_PERSISTENT, the persistent and crossover rows
# ------------------------------------------------------------------------------------------

def host_16bit(args, dtype):
    """--cpu-dry-run of a 16-bit row: fusedrnn's CPU backend has no 16-bit path, so the device
    backend's code runs on the host (its test emulation) for the row."""
    if not (args.cpu_dry_run and dtype in ("bfloat16", "float16")):
        return contextlib.nullcontext()
    return _device_emulation()


@contextlib.contextmanager
def _device_emulation():
    from fusedrnn import _C
    old = _C._testing.set_device_emulation(0)
    try:
        yield
    finally:
        _C._testing.set_device_emulation(old)


@contextlib.contextmanager
def persistent_env(value):
    """FUSEDRNN_PERSISTENT = value inside the block (None: as it is), restored after."""
    if value is None:
        yield
        return
    old = os.environ.get(PERSISTENT_ENV)
    os.environ[PERSISTENT_ENV] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PERSISTENT_ENV, None)
        else:
            os.environ[PERSISTENT_ENV] = old


def measure_floor(args, prop):
    """doc["floor"]: microseconds per step of the empty persistent loop (csrc/cuda/floor.cu),
    both barriers, without and with an h broadcast, on one block per multiprocessor."""
    if args.cpu_dry_run:
        return {"skipped": "--cpu-dry-run: no GPU"}
    if args.no_floor:
        return {"skipped": "--no-floor"}
    fn = getattr(fusedrnn._C, "cuda_barrier_floor", None)
    if fn is None:
        return {"error": "this fusedrnn has no _C.cuda_barrier_floor (csrc/cuda/floor.cu)"}
    out = {"blocks": prop.multi_processor_count, "threads": FLOOR_THREADS,
           "steps": args.floor_steps, "repeats": args.floor_repeats, "unit": "us per step",
           "what": "cooperative launch of one block per multiprocessor looping over steps: "
                   "a grid barrier per step (grid_sync: cooperative_groups grid.sync(); flag: "
                   "atomicAdd on a counter + volatile spin on an epoch, __threadfence, one "
                   "thread per block); h_floats > 0: each block also reads the whole h vector "
                   "(global -> shared) and writes its slice of the next step's buffer. CUDA "
                   "events around one launch after a warm-up launch; median of the repeats",
           "results": [], "us_per_step": {}}
    print(f"\nbarrier floor: {out['blocks']} blocks x {FLOOR_THREADS} threads, "
          f"{args.floor_steps} steps, median of {args.floor_repeats} launches (us/step)",
          flush=True)
    for kind in FLOOR_KINDS:
        for h in FLOOR_H:
            rec = {"kind": kind, "h_floats": h}
            try:
                us = [fn(kind, blocks=0, threads=FLOOR_THREADS, steps=args.floor_steps,
                         h_floats=h, device=args.device) for _ in range(args.floor_repeats)]
                rec.update(us_per_step=statistics.median(us), min_us=min(us), all_us=us)
                out["us_per_step"].setdefault(kind, {})[str(h)] = rec["us_per_step"]
                text = f"{rec['us_per_step']:.3f} (min {min(us):.3f})"
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                rec["error"] = f"{type(e).__name__}: {e}"
                text = "ERROR " + rec["error"]
            out["results"].append(rec)
            print(f"  {kind:9s} h_floats={h:<5d} {text}", flush=True)
    return out


def floor_lines(floor):
    if not floor or "results" not in floor:
        return [f"barrier floor: {floor}"]
    lines = [f"barrier floor (us/step; {floor['blocks']} blocks x {floor['threads']} threads, "
             f"{floor['steps']} steps):   " + "  ".join(f"h={h:<5d}" for h in FLOOR_H)]
    for kind in FLOOR_KINDS:
        v = floor["us_per_step"].get(kind, {})
        lines.append(f"  {kind:9s}" + "".join(
            f"  {v[str(h)]:7.3f}" if str(h) in v else "        -" for h in FLOOR_H))
    return lines


def persistent_plan(args, case, dtype):
    """fusedrnn.cuda.persistent_plan under FUSEDRNN_PERSISTENT=1: {"forward", "backward"}."""
    if args.cpu_dry_run:
        return {"not_applicable": "--cpu-dry-run (CPU kernels; the variable has no effect)"}
    try:
        import fusedrnn.cuda as fcuda
        with persistent_env("1"):
            return fcuda.persistent_plan(case.cell, case.H, case.B, dtype=dtype,
                                         device=args.device)
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        return {"error": f"{type(e).__name__}: {e}"}


def auto_max_batch(args):
    """The largest batch FUSEDRNN_PERSISTENT=auto runs persistently (kPersistentAutoMaxBatch in
    csrc/cuda/exec.cuh), read back through the plan: the smallest batch it refuses as "batch
    above ...", minus 1 (the batch check precedes the fit). None where it cannot be read."""
    if args.cpu_dry_run:
        return None
    try:
        import fusedrnn.cuda as fcuda
        refused = lambda B: fcuda.persistent_plan("rnn_tanh", 1, B, device=args.device)[
            "forward"]["why"].startswith("batch above")
        with persistent_env("auto"):
            lo, hi = 1, 1 << 20
            if refused(lo) or not refused(hi):
                return None
            while hi - lo > 1:  # refused(hi), not refused(lo)
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if refused(mid) else (mid, hi)
            return lo
    except Exception:  # noqa: BLE001 - an older build, or no plan: unknown
        return None


def plan_used(plan, mode):
    """Whether the persistent loop runs in a row of this mode (None: unknown)."""
    if "forward" not in plan:
        return None
    dirs = ("forward",) if mode == "forward" else ("forward", "backward")
    return all(plan[d]["persistent"] for d in dirs)


def plan_text(plan, mode):
    if "forward" not in plan:
        return "-"
    dirs = ("forward",) if mode == "forward" else ("forward", "backward")
    return "/".join("P" if plan[d]["persistent"] else "s" for d in dirs)


def time_persistent_row(args, dd, mode):
    """The three peers, each in one block: fusedrnn under FUSEDRNN_PERSISTENT=1 and =0, cuDNN."""
    runners = {"persistent": hz.np_runner(F, dd, mode), "step": hz.np_runner(F, dd, mode),
               "cudnn": cudnn_runner(dd, mode)}
    times, walls = {}, {}
    for peer in P_PEERS:
        with persistent_env(ENV_OF_PEER[peer]):
            times[peer], walls[peer] = time_cuda(runners[peer], args.repeats, args.warmup,
                                                 args.peer_budget, not args.cpu_dry_run)
    return times, walls


def summarize_persistent(row, times, walls, args):
    peer_stats(row, times, walls, args)
    p, s, c = (row["peers"][k]["median_ms"] for k in P_PEERS)
    row["ratio_cudnn_over_persistent"] = c / p   # > 1: the persistent loop beats cuDNN
    row["ratio_cudnn_over_step"] = c / s
    row["ratio_step_over_persistent"] = s / p
    row["ratio"] = p / c                         # as the other rows: fusedrnn ms / cuDNN ms
    row["speedup_vs_torch"] = c / p
    if row["suite"] in ("persistent", "bf16"):
        t = row["target"] = BF16_TARGET if row["suite"] == "bf16" else \
            PERSISTENT_TARGET[row["mode"]]
        row["target_met"] = c / p >= t
        row["target_met_step"] = c / s >= t
    return row


def run_persistent_config(args, case, dtype, seed, prop):
    """Both fusedrnn variants validated (each as run_config validates), then each mode timed
    three ways."""
    device = "cpu" if args.cpu_dry_run else f"cuda:{args.device}"
    rows = [base_row(case, dtype, mode) for mode in case.modes]
    plan = persistent_plan(args, case, dtype)
    recs = {}
    for variant in ("persistent", "step"):
        with persistent_env(ENV_OF_PEER[variant]):
            recs[variant], dd = validate(case, dtype, seed, device)
    ok = all(r["ok"] for r in recs.values())
    algo = cudnn_facts(case, dtype, dd.x, prop)
    for row in rows:
        row["validation"] = recs
        row["cudnn_algo"] = algo
        row["persistent_plan"] = plan
        row["persistent_used"] = plan_used(plan, row["mode"])
        if row["persistent_used"] is False:
            why = "; ".join(f"{d}: {plan[d]['why']}" for d in ("forward", "backward")
                            if not plan[d]["persistent"])
            row["note"] = f"no persistent loop ({why}): both fusedrnn timings run per step"
    worst = lambda k: max(r[k]["max_rel_err"] for r in recs.values())
    line = (f"  validate {case.suite:10s} {case.cell:5s} H={case.H:<4d} B={case.B:<3d} "
            f"T={case.T:<3d} {dtype} (persistent and per-step): ref f64 "
            f"{worst('reference_f64'):.1e} | vs cuDNN {worst('cudnn'):.1e} | plan "
            f"{plan_text(plan, case.modes[-1])}")
    if not ok:
        failed = {v: r["reference_f64"]["failed"] + r["cudnn"]["failed"]
                  for v, r in recs.items() if not r["ok"]}
        print(line + f"  FAILED: {failed}", flush=True)
        for row in rows:
            row["note"] = "validation failed: not timed"
        return rows
    print(line, flush=True)
    for row in rows:
        summarize_persistent(row, *time_persistent_row(args, dd, row["mode"]), args)
    return rows


def crossover_summary(rows, args):
    """doc["crossover"]: per batch the three timings; the largest batch up to which the
    persistent loop (planned, and faster than the per-step path) wins at every batch."""
    xs = sorted((r for r in rows if r["suite"] == "crossover" and "peers" in r),
                key=lambda r: r["B"])
    out = {"cell": "lstm", "H": 512, "T": 50, "dtype": "float32", "mode": "forward",
           "auto_max_batch_now": auto_max_batch(args), "by_batch": []}
    wins_up_to, broken = None, False
    for r in xs:
        p, s, c = (r["peers"][k]["median_ms"] for k in P_PEERS)
        used = r.get("persistent_used")
        win = bool(used) and p < s
        out["by_batch"].append({"B": r["B"], "persistent_ms": p, "step_ms": s, "cudnn_ms": c,
                                "persistent_used": used, "persistent_faster": win})
        if win and not broken:
            wins_up_to = r["B"]
        broken = broken or not win
    out["persistent_wins_up_to_batch"] = wins_up_to
    out["measured_batches"] = [r["B"] for r in xs]
    return out


def crossover_lines(x):
    if not x or not x.get("by_batch"):
        return []
    lines = [f"crossover (lstm H512 T50 float32 inference; ms): auto threshold now "
             f"{x['auto_max_batch_now']}, persistent wins up to B = "
             f"{x['persistent_wins_up_to_batch']}"]
    for b in x["by_batch"]:
        lines.append(f"  B={b['B']:<4d} persistent {b['persistent_ms']:8.3f}  step "
                     f"{b['step_ms']:8.3f}  cuDNN {b['cudnn_ms']:8.3f}"
                     + ("" if b["persistent_used"] is not False else "  (not planned)"))
    return lines


# ------------------------------------------------------------------------------------------
# Rows and table
# ------------------------------------------------------------------------------------------

def base_row(case, dtype, mode):
    return {"suite": case.suite, "cell": case.cell, "net": case.net(), "layers": case.layers,
            "directions": case.directions, "mode": mode, "H": case.H, "I": case.I,
            "B": case.B, "T": case.T, "dtype": dtype, "label": case.label(),
            "gflop": case.flops(mode) / 1e9}


def peer_stats(row, times, walls, args):
    """row["peers"]: each peer's timing statistics (and a warning where the events missed
    work)."""
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
    return row


def summarize(row, times, walls, args):
    peer_stats(row, times, walls, args)
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


def _pms(row, peer):
    return _ms(row, peer) if peer in row.get("peers", {}) else "-"


def _target(row):
    if "target" not in row:
        return "-"
    return f"{row['target']:.1f}x " + ("met" if row["target_met"] else "MISS")


P_TABLE = [  # the persistent and crossover rows
    ("suite", 10, lambda r: r["suite"]),
    ("cell", 5, lambda r: r["cell"]),
    ("mode", 7, lambda r: r["mode"]),
    ("H", 4, lambda r: r["H"]),
    ("B", 3, lambda r: r["B"]),
    ("T", 3, lambda r: r["T"]),
    ("pers ms", 9, lambda r: _pms(r, "persistent")),
    ("step ms", 9, lambda r: _pms(r, "step")),
    ("cuDNN ms", 9, lambda r: _pms(r, "cudnn")),
    ("c/pers", 6, lambda r: _num(r.get("ratio_cudnn_over_persistent"), ".2f")),
    ("c/step", 6, lambda r: _num(r.get("ratio_cudnn_over_step"), ".2f")),
    ("target", 9, _target),
    ("plan", 4, lambda r: plan_text(r.get("persistent_plan") or {}, r["mode"])),
    ("algo f/b", 9, lambda r: _algos(r)),
    ("note", 0, lambda r: r.get("note", "")),
]


def table_header(persistent=False):
    return hz.table_header(P_TABLE if persistent else TABLE)


def table_row(row):
    return hz.table_row(row, P_TABLE if row["suite"] in PERSISTENT_SUITES else TABLE)


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
    env[PERSISTENT_ENV] = os.environ.get(PERSISTENT_ENV)  # as the non-issue-12 rows run
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


def plot_doc(doc):
    """The document plot_results draws: series = dtype, and for the persistent and crossover
    rows one bar per fusedrnn variant (cuDNN ms / persistent ms, cuDNN ms / per-step ms)."""
    rows = []
    for r in doc["rows"]:
        if r["suite"] in PERSISTENT_SUITES:
            if "peers" in r:
                for variant, key in (("persistent", "ratio_cudnn_over_persistent"),
                                     ("per-step", "ratio_cudnn_over_step")):
                    rows.append(dict(r, series=f"{r['dtype']} {variant}",
                                     speedup_vs_torch=r[key]))
        else:
            rows.append(dict(r, series=r["dtype"]))
    return dict(doc, rows=rows, plot=dict(doc["plot"], series="series"))


def write_plot(doc, png):
    try:
        import plot_results
        plot_results.plot(plot_doc(doc), png)
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
           "args": vars(args), "environment": env, "floor": None, "rows": [],
           "plot": {"series": "dtype", "ylabel": "cuDNN ms / fusedrnn ms",
                    "title": f"fusedrnn CUDA speed-up over cuDNN (torch.nn) -- {dev}, cuDNN "
                             f"{env['cudnn_version']}, fp32 "
                             f"{env['cudnn_rnn_fp32_precision']['value']}, started "
                             f"{doc_started(started)}"}}
    doc["floor"] = measure_floor(args, prop)
    mb.write_json(out, doc)
    print(f"\n{len(all_configs)} configurations, budget {args.budget_s:g} s; "
          "f/cuDNN = fusedrnn ms / cuDNN ms (< 1: fusedrnn faster); * = repeats cut by "
          "--peer-budget; algo: the cuDNN algorithm torch picks (forward/backward); "
          "persistent/crossover rows: c/pers, c/step = cuDNN ms / fusedrnn ms with "
          f"{PERSISTENT_ENV}=1 / =0 (> 1: fusedrnn faster), target = issue 12's for c/pers, "
          "plan = persistent (P) or per-step (s) loop, forward/backward\n", flush=True)
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
            run = run_persistent_config if case.suite in PERSISTENT_SUITES else run_config
            with host_16bit(args, dtype):
                new = run(args, case, dtype, args.seed + i, prop)
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
    if any(c.suite == "crossover" for c, _ in all_configs):
        doc["crossover"] = crossover_summary(rows, args)
    # issue 12's rows first, then the floor and the crossover, then the others: the check
    # script's summary shows the output from the first table header on
    p_rows = [r for r in rows if r["suite"] in PERSISTENT_SUITES]
    o_rows = [r for r in rows if r["suite"] not in PERSISTENT_SUITES]
    if p_rows:
        print("\n" + table_header(persistent=True))
        for r in p_rows:
            print(table_row(r))
    print("\n" + "\n".join(floor_lines(doc["floor"]) + crossover_lines(doc.get("crossover"))))
    if o_rows:
        print("\n" + table_header())
        for r in o_rows:
            print(table_row(r))
    doc["wall_s"] = time.perf_counter() - t0
    targets = [r["target_met"] for r in p_rows if "target_met" in r]
    floor_errors = sum("error" in r for r in (doc["floor"] or {}).get("results", []))
    floor_errors += "error" in (doc["floor"] or {})
    doc["summary"] = {"configs": len(all_configs), "validation_failed": failed,
                      "errors": errors, "floor_errors": floor_errors,
                      "skipped_for_budget": skipped,
                      "timed_rows": sum("peers" in r for r in rows),
                      "persistent_targets_met": sum(targets),
                      "persistent_targets_missed": len(targets) - sum(targets)}
    mb.write_json(out, doc)
    if png:
        png = write_plot(doc, png)
    print(f"\n{doc['summary']}; wall {doc['wall_s']:.1f} s; results: {out}"
          + (f"; plot: {png}" if png else ""), flush=True)
    return 1 if failed or errors or floor_errors else 0


def doc_started(started):
    return started.strftime("%Y-%m-%d %H:%M")


if __name__ == "__main__":
    sys.exit(main())
