"""fusedrnn.spec: one set of constructor checks for the NumPy modules, the cells and the torch
adapter, with torch.nn's exception types; parameter names/shapes/order and repr as torch.nn."""

import warnings

import numpy as np
import pytest

import fusedrnn
from fusedrnn.spec import GATES, CellSpec, RNNSpec

try:
    import torch
    import fusedrnn.torch as ft
except ImportError:  # the NumPy side is still checked against the expected types
    torch = ft = None

STACKS = ("RNN", "LSTM", "GRU")
CELLS = ("RNNCell", "LSTMCell", "GRUCell")

# (expected exception, keyword arguments, classes): torch.nn.RNN/LSTM/GRU raise exactly this
BAD_STACK_ARGS = [
    (TypeError, dict(input_size=2.5), STACKS),
    (TypeError, dict(input_size="3"), STACKS),
    (TypeError, dict(input_size=None), STACKS),
    (ValueError, dict(input_size=0), STACKS),
    (ValueError, dict(input_size=-1), STACKS),
    (TypeError, dict(hidden_size=4.0), STACKS),
    (TypeError, dict(hidden_size=np.float64(4)), STACKS),
    (ValueError, dict(hidden_size=0), STACKS),
    (ValueError, dict(num_layers=0), STACKS),
    (ValueError, dict(num_layers=-1), STACKS),
    (TypeError, dict(num_layers=2.0), STACKS),
    (TypeError, dict(bias=1), STACKS),
    (TypeError, dict(bias=None), STACKS),
    (TypeError, dict(batch_first=1), STACKS),
    (TypeError, dict(batch_first="yes"), STACKS),
    (ValueError, dict(dropout=1.5), STACKS),
    (ValueError, dict(dropout=-0.1), STACKS),
    (ValueError, dict(dropout=True), STACKS),
    (ValueError, dict(dropout="0.1"), STACKS),
    (TypeError, dict(dropout=None), STACKS),
    (ValueError, dict(proj_size=4), ("LSTM",)),      # == hidden_size
    (ValueError, dict(proj_size=9), ("LSTM",)),
    (ValueError, dict(proj_size=-1), ("LSTM",)),
    (TypeError, dict(proj_size=1.0), ("LSTM",)),
    (ValueError, dict(proj_size=2), ("RNN", "GRU")),
    (ValueError, dict(proj_size=0), ("RNN", "GRU")),  # torch.nn refuses the keyword itself
    (ValueError, dict(nonlinearity="sigmoid"), ("RNN",)),
    (TypeError, dict(no_such_argument=1), STACKS),
]

# Cells: torch.nn's cells check nothing themselves; fusedrnn checks them like the stacks.
# same_in_torch: torch.nn's cell raises the same type (from torch.empty).
BAD_CELL_ARGS = [
    (TypeError, dict(input_size=2.5), CELLS, True),
    (TypeError, dict(input_size="3"), CELLS, True),
    (TypeError, dict(input_size=None), CELLS, True),
    (TypeError, dict(hidden_size=4.0), CELLS, True),
    (ValueError, dict(input_size=0), CELLS, False),    # torch.nn: accepted (documented difference)
    (ValueError, dict(input_size=-1), CELLS, False),   # torch.nn: RuntimeError (torch.empty)
]

# The NumPy cells refuse these; torch.nn's cells accept them, and so do fusedrnn.torch's
# (issue 13: hidden_size 0 gives (B, 0) outputs, bias is any truthy value, an unknown
# nonlinearity raises at forward: tests/test_torch_conformance.py).
TORCH_LENIENT_CELL_ARGS = [
    (ValueError, dict(hidden_size=0), CELLS),
    (TypeError, dict(bias=1), CELLS),
    (TypeError, dict(bias=None), CELLS),
    (ValueError, dict(nonlinearity="sigmoid"), ("RNNCell",)),
]

