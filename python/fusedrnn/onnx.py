"""ONNX export and import of the NumPy stacks (:class:`fusedrnn.LSTM`, ``GRU``, ``RNN``).

The ``onnx`` package is optional: it is imported inside the functions, never by
``import fusedrnn``.

:func:`export` (and :func:`to_model`, :func:`build_model`) write one standard ONNX ``LSTM``,
``GRU`` or ``RNN`` node per layer. The graph, with ``L`` layers, ``D`` directions, hidden size
``H`` and symbolic ``T``, ``B`` (or the sizes given)::

    inputs   x               (T, B, I), or (B, T, I) with batch_first
             sequence_lens   (B,) int32                  [sequence_lens=True]
             h0, c0          (L*D, B, H) (c0: LSTM)       [initial_states=True]
    outputs  y               (T, B, D*H), or (B, T, D*H) with batch_first
             h_n, c_n        (L*D, B, H) (c_n: LSTM)

x is transposed to time-major once (batch_first); each layer's output ``Y (T, D, B, H)`` is
transposed to (T, B, D, H) and reshaped to (T, B, D*H) for the next layer (torch's layout); a
stack's states are sliced per layer from h0/c0 and concatenated into h_n/c_n. Weights are
initializers: ``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H) = [Wb, Rb]``, gate blocks
reordered from PyTorch's order (LSTM i, f, g, o -> ONNX i, o, f, c; GRU r, z, n -> z, r, h);
without bias, B is left out (ONNX takes it as zeros). GRU ``reset_after=True`` is
``linear_before_reset=1``, ``False`` is 0; RNN ``activations`` is Tanh or Relu per direction.
An LSTM with ``proj_size`` has no ONNX equivalent (``ValueError``). Dropout is training-only
and not exported.

:func:`load` builds a module from a model's recurrent nodes (see there for what it accepts).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from fusedrnn.spec import GATES, RNNSpec, canonical_mode

if TYPE_CHECKING:  # pragma: no cover
    import onnx as onnx_pkg

    from fusedrnn.modules import GRU, LSTM, RNN

__all__ = ["export", "to_model", "build_model", "load", "DEFAULT_OPSET", "MIN_OPSET"]

#: Opset written when none is asked for (ONNX Runtime 1.14 and later run it).
DEFAULT_OPSET = 17
#: The oldest opset the graph's glue can be written in (Slice takes its bounds as inputs).
MIN_OPSET = 10

#: The ONNX operator of each mode.
ONNX_OPS: Mapping[str, str] = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN",
                               "rnn_relu": "RNN"}
#: ONNX gate block k is PyTorch's block ONNX_FROM_TORCH[mode][k]:
#: LSTM torch (i, f, g, o) -> ONNX (i, o, f, c); GRU torch (r, z, n) -> ONNX (z, r, h).
ONNX_FROM_TORCH: Mapping[str, Tuple[int, ...]] = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2),
                                                  "rnn_tanh": (0,), "rnn_relu": (0,)}
#: PyTorch's gate block k is ONNX's block TORCH_FROM_ONNX[mode][k].
TORCH_FROM_ONNX: Mapping[str, Tuple[int, ...]] = {
    m: tuple(int(i) for i in np.argsort(order)) for m, order in ONNX_FROM_TORCH.items()}
_RNN_ACTIVATIONS = {"rnn_tanh": "Tanh", "rnn_relu": "Relu"}
# Each op's default activations per direction (load accepts only these, and Tanh/Relu for RNN).
_DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh")}

PathLike = Union[str, "os.PathLike[str]"]


def _import_onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401  (a submodule not always imported by onnx)
    except ImportError as e:
        raise ImportError("fusedrnn.onnx needs the onnx package: pip install onnx") from e
    return onnx


def _host(a: Any) -> np.ndarray:
    """A NumPy array from a NumPy, CuPy (``.get()``) or torch (``.numpy()``) array."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if hasattr(a, "get") and hasattr(a, "__cuda_array_interface__"):
        return a.get()
    return np.asarray(a)


def _reorder(a: np.ndarray, order: Tuple[int, ...]) -> np.ndarray:
    """Gate blocks (rows split into len(order) equal blocks) taken in ``order``."""
    return a.reshape(len(order), -1, *a.shape[1:])[list(order)].reshape(a.shape)


