"""Bad input on the device path: each mistake raises a clear exception that names the argument.

* mixed devices (a host array among device arrays, or the other way) -> ValueError naming the
  odd argument; arrays on two GPUs -> ValueError (with two GPUs);
* ``lengths``: a host array with device ``x``, or a device array with host ``x`` -> ValueError
  naming ``lengths``; on the device it must be int64 and its values lie in [1, T];
* non-contiguous device arrays -> ValueError naming the argument (device arrays are never
  copied behind the caller's back);
* dtypes and shapes are checked as on the CPU (same messages);
* backward: ``dy``/``dh_n``/a ``grads`` entry on the wrong device -> ValueError naming it.
"""

import numpy as np
import pytest

from fusedrnn import functional as F

from _cuda_support import LIBS, device_count, put, strided

T, B, I, H = 6, 3, 4, 5
LENGTHS = np.array([6, 2, 4])


def host_case(mode="lstm", dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    G = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[mode]
    u = lambda *s: rng.uniform(-1, 1, s).astype(dtype)
    p = {"weight_ih_l0": u(G * H, I), "weight_hh_l0": u(G * H, H), "bias_ih_l0": u(G * H),
         "bias_hh_l0": u(G * H)}
    return dict(x=u(T, B, I), h0=u(1, B, H), c0=u(1, B, H) if mode == "lstm" else None,
                params=p, dy=u(T, B, H), dh=u(1, B, H))


def call(mode, c, **kw):
    return F.stack_forward(mode, c["x"], c["params"], h0=c["h0"], c0=c.get("c0"), **kw)


def on_device(c, lib, device=0):
    d = {k: put(v, lib, device) for k, v in c.items() if k != "params"}
    d["params"] = {k: put(v, lib, device) for k, v in c["params"].items()}
    return d


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("odd", ["h0", "c0", "weight_hh_l0", "bias_ih_l0"])
def test_host_array_among_device_arrays(odd, lib):
    c = on_device(host_case(), lib)
    host = host_case()
    if odd in c["params"]:
        c["params"][odd] = host["params"][odd]
    else:
        c[odd] = host[odd]
    with pytest.raises(ValueError, match=odd) as e:
        call("lstm", c)
    assert "device" in str(e.value) or "cuda" in str(e.value), str(e.value)


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("odd", ["h0", "weight_ih_l0"])
def test_device_array_among_host_arrays(odd, lib):
    c = host_case()
    if odd in c["params"]:
        c["params"][odd] = put(c["params"][odd], lib)
    else:
        c[odd] = put(c[odd], lib)
    with pytest.raises(ValueError, match=odd):
        call("lstm", c)


@pytest.mark.parametrize("lib", LIBS)
def test_lengths_on_the_host_with_device_x(lib):
    c = on_device(host_case(), lib)
    for host_lengths in (LENGTHS, [6, 2, 4]):
        with pytest.raises(ValueError, match="lengths") as e:
            call("lstm", c, lengths=host_lengths)
        assert "device" in str(e.value) or "cuda" in str(e.value), str(e.value)


@pytest.mark.parametrize("lib", LIBS)
def test_lengths_on_the_device_with_host_x(lib):
    with pytest.raises(ValueError, match="lengths"):
        call("lstm", host_case(), lengths=put(LENGTHS, lib))


@pytest.mark.parametrize("lib", LIBS)
def test_device_lengths_dtype_shape_and_values(lib):
    c = on_device(host_case(), lib)
    with pytest.raises((TypeError, ValueError), match="lengths.*int64|int64.*lengths"):
        call("lstm", c, lengths=put(LENGTHS.astype(np.int32), lib))
    with pytest.raises(TypeError, match="lengths must be an integer array"):
        call("lstm", c, lengths=put(LENGTHS.astype(np.float32), lib))
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch,\)"):
        call("lstm", c, lengths=put(np.array([6, 6]), lib))
    for bad in ([6, 0, 1], [7, 1, 1], [-1, 1, 1]):
        with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\]"):
            call("lstm", c, lengths=put(np.array(bad), lib))
    # and the good ones work, in any order
    call("lstm", c, lengths=put(LENGTHS, lib))


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("odd", ["x", "h0", "c0", "weight_ih_l0", "weight_hh_l0"])
def test_non_contiguous_device_arrays(odd, lib):
    host = host_case()
    c = on_device(host, lib)
    if odd in c["params"]:
        c["params"][odd] = strided(host["params"][odd], lib)
    else:
        c[odd] = strided(host[odd], lib)
    with pytest.raises(ValueError, match=odd) as e:
        call("lstm", c)
    assert "contiguous" in str(e.value), str(e.value)


