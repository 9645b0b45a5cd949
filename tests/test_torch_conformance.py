"""Behavioural parity of fusedrnn.torch with torch.nn (issue 13): every test runs against both
implementations and asserts torch.nn's behaviour (the exception type and, where user code
matches on it, the message; shapes; gradients), so the suite proves on torch.nn itself that it
tests torch's behaviour. Differences that remain are documented in docs/design.md §3.1 and
checked here as such (``DOCUMENTED``)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedrnn.torch as ft  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

IMPLS = {"torch.nn": torch.nn, "fusedrnn.torch": ft}

# torch.nn's own notice for projections on the CPU (it then runs its default implementation)
pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN")


@pytest.fixture(params=list(IMPLS))
def nn(request):
    return IMPLS[request.param]


def same_weights(cls_name, *args, **kw):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, cls_name)(*args, **kw)
    ours = getattr(ft, cls_name)(*args, **kw)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


# ---- constructors -------------------------------------------------------------------------

@pytest.mark.parametrize("kw,exc,match", [
    (dict(dropout=1.5), ValueError, r"dropout should be a number in range \[0, 1\]"),
    (dict(dropout=-0.1), ValueError, r"dropout should be a number in range \[0, 1\]"),
    (dict(num_layers=0), ValueError, "num_layers must be greater than zero"),
    (dict(proj_size=4), ValueError, "proj_size has to be smaller than hidden_size"),
    (dict(proj_size=-1), ValueError, "proj_size should be a positive integer or zero"),
    (dict(bias="x"), TypeError, "bias should be of type bool, got: str"),
])
def test_lstm_constructor_errors(nn, kw, exc, match):
    with pytest.raises(exc, match=match):
        nn.LSTM(3, 4, **kw)


@pytest.mark.parametrize("cls", ["GRU", "RNN"])
def test_proj_size_outside_lstm_is_a_value_error(nn, cls):
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        getattr(nn, cls)(3, 4, proj_size=2)


@pytest.mark.parametrize("args,exc,match", [
    ((3, 0), ValueError, "hidden_size must be greater than zero"),
    ((0, 2), ValueError, "input_size must be greater than zero"),
    ((3, 2.5), TypeError, "hidden_size should be of type int, got: float"),
])
def test_layer_size_errors(nn, args, exc, match):
    with pytest.raises(exc, match=match):
        nn.GRU(*args)


@pytest.mark.parametrize("bias,has_bias", [("relu", True), (1, True), (0, False), (None, False)])
def test_cells_take_any_truthy_bias(nn, bias, has_bias):
    cell = nn.GRUCell(10, 20, bias)
    assert (cell.bias_ih is not None) == has_bias
    assert cell(torch.randn(2, 10)).shape == (2, 20)


@pytest.mark.parametrize("cls", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_with_hidden_size_zero(nn, cls):
    cell = getattr(nn, cls)(3, 0)
    x = torch.randn(2, 3, requires_grad=True)
    out = cell(x)
    h = out[0] if isinstance(out, tuple) else out
    assert h.shape == (2, 0)
    if isinstance(out, tuple):
        assert out[1].shape == (2, 0)
    h.sum().backward()
    assert x.grad is not None and not x.grad.any()


def test_rnn_cell_unknown_nonlinearity_raises_at_forward(nn):
    cell = nn.RNNCell(3, 2, nonlinearity="sigmoid")  # accepted by the constructor
    assert cell.nonlinearity == "sigmoid"
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: sigmoid"):
        cell(torch.randn(1, 3))


def test_rnn_unknown_nonlinearity_is_a_value_error(nn):
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        nn.RNN(3, 2, nonlinearity="sigmoid")


# ---- forward ------------------------------------------------------------------------------

def test_sequence_length_zero_is_a_runtime_error(nn):
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        nn.LSTM(3, 4)(torch.zeros(0, 2, 3))


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_batch_zero_gives_empty_outputs_and_backward_works(nn, cls):
    m = getattr(nn, cls)(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.zeros(0, 5, 3, requires_grad=True)
    y, state = m(x)
    h = state[0] if cls == "LSTM" else state
    assert y.shape == (0, 5, 8) and h.shape == (4, 0, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is None or not p.grad.any() for p in m.parameters())


def test_dropout_one_trains_with_zeroed_inter_layer_activations():
    theirs, ours = same_weights("LSTM", 3, 4, num_layers=2, dropout=1.0)
    x = torch.randn(5, 2, 3)
    outs = {}
    for name, m in (("torch.nn", theirs), ("fusedrnn.torch", ours)):
        m.train()
        y, (h, c) = m(x)
        y.sum().backward()
        outs[name] = (y.detach(), h.detach(), m.weight_ih_l0.grad.clone(),
                      m.weight_hh_l1.grad.clone())
        # nothing of layer 0 reaches the output
        assert not m.weight_ih_l0.grad.any() and not m.weight_hh_l0.grad.any()
    for a, b in zip(outs["torch.nn"], outs["fusedrnn.torch"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_input_dtype_mismatch_message(nn):
    with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float64\) does not match "
                                         r"weight dtype \(torch.float32\)\. Convert input: "
                                         r"input.to\(torch.float32\), or convert model: "
                                         r"model.to\(torch.float64\)"):
        nn.LSTM(3, 4)(torch.randn(5, 2, 3, dtype=torch.float64))


def test_state_dtype_mismatch_is_a_runtime_error(nn):
    # torch's words come from its backend kernels (mkldnn on the CPU) and vary by device:
    # DOCUMENTED, the type is the same, the message is fusedrnn's own
    with pytest.raises(RuntimeError):
        nn.LSTM(3, 4)(torch.randn(5, 2, 3),
                      (torch.zeros(1, 2, 4, dtype=torch.float64), torch.zeros(1, 2, 4)))


def test_cells_check_sizes_before_dtypes(nn):
    with pytest.raises(RuntimeError, match="input has inconsistent input_size: got 5 expected 3"):
        nn.GRUCell(3, 4)(torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError):  # DOCUMENTED: torch's message is its matmul's
        nn.GRUCell(3, 4)(torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("shape,match", [
    ((5, 2, 6), r"input.size\(-1\) must be equal to input_size. Expected 3, got 6"),
])
def test_input_size_mismatch(nn, shape, match):
    with pytest.raises(RuntimeError, match=match):
        nn.LSTM(3, 4)(torch.randn(*shape))


def test_input_rank_errors(nn):
    with pytest.raises(ValueError, match="LSTM: Expected input to be 2D or 3D, got 4D instead"):
        nn.LSTM(3, 4)(torch.randn(5, 2, 3, 1))
    with pytest.raises(ValueError, match="GRUCell: Expected input to be 1D or 2D, got 3D"):
        nn.GRUCell(3, 4)(torch.randn(5, 2, 3))


def test_cell_batch_zero(nn):
    assert nn.GRUCell(3, 4)(torch.randn(0, 3)).shape == (0, 4)


# ---- low precision ------------------------------------------------------------------------

def test_half_on_the_cpu():
    """torch.nn runs .half()/.bfloat16() modules on the CPU; fusedrnn.torch raises a TypeError
    that says what to do (DOCUMENTED: 16-bit storage runs on CUDA only)."""
    for conv in ("half", "bfloat16"):
        m = getattr(torch.nn.LSTM(3, 4), conv)()
        assert m(getattr(torch.randn(5, 2, 3), conv)())[0].dtype == m.weight_ih_l0.dtype
        ours = getattr(ft.LSTM(3, 4), conv)()
        with pytest.raises(TypeError, match=r"convert the module with \.float\(\)"):
            ours(getattr(torch.randn(5, 2, 3), conv)())


def test_cpu_autocast_runs_in_float32():
    """Under CPU autocast to bfloat16 both run; fusedrnn.torch computes and returns float32
    (DOCUMENTED: torch.nn returns bfloat16 there); the values agree to bfloat16's precision."""
    theirs, ours = same_weights("LSTM", 3, 4)
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", torch.bfloat16):
        y_t, _ = theirs(x)
        y_o, _ = ours(x)
    assert y_o.dtype == torch.float32
    np.testing.assert_allclose(y_o.detach().numpy(), y_t.float().detach().numpy(), atol=2e-2)


