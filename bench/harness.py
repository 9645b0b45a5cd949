#!/usr/bin/env python3
"""fusedrnn benchmark harness (docs/design.md §7): fusedrnn vs PyTorch CPU, ONNX Runtime CPU and the
NumPy reference on the same weights and inputs, at 1 and 2 threads, in one command.

Peers (one configuration at a time, each peer's calls in one block -- see
``microbench.time_config`` -- never interleaved call by call):

* ``fusedrnn``  -- :mod:`fusedrnn.functional`: ``lstm/gru/rnn_forward`` + ``*_backward`` for
  one layer, ``stack_forward``/``stack_backward`` for the 2-layer bidirectional LSTM;
* ``torch``     -- ``torch.nn.LSTM / GRU / RNN(tanh)`` on the CPU (inference under no_grad);
* ``ort``       -- ONNX Runtime CPU, inference only: a graph of ONNX ``LSTM`` / ``GRU``
  (``linear_before_reset=1``) / ``RNN`` (Tanh) nodes built by ``fusedrnn.onnx.build_model``
  (the weight blocks permuted from PyTorch's gate order, LSTM i,f,g,o -> i,o,f,c; GRU r,z,n ->
  z,r,h; ``B = [Wb, Rb]``), no ``sequence_lens``; session with ``intra_op_num_threads`` = threads,
  ``inter_op_num_threads`` = 1, sequential execution;
* ``numpy_ref`` -- :mod:`fusedrnn.reference` (pure NumPy, slow: 1-3 timed calls), with NumPy's
  own BLAS limited to the same thread count through threadpoolctl when it is installed.

Suites: ``grid`` -- cells lstm, gru, rnn_tanh x H 256 512 1024 x B 1 16 64 x T 50 100, one layer,
I = H; ``stack`` -- 2-layer bidirectional LSTM, H = 512, B = 32, T = 100 (parameters keyed by
torch's names, taken from the torch module's state_dict); ``deepbench`` -- DeepBench's LSTM
inference shapes that fit: H 512 and 1024, T 25, B 1 and 4 (forward only). Modes:
``forward`` (inference: fusedrnn ``training=False``, torch under no_grad, ORT) and ``fwd+bwd``
(training forward + backward of ``y.sum()``: fusedrnn, torch and the reference).

Validation, before anything is timed: fusedrnn vs the reference in float64 (T = 5, same H, B,
layers; outputs and every gradient within 1e-9 relative); at full size in float32, fusedrnn, ORT
and the reference against torch (outputs within 1e-4 relative, fusedrnn's gradients within
1e-3). A failure exits with status 1.

Timing: warm-up calls, then the median of up to ``--repeats`` calls; a peer stops after at least
3 calls once its calls pass ``--budget`` seconds (``*`` in the table); calls over
``HEAVY_GFLOP`` get one warm-up call, the reference gets one call without warm-up over
``REF_HEAVY_GFLOP``. FLOPs: forward ``2*T*B*(I+H)*G*H`` per layer and direction, training 3x.
Ratios are ``peer_ms / fusedrnn_ms`` (> 1: fusedrnn faster); ``best/f`` is the faster of torch
and ORT (inference). The same run measures a large SGEMM (2048^3 float32 through fusedrnn's
own BLAS, ``fusedrnn._C.gemm``) per thread count; ``%sgemm`` is fusedrnn's forward GFLOP/s as a
fraction of it (B >= 16).

    python bench/harness.py --quick                    # subset, < 2 minutes on 2 cores
    python bench/harness.py                            # everything (~10-25 minutes on 2 cores)
    python bench/harness.py --unset-openblas-env       # without OPENBLAS_CORETYPE/_L2_SIZE
    python bench/harness.py --suites stack --threads 2 --repeats 5

Writes ``bench/results/harness-<host>-<date>.json`` and a PNG next to it (fusedrnn's speed-up
over PyTorch per configuration; ``bench/plot_results.py`` redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import microbench as mb  # noqa: E402  (environment, timing and JSON helpers; stdlib-only import)

CELLS = ("lstm", "gru", "rnn_tanh")  # gates per cell: fusedrnn.spec.GATES (mb.GATES)
MODES = ("forward", "fwd+bwd")
PEERS = ("fusedrnn", "torch", "ort", "numpy_ref")
INFERENCE_ONLY = ("ort",)
SUITES = ("grid", "stack", "deepbench")
REF_T = 5                   # sequence length of the float64 reference check
REF_TOL = 1e-9              # fusedrnn vs reference, float64
OUT_TOL = 1e-4              # outputs vs torch, float32
GRAD_TOL = 1e-3             # fusedrnn gradients vs torch, float32
HEAVY_GFLOP = 20.0          # calls above this: one warm-up call
REF_HEAVY_GFLOP = 5.0       # reference calls above this: one timed call, no warm-up
SGEMM_N = 2048
SGEMM_MIN_B = 16            # %sgemm is reported for B >= this
OTHERS_WARN = 0.3           # cores busy with other processes above which the run warns

# Imported by load_libraries() once the thread environment is set.
np = fusedrnn = F = ref = torch = ort = onnx = threadpoolctl = None


# ------------------------------------------------------------------------------------------
# Command line and libraries
# ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="grid only with H=256, T=50, B 1 16, 2 threads, few repeats")
    p.add_argument("--suites", nargs="+", choices=SUITES, help="default: all (--quick: grid)")
    p.add_argument("--cells", nargs="+", choices=sorted(CELLS), default=list(CELLS),
                   help="grid cells")
    p.add_argument("--hidden", type=int, nargs="+", help="grid H (default 256 512 1024)")
    p.add_argument("--batch", type=int, nargs="+", help="grid B (default 1 16 64)")
    p.add_argument("--seq-len", type=int, nargs="+", help="grid T (default 50 100)")
    p.add_argument("--threads", type=int, nargs="+", help="thread counts (default 1 2)")
    p.add_argument("--repeats", type=int, help="timed calls per peer (default 15, --quick 5)")
    p.add_argument("--ref-repeats", type=int,
                   help=f"timed calls of the NumPy reference (default 3, --quick 1; 1 above "
                        f"{REF_HEAVY_GFLOP:g} GFLOP per call)")
    p.add_argument("--warmup", type=int, help="warm-up calls per peer (default 2, --quick 1)")
    p.add_argument("--budget", type=float,
                   help="seconds of timed calls per peer and configuration after which the "
                        "repeats stop (at least 3 kept; default 2, --quick 0.5)")
    p.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--no-ref", action="store_true", help="skip timing the NumPy reference")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--unset-openblas-env", action="store_true",
                   help="re-execute with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from "
                        "this process's environment (said so in the output and the JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON path (default bench/results/harness-<host>-<date>.json)")
    args = p.parse_args(argv)
    q = args.quick
    args.suites = args.suites or (["grid"] if q else list(SUITES))
    args.hidden = args.hidden or ([256] if q else [256, 512, 1024])
    args.batch = args.batch or ([1, 16] if q else [1, 16, 64])
    args.seq_len = args.seq_len or ([50] if q else [50, 100])
    args.threads = args.threads or ([2] if q else [1, 2])
    args.repeats = args.repeats or (5 if q else 15)
    args.ref_repeats = args.ref_repeats or (1 if q else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    args.budget = args.budget if args.budget is not None else (0.5 if q else 2.0)
    if min(args.threads) < 1 or args.repeats < 1 or args.ref_repeats < 1 or args.warmup < 0:
        p.error("--threads, --repeats and --ref-repeats must be >= 1, --warmup >= 0")
    return args


def load_libraries(args):
    """Imports NumPy, fusedrnn, torch (required), onnx + onnxruntime and threadpoolctl
    (optional). Returns notes about what is missing."""
    global np, fusedrnn, F, ref, torch, ort, onnx, threadpoolctl
    note = mb.load_libraries(want_torch=True)
    np, fusedrnn, F, ref, torch = mb.np, mb.fusedrnn, mb.F, mb.ref, mb.torch
    if torch is None:
        raise SystemExit(f"harness.py needs PyTorch: {note}")
    notes = []
    if args.no_ort:
        notes.append("ort skipped (--no-ort)")
    else:
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as e:
            notes.append(f"ort skipped (import failed: {e}; pip install onnx onnxruntime)")
    try:
        import threadpoolctl
    except ImportError:
        notes.append("threadpoolctl missing: NumPy's BLAS threads not limited for numpy_ref")
    return notes


def set_threads(threads):
    """fusedrnn, torch and NumPy's BLAS (the reference's) on `threads` threads. ORT gets them
    through its session options. fusedrnn's own OpenBLAS stays as fusedrnn set it (1 thread
    inside fusedrnn's OpenMP threads), so only NumPy's BLAS is limited."""
    fusedrnn.set_num_threads(threads)
    torch.set_num_threads(threads)
    if threadpoolctl is not None:
        paths = [lib["filepath"] for lib in threadpoolctl.threadpool_info()
                 if lib["user_api"] == "blas" and os.sep + "numpy" in lib["filepath"]]
        if paths:
            threadpoolctl.ThreadpoolController().select(filepath=paths).limit(limits=threads)


def numpy_blas_info():
    if threadpoolctl is None:
        return None
    return [{k: lib.get(k) for k in ("filepath", "version", "architecture", "num_threads")}
            for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


# ------------------------------------------------------------------------------------------
# Configurations and data
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    """One network shape: `layers` x `directions` layers of `cell`, I = H."""
    suite: str
    cell: str
    H: int
    B: int
    T: int
    layers: int = 1
    directions: int = 1
    modes: tuple = MODES

    @property
    def I(self):  # noqa: E743
        return self.H

    @property
    def G(self):
        return mb.GATES[self.cell]

    @property
    def single(self):
        return self.layers == 1 and self.directions == 1

    def flops(self, mode):
        fwd = sum(2 * self.T * self.B * ((self.I if l == 0 else self.directions * self.H)
                                         + self.H) * self.G * self.H * self.directions
                  for l in range(self.layers))
        return fwd if mode == "forward" else 3 * fwd

    def net(self):
        return "1L" if self.single else f"{self.layers}L" + ("-bi" if self.directions == 2
                                                              else "")

    def label(self):
        pre = {"grid": "", "stack": f"{self.net()} ", "deepbench": "DB ",
               "deepbench_train": "DBT "}[self.suite]
        return f"{pre}H{self.H} B{self.B} T{self.T}"


def cases(args):
    out = []
    if "grid" in args.suites:
        out += [Case("grid", c, H, B, T) for c in args.cells for H in args.hidden
                for B in args.batch for T in args.seq_len]
    if "stack" in args.suites:
        out.append(Case("stack", "lstm", 512, 32, 100, layers=2, directions=2))
    if "deepbench" in args.suites:
        out += [Case("deepbench", "lstm", H, B, 25, modes=("forward",))
                for H in (512, 1024) for B in (1, 4)]
    return out


def torch_module(case):
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN}[case.cell]
    kw = {"nonlinearity": "tanh"} if case.cell == "rnn_tanh" else {}
    return cls(case.I, case.H, num_layers=case.layers, bidirectional=case.directions == 2, **kw)


class Data:
    """The torch module and, shared by every peer, its parameters (NumPy, keyed by torch's
    names, from its state_dict), x (T, B, I), h0 and c0 (L*D, B, H), in one dtype."""

    def __init__(self, case, dtype, seed):
        torch.manual_seed(seed)
        self.case = case
        self.module = torch_module(case).to(torch.float64 if dtype == np.float64
                                            else torch.float32)
        self.params = {k: v.detach().numpy().copy() for k, v in self.module.state_dict().items()}
        rng = np.random.default_rng(seed)
        LD, B, H = case.layers * case.directions, case.B, case.H
        self.x = rng.standard_normal((case.T, B, case.I)).astype(dtype)
        self.h0 = (0.5 * rng.standard_normal((LD, B, H))).astype(dtype)
        self.c0 = ((0.5 * rng.standard_normal((LD, B, H))).astype(dtype)
                   if case.cell == "lstm" else None)

    def y_shape(self):
        return (self.case.T, self.case.B, self.case.directions * self.case.H)

    def moved(self, put, device=None):
        """A shallow copy whose x, h0, c0 and params went through ``put`` (bench/gpu_bench.py:
        torch tensors on a CUDA device) and, given ``device``, whose torch module is a copy
        there. fusedrnn runs on whatever arrays the copy holds."""
        import copy
        d = copy.copy(self)
        d.x, d.h0 = put(self.x), put(self.h0)
        d.c0 = None if self.c0 is None else put(self.c0)
        d.params = {k: put(v) for k, v in self.params.items()}
        if device is not None:
            d.module = copy.deepcopy(self.module).to(device)
        return d


def ones_like_y(d):
    """The dy of y.sum(): ones shaped like y, in the library (and on the device) of d.x."""
    if isinstance(d.x, np.ndarray):
        return np.ones(d.y_shape(), d.x.dtype)
    return torch.ones(d.y_shape(), dtype=d.x.dtype, device=d.x.device)


# ------------------------------------------------------------------------------------------
# fusedrnn and the reference (same NumPy API)
# ------------------------------------------------------------------------------------------

def np_forward(module, d, training):
    """((y, h_n, c_n or None), ctx) through `module` (fusedrnn.functional or the reference);
    h_n, c_n as (L*D, B, H)."""
    case, p = d.case, d.params
    if not case.single:
        kw = {"training": training} if module is F else {}
        y, h_n, c_n, ctx = module.stack_forward(
            case.cell, d.x, p, num_layers=case.layers, bidirectional=case.directions == 2,
            h0=d.h0, c0=d.c0, **kw)
        return (y, h_n, c_n), ctx
    a = (d.x, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"], d.h0[0])
    if case.cell == "lstm":
        y, h, c, ctx = module.lstm_forward(*a, d.c0[0], training=training)
        return (y, h[None], c[None]), ctx
    if case.cell == "gru":
        y, h, ctx = module.gru_forward(*a, training=training)
    else:
        y, h, ctx = module.rnn_forward(*a, nonlinearity="tanh", training=training)
    return (y, h[None], None), ctx


def np_backward(module, d, ctx, dy, dh_n=None, dc_n=None):
    """Gradients keyed like torch: x, h0, c0 (LSTM) and the parameter names."""
    case = d.case
    if not case.single:
        dx, dh0, dc0, grads = module.stack_backward(ctx, dy, dh_n, dc_n)
        out = {"x": dx, "h0": dh0, **grads}
        if case.cell == "lstm":
            out["c0"] = dc0
        return out
    dh = None if dh_n is None else dh_n[0]
    if case.cell == "lstm":
        g = module.lstm_backward(ctx, dy, dh, None if dc_n is None else dc_n[0])
    else:
        g = {"gru": module.gru_backward, "rnn_tanh": module.rnn_backward}[case.cell](ctx, dy, dh)
    out = {"x": g["x"], "h0": g["h0"][None]}
    if case.cell == "lstm":
        out["c0"] = g["c0"][None]
    out.update({f"{k}_l0": g[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
    return out


def np_runner(module, d, mode):
    if mode == "forward":
        return lambda: np_forward(module, d, False)
    dy = ones_like_y(d)  # gradient of y.sum()

    def run():
        _, ctx = np_forward(module, d, True)
        return np_backward(module, d, ctx, dy)
    return run


# ------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------

def torch_inputs(d, requires_grad):
    """x, hx (h0 or (h0, c0)) and the leaf tensors (on the device of d's arrays)."""
    x = torch.as_tensor(d.x).clone().requires_grad_(requires_grad)
    leaves = [torch.as_tensor(d.h0).clone().requires_grad_(requires_grad)]
    if d.c0 is not None:
        leaves.append(torch.as_tensor(d.c0).clone().requires_grad_(requires_grad))
    return x, (tuple(leaves) if d.c0 is not None else leaves[0]), leaves


def torch_runner(d, mode):
    return mb.torch_run(d.module, mode, lambda rg: torch_inputs(d, rg))


def tensor_to_numpy(t):
    """A tensor as NumPy; 16-bit storage (bfloat16, which NumPy lacks, and float16) widened to
    float32, exactly."""
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.detach().cpu().numpy()


def torch_outputs(d):
    x, hx, _ = torch_inputs(d, False)
    with torch.no_grad():
        y, state = d.module(x, hx)
    state = state if d.c0 is not None else (state, None)
    return tuple(None if t is None else tensor_to_numpy(t) for t in (y, *state))


def torch_gradients(d):
    """Gradients of y.sum(), keyed like np_backward."""
    m = d.module
    m.zero_grad(set_to_none=True)
    x, hx, leaves = torch_inputs(d, True)
    y, _ = m(x, hx)
    y.sum().backward()
    grads = {"x": x.grad, "h0": leaves[0].grad}
    if d.c0 is not None:
        grads["c0"] = leaves[1].grad
    grads.update({k: p.grad for k, p in m.named_parameters()})
    m.zero_grad(set_to_none=True)
    return {k: tensor_to_numpy(v) for k, v in grads.items()}


# ------------------------------------------------------------------------------------------
# ONNX Runtime
# ------------------------------------------------------------------------------------------

ONNX_OPSET = 17


def onnx_model(case, params):
    """An ONNX model of the whole network, built by fusedrnn.onnx.build_model (one ONNX node per
    layer, gate blocks permuted from PyTorch's order there): inputs x (T, B, I), h0 and c0
    (L*D, B, H); outputs y (T, B, D*H), h_n and c_n (L*D, B, H). Between layers Y [T, D, B, H]
    is transposed to [T, B, D, H] and reshaped to [T, B, D*H] (torch's layout); a stack's
    states are sliced per layer from h0/c0 and concatenated into h_n/c_n in the graph."""
    return fusedrnn.onnx.build_model(
        case.cell, params, num_layers=case.layers, bidirectional=case.directions == 2,
        opset=ONNX_OPSET, initial_states=True, seq_len=case.T, batch=case.B,
        graph_name=f"{case.cell}_{case.net()}", producer_name="fusedrnn-bench")


def ort_session(model_bytes, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


class OrtPeer:
    """An ORT session of the case's network, its feeds and the output names."""

    def __init__(self, d, model_bytes, threads):
        self.case = d.case
        self.sess = ort_session(model_bytes, threads)
        self.feeds = {"x": d.x, "h0": d.h0}
        if d.c0 is not None:
            self.feeds["c0"] = d.c0
        self.names = [o.name for o in self.sess.get_outputs()]

    def run(self):
        return self.sess.run(self.names, self.feeds)

    def outputs(self):
        """(y, h_n, c_n or None) with h_n, c_n as (L*D, B, H)."""
        out = dict(zip(self.names, self.run()))
        return out["y"], out["h_n"], out.get("c_n")


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------

OUT_NAMES = ("y", "h_n", "c_n")


def output_errors(prefix, got, want):
    return {f"{prefix}{n}": mb.rel_err(g, w) for n, g, w in zip(OUT_NAMES, got, want)
            if w is not None}


def reference_errors(case, seed, put=None, get=None):
    """fusedrnn vs the reference in float64 at T = REF_T: errors by quantity. ``put`` moves
    fusedrnn's inputs to the arrays it should run on and ``get`` brings its results back to
    NumPy (bench/gpu_bench.py: a CUDA device); by default fusedrnn runs on the NumPy arrays."""
    d = Data(dataclasses.replace(case, T=REF_T), np.float64, seed)
    put = put or (lambda a: a)
    get = get or (lambda a: a)
    dev = d.moved(put)
    fwd = lambda training: [None if a is None else get(a)
                            for a in np_forward(F, dev, training)[0]]
    want, ref_ctx = np_forward(ref, d, True)
    errs = output_errors("", fwd(True), want)
    errs.update(output_errors("inference ", fwd(False), want))
    _, ctx = np_forward(F, dev, True)
    rng = np.random.default_rng(seed + 1)
    dy, dh_n = rng.standard_normal(d.y_shape()), rng.standard_normal(d.h0.shape)
    dc_n = rng.standard_normal(d.c0.shape) if d.c0 is not None else None
    g_want = np_backward(ref, d, ref_ctx, dy, dh_n, dc_n)
    g_got = {k: get(v) for k, v in np_backward(F, dev, ctx, put(dy), put(dh_n),
                                               None if dc_n is None else put(dc_n)).items()}
    if set(g_got) != set(g_want):
        raise AssertionError(f"gradient keys differ: {sorted(g_got)} vs {sorted(g_want)}")
    errs.update({f"d{k}": mb.rel_err(g_got[k], g_want[k]) for k in g_want})
    return errs


def torch_errors(d, ort_peer):
    """float32, full size: fusedrnn, reference and ORT outputs and fusedrnn's gradients of
    y.sum() against torch's."""
    want = torch_outputs(d)
    errs = output_errors("fusedrnn ", np_forward(F, d, False)[0], want)
    errs.update(output_errors("numpy_ref ", np_forward(ref, d, False)[0], want))
    if ort_peer is not None:
        errs.update(output_errors("ort ", ort_peer.outputs(), want))
    g_want = torch_gradients(d)
    g_got = np_runner(F, d, "fwd+bwd")()
    errs.update({f"fusedrnn d{k}": mb.rel_err(g_got[k], g_want[k]) for k in g_want})
    return errs


def failures(errs, tol_for):
    return [k for k, e in errs.items() if not e <= tol_for(k)]  # NaN fails too


def validate_case(case, seed, ort_peer_for):
    rec = {"suite": case.suite, "cell": case.cell, "net": case.net(), "H": case.H,
           "B": case.B, "T": case.T}
    e64 = reference_errors(case, seed + 1000)
    rec["reference_f64"] = {"T": REF_T, "tol": REF_TOL, "errors": e64,
                            "max_rel_err": max(e64.values()),
                            "failed": failures(e64, lambda k: REF_TOL)}
    d = Data(case, np.float32, seed)
    e32 = torch_errors(d, ort_peer_for(d))
    tol = lambda k: GRAD_TOL if " d" in k else OUT_TOL
    rec["torch_f32"] = {"T": case.T, "tol_outputs": OUT_TOL, "tol_grads": GRAD_TOL,
                        "errors": e32, "failed": failures(e32, tol)}
    return rec


def print_validation(rec):
    t = rec["torch_f32"]["errors"]
    worst = lambda pred: max((v for k, v in t.items() if pred(k)), default=float("nan"))
    failed = rec["reference_f64"]["failed"] + rec["torch_f32"]["failed"]
    parts = [f"ref f64 {rec['reference_f64']['max_rel_err']:.1e}",
             f"fusedrnn {worst(lambda k: k.startswith('fusedrnn ') and ' d' not in k):.1e}",
             f"grads {worst(lambda k: ' d' in k):.1e}",
             f"ort {worst(lambda k: k.startswith('ort ')):.1e}",
             f"numpy_ref {worst(lambda k: k.startswith('numpy_ref ')):.1e}"]
    print(f"  {rec['cell']:8s} {rec['net']:5s} H={rec['H']:<4d} B={rec['B']:<3d} "
          f"T={rec['T']:<3d} " + " | ".join(parts) +
          ("" if not failed else f"  FAILED: {failed}"), flush=True)
    return not failed


def validate_all(args, all_cases, threads):
    print(f"\nValidation on {threads} threads (max rel err): fusedrnn vs reference f64 at "
          f"T={REF_T} (tol {REF_TOL:g}); vs torch f32 at full size: outputs of fusedrnn, ort, "
          f"numpy_ref (tol {OUT_TOL:g}), fusedrnn grads of y.sum() (tol {GRAD_TOL:g})",
          flush=True)
    set_threads(threads)
    records, ok = [], True
    for i, case in enumerate(all_cases):
        rec = validate_case(case, args.seed + i, lambda d: make_ort_peer(d, threads))
        ok = print_validation(rec) and ok
        records.append(rec)
    return records, ok


# ------------------------------------------------------------------------------------------
# Other processes' CPU use (the cores are shared: a busy neighbour ruins 2-thread timings)
# ------------------------------------------------------------------------------------------

def cpu_snapshot():
    """(wall s, busy CPU s of the whole machine incl. steal, CPU s of this process) or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait count
    busy = sum(fields[:8]) - fields[3] - fields[4]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), ru.ru_utime + ru.ru_stime


def others_cores(before, after):
    """Average number of cores busy with other processes (or stolen) between two snapshots."""
    if before is None or after is None or after[0] - before[0] <= 0:
        return None
    busy, mine = after[1] - before[1], after[2] - before[2]
    return max(0.0, (busy - mine) / (after[0] - before[0]))


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------

def make_ort_peer(d, threads):
    if ort is None:
        return None
    return OrtPeer(d, onnx_model(d.case, d.params).SerializeToString(), threads)


def sgemm_gflops(threads, repeats=10):
    """Large float32 GEMM through fusedrnn's BLAS on its threads: (median ms, GFLOP/s)."""
    fusedrnn.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((SGEMM_N, SGEMM_N)).astype(np.float32) for _ in range(2))
    c = np.empty_like(a)
    snap = cpu_snapshot()
    times = mb.time_peer(lambda: fusedrnn._C.gemm(a, b, c, False, False, 1.0, 0.0),
                         repeats, 2, 5.0)
    ms = statistics.median(times)
    return {"n": SGEMM_N, "median_ms": ms, "gflops": 2 * SGEMM_N ** 3 / (ms * 1e6),
            "repeats": len(times), "others_cores": others_cores(snap, cpu_snapshot())}


def plan(args, case, mode):
    """(repeats, warmup) per peer for one case and mode."""
    gflop = case.flops(mode) / 1e9
    warm = min(args.warmup, 1) if gflop > HEAVY_GFLOP else args.warmup
    ref_heavy = gflop > REF_HEAVY_GFLOP
    repeats = {p: args.repeats for p in PEERS}
    warmup = {p: warm for p in PEERS}
    repeats["numpy_ref"] = 1 if ref_heavy else args.ref_repeats
    warmup["numpy_ref"] = 0 if ref_heavy else min(args.warmup, 1)
    return repeats, warmup


def runners(args, d, mode, threads):
    out = {"fusedrnn": np_runner(F, d, mode), "torch": torch_runner(d, mode)}
    if mode == "forward" and ort is not None:
        out["ort"] = make_ort_peer(d, threads).run
    if not args.no_ref:
        out["numpy_ref"] = np_runner(ref, d, mode)
    return out


def summarize(case, mode, threads, times, repeats, warmup, sgemm):
    """One row per (case, mode, threads) with a record per peer that ran."""
    flops = case.flops(mode)
    fused_ms = statistics.median(times["fusedrnn"])
    row = {"suite": case.suite, "cell": case.cell, "net": case.net(), "layers": case.layers,
           "directions": case.directions, "mode": mode, "H": case.H, "I": case.I,
           "B": case.B, "T": case.T, "threads": threads, "dtype": "float32",
           "label": case.label(), "gflop": flops / 1e9, "peers": {}}
    for peer, t in times.items():
        med = statistics.median(t)
        row["peers"][peer] = {"median_ms": med, "min_ms": min(t), "max_ms": max(t),
                              "repeats": len(t), "repeats_requested": repeats[peer],
                              "warmup": warmup[peer], "times_ms": t,
                              "gflops": flops / (med * 1e6), "ratio": med / fused_ms}
    row["fusedrnn_gflops"] = flops / (fused_ms * 1e6)
    row["sgemm_fraction"] = (row["fusedrnn_gflops"] / sgemm["gflops"]
                             if mode == "forward" and case.B >= SGEMM_MIN_B else None)
    ratio = lambda p: row["peers"][p]["ratio"] if p in row["peers"] else None
    row["speedup_vs_torch"] = ratio("torch")
    row["speedup_vs_ort"] = ratio("ort")
    row["speedup_vs_numpy_ref"] = ratio("numpy_ref")
    best = [r for r in (ratio("torch"), ratio("ort")) if r is not None]
    row["speedup_vs_best_inference"] = min(best) if mode == "forward" and best else None
    # The target for this row, and the most any kernel could reach against the same
    # peer at this machine's large-SGEMM rate (a compute roofline: every FLOP at that rate).
    if mode == "forward":
        row["target"] = 1.3 if case.B == 1 else 1.0
        achieved = row["speedup_vs_best_inference"]
        peers = [p for p in ("torch", "ort") if p in row["peers"]]
    else:
        row["target"] = (1.5 if case.B == 1 else 1.0) if case.cell == "lstm" else 2.0
        achieved = row["speedup_vs_torch"]
        peers = ["torch"] if "torch" in row["peers"] else []
    row["target_met"] = None if achieved is None else achieved >= row["target"]
    floor_ms = flops / (sgemm["gflops"] * 1e6)
    row["compute_ceiling"] = (min(row["peers"][p]["median_ms"] for p in peers) / floor_ms
                              if peers else None)
    # Small batches read every recurrent weight each step (from L2 or L3): GB/s achieved.
    G, R = case.G, case.H
    w_bytes = 4 * case.layers * case.directions * (
        case.T * G * case.H * R + G * case.H * case.I)
    row["weight_read_gbs"] = w_bytes / (fused_ms * 1e6) if case.B <= 4 else None
    return row


def benchmark_all(args, all_cases, sgemm):
    print(f"\nTiming: median of up to {args.repeats} calls per peer (numpy_ref "
          f"{args.ref_repeats}, 1 above {REF_HEAVY_GFLOP:g} GFLOP), {args.warmup} warm-up "
          f"(1 above {HEAVY_GFLOP:g} GFLOP), at least 3 past {args.budget:g} s (*); "
          f"float32, I=H;\nratios = peer ms / fusedrnn ms (>1: fusedrnn faster); best/f: "
          f"faster of torch and ort; %sgemm: fusedrnn forward GFLOP/s / SGEMM GFLOP/s "
          f"(B>={SGEMM_MIN_B});\ntarget: the issue's ratio (inference vs best, training vs torch), "
          f"'!' = missed; ceil: the ratio at the SGEMM rate (no kernel can pass it);\n"
          f"W GB/s (B<=4): recurrent weights read per step plus W_ih once, per second;\n"
          f"other: cores busy with other processes (or stolen by the host) "
          f"while the row was timed -- near 0 for trustworthy numbers\n")
    print(table_header(), flush=True)
    rows = []
    for i, case in enumerate(all_cases):
        d = Data(case, np.float32, args.seed + i)
        for mode in case.modes:
            for threads in args.threads:
                set_threads(threads)
                repeats, warmup = plan(args, case, mode)
                rs = runners(args, d, mode, threads)
                snap = cpu_snapshot()
                times = mb.time_config(rs, repeats, warmup, args.budget)
                others = others_cores(snap, cpu_snapshot())
                del rs  # an ORT session's threads go with it
                row = summarize(case, mode, threads, times, repeats, warmup, sgemm[threads])
                row["others_cores"] = others
                print(table_row(row), flush=True)
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------

def _ms(row, peer):
    r = row["peers"].get(peer)
    if r is None:
        return "-"
    return f"{r['median_ms']:.3f}" + ("*" if r["repeats"] < r["repeats_requested"] else "")


def _x(v):
    return "-" if v is None else f"{v:.2f}x"


TABLE = [  # (header, width, cell text)
    ("suite", 9, lambda r: r["suite"]),
    ("cell", 8, lambda r: r["cell"]),
    ("net", 5, lambda r: r["net"]),
    ("mode", 7, lambda r: r["mode"]),
    ("H", 4, lambda r: r["H"]),
    ("B", 3, lambda r: r["B"]),
    ("T", 3, lambda r: r["T"]),
    ("thr", 3, lambda r: r["threads"]),
    ("fused ms", 10, lambda r: _ms(r, "fusedrnn")),
    ("torch ms", 10, lambda r: _ms(r, "torch")),
    ("ort ms", 10, lambda r: _ms(r, "ort")),
    ("ref ms", 10, lambda r: _ms(r, "numpy_ref")),
    ("GFLOP/s", 7, lambda r: f"{r['fusedrnn_gflops']:.1f}"),
    ("%sgemm", 6, lambda r: "-" if r["sgemm_fraction"] is None
     else f"{100 * r['sgemm_fraction']:.0f}%"),
    ("torch/f", 7, lambda r: _x(r["speedup_vs_torch"])),
    ("ort/f", 7, lambda r: _x(r["speedup_vs_ort"])),
    ("ref/f", 7, lambda r: _x(r["speedup_vs_numpy_ref"])),
    ("best/f", 7, lambda r: _x(r["speedup_vs_best_inference"])),
    ("target", 6, lambda r: f"{r['target']:.1f}x" + ("" if r["target_met"] is None
                                                     else (" " if r["target_met"] else "!"))),
    ("ceil", 6, lambda r: _x(r["compute_ceiling"])),
    ("W GB/s", 6, lambda r: "-" if r["weight_read_gbs"] is None
     else f"{r['weight_read_gbs']:.0f}"),
    ("other", 5, lambda r: "-" if r.get("others_cores") is None
     else f"{r['others_cores']:.1f}"),
]


def table_header(table=None):
    """The header of a printed table: (name, width, cell function) columns, TABLE's by default."""
    head = "  ".join(f"{name:>{w}}" for name, w, _ in (table or TABLE))
    return head + "\n" + "-" * len(head)


def table_row(row, table=None):
    return "  ".join(f"{fn(row)!s:>{w}}" for _, w, fn in (table or TABLE))


# ------------------------------------------------------------------------------------------
# Environment, output files, main
# ------------------------------------------------------------------------------------------

def environment(args, notes, sgemm, loadavg_start):
    shim = argparse.Namespace(threads=max(args.threads))
    env = mb.environment_facts(shim, None)
    env.pop("torch_note")
    env.update(threads=args.threads, notes=notes,
               onnxruntime=ort.__version__ if ort is not None else None,
               onnx=onnx.__version__ if onnx is not None else None,
               ort_session={"intra_op_num_threads": "threads", "inter_op_num_threads": 1,
                            "execution_mode": "ORT_SEQUENTIAL", "opset": ONNX_OPSET,
                            "providers": ["CPUExecutionProvider"]} if ort is not None else None,
               threadpoolctl=threadpoolctl.__version__ if threadpoolctl is not None else None,
               blas_libraries=numpy_blas_info(), blas_core=env["fusedrnn_config"]["blas_core"],
               sgemm=sgemm, loadavg_start=loadavg_start)
    return env


def print_environment(env):
    cfg = env["fusedrnn_config"]
    ob = ", ".join(f"{k}={v if v is not None else '(unset)'}"
                   for k, v in env["openblas_env"].items())
    lines = [
        "fusedrnn benchmark harness",
        f"  machine   : {env['hostname']} | {env['platform']}",
        f"  cpu       : {env['cpu_model']} | logical {env['logical_cpus']}, physical cores "
        f"{env['physical_cores']}, usable {env['usable_cpus']}",
        f"  versions  : python {env['python']}, numpy {env['numpy']}, torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime'] or '-'}, onnx {env['onnx'] or '-'}, "
        f"fusedrnn {env['fusedrnn']}",
        f"  fusedrnn  : blas {cfg['blas']} core {cfg['blas_core']}, simd {cfg['simd_path']}, "
        f"openmp {cfg['openmp']}, compiler {cfg['compiler']}",
        f"  threads   : {env['threads']} (fusedrnn.set_num_threads, torch.set_num_threads, "
        f"ORT intra_op; NumPy BLAS via threadpoolctl {env['threadpoolctl'] or '-'})",
        f"  openblas  : {ob}",
    ]
    if env["openblas_env_unset"]:
        lines.append("  NOTE      : --unset-openblas-env: this process was re-executed with "
                     "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed (previous values: "
                     f"{env['openblas_env_removed']})")
    lines += [f"  NOTE      : {n}" for n in env["notes"]]
    lines += [f"  SGEMM     : {t} thread{'s' if t > 1 else ''}: {s['gflops']:.1f} GFLOP/s "
              f"({s['n']}^3 float32 via fusedrnn._C.gemm, {s['median_ms']:.1f} ms; other "
              f"processes {fmt_cores(s['others_cores'])} cores)" for t, s in env["sgemm"].items()]
    load = env["loadavg_start"]
    busy = [s["others_cores"] for s in env["sgemm"].values() if s["others_cores"] is not None]
    if busy and max(busy) > OTHERS_WARN:
        lines.append(f"  WARNING   : other processes kept {max(busy):.2f} cores busy during the "
                     "SGEMM: multi-thread timings will be disturbed (see the 'other' column)")
    if load is not None:
        lines.append(f"  load avg  : {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min) "
                     "before the run")
    print("\n".join(lines), flush=True)


def fmt_cores(v):
    return "?" if v is None else f"{v:.2f}"


def default_out_path():
    return mb.default_out_path().replace(os.sep + "microbench-", os.sep + "harness-")


def reexec_without_openblas_env():
    """microbench's re-exec, for this script (OpenBLAS reads the variables when it loads)."""
    mb.reexec_without_openblas_env(__file__)


def write_plot(doc, json_path):
    try:
        import plot_results
        png = os.path.splitext(json_path)[0] + ".png"
        plot_results.plot(doc, png)
        return png
    except ImportError as e:
        print(f"no plot ({e})", file=sys.stderr)
        return None


def main(argv=None):
    args = parse_args(argv)
    if args.unset_openblas_env:
        reexec_without_openblas_env()
    mb.set_thread_env(argparse.Namespace(threads=max(args.threads), omp_wait_policy=None))
    loadavg = os.getloadavg() if hasattr(os, "getloadavg") else None
    notes = load_libraries(args)
    started = datetime.datetime.now().astimezone()
    t0, snap = time.perf_counter(), cpu_snapshot()
    sgemm = {t: sgemm_gflops(t) for t in args.threads}
    env = environment(args, notes, sgemm, loadavg)
    print_environment(env)
    all_cases = cases(args)
    validation, ok = validate_all(args, all_cases, max(args.threads))
    doc = {"benchmark": "harness", "started": started.isoformat(timespec="seconds"),
           "args": vars(args), "environment": env, "validation": validation,
           "validation_ok": ok, "rows": []}
    out = args.out or default_out_path()
    if not ok:
        mb.write_json(out, doc)
        print(f"\nVALIDATION FAILED: nothing timed. Details in {out}", file=sys.stderr)
        return 1
    doc["rows"] = benchmark_all(args, all_cases, sgemm)
    # the SGEMM again at the end: a shift between the two says the machine's load changed
    doc["environment"]["sgemm_end"] = {t: sgemm_gflops(t) for t in args.threads}
    print("\nSGEMM at the end: " + ", ".join(
        f"{t} thr {s['gflops']:.1f} GFLOP/s (other processes {fmt_cores(s['others_cores'])} "
        "cores)" for t, s in doc["environment"]["sgemm_end"].items()))
    doc["wall_s"] = time.perf_counter() - t0
    doc["others_cores_whole_run"] = others_cores(snap, cpu_snapshot())
    print(f"other processes used {fmt_cores(doc['others_cores_whole_run'])} cores on average "
          "during the run")
    mb.write_json(out, doc)
    png = None if args.no_plot else write_plot(doc, out)
    print(f"\nwall time {doc['wall_s']:.1f} s; results: {out}" +
          (f"; plot: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
