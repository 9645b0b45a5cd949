"""The CUDA backend: whether this fusedrnn has it and which devices it sees.

``fusedrnn.functional``, the modules and ``fusedrnn.torch`` run on CUDA arrays (CuPy arrays,
torch CUDA tensors) when :func:`is_available` is True: the package was built with the CUDA
backend (``FUSEDRNN_CUDA=ON``/``AUTO`` with nvcc found) and the process sees a GPU. Importing
fusedrnn never needs a GPU, a driver or a CUDA runtime library; on a machine without them
:func:`is_available` is False and :func:`device_count` 0.
"""

from __future__ import annotations

import glob
import importlib.util
import operator
import os

from fusedrnn._loader import _C

__all__ = ["is_available", "is_built", "device_count", "get_device_name", "versions",
           "cublas_status", "persistent_plan", "persistent_counts"]

_available = None  # the devices a process sees are fixed when CUDA initialises


def is_built() -> bool:
    """True when this fusedrnn was built with the CUDA backend."""
    return bool(_C.WITH_CUDA)


def device_count() -> int:
    """CUDA devices usable now: 0 without the CUDA backend, a GPU or a driver. An unexpected
    CUDA error (neither "no device" nor "no driver") raises ``RuntimeError``."""
    return int(_C.cuda_device_count())


def is_available() -> bool:
    """True when device arrays can run here: built with CUDA and at least one device usable.
    Never raises (an unexpected CUDA error reads as False; :func:`device_count` shows it)."""
    global _available
    if _available is None:
        try:
            _available = is_built() and device_count() > 0
        except Exception:  # noqa: BLE001 - "no GPU" in any form is an answer, not an error
            return False
    return _available


def _why_unavailable() -> str:
    """Why :func:`is_available` is False, for error messages."""
    if not is_built():
        return ("this fusedrnn was built without CUDA (build it with FUSEDRNN_CUDA=ON and "
                "nvcc on PATH)")
    try:
        n = device_count()
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return f"CUDA reports an error: {e}"
    if n == 0:
        return "no CUDA device is usable in this process (no GPU, or no driver)"
    return "CUDA is available"


def get_device_name(device: int = 0) -> str:
    """The name of CUDA device ``device`` ("NVIDIA H200", ...). ``RuntimeError`` without the
    CUDA backend, ``ValueError`` for a device this process does not see."""
    if isinstance(device, bool):
        raise TypeError("device must be an int, got bool")
    try:
        device = operator.index(device)
    except TypeError:
        raise TypeError(f"device must be an int, got {type(device).__name__}") from None
    return _C.cuda_device_name(device)


def versions() -> dict:
    """``{"runtime": ..., "driver": ...}``: the CUDA runtime fusedrnn was built with and the
    driver's CUDA version, as 13000 for 13.0 (zeros without the CUDA backend; driver 0 without
    a driver)."""
    return dict(_C.cuda_versions())


def persistent_plan(mode: str, hidden_size: int, batch: int, *, proj_size: int = 0,
                    reset_after: bool = True, dtype: str = "float32", device: int = 0) -> dict:
    """Which time loop a layer of this shape runs on CUDA device ``device`` now, forward and
    backward: ``{"forward": {...}, "backward": {...}}``, each ``{"persistent": bool, "blocks",
    "threads", "shared_bytes", "why"}``. The persistent kernel (one launch per layer, W_hh on
    chip, one grid barrier per step) runs where ``FUSEDRNN_PERSISTENT`` allows it (``0``: never,
    the default until it is measured on a GPU; ``1``: wherever it fits; ``auto``: where it fits
    and the batch is small) and the layer has one exchange per step (no projection, GRU with
    ``reset_after``); else the per-step kernels run. Read at every call: the variable may change
    between calls. ``dtype`` may name the 16-bit storage types, which compute (and hold W_hh) in
    float32, so they get float32's plan."""
    from fusedrnn.functional import _kind

    name = str(dtype).replace("torch.", "")
    itemsize = {"float32": 4, "float64": 8, "float16": 4, "bfloat16": 4}.get(name)
    if itemsize is None:
        raise TypeError("dtype must be 'float32', 'float64', 'float16' or 'bfloat16', "
                        f"got {dtype!r}")
    kind = _kind(mode, reset_after)
    return {d: dict(_C.cuda_persistent_plan(kind, int(batch), int(hidden_size), int(proj_size),
                                            itemsize, d == "forward", int(device)))
            for d in ("forward", "backward")}


def persistent_counts() -> dict:
    """``{"launched": n, "declined": m}``: persistent time loops launched since the process
    started, and those declined at launch because the device could not hold the grid at once
    (the per-step kernels ran instead): what :func:`persistent_plan`'s answers turned into."""
    return dict(_C.cuda_persistent_counts())


def _cublas_candidates() -> list:
    """libcublas.so.13 of the ``nvidia-cublas`` wheel (``nvidia/cu13/lib`` or
    ``nvidia/cublas/lib``) where it is installed: the CUDA backend loads cuBLAS at run time
    (``FUSEDRNN_CUBLAS=/path/libcublas.so.13`` names one; ``FUSEDRNN_CUBLAS=0`` keeps the own
    GEMM kernel)."""
    env = os.environ.get("FUSEDRNN_CUBLAS", "")
    paths = [env] if env and env != "0" else []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        for sub in ("cu13", "cublas"):
            paths += sorted(glob.glob(os.path.join(root, sub, "lib", "libcublas.so.13*")))
    return paths


def cublas_status() -> str:
    """Which cuBLAS the CUDA backend's GEMMs use ("loaded: ..."), or why they run fusedrnn's
    own GEMM kernel; "not loaded yet" before the first device call."""
    return str(_C.cuda_cublas_status())


if is_built():
    _C.cuda_set_cublas_candidates(_cublas_candidates())
