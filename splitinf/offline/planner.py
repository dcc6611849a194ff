"""The planner's pure core: which options to hold, and which to use at each network condition.

Every option is priced by :func:`splitinf.contract.plan.expected_latency` (head on the device +
serialisation + bytes / bandwidth + round trip + tail on the server; a local model costs its run
time). Two ways to choose a cut are here:

- exhaustive evaluation of the enumerated cuts (:func:`best_option`), which the plan uses, since
  the heads and tails are timed as whole sessions (onnxruntime fuses nodes, so per-node times
  mislead);
- a minimum s-t cut over per-node costs (the DAG approach of DADS, :func:`min_cut_split`), for
  when only per-node costs are known. Both are checked against brute force in the tests.

The decision table covers a grid of bandwidths and round-trip times; candidate cuts are the
options best somewhere on the grid, capped at a small number. Full offload ("send the input") is
always weighed, and its best codec variants are always held, so the plan matches or beats it at
every grid point by construction.

Everything above the last section is pure. :func:`plan_model` at the end is the one I/O wrapper
(what ``splitinf plan`` runs): it reads the model, profiles and samples, runs onnxruntime for
calibration and fidelity, and writes the plan directory.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitinf.contract.plan import (
    DecisionTable,
    Option,
    Plan,
    TensorSpec,
    content_addressed_name,
    expected_latency,
)
from splitinf.errors import PlanError

if TYPE_CHECKING:
    import numpy as np
    import onnx

__all__ = [
    "DEFAULT_BANDWIDTHS_BPS",
    "DEFAULT_MAX_ACCURACY_DROP",
    "DEFAULT_RTTS_S",
    "SplitGraph",
    "TensorEdge",
    "best_option",
    "check_profile",
    "decision_table",
    "io_specs",
    "log_grid",
    "max_flow_min_cut",
    "min_cut_split",
    "option_names",
    "plan_model",
    "read_samples",
    "profile_cut_codec",
    "profiled_cut_ids",
    "select_candidates",
    "split_cost",
]


def log_grid(low: float, high: float, points: int) -> tuple[float, ...]:
    """``points`` values from ``low`` to ``high`` spaced evenly on a log scale."""
    if low <= 0 or high < low or points < 1:
        raise PlanError(f"a grid needs 0 < low <= high and at least one point, got {low}, {high}, {points}")
    if points == 1:
        return (low,)
    ratio = (high / low) ** (1.0 / (points - 1))
    return tuple(low * ratio**i for i in range(points - 1)) + (high,)


DEFAULT_BANDWIDTHS_BPS = log_grid(0.25e6, 1000e6, 13)
DEFAULT_RTTS_S = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


def option_names(model_name: str, cut_id: str, codec: str) -> tuple[str, str, str]:
    """(option id, head path in the plan directory, tail model name) for a split option; the plan
    written names the tail after its content too (``content_addressed_name``)."""
    safe_cut = re.sub(r"[^A-Za-z0-9_.-]", "_", cut_id)
    safe_model = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    return (
        f"split:{cut_id}:{codec}",
        f"device/heads/split-{safe_cut}-{codec}.onnx",
        f"{safe_model}.{safe_cut}.{codec}",
    )


def best_option(options: Sequence[Option], bandwidth_bps: float, rtt_s: float) -> Option:
    """The option with the least expected latency; ties go to the earlier option."""
    if not options:
        raise PlanError("there are no options to choose from")
    return min(options, key=lambda o: expected_latency(o, bandwidth_bps, rtt_s))


def decision_table(
    options: Sequence[Option], bandwidths_bps: Sequence[float], rtts_s: Sequence[float]
) -> DecisionTable:
    bandwidths = tuple(sorted(float(b) for b in bandwidths_bps))
    rtts = tuple(sorted(float(r) for r in rtts_s))
    choices = tuple(tuple(best_option(options, bw, rtt).id for rtt in rtts) for bw in bandwidths)
    return DecisionTable(bandwidths, rtts, choices)


def select_candidates(
    split_options: Sequence[Option],
    *,
    full_offload: Collection[str],
    local: Option | None = None,
    bandwidths_bps: Sequence[float] = DEFAULT_BANDWIDTHS_BPS,
    rtts_s: Sequence[float] = DEFAULT_RTTS_S,
    max_candidates: int = 4,
    min_accuracy: float | None = None,
) -> list[Option]:
    """The split options worth holding on the device.

    ``full_offload`` names the options whose cut is the graph inputs. Options whose accuracy is
    below ``min_accuracy`` are dropped. The full-offload options that are best among full-offload
    options somewhere on the grid are always kept (so the plan matches or beats sending the input);
    at most ``max_candidates`` other cuts are added: those best somewhere on the grid, chosen
    greedily by how much they lower the summed log latency over the grid when there are too many.
    """
    if max_candidates < 0:
        raise PlanError(f"--max-candidates must be >= 0, got {max_candidates}")
    grid = [(bw, rtt) for bw in bandwidths_bps for rtt in rtts_s]
    eligible = [o for o in split_options if min_accuracy is None or o.accuracy is None or o.accuracy >= min_accuracy]
    offload = [o for o in eligible if o.id in full_offload]
    if not offload:
        raise PlanError(
            "no full-offload option is eligible (the input cut is missing from the profiles, or every codec "
            "for it is below the accuracy floor); profile the input cut and keep codec fp32"
        )
    kept = list(dict.fromkeys(best_option(offload, bw, rtt).id for bw, rtt in grid))
    chosen = [o for o in offload if o.id in kept]
    base = chosen + ([local] if local is not None else [])
    others = [o for o in eligible if o.id not in full_offload]
    winners_ids = dict.fromkeys(best_option(base + others, bw, rtt).id for bw, rtt in grid)
    winners = [o for o in others if o.id in winners_ids]

    def score(held: Sequence[Option]) -> float:
        return sum(math.log(expected_latency(best_option(held, bw, rtt), bw, rtt) + 1e-12) for bw, rtt in grid)

    extra: list[Option] = []
    while winners and len(extra) < max_candidates:
        current = base + extra
        pick = min(winners, key=lambda o: score(current + [o]))
        extra.append(pick)
        winners.remove(pick)
    order = {o.id: i for i, o in enumerate(split_options)}
    return sorted(chosen + extra, key=lambda o: order[o.id])


# --- minimum s-t cut over per-node costs (DADS) ---------------------------------------------


@dataclass(frozen=True)
class TensorEdge:
    """A tensor: its producer node (None for a graph input, which lives on the device) and consumers."""

    name: str
    producer: str | None
    consumers: tuple[str, ...]
    bytes: int


@dataclass(frozen=True)
class SplitGraph:
    """Per-node costs of a DAG: seconds on the device and on the server, and the tensors between nodes."""

    nodes: tuple[str, ...]
    device_seconds: Mapping[str, float]
    server_seconds: Mapping[str, float]
    tensors: tuple[TensorEdge, ...]


def split_cost(graph: SplitGraph, device_nodes: Collection[str], bandwidth_bps: float, rtt_s: float) -> float:
    """Expected seconds when ``device_nodes`` run on the device and the rest on the server.

    Each tensor made on the device (or a graph input) and read on the server crosses once. A
    partition where the server feeds the device is infeasible (infinite).
    """
    device = set(device_nodes)
    server = [n for n in graph.nodes if n not in device]
    seconds = sum(graph.device_seconds[n] for n in device) + sum(graph.server_seconds[n] for n in server)
    for tensor in graph.tensors:
        on_device = tensor.producer is None or tensor.producer in device
        if not on_device and any(c in device for c in tensor.consumers):
            return math.inf
        if on_device and any(c not in device for c in tensor.consumers):
            seconds += tensor.bytes * 8.0 / bandwidth_bps
    return seconds + (rtt_s if server else 0.0)


def max_flow_min_cut(
    n_vertices: int, edges: Sequence[tuple[int, int, float]], source: int, sink: int
) -> tuple[float, set[int]]:
    """Dinic's max flow; returns the flow value and the source side of a minimum cut."""
    graph: list[list[int]] = [[] for _ in range(n_vertices)]
    to: list[int] = []
    cap: list[float] = []
    for u, v, c in edges:
        graph[u].append(len(to))
        to.append(v)
        cap.append(c)
        graph[v].append(len(to))
        to.append(u)
        cap.append(0.0)
    eps = 1e-15
    flow = 0.0

    def levels() -> list[int] | None:
        level = [-1] * n_vertices
        level[source] = 0
        queue = deque([source])
        while queue:
            u = queue.popleft()
            for e in graph[u]:
                if cap[e] > eps and level[to[e]] < 0:
                    level[to[e]] = level[u] + 1
                    queue.append(to[e])
        return level if level[sink] >= 0 else None

    while (level := levels()) is not None:
        pointer = [0] * n_vertices

        def push(u: int, limit: float, level: list[int] = level, pointer: list[int] = pointer) -> float:
            if u == sink:
                return limit
            while pointer[u] < len(graph[u]):
                e = graph[u][pointer[u]]
                v = to[e]
                if cap[e] > eps and level[v] == level[u] + 1:
                    pushed = push(v, min(limit, cap[e]))
                    if pushed > eps:
                        cap[e] -= pushed
                        cap[e ^ 1] += pushed
                        return pushed
                pointer[u] += 1
            return 0.0

        while (pushed := push(source, math.inf)) > eps:
            flow += pushed
    reachable = {source}
    queue = deque([source])
    while queue:
        u = queue.popleft()
        for e in graph[u]:
            if cap[e] > eps and to[e] not in reachable:
                reachable.add(to[e])
                queue.append(to[e])
    return flow, reachable


