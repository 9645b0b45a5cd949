#!/usr/bin/env python3
"""Fuzzes every public entry point of fusedrnn; tests/test_fuzz.py runs it in a subprocess.

    python tests/_fuzz_driver.py --seconds 50 --seed 0 --json out.json [--targets functional,torch]

Targets (hypothesis draws every call; the time budget is shared round-robin):

functional  ``functional.{rnn,lstm,gru}_forward/_backward``
stack       ``functional.stack_forward/stack_backward`` (with ``grads=`` accumulation)
modules     ``RNN/LSTM/GRU``: constructor, forward (train/eval, need_grad, hx, lengths, batch_first,
            bidirectional, proj_size, num_layers, dropout, unbatched), backward
cells       ``RNNCell/LSTMCell/GRUCell``: steps in a Python loop, BPTT back through them
state_dict  ``Module.load_state_dict`` (keys, shapes, dtypes, torch tensors, strict)
torch       ``fusedrnn.torch.{RNN,LSTM,GRU,RNNCell,LSTMCell,GRUCell}`` against ``torch.nn``
            (padded, unbatched and PackedSequence input, autograd); skipped without torch

Each call starts valid (sizes <= 12, an empty batch now and then, weights ~U(-0.5, 0.5), inputs
~U(-1, 1)) and gets up to two mutations: shapes (an axis more or less, a dimension +-1 or 0,
zero-size arrays with a 2**40 axis, 2**20-long zero-stride views), dtypes (float16, ints, bool,
complex, object, longdouble, the other float), layouts (Fortran, transposed, strided, negative
strides, views at a 1-byte offset in a uint8 buffer, read-only, zero strides), non-arrays
(lists, None, scalars, strings), lengths (0, > T, negative, uint64 >= 2**63, float/bool/object
dtype, wrong shape, lists, every integer dtype) and values (NaN, +-inf, 1e38, denormals, -0,
NaN/inf in the padding past a sequence's length). Constructors of the NumPy modules and cells
get invalid arguments now and then.

Oracle, NumPy API: invalid input must raise ValueError or TypeError (KeyError only for a missing
or unexpected key in a strict load_state_dict, RuntimeError only for a backward without a kept
forward: both documented); any other exception, or success, is a finding, and so is an error
message that names a lengths value other than the one passed. Valid input must succeed and
agree with ``fusedrnn.reference`` run in float64 on the same values, with the padding past each
length zeroed (values there must not matter; an empty batch runs the reference on one all-zero
sequence, removed again). Error of an array = max|ours - ref64| / max|ref64|; bound: float64
1e-9; float32 max(50 * e32, 1e-4), e32 = the same error of the reference run in float32 on the
same inputs: the float32 rounding scale of this very problem; the kernels sum in other orders,
hence a multiple of it, and the floor (~840 float32 ulps of the array's scale) covers arrays the
float32 reference gets exact by luck. With U(-0.5, 0.5) weights and sizes <= 12 the problems are
well conditioned: a wrong index or a lost term gives errors of 1e-2 and more. With NaN/inf
inputs only the finite/non-finite pattern of the forward outputs is compared, with the reference
in the same dtype (README: NaN and inf propagate as in the reference); with 1e38 values
(overflow depends on summation order) only shapes and dtypes. No call may modify its inputs; a
rejected call must leave a module's parameters, grads and kept context as they were (checked on
copies, and by the backward that follows); dropout masks (``keep_masks``) must be bool arrays of
the layer output's shape.

Oracle, torch adapter: ``torch.nn`` with the same state_dict, on the same input objects. If
torch.nn raises, ours must raise ValueError, TypeError or RuntimeError; if it accepts, ours must
accept and agree within 1e-4 (float32) / 1e-9 (float64) relative to each array's max: outputs,
then the gradients of input, states and parameters of sum(out * w). The deliberate differences
of fusedrnn.torch's docstring are not generated: constructors are valid, modules float32 or
float64, tensors on the CPU; an input of another dtype only has to be rejected (or handled).
Not generated either, as torch.nn accepts them by accident: 3-tuples as an LSTM's hx, a (2, H)
tensor as an LSTMCell's hx, wrong shapes with a PackedSequence (torch.nn index_selects the
states and runs data of another feature size); and torch.nn is not called on an unbatched cell
input with 2-D states (torch 2.13's LSTMCell/GRUCell die with SIGSEGV on x (I,), h (1, H)):
ours must reject that.

A crash kills the process (hence the subprocess); the call being made is kept in <json>.lastcall.
Writes a JSON summary (calls, per-target counts, accepted, rejected by exception type, arrays
compared, findings) and exits 1 when there are findings. The n-th hypothesis run of a target
has the same seed on every machine (a faster machine runs more of them).
"""

import argparse
import faulthandler
import json
import os
import re
import sys
import time
import traceback
import warnings
import zlib
from collections import Counter

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings, seed as hseed, strategies as st

import fusedrnn
from fusedrnn import functional as F
from fusedrnn import reference as ref

try:
    import torch
    import fusedrnn.torch as FT
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
    TORCH_MISSING = None
except ImportError as e:  # the adapter target is skipped
    torch, TORCH_MISSING = None, f"torch not importable: {e}"

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
VT, VTR = (ValueError, TypeError), (ValueError, TypeError, RuntimeError)
LEVEL = {"none": 0, "nonfinite": 1, "full": 2}
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru", "gru_v1")
MODE_OF = {"lstm_proj": "lstm", "gru_v1": "gru"}
BAD_DTYPES = ("float16", "int32", "int64", "uint8", "bool", "complex64", "object", "longdouble")
LAYOUTS = ("fortran", "transposed", "strided", "negstride", "unaligned", "readonly", "zerostride")


class Rejected:
    def __init__(self, exc):
        self.exc = exc


def rel_err(a, r):
    a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
    s = np.abs(r).max() if r.size else 0.0
    return float(np.abs(a - r).max() / (s if s > 0 else 1.0)) if r.size else 0.0


