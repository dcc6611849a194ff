"""The planner's pure core: which options to hold, and which to use at each network condition.

Every option is priced by :func:`splitinf.plan.expected_latency` (head on the device +
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
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from splitinf.errors import PlanError
from splitinf.plan import DecisionTable, Option, expected_latency

__all__ = [
    "DEFAULT_BANDWIDTHS_BPS",
    "DEFAULT_RTTS_S",
    "SplitGraph",
    "TensorEdge",
    "best_option",
    "check_profile",
    "decision_table",
    "log_grid",
    "max_flow_min_cut",
    "min_cut_split",
    "option_names",
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
    """(option id, head path in the plan directory, tail model name) for a split option."""
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
