"""No silent wrong answer, no hang: regression tests for what a new user hit from outside the
package (OpenMP team sizes, fork, double backward, thread and memory caps, NaN padding, stale
training state, unaligned arrays, empty batches) and the concurrency guarantees.

Checks that need their own process (OpenMP environment read at start-up, fork, 1024 threads,
resident memory) run tests/_reliability_child.py in a subprocess with a timeout: a hang fails
by the timeout, a crash by the return code.
"""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional as F
from fusedrnn import optim
from fusedrnn import reference as ref

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_reliability_child.py")


def run_child(*args, env=None, timeout=120):
    full_env = dict(os.environ, **(env or {}))
    try:
        r = subprocess.run([sys.executable, CHILD, *args], env=full_env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(args)} {env or ''}: no answer in {timeout} s (hang)\n"
                    f"{(e.stdout or b'')[-2000:]!r}")
    assert r.returncode in (0, 1), (f"{' '.join(args)}: exit {r.returncode} (crash)\n"
                                    f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, r.stdout[-2000:] + r.stderr[-3000:]
    facts = json.loads(lines[-1])
    assert facts["ok"], f"{' '.join(args)} {env or ''}: {facts}\n{r.stderr[-2000:]}"
    return facts


# --- 1. OpenMP grants fewer threads than asked ----------------------------------------------

@pytest.mark.parametrize("env", [
    {"OMP_THREAD_LIMIT": "1"},                                  # a team of one
    {"OMP_THREAD_LIMIT": "3", "FUSEDRNN_TEST_THREADS": "4"},    # fewer than asked, not one
    {"OMP_DYNAMIC": "true"},                                    # teams sized by the load
], ids=["thread-limit-1", "thread-limit-3-of-4", "dynamic"])
def test_results_right_when_openmp_grants_fewer_threads(env):
    """Before: the work was split over the requested count, so units went uncomputed and
    stale workspace was read (OMP_THREAD_LIMIT=1: max error 8e+294 on an LSTM forward)."""
    run_child("team", env=env)


def test_results_right_from_inside_an_openmp_region():
    """A call from inside another parallel region gets a one-thread team (error 0.53 before)."""
    run_child("team", "--nested")


# --- 2. double backward through the torch adapter --------------------------------------------

def _torch_lstm_pair():
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as ft
    torch.manual_seed(0)
    ours = ft.LSTM(4, 6).double()
    theirs = torch.nn.LSTM(4, 6).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.double)
    return torch, ours, theirs, x


def test_double_backward_keeps_every_term():
    """Before: no error, and the d.pow(2) term was left out of the weight gradient. Now the
    second-order gradient is torch.nn's (tests/test_torch_double_backward.py: gradgradcheck)."""
    torch, ours, theirs, x0 = _torch_lstm_pair()
    got = []
    for m in (ours, theirs):
        m.zero_grad()
        x = x0.clone().requires_grad_()
        y, _ = m(x)
        d, = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
        (y.sum() + d.pow(2).sum()).backward()
        dd = torch.autograd.grad(torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)[0]
                                 .pow(2).sum(), m.weight_hh_l0)[0]
        got.append((m.weight_hh_l0.grad.clone(), x.grad.clone(), dd))
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_double_backward_of_the_original_gru_raises():
    """reset_after=False has no torch.nn counterpart to differentiate: a clear error, not a
    silently dropped term."""
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as ft
    m = ft.GRU(3, 4, reset_after=False).double()
    x = torch.randn(5, 2, 3, dtype=torch.double, requires_grad=True)
    y, _ = m(x)
    d, = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
    with pytest.raises(RuntimeError, match="reset_after=False"):
        (y.sum() + d.pow(2).sum()).backward()


def test_create_graph_first_order_values_unchanged():
    """create_graph=True alone is fine: the first-order gradients are the usual ones."""
    torch, ours, theirs, x0 = _torch_lstm_pair()
    grads = []
    for m in (ours, theirs):
        x = x0.clone().requires_grad_()
        y, (h, c) = m(x)
        d, = torch.autograd.grad((y * y).sum() + c.sum(), x, create_graph=True)
        grads.append(d.detach())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