# ---- the documented behaviour of torch.nn.RNN/LSTM/GRU and the cells --------------------------

def build(nn, cls, *args, **kw):
    torch.manual_seed(0)  # the same initialisation from the same seed, in torch's order
    return getattr(nn, cls)(*args, **kw)


@pytest.mark.parametrize("cls,kw", [("LSTM", dict(proj_size=2, num_layers=2, bidirectional=True)),
                                    ("GRU", dict(num_layers=2)), ("RNN", dict(bidirectional=True))])
def test_parameters_names_shapes_and_initialisation(nn, cls, kw):
    m, ref = build(nn, cls, 3, 4, **kw), build(torch.nn, cls, 3, 4, **kw)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for p, q in zip(m.parameters(), ref.parameters()):
        assert p.shape == q.shape and torch.equal(p, q)
    assert [[w.shape for w in ws] for ws in m.all_weights] == \
        [[w.shape for w in ws] for ws in ref.all_weights]
    assert [w.shape for w in m._flat_weights] == [w.shape for w in ref._flat_weights]
    assert repr(m) == repr(ref)
    m.flatten_parameters()


@pytest.mark.parametrize("layout", ["time-major", "batch-first", "unbatched", "packed"])
def test_output_shapes(nn, layout):
    m = build(nn, "LSTM", 3, 4, proj_size=2, num_layers=2, bidirectional=True,
              batch_first=layout == "batch-first")
    x = {"time-major": torch.randn(5, 2, 3), "batch-first": torch.randn(2, 5, 3),
         "unbatched": torch.randn(5, 3),
         "packed": pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 3]))}[layout]
    y, (h, c) = m(x)
    if layout == "packed":
        assert isinstance(y, PackedSequence) and y.data.shape == (8, 4)
    else:
        assert y.shape == {"time-major": (5, 2, 4), "batch-first": (2, 5, 4),
                           "unbatched": (5, 4)}[layout]
    lead = (4,) if layout == "unbatched" else (4, 2)
    assert h.shape == lead + (2,) and c.shape == lead + (4,)


