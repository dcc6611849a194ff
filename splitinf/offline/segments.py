"""Cut a model into a chain of segments at the plan's cuts, so the device holds each weight once.

A device holding several split options used to hold one head per option, each with its own copy
of the weights before its cut. Here the model is cut once at every held cut, in chain order:
segment k runs the nodes the head of cut k needs that no earlier segment ran, from the tensors
before it to the tensors after it that a later segment, a later cut or the graph outputs still
need. A split option's head is then segments 1..k and its codec's own small graph
(:func:`codec_model`); the local model is every segment plus the last one, to the graph outputs.
The device runs such a list of files as one chain over a name -> tensor map
(:mod:`splitinf.edge.chain`).

An int8 head is a chain too: the int8 twins of the segments between every cut the planner weighs
(:class:`splitinf.offline.quantize.Int8Chain`; a segment without weights stays fp32), then the same
codec graph as its fp32 twin. The plan holds an int8 segment instead of its fp32 twin when no fp32
option or local model needs the fp32 one.

The pure core (:func:`chain_segments`, :func:`segment_model`, :func:`codec_model`) builds
ModelProtos; :func:`write_chain` is the file wrapper the planner calls, writing one segment at a
time so only one segment's weights are in memory beyond the source model;
:func:`write_serialized_chain` writes the int8 segments as they were measured, each file once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from splitinf.errors import PlanError
from splitinf.offline.graph import Cut, GraphView
from splitinf.offline.partition import part_model, save_model

__all__ = [
    "OUTPUTS_END",
    "ChainFiles",
    "Segment",
    "chain_segments",
    "codec_model",
    "last_uses",
    "segment_model",
    "write_chain",
    "write_serialized_chain",
]

OUTPUTS_END = "outputs"  # the end of the last segment of the local model: the graph outputs


@dataclass(frozen=True)
class Segment:
    """Nodes of the source model run between two points of the chain, and the tensors in and out."""

    end: str  # the cut id it ends at, or OUTPUTS_END
    nodes: frozenset[int]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ChainFiles:
    """What :func:`write_chain` wrote: (path, sha256) of each segment, and how many segments reach each end."""

    segments: tuple[tuple[str, str], ...]
    reach: Mapping[str, int]  # end (cut id or OUTPUTS_END) -> number of segments its head runs

    def up_to(self, end: str) -> tuple[tuple[str, str], ...]:
        return self.segments[: self.reach[end]]


def _ends(view: GraphView, cuts: Iterable[Cut], to_outputs: bool) -> list[tuple[str, tuple[str, ...], set[int]]]:
    """(end id, tensor names, the dynamic nodes its head needs) in chain order: smallest head first."""
    ends = [(cut.id, cut.names, view.head_nodes_for(cut.names)) for cut in cuts]
    ends.sort(key=lambda end: len(end[2]))
    if to_outputs:
        outputs = tuple(view.output_names)
        ends.append((OUTPUTS_END, outputs, view.head_nodes_for(outputs)))
    return ends


def chain_segments(view: GraphView, cuts: Iterable[Cut], *, to_outputs: bool) -> tuple[list[Segment], dict[str, int]]:
    """The segments between ``cuts`` (and to the graph outputs with ``to_outputs``), and per end the number
    of segments its head runs. A cut whose head adds no nodes (the graph inputs, full offload) adds no segment."""
    ends = _ends(view, cuts, to_outputs)
    ran: set[int] = set()
    node_sets: list[tuple[str, set[int]]] = []
    reach: dict[str, int] = {}
    for end, _, head in ends:
        new = head - ran
        if new:
            node_sets.append((end, new))
            ran |= new
        reach[end] = len(node_sets)
    graph_outputs = set(view.output_names)
    segments = []
    for k, (end, nodes) in enumerate(node_sets):
        made = [name for i in sorted(nodes) for name in view.nodes[i].output if name]
        made_set = set(made)
        consumed = dict.fromkeys(n for i in sorted(nodes) for n in view.node_inputs[i] if n in view.dynamic_tensors)
        later_needs = {n for _, later in node_sets[k + 1 :] for i in later for n in view.node_inputs[i]}
        later_needs |= {n for e, names, _ in ends if reach[e] > k for n in names} | graph_outputs
        segments.append(
            Segment(
                end=end,
                nodes=frozenset(nodes),
                inputs=tuple(n for n in consumed if n not in made_set),
                outputs=tuple(dict.fromkeys(n for n in made if n in later_needs)),
            )
        )
    return segments, reach


def last_uses(chain: Sequence[Segment], cuts: Sequence[Cut], reach: Mapping[str, int]) -> dict[str, int]:
    """Per tensor, the last segment index that reads it; a cut's tensors are read before the segment after it."""
    last: dict[str, int] = {}
    for index, segment in enumerate(chain):
        for name in segment.inputs:
            last[name] = index
    for cut in cuts:
        for name in cut.names:
            last[name] = max(last.get(name, -1), reach[cut.id] - 1)
    return last