# ---------------------------------------------------------------------------------------------
# export


def _layer_weights(mode: str, params: Mapping[str, np.ndarray], layer: int, directions: int,
                   bias: bool) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)`` (None without bias) of one layer,
    gate blocks in ONNX's order."""
    order = ONNX_FROM_TORCH[mode]
    W, R, Bias = [], [], []
    for d in range(directions):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        W.append(_reorder(params["weight_ih" + sfx], order))
        R.append(_reorder(params["weight_hh" + sfx], order))
        if bias:
            Bias.append(np.concatenate([_reorder(params["bias_ih" + sfx], order),
                                        _reorder(params["bias_hh" + sfx], order)]))
    W_, R_ = (np.ascontiguousarray(np.stack(a)) for a in (W, R))
    return W_, R_, np.ascontiguousarray(np.stack(Bias)) if bias else None


def _check_opset(onnx: Any, opset: Optional[int]) -> int:
    if opset is None:
        return DEFAULT_OPSET
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, {newest}] (this onnx "
                         f"package's newest), got {opset!r}")
    return opset


def _params_spec(mode: str, params: Mapping[str, Any], num_layers: int, bidirectional: bool,
                 batch_first: bool, reset_after: bool) -> Tuple[RNNSpec, Dict[str, np.ndarray]]:
    """The stack's spec from its parameters (sizes, bias) and the parameters as NumPy arrays,
    checked against the spec's names and shapes."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays keyed by PyTorch's names, got "
                        f"{type(params).__name__}")
    if any(k.startswith("weight_hr") for k in params):
        raise ValueError("an LSTM with proj_size > 0 (weight_hr_l*) has no ONNX equivalent: the "
                         "ONNX LSTM operator has no projection")
    for name in ("weight_ih_l0", "weight_hh_l0"):
        if name not in params:
            raise ValueError(f"params lacks {name}")
    arrays = {k: _host(v) for k, v in params.items()}
    mode = canonical_mode(mode)
    gh, i = arrays["weight_ih_l0"].shape
    spec = RNNSpec(mode, i, gh // GATES[mode], num_layers, "bias_ih_l0" in arrays, batch_first,
                   0.0, bidirectional, 0, reset_after)
    shapes = spec.param_shapes()
    if set(shapes) != set(arrays):
        missing, extra = sorted(set(shapes) - set(arrays)), sorted(set(arrays) - set(shapes))
        raise ValueError(f"params do not match a {spec.torch_mode} of {num_layers} layer(s), "
                         f"bidirectional={bidirectional}: missing {missing}, unexpected {extra}")
    dtypes = {a.dtype for a in arrays.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
        raise ValueError(f"params must all be float32 or all float64, got "
                         f"{sorted(str(d) for d in dtypes)}")
    for k, want in shapes.items():
        if arrays[k].shape != want:
            raise ValueError(f"params[{k!r}] has shape {arrays[k].shape}, expected {want}")
    return spec, arrays


def build_model(mode: str, params: Mapping[str, Any], *, num_layers: int = 1,
                bidirectional: bool = False, batch_first: bool = False,
                reset_after: bool = True, opset: Optional[int] = None,
                sequence_lens: bool = False, initial_states: bool = False,
                seq_len: Optional[int] = None, batch: Optional[int] = None,
                graph_name: Optional[str] = None,
                producer_name: str = "fusedrnn") -> "onnx_pkg.ModelProto":
    """The checked ONNX model (see the module docstring for its inputs and outputs) of a stack
    given by its parameters.

    ``mode``: 'lstm', 'gru', 'rnn_tanh', 'rnn_relu' (or torch's 'LSTM'...). ``params``: dict
    keyed by PyTorch's names (``weight_ih_l0`` (G*H, I), ``weight_hh_l0_reverse`` (G*H, H),
    ``bias_ih_l1`` (G*H,)...), all float32 or all float64 (NumPy, CuPy or torch arrays); the
    sizes and ``bias`` are read from them. ``opset``: in [:data:`MIN_OPSET`, the onnx package's
    newest], default :data:`DEFAULT_OPSET`; the IR version is the oldest that opset allows.
    ``sequence_lens`` / ``initial_states`` add those graph inputs. ``seq_len`` / ``batch`` fix
    T / B in the graph's shapes (symbolic "T", "B" otherwise)."""
    onnx = _import_onnx()
    h, TP, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
    opset = _check_opset(onnx, opset)
    spec, params = _params_spec(mode, params, num_layers, bidirectional, batch_first,
                                reset_after)
    mode, L, D, H = spec.mode, spec.num_layers, spec.num_directions, spec.hidden_size
    dtype = params["weight_ih_l0"].dtype
    elem = TP.DOUBLE if dtype == np.float64 else TP.FLOAT
    T = "T" if seq_len is None else int(seq_len)
    Bn = "B" if batch is None else int(batch)
    lstm = spec.is_lstm

    def time_major(features):
        return [Bn, T, features] if batch_first else [T, Bn, features]

    inputs = [h.make_tensor_value_info("x", elem, time_major(spec.input_size))]
    if sequence_lens:
        inputs.append(h.make_tensor_value_info("sequence_lens", TP.INT32, [Bn]))
    states = ["h0", "c0"] if lstm else ["h0"]
    if initial_states:
        inputs += [h.make_tensor_value_info(s, elem, [L * D, Bn, H]) for s in states]
    outputs = [h.make_tensor_value_info("y", elem, time_major(D * H))]
    outputs += [h.make_tensor_value_info(s, elem, [L * D, Bn, H])
                for s in (["h_n", "c_n"] if lstm else ["h_n"])]

    const = lambda name, values: nh.from_array(np.asarray(values, np.int64), name)
    inits = [const("y_shape", [0, 0, -1])]
    nodes = []
    x_name = "x"
    if batch_first:
        nodes.append(h.make_node("Transpose", ["x"], ["x_time_major"], perm=[1, 0, 2],
                                 name="x_to_time_major"))
        x_name = "x_time_major"
    if initial_states and L > 1:
        inits.append(const("state_axes", [0]))
    attrs: Dict[str, Any] = {"hidden_size": H,
                             "direction": "bidirectional" if D == 2 else "forward"}
    if mode == "gru":
        attrs["linear_before_reset"] = int(spec.reset_after)
    if mode in _RNN_ACTIVATIONS:
        attrs["activations"] = [_RNN_ACTIVATIONS[mode]] * D
    op = ONNX_OPS[mode]
    for l in range(L):
        W, R, Bias = _layer_weights(mode, params, l, D, spec.bias)
        inits += [nh.from_array(W, f"W{l}"), nh.from_array(R, f"R{l}")]
        if Bias is not None:
            inits.append(nh.from_array(Bias, f"B{l}"))
        layer_states = ["", ""]
        if initial_states:
            if L == 1:
                layer_states = states + [""] * (2 - len(states))
            else:
                inits += [const(f"state_start{l}", [l * D]), const(f"state_end{l}", [(l + 1) * D])]
                for k, s in enumerate(states):
                    nodes.append(h.make_node(
                        "Slice", [s, f"state_start{l}", f"state_end{l}", "state_axes"],
                        [f"{s}_l{l}"], name=f"{s}_slice{l}"))
                    layer_states[k] = f"{s}_l{l}"
        node_in = [x_name, f"W{l}", f"R{l}", f"B{l}" if Bias is not None else "",
                   "sequence_lens" if sequence_lens else "", layer_states[0]]
        if lstm:
            node_in.append(layer_states[1])
        while node_in[-1] == "":
            node_in.pop()
        suffix = "" if L == 1 else f"_l{l}"
        node_out = [f"Y{l}", "h_n" + suffix] + (["c_n" + suffix] if lstm else [])
        y_name = ("y_time_major" if batch_first else "y") if l == L - 1 else f"x{l + 1}"
        nodes += [h.make_node(op, node_in, node_out, name=f"{op.lower()}{l}", **attrs),
                  h.make_node("Transpose", [f"Y{l}"], [f"Yt{l}"], perm=[0, 2, 1, 3],
                              name=f"directions_last{l}"),
                  h.make_node("Reshape", [f"Yt{l}", "y_shape"], [y_name],
                              name=f"directions_to_features{l}")]
        x_name = y_name
    if batch_first:
        nodes.append(h.make_node("Transpose", ["y_time_major"], ["y"], perm=[1, 0, 2],
                                 name="y_to_batch_first"))
    if L > 1:
        for s in (["h_n", "c_n"] if lstm else ["h_n"]):
            nodes.append(h.make_node("Concat", [f"{s}_l{l}" for l in range(L)], [s], axis=0,
                                     name=f"{s}_layers"))
    graph = h.make_graph(nodes, graph_name or f"fusedrnn_{mode}", inputs, outputs, inits,
                         doc_string=f"{spec.torch_mode}({spec.extra_repr()})")
    model = h.make_model_gen_version(graph, opset_imports=[h.make_opsetid("", opset)],
                                     producer_name=producer_name)
    onnx.checker.check_model(model)
    return model


