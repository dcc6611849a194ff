"""Graph analysis: load a model, view it as a DAG, and enumerate the cuts that split it in two.

Terms
-----
*Dynamic* tensors depend on a graph input (or on a random op); everything else is
*constant*: initializers, the outputs of nodes fed only by constants (Constant,
ConstantOfShape of an initializer, shape arithmetic), and Shape/Size of a tensor whose
inferred shape is fully static (exported as a Constant node holding the value). Constants never
cross a cut: each side recomputes or stores the constants its own nodes need, so a
constant node needed by both sides is duplicated.

A *cut* is a set of dynamic tensors ``C`` that separates the graph inputs from the graph
outputs: the head computes ``C`` from the graph inputs, the tail computes every graph
output from ``C`` (plus constants). A graph input the tail needs is itself in ``C``, and so
is a graph output the head already computes.

Control-flow nodes (If, Loop, Scan) are atomic: their subgraphs are never entered, and the
outer-scope names their subgraphs read count as inputs of the node, so the side that runs
the node also has (or receives) them.

Enumeration rule
----------------
A DAG has exponentially many cuts; we list the linear family of *topological-prefix cuts*.
Take a topological order of the dynamic nodes that reach an output; after each prefix
``S`` (including the empty one) the cut is the set of tensors produced by ``S`` or fed as
graph inputs that are still needed: consumed by a node outside ``S`` or a graph output.
The order is chosen greedily to keep those live sets small: among the ready nodes, take the
one that adds the fewest bytes net of the bytes it frees (ties: the model's own order).
Chains and residual blocks then yield their natural single-tensor cuts, and parallel
branches are finished one at a time. Identical tensor sets are listed once. The list runs
from input to output: the first cut is the graph inputs (full offload), the last the graph
outputs (everything on the device). That is at most ``nodes + 1`` cuts, found in
``O(nodes x live-set width)``.

Sizes: without sample inputs, ``bytes_per_sample`` and FLOPs count symbolic dimensions (the
batch) as 1 and a zero-sized dimension as 0 (:func:`tensor_bytes`). Given ``feeds`` (one input
set, at the user's shapes), shape inference runs again with the inputs fixed at those shapes, and
bytes and FLOPs are counted at them; a tensor that static inference still cannot type is read from
one onnxruntime run on the feeds (as an extra graph output of a copy of the model), so it can
cross a cut too. The crossing tensors' specs keep the model's symbolic dimensions (a recovered
tensor's dimensions are all unknown), so the parts take any size the model takes. Tensors whose
element type or rank stays unknown are never offered as cut tensors; :meth:`GraphView.uncuttable`
says why, a line per reason.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from splitinf.contract.tensors import TensorSpec, tensor_bytes
from splitinf.errors import CutError, InputError, ModelLoadError
from splitinf.offline.inputs import run_checked
from splitinf.ort import SessionSettings, open_session

__all__ = [
    "Cut",
    "GraphView",
    "enumerate_cuts",
    "find_cut",
    "load_model",
    "spec_value_info",
]

# Nodes without dynamic inputs that must still run exactly once (duplicating them would
# draw different numbers on each side).
NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
# protobuf cannot serialise a message of 2 GiB or more; stay clear of the limit.
PROTOBUF_LIMIT = 2**31 - 2**26
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:-]+$")


# ----------------------------------------------------------------------------- loading


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX model with its external data; check it with ``onnx.checker``.

    Raises ModelLoadError naming the problem: missing file, not ONNX, corrupt, fails the checker.
    """
    model_path = Path(path)
    if not model_path.exists():
        raise ModelLoadError(f"{model_path} does not exist; give the path of an .onnx model file")
    if not model_path.is_file():
        raise ModelLoadError(f"{model_path} is not a file; give the path of an .onnx model file")
    try:
        model = onnx.load_model(str(model_path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{model_path} is not a readable ONNX model (protobuf parse failed: {exc}); "
            "check the file is an .onnx export and not truncated"
        ) from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot read {model_path}: {exc.strerror or exc}") from exc
    if model.ir_version == 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelLoadError(
            f"{model_path} is not an ONNX model (no IR version, graph or opset); check the file is an .onnx export"
        )
    try:
        # The path form checks models over 2 GiB too, and finds their external data.
        onnx.checker.check_model(str(model_path))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{model_path} fails onnx.checker: {first}; re-export the model or fix it with onnx tools"
        ) from exc
    try:
        onnx.load_external_data_for_model(model, str(model_path.parent))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{model_path} refers to external data that cannot be read ({exc}); "
            "keep the .onnx file beside its data files"
        ) from exc
    return model


