"""Loads the native extension after making the installed scipy-openblas32 library visible.

Under build isolation the extension was linked against a temporary copy of scipy-openblas32;
at run time it must use the installed one, so its library is preloaded with RTLD_GLOBAL (the
pattern of scipy_openblas32.write__distributor_init). The extension's RPATH
($ORIGIN/../scipy_openblas32/lib) covers the same case when this preload is bypassed.
"""

import ctypes
import os

import scipy_openblas32 as _openblas

_openblas_handle = ctypes.CDLL(
    os.path.join(_openblas.get_lib_dir(), "lib" + _openblas.get_library() + ".so"),
    ctypes.RTLD_GLOBAL)

from fusedrnn import _C  # noqa: E402  (must come after the preload)

__all__ = ["_C"]