def _check_module(module: Any) -> None:
    from fusedrnn.modules import _RNNBase

    if not isinstance(module, _RNNBase):
        raise TypeError(f"expected a fusedrnn.LSTM, GRU or RNN, got {type(module).__name__}")
    reg = getattr(module, "reg", None)
    if reg is not None and reg.deterministic_active:  # the dropouts are off in inference
        raise NotImplementedError(
            f"onnx.export: {type(module).__name__} with layer norm, zoneout, clipping or "
            f"peepholes ({reg}) has no standard ONNX node; export a plain RNN/LSTM/GRU")
    if module.spec.proj_size:
        raise ValueError(f"an LSTM with proj_size > 0 (here {module.spec.proj_size}) has no ONNX "
                         f"equivalent: the ONNX LSTM operator has no projection")


def to_model(module: "Union[LSTM, GRU, RNN]", *, opset: Optional[int] = None,
             sequence_lens: bool = False, initial_states: bool = False,
             seq_len: Optional[int] = None, batch: Optional[int] = None
             ) -> "onnx_pkg.ModelProto":
    """The checked ONNX model of a ``fusedrnn.LSTM/GRU/RNN`` (any device; arguments as
    :func:`export`)."""
    _check_module(module)
    s = module.spec
    return build_model(s.mode, dict(module._parameters), num_layers=s.num_layers,
                       bidirectional=s.bidirectional, batch_first=s.batch_first,
                       reset_after=s.reset_after, opset=opset, sequence_lens=sequence_lens,
                       initial_states=initial_states, seq_len=seq_len, batch=batch)