# --- 3. fork, spawn, forkserver, DataLoader --------------------------------------------------

@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_child_processes_after_multithreaded_use(method):
    """Before, with fork: the child's first multi-threaded call waited forever in GOMP."""
    run_child("start-method", method, timeout=180)


def test_fork_while_another_thread_is_inside_fusedrnn():
    """100 forks taken while a second thread runs fusedrnn; each child makes a call on the
    forking thread and on a new thread (before: hangs on the OpenMP pool, and now and then on
    the workspace pool's lock left held by the thread that no longer exists)."""
    facts = run_child("fork-race", "--forks", "100", timeout=240)
    assert facts["forks"] == 100


def test_torch_dataloader_fork_workers():
    pytest.importorskip("torch")
    run_child("dataloader", timeout=180)


# --- 4. thread-count cap ----------------------------------------------------------------------

def test_thread_count_is_capped():
    """Before: set_num_threads(100000) segfaulted and 40000 aborted the process."""
    facts = run_child("max-threads", env={"OMP_NUM_THREADS": "100000"}, timeout=180)
    assert facts["initial"] == fusedrnn._C.MAX_THREADS == 1024


def test_set_num_threads_rejects_out_of_range():
    for n in (0, -1, 1025, 100000):
        with pytest.raises(ValueError, match=r"\[1, 1024\]"):
            fusedrnn.set_num_threads(n)
    with pytest.raises(TypeError):
        fusedrnn.set_num_threads(2.0)


# --- 5. workspace pool cap --------------------------------------------------------------------

def test_workspace_larger_than_the_idle_cap_is_not_kept():
    """Before: one call with a 1 GiB workspace left +1021 MiB resident."""
    facts = run_child("big-workspace", timeout=180)
    assert facts["rss_growth_mib"] < 256


# --- 6. NaN/inf: padding, dropout, saturated gates --------------------------------------------

def _padded_stack(rng, fill):
    T, B, I, H = 6, 3, 4, 5
    x = rng.standard_normal((T, B, I))
    lengths = np.array([6, 2, 4])
    for b in range(B):
        x[lengths[b]:, b] = fill
    params = {"weight_ih_l0": rng.uniform(-.5, .5, (4 * H, I)),
              "weight_hh_l0": rng.uniform(-.5, .5, (4 * H, H)),
              "bias_ih_l0": rng.uniform(-.5, .5, 4 * H), "bias_hh_l0": rng.uniform(-.5, .5, 4 * H)}
    return x, lengths, params


@pytest.mark.parametrize("fill", [np.nan, np.inf])
@pytest.mark.parametrize("bidir", [False, True])
def test_nonfinite_padding_does_not_reach_the_gradients(fill, bidir):
    """NaN padding past a sequence's length: before, dW_ih was all NaN (0 * NaN in the bulk
    GEMM over all T*B rows). The result must equal zero padding exactly, as in the reference."""
    results = []
    for pad in (fill, 0.0):
        x, lengths, params = _padded_stack(np.random.default_rng(0), pad)
        if bidir:
            params.update({k + "_reverse": v.copy() for k, v in params.items()})
        y, h, c, ctx = F.stack_forward("lstm", x, params, lengths=lengths, bidirectional=bidir)
        dx, dh0, dc0, g = F.stack_backward(ctx, np.ones_like(y))
        ry, _, _, rctx = ref.stack_forward("lstm", x, params, lengths=lengths,
                                           bidirectional=bidir)
        rg = ref.stack_backward(rctx, np.ones_like(ry))[3]
        for k in g:
            assert np.isfinite(g[k]).all() and np.isfinite(rg[k]).all(), k
            np.testing.assert_allclose(g[k], rg[k], rtol=1e-10, atol=1e-12)
        results.append(g)
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k])


