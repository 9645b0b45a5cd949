"""Each cell header (csrc/cells/*.h), one element at a time, against fusedrnn.reference's cell
math: forward values, saved values and backward derivatives, on ordinary and extreme inputs
(+-inf, huge magnitudes, NaN), in float64 and float32. Runs through _C._testing.cell_forward /
cell_backward, which call the headers' forward/backward (and GruV1's gates/backward_reset)
through visit_cell, the kernels' own dispatch.

Tolerances are derived per element by a running error analysis (Wilkinson) of the formula as
the header evaluates it, carried alongside float64 re-derived values (class E), u being the
native dtype's unit roundoff (2^-53 or 2^-24):
* every input is exact (both sides read the same numbers);
* each + - * adds one rounding of its result (u |v|), twice in float64 (native and reference
  both round; in float32 the float64 reference's roundings are 2^-29 of the native's: dropped);
  a product x y passes on |x| e_y + |y| e_x + e_x e_y (the last, second-order term is what is
  left where both values are 0, e.g. o tanh(c') with o = 0 and c' = 0 in the reference);
* each activation passes its argument's error on times the largest |act'| within that error
  of the argument (sigmoid': s(1-s) <= 1/4, tanh': 1 - t^2 <= 1) and adds its own error, one
  ulp being at most 2u relative: float64, glibc exp <= 1 ulp so the kernel's 1/(1+exp(-a))
  <= 4u, tanh <= 2 ulp = 4u, and the reference's sigmoid 0.5 (1 + tanh(a/2)) up to 4u
  absolute (the cancellation in 1 + tanh for a << 0, where it is 0 below about -37) plus 2u
  relative, its tanh 4u; float32, the kernels' polynomial forms: sigmoid <= 3 ulp, tanh <= 2
  ulp (the bounds tests/test_activations.py proves on 4.4M inputs), plus the float64
  reference's sigmoid's 4 u64 absolute; relu is exact.
The bound is E.err, plus 4 x the dtype's smallest normal for results in the subnormal range
(the float32 exp floors at FLT_MIN's order), times 1 + 1e-6 for the dropped O(u^2) terms. On
top, where the reference is NaN the kernel is NaN, and where it is +-inf, the same infinity
(NaN propagation, saturation); check() has the one documented exception (0 * inf).
"""

import zlib

import numpy as np
import pytest

from fusedrnn import _C
from fusedrnn import reference as ref

T = _C._testing
KINDS = {name: info["kind"] for name, info in _C.CELLS.items()}
CELL_INFO = {info["kind"]: dict(info, name=name) for name, info in _C.CELLS.items()}
DTYPES = {"f64": np.float64, "f32": np.float32}


# --- running error bounds ---------------------------------------------------------------------

class E:
    """A float64 value with a bound on |native - reference| (absolute; kept in absolute terms so
    it does not overflow before the values do): `ops` roundings of u (the native dtype's) per
    arithmetic result (2 in float64, 1 in float32), the activation error model in the rest of
    the model dict (see the module docstring)."""

    def __init__(self, v, err=None, model=None):
        self.v = np.asarray(v, np.float64)
        # An infinite or NaN value must match exactly (check()): no error bound to carry.
        self.err = (np.zeros_like(self.v) if err is None
                    else np.where(np.isfinite(self.v), err, 0.0))
        self.m = model

    @staticmethod
    def _scaled(d, err):  # |d| err, with 0 where d == 0 (no inf * 0 = NaN)
        with np.errstate(invalid="ignore", over="ignore"):
            return np.where(d == 0, 0.0, np.abs(d) * err)

    def _wrap(self, o):
        return o if isinstance(o, E) else E(np.broadcast_to(np.float64(o), self.v.shape),
                                            model=self.m)

    def _round(self, v, err):
        with np.errstate(invalid="ignore", over="ignore"):
            return E(v, err + self.m["ops"] * self.m["u"] * np.abs(v), self.m)

    def __add__(self, o):
        o = self._wrap(o)
        with np.errstate(invalid="ignore", over="ignore"):
            return self._round(self.v + o.v, self.err + o.err)

    def __sub__(self, o):
        o = self._wrap(o)
        with np.errstate(invalid="ignore", over="ignore"):
            return self._round(self.v - o.v, self.err + o.err)

    def __rsub__(self, o):
        return self._wrap(o) - self

    __radd__ = __add__

    def __mul__(self, o):
        o = self._wrap(o)
        with np.errstate(invalid="ignore", over="ignore"):
            # |x||dy| + |y||dx| + |dx||dy|: the last term matters where both values are 0
            err = (self._scaled(o.v, self.err) + self._scaled(self.v, o.err)
                   + self._scaled(self.err, o.err))
            return self._round(self.v * o.v, err)

    __rmul__ = __mul__

    def _nearest_zero(self):
        """|a| less its error, floored at 0: the point of [a - e, a + e] nearest 0, where
        sigmoid' and tanh' are largest (mean value theorem: the error passed on is at most
        e times that derivative, also where a large e crosses a steep region)."""
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(self.v) - self.err
        return np.where(d > 0, d, 0.0)  # NaN (inf - inf, a NaN value): 0, the steepest point

    def sigmoid(self):
        # The correctly rounded logistic (positive down to -745), not the reference's
        # 0.5 (1 + tanh(v/2)), which is exactly 0 below about -37: see check().
        with np.errstate(over="ignore"):
            s = 1 / (1 + np.exp(-self.v))
            sn = 1 / (1 + np.exp(self._nearest_zero()))
        u = self.m["u"]
        err = (self._scaled(sn * (1 - sn), self.err) + self.m["sigmoid_rel"] * u * s
               + self.m["sigmoid_abs"] * u)
        return E(s, err, self.m)

    def tanh(self):
        t, tn = np.tanh(self.v), np.tanh(self._nearest_zero())
        own = self.m["tanh_rel"] * self.m["u"] * np.abs(t)
        return E(t, self._scaled(1 - tn * tn, self.err) + own, self.m)

    def relu(self):
        return E(np.maximum(self.v, 0), self.err, self.m)


