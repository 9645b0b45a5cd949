"""Loads the native extension after making the installed scipy-openblas32 library visible.

Under build isolation the extension was linked against a temporary copy of scipy-openblas32;
at run time it must use the installed one, so its library is preloaded with RTLD_GLOBAL (the
pattern of scipy_openblas32.write__distributor_init). The extension's RPATH
($ORIGIN/../scipy_openblas32/lib) covers the same case when this preload is bypassed.
"""

import ctypes
import os

import numpy  # noqa: F401  (NumPy's own BLAS initialises before the variable below is set)
import scipy_openblas32 as _openblas


def _load_openblas():
    # fusedrnn runs this BLAS single-threaded inside its own OpenMP threads, so its pthread
    # pool is never used; OpenBLAS sizes the pool when the library loads, from
    # OPENBLAS_NUM_THREADS. Without this its idle workers were measured taking ~6% of the
    # cycles of a 2-core machine. The variable is restored at once.
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        return ctypes.CDLL(
            os.path.join(_openblas.get_lib_dir(), "lib" + _openblas.get_library() + ".so"),
            ctypes.RTLD_GLOBAL)
    finally:
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved


_openblas_handle = _load_openblas()

from fusedrnn import _C  # noqa: E402  (must come after the preload)

__all__ = ["_C"]