# ----------------------------------------------------------------------------- the cut


@dataclass(frozen=True)
class Cut:
    """A set of crossing tensors, with the head's share of the model."""

    id: str
    tensors: tuple[TensorSpec, ...]
    bytes_per_sample: int
    head_nodes: int
    total_nodes: int
    head_flops: int
    total_flops: int
    head_params: int
    total_params: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "tensors": [t.to_json() for t in self.tensors],
            "bytes": self.bytes_per_sample,
            "head_nodes": self.head_nodes,
            "total_nodes": self.total_nodes,
            "head_flops": self.head_flops,
            "total_flops": self.total_flops,
            "head_params": self.head_params,
            "total_params": self.total_params,
        }


def cut_id(names: Iterable[str]) -> str:
    """Stable id from the crossing tensor names: readable when short and plain, else a digest."""
    ordered = sorted(names)
    joined = "+".join(ordered)
    if ordered and len(joined) <= 64 and all(_SAFE_ID.match(n) for n in ordered):
        return joined
    return "cut-" + hashlib.sha1("\n".join(ordered).encode()).hexdigest()[:12]


def spec_value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    """The ONNX value info of a tensor spec (numpy dtype name, dims: int, symbolic name or unknown)."""
    shape = [d if isinstance(d, (int, str)) else None for d in spec.shape]
    return onnx.helper.make_tensor_value_info(
        spec.name, int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))), shape
    )


def _dtype_name(elem_type: int) -> str:
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type).name)
    except (KeyError, TypeError, ValueError):
        return str(TensorProto.DataType.Name(elem_type)).lower()