def min_cut_split(graph: SplitGraph, bandwidth_bps: float, rtt_s: float) -> tuple[frozenset[str], float]:
    """The device-side node set with the least :func:`split_cost`, by one minimum s-t cut.

    Source = device, sink = server. Node v: source->v costs its server time (cut when v is on the
    server), v->sink its device time. A tensor gets an auxiliary vertex a: producer->a costs its
    transfer and a->consumer is infinite, so a tensor crosses once however many server nodes read
    it; consumer->producer is infinite, so no server node feeds a device node. The round trip is a
    fixed cost of any split, so the all-on-device assignment is compared separately.
    """
    if bandwidth_bps <= 0:
        return frozenset(graph.nodes), split_cost(graph, graph.nodes, bandwidth_bps or 1.0, rtt_s)
    index = {n: i + 2 for i, n in enumerate(graph.nodes)}
    source, sink = 0, 1
    finite = sum(graph.device_seconds.values()) + sum(graph.server_seconds.values())
    finite += sum(t.bytes * 8.0 / bandwidth_bps for t in graph.tensors)
    infinite = 2.0 * finite + 1.0
    edges: list[tuple[int, int, float]] = []
    for n in graph.nodes:
        edges.append((source, index[n], graph.server_seconds[n]))
        edges.append((index[n], sink, graph.device_seconds[n]))
    next_vertex = len(graph.nodes) + 2
    for tensor in graph.tensors:
        if not tensor.consumers:
            continue
        aux = next_vertex
        next_vertex += 1
        producer = source if tensor.producer is None else index[tensor.producer]
        edges.append((producer, aux, tensor.bytes * 8.0 / bandwidth_bps))
        for consumer in tensor.consumers:
            edges.append((aux, index[consumer], infinite))
            if tensor.producer is not None:
                edges.append((index[consumer], producer, infinite))
    _, source_side = max_flow_min_cut(next_vertex, edges, source, sink)
    device = frozenset(n for n in graph.nodes if index[n] in source_side)
    split = split_cost(graph, device, bandwidth_bps, rtt_s)
    local = split_cost(graph, graph.nodes, bandwidth_bps, rtt_s)
    if local <= split:
        return frozenset(graph.nodes), local
    return device, split


