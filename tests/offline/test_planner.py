"""The planner's pure core: the grid, option names, candidate selection."""

from __future__ import annotations

import pytest

from splitinf.contract.plan import Option, expected_latency
from splitinf.errors import PlanError
from splitinf.offline.planner import (
    DEFAULT_BANDWIDTHS_BPS,
    DEFAULT_RTTS_S,
    best_option,
    log_grid,
    option_names,
    select_candidates,
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


# --- grid, candidates -----------------------------------------------


def test_log_grid_spans_the_range() -> None:
    grid = log_grid(0.25e6, 1000e6, 13)
    assert grid[0] == 0.25e6 and grid[-1] == 1000e6
    ratios = [b / a for a, b in zip(grid, grid[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios))
    with pytest.raises(PlanError):
        log_grid(0.0, 1.0, 3)


def test_best_option_is_the_least_expected_latency() -> None:
    offload = split("input", "fp32", 0.0, 0.001, 100_000)
    mid = split("c1", "fp32", 0.004, 0.0005, 1_000)
    local = Option(id="local", kind="local", model=("device/segments/01-outputs.onnx",), seconds=0.02)
    # 100 kbit/s: offload takes 8 s, mid 0.08 s + rtt -> local; 1 Gbit/s: sending the input is cheapest
    assert best_option([offload, mid, local], 1e5, 0.001) is local
    assert best_option([offload, mid, local], 1e9, 0.001) is offload
    assert best_option([offload, mid, local], 1e6, 0.001) is mid
    with pytest.raises(PlanError):
        best_option([], 1e6, 0.001)


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
    assert head == "device/codecs/a_b_c-fp16.onnx"
    assert tail == "my_model.a_b_c.fp16"
