"""Whole-module benchmark: fusedrnn.LSTM / GRU (NumPy modules, and the fusedrnn.torch adapter
when torch is present) vs torch.nn.LSTM / GRU, multi-layer bidirectional, float32.

Default config (the layers issue's table): 2 layers, bidirectional, I = H = 256, B = 32,
T = 100, 2 threads; forward (inference) and forward+backward of y.sum(). Validates that the
outputs and gradients agree with torch before timing; median of repeats, peers timed in blocks
(see microbench.time_config). Writes JSON to bench/results/.

    python bench/layers_bench.py [--threads 2] [--hidden 256] [--batch 32] [--seq-len 100]
"""

import argparse
import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import microbench as mb  # noqa: E402  (shared environment facts, timing and JSON helpers)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--unidirectional", action="store_true")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget", type=float, default=10.0)
    ap.add_argument("--unset-openblas-env", action="store_true")
    ap.add_argument("--omp-wait-policy", choices=["passive", "active"], default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.no_torch = False
    return args


def build(args, cell):
    np, fusedrnn = mb.np, mb.fusedrnn
    H, B, T = args.hidden, args.batch, args.seq_len
    cls = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU}[cell]
    ours = cls(H, H, num_layers=args.layers, bidirectional=not args.unidirectional, seed=0)
    theirs = ours.to_torch()
    adapter = None
    try:
        import fusedrnn.torch as ft
        adapter = {"lstm": ft.LSTM, "gru": ft.GRU}[cell](
            H, H, num_layers=args.layers, bidirectional=not args.unidirectional)
        adapter.load_state_dict(theirs.state_dict())
    except ImportError:
        pass
    x = np.random.default_rng(1).standard_normal((T, B, H)).astype(np.float32)
    return ours, theirs, adapter, x


def runners(ours, theirs, adapter, x, mode):
    torch = mb.torch
    xt = torch.from_numpy(x)
    if mode == "forward":
        ours.eval()
        theirs.eval()
        out = {"fusedrnn": lambda: ours(x)}

        def run_torch():
            with torch.no_grad():
                theirs(xt)
        out["torch"] = run_torch
        if adapter is not None:
            def run_adapter():
                with torch.no_grad():
                    adapter.eval()(xt)
            out["fusedrnn.torch"] = run_adapter
        return out
    ours.train()
    theirs.train()

    def run_ours():
        y, _ = ours(x)
        ours.backward(mb.np.ones_like(y))

    def run_torch_train(module):
        def run():
            module.zero_grad()
            xg = xt.clone().requires_grad_(True)
            y, _ = module(xg)
            y.sum().backward()
        return run
    out = {"fusedrnn": run_ours, "torch": run_torch_train(theirs)}
    if adapter is not None:
        out["fusedrnn.torch"] = run_torch_train(adapter.train())
    return out


def validate(ours, theirs, adapter, x):
    np, torch = mb.np, mb.torch
    ours.train()
    y, _ = ours(x)
    ours.zero_grad()
    ours.backward(np.ones_like(y))
    xt = torch.from_numpy(x).clone().requires_grad_(True)
    theirs.zero_grad()
    yt, _ = theirs.train()(xt)
    yt.sum().backward()
    errs = {"y": mb.rel_err(y, yt.detach().numpy())}
    for k, p in theirs.named_parameters():
        errs["grad " + k] = mb.rel_err(ours.grads[k], p.grad.numpy())
    if adapter is not None:
        xa = torch.from_numpy(x).clone().requires_grad_(True)
        adapter.zero_grad()
        ya, _ = adapter.train()(xa)
        ya.sum().backward()
        errs["adapter y"] = mb.rel_err(ya.detach().numpy(), yt.detach().numpy())
        errs["adapter dx"] = mb.rel_err(xa.grad.numpy(), xt.grad.numpy())
    return errs


def main(argv=None):
    args = parse_args(argv)
    if args.unset_openblas_env:
        mb.reexec_without_openblas_env(__file__)
    mb.set_thread_env(args)
    note = mb.load_libraries(want_torch=True)
    if mb.torch is None:
        print(f"layers_bench needs torch: {note}", file=sys.stderr)
        return 1
    mb.set_threads(args.threads)
    env = mb.environment_facts(args, note)
    mb.print_environment(env)
    D = 1 if args.unidirectional else 2
    H, B, T, L = args.hidden, args.batch, args.seq_len, args.layers
    doc = {"benchmark": "layers_bench", "args": vars(args), "environment": env,
           "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "records": [], "validation": {}}
    print(f"\n{L}-layer {'bidirectional' if D == 2 else 'unidirectional'}, I=H={H}, B={B}, "
          f"T={T}, float32, {args.threads} threads; median ms of up to {args.repeats} calls; "
          "ratio = torch ms / peer ms (>1: faster than torch)\n")
    print(f"{'cell':5} {'mode':8} {'peer':15} {'median ms':>10} {'min ms':>9} {'GFLOP/s':>8} "
          f"{'vs torch':>9}")
    for cell in args.cells:
        G = mb.GATES[cell]
        ours, theirs, adapter, x = build(args, cell)
        errs = validate(ours, theirs, adapter, x)
        worst = max(errs.values())
        doc["validation"][cell] = errs
        if worst > 1e-3:
            print(f"VALIDATION FAILED for {cell}: {errs}", file=sys.stderr)
            mb.write_json(args.out or default_out(), doc)
            return 1
        # forward FLOPs: layer 0 has I = H, later layers I = D*H, per direction
        fwd = sum(2 * T * B * ((H if l == 0 else D * H) + H) * G * H * D for l in range(L))
        for mode in ("forward", "fwd+bwd"):
            rs = runners(ours, theirs, adapter, x, mode)
            times = mb.time_config(rs, {k: args.repeats for k in rs},
                                   {k: args.warmup for k in rs}, args.budget)
            med = {k: float(mb.np.median(v)) for k, v in times.items()}
            flops = fwd * (1 if mode == "forward" else 3)
            for peer, t in times.items():
                rec = {"cell": cell, "mode": mode, "peer": peer, "layers": L, "directions": D,
                       "H": H, "B": B, "T": T, "median_ms": med[peer], "min_ms": min(t),
                       "times_ms": t, "gflops": flops / med[peer] / 1e6,
                       "torch_over_peer": med["torch"] / med[peer]}
                doc["records"].append(rec)
                print(f"{cell:5} {mode:8} {peer:15} {med[peer]:10.2f} {min(t):9.2f} "
                      f"{rec['gflops']:8.1f} {rec['torch_over_peer']:8.2f}x")
        print(f"      validation vs torch (max rel err): {worst:.1e}")
    out = args.out or default_out()
    mb.write_json(out, doc)
    print(f"\nresults: {out}")
    return 0


def default_out():
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                        f"layers-{mb.socket.gethostname() or 'cpu'}-{stamp}.json")


if __name__ == "__main__":
    sys.exit(main())