# Activation errors in units of u|value| (rel) or u (abs). One ulp of v is at most 2 u |v|.
MODELS = {
    # native: exp 1 ulp (2u), 1 + e (u), 1 / (.) (u): 4u; tanh 2 ulp: 4u. Reference: tanh(v/2)
    # 4u absolute, 1 + t and 0.5 (.) 2u relative; tanh 4u.
    np.float64: dict(ops=2, sigmoid_rel=4 + 2, sigmoid_abs=4, tanh_rel=4 + 4,
                     u=2.0**-53, tiny=np.finfo(np.float64).tiny),
    # native: sigmoid 3 ulp (6u), tanh 2 ulp (4u), as tests/test_activations.py bounds them;
    # reference: its sigmoid's 4 u64 absolute = 2^-27 u32 (it is 0 below -37, e.g. 3e-17).
    np.float32: dict(ops=1, sigmoid_rel=6, sigmoid_abs=2.0**-27, tanh_rel=4,
                     u=2.0**-24, tiny=np.finfo(np.float32).tiny),
}


# --- the cells' formulas as the headers evaluate them (order of operations included) ---------

def bound_forward(cell, ax, ah, h, c, model):
    """Error bounds of (out, c', saved...) as E objects, evaluated like csrc/cells/*.h."""
    ax = [E(ax[:, g], model=model) for g in range(ax.shape[1])]
    ah = [E(ah[:, g], model=model) for g in range(ah.shape[1])]
    h, c = E(h, model=model), E(c, model=model)
    if cell in ("rnn_tanh", "rnn_relu"):
        a = ax[0] + ah[0]
        o = a.relu() if cell == "rnn_relu" else a.tanh()
        return o, None, [o]
    if cell == "lstm":
        i, f = (ax[0] + ah[0]).sigmoid(), (ax[1] + ah[1]).sigmoid()
        g, o = (ax[2] + ah[2]).tanh(), (ax[3] + ah[3]).sigmoid()
        c2 = f * c + i * g
        tc = c2.tanh()
        return o * tc, c2, [i, f, g, o, c, tc]
    r, z = (ax[0] + ah[0]).sigmoid(), (ax[1] + ah[1]).sigmoid()
    if cell == "gru":
        n = (ax[2] + r * ah[2]).tanh()
        return (1 - z) * n + z * h, None, [r, z, n, ah[2]]
    n = (ax[2] + ah[2]).tanh()  # gru_v1: ah[:, 2] is W_hn (r h) + b_hn
    rh = r * h
    return (1 - z) * n + z * h, None, [r, z, n, rh]


