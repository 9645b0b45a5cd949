"""Native kernels vs the float64 NumPy reference: forward and every gradient.

Error of an array = max |native - ref64| / max |ref64| (ref64: the reference in float64 on the
same inputs). Bounds (docs/design.md §7):
* float64: 1e-10.
* float32: 2 x the float32 error scale of the problem: the largest error (against ref64) of nine
  runs of the reference: in float32 on the same inputs (docs/design.md §7's "float32 reference
  runs"), and
  on four random one-ulp float32 perturbations of the inputs, each in float32 and in float64.
  One float32 run alone can be exact by luck on an ill-conditioned array (H=1, or bias sums with
  cancellation); the perturbed runs sample how far float32 roundings move the result. Floor:
  4 float32 ulps of the array's scale (so the bound is never under 8 ulps).

Every instruction set and forced kernel crossover re-runs a subset of these cases in this
process, through fusedrnn._C._testing (the `tuning` fixture); the reference side of each case
is computed once per session and reused (it does not depend on the kernel path).
Tests take `backend` (conftest.py): inputs (lengths too) go through to_backend, outputs through
to_numpy (_support.py).
"""

import itertools
import os
import zlib

import numpy as np
import pytest

from fusedrnn import functional as F
from fusedrnn import reference as ref

from _support import count_config, record_error, to_backend, to_numpy

EPS32 = np.finfo(np.float32).eps
N_PERTURBED = 4  # perturbed input sets sampled for the float32 error scale
CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru", "gru_v1"]