def snapshot(obj):
    """Dtype, shape and bytes of every array in a dict or list (to detect modification)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in items
            if isinstance(v, np.ndarray) and v.dtype != object}


class Fuzzer:
    """Makes the calls, classifies their outcomes and keeps the findings (deduplicated)."""

    def __init__(self, crumb_path):
        self.calls = self.accepted = 0
        self.per_target, self.rejected, self.examples = Counter(), Counter(), Counter()
        self.compared = Counter()  # arrays compared with the reference / torch.nn
        self.findings, self.target, self.desc = {}, None, {}
        self.crumb = os.open(crumb_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def new(self, **config):
        self.examples[self.target] += 1
        self.desc = dict(call="", mutations=[], config={
            k: v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in config.items()})

    def mut(self, label):
        self.desc["mutations"].append(label)

    def finding(self, kind, observed, expected, **extra):
        d = self.desc
        args = tuple(sorted({m.split(":")[0] for m in d["mutations"]})) if kind == \
            "invalid input accepted" else ()  # else: by the message, numbers left out
        key = (self.target, kind, d["call"].split(" (")[0], args,
               re.sub(r"\d+", "#", observed if "rejected" in kind else observed.split(":")[0])[:80])
        size = (len(d["mutations"]), int(np.prod([v for k, v in d["config"].items() if k in
                                                  "TBIHL" and isinstance(v, int) and v > 0])))
        old = self.findings.get(key)
        if old is None or size < tuple(old["size"]):  # keep the smallest example
            self.findings[key] = dict(
                target=self.target, kind=kind, call=d["call"], config=d["config"],
                mutations=list(d["mutations"]), observed=observed[:600], expected=expected,
                size=size, count=old["count"] if old else 0, **extra,
                **({"note": d["note"]} if d.get("note") else {}))
        self.findings[key]["count"] += 1

    def breadcrumb(self, call):
        """Keeps the call being made in <json>.lastcall: what was running if the process dies."""
        self.desc["call"] = call
        os.ftruncate(self.crumb, 0)
        os.pwrite(self.crumb, json.dumps(dict(self.desc, target=self.target)).encode(), 0)

    def attempt(self, call, fn, expect, allowed=VT):
        """One call under test: returns its result or a Rejected, and classifies the outcome.
        expect: 'valid' (must succeed), 'invalid' (must raise one of `allowed`), 'maybe'."""
        self.calls += 1
        self.per_target[self.target] += 1
        self.breadcrumb(call)
        names = " or ".join(a.__name__ for a in allowed)
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - classifying every outcome is the point
            self.rejected[type(e).__name__] += 1
            msg = f"{type(e).__name__}: {e}"
            if not isinstance(e, allowed):
                self.finding("unexpected exception type", msg, names,
                             traceback=traceback.format_exc(limit=-4)[-1500:])
            elif expect == "valid":
                self.finding("valid input rejected", msg, "success")
            return Rejected(e)
        self.accepted += 1
        if expect == "invalid":
            self.finding("invalid input accepted", "returned normally", names)
        return out

    def compare(self, what, ours, r64, rdt, check, tol=None):
        """ours vs the reference (r64: in float64; rdt: in ours' dtype). tol: a fixed bound."""
        if (ours is None) != (r64 is None):
            return self.finding("wrong output", f"{what}: {type(ours).__name__}",
                                type(r64).__name__)
        if ours is None or check == "none":
            return
        ours = np.asarray(ours)
        if ours.shape != r64.shape or ours.dtype != rdt.dtype:
            return self.finding("wrong shape or dtype", f"{what}: {ours.shape} {ours.dtype}",
                                f"{r64.shape} {rdt.dtype}")
        self.compared[self.target] += 1
        if check == "nonfinite":
            bad = np.isfinite(ours) != np.isfinite(rdt)
            if bad.any():
                i = tuple(int(j) for j in np.argwhere(bad)[0])
                self.finding("non-finite pattern differs", f"{what}: {ours[i]} at {i}",
                             f"{rdt[i]} (the reference in the same dtype)")
            return
        err = rel_err(ours, r64)
        bound = tol or (1e-9 if rdt.dtype == F64 else max(50 * rel_err(rdt, r64), 1e-4))
        if not err <= bound:
            self.finding("disagrees with the reference", f"{what}: error {err:.3g}",
                         f"<= {bound:.3g}")

    def compare_all(self, prefix, ours, r64, rdt, check):
        for k, v in ours.items():
            self.compare(prefix + k, v, r64[k], rdt[k], check)

    def unchanged(self, before, obj, what):
        if snapshot(obj) != before:
            self.finding("modified its input", f"{what} changed", f"{what} unchanged")

    def check_len_msg(self, res, lengths):
        """A rejected out-of-range lengths value must be reported as passed."""
        m = re.search(r"lengths\[(\d+)\] = (-?\d+)", str(getattr(res, "exc", "")))
        if m and isinstance(lengths, np.ndarray) and int(m.group(1)) < lengths.size:
            passed = int(lengths.reshape(-1)[int(m.group(1))])
            if passed != int(m.group(2)):
                self.finding("error message misreports the value", str(res.exc)[:200],
                             f"lengths[{m.group(1)}] = {passed}")


# -- mutations ----------------------------------------------------------------------------------

def relayout(a, how):
    """The same values in another memory layout ('zerostride' repeats the first row)."""
    if a.ndim == 0:
        return a
    if how == "unaligned":  # a view at a 1-byte offset in a uint8 buffer
        v = np.zeros(a.nbytes + 1, np.uint8)[1:].view(a.dtype).reshape(a.shape)
        v[...] = a
        return v
    if how == "readonly":
        v = a.copy()
        v.flags.writeable = False
        return v
    return {"fortran": lambda: np.asfortranarray(a),
            "transposed": lambda: np.ascontiguousarray(a.T).T,
            "strided": lambda: np.repeat(a, 2, axis=-1)[..., ::2],
            "negstride": lambda: np.ascontiguousarray(a[::-1])[::-1],
            "zerostride": lambda: np.broadcast_to(a[:1], a.shape)}[how]()


def bad_shape(d, a, free_axes=(), batch_axis=None):
    """A wrong shape: (value, label). Axes in free_axes (x's T and B, which no other argument
    sets) only go to 0; 0 on batch_axis is a valid empty batch if the other arguments agree."""
    how = d.draw(st.sampled_from(("ndim+", "ndim-", "dim+1", "dim-1", "zero", "hugezero",
                                  "bigzerostride", "0d")))
    if how in ("ndim+", "ndim-", "0d"):
        return {"ndim+": lambda: a[None], "ndim-": lambda: a[0] if a.shape[0] else a.sum(0),
                "0d": lambda: np.array(a.reshape(-1)[0] if a.size else 0, a.dtype)}[how](), how
    ax = d.draw(st.integers(0, a.ndim - 1))
    ax = a.ndim - 1 if how in ("dim+1", "dim-1", "bigzerostride") and ax in free_axes else ax
    shape = list(a.shape)
    how = "dim+1" if how == "dim-1" and not shape[ax] else how
    how = "hugezero" if how == "bigzerostride" and not a.size else how
    if how in ("dim+1", "dim-1", "zero"):
        if how == "dim+1":
            return np.concatenate([a, np.zeros(shape[:ax] + [1] + shape[ax + 1:], a.dtype)],
                                  axis=ax), how
        return a.take(range(shape[ax] - 1) if how == "dim-1" else [], axis=ax), (
            "zero" if ax != batch_axis else "zero-batch")
    if how == "hugezero":
        shape[ax] = 0
        return np.empty(tuple(shape) + (2**40,), a.dtype), how
    shape[ax] = max(2, min(2**20 + 1, 2**23 // max(1, a.size // shape[ax])))  # <= 64 MiB
    return np.broadcast_to(a.take([0], axis=ax), shape), how


def mutate_float(fz, d, name, a, optional, pad=None, free_axes=(), maybe=(), batch_axis=None):
    """Mutates float array argument `name` (valid value a). Returns (value, expect, check)."""
    cat = d.draw(st.sampled_from(("layout", "layout", "dtype", "shape", "nonarray", "values",
                                  "values")))
    cat = "layout" if cat == "values" and not a.size else cat
    if cat == "layout":
        how = d.draw(st.sampled_from(LAYOUTS))
        fz.mut(f"{name}:layout={how}")
        return relayout(a, how), "valid", "full"
    if cat == "dtype":
        dt = d.draw(st.sampled_from(BAD_DTYPES + ("float64" if a.dtype == F32 else "float32",)))
        fz.mut(f"{name}:dtype={dt}")
        return a.astype(dt), "invalid", "none"
    if cat == "shape":
        v, how = bad_shape(d, a, free_axes, batch_axis)
        fz.mut(f"{name}:shape={how} {v.shape}")
        return v, ("maybe" if how in maybe + ("zero-batch",) else "invalid"), "none"
    if cat == "nonarray":
        how = d.draw(st.sampled_from(("list", "None", "float", "str", "object")))
        fz.mut(f"{name}:nonarray={how}")
        v = {"list": a.tolist(), "None": None, "float": 1.0, "str": "abc", "object": object()}
        exp = {"list": "maybe", "None": "valid" if optional else "invalid"}.get(how, "invalid")
        return v[how], exp, "full" if a.size or how != "list" else "none"  # [] has no shape
    choices = ("nan", "inf", "-inf", "huge", "denormal", "negzero")
    how = d.draw(st.sampled_from(choices + ("padnan",) * 2 * bool(pad is not None and pad.any())))
    v = a.copy()
    flat = v.reshape(-1)
    idx = d.draw(st.integers(0, flat.size - 1))
    fz.mut(f"{name}:values={how}@{idx}")
    if how == "padnan":  # NaN/inf past each length: must not matter
        v[pad] = d.draw(st.sampled_from((np.nan, np.inf, -np.inf)))
        return v, "valid", "full"
    if how == "denormal":
        flat[np.arange(flat.size) % (idx + 2) == 0] = np.finfo(a.dtype).smallest_subnormal * 3
        return v, "valid", "full"
    flat[idx] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "negzero": -0.0,
                 "huge": 1e38 if a.dtype == F32 else 1e300}[how]
    return v, "valid", {"huge": "none", "negzero": "full"}.get(how, "nonfinite")


def mutate_lengths(fz, d, lengths, T, B):
    how = d.draw(st.sampled_from(("zero", "gtT", "neg", "u64huge", "u64max", "i64min")[:6 * (
        B > 0)] + ("float", "bool", "shape", "list", "intdtype", "intdtype", "None", "str",
                   "object", "scalar")))
    v, b, exp = lengths.copy(), d.draw(st.integers(0, max(B - 1, 0))), "invalid"
    if how in ("zero", "gtT", "neg", "i64min"):
        v[b] = {"zero": 0, "gtT": T + d.draw(st.sampled_from((1, 2**31, 2**40))),
                "neg": -d.draw(st.sampled_from((1, 2**31, 2**62))), "i64min": -2**63}[how]
    elif how in ("u64huge", "u64max"):
        v = v.astype(np.uint64)
        v[b] = 2**63 + d.draw(st.integers(0, 1000)) if how == "u64huge" else 2**64 - 1
    elif how in ("float", "intdtype"):
        v = v.astype(d.draw(st.sampled_from(("float64", "float32", "float16") if how == "float"
                                            else ("int8", "int16", "int32", "uint8", "uint16",
                                                  "uint32", "uint64", ">i8"))))
        # an empty float array (what np.asarray([]) gives for an empty batch) holds no value
        exp = "valid" if how == "intdtype" or B == 0 else exp
    elif how == "shape":
        v, lab = bad_shape(d, v, (), 0)
        exp = "maybe" if lab == "zero-batch" else exp
    else:
        v = {"bool": np.ones(B, bool), "list": v.tolist(), "None": None, "str": "abc",
             "object": v.astype(object), "scalar": T}[how]
        exp = "valid" if how in ("list", "None") else exp
    fz.mut(f"lengths:{how}={v if isinstance(v, str) else np.asarray(v).tolist()}"[:120])
    return v, exp, "full"


def draw_keys(d, keys):
    """0-2 distinct arguments to mutate, lengths first (a NaN in x's padding depends on it)."""
    ks = [d.draw(st.sampled_from(keys)) for _ in range(d.draw(st.sampled_from((0, 1, 1, 2))))]
    return sorted(dict.fromkeys(ks), key=lambda k: k != "lengths")


def mutate_args(fz, d, valid, args, keys, tb, special=(), required=("x",), free=(0, 1),
                maybe=(), baxes=None):
    """Mutates 0-2 of `keys` in args (from the values in valid); special: {key: function
    returning (expect, check)} for what is not an array. Returns {key: (expect, check)}."""
    T, B, bf = tb
    res = {}
    for k in draw_keys(d, keys):
        if k in special:
            res[k] = special[k]()
        elif k == "lengths":
            args[k], *res[k] = mutate_lengths(fz, d, valid[k], T, B)
        else:
            lens, pad = args.get("lengths"), None
            if k in ("x", "dy") and isinstance(lens, np.ndarray) and lens.shape == (B,):
                pad = pad_mask(lens, T, B).T if bf else pad_mask(lens, T, B)
            args[k], *res[k] = mutate_float(fz, d, k, valid[k], k not in required, pad,
                                            free if k == "x" else (), maybe if k == "x" else (),
                                            (baxes or {}).get(k))
    return res


def combine(res, keys):
    """Expectation and check level of the mutations of `keys`."""
    hit = [v for k, v in res.items() if k in keys]
    ex = [v[0] for v in hit]
    chk = min([LEVEL[v[1]] for v in hit] + [2])
    exp = "invalid" if "invalid" in ex else ("maybe" if "maybe" in ex else "valid")
    return exp, [c for c, lv in LEVEL.items() if lv == chk][0]


def usable(args, res):
    """The arguments for the reference: those whose mutation must be rejected (a backward
    argument, since the forward was accepted) or is not comparable become None."""
    return {k: None if res.get(k, ("", ""))[0] == "invalid" or res.get(k, ("", ""))[1] ==
            "none" else v for k, v in args.items()}


def keep_masks(fz, ctx, shape):
    """ctx.keep_masks, checked: one bool array of the shape of a layer's output per layer."""
    masks = list(ctx.keep_masks)
    if any(not isinstance(m, np.ndarray) or m.shape != shape or m.dtype != bool for m in masks):
        fz.finding("malformed keep_masks", "keep_masks: " + str([getattr(m, "shape", m) for m
                                                                 in masks]),
                   f"bool arrays of shape {shape}")
        masks = [m if isinstance(m, np.ndarray) else np.ones(shape, bool) for m in masks]
    return masks


def both(a, b):
    return "full" if (a, b) == ("full", "full") else "none"


# -- reference ----------------------------------------------------------------------------------

def refval(v, dt):
    return None if v is None else np.array(v, dtype=dt)


def reflen(v):
    return None if v is None else np.array([int(t) for t in np.asarray(v).reshape(-1)], np.int64)


def pad_mask(lengths, T, B):
    """(T, B): True past each sequence's length."""
    return None if lengths is None else np.arange(T)[:, None] >= np.asarray(lengths)[None, :]


def uniform(rng, dt):
    return lambda s, *shape: rng.uniform(-s, s, shape).astype(dt)


def sizes(d, big=12):
    """T, B, I, H: small; now and then larger (threaded / panel paths) or an empty batch."""
    top = big if d.draw(st.integers(0, 7)) == 0 else 5
    T, B, I, H = [d.draw(st.integers(1, top), label=n) for n in "TBIH"]
    return T, 0 if d.draw(st.integers(0, 15)) == 0 else B, I, H


def grow(v, ax, fill):
    """v with one more element along axis ax, filled with `fill`."""
    shape = list(v.shape)
    shape[ax] = 1
    return np.concatenate([v, np.full(shape, fill, v.dtype)], axis=ax)


def grow_batch(a, axes, T):
    """The reference cannot take an empty batch: it gets one all-zero sequence (with zero
    output gradients it changes nothing else), which cut_batch removes from its results."""
    return {k: grow(v, axes[k], T if k == "lengths" else 0) if v is not None and k in axes
            else v for k, v in a.items()}


def cut_batch(r, axes):
    return {k: np.take(v, [], axis=axes[k]) if v is not None and k in axes else v
            for k, v in r.items()}


def layer_call(lib, cell, a, reverse, training):
    """functional / reference single-layer forward: (y, h_n, c_n or None, ctx)."""
    mode, kw = MODE_OF.get(cell, cell), dict(lengths=a["lengths"], reverse=reverse,
                                             training=training)
    w = (a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"])
    if mode == "lstm":
        return lib.lstm_forward(*w, a["c0"], w_hr=a.get("w_hr"), **kw)
    y, h, ctx = lib.gru_forward(*w, reset_after=cell == "gru", **kw) if mode == "gru" else \
        lib.rnn_forward(*w, nonlinearity=cell[4:], **kw)
    return y, h, None, ctx


def layer_back(lib, mode, ctx, a):
    if mode == "lstm":
        return lib.lstm_backward(ctx, a["dy"], a["dh_n"], a.get("dc_n"))
    return getattr(lib, mode[:3] + "_backward")(ctx, a["dy"], a["dh_n"])


def ref_layer(cell, a, dt, reverse):
    """Reference ({y, h_n, c_n}, grads) in float64 and in dt, padding zeroed."""
    out = {}
    for rdt in {F64, dt}:
        ra = {k: (reflen(v) if k == "lengths" else refval(v, rdt)) for k, v in a.items()}
        axes, empty = dict(x=1, dy=1, y=1, lengths=0, h0=0, c0=0, dh_n=0, dc_n=0, h_n=0,
                           c_n=0), ra["x"].shape[1] == 0
        ra = grow_batch(ra, axes, ra["x"].shape[0]) if empty else ra
        pad = pad_mask(ra["lengths"], *ra["x"].shape[:2])
        for k in ("x", "dy"):
            if pad is not None and ra.get(k) is not None:
                ra[k][pad] = 0
        y, h, c, ctx = layer_call(ref, cell, ra, reverse, True)
        out[rdt] = (dict(y=y, h_n=h, c_n=c), layer_back(ref, MODE_OF.get(cell, cell), ctx, ra))
        out[rdt] = tuple(cut_batch(r, axes) for r in out[rdt]) if empty else out[rdt]
    return out[F64], out[dt]


def param_shapes(mode, L, D, I, H, P, bias):
    G, R, shapes = ref.GATES[mode], P or H, {}
    for layer in range(L):
        for direction in range(D):
            shp = [(G * H, I if layer == 0 else D * R), (G * H, R)] + [(G * H,)] * (2 * bias)
            shapes.update(zip(ref.param_names(layer, direction, bias=bias, proj=bool(P)),
                              shp + [(P, H)] * bool(P)))
    return shapes


def ref_stack(mode, a, dt, cfg, masks):
    """Reference ({y, h_n, c_n}, {x, h0, c0, parameter names}) of a stack in float64 and dt."""
    out, bf = {}, cfg["batch_first"]
    for rdt in {F64, dt}:
        ra = {k: reflen(v) if k == "lengths" else refval(v, rdt) for k, v in a.items() if k in (
            "x", "dy", "lengths", "h0", "c0", "dh_n", "dc_n")}
        bx, T = int(not bf), np.shape(a["x"])[int(bf)]
        axes, empty = dict(x=bx, dy=bx, y=bx, lengths=0, h0=1, c0=1, dh_n=1, dc_n=1, h_n=1,
                           c_n=1), ra["x"].shape[bx] == 0
        ra = grow_batch(ra, axes, T) if empty else ra
        pad = pad_mask(ra["lengths"], T, ra["x"].shape[bx])
        for k in ("x", "dy"):
            if pad is not None and ra.get(k) is not None:
                (ra[k].swapaxes(0, 1) if bf else ra[k])[pad] = 0
        dm = None if masks is None else [(grow(m, 1, 1) if empty else m).astype(rdt) /
                                         (1 - cfg["dropout"]) for m in masks]
        y, h, c, ctx = ref.stack_forward(
            mode, ra["x"], {k: refval(v, rdt) for k, v in a["params"].items()},
            num_layers=cfg["num_layers"], bidirectional=cfg["bidirectional"], h0=ra.get("h0"),
            c0=ra.get("c0"), lengths=ra["lengths"], batch_first=bf, dropout_masks=dm,
            reset_after=cfg["reset_after"])
        dx, dh0, dc0, g = ref.stack_backward(ctx, ra.get("dy"), ra.get("dh_n"), ra.get("dc_n"))
        out[rdt] = (dict(y=y, h_n=h, c_n=c), dict(g, x=dx, h0=dh0, c0=dc0))
        out[rdt] = tuple(cut_batch(r, axes) for r in out[rdt]) if empty else out[rdt]
    return out[F64], out[dt]


def other_context(mode):
    """A context of another kind (for the 'wrong ctx' mutations)."""
    one = np.ones((1, 1))
    return F.rnn_forward(one[None], one, one)[2] if not mode.startswith("rnn") else \
        F.gru_forward(one[None], np.ones((3, 1)), np.ones((3, 1)))[2]


# -- targets: functional and stack ----------------------------------------------------------------

def t_functional(fz, d, rng):
    cell = d.draw(st.sampled_from(CELLS))
    mode, (T, B, I, H) = MODE_OF.get(cell, cell), sizes(d)
    G, H = ref.GATES[mode], max(H, 2) if cell == "lstm_proj" else H
    P = d.draw(st.integers(1, H - 1)) if cell == "lstm_proj" else 0
    R, dt, lstm = P or H, d.draw(st.sampled_from((F32, F64))), mode == "lstm"
    reverse, training = d.draw(st.booleans()), d.draw(st.sampled_from((True, True, False)))
    u = uniform(rng, dt)
    valid = dict(x=u(1, T, B, I), w_ih=u(.5, G * H, I), w_hh=u(.5, G * H, R), b_ih=u(.5, G * H),
                 b_hh=u(.5, G * H), h0=u(1, B, R), c0=u(1, B, H) if lstm else None,
                 w_hr=u(.5, P, H) if P else None, lengths=rng.integers(1, T + 1, B),
                 dy=u(1, T, B, R), dh_n=u(1, B, R), dc_n=u(1, B, H) if lstm else None)
    args = {k: None if k in ("h0", "c0", "lengths", "dy", "dh_n", "dc_n") and
            d.draw(st.integers(0, 2)) == 0 else v for k, v in valid.items()}
    if not d.draw(st.booleans()):
        args["b_ih"] = args["b_hh"] = None
    fz.new(cell=cell, T=T, B=B, I=I, H=H, P=P, dtype=dt.name, reverse=reverse,
           training=training, bias=args["b_ih"] is not None)
    ctx_how = []

    def ctx_mutation():
        ctx_how.append(d.draw(st.sampled_from(("None", "dict", "other kind"))))
        fz.mut(f"ctx:{ctx_how[0]}")
        return "invalid", "none"

    res = mutate_args(fz, d, valid, args, [k for k, v in valid.items() if v is not None] +
                      ["ctx"] * training, (T, B, False), {"ctx": ctx_mutation},
                      ("x", "w_ih", "w_hh", "w_hr"),
                      baxes=dict(x=1, h0=0, c0=0, dy=1, dh_n=0, dc_n=0))
    if (args["b_ih"] is None) != (args["b_hh"] is None):
        res["bias"] = ("invalid", "none")
    fwd = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "w_hr", "lengths", "bias")
    fexp, fchk = combine(res, fwd)
    before = snapshot(args)
    out = fz.attempt(f"functional.{mode}_forward",
                     lambda: layer_call(F, cell, args, reverse, training), fexp)
    fz.unchanged(before, args, "forward arguments")
    if isinstance(out, Rejected):
        return fz.check_len_msg(out, args["lengths"])
    y, h, c, ctx = out
    r64 = rdt = None
    if fchk != "none":
        r64, rdt = ref_layer(cell, usable(args, res), dt, reverse)
        fz.compare_all("", dict(y=y, h_n=h, c_n=c), r64[0], rdt[0], fchk)
    if not training:
        if ctx is not None:
            fz.finding("context returned with training=False", type(ctx).__name__, "None")
        return
    if ctx_how:
        ctx = {"None": None, "dict": {"ctx": ctx}, "other kind": other_context(mode)}[ctx_how[0]]
    bexp, bchk = combine(res, ("dy", "dh_n", "dc_n", "ctx"))
    bexp = "maybe" if fexp == "maybe" and bexp == "valid" else bexp  # e.g. x got batch 0
    g = fz.attempt(f"functional.{mode}_backward", lambda: layer_back(F, mode, ctx, args), bexp)
    fz.unchanged(before, args, "backward arguments")
    if isinstance(g, Rejected) or r64 is None:
        return
    if sorted(g) != sorted(r64[1]):
        return fz.finding("wrong gradient keys", str(sorted(g)), str(sorted(r64[1])))
    fz.compare_all("grad ", g, r64[1], rdt[1], both(fchk, bchk))
    if d.draw(st.integers(0, 3)) == 0:  # a second backward on the same context: same result
        g2 = fz.attempt(f"functional.{mode}_backward (again)",
                        lambda: layer_back(F, mode, ctx, args), "valid")
        tol = 1e-12 if dt == F64 else 1e-6
        differ = [k for k in g if not isinstance(g2, Rejected) and not np.allclose(
            g2[k], g[k], rtol=0, atol=tol * max(np.abs(np.nan_to_num(g[k])).max(initial=0), 1),
            equal_nan=True)]
        if differ:
            fz.finding("second backward differs", f"{differ}", "the same gradients")


def mutate_dict(fz, d, name, dct, L):
    """Drops, adds or mutates one entry of a params/grads dict in place, or marks it for
    replacement by a list ('notdict'). Returns (expect, check)."""
    how = d.draw(st.sampled_from(("drop", "extra", "entry", "entry", "entry", "notdict")))
    k = d.draw(st.sampled_from(sorted(dct)))
    if how == "notdict":
        fz.mut(f"{name}:notdict")
        return "invalid", "none"
    if how == "drop":
        fz.mut(f"{name}:drop={k}")
        del dct[k]
        return "invalid", "none"
    if how == "extra":
        extra = d.draw(st.sampled_from((f"weight_ih_l{L}", "bias", k + "_reverse")))
        extra = "bias" if extra in dct else extra
        fz.mut(f"{name}:extra={extra}")
        dct[extra] = np.array(dct[k])
        return "invalid" if name == "params" else "maybe", "none"
    dct[k], exp, chk = mutate_float(fz, d, f"{name}[{k}]", dct[k], False)
    if name == "grads" and ":layout=" in fz.desc["mutations"][-1]:  # added into in place:
        v = dct[k]                                                   # C order and writeable
        exp = "invalid" if not (v.flags.c_contiguous and v.flags.writeable) else (
            "valid" if v.flags.aligned else "maybe")
    return exp, chk


def t_stack(fz, d, rng):
    mode, (T, B, I, H) = d.draw(st.sampled_from(ref.MODES)), sizes(d, big=8)
    L, D, bf, bias = d.draw(st.integers(1, 3)), d.draw(st.sampled_from((1, 2))), \
        d.draw(st.booleans()), d.draw(st.booleans())
    P = d.draw(st.integers(1, H - 1)) if mode == "lstm" and H > 1 and d.draw(st.booleans()) else 0
    R, dt, lstm = P or H, d.draw(st.sampled_from((F32, F64))), mode == "lstm"
    cfg = dict(num_layers=L, bidirectional=D == 2, batch_first=bf,
               dropout=d.draw(st.sampled_from((0.0, 0.0, 0.25, 0.6))),
               seed=d.draw(st.integers(0, 2**64 - 1)),
               reset_after=d.draw(st.booleans()) if mode == "gru" else True,
               training=d.draw(st.sampled_from((True, True, False))))
    u = uniform(rng, dt)
    params = {k: u(.5, *s) for k, s in param_shapes(mode, L, D, I, H, P, bias).items()}
    tb = lambda *rest: ((B, T) if bf else (T, B)) + rest  # noqa: E731
    valid = dict(x=u(1, *tb(I)), h0=u(1, L * D, B, R), c0=u(1, L * D, B, H), dy=u(1, *tb(D * R)),
                 lengths=rng.integers(1, T + 1, B), dh_n=u(1, L * D, B, R),
                 dc_n=u(1, L * D, B, H))
    args = {k: None if k != "x" and (d.draw(st.integers(0, 2)) == 0 or (
        k in ("c0", "dc_n") and not lstm)) else v for k, v in valid.items()}
    args["params"] = dict(params)
    grads = {k: u(1, *v.shape) for k, v in params.items()}
    grads = grads if d.draw(st.booleans()) else None
    fz.new(mode=mode, T=T, B=B, I=I, H=H, P=P, L=L, D=D, dtype=dt.name, bias=bias,
           grads=grads is not None, **cfg)
    call_cfg, ctx_how, gbox = dict(cfg, mode=mode), [], [grads]

    def cfg_mutation():
        what = d.draw(st.sampled_from(("num_layers", "bidirectional", "dropout", "mode", "seed",
                                       "batch_first")))
        v = d.draw(st.sampled_from({
            "num_layers": (L + 1, L - 1 or 2**40, 0, -1, 2**70, 1.5, "2", None),
            # dropout=1.0 is valid (everything dropped, as torch.nn): not a bad value here
            "bidirectional": (D == 1,), "dropout": (-0.1, 1.5, np.nan, np.inf, "x"),
            "mode": ("LSTM", "gru2", None, 3, ["lstm"]), "seed": (-1, 2**70, 1.5, "abc"),
            "batch_first": (not bf,)}[what]))
        fz.mut(f"{what}={v!r}")
        call_cfg[what] = v
        return {"seed": ("invalid" if v == "abc" else "valid", "full"),
                "batch_first": ("maybe", "none")}.get(what, ("invalid", "none"))

    def params_mutation():
        return mutate_dict(fz, d, "params", args["params"], L)

    def grads_mutation():
        gbox[0] = gbox[0] or {k: u(1, *v.shape) for k, v in params.items()}
        return mutate_dict(fz, d, "grads", gbox[0], L)

    def ctx_mutation():
        ctx_how.append(d.draw(st.sampled_from(("None", "layer context", "dict"))))
        fz.mut(f"ctx:{ctx_how[0]}")
        return "invalid", "none"

    def c0_mutation():
        fz.mut("c0:given to a non-LSTM")
        args["c0"] = valid["c0"]
        return "invalid", "none"

    special = dict(cfg=cfg_mutation, params=params_mutation, grads=grads_mutation,
                   ctx=ctx_mutation, **({} if lstm else dict(c0=c0_mutation)))
    keys = [k for k in valid if lstm or k != "dc_n"] + ["params", "params", "cfg"] + \
        ["grads", "ctx"] * cfg["training"]
    res = mutate_args(fz, d, valid, args, keys, (T, B, bf), special, baxes=dict(
        x=int(not bf), dy=int(not bf), h0=1, c0=1, dh_n=1, dc_n=1))
    if "params:notdict" in fz.desc["mutations"]:
        args["params"] = list(args["params"].items())
    fexp, fchk = combine(res, ("x", "h0", "c0", "lengths", "params", "cfg"))
    before, pbefore = snapshot(args), snapshot(params)
    c = call_cfg
    out = fz.attempt("functional.stack_forward", lambda: F.stack_forward(
        c["mode"], args["x"], args["params"], num_layers=c["num_layers"],
        bidirectional=c["bidirectional"], h0=args["h0"], c0=args["c0"], lengths=args["lengths"],
        batch_first=c["batch_first"], dropout=c["dropout"], seed=c["seed"],
        reset_after=c["reset_after"], training=c["training"]), fexp)
    fz.unchanged(before, args, "stack_forward arguments")
    fz.unchanged(pbefore, params, "params")
    if isinstance(out, Rejected):
        return fz.check_len_msg(out, args["lengths"])
    if fexp == "maybe":  # batch_first flipped: the rest does not fit
        return
    y, h, cn, ctx = out
    if not cfg["training"]:
        if ctx is not None:
            fz.finding("context returned with training=False", type(ctx).__name__, "None")
        return
    masks = keep_masks(fz, ctx, (T, B, D * R)) if cfg["dropout"] and L > 1 else None
    r64 = rdt = None
    if fchk != "none":
        r64, rdt = ref_stack(mode, usable(args, res), dt, cfg, masks)
        fz.compare_all("", dict(y=y, h_n=h, c_n=cn), r64[0], rdt[0], fchk)
    if ctx_how:
        ctx = {"None": None, "dict": {"ctx": ctx}, "layer context": other_context(mode)}[
            ctx_how[0]]
    grads = gbox[0]
    if "grads:notdict" in fz.desc["mutations"]:
        grads = list(grads.values())
    bexp, bchk = combine(res, ("dy", "dh_n", "dc_n", "grads", "ctx"))
    g0 = snapshot(grads) if isinstance(grads, dict) else None
    g0_vals = {k: v.astype(np.float64) for k, v in grads.items() if isinstance(v, np.ndarray)
               and v.dtype.kind in "fiu"} if g0 is not None else {}
    gout = fz.attempt("functional.stack_backward", lambda: F.stack_backward(
        ctx, args["dy"], args["dh_n"], args["dc_n"], grads=grads), bexp)
    fz.unchanged(before, args, "stack_backward arguments")
    if isinstance(gout, Rejected):
        return g0 is not None and fz.unchanged(g0, grads, "grads= dict of a rejected call")
    dx, dh0, dc0, g = gout
    if grads is not None and g is not grads:
        fz.finding("grads= dict not returned", type(g).__name__, "the dict passed")
    if not set(params) <= set(g) or (grads is None and set(g) != set(params)):
        return fz.finding("wrong gradient keys", str(sorted(g)), str(sorted(params)))
    if r64 is not None:
        fz.compare_all("grad ", dict(x=dx, h0=dh0, c0=dc0), r64[1], rdt[1], both(fchk, bchk))
        for k in params:
            add = g0_vals.get(k, 0)
            fz.compare("grad " + k, g[k], r64[1][k] + add, (rdt[1][k] + add).astype(dt),
                       both(fchk, bchk))


# -- target: modules ------------------------------------------------------------------------------

MOD_MODE = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}
BAD_CTOR = {"input_size": (0, -1, 2.5, "3", None, True), "hidden_size": (0, -3, 1.0, None),
            # dropout=1.0 is accepted, as by torch.nn (python/fusedrnn/spec.py)
            "num_layers": (0, -2, 1.0, None), "dropout": (-0.1, 1.5, np.nan, "0.1", None),
            "proj_size": (-1, 10**6, 1.5), "nonlinearity": ("sigmoid", None),
            "dtype": ("float16", np.int32, "complex64", "abc", object), "seed": ("abc", 1.5)}


def ctor_mutation(fz, d, cls, size, kw):
    kw = dict(kw, input_size=size[0], hidden_size=size[1])
    arg = d.draw(st.sampled_from([a for a in BAD_CTOR if a in kw]))
    kw[arg] = d.draw(st.sampled_from(BAD_CTOR[arg]))
    fz.mut(f"constructor:{arg}={kw[arg]!r}")
    fz.attempt(f"{cls.__name__}()", lambda: cls(**kw), "invalid")


def mod_ref(m, a, dt, masks, unb):
    """Reference for module m on inputs a (unbatched ones get a batch axis of 1 and lose it)."""
    bf = m.batch_first
    if unb:
        a = {k: None if v is None else (np.asarray(v)[None] if bf and k in ("x", "dy") else
                                        np.asarray(v)[:, None]) for k, v in a.items()}
    cfg = dict(num_layers=m.num_layers, bidirectional=m.bidirectional, batch_first=bf,
               dropout=m.dropout, reset_after=m.reset_after)
    rs = ref_stack(MOD_MODE[m.mode], dict(a, params=m.state_dict()), dt, cfg, masks)
    if unb:
        sq = lambda k, v: v if v is None or k not in ("y", "x", "h_n", "c_n", "h0", "c0") \
            else (v[0] if bf and k in ("y", "x") else v[:, 0])  # noqa: E731
        rs = tuple(tuple({k: sq(k, v) for k, v in part.items()} for part in r) for r in rs)
    return rs


def t_modules(fz, d, rng):
    kind, (T, B, I, H) = d.draw(st.sampled_from(("RNN", "LSTM", "GRU"))), sizes(d, big=8)
    L, D = d.draw(st.integers(1, 3)), d.draw(st.sampled_from((1, 2)))
    kw = dict(num_layers=L, bias=d.draw(st.booleans()), batch_first=d.draw(st.booleans()),
              dropout=d.draw(st.sampled_from((0.0, 0.0, 0.3))), bidirectional=D == 2,
              dtype=d.draw(st.sampled_from(("float32", "float64", np.float64, None))),
              seed=d.draw(st.integers(0, 2**32)))
    if kind == "RNN":
        kw["nonlinearity"] = d.draw(st.sampled_from(("tanh", "relu")))
    if kind == "LSTM" and H > 1 and d.draw(st.booleans()):
        kw["proj_size"] = d.draw(st.integers(1, H - 1))
    if kind == "GRU":
        kw["reset_after"] = d.draw(st.booleans())
    cls, train, lstm = getattr(fusedrnn, kind), d.draw(st.booleans()), kind == "LSTM"
    unb, bf = d.draw(st.integers(0, 4)) == 0, kw["batch_first"]
    fz.new(kind=kind, T=T, B=B, I=I, H=H, train=train, unbatched=unb, **kw)
    if d.draw(st.integers(0, 9)) == 0:
        return ctor_mutation(fz, d, cls, (I, H), kw)
    m = fz.attempt(f"{kind}()", lambda: cls(I, H, **kw), "valid")
    if isinstance(m, Rejected):
        return
    m.train(train)
    dt, R, u = m.dtype, kw.get("proj_size") or H, uniform(rng, m.dtype)
    bs, xs = () if unb else (B,), (T, I) if unb else ((B, T, I) if bf else (T, B, I))

    def inputs():
        a = dict(x=u(1, *xs), h0=u(1, L * D, *bs, R), c0=u(1, L * D, *bs, H) if lstm else None,
                 lengths=None if unb else rng.integers(1, T + 1, B), dy=u(1, *xs[:-1], D * R),
                 dh_n=u(1, L * D, *bs, R), dc_n=u(1, L * D, *bs, H) if lstm else None)
        return a, {k: None if k != "x" and d.draw(st.integers(0, 2)) == 0 else v
                   for k, v in a.items()}

    def forward(a, need_grad, hx_how=None):
        hx = ((a["h0"], a["c0"]) if a["h0"] is not None or a["c0"] is not None else None) \
            if lstm else a["h0"]
        hx = {None: lambda: hx, "list": lambda: list(hx), "single": lambda: a["h0"],
              "triple": lambda: (a["h0"], a["c0"], a["c0"]), "tuple": lambda: (hx,)}[hx_how]()
        return lambda: m(a["x"], hx, lengths=a["lengths"], need_grad=need_grad)

    def state():
        return snapshot(dict(m.named_parameters())), snapshot(m.grads), m._ctx

    def changed(before):  # parameters, grads or the kept context (identity)
        now = state()
        return now[:2] != before[:2] or now[2] is not before[2]

    active, drop = None, train and m.dropout > 0 and L > 1  # active: what backward will use
    mshape = (T, 1 if unb else B, D * R)  # dropout masks: time-major
    if d.draw(st.booleans()):
        a = inputs()[1]
        if not isinstance(fz.attempt(f"{kind}.forward", forward(a, True), "valid"), Rejected):
            active = (a, keep_masks(fz, m._ctx[0], mshape) if drop else None, "full")
    (valid, a), hx_how = inputs(), []
    need_grad = d.draw(st.sampled_from((None, True, False)))

    def hx_mutation():
        hx_how.append(d.draw(st.sampled_from(("list", "single", "triple") if lstm else
                                             ("tuple",))))
        fz.mut(f"hx:{hx_how[0]}")
        for n in ("h0", "c0") if lstm else ("h0",):
            a[n] = valid[n] if a[n] is None else a[n]
        return ("valid", "full") if hx_how[0] == "list" else ("invalid", "none")

    def lengths_unbatched():
        fz.mut("lengths:with unbatched input")
        a["lengths"] = np.full(1, T)
        return "invalid", "none"

    special = dict(hx=hx_mutation, **(dict(lengths=lengths_unbatched) if unb else {}))
    baxes = {} if unb else dict(x=int(not bf), dy=int(not bf), h0=1, c0=1, dh_n=1, dc_n=1)
    res = mutate_args(fz, d, valid, a, ["x", "h0", "lengths", "hx"] + ["c0"] * lstm,
                      (T, B, bf), special, free=(0,) if unb else (0, 1),
                      maybe=("ndim-", "ndim+"), baxes=baxes)
    if "hx" in res and {"h0", "c0"} & set(res):  # e.g. (h0,) with h0 one axis short is valid
        res.update({k: ("maybe", "none") for k in ("hx", "h0", "c0") if k in res})
    fexp, fchk = combine(res, ("x", "h0", "c0", "lengths", "hx"))
    st0, before = state(), snapshot(a)
    out = fz.attempt(f"{kind}.forward", forward(a, need_grad, (hx_how or [None])[0]), fexp)
    fz.unchanged(before, a, "forward arguments")
    if isinstance(out, Rejected):
        fz.check_len_msg(out, a["lengths"])
        if changed(st0):
            fz.finding("rejected call changed the module", "parameters, grads or context",
                       "unchanged")
    else:
        if fexp == "maybe":  # e.g. read as unbatched: the backward below would not fit
            return
        keep = train if need_grad is None else need_grad
        masks = keep_masks(fz, m._ctx[0], mshape) if drop and keep else None
        active = (a, masks, fchk) if keep else None
        if fchk != "none" and (masks is not None or not drop):
            r64, rdt = mod_ref(m, a, dt, masks, unb)
            hn, cn = out[1] if lstm else (out[1], None)
            fz.compare_all("", dict(y=out[0], h_n=hn, c_n=cn), r64[0], rdt[0], fchk)
    if active is None:  # no kept context: backward must say so
        return fz.attempt(f"{kind}.backward", lambda: m.backward(None), "invalid",
                          (RuntimeError,))
    a, masks, achk = active
    valid = {k: v for k, v in inputs()[0].items() if k.startswith("d")}
    b = {k: v if a[k] is None else a[k] for k, v in valid.items()}
    res = mutate_args(fz, d, valid, b, [k for k, v in b.items() if v is not None], (T, B, bf),
                      required=(), baxes=baxes)
    bexp, bchk = combine(res, list(b))
    st1 = state()
    dstate = (b["dh_n"], b["dc_n"]) if lstm else b["dh_n"]
    gout = fz.attempt(f"{kind}.backward", lambda: m.backward(b["dy"], dstate), bexp)
    if isinstance(gout, Rejected):
        return changed(st1) and fz.finding("rejected backward changed the module",
                                           "parameters, grads or context", "unchanged")
    if "none" in (bchk, achk) or (drop and masks is None):
        return
    r64, rdt = mod_ref(m, dict(a, **b), dt, masks, np.ndim(a["x"]) == 2)
    dh0, dc0 = gout[1] if lstm else (gout[1], None)
    fz.compare_all("grad ", dict(x=gout[0], h0=dh0, c0=dc0), r64[1], rdt[1], both(bchk, achk))
    fz.compare_all("grads ", m.grads, r64[1], rdt[1], both(bchk, achk))


# -- target: cells --------------------------------------------------------------------------------

def t_cells(fz, d, rng):
    kind, (_, B, I, H) = d.draw(st.sampled_from(("RNNCell", "LSTMCell", "GRUCell"))), \
        sizes(d, big=10)
    kw = dict(bias=d.draw(st.booleans()), dtype=d.draw(st.sampled_from(("float32", "float64"))),
              seed=d.draw(st.integers(0, 2**32)))
    if kind == "RNNCell":
        kw["nonlinearity"] = d.draw(st.sampled_from(("tanh", "relu")))
    if kind == "GRUCell":
        kw["reset_after"] = d.draw(st.booleans())
    cls, lstm = getattr(fusedrnn, kind), kind == "LSTMCell"
    train, need_grad = d.draw(st.booleans()), d.draw(st.sampled_from((None, True, False)))
    k, unb = d.draw(st.integers(1, 3)), d.draw(st.integers(0, 3)) == 0
    fz.new(kind=kind, T=k, B=B, I=I, H=H, train=train, need_grad=need_grad, unbatched=unb, **kw)
    if d.draw(st.integers(0, 9)) == 0:
        return ctor_mutation(fz, d, cls, (I, H), kw)
    c = cls(I, H, **kw).train(train)
    dt, keep, u, bs = c.dtype, train if need_grad is None else need_grad, uniform(rng, c.dtype), \
        () if unb else (B,)
    X, DY = u(1, k, *bs, I), u(1, k, *bs, H)
    h0, c0 = (u(1, *bs, H), u(1, *bs, H)) if d.draw(st.booleans()) else (None, None)
    cell = {"RNNCell": "rnn_" + kw.get("nonlinearity", ""), "LSTMCell": "lstm",
            "GRUCell": "gru" if kw.get("reset_after", True) else "gru_v1"}[kind]
    names = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh"}

    def reference(x, h, cc, dy):
        """Reference of the steps x (k, [B,] I) from state (h, cc): a layer of T = k."""
        seq, one = (lambda v: v[:, None], lambda v: v[None]) if unb else (lambda v: v,) * 2
        a = dict(b_ih=None, b_hh=None, lengths=None, dh_n=None, dc_n=None, x=seq(x),
                 h0=None if h is None else one(h), c0=None if cc is None else one(cc),
                 dy=None if dy is None else seq(dy))
        a.update({names[n]: v for n, v in c.state_dict().items()})
        rs = ref_layer(cell, a, dt, False)
        sq = lambda n, v: v if v is None or not unb else {  # noqa: E731
            "y": lambda: v[:, 0], "x": lambda: v[:, 0]}.get(n, lambda: v[0] if n in (
                "h_n", "c_n", "h0", "c0") else v)()
        return tuple(tuple({n: sq(n, v) for n, v in part.items()} for part in r) for r in rs)

    def state():
        return snapshot(dict(c.named_parameters())), snapshot(c.grads), len(c._stack)

    hx, outs, j = ((h0, c0) if lstm else h0) if h0 is not None else None, [], \
        d.draw(st.integers(-1, k - 1))
    for t in range(k):
        if t == j:  # first a mutated call (need_grad=False: if accepted, it keeps nothing)
            which = d.draw(st.sampled_from(("x", "h", "c", "hx") if lstm else ("x", "h")))
            s = dict(x=X[t], h=u(1, *bs, H), c=u(1, *bs, H) if lstm else None)
            if hx is not None:
                s.update(zip(("h", "c"), hx) if lstm else [("h", hx)])
            exp, chk = "invalid", "none"
            if which == "hx":
                fz.mut("hx:not a pair")
            else:
                s[which], exp, chk = mutate_float(fz, d, which, s[which], which != "x", None, (),
                                                  ("ndim-", "ndim+"), None if unb else 0)
                exp = "maybe" if lstm and (s["h"] is None) != (s["c"] is None) and \
                    exp != "invalid" else exp
            st0 = state()
            r = fz.attempt(f"{kind}.forward", lambda: c(s["x"], s["h"] if which == "hx" or
                                                        not lstm else (s["h"], s["c"]),
                                                        need_grad=False), exp)
            if isinstance(r, Rejected) and state() != st0:
                fz.finding("rejected call changed the cell", "parameters, grads or stack",
                           "unchanged")
            elif not isinstance(r, Rejected) and chk != "none" and exp == "valid":
                r64, rdt = reference(np.asarray(s["x"])[None], *(
                    None if s[n] is None else np.asarray(s[n]) for n in "hc"), None)
                fz.compare_all("step ", dict(h_n=r[0], c_n=r[1]) if lstm else dict(h_n=r),
                               r64[0], rdt[0], chk)
        r = fz.attempt(f"{kind}.forward", lambda: c(X[t], hx, need_grad=need_grad), "valid")
        if isinstance(r, Rejected):
            return
        outs.append(r[0] if lstm else r)
        hx = r
    r64, rdt = reference(X, h0, c0, DY)
    fz.compare_all("", dict(y=np.stack(outs), **(dict(c_n=hx[1]) if lstm else {})), r64[0],
                   rdt[0], "full")
    if not keep:
        return fz.attempt(f"{kind}.backward", lambda: c.backward(DY[0]), "invalid",
                          (RuntimeError,))
    dxs, dh, dc, jb = [], None, None, d.draw(st.integers(-1, k - 1))
    back = (lambda g, gc: c.backward(g, gc)) if lstm else (lambda g, gc: c.backward(g))
    for t in reversed(range(k)):
        g = DY[t] if dh is None else DY[t] + dh
        if t == jb:  # a rejected backward must leave the step's context in place
            which = d.draw(st.sampled_from(("dh", "dc") if lstm else ("dh",)))
            v, exp, _ = mutate_float(fz, d, which, g if which == "dh" else u(1, *bs, H), True,
                                     batch_axis=None if unb else 0)
            if exp != "invalid":
                fz.desc["mutations"].pop()
            else:
                st0 = state()
                r = fz.attempt(f"{kind}.backward", lambda: back(*((v, dc) if which == "dh"
                                                                  else (g, v))), exp)
                if not isinstance(r, Rejected):
                    return
                if state() != st0:
                    return fz.finding("rejected backward changed the cell",
                                      "parameters, grads or stack", "unchanged")
        r = fz.attempt(f"{kind}.backward", lambda: back(g, dc), "valid")
        if isinstance(r, Rejected):
            return
        dxs.append(r[0])
        dh, dc = r[1] if lstm else (r[1], None)
    fz.compare_all("grad ", dict(x=np.stack(dxs[::-1]), h0=dh, **(dict(c0=dc) if lstm else {})),
                   r64[1], rdt[1], "full")
    fz.compare_all("grads ", c.grads, r64[1], rdt[1], "full")
    fz.attempt(f"{kind}.backward (one too many)", lambda: c.backward(DY[0]), "invalid",
               (RuntimeError,))


# -- target: load_state_dict ----------------------------------------------------------------------

def as_numpy(v):
    if torch is not None and isinstance(v, torch.Tensor):
        v = v.detach()
        return (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    return np.asarray(v)


def t_state_dict(fz, d, rng):
    kind = d.draw(st.sampled_from(("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")))
    I, H = d.draw(st.integers(1, 4)), d.draw(st.integers(2, 5))
    kw = dict(bias=d.draw(st.booleans()), dtype=d.draw(st.sampled_from(("float32", "float64"))))
    if not kind.endswith("Cell"):
        kw.update(num_layers=d.draw(st.integers(1, 2)), bidirectional=d.draw(st.booleans()))
        kw.update(proj_size=1) if kind == "LSTM" and d.draw(st.booleans()) else None
    cls = getattr(fusedrnn, kind)
    m, sd = cls(I, H, seed=1, **kw), dict(cls(I, H, seed=2, **kw).state_dict())
    strict = d.draw(st.sampled_from((True, True, False)))
    fz.new(kind=kind, I=I, H=H, strict=strict, **kw)
    exp, allowed, expected = "valid", VT, dict(sd)
    for _ in range(d.draw(st.sampled_from((0, 1, 1, 2)))):
        how = d.draw(st.sampled_from((
            "missing", "unexpected", "shape", "castable", "uncastable", "torch", "list",
            "ragged", "None", "scalar", "str", "layout", "nonfinite", "notmap")))
        keys = sorted(k for k, v in sd.items() if k in m.state_dict() and k not in str(
            fz.desc["mutations"])) if isinstance(sd, dict) else []
        if not keys or how == "notmap" or (how == "torch" and torch is None):
            fz.mut("state_dict:not a mapping")
            sd, exp = (list(sd.items()) if isinstance(sd, dict) else None), "invalid"
            continue
        k = d.draw(st.sampled_from(keys))
        v, e = sd[k], "valid"
        if how in ("missing", "unexpected"):
            e = "invalid" if strict else "valid"
            allowed = VT + (KeyError,) if strict else allowed
            if how == "missing":
                del sd[k], expected[k]
            k += "_extra" if how == "unexpected" else ""
        elif how in ("castable", "uncastable"):
            v = v.astype(d.draw(st.sampled_from(
                ("float16", "int32", "uint8", "bool", "longdouble", "float32", "float64")
                if how == "castable" else ("complex64", "object", "U3", "datetime64[s]"))))
            e = "valid" if how == "castable" else "invalid"
        elif how == "torch":
            tv = torch.from_numpy(np.ascontiguousarray(v))
            v = d.draw(st.sampled_from((lambda: tv, lambda: tv.half(), lambda: tv.bfloat16(),
                                        lambda: tv.requires_grad_(True),
                                        lambda: tv.t().contiguous().t())))()
            e = "maybe" if v.dtype == torch.bfloat16 else "valid"
        elif how == "shape":
            v, e = bad_shape(d, v)[0], "invalid"
        elif how == "layout":
            v = relayout(v, d.draw(st.sampled_from(LAYOUTS[:-1])))
        elif how == "nonfinite":
            v = v.copy()
            v.reshape(-1)[0] = d.draw(st.sampled_from((np.nan, np.inf, 1e300)))
        else:
            v, e = {"list": (v.tolist(), "valid"), "ragged": ([[1.0], [1.0, 2.0]], "invalid"),
                    "None": (None, "invalid"), "scalar": (1.0, "invalid"),
                    "str": ("abc", "invalid")}[how]
        fz.mut(f"{k}:{how}" + (f"={v.dtype}" if how in ("castable", "uncastable", "torch")
                               else ""))
        if how != "missing":
            sd[k] = expected[k] = v
        exp = "invalid" if "invalid" in (exp, e) else ("maybe" if "maybe" in (exp, e) else exp)
    params = dict(m.named_parameters())
    ids, before, gbefore = {n: id(p) for n, p in params.items()}, snapshot(params), \
        snapshot(m.grads)
    r = fz.attempt(f"{kind}.load_state_dict", lambda: m.load_state_dict(sd, strict=strict), exp,
                   allowed)
    if {n: id(p) for n, p in m.named_parameters()} != ids or snapshot(m.grads) != gbefore:
        fz.finding("parameters rebound or grads changed", "new arrays", "the same arrays")
    if isinstance(r, Rejected):
        return snapshot(params) != before and fz.finding(
            "rejected load_state_dict changed parameters", "changed", "unchanged")
    for n, p in params.items():
        want = as_numpy(expected[n]).astype(p.dtype) if n in expected else None
        if (want is None and snapshot({n: p}) != {n: before[n]}) or (
                want is not None and not np.array_equal(p, want, equal_nan=True)):
            fz.finding("loaded values differ", n, "the state_dict's values cast to the "
                       "parameter dtype (unchanged if absent)")


# -- target: the torch adapter ----------------------------------------------------------------

def tmutate(fz, d, name, t, made, shapes=True):
    """Mutates tensor argument `name`. Returns (value, check, odd_dtype)."""
    cat = d.draw(st.sampled_from(("layout", "layout", "dtype", "shape", "nonarray", "values")))
    cat = "layout" if cat == "shape" and not shapes else cat
    if cat == "layout" and t.dim() and t.numel():
        how = d.draw(st.sampled_from(("transposed", "strided", "expand", "unaligned")))
        how = "strided" if how == "unaligned" and t.dtype not in (torch.float32,
                                                                 torch.float64) else how
        fz.mut(f"{name}:layout={how}")
        if how == "unaligned":
            v = torch.from_numpy(relayout(t.detach().numpy(), "unaligned"))
            made.append(v.requires_grad_(t.requires_grad))
            return v, "full", False
        return {"transposed": lambda: t.transpose(0, -1).contiguous().transpose(0, -1),
                "strided": lambda: torch.repeat_interleave(t, 2, dim=-1)[..., ::2],
                "expand": lambda: t[:1].expand_as(t)}[how](), "full", False
    if cat == "dtype":
        dt = d.draw(st.sampled_from((torch.float16, torch.bfloat16, torch.int64, torch.bool,
                                     torch.complex64, torch.float64 if t.dtype == torch.float32
                                     else torch.float32)))
        fz.mut(f"{name}:dtype={dt}")
        # any dtype but the module's only has to be rejected (or handled): a documented
        # difference (torch.nn itself mixes float32/float64 states inconsistently)
        return t.detach().to(dt), "none", True
    if cat == "shape" and t.dim():
        how = d.draw(st.sampled_from(("ndim+", "ndim-", "dim+1", "dim-1", "zero")))
        ax = d.draw(st.integers(0, t.dim() - 1))
        v = {"ndim+": lambda: t[None], "ndim-": lambda: t[0] if t.shape[0] else t.sum(0),
             "dim+1": lambda: torch.cat([t, t.narrow(ax, 0, 1) if t.shape[ax] else
                                         t.new_zeros(t.shape[:ax] + (1,) + t.shape[ax + 1:])],
                                        ax),
             "dim-1": lambda: t.narrow(ax, 0, max(t.shape[ax] - 1, 0)),
             "zero": lambda: t.narrow(ax, 0, 0)}[how]()
        fz.mut(f"{name}:shape={how} {tuple(v.shape)}")
        return v, "none", False
    if cat == "nonarray":
        how = d.draw(st.sampled_from(("numpy", "list", "None", "float")))
        fz.mut(f"{name}:nonarray={how}")
        return {"numpy": lambda: t.detach().double().numpy(), "list": lambda: t.tolist(),
                "None": lambda: None, "float": lambda: 1.0}[how](), "full", False
    if not t.numel() or not t.is_floating_point():
        return t, "full", False
    how = d.draw(st.sampled_from(("nan", "inf", "-inf", "huge", "denormal")))
    idx = d.draw(st.integers(0, t.numel() - 1))
    fz.mut(f"{name}:values={how}@{idx}")
    v = t.detach().contiguous().clone()
    v.view(-1)[idx] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 1e38,
                       "denormal": 1e-40 if t.dtype == torch.float32 else 1e-310}[how]
    made.append(v.requires_grad_(t.requires_grad))
    return v, {"huge": "none", "denormal": "full"}.get(how, "nonfinite"), False


def t_torch(fz, d, rng):
    kind = d.draw(st.sampled_from(("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")))
    cellk, lstm = kind.endswith("Cell"), kind.startswith("LSTM")
    tdt = d.draw(st.sampled_from((torch.float32, torch.float64)))
    T, B, I, H = sizes(d, big=8)
    kw, L, D, P, bf = dict(bias=d.draw(st.booleans()), dtype=tdt), 1, 1, 0, False
    if not cellk:
        L, D, bf = d.draw(st.integers(1, 3)), d.draw(st.sampled_from((1, 2))), d.draw(
            st.booleans())
        kw.update(num_layers=L, bidirectional=D == 2, batch_first=bf,
                  dropout=d.draw(st.sampled_from((0.0, 0.0, 0.4))) if L > 1 else 0.0)
        if lstm and H > 1 and d.draw(st.booleans()):
            P = kw["proj_size"] = d.draw(st.integers(1, H - 1))
    if kind.startswith("RNN"):
        kw["nonlinearity"] = d.draw(st.sampled_from(("tanh", "relu")))
    train, form = d.draw(st.booleans()), d.draw(st.sampled_from(
        ("batched", "unbatched") if cellk else ("padded", "padded", "unbatched", "packed")))
    if form in ("padded", "batched") and d.draw(st.integers(0, 11)) == 0:
        B = 0
    if form != "packed" and not cellk and d.draw(st.integers(0, 19)) == 0:
        T = 0
    fz.new(kind=kind, T=T, B=B, I=I, H=H, train=train, form=form, **kw)
    torch.manual_seed(d.draw(st.integers(0, 2**32)))
    ours = getattr(FT, kind)(I, H, **kw).train(train)
    theirs = getattr(torch.nn, kind)(I, H, **kw).train(train)
    theirs.load_state_dict(ours.state_dict())
    tens = lambda *s: torch.from_numpy(rng.uniform(-1, 1, s)).to(tdt).requires_grad_(  # noqa
        d.draw(st.booleans()))
    made, bs, R = [], () if form == "unbatched" else (B,), P or H
    if cellk:
        x = tens(*bs, I)
        h0, c0 = (tens(*bs, H), tens(*bs, H)) if d.draw(st.booleans()) else (None, None)
    else:
        x = tens(*((T, I) if form == "unbatched" else (B, T, I) if bf and form == "padded" else
                   (T, B, I)))
        h0, c0 = (tens(L * D, *bs, R), tens(L * D, *bs, H)) if d.draw(st.booleans()) else \
            (None, None)
    made += [x, h0, c0]
    checks, odd, hx_how = ["full"], False, None
    for _ in range(d.draw(st.sampled_from((0, 1, 1, 2)))):
        k = d.draw(st.sampled_from(("x", "x", "h0", "c0", "hx") if lstm else ("x", "x", "h0")))
        if k == "hx":  # torch.nn accepts some 3-tuples, and a (2, H) tensor for LSTMCell
            hx_how = d.draw(st.sampled_from(("list",) + ("single",) * (not cellk)))
            fz.mut(f"hx:{hx_how}")
        if k != "x" and h0 is None:  # torch.nn needs both LSTM states or neither
            h0, c0 = (tens(L * D, *bs, R), tens(L * D, *bs, H)) if not cellk else (
                tens(*bs, H), tens(*bs, H))
            made += [h0, c0]
        if k == "hx":
            continue
        base = {"x": x, "h0": h0, "c0": c0}[k]
        if not isinstance(base, torch.Tensor):
            continue
        # packed input: torch.nn index_selects the states (extra columns pass unseen) and
        # takes data of another feature size
        v, chk, o = tmutate(fz, d, k, base, made, form != "packed")
        x, h0, c0 = (v if k == n else old for n, old in (("x", x), ("h0", h0), ("c0", c0)))
        checks.append(chk)
        odd = odd or o
    inp = x
    if form == "packed" and B and T and isinstance(x, torch.Tensor) and x.dim() == 3:
        lens = rng.integers(1, T + 1, B)
        enforce = d.draw(st.booleans())
        lens = np.sort(lens)[::-1].copy() if enforce else lens
        fz.desc["config"]["lengths"] = lens.tolist()
        try:  # packing is torch's business, not the call under test
            inp = pack_padded_sequence(x, torch.from_numpy(lens), enforce_sorted=enforce)
        except Exception:  # noqa: BLE001
            return
    hx = ((h0, c0) if h0 is not None or c0 is not None else None) if lstm else h0
    if hx_how:
        hx = {"list": [h0, c0], "single": h0}[hx_how]
    nograd = d.draw(st.integers(0, 4)) == 0
    check = min(checks, key=LEVEL.get)
    if train and kw.get("dropout"):
        check = "none"

    def run(mod):
        with torch.set_grad_enabled(not nograd):
            out = mod(inp, hx)
        flat = []
        for o in (out if isinstance(out, tuple) else (out,)):
            flat += list(o) if isinstance(o, tuple) and not isinstance(o, PackedSequence) \
                else [o]
        return out, [o.data if isinstance(o, PackedSequence) else o for o in flat]

    try:
        if cellk and getattr(x, "ndim", 0) == 1 and any(getattr(s, "ndim", 1) != 1 for s in (
                (h0, c0) if lstm else (h0,))):  # torch 2.13 LSTMCell/GRUCell: SIGSEGV on
            # x (I,) with h (1, H)
            raise RuntimeError("unbatched input needs 1-D states (torch.nn not called)")
        fz.breadcrumb(f"torch.nn.{kind}.forward (the oracle)")
        t_out = run(theirs)
    except Exception as e:  # noqa: BLE001 - torch.nn's verdict
        fz.desc["note"] = f"torch.nn raised {type(e).__name__}: {str(e)[:150]}"
        t_out = None
    o_out = fz.attempt(f"fusedrnn.torch.{kind}.forward", lambda: run(ours), "invalid" if
                       t_out is None else ("maybe" if odd else "valid"), VTR)
    if t_out is None or isinstance(o_out, Rejected):
        return
    tol = 1e-4 if tdt == torch.float32 else 1e-9
    if isinstance(t_out[0], tuple) and isinstance(t_out[0][0], PackedSequence):
        for f in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            a, b = getattr(o_out[0][0], f), getattr(t_out[0][0], f)
            if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
                fz.finding("PackedSequence differs", f, "torch.nn's " + f)
    if len(o_out[1]) != len(t_out[1]):
        return fz.finding("wrong outputs", f"{len(o_out[1])} tensors", f"{len(t_out[1])}")
    for i, (a, b) in enumerate(zip(o_out[1], t_out[1])):
        b = b.detach().numpy()
        fz.compare(f"output {i}", a.detach().numpy(), b.astype(np.float64), b, check, tol)
    if nograd or not t_out[1][0].requires_grad:
        return
    w = [torch.from_numpy(rng.uniform(-1, 1, tuple(o.shape))).to(o.dtype) for o in t_out[1]]
    leaves = [t for t in made if isinstance(t, torch.Tensor) and t.requires_grad and t.is_leaf]

    def grads(mod, outs):
        loss = sum((o * wi).sum() for o, wi in zip(outs, w))
        ps = [p for _, p in sorted(mod.named_parameters())]
        return torch.autograd.grad(loss, leaves + ps, allow_unused=True, retain_graph=True)

    try:
        fz.breadcrumb(f"torch.nn.{kind}.backward (the oracle)")
        tg = grads(theirs, t_out[1])
    except Exception as e:  # noqa: BLE001
        fz.desc["note"] = f"torch.nn's backward raised {type(e).__name__}: {str(e)[:150]}"
        tg = None
    og = fz.attempt(f"fusedrnn.torch.{kind}.backward", lambda: grads(ours, o_out[1]),
                    "invalid" if tg is None else "valid", VTR)
    if tg is None or isinstance(og, Rejected):
        return
    for i, (a, b) in enumerate(zip(og, tg)):
        if (a is None) != (b is None):
            fz.finding("gradient missing or extra", f"gradient {i}: {a is None}", f"{b is None}")
        elif a is not None:
            b = b.numpy()
            fz.compare(f"gradient {i}", a.numpy(), b.astype(np.float64), b,
                       "full" if check == "full" else "none", tol)


# -- main ---------------------------------------------------------------------------------------

TARGETS = {"functional": t_functional, "stack": t_stack, "modules": t_modules, "cells": t_cells,
           "state_dict": t_state_dict, "torch": t_torch}


def run_target(fz, name, seed, n):
    fz.target = name

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False,
              report_multiple_bugs=False)
    @given(st.data())
    def test(data):
        TARGETS[name](fz, data, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1),
                                                                label="numpy seed")))

    try:
        test()
    except Exception as e:  # noqa: BLE001 - a bug of this driver: reported as a finding
        fz.finding("driver error", f"{type(e).__name__}: {e}"[:300], "no error in the driver",
                   traceback=traceback.format_exc()[-3000:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="fuzz.json")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--chunk", type=int, default=25, help="examples per hypothesis run")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    faulthandler.enable()
    targets, skipped = [t for t in args.targets.split(",") if t], {}
    unknown = set(targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}; choose from {list(TARGETS)}")
    if torch is None and "torch" in targets:
        targets.remove("torch")
        skipped["torch"] = TORCH_MISSING
    fz = Fuzzer(args.json + ".lastcall")
    t0, spent, runs = time.monotonic(), Counter({t: 0.0 for t in targets}), Counter()
    while time.monotonic() - t0 < args.seconds:
        name = min(targets, key=lambda t: spent[t])  # equal time for every target
        t1 = time.monotonic()  # the n-th run of a target has the same seed on any machine:
        run_target(fz, name, zlib.crc32(f"{args.seed}/{name}/{runs[name]}".encode()), args.chunk)
        spent[name] += time.monotonic() - t1
        runs[name] += 1
    findings = sorted(fz.findings.values(), key=lambda f: (f["target"], f["kind"]))
    summary = dict(calls=fz.calls, per_target=dict(fz.per_target), accepted=fz.accepted,
                   rejected_by_exception_type=dict(fz.rejected), examples=dict(fz.examples),
                   arrays_compared=dict(fz.compared),
                   seconds=round(time.monotonic() - t0, 1), seconds_per_target={
                       t: round(v, 1) for t, v in spent.items()}, seed=args.seed,
                   hypothesis_runs=dict(runs), skipped=skipped, fusedrnn=fusedrnn.__file__,
                   torch=None if torch is None else torch.__version__, findings=findings)
    with open(args.json, "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(f"fuzz: {fz.calls} calls in {summary['seconds']} s ({fz.accepted} accepted, "
          f"{sum(fz.rejected.values())} rejected), {len(findings)} findings"
          + (f"; skipped {skipped}" if skipped else ""))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