# ----------------------------------------------------------------------------- the DAG view


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def _outer_names(graph: onnx.GraphProto, inner: set[str]) -> list[str]:
    """Names a subgraph reads from enclosing scopes; collects the names it defines into ``inner``."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    used: list[str] = []
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                used.append(name)
        for sub in _subgraphs(node):
            used.extend(n for n in _outer_names(sub, inner) if n not in defined)
        defined.update(o for o in node.output if o)
    inner |= defined
    return list(dict.fromkeys(used))


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without bulky weight data, for shape inference of models of any size."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    source = model.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    for tensor in source.initializer:
        if tensor.data_type in (TensorProto.INT64, TensorProto.INT32) and len(tensor.dims) <= 1:
            graph.initializer.append(tensor)  # small shape constants feed data propagation
            continue
        light = graph.initializer.add()
        light.name = tensor.name
        light.data_type = tensor.data_type
        light.dims.extend(tensor.dims)
        light.data_location = TensorProto.EXTERNAL
        entry = light.external_data.add()
        entry.key, entry.value = "location", "skeleton-placeholder"
    graph.sparse_initializer.extend(source.sparse_initializer)
    return skeleton


def _fix_input_shapes(skeleton: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> None:
    for value in skeleton.graph.input:
        if value.name in shapes and value.type.HasField("tensor_type"):
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in shapes[value.name]:
                dims.add().dim_value = int(size)


def _infer(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None) -> onnx.ModelProto:
    skeleton = _skeleton(model)
    if input_shapes:
        _fix_input_shapes(skeleton, input_shapes)
    try:
        return onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError):
        return skeleton


def _node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    def dims(name: str) -> tuple[int, ...] | None:
        return shapes.get(name)

    op = node.op_type
    if op in ("Conv", "ConvTranspose") and len(node.input) >= 2:
        out, w, x = dims(node.output[0]), dims(node.input[1]), dims(node.input[0])
        if out is None or w is None:
            return 0
        if op == "ConvTranspose":
            return 2 * int(np.prod(x[1:])) * int(np.prod(w[1:])) if x is not None else 0
        return 2 * int(np.prod(out[1:])) * int(np.prod(w[1:]))
    if op == "Gemm" and len(node.input) >= 2:
        a, out = dims(node.input[0]), dims(node.output[0])
        if a is None or out is None or len(a) != 2:
            return 0
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        k = a[0] if trans_a else a[1]
        return 2 * int(np.prod(out)) * k
    if op == "MatMul" and len(node.input) >= 2:
        a, out = dims(node.input[0]), dims(node.output[0])
        if a is None or out is None or not a:
            return 0
        return 2 * int(np.prod(out)) * a[-1]
    return 0


def _static_shape_value(
    node: onnx.NodeProto, types: dict[str, tuple[int, tuple[int | str | None, ...]]]
) -> np.ndarray | None:
    """The value of a Shape or Size node whose input shape is fully known, else None."""
    if node.op_type not in ("Shape", "Size") or node.domain not in ("", "ai.onnx") or not node.input:
        return None
    known = types.get(node.input[0])
    if known is None or not all(isinstance(d, int) for d in known[1]):
        return None
    dims = [int(d) for d in known[1] if isinstance(d, int)]
    if node.op_type == "Size":
        return np.array(int(np.prod(dims)), dtype=np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return np.array(dims[start:end], dtype=np.int64)  # Python slicing clamps as the Shape spec does


_TensorTypes = dict[str, tuple[int, tuple[int | str | None, ...]]]


def _effective_inputs(nodes: Sequence[onnx.NodeProto]) -> tuple[list[tuple[str, ...]], dict[str, str]]:
    """Each node's inputs plus the outer-scope names its control-flow subgraphs read, and the names
    defined inside those subgraphs (mapped to the node that holds them)."""
    node_inputs: list[tuple[str, ...]] = []
    subgraph_names: dict[str, str] = {}
    for node in nodes:
        names = [n for n in node.input if n]
        for sub in _subgraphs(node):
            inner: set[str] = set()
            names.extend(_outer_names(sub, inner))
            for name in inner:
                subgraph_names.setdefault(name, node.name or node.op_type)
        node_inputs.append(tuple(dict.fromkeys(names)))
    return node_inputs, subgraph_names


def _producers(nodes: Sequence[onnx.NodeProto]) -> dict[str, int]:
    return {name: index for index, node in enumerate(nodes) for name in node.output if name}


def _tensor_types(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None) -> _TensorTypes:
    """Element type and shape of every tensor shape inference (or an initializer) gives a rank for,
    with the graph inputs at ``input_shapes`` where given."""
    inferred = _infer(model, input_shapes)
    types: _TensorTypes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not tensor_type.elem_type or not tensor_type.HasField("shape"):
            continue  # unknown rank: no byte count, so never offered as a crossing tensor
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
        types[info.name] = (tensor_type.elem_type, shape)
    for tensor in model.graph.initializer:
        types.setdefault(tensor.name, (tensor.data_type, tuple(tensor.dims)))
    return types


def _static_values(nodes: Sequence[onnx.NodeProto], types: _TensorTypes) -> dict[int, np.ndarray]:
    """Shape/Size of a tensor whose shape is fully static is a constant, whatever computes the tensor."""
    values = {index: _static_shape_value(node, types) for index, node in enumerate(nodes)}
    return {index: value for index, value in values.items() if value is not None}


def _dynamic_nodes(
    nodes: Sequence[onnx.NodeProto],
    node_inputs: Sequence[tuple[str, ...]],
    input_names: Iterable[str],
    static_values: Mapping[int, np.ndarray],
) -> tuple[list[bool], set[str]]:
    """Which nodes depend on a graph input (or draw random numbers), and the tensors they make;
    one pass in the model's (topological) order."""
    dynamic_tensors = set(input_names)
    dynamic: list[bool] = []
    for index, node in enumerate(nodes):
        is_dynamic = index not in static_values and (
            node.op_type in NONDETERMINISTIC_OPS or any(n in dynamic_tensors for n in node_inputs[index])
        )
        dynamic.append(is_dynamic)
        if is_dynamic:
            dynamic_tensors.update(o for o in node.output if o)
    return dynamic, dynamic_tensors