def test_nonfinite_padding_single_layer_functional():
    x, lengths, params = _padded_stack(np.random.default_rng(1), np.nan)
    *_, ctx = F.lstm_forward(x, params["weight_ih_l0"], params["weight_hh_l0"], lengths=lengths)
    g = F.lstm_backward(ctx, np.ones((6, 3, 5)))
    assert np.isfinite(g["weight_ih"]).all() and np.isfinite(g["x"]).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_dropout_keeps_nan_and_inf_visible():
    """Before: a dropped inf/NaN activation became 0 (hiding divergence); torch and the
    reference multiply by the mask, so 0 * inf = NaN. Compared with the reference given the
    kernel's own masks, the non-finite pattern must agree exactly, forward and backward."""
    rng = np.random.default_rng(3)
    T, B, I, H = 4, 3, 2, 1  # one unit: a dropped position drops the whole activation
    params = {f"weight_{k}_l{l}": rng.uniform(0.5, 1.0, (H, I if (l == 0 and k == "ih") else H))
              for l in range(2) for k in ("ih", "hh")}
    x = rng.uniform(0.5, 1.0, (T, B, I))
    x[1, 2, 0] = np.inf  # layer 0's relu output is inf from step 1 of sequence 2 on
    for seed in range(50):
        y, _, _, ctx = F.stack_forward("rnn_relu", x, params, num_layers=2, dropout=0.5,
                                       seed=seed)
        keep = ctx.keep_masks[0]
        if not keep[1:, 2].all():  # at least one inf activation dropped
            break
    masks = [keep.astype(np.float64) / 0.5]
    ry, _, _, rctx = ref.stack_forward("rnn_relu", x, params, num_layers=2, dropout_masks=masks)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ry))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ry))
    dy = np.ones_like(y)
    dy[2, 2, 0] = np.nan
    dx = F.stack_backward(ctx, dy)[0]
    rdx = ref.stack_backward(rctx, dy)[0]
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(rdx))


def test_saturated_gates_have_the_reference_gradients_in_float32():
    """sigmoid(-huge) is exactly 0, as in the reference: before, a 4e-39 floor times a huge
    cell state gave a forget-gate gradient of 0.42 (1e21 elsewhere) where the float32
    reference gives 0."""
    x = np.ones((1, 1, 1), np.float32)
    w_ih = np.array([[0], [-1e4], [0], [0]], np.float32)  # forget gate pre-activation -1e4
    w_hh = np.zeros((4, 1), np.float32)
    c0 = np.full((1, 1), 1e38, np.float32)
    dc_n = np.ones((1, 1), np.float32)
    *_, ctx = F.lstm_forward(x, w_ih, w_hh, c0=c0)
    g = F.lstm_backward(ctx, None, None, dc_n)
    *_, rctx = ref.lstm_forward(x, w_ih, w_hh, c0=c0)
    rg = ref.lstm_backward(rctx, None, None, dc_n)
    for k in ("weight_ih", "x", "c0"):
        np.testing.assert_allclose(g[k], rg[k], rtol=1e-5, atol=1e-30, err_msg=k)


# --- 7. stale training state ------------------------------------------------------------------

def _trained_lstm():
    m = fusedrnn.LSTM(3, 5, num_layers=2, seed=0).train()
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    return m, x


def test_backward_after_an_optimizer_step_raises():
    m, x = _trained_lstm()
    y, _ = m(x)
    m.backward(np.ones_like(y))
    m.backward(np.ones_like(y))  # backward twice on one forward accumulates: allowed
    optim.SGD(m, lr=0.1).step()
    with pytest.raises(RuntimeError, match="'weight_ih_l0' was modified"):
        m.backward(np.ones_like(y))
    y, _ = m(x)  # a new forward is fine again
    m.backward(np.ones_like(y))


def test_backward_after_load_state_dict_or_input_change_raises():
    m, x = _trained_lstm()
    y, _ = m(x)
    sd = m.state_dict()
    sd["weight_hh_l1"] = sd["weight_hh_l1"] * 2
    m.load_state_dict(sd)
    with pytest.raises(RuntimeError, match="'weight_hh_l1' was modified"):
        m.backward(np.ones_like(y))
    y, _ = m(x)
    x[0, 0, 0] += 1  # the caller reuses its input buffer
    with pytest.raises(RuntimeError, match="'x' was modified"):
        m.backward(np.ones_like(y))
    grads_before = {k: v.copy() for k, v in m.grads.items()}
    for k in grads_before:  # the failed backward changed nothing
        np.testing.assert_array_equal(grads_before[k], m.grads[k])


