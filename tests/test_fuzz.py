"""Fuzz test of every public entry point (tests/_fuzz_driver.py, run in a subprocess so that a
crash is a failure and not the end of the test session).

The default run fuzzes for ~50 s; ``python -m pytest -m fuzz_long`` runs the 10-minute one.
``FUSEDRNN_FUZZ_SEED=n`` changes the seed (default 0); ``FUSEDRNN_FUZZ_SECONDS`` the budget of
the default run. A failure prints every finding (the call, its mutations, observed vs
expected); the driver's JSON summary is kept in pytest's tmp_path.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fusedrnn

pytest.importorskip("hypothesis", reason="the fuzz driver needs hypothesis")

DRIVER = Path(__file__).with_name("_fuzz_driver.py")
SEED = int(os.environ.get("FUSEDRNN_FUZZ_SEED", "0"))


def _tail(text, n=40):
    return "\n".join((text or "").splitlines()[-n:])


def _format(finding):
    lines = [f"[{finding['target']}] {finding['kind']}: {finding['call']} "
             f"(seen {finding['count']}x)",
             f"    config:    {finding['config']}",
             f"    mutations: {finding['mutations']}",
             f"    observed:  {finding['observed']}",
             f"    expected:  {finding['expected']}"]
    if finding.get("note"):
        lines.append(f"    note:      {finding['note']}")
    if finding.get("traceback"):
        lines.append("    " + _tail(finding["traceback"], 8).replace("\n", "\n    "))
    return "\n".join(lines)


def run_fuzz(tmp_path, capsys, seconds, timeout):
    out = tmp_path / "fuzz.json"
    crumb = Path(str(out) + ".lastcall")
    cmd = [sys.executable, str(DRIVER), "--seconds", str(seconds), "--seed", str(SEED),
           "--json", str(out)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        last = crumb.read_text() if crumb.exists() else "?"
        pytest.fail(f"fuzz driver hung (> {timeout} s); last call: {last}\n"
                    f"{_tail(e.stderr if isinstance(e.stderr, str) else '')}", pytrace=False)
    if p.returncode < 0:
        last = crumb.read_text() if crumb.exists() else "?"
        pytest.fail(f"fuzz driver killed by signal {signal.Signals(-p.returncode).name} "
                    f"(seed {SEED}); last call:\n{last}\n--- stderr:\n{_tail(p.stderr)}",
                    pytrace=False)
    if not out.exists():
        pytest.fail(f"fuzz driver wrote no summary (rc {p.returncode}):\n{_tail(p.stderr)}",
                    pytrace=False)
    summary = json.loads(out.read_text())
    with capsys.disabled():  # the call count goes to the log even when the test passes
        print(f"\nfuzz (seed {SEED}): {summary['calls']} calls in {summary['seconds']} s, "
              f"{summary['accepted']} accepted, "
              f"{sum(summary['rejected_by_exception_type'].values())} rejected, "
              f"{sum(summary['arrays_compared'].values())} arrays compared; per target "
              f"{summary['per_target']}" + (f"; skipped {summary['skipped']}"
                                            if summary['skipped'] else ""))
    assert Path(summary["fusedrnn"]).resolve() == Path(fusedrnn.__file__).resolve(), \
        "the driver imported another fusedrnn than the tests"
    findings = summary["findings"]
    if findings:
        pytest.fail(f"{len(findings)} fuzz findings (seed {SEED}, summary {out}):\n"
                    + "\n".join(_format(f) for f in findings), pytrace=False)
    assert p.returncode == 0, _tail(p.stdout + p.stderr)
    return summary


def test_fuzz_public_api(tmp_path, capsys):
    seconds = float(os.environ.get("FUSEDRNN_FUZZ_SECONDS", "50"))
    summary = run_fuzz(tmp_path, capsys, seconds, timeout=seconds + 100)
    assert summary["calls"] > 1000


@pytest.mark.fuzz_long
def test_fuzz_public_api_long(tmp_path, capsys):
    run_fuzz(tmp_path, capsys, 600, timeout=800)
