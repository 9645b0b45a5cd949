"""16-bit storage (bfloat16, float16): the conversions of fusedrnn/half.h bit for bit against
NumPy, torch and the reference's quantize, and whole stacks of the device backend (run on the
host by the device emulation) against the reference's low-precision run: 16-bit inputs,
float64 math, each output rounded once. The CPU backend refuses 16-bit arrays clearly."""

import numpy as np
import pytest

from fusedrnn import _C
from fusedrnn import functional as F
from fusedrnn import reference as ref

from _support import assert_rounded_once
from test_device_emulation import stack_case

try:
    import torch
except ImportError:  # bfloat16 arrays come from torch; float16 ones from NumPy
    torch = None

STORAGES = ["float16", "bfloat16"]


def special_floats():
    """float32 values at every rounding edge of both formats, and random bit patterns."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    edges = []
    for storage in STORAGES:
        p, emin, largest = ref.STORAGE_FORMATS[storage]
        for e in range(emin - p - 3, 20 if storage == "float16" else 128):
            for m in range(0, 2 ** 4):  # values near ties: k + 1/2 quanta, +- one float32 ulp
                v = np.ldexp(1.0 + m / 16.0, e)
                q = np.ldexp(1.0, max(np.frexp(v)[1], emin) - p)
                for t in (v, v + q / 2, v - q / 2):
                    f = np.float32(t)
                    edges += [f, np.nextafter(f, np.float32(np.inf)),
                              np.nextafter(f, np.float32(-np.inf))]
        edges += [np.float32(largest), np.float32(largest * (1 + 2.0 ** -p)),
                  np.float32(largest * (1 + 2.0 ** -(p + 1)))]
    with np.errstate(over="ignore"):
        values = np.concatenate([bits.view(np.float32), np.array(edges, np.float32)])
    values = np.concatenate([values, -values, np.array([0.0, np.inf, -np.inf, np.nan],
                                                       np.float32)])
    return values


def torch_bf16_bits(values):
    return torch.from_numpy(values).bfloat16().view(torch.int16).numpy().view(np.uint16)


@pytest.mark.parametrize("storage", STORAGES)
def test_widening_every_pattern(storage):
    bits = np.arange(2**16, dtype=np.uint16)
    got = _C._testing.widen_16bit(storage, bits)
    if storage == "float16":
        want = bits.view(np.float16).astype(np.float32)
    else:
        want = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(got, want)  # NaN == NaN here, positions compared
    nan = np.isnan(want)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


@pytest.mark.parametrize("storage", STORAGES)
def test_narrowing_rounds_to_nearest_even(storage):
    values = special_floats()
    bits, back = _C._testing.round_16bit(storage, values)
    nan = np.isnan(values)
    assert np.isnan(back[nan]).all()
    # the reference's quantize (exact from float64) gives the same value everywhere
    with np.errstate(over="ignore", invalid="ignore"):
        want = ref.quantize(values[~nan], storage)
    np.testing.assert_array_equal(back[~nan].astype(np.float64), want)
    zeros = want == 0  # the sign of zero too
    np.testing.assert_array_equal(np.signbit(back[~nan][zeros]), np.signbit(values[~nan][zeros]))
    # and the libraries' own conversions the same bits
    if storage == "float16":
        with np.errstate(over="ignore"):
            lib = values.astype(np.float16).view(np.uint16)
    elif torch is not None:
        lib = torch_bf16_bits(values)
    else:
        return
    np.testing.assert_array_equal(bits[~nan], lib[~nan])


def to_storage(a, storage):
    """A float64 array of ``storage`` values as that storage's array (exact)."""
    if a is None:
        return None
    if storage == "float16":
        return a.astype(np.float16)
    return torch.from_numpy(a.astype(np.float32)).bfloat16()


def to_f64(a):
    if a is None:
        return None
    if torch is not None and isinstance(a, torch.Tensor):
        return a.float().numpy().astype(np.float64)
    return np.asarray(a, np.float64)


STACKS = [
    # mode, reset_after, L, D, P, batch_first, dropout, lengths
    ("lstm", True, 2, 2, 0, False, 0.0, None),
    ("lstm", True, 2, 1, 3, True, 0.4, [5, 1, 3, 5]),
    ("gru", True, 2, 2, 0, True, 0.3, [2, 5, 5, 1]),
    ("gru", False, 1, 1, 0, False, 0.0, [5, 4, 1, 2]),
    ("rnn_tanh", True, 2, 2, 0, False, 0.0, None),
    ("rnn_relu", True, 1, 1, 0, True, 0.0, [3, 5, 1, 4]),
]


@pytest.fixture(params=[(0, 0), (2, 1)], ids=["step-loop", "persistent-permuted"])
def emulated(request):
    order, persistent = request.param
    old = _C._testing.set_device_emulation(order)
    _C._testing.set_persistent_emulation(persistent, 3, 8)
    try:
        yield request.param
    finally:
        _C._testing.set_persistent_emulation(0, 3, 32)
        _C._testing.set_device_emulation(old)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("case", STACKS, ids=[f"{c[0]}-{'ra' if c[1] else 'rb'}-L{c[2]}D{c[3]}"
                                               f"P{c[4]}-bf{int(c[5])}-p{c[6]}" for c in STACKS])
