"""The CUDA resource gate's parser and rules (tools/cuda_resource_gate.py) on synthetic ptxas
reports: CI runs the gate on the real compile; these check that it can fail."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("cuda_resource_gate",
                                              ROOT / "tools" / "cuda_resource_gate.py")
gate_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate_mod)

MANGLED = "_ZN8fusedrnn4cuda15for_each_kernelINS_6device5GemvTIfEEEEvlT_"


def report(registers=38, stack=0, spill=0, smem=None, arch="sm_90", name=MANGLED):
    used = f"Used {registers} registers, used 0 barriers"
    if smem is not None:
        used += f", {smem} bytes smem"
    return (f"ptxas info    : Compiling entry function '{name}' for '{arch}'\n"
            f"ptxas info    : Function properties for {name}\n"
            f"    {stack} bytes stack frame, {spill} bytes spill stores, "
            f"{spill} bytes spill loads\n"
            f"ptxas info    : {used}, 424 bytes cmem[0]\n")


BUDGET = {"GemvT<float>": {"sm_90": {"registers": 40, "stack": 0, "smem": 0}}}


def problems(log):
    return gate_mod.gate(gate_mod.parse(log), BUDGET)


def test_names_are_demangled_and_shortened():
    assert list(gate_mod.parse(report())) == ["GemvT<float>"]


def test_within_budget_passes():
    assert problems(report()) == []


def test_each_rule_fails():
    assert any("registers > budget" in p for p in problems(report(registers=41)))
    assert any("spills" in p for p in problems(report(spill=8)))
    assert any("stack frame" in p for p in problems(report(stack=16)))
    assert any("shared memory" in p for p in problems(report(smem=1024)))
    assert any("no budget for this architecture" in p for p in problems(report(arch="sm_80")))
    other = "_ZN8fusedrnn4cuda15for_each_kernelINS_6device5GemvTIdEEEEvlT_"
    p = problems(report(name=other))
    assert any("GemvT<double>: no budget" in x for x in p)
    assert any("GemvT<float>: budgeted but not compiled" in x for x in p)


def test_budget_file_covers_every_kernel_kind():
    import json
    budget = json.loads((ROOT / "tools" / "cuda_resource_budget.json").read_text())
    for functor in ("block_kernel<GemmBlock", "ForwardStep", "BackwardStep", "ResetGatesStep",
                    "ResetGradStep", "ProjectionCommit", "GatherDh", "DropoutDraw"):
        assert any(k.startswith(functor) for k in budget), functor
    for k, archs in budget.items():
        for a, b in archs.items():
            assert b["stack"] == 0 and b["registers"] <= gate_mod.MAX_REGISTERS, (k, a)