def test_cell_and_functional_backward_after_parameter_change_raise():
    cell = fusedrnn.LSTMCell(3, 5, seed=0).train()
    x = np.ones((2, 3), np.float32)
    h, c = cell(x)
    cell.weight_hh[0, 0] += 1
    with pytest.raises(RuntimeError, match="'w_hh' was modified"):
        cell.backward(np.ones_like(h))
    rng = np.random.default_rng(0)
    w_ih, w_hh = rng.standard_normal((3, 2)), rng.standard_normal((3, 3))
    y, _, ctx = F.rnn_forward(rng.standard_normal((2, 1, 2)), w_ih, w_hh)
    w_ih -= 0.1
    with pytest.raises(RuntimeError, match="'w_ih' was modified"):
        F.rnn_backward(ctx, np.ones_like(y))


def test_check_inplace_false_skips_the_stamps():
    """The documented opt-out (the torch adapter relies on autograd's version counters)."""
    rng = np.random.default_rng(0)
    params = {"weight_ih_l0": rng.standard_normal((3, 2)),
              "weight_hh_l0": rng.standard_normal((3, 3))}
    y, _, _, ctx = F.stack_forward("rnn_tanh", rng.standard_normal((2, 1, 2)), params,
                                   check_inplace=False)
    params["weight_hh_l0"] *= 2
    F.stack_backward(ctx, np.ones_like(y))  # no check: the caller's responsibility


# --- 8. layouts and lengths that must not be read as they are ---------------------------------