def export(module: "Union[LSTM, GRU, RNN]", path: PathLike, *, opset: Optional[int] = None,
           sequence_lens: bool = False, initial_states: bool = False,
           seq_len: Optional[int] = None, batch: Optional[int] = None) -> None:
    """Writes an ONNX model of ``module`` (a ``fusedrnn.LSTM/GRU/RNN``, inference) to ``path``.

    Graph inputs: ``x`` (T, B, I) ((B, T, I) with ``batch_first``), ``sequence_lens`` (B,)
    int32 with ``sequence_lens=True`` (the module's ``lengths``), ``h0`` (L*D, B, H) and, for the
    LSTM, ``c0`` (L*D, B, H) with ``initial_states=True`` (zeros otherwise). Outputs: ``y``
    (T, B, D*H) ((B, T, D*H) with ``batch_first``), ``h_n`` and ``c_n`` (LSTM) (L*D, B, H): what
    the module's forward returns. ``opset``: default :data:`DEFAULT_OPSET`. ``seq_len`` /
    ``batch`` fix T / B in the graph's shapes (symbolic otherwise).

    ``ValueError`` for an LSTM with ``proj_size`` (ONNX's LSTM has no projection); ``TypeError``
    for anything but a stack (cells are not exported)."""
    onnx = _import_onnx()
    model = to_model(module, opset=opset, sequence_lens=sequence_lens,
                     initial_states=initial_states, seq_len=seq_len, batch=batch)
    onnx.save_model(model, os.fspath(path))


# ---------------------------------------------------------------------------------------------
# load

_GLUE = ("Transpose", "Reshape", "Squeeze", "Identity")


class _Graph:
    """Initializers and Constant outputs as arrays, and the producer of each value."""

    def __init__(self, onnx: Any, graph: Any):
        nh, get = onnx.numpy_helper, onnx.helper.get_attribute_value
        self.consts: Dict[str, np.ndarray] = {t.name: nh.to_array(t) for t in graph.initializer}
        self.producer: Dict[str, Tuple[Any, int]] = {}
        for node in graph.node:
            for k, out in enumerate(node.output):
                self.producer[out] = (node, k)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
                a = node.attribute[0]
                if a.name == "value":
                    self.consts[node.output[0]] = nh.to_array(a.t)
                elif a.name in ("value_int", "value_ints", "value_float", "value_floats"):
                    self.consts[node.output[0]] = np.asarray(get(a))

    def const(self, name: str) -> Optional[np.ndarray]:
        return self.consts.get(name)