def _reaching_outputs(
    n_nodes: int,
    output_names: Iterable[str],
    producer: Mapping[str, int],
    node_inputs: Sequence[tuple[str, ...]],
    static_values: Mapping[int, np.ndarray],
) -> list[bool]:
    """Which nodes a graph output depends on; the rest is dead and goes nowhere."""
    live = [False] * n_nodes
    stack = [producer[o] for o in output_names if o in producer]
    while stack:
        index = stack.pop()
        if live[index]:
            continue
        live[index] = True
        if index not in static_values:
            stack.extend(producer[n] for n in node_inputs[index] if n in producer)
    return live


def _element_count(dims: Sequence[int], empty: int) -> int:
    return int(np.prod(dims)) if dims else empty


def _parameter_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """Elements of each initializer and Constant node output, by tensor name."""
    params = {tensor.name: _element_count(tensor.dims, 1) for tensor in graph.initializer}
    for sparse in graph.sparse_initializer:
        params[sparse.values.name] = _element_count(sparse.values.dims, 0)
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    params[node.output[0]] = _element_count(attr.t.dims, 1)
    return params


def _recover_types(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], names: Sequence[str]
) -> tuple[dict[str, np.ndarray], str | None]:
    """The values of top-level tensors ``names`` in one onnxruntime run of ``model`` on ``feeds`` (as
    extra graph outputs of a copy), and why not (None when it ran)."""
    if not names:
        return {}, None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    listed = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in listed)
    data = copy.SerializeToString() if copy.ByteSize() < PROTOBUF_LIMIT else None
    if data is None:
        return {}, "the model is over 2 GiB, too large to run from memory"
    try:
        session = open_session(data, SessionSettings(graph_optimization="disable"))
        values = run_checked(session, feeds, names=names)
    except InputError as exc:
        return {}, str(exc).split("; give real inputs")[0]
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}, None