def bound_backward(cell, sv, dout, h, dc, drh, model):
    """Error bounds of (dax columns, dc_prev, dh_direct), evaluated like csrc/cells/*.h."""
    sv = [E(s, model=model) for s in sv]
    dout, h, dc, drh = (E(v, model=model) for v in (dout, h, dc, drh))
    zero = E(np.zeros_like(dout.v), model=model)
    if cell == "rnn_tanh":
        return [dout * (1 - sv[0] * sv[0])], None, zero
    if cell == "rnn_relu":
        return [E(np.where(sv[0].v <= 0, 0.0, dout.v), model=model)], None, zero
    if cell == "lstm":
        i, f, g, o, cp, tc = sv
        dcc = dc + dout * o * (1 - tc * tc)
        return [dcc * g * i * (1 - i), dcc * cp * f * (1 - f), dcc * i * (1 - g * g),
                dout * tc * o * (1 - o)], dcc * f, zero
    r, z, n, x3 = sv
    dn = dout * (1 - z) * (1 - n * n)
    dz = dout * (h - n) * z * (1 - z)
    if cell == "gru":
        return [dn * x3 * r * (1 - r), dz, dn, dn * r], None, dout * z
    return [drh * h * r * (1 - r), dz, dn], None, dout * z + drh * r


# --- the reference's cell functions (fusedrnn.reference), one element per row, H = 1 ---------

def ref_forward(cell, ax, ah, h, c):
    h, c = h[:, None], c[:, None]
    if cell in ("rnn_tanh", "rnn_relu"):
        o, s = ref.rnn_cell_forward(ax, ah, cell == "rnn_relu")
        return o[:, 0], None, [s[:, 0]], None
    if cell == "lstm":
        o, c2, s = ref.lstm_cell_forward(ax, ah, c)
        return o[:, 0], c2[:, 0], [v[:, 0] for v in s], None
    if cell == "gru":
        o, s = ref.gru_cell_forward(ax, ah, h)
        return o[:, 0], None, [v[:, 0] for v in s[:4]], None
    r, z, rh = ref.gru_v1_cell_gates(ax, ah[:, :2], h)
    o, s = ref.gru_v1_cell_forward(ax, ah[:, 2:], r, z, h)
    return o[:, 0], None, [v[:, 0] for v in s[:4]], rh[:, 0]


def ref_backward(cell, sv, dout, h, dc, drh):
    """(dax (n, G), dah (n, G), dc_prev or None, dh_direct) from the reference's functions."""
    col = lambda v: v[:, None]
    dout, h, dc, drh = map(col, (dout, h, dc, drh))
    if cell in ("rnn_tanh", "rnn_relu"):
        da = ref.rnn_cell_backward(col(sv[0]), dout, cell == "rnn_relu")
        return da, da, None, np.zeros_like(dout[:, 0])
    if cell == "lstm":
        da, dcp = ref.lstm_cell_backward([col(s) for s in sv], dout, dc)
        return da, da, dcp[:, 0], np.zeros_like(dout[:, 0])
    r, z, n, x3 = (col(s) for s in sv)
    if cell == "gru":
        dxp, dhp, dh = ref.gru_cell_backward((r, z, n, x3, h), dout)
        return dxp, dhp, None, dh[:, 0]
    saved = (r, z, n, x3, h)
    dn, dz = ref.gru_v1_cell_backward_n(saved, dout)
    dr, dh = ref.gru_v1_cell_backward_rz(saved, drh, dout)
    da = np.concatenate([dr, dz, dn], axis=1)
    return da, da, None, dh[:, 0]


# --- comparison ---------------------------------------------------------------------------------

def check(name, native, want, bound, model, dtype):
    """native (dtype) vs want (float64, fusedrnn.reference's functions): the same NaN, the same
    infinity, or a finite value within bound.err (+ 4 tiny) of it. Or the same against
    bound.v, the re-derivation with a correctly rounded sigmoid: the reference's sigmoid is 0
    from about -37, the kernels' is positive down to -745 (float64) or -88.4 (float32), so where
    a forget/update gate that low meets an infinite state, 0 * inf = NaN in the reference and
    tiny * inf = inf in the kernel (or the other way round in float32 between -88.4 and -37).
    Both are limits of the same formula; the test accepts either and counts them."""
    native = np.asarray(native)
    assert native.dtype == dtype, (name, native.dtype)
    got = native.astype(np.float64)
    tol = bound.err * (1 + 1e-6) + 4 * model["tiny"]

    def agrees(w):
        w = np.asarray(w, np.float64)
        if dtype == np.float32:  # a float64 value beyond FLT_MAX is float32's infinity
            w = np.where(np.abs(w) > np.finfo(np.float32).max, np.copysign(np.inf, w), w)
        with np.errstate(invalid="ignore"):
            return ((np.isnan(w) & np.isnan(got)) | (np.isinf(w) & (got == w))
                    | (np.isfinite(w) & (np.abs(got - w) <= tol)))

    ok_ref = agrees(want)
    ok = ok_ref | agrees(bound.v)
    if not ok.all():
        k = np.argmax(~ok)
        pytest.fail(f"{name}: {(~ok).sum()} of {ok.size} elements disagree; first: native "
                    f"{got[k]!r}, reference {want[k]!r}, re-derived {bound.v[k]!r}, bound "
                    f"{tol[k]:.3e}")
    return int((~ok_ref).sum())


