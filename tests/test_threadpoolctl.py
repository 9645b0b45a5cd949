"""threadpoolctl sees and controls fusedrnn's threads (python/fusedrnn/_threadpoolctl.py, the C
functions of csrc/bindings/c_api.cpp): threadpool_info() lists one fusedrnn entry with its
count, extension path and version; threadpool_limits sets fusedrnn's count for its block and
restores it after, in each way of naming it; no other library (torch's _C) is taken for
fusedrnn; fusedrnn's own BLAS is single-threaded again after a block; a forward inside
threadpool_limits(1) is the forward on one thread. Registration works in either import order,
without `import fusedrnn` importing threadpoolctl (subprocesses: a fresh interpreter each)."""

import ctypes
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fusedrnn

threadpoolctl = pytest.importorskip("threadpoolctl")

EXT = os.path.realpath(fusedrnn._C.__file__)


def fusedrnn_entries(info=None):
    info = threadpoolctl.threadpool_info() if info is None else info
    return [lib for lib in info if lib["internal_api"] == "fusedrnn"]


def own_blas_entry():
    """fusedrnn's scipy-openblas32 (NumPy's own OpenBLAS is another library)."""
    import scipy_openblas32
    lib_dir = os.path.realpath(scipy_openblas32.get_lib_dir())
    entries = [lib for lib in threadpoolctl.threadpool_info()
               if lib["internal_api"] == "openblas"
               and os.path.dirname(os.path.realpath(lib["filepath"])) == lib_dir]
    assert len(entries) == 1, entries
    return entries[0]


@pytest.fixture
def threads3():
    """fusedrnn on 3 threads (a count no default gives here), restored after the test."""
    saved = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(3)
    yield 3
    fusedrnn.set_num_threads(saved)


def test_info_lists_fusedrnn(threads3):
    (entry,) = fusedrnn_entries()
    assert entry["user_api"] == "openmp"
    assert entry["internal_api"] == "fusedrnn"
    assert entry["num_threads"] == fusedrnn.get_num_threads() == 3
    assert os.path.realpath(entry["filepath"]) == EXT
    assert entry["version"] == fusedrnn.config()["version"] == fusedrnn.__version__
    fusedrnn.set_num_threads(1)
    assert fusedrnn_entries()[0]["num_threads"] == 1  # read afresh, not cached


def _limits_all():
    return threadpoolctl.threadpool_limits(1)


def _limits_openmp():
    return threadpoolctl.threadpool_limits(limits=1, user_api="openmp")


def _limits_by_filepath():
    return threadpoolctl.threadpool_limits(limits={EXT: 1})


def _limits_selected():
    controller = threadpoolctl.ThreadpoolController().select(internal_api="fusedrnn")
    assert [lib.filepath for lib in controller.lib_controllers] == [EXT]
    return controller.limit(limits=1)


@pytest.mark.parametrize("limiter", [_limits_all, _limits_openmp, _limits_by_filepath,
                                     _limits_selected],
                         ids=["all", "user_api=openmp", "filepath", "select-internal_api"])
def test_limits_set_and_restore(threads3, limiter):
    with limiter():
        assert fusedrnn.get_num_threads() == 1
        assert fusedrnn_entries()[0]["num_threads"] == 1
    assert fusedrnn.get_num_threads() == 3
    # restored on an exception too
    with pytest.raises(KeyError):
        with limiter():
            assert fusedrnn.get_num_threads() == 1
            raise KeyError
    assert fusedrnn.get_num_threads() == 3


def test_limits_as_decorator_and_call(threads3):
    @threadpoolctl.threadpool_limits.wrap(limits=2, user_api="openmp")
    def inside():
        return fusedrnn.get_num_threads()

    assert inside() == 2
    assert fusedrnn.get_num_threads() == 3
    limiter = threadpoolctl.threadpool_limits(limits=1)  # the call form: set until restored
    assert fusedrnn.get_num_threads() == 1
    limiter.restore_original_limits()
    assert fusedrnn.get_num_threads() == 3


def test_other_user_api_leaves_fusedrnn(threads3):
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert fusedrnn.get_num_threads() == 3


def test_count_clamped_like_set_num_threads(threads3):
    """threadpoolctl passes any int: the C door clamps to [1, MAX_THREADS] instead of raising
    across C; the count is restored as it was."""
    with threadpoolctl.threadpool_limits(limits={EXT: 0}):
        assert fusedrnn.get_num_threads() == 1
    with threadpoolctl.threadpool_limits(limits={EXT: fusedrnn._C.MAX_THREADS + 5}):
        assert fusedrnn.get_num_threads() == fusedrnn._C.MAX_THREADS
    assert fusedrnn.get_num_threads() == 3


def test_c_functions_exported():
    lib = ctypes.CDLL(EXT)
    lib.fusedrnn_version.restype = ctypes.c_char_p
    assert lib.fusedrnn_version().decode() == fusedrnn.config()["version"]
    assert lib.fusedrnn_get_num_threads() == fusedrnn.get_num_threads()


