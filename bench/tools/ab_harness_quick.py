"""Same-run A/B of `bench/harness.py --quick` results: runs of the baseline and the candidate
build, alternated (before, after, before, after), each a separate process running the same
harness script. Prints per row fusedrnn's median time in each build, after/before, and the
in-run ratio to torch (which normalises away machine drift between runs); writes one JSON.

    python bench/tools/ab_harness_quick.py --before b1.json b2.json --after a1.json a2.json \
        --out bench/results/harness-quick-ab.json
"""
import argparse
import json
import statistics


def rows_of(path):
    d = json.load(open(path))
    out = {}
    for r in d["rows"]:
        key = (f'{r["suite"]} {r["cell"]} {r["net"]} {r["mode"]} H{r["H"]} B{r["B"]} '
               f'T{r["T"]} thr{r["threads"]}')
        p = r["peers"]
        out[key] = (p["fusedrnn"]["median_ms"], p.get("torch", {}).get("median_ms"))
    return d, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", nargs="+", required=True)
    ap.add_argument("--after", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    runs = {k: [rows_of(p) for p in getattr(a, k)] for k in ("before", "after")}
    keys = list(runs["before"][0][1])
    table = {}
    print(f'{"row":52s} {"before ms":>10s} {"after ms":>10s} {"after/bef":>9s} '
          f'{"torch/f bef":>11s} {"torch/f aft":>11s}')
    for k in keys:
        b = [r[1][k] for r in runs["before"]]
        f = [r[1][k] for r in runs["after"]]
        bm = statistics.median(x[0] for x in b)
        fm = statistics.median(x[0] for x in f)
        tb = statistics.median(x[1] / x[0] for x in b) if b[0][1] else None
        tf = statistics.median(x[1] / x[0] for x in f) if f[0][1] else None
        table[k] = {"before_ms": bm, "after_ms": fm, "after_over_before": fm / bm,
                    "torch_over_fusedrnn_before": tb, "torch_over_fusedrnn_after": tf}
        print(f"{k:52s} {bm:10.3f} {fm:10.3f} {fm / bm:9.3f} "
              f"{tb if tb else float('nan'):11.2f} {tf if tf else float('nan'):11.2f}")
    geo = statistics.geometric_mean(v["after_over_before"] for v in table.values())
    print(f"geometric mean after/before: {geo:.3f}")
    env = runs["after"][0][0]["environment"]
    json.dump({"environment": env, "before_files": a.before, "after_files": a.after,
               "geometric_mean_after_over_before": geo, "rows": table},
              open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