def run_cell(cell, dtype, ax, ah, h, c, dout, dc, drh):
    """Forward and backward of one cell through the native hook and the reference, checked.
    The backward runs on the native forward's saved values (both sides read the same).
    Returns how many values matched only the re-derivation (see check())."""
    kind = KINDS[cell]
    info = CELL_INFO[kind]
    G, S = info["gates"], info["saved"]
    assert ax.shape[1] == G and info["name"] == cell
    model = MODELS[dtype]
    cast = lambda a: np.ascontiguousarray(a, dtype)
    ax, ah, h, c, dout, dc, drh = map(cast, (ax, ah, h, c, dout, dc, drh))
    up = lambda a: a.astype(np.float64)

    out, c2, saved, rh = T.cell_forward(kind, ax, ah, h, c if info["cell_state"] else None)
    assert saved.shape == (S, len(out)) and not np.isnan(saved[:, np.isfinite(ax).all(1)
                                                              & np.isfinite(ah).all(1)
                                                              & np.isfinite(h)
                                                              & np.isfinite(c)]).any()
    with np.errstate(all="ignore"):
        w_out, w_c, w_sv, w_rh = ref_forward(cell, up(ax), up(ah), up(h), up(c))
        b_out, b_c, b_sv = bound_forward(cell, up(ax), up(ah), up(h), up(c), model)
    n_alt = check(f"{cell} out", out, w_out, b_out, model, dtype)
    if info["cell_state"]:
        n_alt += check(f"{cell} c'", c2, w_c, b_c, model, dtype)
    else:
        assert c2 is None
    for s in range(S):
        n_alt += check(f"{cell} saved[{s}]", saved[s], w_sv[s], b_sv[s], model, dtype)
    if cell == "gru_v1":
        np.testing.assert_array_equal(rh, saved[3])  # gates() returns what it saves
        check(f"{cell} r h", rh, w_rh, b_sv[3], model, dtype)
    else:
        assert rh is None

    dax, dah, dcp, dh = T.cell_backward(kind, saved, dout, h,
                                        dc if info["cell_state"] else None, drh)
    with np.errstate(all="ignore"):
        w_dax, w_dah, w_dc, w_dh = ref_backward(cell, [up(s) for s in saved], up(dout), up(h),
                                                up(dc), up(drh))
        b_da, b_dc, b_dh = bound_backward(cell, [up(s) for s in saved], up(dout), up(h),
                                          up(dc), up(drh), model)
    for g in range(G):
        n_alt += check(f"{cell} dax[{g}]", dax[:, g], w_dax[:, g], b_da[g], model, dtype)
        # d(recurrent pre-activation): the same as dax but for GRU's n block (r dn)
        b = b_da[3] if cell == "gru" and g == 2 else b_da[g]
        n_alt += check(f"{cell} dah[{g}]", dah[:, g], w_dah[:, g], b, model, dtype)
    if info["cell_state"]:
        n_alt += check(f"{cell} dc_prev", dcp, w_dc, b_dc, model, dtype)
    else:
        assert dcp is None
    n_alt += check(f"{cell} dh_direct", dh, w_dh, b_dh, model, dtype)
    return n_alt


def inputs(rng, n, G, scale=3.0):
    u = lambda *s: rng.uniform(-scale, scale, s)
    return dict(ax=u(n, G), ah=u(n, G), h=u(n) / scale, c=u(n), dout=u(n) / scale,
                dc=u(n) / scale, drh=u(n) / scale)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("cell", KINDS)
def test_cell_matches_reference(cell, dt):
    """Pre-activations in [-3, 3] (every gate off its saturation), plus a [-30, 30] set."""
    G = CELL_INFO[KINDS[cell]]["gates"]
    rng = np.random.default_rng(zlib.crc32(cell.encode()))
    for scale in (3.0, 30.0):
        assert run_cell(cell, DTYPES[dt], **inputs(rng, 4000, G, scale)) == 0