# Deliberately stricter than torch.nn (documented in fusedrnn.torch): torch.nn accepts these.
STRICTER_STACK_ARGS = [
    (TypeError, dict(input_size=True), STACKS),
    (TypeError, dict(num_layers=True), STACKS),
    (TypeError, dict(bidirectional=1), STACKS),
    (TypeError, dict(bidirectional=np.bool_(True)), STACKS),
]


def _cases(table):
    return [pytest.param(case[0], case[1], cls, *case[3:],
                         id=f"{cls}-{'-'.join(f'{k}={v!r}' for k, v in case[1].items())}")
            for case in table for cls in case[2]]


def _build(module, cls, kw):
    args = dict(input_size=3, hidden_size=4)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn's dropout warning for a single layer
        return getattr(module, cls)(**args)


def _raised(module, cls, kw):
    try:
        _build(module, cls, kw)
    except Exception as e:  # noqa: BLE001 (the type is what is compared)
        return type(e)
    return None


@pytest.mark.parametrize("exc,kw,cls", _cases(BAD_STACK_ARGS))
def test_bad_stack_argument_raises_like_torch(exc, kw, cls):
    assert _raised(fusedrnn, cls, kw) is exc
    if torch is not None:
        assert _raised(torch.nn, cls, kw) is exc, "the table must say what torch.nn raises"
        assert _raised(ft, cls, kw) is exc


@pytest.mark.parametrize("exc,kw,cls,same_in_torch", _cases(BAD_CELL_ARGS))
def test_bad_cell_argument_raises_the_same_everywhere(exc, kw, cls, same_in_torch):
    assert _raised(fusedrnn, cls, kw) is exc
    if torch is not None:
        assert _raised(ft, cls, kw) is exc
        if same_in_torch:
            assert _raised(torch.nn, cls, kw) is exc


@pytest.mark.parametrize("exc,kw,cls", _cases(TORCH_LENIENT_CELL_ARGS))
def test_numpy_cells_stricter_torch_cells_as_torch(exc, kw, cls):
    assert _raised(fusedrnn, cls, kw) is exc
    if torch is not None:
        assert _raised(ft, cls, kw) is None
        assert _raised(torch.nn, cls, kw) is None


@pytest.mark.parametrize("exc,kw,cls", _cases(STRICTER_STACK_ARGS))
def test_stricter_than_torch_the_same_in_both_hierarchies(exc, kw, cls):
    assert _raised(fusedrnn, cls, kw) is exc
    if torch is not None:
        assert _raised(ft, cls, kw) is exc
        assert _raised(torch.nn, cls, kw) is None  # documented difference


@pytest.mark.parametrize("cls", ["GRU", "GRUCell"])
def test_reset_after_must_be_bool(cls):
    assert _raised(fusedrnn, cls, dict(reset_after=1)) is TypeError
    if torch is not None:
        assert _raised(ft, cls, dict(reset_after=1)) is TypeError


@pytest.mark.parametrize("cls", STACKS + CELLS)
def test_numpy_integer_sizes_and_dropout_one_are_accepted(cls):
    kw = dict(input_size=np.int64(3), hidden_size=np.int32(4))
    if cls in STACKS:
        kw.update(num_layers=np.int64(2), dropout=1.0)  # dropout=1: accepted as by torch.nn
    for module in (fusedrnn,) + ((ft,) if ft is not None else ()):
        m = _build(module, cls, kw)
        assert type(m.input_size) is int and m.input_size == 3 and m.hidden_size == 4


def test_same_message_in_both_hierarchies():
    msgs = set()
    for module in (fusedrnn,) + ((ft, torch.nn) if ft is not None else ()):
        with pytest.raises(TypeError) as info:
            _build(module, "LSTM", dict(hidden_size=4.0))
        msgs.add(str(info.value))
    assert msgs == {"hidden_size should be of type int, got: float"}