class GraphView:
    """Index maps over a model's top-level graph, built once (like ``onnx.utils.Extractor``).

    ``feeds`` (one input set, at the user's shapes) gives concrete shapes for bytes and FLOPs and
    recovers the tensors static inference cannot type (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None) -> None:
        self.model = model
        graph = model.graph
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.sparse_initializers: dict[str, onnx.SparseTensorProto] = {
            t.values.name: t for t in graph.sparse_initializer
        }
        constant_names = set(self.initializers) | set(self.sparse_initializers)
        self.inputs: list[onnx.ValueInfoProto] = [i for i in graph.input if i.name not in constant_names]
        self.input_names: list[str] = [i.name for i in self.inputs]
        self.output_names: list[str] = [o.name for o in graph.output]
        self.node_inputs, self.subgraph_names = _effective_inputs(self.nodes)
        self.producer: dict[str, int] = _producers(self.nodes)
        self.types: _TensorTypes = _tensor_types(model)
        self.static_values: dict[int, np.ndarray] = _static_values(self.nodes, self.types)
        self.dynamic, self.dynamic_tensors = _dynamic_nodes(
            self.nodes, self.node_inputs, self.input_names, self.static_values
        )
        self.live: list[bool] = _reaching_outputs(
            len(self.nodes), self.output_names, self.producer, self.node_inputs, self.static_values
        )
        self.recovery_note: str | None = None  # why a run on the feeds recovered nothing
        self.untyped_crossings: dict[str, int] | None = None  # untyped tensor -> prefix cuts it kept out
        self.shapes: dict[str, tuple[int, ...]] = self._concrete_shapes(feeds)
        self.flops: list[int] = [_node_flops(node, self.shapes) for node in self.nodes]
        self.total_flops = sum(self.flops)
        self.params: dict[str, int] = _parameter_counts(graph)
        self.total_params = sum(self.params.values())
        self._specs: dict[str, TensorSpec | None] = {}

    def _concrete_shapes(self, feeds: Mapping[str, np.ndarray] | None) -> dict[str, tuple[int, ...]]:
        """Each typed tensor's shape at the feeds' sizes (symbolic dimensions 1 without feeds); with
        feeds, the tensors inference cannot size are read from a run and added to ``types``."""
        shapes = {name: tuple(d if isinstance(d, int) else 1 for d in shape) for name, (_, shape) in self.types.items()}
        if feeds is None:
            return shapes
        fixed = _tensor_types(self.model, {n: np.shape(feeds[n]) for n in self.input_names if n in feeds})
        static = {name: shape for name, (_, shape) in fixed.items() if all(isinstance(d, int) for d in shape)}
        shapes.update({name: tuple(int(d) for d in shape if isinstance(d, int)) for name, shape in static.items()})
        shapes.update({n: tuple(np.shape(v)) for n, v in feeds.items()})
        wanted = [
            name
            for index, node in enumerate(self.nodes)
            if self.dynamic[index] and self.live[index]
            for name in node.output
            if name and name not in static
        ]
        values, self.recovery_note = _recover_types(self.model, feeds, wanted)
        for name, value in values.items():
            shapes[name] = tuple(value.shape)
            if name not in self.types:
                elem_type = int(onnx.helper.np_dtype_to_tensor_dtype(value.dtype))
                self.types[name] = (elem_type, (None,) * value.ndim)
        return shapes

    # -- specs

    def spec(self, name: str) -> TensorSpec | None:
        if name in self._specs:
            return self._specs[name]
        known = self.types.get(name)
        spec = None if known is None else TensorSpec(name=name, dtype=_dtype_name(known[0]), shape=known[1])
        self._specs[name] = spec
        return spec

    def input_specs(self) -> list[TensorSpec]:
        """The graph inputs' specs; InputError for an input without a tensor type."""
        specs = []
        for value in self.inputs:
            spec = self.spec(value.name)
            if spec is None:
                raise InputError(f"input {value.name!r} has no tensor type; splitinf handles tensor inputs only")
            specs.append(spec)
        return specs

    def value_info(self, name: str) -> onnx.ValueInfoProto:
        elem_type, shape = self.types[name]
        return onnx.helper.make_tensor_value_info(name, elem_type, list(shape))

    # -- closures

    def constant_closure(self, nodes: Iterable[int], names: Iterable[str] = ()) -> tuple[set[int], set[str]]:
        """Constant nodes and initializers the given nodes (and tensor ``names``) need, transitively."""
        const_nodes: set[int] = set()
        initializers: set[str] = set()
        stack = [name for index in nodes for name in self.node_inputs[index]]
        stack.extend(names)
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen or name in self.dynamic_tensors:
                continue
            seen.add(name)
            if name in self.initializers or name in self.sparse_initializers:
                initializers.add(name)
            elif name in self.producer:
                index = self.producer[name]
                if index not in const_nodes:
                    const_nodes.add(index)
                    if index not in self.static_values:  # those become Constant nodes
                        stack.extend(self.node_inputs[index])
        return const_nodes, initializers

    def head_nodes_for(self, tensors: Iterable[str]) -> set[int]:
        """Dynamic nodes needed to compute ``tensors`` from the graph inputs."""
        nodes: set[int] = set()
        stack = [self.producer[n] for n in tensors if n in self.producer]
        while stack:
            index = stack.pop()
            if index in nodes:
                continue
            nodes.add(index)
            stack.extend(
                self.producer[n] for n in self.node_inputs[index] if n in self.dynamic_tensors and n in self.producer
            )
        return nodes

    def tail_nodes_for(self, cut_names: set[str]) -> set[int]:
        """Dynamic nodes needed to compute the outputs from ``cut_names``; CutError if an input leaks past."""
        nodes: set[int] = set()
        origin: dict[str, str] = {}
        stack: list[tuple[str, str]] = [(o, o) for o in self.output_names]
        while stack:
            name, output = stack.pop()
            if name in origin or name in cut_names or name not in self.dynamic_tensors:
                continue
            origin[name] = output
            if name in self.producer:
                index = self.producer[name]
                if index not in nodes:
                    nodes.add(index)
                    stack.extend((n, output) for n in self.node_inputs[index])
            else:
                raise CutError(
                    f"the tensors {sorted(cut_names)} do not separate the graph: output {output!r} still depends "
                    f"on input {name!r}; add {name!r} (or a tensor between it and {output!r}) to the cut"
                )
        return nodes

    def crossing_specs(self, names: Iterable[str]) -> list[TensorSpec]:
        """The specs of cut tensors; CutError for one whose type or rank shape inference did not find."""
        specs = []
        for name in names:
            spec = self.spec(name)
            if spec is None:
                raise CutError(
                    f"tensor {name!r} has no known type and shape after shape inference, so it cannot cross a cut; "
                    "cut before or after the node that makes it"
                )
            specs.append(spec)
        return specs

    def head_params(self, const_nodes: Iterable[int], initializers: Iterable[str]) -> int:
        """Parameters the head stores: its initializers and its Constant nodes' values."""
        stored = sum(self.params.get(n, 0) for n in initializers)
        return stored + sum(self.params.get(self.nodes[i].output[0], 0) for i in const_nodes if self.nodes[i].output)

    def make_cut(self, specs: Sequence[TensorSpec], head_nodes: int, head_flops: int, head_params: int) -> Cut:
        return Cut(
            id=cut_id(s.name for s in specs),
            tensors=tuple(specs),
            bytes_per_sample=sum(self.bytes_of(s.name) for s in specs),
            head_nodes=head_nodes,
            total_nodes=len(self.nodes),
            head_flops=head_flops,
            total_flops=self.total_flops,
            head_params=head_params,
            total_params=self.total_params,
        )

    def cut_from_sets(self, names: Sequence[str], head: set[int]) -> Cut:
        """The cut crossing ``names`` whose head runs the dynamic nodes ``head``."""
        specs = self.crossing_specs(names)
        const_nodes, initializers = self.constant_closure(head)
        return self.make_cut(
            specs,
            head_nodes=len(head) + len(const_nodes),
            head_flops=sum(self.flops[i] for i in head),
            head_params=self.head_params(const_nodes, initializers),
        )

    # -- enumeration

    def cuts(self) -> list[Cut]:
        """The topological-prefix cuts, from input (full offload) to output (see the module docstring)."""
        walk = _PrefixWalk(self)
        seen: set[frozenset[str]] = set()
        found: list[Cut] = []
        self.untyped_crossings = {}
        while True:
            key = frozenset(walk.live_set)
            untyped = sorted(n for n in key if n not in self.types)
            if key and key not in seen and not untyped:
                seen.add(key)
                specs = self.crossing_specs(walk.crossing())
                found.append(self.make_cut(specs, walk.head_nodes, walk.head_flops, walk.head_params))
            elif key and key not in seen:
                seen.add(key)
                for name in untyped:
                    self.untyped_crossings[name] = self.untyped_crossings.get(name, 0) + 1
            if not walk.ready:
                return found
            walk.step()

    def uncuttable(self, limit: int = 8) -> list[str]:
        """Why parts of the graph offer no cut, a line per reason (after :meth:`cuts`): tensors
        without a known type or shape, and control-flow nodes, which run whole on one side."""
        if self.untyped_crossings is None:
            self.cuts()
            assert self.untyped_crossings is not None
        reasons = []
        fix = (
            f"a run on the inputs did not recover it: {self.recovery_note}"
            if self.recovery_note
            else "give --samples FILE.npz (or --shape) so a run recovers it"
        )
        ranked = sorted(self.untyped_crossings.items(), key=lambda item: -item[1])
        for name, count in ranked[:limit]:
            node = self.nodes[self.producer[name]] if name in self.producer else None
            made_by = f" (from {node.op_type} node {node.name or node.output[0]!r})" if node is not None else ""
            reasons.append(
                f"{count} cut(s) skipped: tensor {name!r}{made_by} has no known type or shape after "
                f"static shape inference; {fix}"
            )
        if len(ranked) > limit:
            reasons.append(f"... and {len(ranked) - limit} more untyped tensors keep cuts out")
        for index, node in enumerate(self.nodes):
            if self.dynamic[index] and self.live[index] and _subgraphs(node):
                reasons.append(
                    f"{node.op_type} node {node.name or node.output[0]!r} runs whole on one side: no cut inside "
                    "its subgraphs (control flow is atomic)"
                )
        return reasons

    def bytes_of(self, name: str) -> int:
        """A tensor's bytes at the feeds' shapes (one sample's, symbolic dimensions 1, without feeds);
        0 when no type is known for it."""
        spec = self.spec(name)
        if spec is None:
            return 0
        return tensor_bytes(spec.dtype, self.shapes.get(name, spec.shape))

    # -- lookup

    def find(self, cut_id_or_tensor_names: str | Sequence[str]) -> Cut:
        """See ``find_cut``."""
        return _find_cut(self, cut_id_or_tensor_names)

    def check_cut_names(self, names: Sequence[str]) -> None:
        if not names:
            raise CutError("the cut is empty; give at least one tensor name")
        for name in names:
            if name in self.subgraph_names:
                raise CutError(
                    f"tensor {name!r} is inside the subgraph of control-flow node {self.subgraph_names[name]!r}; "
                    "If/Loop/Scan are atomic, so cut before or after the node"
                )
            if name not in self.producer and name not in self.input_names and name not in self.initializers:
                raise CutError(f"the model has no tensor {name!r}; `splitinf cuts MODEL` lists the cuts and tensors")
            if name not in self.dynamic_tensors:
                raise CutError(
                    f"tensor {name!r} is a constant (it does not depend on any input); constants never cross "
                    "a cut, each side computes its own: drop it from the list"
                )


