"""Concurrent calls from Python threads (the bindings release the GIL around native work) give
bit for bit the results of the same calls made one after the other, in float32 and float64:
* two modules, one per thread, training forward + backward on distinct inputs;
* one module shared by two threads: inference calls, and functional training calls on its
  weights with a context per call. (Training calls through ONE NumPy module race on purpose:
  the module keeps its last training forward's context for backward, so two threads training
  one module would each backpropagate through whichever forward came last. Concurrent training
  needs a context per caller: the functional API, or a module per thread.)
* the same in a child forked after multi-threaded use, where calls from the forking thread run
  on a helper thread (csrc/cpu/runtime.cpp) and calls from other threads do not.
Both threads start together at a barrier and repeat their calls, so the native parts overlap.
"""

import os
import pickle
import threading

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional as F

REPEATS = 4
DTYPES = [np.float32, np.float64]


def run_threads(fns):
    """Runs each fn on its own thread, all released together, REPEATS times; returns each fn's
    results of every repeat."""
    start = threading.Barrier(len(fns))
    results = [[] for _ in fns]
    errors = []

    def body(i):
        try:
            start.wait()
            for _ in range(REPEATS):
                results[i].append(fns[i]())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish (hang)"
    assert not errors, errors
    return results


def assert_same(a, b, what):
    """Nested tuples/lists/dicts of arrays, bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_same(a[k], b[k], f"{what}[{k}]")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{what}[{i}]")
    elif a is None:
        assert b is None, what
    else:
        np.testing.assert_array_equal(a, b, err_msg=what)
        assert np.asarray(a).dtype == np.asarray(b).dtype, what


def module_training_step(m, x, dy):
    m.zero_grad()
    y, hx = m(x)
    dx, dhx = m.backward(dy)
    return y, hx, dx, dhx, {k: v.copy() for k, v in m.grads.items()}


def two_module_work(dtype, seed=0):
    """Two (module, input) pairs of different kinds and sizes: the calls to run at once."""
    rng = np.random.default_rng(seed)
    a = fusedrnn.LSTM(6, 40, num_layers=2, bidirectional=True, dtype=dtype, seed=1).train()
    b = fusedrnn.GRU(5, 36, num_layers=2, dtype=dtype, seed=2).train()
    xa = rng.standard_normal((9, 4, 6)).astype(dtype)
    xb = rng.standard_normal((11, 3, 5)).astype(dtype)
    dya = rng.standard_normal((9, 4, 80)).astype(dtype)
    dyb = rng.standard_normal((11, 3, 36)).astype(dtype)
    return [lambda: module_training_step(a, xa, dya), lambda: module_training_step(b, xb, dyb)]


def one_module_work(dtype, seed=0):
    """One module; two threads: inference through it, and functional training on its weights
    with a context per call (distinct inputs)."""
    rng = np.random.default_rng(seed)
    m = fusedrnn.LSTM(7, 48, dtype=dtype, seed=3)  # eval mode: inference calls
    w = [m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0]
    x1 = rng.standard_normal((8, 5, 7)).astype(dtype)
    x2 = rng.standard_normal((10, 2, 7)).astype(dtype)
    dy2 = rng.standard_normal((10, 2, 48)).astype(dtype)

    def infer():
        return m(x1)

    def train():
        y, h, c, ctx = F.lstm_forward(x2, *w, training=True)
        return y, h, c, F.lstm_backward(ctx, dy2)

    return [infer, train, infer]


def check_concurrent_equals_serial(make_work, dtype):
    serial = [fn() for fn in make_work(dtype)]
    concurrent = run_threads(make_work(dtype))
    for i, reps in enumerate(concurrent):
        for r, got in enumerate(reps):
            assert_same(serial[i], got, f"thread {i} repeat {r}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_two_modules_two_threads_training(dtype):
    check_concurrent_equals_serial(two_module_work, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_one_module_shared_by_threads(dtype):
    check_concurrent_equals_serial(one_module_work, dtype)


def test_threads_in_a_forked_child():
    """After multi-threaded use in this process, fork; in the child, the forking thread (its
    calls go through the fork helper) and a new thread run the training and shared-module
    work at once. The child's results must equal this process's serial ones."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    old = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(2)
    try:
        work = {(w.__name__, np.dtype(d).name): (w, d)
                for w in (two_module_work, one_module_work) for d in DTYPES}
        serial = {k: [fn() for fn in w(d)] for k, (w, d) in work.items()}  # multi-threaded use
        rd, wr = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns into pytest
            status = 0
            try:
                os.close(rd)
                out = {}
                for k, (w, d) in work.items():
                    fns = w(d)
                    start = threading.Barrier(2)
                    res = [None] * len(fns)

                    def other():  # every fn but the first, on a new thread
                        start.wait()
                        for i in range(1, len(fns)):
                            res[i] = [fns[i]() for _ in range(REPEATS)]

                    t = threading.Thread(target=other)
                    t.start()
                    start.wait()
                    res[0] = [fns[0]() for _ in range(REPEATS)]  # on the forking thread
                    t.join(120)
                    if t.is_alive():
                        raise RuntimeError("thread in the child did not finish")
                    out[k] = res
                payload = pickle.dumps(("ok", out))
            except BaseException as e:  # noqa: BLE001 - sent to the parent
                payload = pickle.dumps(("error", repr(e)))
                status = 1
            try:
                with os.fdopen(wr, "wb") as f:
                    f.write(payload)
            finally:
                os._exit(status)
        os.close(wr)
        with os.fdopen(rd, "rb") as f:
            data = f.read()
        _, code = os.waitpid(pid, 0)
        kind, out = pickle.loads(data)
        assert kind == "ok" and code == 0, out
        for k, reps_per_fn in out.items():
            for i, reps in enumerate(reps_per_fn):
                for r, got in enumerate(reps):
                    assert_same(serial[k][i], got, f"child {k} fn {i} repeat {r}")
    finally:
        fusedrnn.set_num_threads(old)