# --- profiles ----------------------------------------------------------------------------------


def check_profile(profile: Mapping[str, Any], *, role: str, model_sha256: str, source: str) -> None:
    """Refuse a profile of another model (sha256 mismatch), naming both hashes and the fix."""
    found = str(profile.get("model", {}).get("sha256", ""))
    if found != model_sha256:
        raise PlanError(
            f"the {role} profile {source} was measured on a model with sha256 {found[:12] or '?'}..., "
            f"not this model ({model_sha256[:12]}...); re-run `splitinf profile` with this model"
        )


def profile_cut_codec(
    profile: Mapping[str, Any], cut_id: str, codec: str, *, role: str, source: str
) -> Mapping[str, Any]:
    """The profile's timings for one cut and codec; a PlanError names what is missing and the fix."""
    for entry in profile.get("cuts", ()):
        if entry.get("id") == cut_id:
            timings = entry.get("codecs", {}).get(codec)
            if timings is None:
                raise PlanError(
                    f"the {role} profile {source} has no timings for codec {codec} at cut {cut_id}; "
                    f"re-run `splitinf profile --codecs` including {codec}, or drop it from --codecs"
                )
            return dict(timings)
    raise PlanError(
        f"the {role} profile {source} lacks cut {cut_id}; re-run `splitinf profile` on the {role} "
        "with that cut (or without --cuts)"
    )


