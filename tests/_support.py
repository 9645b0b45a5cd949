"""Helpers shared by the test modules: array backends and the native-vs-reference error log.

They live here, not in conftest.py, because conftest.py is not importable by name: pytest loads
every directory's conftest.py as the module ``conftest`` (no packages here), so with
tests/cuda/conftest.py loaded, ``from conftest import ...`` in a module collected later would
get that one. This module has one name and one instance.
"""

import numpy as np

# --- central finite differences (the reference's gradient checks) -----------------------------
# test_reference.py and test_reference_regularised.py check every analytic gradient of the
# reference against these: max|g_fd - g| / max(max|g|, 1e-8) <= FD_TOL (docs/design.md §7).

FD_EPS = 1e-6
FD_TOL = 1e-6


def rel_err(approx, exact):
    approx, exact = np.asarray(approx), np.asarray(exact)
    return float(np.max(np.abs(approx - exact)) / max(float(np.max(np.abs(exact))), 1e-8))


def fd_gradient(loss, arrays, name, eps=FD_EPS):
    """Central finite differences of `loss(name)` w.r.t. every entry of arrays[name].

    Entries are perturbed in place and restored exactly; `loss` is told which array moves."""
    a = arrays[name]
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        orig = a[idx]
        up, down = orig + eps, orig - eps
        a[idx] = up
        lp = loss(name)
        a[idx] = down
        lm = loss(name)
        a[idx] = orig
        g[idx] = (lp - lm) / (up - down)  # the actual (rounded) step
    return g


def check_fd(loss, arrays, grads, request, tol=FD_TOL, eps=FD_EPS):
    """Compares every analytic gradient in `grads` with finite differences (step `eps`) of
    `loss`; records the worst relative error in the test's user_properties ("fd_max_rel_err")
    and returns the errors by name."""
    errors = {}
    for name in grads:
        g = grads[name]
        assert g.shape == arrays[name].shape, name
        assert g.dtype == np.float64, name
        errors[name] = rel_err(fd_gradient(loss, arrays, name, eps), g)
    worst = max(errors, key=errors.get)
    request.node.user_properties.append(("fd_max_rel_err", errors[worst]))
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"finite-difference relative errors above {tol}: {bad}"
    return errors


# --- worst errors of the native-vs-reference sweep (printed by conftest.py at the end) ---------

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


# --- array backends --------------------------------------------------------------------------
# "cpu": NumPy arrays (the CPU kernels). "cuda": device arrays (the CUDA kernels) of the
# preferred library, CuPy if it is installed, else torch; "cuda-cupy" and "cuda-torch" name
# the library.

DEVICE_LIBRARIES = ("cupy", "torch")


def device_libraries():
    """The libraries that can make CUDA arrays here: a sublist of DEVICE_LIBRARIES."""
    libs = []
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            libs.append("cupy")
    except Exception:  # noqa: BLE001 - no CuPy, or no driver
        pass
    try:
        import torch
        if torch.cuda.is_available():
            libs.append("torch")
    except Exception:  # noqa: BLE001
        pass
    return libs


def cuda_available():
    """(available, reason): the CUDA backend can run here (built with CUDA, fusedrnn.cuda sees
    a GPU, and CuPy or torch can make device arrays)."""
    import fusedrnn
    if not fusedrnn.config().get("cuda"):
        return False, "fusedrnn was built without CUDA"
    try:
        import fusedrnn.cuda as fcuda
    except ImportError as e:
        return False, f"fusedrnn has no fusedrnn.cuda module ({e})"
    try:
        if not fcuda.is_available():
            return False, "fusedrnn.cuda.is_available() is False (no GPU or no driver)"
    except Exception as e:  # noqa: BLE001 - report, do not crash the collection
        return False, f"fusedrnn.cuda.is_available() raised {type(e).__name__}: {e}"
    if not device_libraries():
        return False, "neither CuPy nor torch with CUDA is installed to make device arrays"
    return True, ""


def device_library(backend):
    """The array library of a CUDA backend name ("cuda", "cuda-cupy", "cuda-torch")."""
    if backend == "cuda":
        try:
            import cupy  # noqa: F401
            return "cupy"
        except ImportError:
            return "torch"
    lib = backend.partition("-")[2]
    if lib not in DEVICE_LIBRARIES:
        raise ValueError(f"unknown backend {backend!r}")
    return lib


def to_backend(a, backend):
    """An input array (NumPy, or None) as `backend` takes it: NumPy for "cpu", a device array
    for a CUDA backend (CuPy or a torch CUDA tensor, see above). Non-arrays pass through."""
    if backend == "cpu" or not isinstance(a, np.ndarray):
        return a
    if device_library(backend) == "cupy":
        import cupy
        return cupy.asarray(a)
    import torch
    return torch.as_tensor(a, device="cuda")


def to_numpy(a):
    """An output array of any backend as a NumPy array (None and non-arrays pass through)."""
    if a is None or isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    return a


# --- 16-bit storage (fusedrnn/half.h, device/widened.h) ---------------------------------------

def half_quantum(v, storage):
    """Half the spacing of ``storage``'s values at |v| ("bfloat16"/"float16"): the error of one
    rounding to nearest."""
    from fusedrnn.reference import STORAGE_FORMATS

    p, emin, _ = STORAGE_FORMATS[storage]
    _, e = np.frexp(np.abs(v))
    return np.ldexp(0.5, np.maximum(e, emin) - p)


def assert_rounded_once(pairs, storage, exact_share=0.95):
    """``pairs``: name -> (16-bit result as float64, exact float64 value of the same 16-bit
    inputs). A result computed in float32 and rounded once lies within half a 16-bit quantum
    plus float32's error (2e-5 of the array's scale, the float32 bound of the device tests) of
    the exact value, and (ties of rounding aside) is mostly the exact value rounded: both are
    checked, the second over all arrays together."""
    from fusedrnn.reference import quantize

    exact = total = 0
    for name, (got, want) in pairs.items():
        if got is None or want is None:
            assert got is None and want is None, name
            continue
        scale = max(1.0, float(np.abs(want).max()))
        e32 = 2e-5 * scale
        bound = half_quantum(np.abs(want) + e32, storage) + e32
        err = np.abs(got - want)
        assert (err <= bound).all(), \
            f"{name}: error {err.max():.3e} over the bound {bound[np.argmax(err - bound)]:.3e}"
        exact += int((got == quantize(want, storage)).sum())
        total += got.size
    assert exact >= exact_share * total, \
        f"only {exact} of {total} elements are the exact value rounded"
