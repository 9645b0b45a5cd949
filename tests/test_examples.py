"""The scripts in examples/ run end to end in a shortened form and learn something.

Each example exposes ``main(argv) -> dict of final metrics``; examples/ is not a package, so
the scripts are loaded by path. The short runs (``--quick``) take a few seconds each on 2
cores; the thresholds below are what the short runs must beat, well inside what they reach
(seeds 0-5: sine ~0.33x baseline, digits 0.80-0.86 accuracy, char_lm ~3.5 bits/char vs ~4.6
unigram).
The examples need tqdm, scikit-learn and matplotlib (the ``test`` and ``examples`` extras);
without them these tests skip. Nothing is written into the repository (the plot goes to
tmp_path, no bytecode is cached next to the scripts).
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

import fusedrnn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# One fusedrnn thread: these tests check that the examples learn, not threading (test_native
# does), and a 2-thread run slows down many times over when another process holds a core
# (a per-time-step barrier then waits for a descheduled thread), as on shared CI runners.
COMMON = ["--quick", "--seed", "0", "--no-progress", "--threads", "1"]


def load_example(name):
    """examples/<name>.py as a module (not added to sys.modules, no __pycache__ written)."""
    spec = importlib.util.spec_from_file_location(f"fusedrnn_example_{name}",
                                                  EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    sys.path.insert(0, str(EXAMPLES))  # as `python examples/<name>.py` has it: finds _cli
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
        sys.dont_write_bytecode = dont_write
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    """The examples are given --threads; keep the rest of the session unaffected."""
    old = fusedrnn.get_num_threads()
    yield
    fusedrnn.set_num_threads(old)


def test_sine_wave(tmp_path):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    plot = tmp_path / "sine.png"
    m = load_example("sine_wave").main(COMMON + ["--plot", str(plot)])
    # Learned: beats "repeat the last value" by 2x (the short run reaches ~0.3x).
    assert m["test_mse"] < 0.5 * m["baseline_mse"], m
    assert m["final_loss"] < 0.2 * m["first_loss"], m
    assert m["test_mse"] > 0.5 * m["noise_floor"], m      # no model beats the noise
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sequence_classification():
    pytest.importorskip("tqdm")
    pytest.importorskip("sklearn")
    m = load_example("sequence_classification").main(COMMON)
    # Chance is 0.1; the short run (4 epochs) reaches ~0.84.
    assert m["test_accuracy"] > 0.5, m
    assert m["final_loss"] < 0.5 * m["first_loss"], m
    assert m["n_train"] + m["n_test"] == 1797


def test_char_lm():
    pytest.importorskip("tqdm")
    m = load_example("char_lm").main(COMMON + ["--sample-len", "50"])
    # Untrained: log2(V) bits/char; a model that uses no context: the unigram entropy. The
    # short run must get below the unigram entropy (it reaches ~3.5 vs ~4.6).
    assert m["initial_val_bpc"] == pytest.approx(m["uniform_bpc"], abs=0.25), m
    assert m["val_bpc"] < m["unigram_bpc"], m
    assert m["final_loss"] < 0.75 * math.log(m["vocab_size"]), m
    # Sampling ran through LSTMCells loaded with the LSTM's weights; they agree with it.
    assert m["cell_max_abs_diff"] < 1e-4, m
    assert m["sample"].startswith("The ") and len(m["sample"]) == len("The ") + 50


def test_regularised_char_lm(tmp_path):
    pytest.importorskip("tqdm")
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    plot = tmp_path / "curves.png"
    m = load_example("regularised_char_lm").main(COMMON + ["--plot", str(plot)])
    for name, curve in m["curves"].items():
        # untrained: about log2(V) bits/char; two short epochs get below the unigram entropy
        assert curve[0]["val_bpc"] == pytest.approx(m["uniform_bpc"], abs=0.5), name
        assert curve[-1]["val_bpc"] < curve[0]["val_bpc"] - 0.5, (name, curve)
        assert len(curve) == 3 and curve[-1]["step"] > 0
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