def _attrs(onnx: Any, node: Any) -> Dict[str, Any]:
    get = onnx.helper.get_attribute_value
    out = {}
    for a in node.attribute:
        v = get(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = [s.decode() if isinstance(s, bytes) else s for s in v]
        out[a.name] = v
    return out


def _parse_layer(onnx: Any, g: _Graph, node: Any, index: int) -> Dict[str, Any]:
    """One recurrent node as {mode, D, H, I, reset_after, W, R, B}; ValueError for what a
    fusedrnn module cannot represent."""
    where = f"{node.op_type} node {node.name or index!r} (layer {index})"
    attrs = _attrs(onnx, node)
    for name in ("clip", "activation_alpha", "activation_beta"):
        if name in attrs:
            raise ValueError(f"{where}: attribute '{name}' is not supported (fusedrnn has no "
                             f"clipping and no parameterised activations)")
    if attrs.get("input_forget", 0):
        raise ValueError(f"{where}: attribute 'input_forget'={attrs['input_forget']} (coupled "
                         f"input and forget gates) is not supported")
    if attrs.get("layout", 0):
        raise ValueError(f"{where}: attribute 'layout'={attrs['layout']} (batch-major states) is "
                         f"not supported; use layout=0 with Transpose nodes around the graph")
    direction = attrs.get("direction", "forward")
    if direction == "reverse":
        raise NotImplementedError(f"{where}: attribute 'direction'='reverse' (a reverse-only "
                                  f"layer) has no fusedrnn module equivalent")
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"{where}: unknown attribute 'direction'={direction!r}")
    D = 2 if direction == "bidirectional" else 1
    acts = [str(a).lower() for a in attrs.get("activations", [])]
    if node.op_type == "RNN":
        acts = acts or ["tanh"] * D
        if len(acts) != D or len(set(acts)) != 1 or acts[0] not in ("tanh", "relu"):
            raise ValueError(f"{where}: attribute 'activations'={attrs['activations']} is not "
                             f"supported (one of Tanh or Relu, the same for every direction)")
        mode = "rnn_" + acts[0]
    else:
        default = _DEFAULT_ACTIVATIONS[node.op_type]
        if acts and acts != list(default) * D:
            raise ValueError(f"{where}: attribute 'activations'={attrs['activations']} is not "
                             f"supported (only the default {list(default)} per direction)")
        mode = node.op_type.lower()
    reset_after = True
    if node.op_type == "GRU":
        reset_after = bool(attrs.get("linear_before_reset", 0))

    def weight(k, label):
        name = node.input[k] if len(node.input) > k else ""
        if not name:
            return None
        a = g.const(name)
        if a is None:
            raise ValueError(f"{where}: input {label} ({name!r}) must be an initializer or a "
                             f"Constant")
        return a

    W, R, B = weight(1, "W"), weight(2, "R"), weight(3, "B")
    if W is None or R is None:
        raise ValueError(f"{where}: inputs W and R are required")
    if node.op_type == "LSTM":
        P = weight(7, "P (peepholes)")
        if P is not None and np.any(P != 0):
            raise ValueError(f"{where}: input P (peephole weights) is nonzero; fusedrnn's LSTM "
                             f"has no peepholes")
    G = GATES[mode]
    if W.ndim != 3 or R.ndim != 3 or W.shape[0] != D or R.shape[0] != D:
        raise ValueError(f"{where}: W and R must be (num_directions={D}, G*H, *), got "
                         f"{W.shape} and {R.shape}")
    H = R.shape[2]
    if W.shape[1] != G * H or R.shape[1] != G * H:
        raise ValueError(f"{where}: W {W.shape} and R {R.shape} do not hold {G} gate blocks of "
                         f"hidden size {H}")
    if "hidden_size" in attrs and attrs["hidden_size"] != H:
        raise ValueError(f"{where}: attribute 'hidden_size'={attrs['hidden_size']} does not "
                         f"match R's shape {R.shape}")
    if B is not None and B.shape != (D, 2 * G * H):
        raise ValueError(f"{where}: B has shape {B.shape}, expected {(D, 2 * G * H)}")
    dtypes = {a.dtype for a in (W, R, B) if a is not None}
    if len(dtypes) != 1 or W.dtype not in (np.float32, np.float64):
        raise ValueError(f"{where}: W, R, B must all be float32 or all float64, got "
                         f"{sorted(str(d) for d in dtypes)}")
    return dict(mode=mode, D=D, H=H, I=W.shape[2], reset_after=reset_after, W=W, R=R, B=B,
                where=where)


