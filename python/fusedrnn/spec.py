"""The one specification of fusedrnn's recurrent modules: gate table, constructor checks,
parameter names and shapes, state shapes, hx parsing and repr.

Both module hierarchies build on it: :mod:`fusedrnn.modules` (NumPy arrays, explicit backward)
and :mod:`fusedrnn.torch` (drop-in ``torch.nn`` modules). Nothing here imports NumPy or
PyTorch: the shape checks read only ``.shape`` and ``.ndim``, so each side keeps its own array
type and conversions.

Constructor checks follow ``torch.nn.RNNBase`` (torch 2.13): the same bad argument raises the
same exception type, with torch's message, in both hierarchies:

* ``TypeError``: a size (``input_size``, ``hidden_size``, ``num_layers``, ``proj_size``) that is
  not an integer, a flag (``bias``, ``batch_first``, ``bidirectional``, ``reset_after``) that
  is not a ``bool``, a ``dropout`` that ``float()`` refuses (``None``);
* ``ValueError``: a size <= 0 (``proj_size`` < 0), ``dropout`` outside [0, 1] or not a number,
  ``proj_size >= hidden_size``, ``proj_size`` on anything but an LSTM, an unknown
  ``nonlinearity``.

Deliberately stricter or looser than ``torch.nn`` (documented in :mod:`fusedrnn.torch`): sizes
may be any integral type (NumPy integers too, which ``torch.nn.RNN/LSTM/GRU`` refuse but its
cells accept); ``bool`` sizes and a non-``bool`` ``bidirectional`` raise ``TypeError`` (torch
takes ``True`` as 1); the cells check their arguments like the stacks do (``torch.nn``'s cells
check nothing and fail, if at all, inside ``torch.empty``).

Shapes use: ``L`` num_layers, ``D`` num_directions (1 or 2), ``G`` gates, ``H`` hidden_size,
``R`` output_size (``proj_size`` if set, else ``H``), ``I`` input_size, ``B`` batch.
"""

from __future__ import annotations

import dataclasses
import numbers
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["GATES", "MODES", "TORCH_MODES", "RNNSpec", "CellSpec", "SpecField", "canonical_mode",
           "rnn_mode", "split_state", "reject_proj_size", "describe"]