# --------------------------------------------------------------------------------------------
# the spec against torch.nn's own bookkeeping

CONFIGS = [
    dict(mode="lstm", num_layers=3, bidirectional=True, proj_size=2),
    dict(mode="lstm", num_layers=2, bias=False, proj_size=3),
    dict(mode="gru", num_layers=2, bidirectional=True, batch_first=True, dropout=0.25),
    dict(mode="rnn_relu", num_layers=1, bias=False),
    dict(mode="rnn_tanh", num_layers=2, bidirectional=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_param_shapes_and_repr_match_torch(cfg):
    tnn = pytest.importorskip("torch").nn
    cfg = dict(cfg)
    spec = RNNSpec(input_size=5, hidden_size=6, **cfg)
    mode = cfg.pop("mode")
    kw = dict(cfg)
    if mode.startswith("rnn"):
        kw["nonlinearity"] = mode[4:]
    ref = getattr(tnn, {"lstm": "LSTM", "gru": "GRU"}.get(mode, "RNN"))(5, 6, **kw)
    assert list(spec.param_shapes()) == ref._flat_weights_names
    assert spec.all_weights() == ref._all_weights
    assert {k: tuple(v.shape) for k, v in ref.named_parameters()} == spec.param_shapes()
    assert spec.torch_mode == ref.mode
    assert spec.extra_repr() == ref.extra_repr()
    h, c = spec.state_shapes(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oneDNN's note on projections
        y, hc = ref(torch.zeros(2, 7, 5) if not spec.batch_first else torch.zeros(7, 2, 5))
    assert y.shape[-1] == spec.num_directions * spec.output_size
    assert (tuple(hc[0].shape), tuple(hc[1].shape)) == (h, c) if spec.is_lstm else \
        tuple(hc.shape) == h


@pytest.mark.parametrize("mode", list(GATES))
def test_gates_and_cell_spec_match_torch(mode):
    tnn = pytest.importorskip("torch").nn
    spec = CellSpec(mode, 5, 6, bias=mode != "gru")
    kw = dict(nonlinearity=mode[4:]) if mode.startswith("rnn") else {}
    ref = getattr(tnn, {"lstm": "LSTMCell", "gru": "GRUCell"}.get(mode, "RNNCell"))(
        5, 6, bias=spec.bias, **kw)
    assert ref.weight_ih.shape[0] == GATES[mode] * 6
    assert {k: tuple(v.shape) for k, v in ref.named_parameters()} == spec.param_shapes()
    assert spec.extra_repr() == ref.extra_repr()


def test_spec_is_frozen_and_attributes_revalidate():
    spec = RNNSpec("LSTM", 3, 4)  # torch's mode names are accepted
    assert spec.mode == "lstm" and spec.gates == 4 and spec.output_size == 4
    with pytest.raises(AttributeError):
        spec.hidden_size = 5
    m = fusedrnn.GRU(3, 4, num_layers=2)
    m.dropout = 0.5
    assert m.spec.dropout == 0.5 and "dropout=0.5" in repr(m)
    with pytest.raises(ValueError, match="dropout should be a number"):
        m.dropout = 2.0
    assert m.dropout == 0.5
    with pytest.raises(ValueError, match="Unrecognized RNN mode"):
        RNNSpec("SRU", 3, 4)


def test_numpy_repr_comes_from_the_spec():
    assert repr(fusedrnn.LSTM(3, 4, num_layers=2, proj_size=2)) == \
        "LSTM(3, 4, proj_size=2, num_layers=2)"
    assert repr(fusedrnn.RNN(3, 4, nonlinearity="relu")) == "RNN(3, 4, nonlinearity='relu')"
    assert repr(fusedrnn.GRU(3, 4, reset_after=False)) == "GRU(3, 4, reset_after=False)"
    assert repr(fusedrnn.GRUCell(3, 4, bias=False)) == "GRUCell(3, 4, bias=False)"