def test_stack_matches_low_precision_reference(case, storage, emulated):
    """Forward and every gradient of a 16-bit stack, against the reference on the same 16-bit
    values in float64: each output is the float32 result rounded once, so it lies within half
    a 16-bit quantum (plus float32's own error) of the exact value, and almost every element
    is exactly the exact value rounded."""
    if storage == "bfloat16" and torch is None:
        pytest.skip("bfloat16 arrays come from torch")
    mode, reset_after, L, D, P, batch_first, p, lengths = case
    rng = np.random.default_rng(5)
    T, B, I, H = 5, 4, 3, 6
    R = P or H
    q = lambda a: None if a is None else ref.quantize(a, storage)  # noqa: E731
    params = {k: q(v) for k, v in stack_case(mode, L, D, T, B, I, H, P, np.float64, rng).items()}
    seq = (B, T) if batch_first else (T, B)
    x = q(rng.standard_normal((*seq, I)))
    h0 = q(rng.standard_normal((L * D, B, R)))
    c0 = q(rng.standard_normal((L * D, B, H))) if mode == "lstm" else None
    dy = q(rng.standard_normal((*seq, D * R)))
    dh = q(rng.standard_normal((L * D, B, R)))
    dc = q(rng.standard_normal((L * D, B, H))) if mode == "lstm" else None
    lens = None if lengths is None else np.array(lengths, dtype=np.int64)

    s = lambda a: to_storage(a, storage)  # noqa: E731
    y, h_n, c_n, ctx = F.stack_forward(
        mode, s(x), {k: s(v) for k, v in params.items()}, num_layers=L, bidirectional=D == 2,
        h0=s(h0), c0=s(c0), lengths=lens, batch_first=batch_first, dropout=p, seed=3,
        reset_after=reset_after)
    dx, dh0, dc0, grads = F.stack_backward(ctx, s(dy), s(dh), s(dc))
    # accumulation adds in float32 and rounds once
    acc = {k: s(to_f64(v)) for k, v in grads.items()}
    F.stack_backward(ctx, s(dy), s(dh), s(dc), grads=acc)
    for v in (y, h_n, dx, dh0, *grads.values()):
        assert v.dtype == (np.float16 if storage == "float16" else torch.bfloat16)

    masks = None
    if p > 0 and L > 1:
        masks = [None if m is None else to_f64(m) / (1 - p) for m in ctx.keep_masks]
    wy, wh, wc, rctx = ref.stack_forward(mode, x, params, num_layers=L, bidirectional=D == 2,
                                         h0=h0, c0=c0, lengths=lens, batch_first=batch_first,
                                         dropout_masks=masks, reset_after=reset_after)
    wdx, wdh0, wdc0, wgrads = ref.stack_backward(rctx, dy, dh, dc)
    pairs = dict(y=(y, wy), h_n=(h_n, wh), c_n=(c_n, wc), dx=(dx, wdx), dh0=(dh0, wdh0),
                 dc0=(dc0, wdc0))
    pairs.update({k: (grads[k], wgrads[k]) for k in grads})
    pairs.update({"acc " + k: (acc[k], None) for k in grads})
    checked = {}
    for name, (got, want) in pairs.items():
        if want is None and name.startswith("acc "):
            k = name[4:]
            want = q(to_f64(grads[k])) + wgrads[k]  # the first pass's rounded grads + exact
        checked[name] = (to_f64(got), want)
    assert_rounded_once(checked, storage)


def test_cpu_refuses_16bit_clearly():
    rng = np.random.default_rng(1)
    params = stack_case("gru", 1, 1, 3, 2, 2, 3, 0, np.float16, rng)
    x = rng.standard_normal((3, 2, 2)).astype(np.float16)
    with pytest.raises(TypeError, match="16-bit storage .* runs on CUDA devices only"):
        F.stack_forward("gru", x, params)
    if torch is not None:
        tx = torch.from_numpy(x.astype(np.float32)).bfloat16()
        tp = {k: torch.from_numpy(v.astype(np.float32)).bfloat16() for k, v in params.items()}
        with pytest.raises(TypeError, match="x has dtype bfloat16, and 16-bit storage"):
            F.stack_forward("gru", tx, tp)


def test_mixed_16bit_dtypes_are_refused(emulated):
    if torch is None:
        pytest.skip("needs torch for bfloat16")
    rng = np.random.default_rng(2)
    params = stack_case("rnn_tanh", 1, 1, 3, 2, 2, 3, 0, np.float32, rng)
    x = torch.from_numpy(rng.standard_normal((3, 2, 2)).astype(np.float32))
    tp = {k: torch.from_numpy(v).half() for k, v in params.items()}
    with pytest.raises(TypeError, match="must have dtype bfloat16 .the dtype of x."):
        F.stack_forward("rnn_tanh", x.bfloat16(), tp)
    tp["weight_hh_l0"] = tp["weight_hh_l0"].bfloat16()
    with pytest.raises(TypeError, match="weight_hh_l0 must have dtype float16 .the dtype of x., "
                                        "got bfloat16"):
        F.stack_forward("rnn_tanh", x.half(), tp)


def test_state_layout_of_16bit_is_float32():
    args = (F._kind("lstm", True), 4, 3, 2, 5, 0, 2, True, False, 0.5)
    assert _C.state_layout(*args, 2) == _C.state_layout(*args, 4)


def test_quantize_is_idempotent_and_monotone():
    rng = np.random.default_rng(3)
    v = np.sort(rng.standard_normal(10_000) * 10.0 ** rng.integers(-8, 8, 10_000))
    for storage in STORAGES:
        with np.errstate(over="ignore"):
            qv = ref.quantize(v, storage)
            assert (qv[1:] >= qv[:-1]).all()
            np.testing.assert_array_equal(ref.quantize(qv, storage), qv)