def _value_info(view: GraphView, name: str) -> onnx.ValueInfoProto:
    if name in view.types:
        return view.value_info(name)
    graph = view.model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == name:
            return value
    raise PlanError(
        f"tensor {name!r} passes between two segments but shape inference found no type for it; "
        "hold other cuts (`splitinf cuts` lists the typed ones)"
    )


def segment_model(view: GraphView, segment: Segment) -> onnx.ModelProto:
    """One segment as a model: its nodes and the constants they need, its inputs and outputs typed."""
    return part_model(
        view,
        set(segment.nodes),
        [_value_info(view, n) for n in segment.inputs],
        [_value_info(view, n) for n in segment.outputs],
        f"segment_{segment.end}",
        segment.end,
    )


def codec_model(head: onnx.ModelProto, encoded_head: onnx.ModelProto) -> onnx.ModelProto | None:
    """The codec's own graph: the nodes ``encoded_head`` adds to ``head`` (Cast, QuantizeLinear) with their
    initializers, from the cut tensors they read to the wire tensors they make; None when it adds none (fp32)."""
    made_by_head = {name for node in head.graph.node for name in node.output}
    nodes = [node for node in encoded_head.graph.node if not made_by_head & set(node.output)]
    if not nodes:
        return None
    made = {name for node in nodes for name in node.output}
    read = dict.fromkeys(name for node in nodes for name in node.input if name and name not in made)
    initializers = [t for t in encoded_head.graph.initializer if t.name in read]
    stored = {t.name for t in initializers}
    head_outputs = {v.name: v for v in head.graph.output}
    missing = [n for n in read if n not in stored and n not in head_outputs]
    if missing:
        raise PlanError(f"the codec reads {missing}, which the head does not output; this codec cannot run apart")
    graph = onnx.helper.make_graph(
        nodes,
        "codec",
        [head_outputs[n] for n in read if n not in stored],
        [v for v in encoded_head.graph.output if v.name in made],
        initializers,
    )
    model = onnx.helper.make_model(graph, opset_imports=list(encoded_head.opset_import))
    model.ir_version = encoded_head.ir_version
    return model


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _segment_path(folder: str, k: int, end: str) -> str:
    return f"{folder}/{k:02d}-{_safe(end)}.onnx"


def write_chain(build: Path, view: GraphView, cuts: Sequence[Cut], *, to_outputs: bool) -> ChainFiles:
    """Write ``device/segments/NN-<end>.onnx`` for the chain through ``cuts`` (to the outputs with ``to_outputs``)."""
    segments, reach = chain_segments(view, cuts, to_outputs=to_outputs)
    written = []
    for k, segment in enumerate(segments, start=1):
        relative = _segment_path("device/segments", k, segment.end)
        written.append((relative, save_model(segment_model(view, segment), build / relative)))
    return ChainFiles(tuple(written), reach)


def write_serialized_chain(
    build: Path, folder: str, segments: Sequence[tuple[str, bytes]], reach: Mapping[str, int], *, reuse: ChainFiles
) -> ChainFiles:
    """Write ``folder/NN-<end>.onnx`` for segments already serialised ((end, bytes) in chain order, as they
    were measured), except those with the same bytes as a file of ``reuse``: that file stands for them."""
    written_by_sha = {sha: path for path, sha in reuse.segments}
    written = []
    for k, (end, data) in enumerate(segments, start=1):
        sha = hashlib.sha256(data).hexdigest()
        if sha not in written_by_sha:
            relative = _segment_path(folder, k, end)
            (build / relative).parent.mkdir(parents=True, exist_ok=True)
            (build / relative).write_bytes(data)
            written_by_sha[sha] = relative
        written.append((written_by_sha[sha], sha))
    return ChainFiles(tuple(written), dict(reach))