def test_no_other_library_taken_for_fusedrnn():
    """Every library named like the extension (_C.*: torch's, when torch is importable) is
    scanned and turned down: only fusedrnn's own extension exports fusedrnn's symbols."""
    others = []
    try:
        import torch
        others.append(os.path.realpath(torch._C.__file__))
    except ImportError:
        pass
    info = threadpoolctl.threadpool_info()
    assert [os.path.realpath(lib["filepath"]) for lib in fusedrnn_entries(info)] == [EXT]
    for path in others:
        assert os.path.basename(path).lower().startswith("_c.")  # a candidate by name
        assert path not in [os.path.realpath(lib["filepath"]) for lib in info]


def test_own_blas_single_threaded_around_blocks(threads3):
    """fusedrnn's BLAS runs single-threaded inside fusedrnn's regions: a block limiting the
    threads keeps it at 1, and any block leaves it at 1."""
    assert own_blas_entry()["num_threads"] == 1
    with threadpoolctl.threadpool_limits(1):
        assert own_blas_entry()["num_threads"] == 1
    for n in (1, 2):
        with threadpoolctl.threadpool_limits(n):
            pass
        assert own_blas_entry()["num_threads"] == 1
        assert fusedrnn.get_num_threads() == 3


def test_forward_inside_limits_is_the_one_thread_forward(threads3):
    rng = np.random.default_rng(0)
    lstm = fusedrnn.LSTM(32, 128, num_layers=2, seed=0)  # 4 thread blocks of hidden units
    lstm.eval()
    x = rng.standard_normal((12, 8, 32)).astype(np.float32)
    y3, (h3, c3) = lstm(x)
    fusedrnn.set_num_threads(1)
    y1, (h1, c1) = lstm(x)
    fusedrnn.set_num_threads(3)
    with threadpoolctl.threadpool_limits(1):
        y, (h, c) = lstm(x)
    assert fusedrnn.get_num_threads() == 3
    for got, one, many in ((y, y1, y3), (h, h1, h3), (c, c1, c3)):
        np.testing.assert_array_equal(got, one)
        np.testing.assert_allclose(got, many, rtol=1e-5, atol=1e-6)


# --- registration, in fresh interpreters ------------------------------------------------------

CHECK = """
import os, sys
import fusedrnn, threadpoolctl
entries = [lib for lib in threadpoolctl.threadpool_info() if lib["internal_api"] == "fusedrnn"]
assert len(entries) == 1, entries
assert os.path.realpath(entries[0]["filepath"]) == os.path.realpath(fusedrnn._C.__file__)
with threadpoolctl.threadpool_limits(1):
    assert fusedrnn.get_num_threads() == 1
n = sum(c.internal_api == "fusedrnn" for c in threadpoolctl._ALL_CONTROLLERS)
assert n == 1, n
print("ok")
"""


def run_python(code, check=True):
    """Runs code, then CHECK when check, in a fresh interpreter; it must print ok."""
    code = textwrap.dedent(code) + (CHECK if check else "")
    env = {k: v for k, v in os.environ.items() if k != "KMP_DUPLICATE_LIB_OK"}
    env["OMP_NUM_THREADS"] = "2"
    r = subprocess.run([sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("ok"), r.stdout + r.stderr
    return r


def test_fusedrnn_first_then_threadpoolctl():
    """`import fusedrnn` leaves threadpoolctl unimported (and os.environ as it was); importing
    threadpoolctl later registers fusedrnn, and threadpoolctl's module is as without the hook."""
    run_python("""
        import os, sys
        import fusedrnn
        assert "threadpoolctl" not in sys.modules
        assert "KMP_DUPLICATE_LIB_OK" not in os.environ
        from threadpoolctl import threadpool_info
        import threadpoolctl
        from fusedrnn._threadpoolctl import _RegisteringLoader
        assert not isinstance(threadpoolctl.__loader__, _RegisteringLoader)
        assert threadpoolctl.__spec__.loader is threadpoolctl.__loader__
        assert [c.internal_api for c in threadpoolctl._ALL_CONTROLLERS].count("fusedrnn") == 1
        fusedrnn.register_threadpoolctl()  # again: nothing more
    """)


def test_threadpoolctl_first_then_fusedrnn():
    run_python("""
        import threadpoolctl
        import fusedrnn
        assert [c.internal_api for c in threadpoolctl._ALL_CONTROLLERS].count("fusedrnn") == 1
        fusedrnn.register_threadpoolctl()  # again: nothing more
    """)


def test_explicit_registration_after_reload():
    run_python("""
        import importlib
        import fusedrnn, threadpoolctl
        importlib.reload(threadpoolctl)  # forgets its registered controllers
        assert not [lib for lib in threadpoolctl.threadpool_info()
                    if lib["internal_api"] == "fusedrnn"]
        fusedrnn.register_threadpoolctl()
    """)


def test_without_threadpoolctl():
    """threadpoolctl not importable: `import fusedrnn` works, register_threadpoolctl raises
    ImportError."""
    run_python("""
        import sys
        sys.modules["threadpoolctl"] = None  # as if not installed
        import fusedrnn
        try:
            fusedrnn.register_threadpoolctl()
        except ImportError:
            print("ok")
    """, check=False)
