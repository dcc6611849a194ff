"""plan.json's option: what crosses the wire is ``wire_bytes``; plans that call it ``bytes`` still load.
A device model is a list of files (format 2); format 1's single file loads as a list of one."""

from __future__ import annotations

import pytest

from splitinf.contract.plan import PLAN_FORMAT, Option, Plan, expected_latency
from splitinf.contract.tensors import TensorSpec
from splitinf.errors import PlanError

SPLIT = Option(
    id="split:h:fp16",
    kind="split",
    cut_id="h",
    codec="fp16",
    head=("device/segments/01-h.onnx", "device/codecs/h-fp16.onnx"),
    head_sha256=("a" * 64, "b" * 64),
    tail_model="m.h.fp16",
    wire=(TensorSpec("h", "float16", ("N", 8)),),
    wire_bytes=16,
    head_seconds=0.001,
    tail_seconds=0.002,
)


def test_wire_bytes_round_trip_and_the_older_key_is_read() -> None:
    data = SPLIT.to_json()
    assert data["wire_bytes"] == 16 and "bytes" not in data
    assert Option.from_json(data) == SPLIT
    older = {k: v for k, v in data.items() if k != "wire_bytes"} | {"bytes": 16}
    assert Option.from_json(older) == SPLIT


def test_expected_latency_sends_the_wire_bytes() -> None:
    # 16 bytes at 128 bit/s: one second on the wire, plus the round trip and both halves
    assert expected_latency(SPLIT, bandwidth_bps=128, rtt_s=0.01) == 0.001 + 1.0 + 0.01 + 0.002


def test_the_input_shapes_round_trip_and_older_plans_load_without_them() -> None:
    from splitinf.contract.plan import Plan

    at = {"source": "shapes", "inputs": {"x": {"dtype": "float32", "shape": [1, 8]}}}
    plan = Plan("m", "0" * 64, (TensorSpec("x", "float32", ("N", 8)),), (), (SPLIT,), inputs_at=at)
    data = plan.to_json()
    assert data["inputs_at"] == at and Plan.from_json(data).inputs_at == at
    older = {k: v for k, v in data.items() if k != "inputs_at"}
    assert Plan.from_json(older).inputs_at == {}


def test_expected_latency_counts_the_answer_crossing_back() -> None:
    import dataclasses

    detector = dataclasses.replace(SPLIT, response_bytes=48)  # an output map: 48 bytes back at 128 bit/s
    assert expected_latency(detector, bandwidth_bps=128, rtt_s=0.01) == pytest.approx(0.001 + 1.0 + 3.0 + 0.01 + 0.002)
    assert Option.from_json(detector.to_json()) == detector
    older = {k: v for k, v in detector.to_json().items() if k != "response_bytes"}
    assert Option.from_json(older).response_bytes == 0


def test_a_device_model_is_a_list_of_files_and_format_1_single_files_still_load() -> None:
    data = SPLIT.to_json()
    assert data["head"] == ["device/segments/01-h.onnx", "device/codecs/h-fp16.onnx"]
    assert SPLIT.device_files == (("device/segments/01-h.onnx", "a" * 64), ("device/codecs/h-fp16.onnx", "b" * 64))
    old = Option.from_json(data | {"head": "device/heads/h.onnx", "head_sha256": "c" * 64})
    assert old.head == ("device/heads/h.onnx",) and old.device_files == (("device/heads/h.onnx", "c" * 64),)
    local = Option.from_json({"id": "local", "kind": "local", "model": "device/local.onnx", "sha256": "d" * 64})
    assert local.device_files == (("device/local.onnx", "d" * 64),)
    assert Option(id="f", kind="fallback", model="device/fallback.onnx").model == ("device/fallback.onnx",)
    with pytest.raises(PlanError, match="2 files but 1 sha256"):
        Option.from_json(data | {"head_sha256": ["a" * 64]})
    with pytest.raises(PlanError, match="list of file paths"):
        Option.from_json(data | {"head": [3]})


@pytest.mark.parametrize("written", [1, PLAN_FORMAT])
def test_plans_of_format_1_and_2_load_and_others_are_refused(written: int) -> None:
    plan = {"format": written, "model": {"name": "m", "sha256": "0" * 64}, "inputs": [], "outputs": []}
    assert Plan.from_json(plan | {"options": [SPLIT.to_json()]}).options == (SPLIT,)
    with pytest.raises(PlanError, match=r"plan format 3 is not supported \(this version reads formats 1, 2\)"):
        Plan.from_json(plan | {"format": 3, "options": []})