def _trace(g: _Graph, name: str) -> Tuple[List[Any], Optional[Tuple[Any, int]]]:
    """Walks from value ``name`` up through glue ops (Transpose, Reshape, Squeeze, Identity):
    (the glue nodes nearest-first, the (node, output index) reached, None at a graph input)."""
    glue = []
    while name in g.producer:
        node, k = g.producer[name]
        if node.op_type not in _GLUE or node.domain not in ("", "ai.onnx"):
            return glue, (node, k)
        glue.append(node)
        name = node.input[0]
    return glue, None


def _check_interlayer(onnx: Any, g: _Graph, glue: List[Any], D: int, H: int,
                      where: str) -> None:
    """The glue from a layer's Y (T, D, B, H) to the next layer's X must make (T, B, D*H):
    Transpose(perm 0,2,1,3) then Reshape to 3-D; or, for D = 1, a Squeeze of axis 1 or a
    Reshape to 3-D alone."""
    ops = [n for n in reversed(glue) if n.op_type != "Identity"]  # data-flow order from Y
    kinds = [n.op_type for n in ops]

    def reshape_ok(node):
        shape = g.const(node.input[1]) if len(node.input) > 1 else None
        if shape is None:  # a computed shape: the op pattern alone is checked
            return True
        shape = [int(s) for s in shape.ravel()]
        return len(shape) == 3 and shape[2] in (-1, D * H) and -1 not in shape[:2]

    def squeeze_ok(node):
        axes = _attrs(onnx, node).get("axes")
        if axes is None and len(node.input) > 1:
            c = g.const(node.input[1])
            axes = None if c is None else [int(a) for a in c.ravel()]
        return axes is not None and list(axes) in ([1], [-3])

    ok = False
    if kinds == ["Transpose", "Reshape"]:
        ok = (list(_attrs(onnx, ops[0]).get("perm", [])) == [0, 2, 1, 3]
              and reshape_ok(ops[1]))
    elif kinds == ["Squeeze"] and D == 1:
        ok = squeeze_ok(ops[0])
    elif kinds == ["Reshape"] and D == 1:
        ok = reshape_ok(ops[0])
    if not ok:
        raise ValueError(f"{where}: its input is not the previous layer's output in (T, B, "
                         f"D*H) layout (glue found: {kinds or 'none'}; expected Transpose(perm="
                         f"[0, 2, 1, 3]) + Reshape, or for one direction Squeeze(axis 1))")