class _PrefixWalk:
    """The greedy topological walk behind ``GraphView.cuts``: the head grows one node a step, and
    the live tensors (made or fed so far and still needed later) are the cut after each step."""

    def __init__(self, view: GraphView) -> None:
        self.view = view
        order = [i for i in range(len(view.nodes)) if view.dynamic[i] and view.live[i]]
        self.uses = self._uses_left(view)
        self.waiting = dict.fromkeys(order, 0)  # dynamic inputs not yet computed
        self.dependents: dict[int, list[int]] = {}
        for i in order:
            for name in view.node_inputs[i]:
                if name in view.producer and view.dynamic[view.producer[name]]:
                    self.waiting[i] += 1
                    self.dependents.setdefault(view.producer[name], []).append(i)
        self.ready = {i for i in order if self.waiting[i] == 0}
        self.live = [n for n in view.input_names if self.uses.get(n, 0) > 0]  # in order of appearance
        self.live_set = set(self.live)
        self.const_nodes: set[int] = set()
        self.initializers: set[str] = set()
        self.head_nodes = 0
        self.head_flops = 0
        self.head_params = 0

    @staticmethod
    def _uses_left(view: GraphView) -> dict[str, int]:
        """Per dynamic tensor, how many live nodes (and graph outputs) still need it."""
        uses: dict[str, int] = {}
        for index, names in enumerate(view.node_inputs):
            if view.dynamic[index] and view.live[index]:
                for name in names:
                    if name in view.dynamic_tensors:
                        uses[name] = uses.get(name, 0) + 1
        for name in view.output_names:
            if name in view.dynamic_tensors:
                uses[name] = uses.get(name, 0) + 1
        return uses

    def crossing(self) -> list[str]:
        return [n for n in self.live if n in self.live_set]

    def _net_bytes(self, index: int) -> int:
        view = self.view
        added = sum(view.bytes_of(n) for n in view.nodes[index].output if n and self.uses.get(n, 0) > 0)
        freed = sum(view.bytes_of(n) for n in view.node_inputs[index] if self.uses.get(n, 0) == 1)
        return added - freed

    def step(self) -> None:
        """Move the ready node that adds the fewest bytes net of those it frees into the head."""
        # scores change as other nodes run, so rescore the (small) ready set each step
        _, index = min((self._net_bytes(i), i) for i in self.ready)
        self.ready.discard(index)
        self._add_to_head(index)
        for name in self.view.node_inputs[index]:
            if name in self.uses:
                self.uses[name] -= 1
                if self.uses[name] == 0:
                    self.live_set.discard(name)
        for name in self.view.nodes[index].output:
            if name and self.uses.get(name, 0) > 0:
                self.live.append(name)
                self.live_set.add(name)
        for dependent in self.dependents.get(index, ()):
            self.waiting[dependent] -= 1
            if self.waiting[dependent] == 0:
                self.ready.add(dependent)
        if len(self.live) > 4 * len(self.live_set) + 64:
            self.live = self.crossing()

    def _add_to_head(self, index: int) -> None:
        new_consts, new_inits = self.view.constant_closure([index])
        new_consts -= self.const_nodes
        new_inits -= self.initializers
        self.const_nodes |= new_consts
        self.initializers |= new_inits
        self.head_nodes = self.head_nodes + 1 + len(new_consts)
        self.head_flops += self.view.flops[index]
        self.head_params += self.view.head_params(new_consts, new_inits)