@pytest.mark.parametrize("lib", LIBS)
def test_device_dtypes_and_shapes_as_on_the_cpu(lib):
    host = host_case()
    c = on_device(host, lib)
    bad = dict(c, x=put(host["x"].astype(np.float16), lib))
    with pytest.raises(TypeError, match=r"x must have dtype float32 or float64"):
        call("lstm", bad)
    bad = dict(c, h0=put(host["h0"].astype(np.float64), lib))
    with pytest.raises(TypeError, match=r"h0 must have dtype float32"):
        call("lstm", bad)
    bad = dict(c, h0=put(host["h0"][:, :2], lib))
    with pytest.raises(ValueError, match=r"h0 must have shape"):
        call("lstm", bad)


@pytest.mark.parametrize("lib", LIBS)
def test_backward_arguments_on_the_wrong_device(lib):
    host = host_case()
    c = on_device(host, lib)
    *_, ctx = call("lstm", c)
    with pytest.raises(ValueError, match="dy"):
        F.stack_backward(ctx, host["dy"])
    with pytest.raises(ValueError, match="dh_n"):
        F.stack_backward(ctx, c["dy"], host["dh"])
    grads = {k: put(np.zeros_like(v), lib) for k, v in host["params"].items()}
    grads["weight_hh_l0"] = np.zeros_like(host["params"]["weight_hh_l0"])
    with pytest.raises(ValueError, match=r"weight_hh_l0"):
        F.stack_backward(ctx, c["dy"], grads=grads)
    grads = {k: strided(np.zeros_like(v), lib) if k == "bias_hh_l0" else put(np.zeros_like(v),
                                                                               lib)
             for k, v in host["params"].items()}
    with pytest.raises(ValueError, match=r"bias_hh_l0.*contiguous|contiguous.*bias_hh_l0"):
        F.stack_backward(ctx, c["dy"], grads=grads)


@pytest.mark.parametrize("lib", LIBS)
def test_single_layer_api_names_its_arguments(lib):
    host = host_case("gru")
    p = host["params"]
    x = put(host["x"], lib)
    w = lambda n: put(p[n], lib)
    with pytest.raises(ValueError, match="w_hh|weight_hh"):
        F.gru_forward(x, w("weight_ih_l0"), p["weight_hh_l0"])
    with pytest.raises(ValueError, match="lengths"):
        F.gru_forward(x, w("weight_ih_l0"), w("weight_hh_l0"), lengths=LENGTHS)
    with pytest.raises(ValueError, match="h0"):
        F.gru_forward(x, w("weight_ih_l0"), w("weight_hh_l0"), h0=host["h0"][0])


def test_arrays_on_two_gpus():
    if device_count() < 2:
        pytest.skip("one GPU here: arrays on two devices need two")
    lib = LIBS[0]
    host = host_case()
    c = on_device(host, lib, 0)
    c["h0"] = put(host["h0"], lib, 1)
    with pytest.raises(ValueError, match="h0"):
        call("lstm", c)
    c = on_device(host, lib, 0)
    with pytest.raises(ValueError, match="lengths"):
        call("lstm", c, lengths=put(LENGTHS, lib, 1))


def test_torch_module_and_input_on_different_devices():
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as ft
    if "torch" not in LIBS:
        pytest.skip("torch has no CUDA here")
    m = ft.LSTM(I, H).to("cuda")
    with pytest.raises((RuntimeError, ValueError), match="device|cuda|cpu"):
        m(torch.randn(T, B, I))
    m = ft.GRU(I, H)
    with pytest.raises((RuntimeError, ValueError), match="device|cuda|cpu"):
        m(torch.randn(T, B, I, device="cuda"))
    m = ft.LSTM(I, H).to("cuda")
    with pytest.raises((RuntimeError, ValueError), match="device|cuda|cpu|hx"):
        m(torch.randn(T, B, I, device="cuda"), (torch.zeros(1, B, H), torch.zeros(1, B, H)))


class _OtherDeviceArray:
    """An array that says it lives on a ROCm device (DLPack device type 10)."""

    def __dlpack_device__(self):
        return (10, 0)

    def __dlpack__(self, stream=None):  # pragma: no cover - must be refused before export
        raise AssertionError("an array of an unsupported device must be refused first")


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("odd", ["x", "h0", "weight_hh_l0"])
def test_unsupported_device_type(odd, lib):
    c = on_device(host_case(), lib)
    if odd in c["params"]:
        c["params"][odd] = _OtherDeviceArray()
    else:
        c[odd] = _OtherDeviceArray()
    with pytest.raises((TypeError, ValueError), match=odd):
        call("lstm", c)
