"""The float32 activations the kernels use (polynomial exp/sigmoid/tanh, branch-free so the
pointwise loops vectorise): error in ulps against float64 NumPy, and special values."""

import numpy as np
import pytest

from fusedrnn import _C


def grid():
    parts = [np.linspace(-100, 100, 2_000_001), np.linspace(-1, 1, 2_000_001),
             np.linspace(-1e-3, 1e-3, 200_001), np.geomspace(1e-30, 10, 100_000),
             -np.geomspace(1e-30, 10, 100_000)]
    return np.concatenate(parts).astype(np.float32)


def ulps(got, ref64):
    spacing = np.spacing(np.abs(ref64.astype(np.float32))).astype(np.float64)
    spacing = np.maximum(spacing, np.finfo(np.float32).tiny)
    return np.abs(got.astype(np.float64) - ref64) / spacing


@pytest.mark.parametrize("name,ref,bound", [
    ("exp", np.exp, 2.0),
    ("sigmoid", lambda v: 1 / (1 + np.exp(-v)), 3.0),
    ("tanh", np.tanh, 2.0),
])
def test_activation_error_in_ulps(name, ref, bound):
    x = grid()
    if name == "exp":
        # [ln(FLT_MIN), 88.376]: above, exp_fast is +inf (see test_activation_special_values)
        x = x[(x >= -87.3365) & (x <= 88.376)]
    got = _C._testing.activation(name, x)
    with np.errstate(over="ignore"):  # exp(100) in float64 is fine; exp(-(-1000)) is not used
        want = ref(x.astype(np.float64))
    err = ulps(got, want)
    assert err.max() <= bound, f"{name}: {err.max():.2f} ulp at x={x[np.argmax(err)]}"


def test_activation_special_values():
    v = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 88.73, -87.34, 1e4, -1e4,
                  88.4, -88.4], np.float32)
    t = _C._testing.activation("tanh", v)
    s = _C._testing.activation("sigmoid", v)
    e = _C._testing.activation("exp", v)
    assert np.isnan(t[0]) and np.isnan(s[0]) and np.isnan(e[0])
    np.testing.assert_array_equal(t[1:7], [1, -1, 0, 0, 1, -1])
    # sigmoid saturates to exactly 0 and 1, as the float32 reference (0.5 (1 + tanh(v/2)))
    # does: a 4e-39 floor at -inf used to turn huge cell states into huge forget-gate gradients
    with np.errstate(over="ignore"):
        want = 1 / (1 + np.exp(-v[1:].astype(np.float64)))
    np.testing.assert_allclose(s[1:], want, rtol=3 * 2.0**-23, atol=6e-39)  # denormal range
    assert s[2] == 0 and s[6] == 0 and s[10] == 0 and s[12] == 0
    assert s[1] == 1 and s[5] == 1 and s[9] == 1
    # exp is +inf from 88.38 (where float32 exp is within 1.42x of FLT_MAX); below ln(FLT_MIN)
    # it stays at FLT_MIN's order, never 0 or a denormal
    np.testing.assert_array_equal(e[[1, 7, 9, 11]], np.inf)
    assert np.all((e[[2, 8, 10, 12]] > 0) & (e[[2, 8, 10, 12]] < 2e-38))
    assert np.isfinite(_C._testing.activation("exp", np.array([88.376], np.float32))[0])
    with pytest.raises(ValueError, match="name must be"):
        _C._testing.activation("relu", v)