def load(model: Union[PathLike, bytes, "onnx_pkg.ModelProto"]) -> "Union[LSTM, GRU, RNN]":
    """A ``fusedrnn.LSTM``, ``GRU`` or ``RNN`` (eval mode, float32 or float64 as the weights)
    equivalent to an ONNX model's recurrent nodes. ``model``: a path, serialized bytes or an
    ``onnx.ModelProto``.

    Reads the top-level graph's ``LSTM`` / ``GRU`` / ``RNN`` nodes (one op type), in graph
    order as layers: a single node, or a chain where each node's X is the previous node's
    ``Y (T, D, B, H)`` made (T, B, D*H) (Transpose(perm=[0, 2, 1, 3]) + Reshape, or Squeeze of
    axis 1 for one direction): what :func:`export` and ``torch.onnx.export`` of
    ``torch.nn.LSTM/GRU/RNN`` write. ``batch_first`` is set when the first node's X comes
    from a Transpose(perm=[1, 0, 2]). Weights ``W``, ``R``, ``B`` (optional; zeros) must be
    initializers or Constants; the gate blocks are reordered to PyTorch's order and B split into
    ``bias_ih``/``bias_hh``; GRU ``linear_before_reset`` 1 / 0 gives ``reset_after`` True /
    False. The nodes' ``sequence_lens``, ``initial_h``, ``initial_c`` inputs are the module's
    ``lengths`` and ``hx`` at call time and are not read; nor is any other computation in the
    graph.

    ``ValueError`` naming the attribute or input for what a module cannot represent: ``clip``,
    ``activation_alpha/beta``, non-default ``activations`` (RNN: Tanh or Relu, the same in both
    directions), ``input_forget``, ``layout``=1, nonzero peepholes ``P``, layers whose hidden
    size, directions, activation or ``linear_before_reset`` differ, a layer input that is not
    the previous layer's output, weights computed in the graph, dtypes other than float32 and
    float64. ``NotImplementedError`` for ``direction='reverse'``."""
    onnx = _import_onnx()
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(model))
    else:
        proto = onnx.load(os.fspath(model))
    g = _Graph(onnx, proto.graph)
    nodes = [n for n in proto.graph.node
             if n.op_type in ("LSTM", "GRU", "RNN") and n.domain in ("", "ai.onnx")]
    if not nodes:
        raise ValueError("the model's graph has no LSTM, GRU or RNN node")
    kinds = sorted({n.op_type for n in nodes})
    if len(kinds) > 1:
        raise ValueError(f"the graph mixes recurrent node types {kinds}; a fusedrnn module is "
                         f"one of LSTM, GRU, RNN")
    layers = [_parse_layer(onnx, g, n, i) for i, n in enumerate(nodes)]
    first = layers[0]
    for i, (node, lay) in enumerate(zip(nodes, layers)):
        if i == 0:
            continue
        for key, label in (("D", "direction"), ("H", "hidden_size"), ("mode", "activations"),
                           ("reset_after", "linear_before_reset")):
            if lay[key] != first[key]:
                raise ValueError(f"{lay['where']}: attribute '{label}' differs from layer 0's "
                                 f"({lay[key]} vs {first[key]}); a fusedrnn stack has one "
                                 f"for all layers")
        if lay["I"] != first["D"] * first["H"]:
            raise ValueError(f"{lay['where']}: input size {lay['I']} is not the previous "
                             f"layer's output width D*hidden_size = {first['D'] * first['H']}")
        glue, source = _trace(g, node.input[0])
        if (source is None or source[1] != 0
                or list(source[0].output) != list(nodes[i - 1].output)):
            raise ValueError(f"{lay['where']}: its input X does not come from the previous "
                             f"recurrent node's output Y")
        _check_interlayer(onnx, g, glue, first["D"], first["H"], lay["where"])
    glue, _ = _trace(g, nodes[0].input[0])
    glue = [n for n in glue if n.op_type != "Identity"]
    batch_first = bool(glue) and glue[0].op_type == "Transpose" and \
        list(_attrs(onnx, glue[0]).get("perm", [])) == [1, 0, 2]

    mode, D = first["mode"], first["D"]
    dtype = first["W"].dtype
    if any(lay["W"].dtype != dtype for lay in layers):
        raise ValueError("the layers' weights mix float32 and float64")
    bias = any(lay["B"] is not None for lay in layers)
    order = TORCH_FROM_ONNX[mode]
    params: Dict[str, np.ndarray] = {}
    for l, lay in enumerate(layers):
        GH = lay["R"].shape[1]
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            params["weight_ih" + sfx] = _reorder(lay["W"][d], order)
            params["weight_hh" + sfx] = _reorder(lay["R"][d], order)
            if bias:
                b = lay["B"][d] if lay["B"] is not None else np.zeros(2 * GH, dtype)
                params["bias_ih" + sfx] = _reorder(b[:GH], order)
                params["bias_hh" + sfx] = _reorder(b[GH:], order)

    from fusedrnn import modules

    kw = dict(num_layers=len(layers), bias=bias, batch_first=batch_first,
              bidirectional=D == 2, dtype=dtype, seed=0)
    if mode == "lstm":
        m = modules.LSTM(first["I"], first["H"], **kw)
    elif mode == "gru":
        m = modules.GRU(first["I"], first["H"], reset_after=first["reset_after"], **kw)
    else:
        m = modules.RNN(first["I"], first["H"], nonlinearity=mode[4:], **kw)
    m.load_state_dict(params)
    return m
