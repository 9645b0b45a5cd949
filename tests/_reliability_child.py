"""Subprocess half of tests/test_reliability.py: checks that need their own process (OpenMP
settings read at start-up, fork, threads left behind, resident memory). Each prints one JSON
line and exits 0 when the check holds, 1 when it does not; a hang is caught by the caller's
timeout and a crash by its return code.

    python tests/_reliability_child.py team [--nested]     # results vs the reference
    python tests/_reliability_child.py start-method fork|spawn|forkserver
    python tests/_reliability_child.py fork-race [--forks N]
    python tests/_reliability_child.py dataloader
    python tests/_reliability_child.py big-workspace
    python tests/_reliability_child.py max-threads
"""

import json
import os
import sys
import threading
import time

import numpy as np

import fusedrnn
import fusedrnn.nn
from fusedrnn import functional as F
from fusedrnn import reference as ref

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru", "gru_v1"]


def report(ok, **facts):
    print(json.dumps(dict(ok=bool(ok), **facts)), flush=True)
    sys.exit(0 if ok else 1)


def stack_case(cell, T, B, I, H, layers, bidir, seed):
    """float64 stack inputs for `cell`; hidden size H makes the time loop use H // 32 threads."""
    rng = np.random.default_rng(seed)
    mode = {"lstm_proj": "lstm", "gru_v1": "gru"}.get(cell, cell)
    G = ref.GATES[mode]
    P = H // 2 if cell == "lstm_proj" else 0
    R, D = P or H, 2 if bidir else 1
    params = {}
    for l in range(layers):
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            in_l = I if l == 0 else D * R
            params["weight_ih" + sfx] = rng.uniform(-0.3, 0.3, (G * H, in_l))
            params["weight_hh" + sfx] = rng.uniform(-0.3, 0.3, (G * H, R))
            params["bias_ih" + sfx] = rng.uniform(-0.2, 0.2, G * H)
            params["bias_hh" + sfx] = rng.uniform(-0.2, 0.2, G * H)
            if P:
                params["weight_hr" + sfx] = rng.uniform(-0.3, 0.3, (P, H))
    x = rng.standard_normal((T, B, I))
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    dy = rng.standard_normal((T, B, D * R))
    return dict(mode=mode, reset_after=cell != "gru_v1", params=params, x=x, lengths=lengths,
                dy=dy, kw=dict(num_layers=layers, bidirectional=bidir))


def stack_error(case):
    """Max relative error of the native stack (forward and every gradient) vs the reference."""
    c = case
    y, h, cn, ctx = F.stack_forward(c["mode"], c["x"], c["params"], lengths=c["lengths"],
                                    reset_after=c["reset_after"], **c["kw"])
    dx, dh0, dc0, g = F.stack_backward(ctx, c["dy"])
    ry, rh, rc, rctx = ref.stack_forward(c["mode"], c["x"], c["params"], lengths=c["lengths"],
                                         reset_after=c["reset_after"], **c["kw"])
    rdx, rdh0, rdc0, rg = ref.stack_backward(rctx, c["dy"])
    pairs = [(y, ry), (h, rh), (dx, rdx), (dh0, rdh0)] + [(g[k], rg[k]) for k in rg]
    if cn is not None:
        pairs += [(cn, rc), (dc0, rdc0)]
    return max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)) for a, b in pairs)


def team_check():
    """Every cell, panels (B = 8) and in-place GEMV (B = 2), H = 70 (two loop threads)."""
    worst = 0.0
    for cell in CELLS:
        for B in (2, 8):
            case = stack_case(cell, 6, B, 5, 70, 2, True, seed=B)
            worst = max(worst, stack_error(case))
    return worst


def cmd_team(args):
    fusedrnn.set_num_threads(int(os.environ.get("FUSEDRNN_TEST_THREADS", "2")))
    if "--nested" in args:
        # From inside another OpenMP parallel region (as a user's prange or torch's intra-op
        # pool would call it): OpenMP then gives fusedrnn's regions one thread each.
        import ctypes
        gomp = ctypes.CDLL("libgomp.so.1")
        result = []
        body = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(
            lambda _: result.append(team_check()) if gomp.omp_get_thread_num() == 0 else None)
        gomp.GOMP_parallel(body, None, 2, 0)
        worst = result[0]
    else:
        worst = team_check()
    report(worst < 1e-9, max_rel_error=worst)


