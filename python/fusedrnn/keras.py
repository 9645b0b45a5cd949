"""Keras 3 recurrent layers to fusedrnn modules: :func:`from_keras`.

Nothing here imports Keras: a layer is read through ``get_weights()`` and ``get_config()`` (or
its attributes), and the same conversion takes plain arrays with the layer's class name and
config, so a model's weights convert where Keras is not installed.

Keras' layouts and how they map onto PyTorch's (``H`` = units, ``I`` = input features):

* ``kernel (I, G*H)`` is ``weight_ih.T``, ``recurrent_kernel (H, G*H)`` is ``weight_hh.T``;
* LSTM gates i, f, c, o are PyTorch's i, f, g, o (same order); its one bias ``(4H,)`` goes to
  ``bias_ih`` and ``bias_hh`` is zero;
* GRU gates z, r, h are reordered to PyTorch's r, z, n. ``reset_after=True`` (Keras' default)
  has the bias ``(2, 3H)`` = [input bias, recurrent bias] and is PyTorch's GRU;
  ``reset_after=False`` has one bias ``(3H,)`` (``bias_ih``; ``bias_hh`` zero) and is fusedrnn's
  ``GRU(reset_after=False)``: n = tanh(W_in x + b_in + W_hn (r * h)), the reset gate applied to
  h before the recurrent product, as Keras computes it;
* SimpleRNN is ``RNN(nonlinearity='tanh' | 'relu')`` with its bias in ``bias_ih``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fusedrnn.modules import GRU, LSTM, RNN, _as_dtype, _to_numpy

__all__ = ["from_keras"]

# normalised class name -> (Keras class name, fusedrnn gates)
_KINDS = {"lstm": ("LSTM", 4), "gru": ("GRU", 3), "simplernn": ("SimpleRNN", 1)}
_CELLS = {"lstmcell": "lstm", "grucell": "gru", "simplernncell": "simplernn"}
_WRAPPERS = ("bidirectional", "rnn")
_PREFIX = "from_keras"


def _norm(name: str) -> str:
    return str(name).replace("_", "").lower()


def _activation_name(value: Any) -> str:
    """'tanh' from Keras' serialised activation: a name, a ``{'config': 'tanh'}`` dict, a
    function (``keras.activations.tanh``), or None (Keras' 'linear')."""
    if value is None:
        return "linear"
    if isinstance(value, str):
        return value.rsplit(".", 1)[-1]
    if isinstance(value, Mapping):
        inner = value.get("config")
        return _activation_name(inner if isinstance(inner, str) else value.get("class_name"))
    return str(getattr(value, "__name__", value))


@dataclasses.dataclass
class _Direction:
    """One Keras recurrent layer (one direction of a Bidirectional), checked and in arrays."""

    kind: str                      # 'lstm', 'gru' or 'simplernn'
    where: str                     # names the layer in messages
    units: int
    input_size: int
    activation: str
    use_bias: bool
    reset_after: bool
    go_backwards: bool
    time_major: bool
    return_sequences: Optional[bool]
    weights: List[np.ndarray]      # kernel, recurrent_kernel[, bias] in Keras' layout

    @property
    def keras_name(self) -> str:
        return _KINDS[self.kind][0]

    def signature(self) -> Tuple[Any, ...]:
        """What two layers must share to be one fusedrnn stack."""
        return (self.kind, self.units, self.activation, self.use_bias, self.reset_after)

    def torch_params(self, suffix: str) -> dict:
        """PyTorch-named parameters (``weight_ih{suffix}``...) in PyTorch's gate order."""
        H = self.units
        G = _KINDS[self.kind][1]
        order = np.arange(G * H)
        if self.kind == "gru":  # Keras z, r, h -> PyTorch r, z, n
            order = np.concatenate([order[H:2 * H], order[:H], order[2 * H:]])
        kernel, recurrent = self.weights[:2]
        out = {f"weight_ih{suffix}": kernel[:, order].T,
               f"weight_hh{suffix}": recurrent[:, order].T}
        if self.use_bias:
            bias = self.weights[2]
            if bias.ndim == 2:  # GRU reset_after=True: [input bias, recurrent bias]
                b_ih, b_hh = bias[0][order], bias[1][order]
            else:
                b_ih, b_hh = bias[order], np.zeros_like(bias)
            out.update({f"bias_ih{suffix}": b_ih, f"bias_hh{suffix}": b_hh})
        return out


def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{_PREFIX}: {where}: {message}")


def _direction(kind: str, config: Mapping[str, Any], weights: Sequence[Any], where: str,
               in_bidirectional: bool = False) -> _Direction:
    """Checks one layer's config and weights (Keras' layout) against what fusedrnn computes."""
    keras_name, G = _KINDS[kind]
    weights = [_to_numpy(w) for w in weights]
    if not weights:
        raise _fail(where, "the layer has no weights yet: build it first (call it on an input, "
                           "or layer.build(input_shape))")
    use_bias = config.get("use_bias")
    if use_bias is None:
        use_bias = len(weights) == 3
    elif not isinstance(use_bias, (bool, np.bool_)):
        raise TypeError(f"{_PREFIX}: {where}: use_bias must be a bool, got {use_bias!r}")
    use_bias = bool(use_bias)
    want = 3 if use_bias else 2
    if len(weights) != want:
        raise _fail(where, f"a {keras_name} with use_bias={use_bias} has {want} weight arrays "
                           f"(kernel, recurrent_kernel{', bias' if use_bias else ''}), got "
                           f"{len(weights)}")
    for w in weights:
        if w.dtype.kind not in "fiu":
            raise TypeError(f"{_PREFIX}: {where}: weights must hold real numbers, got dtype "
                            f"{w.dtype}")
    kernel, recurrent = weights[:2]
    if recurrent.ndim != 2 or recurrent.shape[1] != G * recurrent.shape[0]:
        raise _fail(where, f"recurrent_kernel must have shape (units, {G}*units) for a "
                           f"{keras_name}, got {recurrent.shape}")
    H = recurrent.shape[0]
    units = config.get("units")
    if units is not None and units != H:
        raise _fail(where, f"units={units} but recurrent_kernel has shape {recurrent.shape}")
    if kernel.ndim != 2 or kernel.shape[1] != G * H:
        raise _fail(where, f"kernel must have shape (input_size, {G * H}), got {kernel.shape}")

    reset_after = True
    if kind == "gru":
        reset_after = config.get("reset_after")
        if reset_after is None:  # arrays without a config: the bias's shape tells
            reset_after = not use_bias or weights[2].ndim == 2
        reset_after = bool(reset_after)
    if use_bias:
        bias_shape = (2, G * H) if kind == "gru" and reset_after else (G * H,)
        if weights[2].shape != bias_shape:
            extra = f" (reset_after={reset_after})" if kind == "gru" else ""
            raise _fail(where, f"bias must have shape {bias_shape} for this {keras_name}"
                               f"{extra}, got {weights[2].shape}")

    activation = _activation_name(config.get("activation", "tanh"))
    allowed = ("tanh", "relu") if kind == "simplernn" else ("tanh",)
    if activation not in allowed:
        raise _fail(where, f"activation={activation!r}: fusedrnn's {keras_name} computes "
                           f"activation {' or '.join(map(repr, allowed))} only")
    if kind != "simplernn":
        rec = _activation_name(config.get("recurrent_activation", "sigmoid"))
        if rec != "sigmoid":
            raise _fail(where, f"recurrent_activation={rec!r}: fusedrnn's {keras_name} computes "
                               f"recurrent_activation='sigmoid' only (Keras' 'hard_sigmoid' "
                               f"differs)")
    go_backwards = bool(config.get("go_backwards", False))
    if go_backwards and not in_bidirectional:
        raise _fail(where, f"go_backwards=True: a fusedrnn module has no one-direction "
                           f"reverse mode. Keras returns such a layer's outputs in its "
                           f"processing order (last input first): they are a forward module's "
                           f"outputs on the time-reversed input (x[:, ::-1] batch-major), not "
                           f"flipped back. That module: from_keras(layer.get_weights(), "
                           f"{keras_name!r}, {{**layer.get_config(), 'go_backwards': False}})")
    rs = config.get("return_sequences")
    return _Direction(kind, where, H, kernel.shape[0], activation, use_bias, reset_after,
                      go_backwards, bool(config.get("time_major", False)),
                      None if rs is None else bool(rs), weights)


def _kind(name: str, where: str) -> str:
    kind = _norm(name)
    if kind not in _KINDS and kind not in _WRAPPERS:
        raise TypeError(f"{_PREFIX}: {where}: expected a Keras LSTM, GRU, SimpleRNN, "
                        f"RNN(LSTMCell/GRUCell/SimpleRNNCell) or Bidirectional of one, got "
                        f"{name!r}")
    return kind


def _cell_kind(name: str, where: str) -> str:
    kind = _CELLS.get(_norm(name))
    if kind is None:
        raise TypeError(f"{_PREFIX}: {where}: keras.layers.RNN of a {name}: only LSTMCell, "
                        f"GRUCell and SimpleRNNCell convert")
    return kind


def _direction_from_config(kind: str, config: Mapping[str, Any], weights: Sequence[Any],
                           where: str, in_bidirectional: bool = False) -> _Direction:
    """One direction from a normalised class name ('lstm'... or 'rnn', Keras' generic RNN of a
    cell, whose config holds the cell's under 'cell')."""
    if kind == "rnn":
        cell = config.get("cell")
        if not isinstance(cell, Mapping) or "class_name" not in cell:
            raise _fail(where, "Keras' generic RNN layer needs config['cell'] = {'class_name': "
                               "'LSTMCell', 'config': {...}} (a SimpleRNN layer is kind "
                               "'SimpleRNN')")
        config = {**cell.get("config", {}), **config}
        kind = _cell_kind(cell["class_name"], where)
    elif kind not in _KINDS:
        raise _fail(where, f"a Bidirectional of a {kind} does not convert")
    return _direction(kind, config, weights, where, in_bidirectional)


def _entry_from_config(kind: str, config: Mapping[str, Any], weights: Sequence[Any],
                       where: str) -> List[_Direction]:
    """One Keras layer (1 or 2 directions) from its class name, config and weights, as
    ``get_config()`` / ``get_weights()`` give them."""
    kind = _kind(kind, where)
    if not isinstance(config, Mapping):
        raise TypeError(f"{_PREFIX}: {where}: config must be a mapping (Keras' get_config()), "
                        f"got {type(config).__name__}")
    weights = list(weights)
    if kind != "bidirectional":
        return [_direction_from_config(kind, config, weights, where)]
    # config['layer'] (and optionally config['backward_layer']) serialised, as Keras does
    inner = config.get("layer")
    if not isinstance(inner, Mapping) or "class_name" not in inner:
        raise _fail(where, "a Bidirectional needs config['layer'] = {'class_name': 'LSTM', "
                           "'config': {...}} (as Bidirectional.get_config() gives)")
    back = config.get("backward_layer")
    if back is None:
        back_cfg = dict(inner.get("config", {}))
        back_cfg["go_backwards"] = not back_cfg.get("go_backwards", False)
        back = {"class_name": inner["class_name"], "config": back_cfg}
    _check_merge_mode(config.get("merge_mode", "concat"), where)
    if len(weights) % 2:
        raise _fail(where, f"a Bidirectional's weights are the forward layer's then the "
                           f"backward layer's: an even number of arrays, got {len(weights)}")
    half = len(weights) // 2
    dirs = []
    for label, sub, w in (("forward", inner, weights[:half]), ("backward", back, weights[half:])):
        sub_where = f"{where} ({label} layer)"
        dirs.append(_direction_from_config(_kind(sub["class_name"], sub_where),
                                           sub.get("config", {}), w, sub_where,
                                           in_bidirectional=True))
    return _check_bidirectional(dirs, where)


def _check_merge_mode(merge_mode: Any, where: str) -> None:
    if merge_mode != "concat":
        raise _fail(where, f"merge_mode={merge_mode!r}: a fusedrnn bidirectional module "
                           f"returns the two directions concatenated (merge_mode='concat'), "
                           f"y[..., :units] forward and y[..., units:] backward; combine them "
                           f"yourself from a module converted with merge_mode 'concat' (for "
                           f"arrays: from_keras(layer.get_weights(), 'Bidirectional', "
                           f"{{**layer.get_config(), 'merge_mode': 'concat'}}))")


def _check_bidirectional(dirs: List[_Direction], where: str) -> List[_Direction]:
    fw, bw = dirs
    if fw.go_backwards or not bw.go_backwards:
        raise _fail(where, f"a Bidirectional converts when its forward layer has "
                           f"go_backwards=False and its backward layer go_backwards=True, got "
                           f"{fw.go_backwards} and {bw.go_backwards}")
    if fw.signature() != bw.signature() or fw.input_size != bw.input_size:
        raise _fail(where, f"the forward and backward layers differ (kind, units, activation, "
                           f"use_bias, reset_after, input size): {fw.signature()} + "
                           f"{fw.input_size} vs {bw.signature()} + {bw.input_size}; fusedrnn's "
                           f"directions share them")
    return dirs


def _mro_kind(obj: Any, table: Mapping[str, Any]) -> Optional[str]:
    """The first class name of ``obj``'s type (or its bases) that ``table`` knows."""
    for cls in type(obj).__mro__:
        if _norm(cls.__name__) in table:
            return _norm(cls.__name__)
    return None


_CONFIG_KEYS = ("units", "activation", "recurrent_activation", "use_bias", "reset_after",
                "go_backwards", "return_sequences", "time_major")


def _object_config(obj: Any) -> dict:
    """``obj.get_config()`` (when it has one), completed from its attributes."""
    config = dict(obj.get_config()) if callable(getattr(obj, "get_config", None)) else {}
    for key in _CONFIG_KEYS:
        if key not in config and hasattr(obj, key):
            config[key] = getattr(obj, key)
    return config


def _entry_from_object(layer: Any, where: str) -> List[_Direction]:
    """One Keras layer object (duck-typed: ``get_weights()`` and its config)."""
    name = getattr(layer, "name", None)
    where = f"{where} {name!r}" if isinstance(name, str) else where
    kind = _mro_kind(layer, dict.fromkeys([*_KINDS, *_WRAPPERS]))
    if kind is None and hasattr(layer, "forward_layer") and hasattr(layer, "backward_layer"):
        kind = "bidirectional"
    if kind != "bidirectional":
        return [_direction_from_object(layer, where, kind)]
    config = _object_config(layer)
    _check_merge_mode(getattr(layer, "merge_mode", config.get("merge_mode", "concat")), where)
    if not (hasattr(layer, "forward_layer") and hasattr(layer, "backward_layer")):
        return _entry_from_config(kind, config, layer.get_weights(), where)
    dirs = [_direction_from_object(sub, f"{where} ({label} layer)", in_bidirectional=True)
            for label, sub in (("forward", layer.forward_layer),
                               ("backward", layer.backward_layer))]
    return _check_bidirectional(dirs, where)


def _direction_from_object(layer: Any, where: str, kind: Optional[str] = None,
                           in_bidirectional: bool = False) -> _Direction:
    """One direction from a layer object: LSTM/GRU/SimpleRNN, or Keras' generic RNN of a
    cell (any object with a ``cell``)."""
    if kind is None:
        kind = _mro_kind(layer, dict.fromkeys([*_KINDS, "rnn"]))
    if kind is None and hasattr(layer, "cell"):
        kind = "rnn"
    if kind not in _KINDS and kind != "rnn":
        raise TypeError(f"{_PREFIX}: {where}: expected a Keras LSTM, GRU, SimpleRNN, "
                        f"RNN(LSTMCell/GRUCell/SimpleRNNCell) or Bidirectional of one, got "
                        f"{type(layer).__name__}")
    config = _object_config(layer)
    if kind == "rnn":
        cell = layer.cell
        kind = _cell_kind(_mro_kind(cell, _CELLS) or type(cell).__name__, where)
        layer_keys = ("go_backwards", "return_sequences", "time_major")
        config = {**_object_config(cell), **{k: config[k] for k in layer_keys if k in config}}
    return _direction(kind, config, layer.get_weights(), where, in_bidirectional)


def _is_layer(obj: Any) -> bool:
    return callable(getattr(obj, "get_weights", None))


def from_keras(source: Any, kind: Optional[str] = None,
               config: Optional[Mapping[str, Any]] = None, *,
               batch_first: Optional[bool] = None,
               dtype: Any = None) -> Union[LSTM, GRU, RNN]:
    """The fusedrnn module computing a Keras 3 ``LSTM``, ``GRU`` or ``SimpleRNN`` layer (or a
    ``Bidirectional`` of one, or a stack of them), with its weights. Keras is not imported.

    ``source`` is one of:

    * a Keras layer: ``keras.layers.LSTM/GRU/SimpleRNN``, ``keras.layers.RNN`` of an
      ``LSTMCell/GRUCell/SimpleRNNCell``, or ``keras.layers.Bidirectional`` of one; read
      duck-typed through ``get_weights()`` and ``get_config()`` (or the attributes ``units``,
      ``activation``, ``recurrent_activation``, ``use_bias``, ``reset_after``,
      ``go_backwards``, ``return_sequences``, ``time_major``). It must be built (have weights);
    * a list of such layers: one multi-layer module (``num_layers = len(source)``). Each layer
      reads the previous one's output: all but the last must have ``return_sequences=True``,
      all the same kind and configuration, the same ``units``, and all bidirectional or none;
    * plain arrays, as ``layer.get_weights()`` returns them: ``[kernel (I, G*H),
      recurrent_kernel (H, G*H), bias]`` (bias ``(G*H,)``, or ``(2, 3H)`` for a GRU with
      ``reset_after=True``; left out with ``use_bias=False``), with G = 4 (LSTM), 3 (GRU) or 1
      (SimpleRNN). Then ``kind`` names the Keras class ('LSTM', 'GRU', 'SimpleRNN',
      'Bidirectional' or 'RNN'; case and underscores are ignored) and ``config`` is its
      ``get_config()`` dict or any part of it (missing keys take Keras' defaults; ``units``,
      ``use_bias`` and, for a GRU with a bias, ``reset_after`` are read off the arrays). A
      Bidirectional's arrays are the forward layer's then the backward layer's, and its config
      holds ``'layer': {'class_name': 'GRU', 'config': {...}}`` (and ``merge_mode``,
      ``backward_layer``) as ``Bidirectional.get_config()`` does. A list of such weight lists
      makes a stack, every layer with the same ``kind`` and ``config``.

    Returns ``fusedrnn.LSTM``, ``GRU`` (``reset_after`` as Keras') or ``RNN``
    (``nonlinearity`` 'tanh' or 'relu'), in eval mode, ``bidirectional`` for a Bidirectional,
    ``batch_first=True`` (Keras' ``(batch, time, features)``) unless ``batch_first`` says
    otherwise or the layer is ``time_major``. ``dtype``: float32 or float64; by default float64
    when all weights are float64, else float32.

    How the module's ``y, h_n`` (``y, (h_n, c_n)`` for the LSTM) give Keras' outputs, for x
    ``(B, T, I)``: ``return_sequences=True`` is y ``(B, T, D*H)``; ``return_sequences=False``
    is ``h_n[-1]`` (a Bidirectional's: ``concatenate([h_n[-2], h_n[-1]], -1)``);
    ``return_state=True`` adds ``h_n[-1]`` (and ``c_n[-1]``), for a Bidirectional the forward
    states ``h_n[-2]``, ``c_n[-2]`` then the backward ones. Keras' ``initial_state=[h, c]``
    (each ``(B, H)``) is ``hx=(h[None], c[None])``; a Bidirectional's ``[h_f, c_f, h_b, c_b]``
    is ``hx=(stack([h_f, h_b]), stack([c_f, c_b]))``. A right-padded mask is
    ``lengths=mask.sum(1)`` (fusedrnn zeroes the padded outputs: Keras does with
    ``zero_output_for_mask=True``, which Bidirectional sets).

    Raises ``ValueError`` naming the layer and attribute for what fusedrnn does not compute:
    ``activation`` other than 'tanh' (LSTM, GRU) or 'tanh'/'relu' (SimpleRNN),
    ``recurrent_activation`` other than 'sigmoid', ``go_backwards=True`` outside a
    Bidirectional (run the converted forward layer on the time-reversed input instead), a
    Bidirectional's ``merge_mode`` other than 'concat' or directions that differ, and weights
    of the wrong number or shape; ``TypeError`` for an object that is none of the above.
    Keras' ``dropout``/``recurrent_dropout`` (training only) and ``stateful`` (the caller
    passes the state) are not carried over."""
    if _is_layer(source):
        if kind is not None or config is not None:
            raise TypeError(f"{_PREFIX}: kind and config are for plain arrays; a Keras layer "
                            f"carries its own")
        entries = [_entry_from_object(source, "layer")]
        stacked = False
    elif isinstance(source, (list, tuple)) and source and all(map(_is_layer, source)):
        if kind is not None or config is not None:
            raise TypeError(f"{_PREFIX}: kind and config are for plain arrays; Keras layers "
                            f"carry their own")
        entries = [_entry_from_object(s, f"layer {i}") for i, s in enumerate(source)]
        stacked = True
    elif isinstance(source, (list, tuple)) and source:
        if kind is None:
            raise TypeError(f"{_PREFIX}: plain arrays need kind ('LSTM', 'GRU', 'SimpleRNN', "
                            f"'Bidirectional' or 'RNN')")
        config = {} if config is None else config
        stacked = all(isinstance(s, (list, tuple)) for s in source)
        groups = source if stacked else [source]
        entries = [_entry_from_config(kind, config, g, f"layer {i}" if stacked else "weights")
                   for i, g in enumerate(groups)]
    else:
        raise TypeError(f"{_PREFIX}: expected a Keras layer, a list of layers, or a list of "
                        f"weight arrays, got {type(source).__name__}")
    return _build(entries, stacked, batch_first, dtype)


def _build(entries: List[List[_Direction]], stacked: bool, batch_first: Optional[bool],
           dtype: Any) -> Union[LSTM, GRU, RNN]:
    first = entries[0][0]
    D = len(entries[0])
    for i, dirs in enumerate(entries):
        d0 = dirs[0]
        if len(dirs) != D:
            raise _fail(d0.where, "a stack's layers must all be Bidirectional or all not")
        if d0.signature() != first.signature():
            raise _fail(d0.where, f"a stack's layers must share kind, units, activation, "
                                  f"use_bias and reset_after: {d0.signature()} vs layer 0's "
                                  f"{first.signature()}")
        if i and d0.input_size != D * first.units:
            raise _fail(d0.where, f"input size {d0.input_size} does not chain: the layer below "
                                  f"outputs {D * first.units} features")
        if stacked and i < len(entries) - 1 and d0.return_sequences is False:
            raise _fail(d0.where, "return_sequences=False below the top of a stack: the next "
                                  "layer would not read a sequence")
    if dtype is None:
        every = [w for dirs in entries for d in dirs for w in d.weights]
        dtype = np.float64 if all(w.dtype == np.float64 for w in every) else np.float32
    dtype = _as_dtype(dtype)
    if batch_first is None:
        batch_first = not first.time_major
    kw = dict(num_layers=len(entries), bias=first.use_bias, batch_first=bool(batch_first),
              bidirectional=D == 2, dtype=dtype)
    if first.kind == "lstm":
        module = LSTM(first.input_size, first.units, **kw)
    elif first.kind == "gru":
        module = GRU(first.input_size, first.units, reset_after=first.reset_after, **kw)
    else:
        module = RNN(first.input_size, first.units, nonlinearity=first.activation, **kw)
    params = {}
    for layer, dirs in enumerate(entries):
        for d, direction in enumerate(dirs):
            params.update(direction.torch_params(f"_l{layer}{'_reverse' if d else ''}"))
    module.load_state_dict(params)
    return module