def test_zero_initial_state_is_the_default(nn):
    m = build(nn, "GRU", 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(m(x)[0], m(x, torch.zeros(2, 2, 4))[0])


def test_bidirectional_output_halves_and_final_states(nn):
    m = build(nn, "GRU", 3, 4, num_layers=2, bidirectional=True)
    y, h = m(torch.randn(5, 2, 3))
    torch.testing.assert_close(y[-1, :, :4], h[-2])  # forward direction: its last step
    torch.testing.assert_close(y[0, :, 4:], h[-1])   # reverse direction: ends at t = 0


def test_dropout_only_in_training_mode(nn):
    m = build(nn, "LSTM", 3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3)
    m.eval()
    torch.testing.assert_close(m(x)[0], m(x)[0], rtol=0, atol=0)
    m.train()
    torch.manual_seed(1)
    a = m(x)[0]
    torch.manual_seed(2)
    b = m(x)[0]
    assert not torch.equal(a, b)
    torch.manual_seed(1)
    torch.testing.assert_close(m(x)[0], a, rtol=0, atol=0)  # seeded: reproducible


def test_state_dict_crosses_implementations(nn):
    m = build(nn, "LSTM", 3, 4, num_layers=2)
    other = torch.nn.LSTM(3, 4, num_layers=2) if nn is ft else ft.LSTM(3, 4, num_layers=2)
    other.load_state_dict(m.state_dict())
    m.load_state_dict(other.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(m(x)[0], other(x)[0], rtol=1e-5, atol=1e-6)


def test_hidden_size_mismatch_message(nn):
    m = build(nn, "GRU", 3, 5)
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 4, 5\), got \[1, 3, 5\]"):
        m(torch.randn(6, 4, 3), torch.zeros(1, 3, 5))


def test_unbatched_input_with_batched_state(nn):
    m = build(nn, "GRU", 3, 5)
    with pytest.raises(RuntimeError, match="should also be 2-D"):
        m(torch.randn(6, 3), torch.zeros(1, 1, 5))


def test_pickle_deepcopy_and_save(nn, tmp_path):
    import copy

    m = build(nn, "LSTM", 3, 4, bidirectional=True)
    x = torch.randn(5, 2, 3)
    want = m(x)[0]
    path = tmp_path / "m.pt"
    torch.save(m, path)
    for other in (copy.deepcopy(m), torch.load(path, weights_only=False)):
        assert type(other) is type(m)
        torch.testing.assert_close(other(x)[0], want, rtol=0, atol=0)


def test_forward_hooks_see_the_outputs(nn):
    m = build(nn, "GRU", 3, 4)
    seen = []
    m.register_forward_hook(lambda mod, inp, out: seen.append(out[0].shape))
    m(torch.randn(5, 2, 3))
    assert seen == [(5, 2, 4)]


def test_frozen_parameters_get_no_gradient(nn):
    m = build(nn, "LSTM", 3, 4)
    m.requires_grad_(False)
    x = torch.randn(5, 2, 3, requires_grad=True)
    m(x)[0].sum().backward()
    assert x.grad is not None and all(p.grad is None for p in m.parameters())


def test_dtype_conversion(nn):
    m = build(nn, "GRU", 3, 4).double()
    assert m(torch.randn(5, 2, 3, dtype=torch.float64))[0].dtype == torch.float64


def test_enforce_sorted_packing_is_torchs_check(nn):
    with pytest.raises(RuntimeError, match="must be sorted in decreasing order"):
        build(nn, "GRU", 3, 4)(pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([3, 5])))


@pytest.mark.parametrize("cls", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_default_state_and_unbatched_input(nn, cls):
    cell = build(nn, cls, 3, 4)
    x = torch.randn(2, 3)
    zeros = torch.zeros(2, 4)
    out = cell(x)
    given = cell(x, (zeros, zeros) if cls == "LSTMCell" else zeros)
    for a, b in zip(out if isinstance(out, tuple) else (out,),
                    given if isinstance(given, tuple) else (given,)):
        torch.testing.assert_close(a, b)
    single = cell(x[0])
    single = single[0] if isinstance(single, tuple) else single
    assert single.shape == (4,)