def profiled_cut_ids(profile: Mapping[str, Any]) -> list[str]:
    return [str(entry.get("id")) for entry in profile.get("cuts", ())]


# --- the I/O wrapper: build a plan directory ------------------------------------------------------

DEFAULT_MAX_ACCURACY_DROP = 0.01


def read_samples(
    path: str | os.PathLike[str], inputs: Sequence[TensorSpec]
) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """Samples and labels from an .npz (never unpickled); a PlanError names what is wrong."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot read samples from {path}: {exc}; give an .npz of arrays named by input") from exc
    labels = arrays.pop("labels", None)
    missing = [t.name for t in inputs if t.name not in arrays]
    if missing:
        raise PlanError(f"{path} lacks arrays for the model input(s) {missing}; it has {sorted(arrays)}")
    counts = {}
    for spec in inputs:
        array = arrays[spec.name]
        if array.ndim not in (len(spec.shape), len(spec.shape) + 1):
            raise PlanError(
                f"{path}: {spec.name!r} has shape {list(array.shape)}, but the input is {list(spec.shape)}; "
                "stack samples on a first axis"
            )
        counts[spec.name] = array.shape[0]
    if len(set(counts.values())) > 1:
        raise PlanError(f"{path}: the inputs hold different numbers of samples: {counts}")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise PlanError(f"the calibration set {path} is empty; give at least one sample per input")
    samples = []
    for i in range(n):
        sample = {}
        for spec in inputs:
            array = arrays[spec.name]
            value = array[i : i + 1] if array.ndim == len(spec.shape) else array[i]
            sample[spec.name] = np.ascontiguousarray(value.astype(np.dtype(spec.dtype), copy=False))
        samples.append(sample)
    if labels is not None and labels.reshape(-1).size != n:
        raise PlanError(f"{path}: 'labels' has {labels.size} entries for {n} samples; give one label per sample")
    return samples, labels


def _random_samples(model: onnx.ModelProto, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    from splitinf.offline.profiling import make_session, random_inputs

    session = make_session(model, 1)
    return [random_inputs(session, seed + i) for i in range(n)]


def io_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The model's (inputs, outputs) as plan.json records them; initializers listed as inputs are not inputs."""
    from onnx import helper

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor_type = value.type.tensor_type
        dims: list[int | str | None] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        ]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        return TensorSpec(value.name, dtype, tuple(dims))

    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    return inputs, tuple(spec(v) for v in model.graph.output)


def _check_fallback(
    main: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]],
    small: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]],
    path: str,
) -> None:
    def describe(specs: Sequence[TensorSpec]) -> list[str]:
        return [f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs]

    def same(a: Sequence[TensorSpec], b: Sequence[TensorSpec]) -> bool:
        if [(s.name, s.dtype, len(s.shape)) for s in a] != [(s.name, s.dtype, len(s.shape)) for s in b]:
            return False
        for sa, sb in zip(a, b, strict=True):
            for da, db in zip(sa.shape, sb.shape, strict=True):
                if isinstance(da, int) and isinstance(db, int) and da != db:
                    return False
        return True

    for what, a, b in (("inputs", main[0], small[0]), ("outputs", main[1], small[1])):
        if not same(a, b):
            raise PlanError(
                f"the fallback {path} has {what} {describe(b)}, but the model has {describe(a)}; "
                "the fallback must take and return the same tensors"
            )