def enumerate_cuts(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None) -> list[Cut]:
    """The topological-prefix cuts of ``model``, from input (full offload) to output (see module docstring);
    ``feeds``: one input set at the user's shapes (see :class:`GraphView`)."""
    return GraphView(model, feeds).cuts()


def find_cut(model: onnx.ModelProto, cut_id_or_tensor_names: str | Sequence[str]) -> Cut:
    """A cut by its id, or by its tensor names (a sequence, or one string separated by commas; a
    readable id, names joined by "+", is found even where the enumeration at other shapes lacks it).

    Raises CutError for an unknown id, unknown or constant tensors, or tensors that do not separate the graph.
    """
    return GraphView(model).find(cut_id_or_tensor_names)


def _find_cut(view: GraphView, cut_id_or_tensor_names: str | Sequence[str]) -> Cut:
    if isinstance(cut_id_or_tensor_names, str):
        wanted = cut_id_or_tensor_names.strip()
        cuts = view.cuts()
        for cut in cuts:
            if cut.id == wanted:
                return cut
        known = set(view.producer) | set(view.input_names)
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        if len(names) == 1 and names[0] not in known and all(n in known for n in names[0].split("+")):
            names = names[0].split("+")  # a readable id is its tensor names joined by "+"
        if not names or not all(n in known for n in names):
            listed = ", ".join(c.id for c in cuts[:6])
            more = f" (and {len(cuts) - 6} more)" if len(cuts) > 6 else ""
            raise CutError(
                f"unknown cut id {wanted!r}; valid ids include {listed}{more}: run `splitinf cuts MODEL` "
                "for the list (cuts differ with the input shapes: give the same --shape/--samples as to "
                "`splitinf cuts`), or give comma-separated tensor names"
            )
    else:
        names = list(cut_id_or_tensor_names)
    names = list(dict.fromkeys(names))
    view.check_cut_names(names)
    view.tail_nodes_for(set(names))
    head = view.head_nodes_for(names)
    return view.cut_from_sets(names, head)