def unaligned(a):
    """A copy of `a` at a 1-byte offset: valid NumPy, not aligned for its dtype."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def test_unaligned_arrays_give_the_aligned_results():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    w_ih = rng.standard_normal((20, 4)).astype(np.float32) * 0.3
    w_hh = rng.standard_normal((20, 5)).astype(np.float32) * 0.3
    want = F.lstm_forward(x, w_ih, w_hh, lengths=np.array([5, 2, 3]))
    got = F.lstm_forward(unaligned(x), unaligned(w_ih), unaligned(w_hh),
                         lengths=unaligned(np.array([5, 2, 3])))
    for a, b in zip(want[:3], got[:3]):
        np.testing.assert_array_equal(a, b)
    params = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh}
    *_, ctx = F.stack_forward("lstm", x, params)
    grads = {k: unaligned(np.zeros_like(v)) for k, v in params.items()}
    with pytest.raises(ValueError, match="aligned"):
        F.stack_backward(ctx, np.ones((5, 3, 5), np.float32), grads=grads)


def test_huge_unsigned_lengths_are_reported_as_given():
    x = np.zeros((3, 2, 1))
    w = np.zeros((4, 1))
    with pytest.raises(ValueError, match=r"lengths\[1\] = 9223372036854775813"):
        F.rnn_forward(x, w[:1], w[:1, :1], lengths=np.array([1, 2**63 + 5], np.uint64))


# --- 9. empty batch ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_torch_adapter_empty_batch_like_torch(mode):
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as ft
    out = []
    for lib in (torch.nn, ft):
        torch.manual_seed(0)
        m = getattr(lib, mode)(3, 5, num_layers=2, bidirectional=True)
        x = torch.randn(4, 0, 3, requires_grad=True)
        y, h = m(x)
        h = h[0] if mode == "LSTM" else h
        (y.sum() + h.sum()).backward()
        out.append((tuple(y.shape), tuple(h.shape), tuple(x.grad.shape),
                    [p.grad.abs().sum().item() for p in m.parameters()]))
    assert out[0] == out[1]


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_torch_adapter_cells_empty_batch(cell):
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as ft
    m = getattr(ft, cell)(3, 5)
    h = m(torch.randn(0, 3, requires_grad=True))
    h = h[0] if isinstance(h, tuple) else h
    assert tuple(h.shape) == (0, 5)
    h.sum().backward()
    assert all(float(p.grad.abs().sum()) == 0 for p in m.parameters())


def test_numpy_modules_empty_batch():
    m = fusedrnn.GRU(3, 4, num_layers=2, seed=0).train()
    y, h = m(np.zeros((5, 0, 3), np.float32))
    assert y.shape == (5, 0, 4) and h.shape == (2, 0, 4)
    dx, dh0 = m.backward(np.zeros_like(y))
    assert dx.shape == (5, 0, 3) and all(not g.any() for g in m.grads.values())


# --- concurrency ------------------------------------------------------------------------------

def test_python_threads_bit_for_bit():
    """Several Python threads on one module (inference) and on one module each (training),
    at once: every result bit for bit what a single-threaded run gives."""
    rng = np.random.default_rng(4)
    shared = fusedrnn.LSTM(8, 48, num_layers=2, bidirectional=True, seed=1)
    xs = [rng.standard_normal((7, 5, 8)).astype(np.float32) for _ in range(4)]
    own = [fusedrnn.GRU(8, 40, seed=i).train() for i in range(4)]

    def work(i):
        y, _ = shared(xs[i])
        yo, _ = own[i](xs[i])
        dx, _ = own[i].backward(np.ones_like(yo))
        return y, yo, dx, {k: v.copy() for k, v in own[i].grads.items()}

    serial = []
    for i in range(4):
        serial.append(work(i))
        own[i].zero_grad()
    results = [None] * 4
    errors = []

    def run(i):
        try:
            for _ in range(5):
                own[i].zero_grad()
                results[i] = work(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(4):
        for a, b in zip(serial[i][:3], results[i][:3]):
            np.testing.assert_array_equal(a, b)
        for k in serial[i][3]:
            np.testing.assert_array_equal(serial[i][3][k], results[i][3][k])


# --- found by the fuzz test (tests/test_fuzz.py) ---------------------------------------------

def test_rejected_cell_backward_leaves_the_cell_unchanged():
    """A backward rejected for a bad dh used to pop the step's context anyway: the next,
    valid backward then ran through the wrong step."""
    cell = fusedrnn.LSTMCell(2, 3, seed=0).train()
    x = np.ones((1, 2), np.float32)
    h1, c1 = cell(x)
    h2, c2 = cell(x, (h1, c1))
    with pytest.raises((ValueError, TypeError)):
        cell.backward(np.ones((1, 3), np.float16))
    dx, (dh, dc) = cell.backward(np.ones_like(h2))  # still step 2
    ref_cell = fusedrnn.LSTMCell(2, 3, seed=0).train()
    ref_cell(x)
    ref_cell(x, (h1, c1))
    want = ref_cell.backward(np.ones_like(h2))
    np.testing.assert_array_equal(dh, want[1][0])


def test_empty_batch_keep_masks_and_lengths():
    params = {"weight_ih_l0": np.ones((2, 1)), "weight_hh_l0": np.ones((2, 2)),
              "weight_ih_l1": np.ones((2, 2)), "weight_hh_l1": np.ones((2, 2))}
    x = np.zeros((3, 0, 1))
    *_, ctx = F.stack_forward("rnn_tanh", x, params, num_layers=2, dropout=0.5, lengths=[])
    (mask,) = ctx.keep_masks
    assert mask.shape == (3, 0, 2) and mask.dtype == bool


def test_unbatched_backward_with_a_bad_state_gradient_is_a_value_error():
    m = fusedrnn.GRU(2, 3, seed=0).train()
    y, h = m(np.ones((4, 2), np.float32))
    for bad in (1.0, np.float32(1.0), np.ones(3, np.float32)[None, None]):
        with pytest.raises(ValueError, match="dh_n must be 2-D"):
            m.backward(np.ones_like(y), bad)
    with pytest.raises(ValueError, match="dy must be 2-D"):
        m.backward(np.float32(1.0))


def test_torch_adapter_lstm_state_must_be_two_tensors():
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as ft
    for m, x, h in ((ft.LSTM(3, 4), torch.randn(2, 1, 3), torch.zeros(1, 1, 4)),
                    (ft.LSTMCell(3, 4), torch.randn(1, 3), torch.zeros(1, 4))):
        for hx in ((h, None), (None, h), (h.numpy(), h), (h, [0.0])):
            with pytest.raises(TypeError, match="hx must be a tuple"):
                m(x, hx)