def _accuracy(
    outputs: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Mapping[str, np.ndarray]],
    labels: np.ndarray | None,
) -> float | None:
    from splitinf.offline.codecs import compare_outputs, label_accuracy

    if labels is not None:
        return label_accuracy(outputs, labels)
    agreement = compare_outputs(reference, outputs)["top1_agreement"]
    return None if agreement is None else float(agreement)


def _prepare_output(target: Path) -> Path:
    """A fresh directory beside ``target`` to build in; refuses to replace anything but a plan."""
    from splitinf.errors import OutputError

    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / "plan.json").exists())):
        raise OutputError(f"{target} exists and is not a plan directory; choose another -o or remove it")
    parent = target.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"the parent of {target} does not exist; create it first")
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {parent}: {exc.strerror or exc}") from exc


def _publish(build: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(build, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _profile_summary(profile: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {
        "source": source,
        "machine": profile.get("machine"),
        "onnxruntime": profile.get("onnxruntime"),
        "settings": profile.get("settings"),
        "model_seconds": profile.get("model_seconds"),
    }


def plan_model(
    model: str | os.PathLike[str],
    *,
    device_profile: str | os.PathLike[str],
    server_profile: str | os.PathLike[str],
    output: str | os.PathLike[str],
    fallback: str | os.PathLike[str] | None = None,
    calibration: str | os.PathLike[str] | None = None,
    held_out: str | os.PathLike[str] | None = None,
    codecs: str | Sequence[str] | None = None,
    max_candidates: int = 4,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    bandwidths_bps: Sequence[float] | None = None,
    rtts_s: Sequence[float] | None = None,
    reference_rtt_s: float = 0.02,
    include_local: bool = True,
    hold_all: bool = False,
    threads: int | None = 1,
) -> Plan:
    """Build the plan directory ``output`` from a model, its two profiles and sample inputs (the I/O wrapper).

    Reads the profiles (refusing ones of another model or missing cuts), applies each codec to
    each profiled cut (calibrating 8-bit scales, measuring fidelity and accuracy on the samples),
    prices every option, holds the few that are best somewhere on the grid (every one with
    ``hold_all``; the table is the same) and writes the layout of :mod:`splitinf.contract.plan` with
    ``report.md`` and ``latency.svg``. Samples: an .npz with one array per model input, stacked on
    axis 0, optionally ``labels``. Returns the plan as loaded back from ``output``.
    """
    import dataclasses

    from splitinf.contract.plan import load_plan, sha256_file, write_json_atomic
    from splitinf.offline import codecs as wire_codecs
    from splitinf.offline.graph import enumerate_cuts, load_model
    from splitinf.offline.partition import save_model, split_model, write_to_repository
    from splitinf.offline.profiling import load_profile, make_session, time_callable
    from splitinf.offline.report import latency_svg, report_markdown

    if max_candidates < 0:
        raise PlanError(f"--max-candidates must be >= 0, got {max_candidates}")
    bandwidths = tuple(sorted(bandwidths_bps)) if bandwidths_bps else DEFAULT_BANDWIDTHS_BPS
    rtts = tuple(sorted(rtts_s)) if rtts_s else DEFAULT_RTTS_S
    target = Path(output)
    model_path = Path(model)
    full = load_model(model_path)
    model_sha = sha256_file(model_path)
    name = model_path.stem
    device = load_profile(device_profile)
    server = load_profile(server_profile)
    check_profile(device, role="device", model_sha256=model_sha, source=str(device_profile))
    check_profile(server, role="server", model_sha256=model_sha, source=str(server_profile))
    inputs, outputs = io_specs(full)

    fallback_model = None
    if fallback is not None:
        fallback_model = load_model(fallback)
        _check_fallback((inputs, outputs), io_specs(fallback_model), str(fallback))

    labels = None  # the labels of the samples accuracy is measured on, when given
    if calibration is not None:
        samples, all_labels = read_samples(calibration, inputs)
        if held_out is not None:
            calibration_set = samples
            held, labels = read_samples(held_out, inputs)
        else:
            n_held = len(samples) // 4
            calibration_set, held = samples[: len(samples) - n_held], samples[len(samples) - n_held :]
            if all_labels is not None:
                labels = all_labels.reshape(-1)[len(samples) - n_held :] if n_held else all_labels.reshape(-1)
        sample_source = "calibration"
    else:
        calibration_set, held = _random_samples(full, 6), _random_samples(full, 6, seed=100)
        sample_source = "random"
    codec_names = wire_codecs.parse_codecs(codecs or ("fp32,fp16,int8" if calibration is not None else "fp32,fp16"))
    if calibration is None and any(c in wire_codecs.QUANTIZED for c in codec_names):
        raise PlanError("the int8/uint8 codecs need sample inputs to calibrate their scales; give --calibration")
    evaluation = held or calibration_set  # accuracy estimates come from held-out samples when there are any
    reference = {
        "calibration": wire_codecs.run_model(full, calibration_set),
        "held_out": wire_codecs.run_model(full, held),
    }
    eval_reference = reference["held_out"] if held else reference["calibration"]

    cuts = {cut.id: cut for cut in enumerate_cuts(full)}
    input_cut = next(iter(cuts))
    cut_ids = profiled_cut_ids(device)
    unknown = [c for c in cut_ids if c not in cuts]
    if unknown:
        raise PlanError(f"the device profile names cuts this model lacks: {unknown}; re-profile this model")
    if input_cut not in cut_ids:
        raise PlanError(
            f"the device profile lacks the input cut {input_cut} (full offload), which every plan weighs; "
            "re-run `splitinf profile` without --cuts or with it included"
        )
    # A cut made of graph outputs leaves the tail nothing to compute: it is the local option plus a round
    # trip, never a split worth holding (and with include_local=False it would smuggle the local option in).
    graph_outputs = {o.name for o in full.graph.output}
    cut_ids = [c for c in cut_ids if not set(cuts[c].names) <= graph_outputs]

    local_accuracy = (
        1.0 if labels is None else _accuracy(wire_codecs.run_model(full, evaluation), eval_reference, labels)
    )
    min_accuracy = None if local_accuracy is None else local_accuracy - max_accuracy_drop
    splits: list[Option] = []
    encoded_by_id: dict[str, wire_codecs.Encoded] = {}
    for cut_id in cut_ids:
        partition = split_model(full, cuts[cut_id])
        for codec in codec_names:
            dev = profile_cut_codec(device, cut_id, codec, role="device", source=str(device_profile))
            srv = profile_cut_codec(server, cut_id, codec, role="server", source=str(server_profile))
            quant = (
                wire_codecs.calibrate(partition, calibration_set, codec, threads)
                if codec in wire_codecs.QUANTIZED
                else None
            )
            encoded = wire_codecs.encode(partition, codec, quant)
            fidelity = wire_codecs.fidelity(full, encoded, calibration_set, held, threads, reference=reference)
            fidelity["samples"] = sample_source
            if labels is None:  # agreement with the full model, on held-out samples when there are any
                accuracy = fidelity["held_out" if held else "calibration"]["top1_agreement"]
            else:
                accuracy = _accuracy(wire_codecs.run_encoded(encoded, evaluation, threads)[0], eval_reference, labels)
            option_id, head_path, tail_model = option_names(name, cut_id, codec)
            splits.append(
                Option(
                    id=option_id,
                    kind="split",
                    cut_id=cut_id,
                    codec=codec,
                    head=head_path,
                    tail_model=tail_model,
                    wire=encoded.wire,
                    bytes=int(fidelity["bytes_per_sample"] or encoded.bytes_per_sample),
                    head_seconds=float(dev["head"]["median"]),
                    tail_seconds=float(srv["tail"]["median"]),
                    # serialisation at both ends: the device builds the request, the server parses it
                    serialize_seconds=float(dev.get("serialize", {}).get("median", 0.0))
                    + float(srv.get("deserialize", {}).get("median", 0.0)),
                    accuracy=accuracy,
                    fidelity=fidelity,
                )
            )
            encoded_by_id[option_id] = encoded

    local = None
    if include_local:
        local = Option(
            id="local",
            kind="local",
            model="device/local.onnx",
            seconds=float(device["model_seconds"]["median"]),
            accuracy=local_accuracy,
        )
    fallback_option = None
    if fallback_model is not None and fallback is not None:
        fallback_profile = device.get("fallback") or {}
        fallback_sha = sha256_file(fallback)
        if fallback_profile.get("sha256") == fallback_sha:
            fallback_seconds = float(fallback_profile["seconds"]["median"])
            seconds_source = "device profile"
        else:
            session = make_session(fallback_model, device.get("onnxruntime", {}).get("threads") or None)
            feed = calibration_set[0]
            fallback_seconds = time_callable(lambda: session.run(None, feed), repeats=20, warmup=3).median
            seconds_source = "measured on the planning machine (profile the fallback on the device for real figures)"
        fallback_option = Option(
            id="fallback",
            kind="fallback",
            model="device/fallback.onnx",
            seconds=fallback_seconds,
            accuracy=_accuracy(wire_codecs.run_model(fallback_model, evaluation), eval_reference, labels),
            fidelity={"seconds_source": seconds_source},
        )

    full_offload = {o.id for o in splits if o.cut_id == input_cut}
    held_splits = select_candidates(
        splits,
        full_offload=full_offload,
        local=local,
        bandwidths_bps=bandwidths,
        rtts_s=rtts,
        max_candidates=max_candidates,
        min_accuracy=min_accuracy,
    )
    table_options = held_splits + ([local] if local is not None else [])
    table = decision_table(table_options, bandwidths, rtts)
    if hold_all:
        held_splits = splits

    build = _prepare_output(target)
    try:
        written: list[Option] = []
        for option in held_splits:
            encoded = encoded_by_id[option.id]
            assert option.head is not None and option.tail_model is not None
            head_sha = save_model(encoded.head, build / option.head)
            manifest = {
                "format": 1,
                "source": {"name": name, "sha256": model_sha},
                "cut": {
                    "id": option.cut_id,
                    "tensors": [t.to_json() for t in encoded.cut.tensors],
                    "bytes": int(encoded.cut.bytes_per_sample),
                },
                "codec": option.codec,
                "wire": [t.to_json() for t in encoded.wire],
                "opset": [{"domain": o.domain, "version": o.version} for o in encoded.tail.opset_import],
                "ir_version": encoded.tail.ir_version,
                "parts": {"head": {"file": option.head, "sha256": head_sha}},
            }
            tail_path = write_to_repository(encoded.tail, build / "server", option.tail_model, "1", manifest)
            tail_sha = sha256_file(tail_path)
            tail_model = content_addressed_name(option.tail_model, tail_sha)
            (build / "server" / option.tail_model).rename(build / "server" / tail_model)
            written.append(
                dataclasses.replace(
                    option, head_sha256=head_sha, tail_model=tail_model, tail_version="1", tail_sha256=tail_sha
                )
            )
        if local is not None:
            written.append(dataclasses.replace(local, sha256=save_model(full, build / "device" / "local.onnx")))
        if fallback_option is not None and fallback_model is not None:
            written.append(
                dataclasses.replace(fallback_option, sha256=save_model(fallback_model, build / "device/fallback.onnx"))
            )
        plan = Plan(
            model_name=name,
            model_sha256=model_sha,
            inputs=inputs,
            outputs=outputs,
            options=tuple(written),
            table=table,
            profiles={
                "device": _profile_summary(device, str(device_profile)),
                "server": _profile_summary(server, str(server_profile)),
                "evaluated": {
                    "codecs": list(codec_names),
                    "cuts": cut_ids,
                    "options": len(splits),
                    "samples": sample_source,
                    "calibration_samples": len(calibration_set),
                    "held_out_samples": len(held),
                    "accuracy": "labels" if labels is not None else "top-1 agreement with the full model",
                    "min_accuracy": min_accuracy,
                    "not_held": [
                        {
                            "id": o.id,
                            "bytes": o.bytes,
                            "head_seconds": o.head_seconds,
                            "tail_seconds": o.tail_seconds,
                            "serialize_seconds": o.serialize_seconds,
                            "accuracy": o.accuracy,
                            "fidelity": dict(o.fidelity),
                        }
                        for o in splits
                        if o.id not in {h.id for h in held_splits}
                    ],
                },
            },
        )
        write_json_atomic(build / "plan.json", plan.to_json())
        (build / "report.md").write_text(report_markdown(plan, reference_rtt_s))
        (build / "latency.svg").write_text(latency_svg(plan, reference_rtt_s))
        load_plan(build, check_files=("device", "server"))
        _publish(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return load_plan(target, check_files=("device", "server"))