def extreme_values(dtype, multiplier):
    """Awkward values: signed zeros, subnormals, saturating and huge magnitudes, +-inf, NaN.
    Values that some formula multiplies (states, gradients, GRU's ah_n) stay below sqrt(max)/4
    so a product of two cannot overflow in float32 where the float64 reference does not; ax
    (only ever added to) goes to the dtype's max."""
    fi = np.finfo(dtype)
    big = np.sqrt(fi.max) / 4 if multiplier else fi.max
    vals = [0.0, -0.0, fi.smallest_subnormal, -fi.smallest_subnormal, 1e-30, 0.5, -0.5, 3.0,
            -3.0, 20.0, -20.0, 90.0, -90.0, 750.0, -750.0, 1e20, -1e20, big, -big, np.inf,
            -np.inf, np.nan]
    vals = [v for v in vals if not (np.isfinite(v) and abs(v) > big)]
    return np.array(vals, np.float64).astype(dtype).astype(np.float64)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("cell", KINDS)
def test_cell_extreme_inputs(cell, dt):
    """Random combinations of the extreme values in every argument: the native cell agrees
    with the reference everywhere (NaN where it is NaN, the same inf, finite values within the
    derived bound)."""
    dtype = DTYPES[dt]
    G = CELL_INFO[KINDS[cell]]["gates"]
    rng = np.random.default_rng(7 + len(cell))
    pre, st = extreme_values(dtype, False), extreme_values(dtype, True)
    vals_of = lambda k: pre if k == "ax" else st
    n = 20000
    pick = lambda vals, *s: rng.choice(vals, s)
    # one argument extreme at a time on moderate others, then everything extreme at once
    for mode in ("one", "all"):
        base = inputs(rng, n, G)
        if mode == "one":
            which = rng.integers(0, 7, n)
            for j, k in enumerate(("ax", "ah", "h", "c", "dout", "dc", "drh")):
                vals = vals_of(k)
                sel = which == j
                if base[k].ndim == 2:
                    col = rng.integers(0, G, n)
                    base[k][sel, col[sel]] = pick(vals, int(sel.sum()))
                else:
                    base[k][sel] = pick(vals, int(sel.sum()))
        else:
            for k in base:
                base[k] = pick(vals_of(k), *base[k].shape)
        run_cell(cell, dtype, **base)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("cell", KINDS)
def test_nan_in_a_used_input_gives_nan(cell, dt):
    """A NaN pre-activation in any gate gives a NaN output (GruV1's r: a NaN r h) and NaN
    pre-activation gradients (no activation turns NaN into a number), but for relu's
    backward, which follows PyTorch's threshold_backward."""
    dtype = DTYPES[dt]
    kind = KINDS[cell]
    G = CELL_INFO[kind]["gates"]
    for g in range(G):
        for arg in ("ax", "ah"):
            a = {"ax": np.full((1, G), 0.3, dtype), "ah": np.full((1, G), -0.2, dtype)}
            a[arg][0, g] = np.nan
            out, _, saved, _ = T.cell_forward(kind, a["ax"], a["ah"], np.full(1, 0.5, dtype),
                                              np.full(1, 0.5, dtype))
            if cell == "gru_v1" and g == 0:
                # r reaches the output through r h and the W_hn GEMM, outside the cell
                assert np.isnan(saved[3, 0]), (cell, arg, g)
            else:
                assert np.isnan(out[0]), (cell, arg, g)
            dax, _, _, _ = T.cell_backward(kind, saved, np.ones(1, dtype), np.full(1, 0.5, dtype),
                                           np.full(1, 0.5, dtype), np.ones(1, dtype))
            if cell == "rnn_relu":
                # PyTorch's threshold_backward: h <= 0 is false for NaN, dout passes on
                assert dax[0, 0] == 1, (cell, arg, g)
            else:
                assert np.isnan(dax).any(), (cell, arg, g)


def test_hooks_reject_bad_arguments():
    with pytest.raises(ValueError, match="unknown cell kind"):
        T.cell_forward(99, np.zeros((1, 1)), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="shape"):
        T.cell_forward(KINDS['lstm'], np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="float32 or float64"):
        T.cell_forward(KINDS['gru'], np.zeros((2, 3), np.int32), np.zeros((2, 3)))
