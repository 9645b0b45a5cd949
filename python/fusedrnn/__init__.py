"""fusedrnn: fused LSTM, GRU and vanilla-RNN kernels (forward and BPTT) for NumPy.

Submodules: :mod:`fusedrnn.functional` (native kernels on arrays),
:mod:`fusedrnn.reference` (the pure-NumPy specification), :mod:`fusedrnn.cuda` (whether the
CUDA backend is built and usable here), :mod:`fusedrnn.keras` (:func:`from_keras`) and
:mod:`fusedrnn.onnx` (ONNX export and import of the stacks; it imports the optional ``onnx``
package only when called).
"""

from importlib.metadata import PackageNotFoundError, version as _pkg_version

from fusedrnn._loader import _C
from fusedrnn import _threadpoolctl, cuda, functional, onnx, reference
from fusedrnn._threadpoolctl import register_threadpoolctl
from fusedrnn.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, from_torch
from fusedrnn.keras import from_keras  # reads Keras layers duck-typed: never imports keras
from fusedrnn import regularised
from fusedrnn.regularised import RegularisedGRU, RegularisedLSTM, RegularisedRNN

try:
    __version__ = _pkg_version("fusedrnn")
except PackageNotFoundError:  # running from a source tree without metadata
    __version__ = _C.config()["version"]

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RegularisedRNN",
           "RegularisedLSTM", "RegularisedGRU", "from_torch", "from_keras", "cuda", "functional",
           "onnx", "reference", "regularised", "show_config", "config", "set_num_threads",
           "get_num_threads", "release_workspaces", "register_threadpoolctl", "__version__"]

# threadpoolctl sees fusedrnn's threads as soon as it is imported, before or after fusedrnn,
# without fusedrnn importing it (fusedrnn/_threadpoolctl.py).
_threadpoolctl.install()


# Set by set_num_threads: from then on fusedrnn.torch no longer follows torch's thread count.
_threads_set_explicitly = False


def set_num_threads(n: int) -> None:
    """Sets the threads used by fusedrnn's OpenMP regions and its BLAS (both, never nested).

    ``n`` in [1, 1024] (``ValueError`` otherwise; libgomp crashes or aborts creating tens of
    thousands). The default is ``OMP_NUM_THREADS`` (capped at 1024) or the number of cores.
    OpenMP may grant a region fewer threads (``OMP_THREAD_LIMIT``, ``OMP_DYNAMIC``, a call from
    inside another parallel region); the kernels split their work over the threads they get.
    Until this is called, ``fusedrnn.torch`` modules follow ``torch.set_num_threads``."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not 1 <= n <= _C.MAX_THREADS:
        raise ValueError(f"set_num_threads: n must lie in [1, {_C.MAX_THREADS}], got {n}")
    global _threads_set_explicitly
    _C.set_num_threads(n)
    _threads_set_explicitly = True


def get_num_threads() -> int:
    """Threads fusedrnn uses for its OpenMP regions and its BLAS."""
    return _C.get_num_threads()


def release_workspaces() -> None:
    """Frees the scratch buffers fusedrnn keeps between calls (at most 8 buffers and 512 MiB
    idle; reusing them spares each call fresh page faults). The next call allocates again."""
    _C.release_workspaces()


def config() -> dict:
    """Build and runtime facts: version, compiler, BLAS, threads, CUDA (``cuda``: built with
    the CUDA backend; ``cuda_devices``: devices usable now), SIMD (``simd_path``: the
    instruction set the kernels run on)."""
    return dict(_C.config())


def show_config() -> None:
    """Prints :func:`config` (compiler, BLAS, OpenMP threads, CUDA, the SIMD path taken)."""
    c = config()
    cuda_line = "no"
    if c["cuda"]:
        v = cuda.versions()
        cuda_line = f"yes, runtime {v['runtime'] // 1000}.{v['runtime'] % 1000 // 10}"
        if c["cuda_architectures"]:
            cuda_line += f", sm {c['cuda_architectures']}"
    elif c["cuda_architectures"]:
        cuda_line += f" (device code compile-checked for sm {c['cuda_architectures']})"
    devices = f"none usable ({c['cuda_error'] or 'no GPU, or no driver'})"
    if c["cuda_devices"]:
        devices = ", ".join(f"{i}: {cuda.get_device_name(i)}" for i in range(c["cuda_devices"]))
    lines = [
        f"fusedrnn {__version__}",
        f"  compiler        : {c['compiler']} (C++17, OpenMP {c['openmp']})",
        f"  BLAS            : {c['blas']}, core {c['blas_core']}",
        f"  BLAS config     : {c['blas_config']}",
        f"  threads         : {c['num_threads']} (OpenMP and BLAS; fusedrnn.set_num_threads)",
        f"  CUDA backend    : {cuda_line}",
        *([f"  CUDA devices    : {devices} (fusedrnn.cuda.is_available(): "
           f"{cuda.is_available()})",
           f"  CUDA GEMMs      : cuBLAS {cuda.cublas_status()}"] if c["cuda"] else []),
        f"  SIMD compiled   : {c['simd_compiled']}",
        f"  SIMD on this CPU: {c['simd_cpu']}",
        f"  SIMD path taken : {c['simd_path']} (the kernels' instruction set; FUSEDRNN_ISA "
        f"forces one this CPU has)",
    ]
    print("\n".join(lines))
