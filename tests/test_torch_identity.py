"""The classes and their conversions (issue 13 item 4): fusedrnn.torch's modules are not
subclasses of torch.nn's (docs/design.md §3.1 says why); ``to_torch``/``from_torch``/
``swap_modules`` convert in either direction sharing the Parameter objects, for code that
dispatches on torch.nn's exact classes."""

import io

import pytest

torch = pytest.importorskip("torch")

import fusedrnn.torch as ft  # noqa: E402

KINDS = [("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2)), ("GRU", dict()),
         ("RNN", dict(nonlinearity="relu", batch_first=True)), ("LSTMCell", dict()),
         ("GRUCell", dict(bias=False)), ("RNNCell", dict(nonlinearity="relu"))]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("kind,kw", KINDS, ids=[k for k, _ in KINDS])
def test_round_trip_shares_parameters_and_computes_the_same(kind, kw):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, kind)(3, 4, **kw)
    ours = ft.from_torch(theirs)
    assert type(ours) is getattr(ft, kind)
    for (n, a), (m, b) in zip(theirs.named_parameters(), ours.named_parameters()):
        assert n == m and a is b
    torch.manual_seed(1)
    x = torch.randn(2, 3) if kind.endswith("Cell") else torch.randn(4, 2, 3)
    with torch.no_grad():
        want, got = theirs(x), ours(x)
    want = want[0] if isinstance(want, tuple) else want
    got = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    back = ft.to_torch(ours)
    assert type(back) is getattr(torch.nn, kind)
    assert all(a is b for a, b in zip(back.parameters(), ours.parameters()))
    with torch.no_grad():
        again = back(x)
    torch.testing.assert_close(again[0] if isinstance(again, tuple) else again, want)


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_swap_modules_for_quantize_and_safe_load():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    model.add_module("rnn", ft.LSTM(3, 4))
    assert not isinstance(model.rnn, torch.nn.LSTM)  # the documented difference
    ft.swap_modules(model, to="torch")
    assert type(model.rnn) is torch.nn.LSTM
    q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.LSTM}, dtype=torch.qint8)
    assert type(q.rnn).__module__.startswith("torch.ao.nn.quantized")
    buf = io.BytesIO()
    torch.save(ft.to_torch(ft.LSTM(3, 4)), buf)
    buf.seek(0)
    with torch.serialization.safe_globals([torch.nn.LSTM]):
        loaded = torch.load(buf, weights_only=True)
    assert type(loaded) is torch.nn.LSTM
    ft.swap_modules(model, to="fusedrnn")
    assert type(model.rnn) is ft.LSTM


def test_to_torch_of_the_original_gru_raises():
    with pytest.raises(RuntimeError, match="reset_after=False"):
        ft.to_torch(ft.GRU(3, 4, reset_after=False))
    with pytest.raises(TypeError, match="expected a torch.nn RNN"):
        ft.from_torch(torch.nn.Linear(3, 4))
