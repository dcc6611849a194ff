"""The planner's pure core: cost model choices, min s-t cut vs brute force, candidate selection."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitinf.contract.plan import Option, expected_latency
from splitinf.errors import PlanError
from splitinf.offline.planner import (
    DEFAULT_BANDWIDTHS_BPS,
    DEFAULT_RTTS_S,
    SplitGraph,
    TensorEdge,
    best_option,
    decision_table,
    log_grid,
    max_flow_min_cut,
    min_cut_split,
    option_names,
    select_candidates,
    split_cost,
)


def split(cut: str, codec: str, head: float, tail: float, nbytes: int, accuracy: float | None = 1.0) -> Option:
    option_id, head_path, tail_model = option_names("m", cut, codec)
    return Option(
        id=option_id,
        kind="split",
        cut_id=cut,
        codec=codec,
        head=head_path,
        tail_model=tail_model,
        wire_bytes=nbytes,
        head_seconds=head,
        tail_seconds=tail,
        accuracy=accuracy,
    )


# --- small random DAGs with per-node costs -------------------------------------------------


@st.composite
def split_graphs(draw: st.DrawFn) -> SplitGraph:
    n = draw(st.integers(1, 7))
    nodes = tuple(f"n{i}" for i in range(n))
    costs = st.floats(0.0, 1.0, allow_nan=False)
    device = {v: draw(costs) for v in nodes}
    server = {v: draw(costs) * 0.2 for v in nodes}
    n_inputs = draw(st.integers(1, 2))
    tensors = []
    for k in range(n_inputs):
        consumers = draw(st.sets(st.sampled_from(nodes), min_size=1, max_size=n))
        tensors.append(TensorEdge(f"x{k}", None, tuple(sorted(consumers)), draw(st.integers(1, 10_000))))
    for i, v in enumerate(nodes[:-1]):
        later = nodes[i + 1 :]
        consumers = draw(st.sets(st.sampled_from(later), max_size=len(later)))
        if consumers:
            tensors.append(TensorEdge(f"t{i}", v, tuple(sorted(consumers)), draw(st.integers(1, 10_000))))
    return SplitGraph(nodes, device, server, tuple(tensors))


def closed_device_sets(graph: SplitGraph) -> list[frozenset[str]]:
    """Every node set that no server node feeds: the feasible cuts, by brute force."""
    feasible = []
    for mask in itertools.product([False, True], repeat=len(graph.nodes)):
        device = frozenset(n for n, on in zip(graph.nodes, mask, strict=True) if on)
        if math.isfinite(split_cost(graph, device, 1e6, 0.0)):
            feasible.append(device)
    return feasible


def cut_options(graph: SplitGraph) -> list[Option]:
    """The feasible cuts as plan options: what exhaustive evaluation over enumerated cuts sees."""
    options = []
    for i, device in enumerate(closed_device_sets(graph)):
        server = [n for n in graph.nodes if n not in device]
        crossing = sum(
            t.bytes
            for t in graph.tensors
            if (t.producer is None or t.producer in device) and any(c not in device for c in t.consumers)
        )
        head = sum(graph.device_seconds[n] for n in device)
        tail = sum(graph.server_seconds[n] for n in server)
        if server:
            options.append(split(f"c{i}", "fp32", head, tail, crossing))
        else:
            options.append(Option(id="local", kind="local", model="device/local.onnx", seconds=head))
    return options


@settings(max_examples=150, deadline=None)
@given(
    graph=split_graphs(),
    bandwidth=st.floats(1e4, 1e9),
    rtt=st.floats(0.0, 0.5),
)
def test_min_cut_and_exhaustive_both_find_the_brute_force_optimum(
    graph: SplitGraph, bandwidth: float, rtt: float
) -> None:
    brute = min(split_cost(graph, device, bandwidth, rtt) for device in closed_device_sets(graph))
    device, seconds = min_cut_split(graph, bandwidth, rtt)
    assert seconds == pytest.approx(brute, rel=1e-9, abs=1e-12)
    assert split_cost(graph, device, bandwidth, rtt) == pytest.approx(seconds, rel=1e-9, abs=1e-12)
    exhaustive = best_option(cut_options(graph), bandwidth, rtt)
    assert expected_latency(exhaustive, bandwidth, rtt) == pytest.approx(brute, rel=1e-9, abs=1e-12)


def test_a_tensor_read_by_two_server_nodes_crosses_once() -> None:
    graph = SplitGraph(
        nodes=("a", "b", "c"),
        device_seconds={"a": 0.0, "b": 10.0, "c": 10.0},
        server_seconds={"a": 10.0, "b": 0.0, "c": 0.0},
        tensors=(TensorEdge("x", None, ("a",), 1000), TensorEdge("h", "a", ("b", "c"), 125)),
    )
    device, seconds = min_cut_split(graph, 1000.0, 0.0)
    assert device == {"a"}
    assert seconds == pytest.approx(1.0)  # 125 bytes at 1000 bit/s, once


def test_the_round_trip_can_make_local_win() -> None:
    graph = SplitGraph(
        nodes=("a",),
        device_seconds={"a": 0.05},
        server_seconds={"a": 0.0},
        tensors=(TensorEdge("x", None, ("a",), 10),),
    )
    assert min_cut_split(graph, 1e9, 0.001)[0] == frozenset()
    assert min_cut_split(graph, 1e9, 0.1) == (frozenset({"a"}), 0.05)


def test_max_flow_on_a_textbook_graph() -> None:
    # CLRS figure 26.1: max flow 23
    edges = [(0, 1, 16), (0, 2, 13), (1, 3, 12), (2, 1, 4), (2, 4, 14), (3, 2, 9), (3, 5, 20), (4, 3, 7), (4, 5, 4)]
    flow, source_side = max_flow_min_cut(6, [(u, v, float(c)) for u, v, c in edges], 0, 5)
    assert flow == pytest.approx(23.0)
    assert 0 in source_side and 5 not in source_side


# --- options, decision table, candidates -----------------------------------------------


def test_log_grid_spans_the_range() -> None:
    grid = log_grid(0.25e6, 1000e6, 13)
    assert grid[0] == 0.25e6 and grid[-1] == 1000e6
    ratios = [b / a for a, b in zip(grid, grid[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios))
    with pytest.raises(PlanError):
        log_grid(0.0, 1.0, 3)


def test_decision_table_picks_the_fastest_option_per_grid_point() -> None:
    offload = split("input", "fp32", 0.0, 0.001, 100_000)
    mid = split("c1", "fp32", 0.004, 0.0005, 1_000)
    local = Option(id="local", kind="local", model="device/local.onnx", seconds=0.02)
    table = decision_table([offload, mid, local], [1e5, 1e6, 1e9], [0.001, 0.1])
    # 100 kbit/s: offload takes 8 s, mid 0.08 s + rtt -> local unless rtt is small
    assert table.choices[0] == ("local", "local")
    assert table.choices[2][0] == offload.id  # 1 Gbit/s: sending the input is cheapest
    assert table.choices[1][0] == mid.id
    assert table.choices[1][1] == "local"
    for i, bw in enumerate(table.bandwidths_bps):
        for j, rtt in enumerate(table.rtts_s):
            chosen = next(o for o in (offload, mid, local) if o.id == table.choices[i][j])
            assert expected_latency(chosen, bw, rtt) <= expected_latency(offload, bw, rtt)


def test_candidates_are_the_winners_somewhere_capped_and_always_beat_full_offload() -> None:
    offload = [split("input", "fp32", 0.0, 0.010, 200_000), split("input", "int8", 0.0005, 0.0105, 50_000)]
    cuts = [split(f"c{k}", "fp32", 0.003 * k, 0.010 - 0.001 * k, 100_000 // (2**k)) for k in range(1, 9)]
    dominated = split("c99", "fp32", 0.5, 0.5, 10**9)
    candidates = select_candidates(offload + cuts + [dominated], full_offload={o.id for o in offload}, max_candidates=3)
    ids = [o.id for o in candidates]
    assert dominated.id not in ids
    assert len([i for i in ids if not i.startswith("split:input:")]) == 3
    held_offload = [o for o in candidates if o.id.startswith("split:input:")]
    assert held_offload
    for bw in DEFAULT_BANDWIDTHS_BPS:
        for rtt in DEFAULT_RTTS_S:
            best_held = expected_latency(best_option(candidates, bw, rtt), bw, rtt)
            assert best_held <= min(expected_latency(o, bw, rtt) for o in offload) + 1e-15


def test_options_below_the_accuracy_floor_are_not_held() -> None:
    offload = split("input", "fp32", 0.0, 0.01, 200_000)
    lossy = split("c1", "int8", 0.001, 0.001, 10, accuracy=0.5)
    held = select_candidates([offload, lossy], full_offload={offload.id}, min_accuracy=0.9)
    assert [o.id for o in held] == [offload.id]
    with pytest.raises(PlanError, match="full-offload"):
        select_candidates([lossy], full_offload=set(), min_accuracy=0.9)


def test_option_names_are_safe_for_files_and_model_names() -> None:
    option_id, head, tail = option_names("my model", "a/b:c", "fp16")
    assert option_id == "split:a/b:c:fp16"
    assert head == "device/heads/split-a_b_c-fp16.onnx"
    assert tail == "my_model.a_b_c.fp16"