def _model_and_input():
    m = fusedrnn.LSTM(16, 96, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((12, 8, 16)).astype(np.float32)
    return m, x


def _linear():
    """nn.Linear's GEMM on fusedrnn's threads (a parallel region of its own)."""
    lin = fusedrnn.nn.Linear(96, 96, seed=0)
    return lin(np.ones((96, 96), np.float32))


def _child_run(queue):
    fusedrnn.set_num_threads(2)  # as the parent: the same split, the same bits
    m, x = _model_and_input()
    y, _ = m(x)
    queue.put((y, _linear()))


def cmd_start_method(args):
    """A child started with `method` after the parent ran multi-threaded regions computes the
    parent's result bit for bit."""
    import multiprocessing as mp
    fusedrnn.set_num_threads(2)
    m, x = _model_and_input()
    y0, _ = m(x)
    lin0 = _linear()
    ctx = mp.get_context(args[0])
    q = ctx.Queue()
    procs = [ctx.Process(target=_child_run, args=(q,)) for _ in range(2)]
    for p in procs:
        p.start()
    ys = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    report(all(np.array_equal(y, y0) and np.array_equal(lin, lin0) for y, lin in ys)
           and all(p.exitcode == 0 for p in procs), exitcodes=[p.exitcode for p in procs])


def cmd_fork_race(args):
    """fork() while another thread is inside fusedrnn, many times: each child must finish a
    multi-threaded call (the workspace pool's lock and the OpenMP pool survive)."""
    n = int(args[args.index("--forks") + 1]) if "--forks" in args else 100
    fusedrnn.set_num_threads(2)
    m, x = _model_and_input()
    small = x[:2, :2]
    y0, _ = m(small)
    lin0 = _linear()
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            m(small)

    t = threading.Thread(target=busy)
    t.start()
    hung = bad = 0
    try:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:  # child: one call on the forking thread, one on a new thread
                try:
                    ok = np.array_equal(m(small)[0], y0) and np.array_equal(_linear(), lin0)
                    out = []
                    th = threading.Thread(target=lambda: out.append(m(small)[0]))
                    th.start()
                    th.join()
                    ok = ok and np.array_equal(out[0], y0)
                finally:
                    os._exit(0 if ok else 3)
            deadline = time.time() + 20
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    bad += os.waitstatus_to_exitcode(status) != 0
                    break
                if time.time() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    hung += 1
                    break
                time.sleep(0.002)
    finally:
        stop.set()
        t.join()
    report(hung == 0 and bad == 0, forks=n, hung=hung, wrong=bad)


def cmd_dataloader(args):
    """torch DataLoader fork workers running a fusedrnn model after the parent did."""
    import torch
    from torch.utils.data import DataLoader, Dataset
    fusedrnn.set_num_threads(2)
    m, x = _model_and_input()
    y0, _ = m(x)

    class Seqs(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.from_numpy(m(x)[0])

    loader = DataLoader(Seqs(), batch_size=1, num_workers=2, multiprocessing_context="fork",
                        timeout=120)
    ys = [b[0].numpy() for b in loader]
    report(len(ys) == 4 and all(np.array_equal(y, y0) for y in ys))


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cmd_big_workspace(args):
    """One call whose workspace is ~1 GiB leaves at most the pool's 512 MiB idle cap behind
    (the buffer, over the cap on its own, is freed)."""
    T, B, I, H = 1000, 8192, 1, 8   # input projection workspace: T*B*4H floats = 1 GiB
    x = np.zeros((T, B, I), np.float32)
    w_ih = np.zeros((4 * H, I), np.float32)
    w_hh = np.zeros((4 * H, H), np.float32)
    F.lstm_forward(x[:2, :2], w_ih, w_hh, training=False)  # warm up the small buffers
    before = rss_mib()
    y = F.lstm_forward(x, w_ih, w_hh, training=False)[0]
    del y
    grown = rss_mib() - before
    report(grown < 256, rss_growth_mib=round(grown, 1))


def cmd_max_threads(args):
    """OMP_NUM_THREADS past the cap reads as the cap; set_num_threads rejects more; a call on
    the cap's 1024 threads (the bulk weight-gradient GEMMs use them all) is right."""
    cap = fusedrnn._C.MAX_THREADS
    initial = fusedrnn.get_num_threads()
    rejected = []
    for n in (cap + 1, 40000, 100000):
        try:
            fusedrnn.set_num_threads(n)
        except ValueError:
            rejected.append(n)
    fusedrnn.set_num_threads(cap)
    err = stack_error(stack_case("lstm", 4, 3, 5, 40, 1, False, seed=1))
    report(initial == cap and len(rejected) == 3 and err < 1e-9, initial=initial,
           rejected=rejected, max_rel_error=err)


COMMANDS = {"team": cmd_team, "start-method": cmd_start_method, "fork-race": cmd_fork_race,
            "dataloader": cmd_dataloader, "big-workspace": cmd_big_workspace,
            "max-threads": cmd_max_threads}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](sys.argv[2:])
