import numpy as np
import pytest

# Worst errors seen by the native-vs-reference sweep, printed at the end of the run.
WORST = {}


def record_error(dtype, name, err, bound):
    key = np.dtype(dtype).name
    cur = WORST.get(key)
    if cur is None or err > cur[0]:
        WORST[key] = (err, name, bound)
    WORST.setdefault("configs_" + key, 0)


def count_config(dtype):
    key = "configs_" + np.dtype(dtype).name
    WORST[key] = WORST.get(key, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if not WORST:
        return
    tr = terminalreporter
    tr.section("fusedrnn native vs reference")
    for key in ("float32", "float64"):
        if key in WORST:
            err, name, bound = WORST[key]
            tr.write_line(f"{key}: {WORST.get('configs_' + key, 0)} configurations, worst "
                          f"error {err:.3e} (bound there {bound:.3e}) in {name}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