def ragged_lengths(T, B):
    """Lengths with ties and a length-1 sequence (as far as B allows), not sorted."""
    pattern = [T, 1, (T + 1) // 2, (T + 1) // 2, T]
    return np.array(pattern[:B] if B > 1 else [1], dtype=np.int64)


def make_case(cell, T, B, I, H, dtype, rng, bias=True, states=True):
    mode = "lstm" if cell.startswith("lstm") else ("gru" if cell.startswith("gru") else cell)
    G = ref.GATES[mode]
    P = H // 2 + 1 if cell == "lstm_proj" else 0
    R = P or H
    u = lambda *s: rng.uniform(-1, 1, s)  # float64 master copies
    c = dict(mode=mode, cell=cell, P=P, R=R,
             x=u(T, B, I), w_ih=u(G * H, I) * 0.6, w_hh=u(G * H, R) * 0.6,
             b_ih=u(G * H) * 0.3 if bias else None, b_hh=u(G * H) * 0.3 if bias else None,
             h0=u(B, R) if states else None,
             c0=u(B, H) if states and mode == "lstm" else None,
             w_hr=u(P, H) * 0.6 if P else None,
             dy=u(T, B, R), dh_n=u(B, R), dc_n=u(B, H) if mode == "lstm" else None)
    return c


def cast(case, dtype):
    return {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in case.items()}


def run(lib, case, lengths, reverse, training=True, backend="cpu"):
    """Forward + backward through `lib` (functional or reference). Returns (outputs, grads),
    as NumPy arrays. Inputs go to `backend`, lengths too (an int64 array on x's device)."""
    if lib is F:
        c = {k: to_backend(v, backend) for k, v in case.items()}
        if lengths is not None:
            lengths = to_backend(np.asarray(lengths, dtype=np.int64), backend)
    else:
        c = case
    kw = dict(lengths=lengths, reverse=reverse, training=training)
    if c["mode"] == "lstm":
        y, h, cn, ctx = lib.lstm_forward(c["x"], c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"],
                                         c["h0"], c["c0"], w_hr=c["w_hr"], **kw)
        outs = {"y": y, "h_n": h, "c_n": cn}
        grads = lib.lstm_backward(ctx, c["dy"], c["dh_n"], c["dc_n"]) if training else {}
    elif c["mode"] == "gru":
        y, h, ctx = lib.gru_forward(c["x"], c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"], c["h0"],
                                    reset_after=c["cell"] == "gru", **kw)
        outs = {"y": y, "h_n": h}
        grads = lib.gru_backward(ctx, c["dy"], c["dh_n"]) if training else {}
    else:
        y, h, ctx = lib.rnn_forward(c["x"], c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"], c["h0"],
                                    nonlinearity=c["mode"][4:], **kw)
        outs = {"y": y, "h_n": h}
        grads = lib.rnn_backward(ctx, c["dy"], c["dh_n"]) if training else {}
    return ({k: to_numpy(v) for k, v in outs.items()}, {k: to_numpy(v) for k, v in grads.items()})


def perturb(case64, prng):
    """Every float input rounded to float32 and moved by -1, 0 or +1 float32 ulp at random."""
    out = {}
    for k, v in case64.items():
        if isinstance(v, np.ndarray):
            v32 = v.astype(np.float32)
            step = prng.integers(-1, 2, v.shape)
            up = np.nextafter(v32, np.float32(np.inf))
            down = np.nextafter(v32, np.float32(-np.inf))
            v = np.where(step > 0, up, np.where(step < 0, down, v32)).astype(np.float64)
        out[k] = v
    return out


def rel_err(a, b64):
    scale = np.abs(b64).max()
    return float(np.abs(a.astype(np.float64) - b64).max() / (scale if scale > 0 else 1.0))


# The reference side of a case: (ref_out, ref_grad, float32 error scales), by case key. It does
# not depend on the kernel path, so the forced-path re-runs below reuse it.
_REFERENCE = {}


def reference_side(case64, dtype, lengths, reverse, key):
    hit = _REFERENCE.get(key)
    if hit is not None:
        return hit
    ref_out, ref_grad = run(ref, case64, lengths, reverse)
    scale32 = {}
    if dtype == np.float32:
        r32 = [run(ref, cast(case64, np.float32), lengths, reverse)]
        prng = np.random.default_rng(99)
        for _ in range(N_PERTURBED):
            moved = perturb(case64, prng)
            r32.append(run(ref, cast(moved, np.float32), lengths, reverse))
            r32.append(run(ref, moved, lengths, reverse))
        for i, r64 in enumerate((ref_out, ref_grad)):
            for k in r64:
                scale32[i, k] = max(rel_err(r[i][k], r64[k]) for r in r32)
    _REFERENCE[key] = hit = (ref_out, ref_grad, scale32)
    return hit


def compare(case64, dtype, lengths, reverse, label, reduction_rows=0, backend="cpu"):
    """reduction_rows: T*B of a case longer than the sweep's (T*B <= 35), whose weight
    gradients sum that many float32 terms: the 4-ulp floor of the bound grows by
    sqrt(reduction_rows / 64), the typical growth of a float32 sum's rounding error.
    `label` names the case: with dtype, lengths and reverse it keys the reference cache."""
    nat_out, nat_grad = run(F, cast(case64, dtype), lengths, reverse, backend=backend)
    key = (label, np.dtype(dtype).name, None if lengths is None else tuple(lengths), reverse,
           seed)
    ref_out, ref_grad, scale32 = reference_side(case64, dtype, lengths, reverse, key)
    assert nat_grad.keys() == ref_grad.keys()
    count_config(dtype)
    for i, (group, nat, r64) in enumerate((("out", nat_out, ref_out),
                                           ("grad", nat_grad, ref_grad))):
        for k in r64:
            a = nat[k]
            assert a.dtype == dtype and a.shape == r64[k].shape, (k, a.dtype, a.shape)
            err = rel_err(a, r64[k])
            if dtype == np.float64:
                bound = 1e-10
            else:
                floor = 4 * EPS32 * np.sqrt(max(1.0, reduction_rows / 64))
                bound = 2 * max(scale32[i, k], floor)
            record_error(dtype, f"{label} {group} {k}", err, bound)
            assert err <= bound, f"{label}: {group} {k}: error {err:.3e} > bound {bound:.3e}"
    return nat_out, nat_grad


# FUSEDRNN_TEST_SEED varies the data of the sweep (the bounds must hold for any seed).
seed = int(os.environ.get("FUSEDRNN_TEST_SEED", "0"))
SWEEP = list(itertools.product(CELLS, [1, 7], [1, 3, 5], [1, 17, 33], ["f32", "f64"],
                               [False, True], [False, True]))


def dtype_of(dt):
    return np.float32 if dt == "f32" else np.float64


# --- the cases (each a plain function: the forced-path tests below re-run them) -------------

def case_sweep(cell, T, B, H, dt, ragged, reverse, backend="cpu"):
    dtype = dtype_of(dt)
    I = 5  # != H everywhere in the sweep
    rng = np.random.default_rng(zlib.crc32(f"{cell}-{T}-{B}-{H}-{seed}".encode()))
    case = make_case(cell, T, B, I, H, dtype, rng)
    lengths = ragged_lengths(T, B) if ragged else None
    out, grad = compare(case, dtype, lengths, reverse, f"{cell} T={T} B={B} H={H} {dt}",
                        backend=backend)
    if ragged:
        for b, L in enumerate(lengths):
            assert not out["y"][L:, b].any(), "outputs past a sequence's length must be 0"
            assert not grad["x"][L:, b].any(), "dx past a sequence's length must be 0"


def case_no_bias(cell, dt, reverse, backend="cpu"):
    dtype = dtype_of(dt)
    rng = np.random.default_rng(7)
    case = make_case(cell, 6, 4, 3, 9, dtype, rng, bias=False, states=False)
    _, grad = compare(case, dtype, np.array([6, 2, 6, 1]), reverse, f"{cell} no-bias {dt}",
                      backend=backend)
    assert "bias_ih" not in grad and "bias_hh" not in grad


def case_threaded(cell, dt, ragged, reverse, backend="cpu"):
    """H = 70 gives two loop threads (>= 32 units each), with uneven unit and projection
    (P = 36) blocks; the sweep (H <= 33) runs the loop on one thread."""
    import fusedrnn
    dtype = dtype_of(dt)
    old = fusedrnn.get_num_threads()
    try:
        fusedrnn.set_num_threads(2)
        rng = np.random.default_rng(zlib.crc32(f"threaded-{cell}-{seed}".encode()))
        case = make_case(cell, 7, 5, 9, 70, dtype, rng)
        lengths = np.array([7, 2, 1, 7, 4]) if ragged else None
        compare(case, dtype, lengths, reverse, f"{cell} threaded {dt}", backend=backend)
    finally:
        fusedrnn.set_num_threads(old)


def case_long(cell, dt, backend="cpu"):
    """The input projection runs on dot_gemm up to 256 T*B rows and on the BLAS above; the
    step on dot_gemm below B = 4 and on packed panels from there. T*B = 40, 120 and 320."""
    import fusedrnn
    dtype = dtype_of(dt)
    old = fusedrnn.get_num_threads()
    try:
        fusedrnn.set_num_threads(2)
        for B in (1, 3, 8):
            rng = np.random.default_rng(zlib.crc32(f"long-{cell}-{B}-{seed}".encode()))
            case = make_case(cell, 40, B, 19, 66, dtype, rng)
            # Contractive recurrent weights: over 40 steps the sweep's scale is chaotic and the
            # float32 error scale (and float64's distance from its bound) would grow with it.
            for k in ("w_hh", "w_hr"):
                if case[k] is not None:
                    case[k] = case[k] * (1.5 / np.sqrt(case[k].shape[1]))
            lengths = None if B == 1 else np.array([40, 23, 1, 40, 7, 40, 39, 2][:B])
            compare(case, dtype, lengths, False, f"{cell} long B={B} {dt}",
                    reduction_rows=40 * B, backend=backend)
    finally:
        fusedrnn.set_num_threads(old)


DTS = ["f32", "f64"]
NO_BIAS = list(itertools.product(CELLS, DTS, [False, True]))
THREADED = [(c, d, g, r) for c, d in itertools.product(CELLS, DTS)
            for g, r in [(False, False), (True, False), (True, True)]]
LONG = list(itertools.product(CELLS, DTS))
# Groups of cases the forced-path tests re-run: case function and argument tuples.
GROUPS = {
    "sweep_T7": (case_sweep, [p for p in SWEEP if p[1] == 7]),
    "no_bias": (case_no_bias, NO_BIAS),
    "threaded": (case_threaded, THREADED),
    "long": (case_long, LONG),
}


def run_group(group, backend, what):
    fn, cases = GROUPS[group]
    for args in cases:
        try:
            fn(*args, backend=backend)
        except AssertionError as e:
            raise AssertionError(f"{what}: {fn.__name__}{args}: {e}") from e


# --- the sweep and its companions ---------------------------------------------------------------

@pytest.mark.parametrize("cell,T,B,H,dt,ragged,reverse", SWEEP,
                         ids=["-".join(map(str, p)) for p in SWEEP])
def test_native_matches_reference(cell, T, B, H, dt, ragged, reverse, backend):
    case_sweep(cell, T, B, H, dt, ragged, reverse, backend)


@pytest.mark.parametrize("cell,dt,reverse", NO_BIAS)
def test_no_bias_no_initial_state(cell, dt, reverse, backend):
    case_no_bias(cell, dt, reverse, backend)


@pytest.mark.parametrize("cell", CELLS)
def test_inference_equals_training_forward(cell, backend):
    rng = np.random.default_rng(3)
    case = cast(make_case(cell, 9, 3, 4, 16, np.float32, rng), np.float32)
    lengths = np.array([9, 4, 1])
    for reverse in (False, True):
        tr_out, _ = run(F, case, lengths, reverse, training=True, backend=backend)
        inf_out, _ = run(F, case, lengths, reverse, training=False, backend=backend)
        for k in tr_out:
            np.testing.assert_array_equal(tr_out[k], inf_out[k])


def test_inference_returns_no_context(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    w = lambda *s: to_backend(rng.standard_normal(s).astype(np.float32), backend)
    *_, ctx = F.lstm_forward(to_backend(x, backend), w(8, 4), w(8, 2), training=False)
    assert ctx is None
    with pytest.raises(TypeError, match="ctx"):
        F.lstm_backward(ctx, None)


def test_backward_is_repeatable_and_matches_on_reuse(backend):
    """A context can be used for backward twice (no hidden state consumed)."""
    rng = np.random.default_rng(5)
    case = cast(make_case("gru", 5, 3, 4, 8, np.float64, rng), np.float64)
    c = {k: to_backend(v, backend) for k, v in case.items()}
    y, h, ctx = F.gru_forward(c["x"], c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"], c["h0"])
    g1 = F.gru_backward(ctx, c["dy"], c["dh_n"])
    g2 = F.gru_backward(ctx, c["dy"], c["dh_n"])
    for k in g1:
        np.testing.assert_array_equal(to_numpy(g1[k]), to_numpy(g2[k]))


def test_none_output_gradients_mean_zero(backend):
    rng = np.random.default_rng(6)
    case = cast(make_case("lstm", 4, 2, 3, 5, np.float64, rng), np.float64)
    c = {k: to_backend(v, backend) for k, v in case.items()}
    *_, ctx = F.lstm_forward(c["x"], c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"], c["h0"],
                             c["c0"])
    g_none = F.lstm_backward(ctx, None, None, None)
    zeros = F.lstm_backward(ctx, *(to_backend(np.zeros(s), backend)
                                   for s in ((4, 2, 5), (2, 5), (2, 5))))
    for k in g_none:
        np.testing.assert_array_equal(to_numpy(g_none[k]), to_numpy(zeros[k]))
        assert not to_numpy(g_none[k]).any()
    g_dc = F.lstm_backward(ctx, None, None, c["dc_n"])
    r = ref.lstm_backward(ref.lstm_forward(case["x"], case["w_ih"], case["w_hh"], case["b_ih"],
                                           case["b_hh"], case["h0"], case["c0"])[3],
                          None, None, case["dc_n"])
    for k in r:
        np.testing.assert_allclose(to_numpy(g_dc[k]), r[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_agree(threads, backend):
    import fusedrnn
    old = fusedrnn.get_num_threads()
    try:
        fusedrnn.set_num_threads(threads)
        assert fusedrnn.get_num_threads() == threads
        rng = np.random.default_rng(11)
        case = cast(make_case("lstm", 6, 16, 32, 64, np.float64, rng), np.float64)
        compare(case, np.float64, np.array([6, 3] * 8), False, f"lstm threads={threads}",
                backend=backend)
    finally:
        fusedrnn.set_num_threads(old)


@pytest.mark.parametrize("cell,dt,ragged,reverse", THREADED)
def test_native_threaded_time_loop(cell, dt, ragged, reverse, backend):
    case_threaded(cell, dt, ragged, reverse, backend)


@pytest.mark.parametrize("cell,dt", LONG)
def test_long_sequence_projection_paths(cell, dt, backend):
    case_long(cell, dt, backend)


# --- every kernel path, in this process ---------------------------------------------------------

@pytest.mark.parametrize("group", ["threaded", "no_bias", "sweep_T7"])
@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_other_instruction_sets(isa, group, tuning, backend):
    """The kernels are built per instruction set and picked at run time; the suite above runs
    the best one this CPU has. Re-run the threaded, unbiased and T=7 sweep cases on the others
    (one the CPU lacks is skipped)."""
    import fusedrnn
    if backend != "cpu":
        pytest.skip("instruction sets are a CPU-kernel choice")
    if isa not in tuning.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    assert tuning.isa(isa) == isa
    assert fusedrnn.config()["simd_path"] == isa
    run_group(group, backend, f"isa={isa}")


# Each forced path as the environment variables that also set it (tests/run_sanitizers.sh
# recognises the poisoned re-runs by the parameter `env`); the test sets the knobs in-process.
KNOB_OF_ENV = {"FUSEDRNN_DOT_PROJ_ROWS": "dot_projection_max_rows",
               "FUSEDRNN_PANEL_MIN_ROWS": "panel_min_rows",
               "FUSEDRNN_POISON_WORKSPACE": "poison_workspace"}
FORCED = [{"FUSEDRNN_DOT_PROJ_ROWS": "0"},      # every input projection on the BLAS
          {"FUSEDRNN_PANEL_MIN_ROWS": "1"},     # every step on packed panels (B >= 1)
          {"FUSEDRNN_PANEL_MIN_ROWS": "1000"},  # every step on dot_gemm
          {"FUSEDRNN_POISON_WORKSPACE": "1"},   # workspaces filled with NaN patterns first
          {"FUSEDRNN_POISON_WORKSPACE": "1", "FUSEDRNN_PANEL_MIN_ROWS": "1000"}]


@pytest.mark.parametrize("group", ["threaded", "long", "sweep_T7"])
@pytest.mark.parametrize("env", FORCED, ids=["-".join(f"{KNOB_OF_ENV[k]}={v}" for k, v in f.items())
                                             for f in FORCED])
def test_forced_kernel_paths(env, group, tuning, backend):
    """Re-run the threaded, long-sequence and T=7 sweep cases with the crossovers forced:
    every projection on the BLAS, every step on panels (B >= 1), every step on dot_gemm; and
    with every workspace filled with NaN patterns first (workspaces are reused between calls:
    a kernel that reads one before writing it would otherwise pass or fail by chance)."""
    if backend != "cpu":
        pytest.skip("CPU-kernel crossovers")
    tuning.set(**{KNOB_OF_ENV[k]: int(v) for k, v in env.items()})
    run_group(group, backend, f"knobs={env}")


def test_environment_variables_set_the_knobs():
    """FUSEDRNN_ISA and the tuning variables still set the initial values (read at first use),
    and a run under them is right: one small subprocess."""
    import json
    import subprocess
    import sys

    isa = "generic"
    env = dict(os.environ, FUSEDRNN_ISA=isa, FUSEDRNN_PANEL_MIN_ROWS="1000",
               FUSEDRNN_DOT_PROJ_ROWS="0", FUSEDRNN_POISON_WORKSPACE="1")
    probe = ("import json, fusedrnn; t = fusedrnn._C._testing; print(json.dumps(dict("
             "isa=t.get_isa(), path=fusedrnn.config()['simd_path'], "
             "knobs={n: t.get_tuning(n) for n in t.tuning_info()})))")
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["isa"] == got["path"] == isa
    assert got["knobs"] == {"panel_min_rows": 1000, "dot_projection_max_rows": 0,
                            "poison_workspace": 1}
    # The variables drive the kernels: a few sweep cases under them, in that process.
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        __file__, "-k", "matches_reference and (lstm-7-3-17 or gru_v1-7-5-33)"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "16 passed," in r.stdout, r.stdout[-2000:]  # f32 and f64 of each


def test_release_workspaces_keeps_results(backend):
    """Workspaces are reused between calls; releasing them changes nothing but memory."""
    import fusedrnn
    rng = np.random.default_rng(5)
    case = cast(make_case("lstm", 6, 3, 7, 40, np.float32, rng), np.float32)
    first = run(F, case, None, False, backend=backend)
    fusedrnn.release_workspaces()
    again = run(F, case, None, False, backend=backend)
    for a, b in zip(first, again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