#: Gates per cell, keyed by the functional mode names (rows of W_ih/W_hh are G * hidden_size).
GATES: Mapping[str, int] = MappingProxyType({"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3})
#: The functional mode names, in GATES' order.
MODES: Tuple[str, ...] = tuple(GATES)
#: ``torch.nn.RNNBase.mode`` of each functional mode.
TORCH_MODES: Mapping[str, str] = MappingProxyType(
    {"rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU", "lstm": "LSTM", "gru": "GRU"})
_FROM_TORCH = {v: k for k, v in TORCH_MODES.items()}

Shape = Tuple[int, ...]


# --------------------------------------------------------------------------------------------
# argument checks (torch.nn.RNNBase's types and messages)


def canonical_mode(mode: str) -> str:
    """'lstm' from 'lstm' or torch's 'LSTM' (likewise 'rnn_tanh', 'rnn_relu', 'gru')."""
    if mode in GATES:
        return mode
    if mode in _FROM_TORCH:
        return _FROM_TORCH[mode]
    raise ValueError("Unrecognized RNN mode: " + str(mode))


def rnn_mode(nonlinearity: str) -> str:
    """'rnn_tanh' / 'rnn_relu' for an Elman RNN's ``nonlinearity`` ('tanh' / 'relu')."""
    if nonlinearity == "tanh":
        return "rnn_tanh"
    if nonlinearity == "relu":
        return "rnn_relu"
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


def reject_proj_size(kwargs: Mapping[str, Any], cls: str) -> None:
    """What ``torch.nn.RNN/GRU`` do with extra keywords: ``proj_size`` (even 0) raises
    ``ValueError``; any other unknown keyword the usual ``TypeError``."""
    if "proj_size" in kwargs:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    if kwargs:
        raise TypeError(f"{cls}.__init__() got an unexpected keyword argument "
                        f"'{next(iter(kwargs))}'")


def _size(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < minimum:
        if name == "proj_size":
            raise ValueError("proj_size should be a positive integer or zero to disable "
                             "projections")
        raise ValueError(f"{name} must be greater than zero")
    return int(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return value


def _dropout(value: Any) -> float:
    p = float(value)  # as torch.nn: TypeError for None, ValueError for a non-numeric string
    if not isinstance(value, numbers.Number) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError("dropout should be a number in range [0, 1] representing the "
                         "probability of an element being zeroed")
    return p


def describe(obj: Any) -> str:
    """A value's type, and its items' types for a tuple or list."""
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of ({', '.join(type(o).__name__ for o in obj)})"
    return type(obj).__name__


def split_state(state: Any, *, pair: bool, owner: str, label: str = "hx",
                names: Tuple[str, str] = ("h0", "c0"), array_type: Optional[type] = None,
                kind: str = "arrays") -> Tuple[Any, Any]:
    """``(h, c)`` from a user's state argument (``c`` is None unless ``pair``).

    ``pair`` (LSTM): ``state`` must be a tuple/list of two items (each an ``array_type``
    instance when one is given), else ``TypeError``. Otherwise ``state`` is returned as ``h``
    (checked against ``array_type`` when given). None gives ``(None, None)``."""
    if state is None:
        return None, None
    if pair:
        if (not isinstance(state, (tuple, list)) or len(state) != 2
                or (array_type is not None
                    and not all(isinstance(s, array_type) for s in state))):
            raise TypeError(f"{owner}: {label} must be a tuple ({names[0]}, {names[1]}) of "
                            f"{kind}, got {describe(state)}")
        return state[0], state[1]
    if array_type is not None and not isinstance(state, array_type):
        raise TypeError(f"{owner}: {label} must be a tensor, got {type(state).__name__}")
    return state, None


class SpecField:
    """A module attribute that reads ``module.spec.<name>``; assigning it replaces the spec by
    a re-validated copy (``module.dropout = 2.0`` raises like the constructor). Parameters are
    not rebuilt, as with ``torch.nn``'s plain attributes."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Optional[type] = None) -> Any:
        return self if obj is None else getattr(obj.spec, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.spec = dataclasses.replace(obj.spec, **{self.name: value})


class CellSpecFields:
    """The configuration attributes of a module holding a :class:`CellSpec` in ``spec``."""

    input_size = SpecField()
    hidden_size = SpecField()
    bias = SpecField()
    reset_after = SpecField()


class RNNSpecFields(CellSpecFields):
    """The configuration attributes of a module holding an :class:`RNNSpec` in ``spec``."""

    num_layers = SpecField()
    batch_first = SpecField()
    dropout = SpecField()
    bidirectional = SpecField()
    proj_size = SpecField()


class _ModeSizes:
    """What a stack and a cell derive alike from ``mode`` and ``hidden_size``."""

    mode: str
    hidden_size: int

    @property
    def gates(self) -> int:
        """G: 1 (RNN), 4 (LSTM) or 3 (GRU)."""
        return GATES[self.mode]

    @property
    def gate_size(self) -> int:
        """G * hidden_size: rows of W_ih and W_hh."""
        return self.gates * self.hidden_size

    @property
    def is_lstm(self) -> bool:
        return self.mode == "lstm"

    @property
    def nonlinearity(self) -> Optional[str]:
        """'tanh' / 'relu' for an Elman RNN, None otherwise."""
        return {"rnn_tanh": "tanh", "rnn_relu": "relu"}.get(self.mode)


# --------------------------------------------------------------------------------------------
# RNN / LSTM / GRU stacks


@dataclasses.dataclass(frozen=True)
class RNNSpec(_ModeSizes):
    """A stack of recurrent layers, as ``torch.nn.RNN/LSTM/GRU`` describe it.

    ``mode``: 'rnn_tanh', 'rnn_relu', 'lstm' or 'gru' (torch's 'RNN_TANH'... are accepted and
    stored in this form). Construction validates every field (see the module docstring) and
    stores sizes as ``int``, ``dropout`` as ``float``."""

    mode: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0
    reset_after: bool = True

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("mode", canonical_mode(self.mode))
        # torch.nn.RNNBase's order: dropout, bias, batch_first, input_size, hidden_size,
        # num_layers, proj_size
        set_("dropout", _dropout(self.dropout))
        _flag("bias", self.bias)
        _flag("batch_first", self.batch_first)
        set_("input_size", _size("input_size", self.input_size))
        set_("hidden_size", _size("hidden_size", self.hidden_size))
        set_("num_layers", _size("num_layers", self.num_layers))
        set_("proj_size", _size("proj_size", self.proj_size, minimum=0))
        if self.proj_size >= self.hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if self.proj_size and self.mode != "lstm":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        _flag("bidirectional", self.bidirectional)
        _flag("reset_after", self.reset_after)

    @classmethod
    def create(cls, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
               bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
               bidirectional: bool = False, proj_size: int = 0, *,
               reset_after: bool = True) -> "RNNSpec":
        """A validated spec from ``torch.nn.RNNBase``'s positional argument order."""
        return cls(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                   bidirectional, proj_size, reset_after)

    # -- derived sizes ------------------------------------------------------------------------

    @property
    def num_directions(self) -> int:
        """D: 2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """R: width of h (``proj_size`` if set, else ``hidden_size``); y is (T, B, D*R)."""
        return self.proj_size or self.hidden_size

    @property
    def torch_mode(self) -> str:
        """``torch.nn.RNNBase.mode``: 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU'."""
        return TORCH_MODES[self.mode]

    @property
    def dropout_warning(self) -> Optional[str]:
        """torch.nn's warning text for dropout on a single layer (it drops nothing), or None."""
        if self.dropout > 0 and self.num_layers == 1:
            return ("dropout option adds dropout after all but last recurrent layer, so non-zero "
                    "dropout expects num_layers greater than 1, but got "
                    f"dropout={self.dropout} and num_layers={self.num_layers}")
        return None

    # -- parameters ---------------------------------------------------------------------------

    def all_weights(self) -> List[List[str]]:
        """Parameter names per (layer, direction), layer-major: torch's ``_all_weights``."""
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        names += ["weight_hr"] if self.proj_size else []
        return [[f"{n}_l{layer}{'_reverse' if d else ''}" for n in names]
                for layer in range(self.num_layers) for d in range(self.num_directions)]

    def flat_weights_names(self) -> List[str]:
        """All parameter names in torch's ``_flat_weights_names`` order."""
        return [n for group in self.all_weights() for n in group]

    def param_shapes(self) -> Dict[str, Shape]:
        """Ordered ``{name: shape}`` in torch's ``_flat_weights_names`` order:
        ``weight_ih_l{k}[_reverse]`` (G*H, I for k=0 else D*R), ``weight_hh_l{k}`` (G*H, R),
        ``bias_ih_l{k}``/``bias_hh_l{k}`` (G*H,) with ``bias``, ``weight_hr_l{k}`` (P, H)
        with ``proj_size`` P."""
        GH, R = self.gate_size, self.output_size
        shapes: Dict[str, Shape] = {}
        for i, group in enumerate(self.all_weights()):
            layer_in = self.input_size if i < self.num_directions else self.num_directions * R
            for name in group:
                base = name.split("_l")[0]
                shapes[name] = {"weight_ih": (GH, layer_in), "weight_hh": (GH, R),
                                "bias_ih": (GH,), "bias_hh": (GH,),
                                "weight_hr": (self.proj_size, self.hidden_size)}[base]
        return shapes

    # -- states -------------------------------------------------------------------------------

    def state_shapes(self, batch: int) -> Tuple[Shape, Optional[Shape]]:
        """``(h shape, c shape)``: h (L*D, B, R); c (L*D, B, H) for the LSTM, else None."""
        LD = self.num_layers * self.num_directions
        c = (LD, batch, self.hidden_size) if self.is_lstm else None
        return (LD, batch, self.output_size), c

    @property
    def batch_axis(self) -> int:
        """Axis of B in x and y: 0 with ``batch_first``, else 1."""
        return 0 if self.batch_first else 1

    def split_hx(self, hx: Any, owner: str, array_type: Optional[type] = None,
                 kind: str = "arrays", label: str = "hx",
                 names: Tuple[str, str] = ("h0", "c0")) -> Tuple[Any, Any]:
        """``(h0, c0)`` from ``hx``: h0 alone, or the tuple (h0, c0) for the LSTM (c0 None
        otherwise). ``TypeError`` for a wrong container (see :func:`split_state`)."""
        return split_state(hx, pair=self.is_lstm, owner=owner, label=label, names=names,
                           array_type=array_type, kind=kind)

    def check_forward(self, x: Any, h0: Any = None, c0: Any = None, *, owner: str,
                      style: str, packed_batch: Optional[int] = None) -> Tuple[bool, int]:
        """Checks the shapes of a forward call; returns ``(batched, batch)``: both steps of
        :meth:`forward_layout` and :meth:`check_forward_sizes`, which a caller with its own
        checks in between (dtype, device) runs separately.

        ``x``: (T, B, I), (B, T, I) with ``batch_first``, or unbatched (T, I); packed data
        (N, I) when ``packed_batch`` (the largest batch) is given. ``h0``: (L*D, B, R) and
        ``c0``: (L*D, B, H) (without the B axis for unbatched input), or None.

        ``style`` words the errors as the hierarchy's reference does: 'numpy' (``ValueError``
        naming the expected shape) or 'torch' (``torch.nn``'s types and messages)."""
        batched, batch = self.forward_layout(x, h0, c0, owner=owner, style=style,
                                             packed_batch=packed_batch)
        self.check_forward_sizes(x, h0, c0, batched, batch, style=style)
        return batched, batch

    def forward_layout(self, x: Any, h0: Any = None, c0: Any = None, *, owner: str,
                       style: str, packed_batch: Optional[int] = None) -> Tuple[bool, int]:
        """Numbers of dimensions (see :meth:`check_forward`); returns ``(batched, batch)``."""
        if packed_batch is not None:
            if x.ndim != 2:
                raise RuntimeError(f"input must have 2 dimensions, got {x.ndim}")
            return True, int(packed_batch)
        if x.ndim not in (2, 3):
            if style == "torch":
                raise ValueError(f"{owner}: Expected input to be 2D or 3D, got {x.ndim}D "
                                 f"instead")
            raise ValueError(f"x must be 3-D (T, B, input_size) or 2-D unbatched (T, "
                             f"input_size), got shape {tuple(x.shape)}")
        batched = x.ndim == 3
        states = [s for s in (h0, c0) if s is not None]
        want = 3 if batched else 2
        if style == "torch" and any(s.ndim != want for s in states):
            dims = ", ".join(f"{s.ndim}-D" for s in states)
            raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, "
                               f"{'hx and cx' if self.is_lstm else 'hx'} should also be "
                               f"{want}-D but got ({dims}) tensor(s)")
        return batched, (x.shape[self.batch_axis] if batched else 1)

    def check_forward_sizes(self, x: Any, h0: Any, c0: Any, batched: bool, batch: int, *,
                            style: str) -> None:
        """x's feature size and the states' shapes (see :meth:`check_forward`)."""
        if x.shape[-1] != self.input_size:
            if style == "torch":
                raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                                   f"{self.input_size}, got {x.shape[-1]}")
            raise ValueError(f"x.shape[-1] must equal input_size = {self.input_size}, got "
                             f"{x.shape[-1]}")
        h_want, c_want = self.state_shapes(batch)
        for name, label, s, want in (("h0", "hidden[0]" if self.is_lstm else "hidden", h0,
                                      h_want), ("c0", "hidden[1]", c0, c_want)):
            if s is None:
                continue
            got = tuple(s.shape)
            if style == "torch":
                got = got if batched else got[:1] + (1,) + got[1:]
                if got != want:
                    raise RuntimeError(f"Expected {label} size {want}, got {list(got)}")
            else:
                want = want if batched else (want[0], want[2])
                if got != want:
                    width = "proj_size" if name == "h0" and self.proj_size else "hidden_size"
                    raise ValueError(f"{name} must have shape {want} (num_layers*"
                                     f"num_directions, {'batch, ' if batched else ''}{width}), "
                                     f"got {got}")

    # -- repr ---------------------------------------------------------------------------------

    def extra_repr(self, *, nonlinearity: bool = False) -> str:
        """torch.nn.RNNBase's ``extra_repr`` ('3, 4, proj_size=2, num_layers=2, bias=False,
        batch_first=True, dropout=0.5, bidirectional=True'), then ``reset_after=False`` for
        the original GRU; ``nonlinearity=True`` adds ``nonlinearity='relu'`` (torch omits it)."""
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if nonlinearity and self.mode == "rnn_relu":
            s += ", nonlinearity='relu'"
        if self.mode == "gru" and self.reset_after is not True:
            s += f", reset_after={self.reset_after}"
        return s


# --------------------------------------------------------------------------------------------
# cells


@dataclasses.dataclass(frozen=True)
class CellSpec(_ModeSizes):
    """One recurrent cell, as ``torch.nn.RNNCell/LSTMCell/GRUCell`` describe it; validated like
    :class:`RNNSpec` (``TypeError`` for a non-integer size or a non-bool flag, ``ValueError``
    for a size <= 0)."""

    mode: str
    input_size: int
    hidden_size: int
    bias: bool = True
    reset_after: bool = True
    # hidden_size = 0 allowed: torch.nn's cells accept it (their outputs are (B, 0)); the
    # torch adapter's cells set it, the NumPy cells keep sizes >= 1.
    empty_ok: bool = False

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("mode", canonical_mode(self.mode))
        set_("input_size", _size("input_size", self.input_size))
        set_("hidden_size", _size("hidden_size", self.hidden_size, 0 if self.empty_ok else 1))
        _flag("bias", self.bias)
        _flag("reset_after", self.reset_after)

    def param_shapes(self) -> Dict[str, Shape]:
        """Ordered ``{name: shape}``: ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H), and with
        ``bias`` ``bias_ih``/``bias_hh`` (G*H,)."""
        GH = self.gate_size
        shapes: Dict[str, Shape] = {"weight_ih": (GH, self.input_size),
                                    "weight_hh": (GH, self.hidden_size)}
        if self.bias:
            shapes.update(bias_ih=(GH,), bias_hh=(GH,))
        return shapes

    def state_shape(self, batch: Optional[int]) -> Shape:
        """h (and c): (B, H), or (H,) for unbatched input (``batch`` None)."""
        return (self.hidden_size,) if batch is None else (batch, self.hidden_size)

    def check_step(self, x: Any, states: Sequence[Any], *, owner: str, style: str,
                   labels: Sequence[str]) -> bool:
        """Checks the shapes of one step; returns ``batched``: both steps of
        :meth:`step_layout` and :meth:`check_step_sizes`. ``x``: (B, I) or unbatched (I,);
        each state (B, H) or (H,) like x, or None; ``labels`` name the states in messages.
        ``style`` as :meth:`RNNSpec.check_forward` ('numpy': ``ValueError`` naming the
        expected shape; 'torch': ``torch.nn``'s cells' types and messages)."""
        batched = self.step_layout(x, states, owner=owner, style=style, labels=labels)
        self.check_step_sizes(x, states, batched, style=style, labels=labels)
        return batched

    def step_layout(self, x: Any, states: Sequence[Any], *, owner: str, style: str,
                    labels: Sequence[str]) -> bool:
        """Numbers of dimensions (see :meth:`check_step`); returns ``batched``."""
        if style != "torch":
            if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
                raise ValueError(f"x must have shape (batch, {self.input_size}) or "
                                 f"({self.input_size},), got {tuple(x.shape)}")
            return x.ndim == 2
        if x.ndim not in (1, 2):
            raise ValueError(f"{owner}: Expected input to be 1D or 2D, got {x.ndim}D instead")
        for label, s in zip(labels, states):
            if s is not None and s.ndim not in (1, 2):
                raise ValueError(f"{owner}: Expected {label} to be 1D or 2D, got {s.ndim}D "
                                 f"instead")
        return x.ndim == 2

    def check_step_sizes(self, x: Any, states: Sequence[Any], batched: bool, *, style: str,
                         labels: Sequence[str]) -> None:
        """x's feature size and the states' shapes (see :meth:`check_step`)."""
        I, H = self.input_size, self.hidden_size
        if style != "torch":
            want = self.state_shape(x.shape[0] if batched else None)
            for label, s in zip(labels, states):
                if s is not None and tuple(s.shape) != want:
                    raise ValueError(f"{label} must have shape {want}, got {tuple(s.shape)}")
            return
        B = x.shape[0] if batched else 1
        if x.shape[-1] != I:
            raise RuntimeError(f"input has inconsistent input_size: got {x.shape[-1]} "
                               f"expected {I}")
        for i, s in enumerate(states):
            if s is None:
                continue
            shape = tuple(s.shape) if batched else (1,) + tuple(s.shape)
            if len(shape) != 2 or shape[0] != B:
                raise RuntimeError(f"Input batch size {B} doesn't match hidden{i} batch "
                                   f"size {shape[0] if len(shape) == 2 else list(shape)}")
            if shape[1] != H:
                raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got "
                                   f"{shape[1]}, expected {H}")

    def extra_repr(self) -> str:
        """torch.nn.RNNCellBase's ``extra_repr`` ('3, 4, bias=False, nonlinearity=relu'), then
        ``reset_after=False`` for the original GRU."""
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.mode == "rnn_relu":
            s += ", nonlinearity=relu"
        if self.mode == "gru" and self.reset_after is not True:
            s += f", reset_after={self.reset_after}"
        return s
