"""The unmodified device runtime against servers we did not write: Seldon MLServer, KServe's ModelServer and
NVIDIA Triton (the tritonserver PyTriton ships, its python backend running onnxruntime).

Each serves the tails of a splitinf-written plan with onnxruntime (``splitinf.tools.interop``),
on loopback ports, from a virtual environment of its own. None sends splitinf's response
parameters, so the device knows the tails by their content-addressed names and their metadata.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitinf.contract.plan import load_plan
from splitinf.edge.chain import SessionPool
from splitinf.edge.client import InferenceClient
from splitinf.edge.config import DeviceConfig
from splitinf.edge.policy import Mode
from splitinf.edge.runtime import Runtime
from splitinf.errors import RemoteMismatchError
from splitinf.ort import SessionSettings
from splitinf.tools.testing.device import FAST_POLICY
from splitinf.tools.testing.graphs import mlp
from splitinf.tools.testing.plans import (
    DIGITS_CALIBRATION,
    MLP_FALLBACK,
    MLP_FULL,
    run_mlp,
    write_digits_plan_dir,
    write_mlp_plan_dir,
    write_plan_dir,
)


def device_config(target: str, **changes: Any) -> DeviceConfig:
    return DeviceConfig(
        server=target,
        budget_s=1.0,
        policy=FAST_POLICY,
        probe_timeout_s=1.0,
        light_probe_interval_s=0.05,
        retry_backoff_s=0.005,
        retry_backoff_max_s=0.02,
        **changes,
    )


def sample(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 16)).astype(np.float32)}


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s")


class MetadataCountingClient(InferenceClient):
    """The real client, counting ModelMetadata calls (the device's identity checks)."""

    def __init__(self, target: str):
        super().__init__(target)
        self.metadata_calls = 0

    def model_metadata(self, name: str, timeout_s: float, version: str = "") -> Any:
        self.metadata_calls += 1
        return super().model_metadata(name, timeout_s, version)


def test_every_tail_answers_like_the_full_model(kind: str, tmp_path: Path, third_party_server: Any) -> None:
    plan_dir = write_mlp_plan_dir(tmp_path / "plan", local=False)
    plan = load_plan(plan_dir)
    server = third_party_server(kind, plan_dir)
    heads = SessionPool(plan.path, SessionSettings())
    with InferenceClient(server.target) as client:
        for option in plan.split_options:
            assert option.tail_model is not None and option.tail_sha256 is not None
            assert option.tail_model.endswith(option.tail_sha256[:12])  # content-addressed
            head = heads.chain(option.id, option.head)  # the device's segments up to the cut (none at the input)
            for seed in range(3):
                x = sample(seed)["x"]
                values = head.run({"x": x})
                wire = {t.name: values[t.name] for t in option.wire}
                result = client.infer(option.tail_model, wire, timeout_s=5, version=option.tail_version)
                assert result.model_sha256 is None and result.server_compute_s == 0.0  # a stock server
                np.testing.assert_allclose(result.outputs["y"], run_mlp(MLP_FULL, x), rtol=1e-5, atol=1e-6)


def test_device_splits_with_the_unmodified_plan(kind: str, tmp_path: Path, third_party_server: Any) -> None:
    plan_dir = write_mlp_plan_dir(tmp_path / "plan", local=False)
    server = third_party_server(kind, plan_dir)
    with Runtime(plan_dir, DeviceConfig(server=server.target, budget_s=1.0)) as runtime:
        results = [runtime.infer(sample(seed)) for seed in range(60)]
        after_start = results[5:]
        split = [r for r in after_start if r.kind == "split"]
        assert len(split) >= 0.95 * len(after_start), [(r.kind, r.fallback_reason) for r in after_start]
        for seed, result in enumerate(results):
            if result.kind == "split":
                np.testing.assert_allclose(
                    result.outputs["y"], run_mlp(MLP_FULL, sample(seed)["x"]), rtol=1e-5, atol=1e-6
                )
        assert not any(e.kind == "quarantine" for e in runtime.events)
        assert all(runtime.identity.is_verified(runtime.plan.option(r.option_id)) for r in split)


def test_falls_back_when_killed_and_returns_when_back(kind: str, tmp_path: Path, third_party_server: Any) -> None:
    plan_dir = write_mlp_plan_dir(tmp_path / "plan", local=False)
    server = third_party_server(kind, plan_dir)
    client = MetadataCountingClient(server.target)
    with Runtime(plan_dir, device_config(server.target), client=client) as runtime:
        assert runtime.infer(sample(0)).kind == "split"
        checks_before = client.metadata_calls
        server.kill()
        result = runtime.infer(sample(1))
        assert result.kind == "fallback" and result.fallback_reason in ("unavailable", "timeout")
        np.testing.assert_allclose(result.outputs["y"], run_mlp(MLP_FALLBACK, sample(1)["x"]), rtol=1e-5, atol=1e-6)
        assert runtime.mode is not Mode.SPLIT
        server.start()
        wait_for(lambda: runtime.mode is Mode.SPLIT, timeout_s=30)
        result = runtime.infer(sample(2))
        assert result.kind == "split"
        np.testing.assert_allclose(result.outputs["y"], run_mlp(MLP_FULL, sample(2)["x"]), rtol=1e-5, atol=1e-6)
        # the restarted server could have been another deployment: the tail's metadata was read again
        assert client.metadata_calls > checks_before
    client.close()


def test_a_tail_that_differs_is_quarantined_saying_what_differs(
    kind: str, tmp_path: Path, third_party_server: Any
) -> None:
    wrong = mlp(batch=1, seed=0, sizes=(32, 5))  # takes relu_0's shape, answers y with 5 columns
    wrong.graph.input[0].name = "relu_0"
    for node in wrong.graph.node:
        node.input[:] = ["relu_0" if i == "x" else i for i in node.input]
    plan_dir = write_mlp_plan_dir(tmp_path / "plan", cuts=("relu_0",), local=False, served_tails={"relu_0": wrong})
    server = third_party_server(kind, plan_dir)
    with Runtime(plan_dir, device_config(server.target), background_probes=False) as runtime:
        option = runtime.plan.split_options[0]
        with pytest.raises(RemoteMismatchError, match=r"output 'y' is FP32\[1, 5\], the plan's is FP32\[1, 4\]"):
            runtime.identity.verify(option, timeout_s=5)
        result = runtime.infer(sample(0))
        assert (result.kind, result.fallback_reason) == ("fallback", "mismatch")
        assert ("quarantine", option.id) in [(e.kind, e.old) for e in result.events]


def test_sha256_identity_refuses_a_server_without_the_parameter(
    kind: str, tmp_path: Path, third_party_server: Any
) -> None:
    plan_dir = write_mlp_plan_dir(tmp_path / "plan", cuts=("relu_1",), local=False)
    server = third_party_server(kind, plan_dir)
    config = device_config(server.target, tail_identity="sha256")
    with Runtime(plan_dir, config, background_probes=False) as runtime:
        result = runtime.infer(sample(0))
        assert (result.kind, result.fallback_reason) == ("fallback", "mismatch")
        option = runtime.plan.split_options[0]
        with InferenceClient(server.target) as client:
            answer = client.infer(str(option.tail_model), {"relu_1": np.zeros((1, 32), np.float32)}, timeout_s=5)
        with pytest.raises(RemoteMismatchError, match='tail_identity = "metadata"'):
            runtime.identity.check_answer(option, answer.outputs, answer.model_sha256)


def test_the_other_partitions_tail_under_a_content_addressed_name_is_not_found(
    kind: str, tmp_path: Path, third_party_server: Any
) -> None:
    """A plan re-made with another tail names it differently: the old device gets NOT_FOUND, never numbers."""
    plan_dir = write_mlp_plan_dir(tmp_path / "plan", cuts=("relu_1",), local=False)
    other_dir = tmp_path / "other"  # the same model with other weights: same tensors, another tail file
    write_plan_dir(other_dir, mlp(batch=1, seed=3), MLP_FALLBACK, {"relu_1": (0.0001, 0.0001)}, name="mlp")
    assert load_plan(other_dir).split_options[0].tail_model != load_plan(plan_dir).split_options[0].tail_model
    server = third_party_server(kind, other_dir)
    with Runtime(plan_dir, device_config(server.target), background_probes=False) as runtime:
        result = runtime.infer(sample(0))
        assert result.kind == "fallback" and result.fallback_reason in ("rejected", "mismatch")
        assert any(e.kind == "quarantine" for e in result.events)


@pytest.fixture(scope="module")
def digits_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped digits pair planned by the planner itself (its int8 and fp16 tails; fp32 is checked above)."""
    return write_digits_plan_dir(tmp_path_factory.mktemp("digits"))


def test_the_planners_digits_plan_splits_with_full_accuracy(
    kind: str, digits_plan: Path, third_party_server: Any
) -> None:
    from splitinf.tools.models import DIGITS_INPUT, load_digits_test

    images, labels = load_digits_test()
    images, labels = images[DIGITS_CALIBRATION:][:100], labels[DIGITS_CALIBRATION:][:100]
    server = third_party_server(kind, digits_plan)
    plan = load_plan(digits_plan)
    with Runtime(digits_plan, DeviceConfig(server=server.target, budget_s=1.0)) as runtime:
        results = [runtime.infer({DIGITS_INPUT: image[None]}) for image in images]
    after_start = results[5:]
    split = [r for r in after_start if r.kind == "split"]
    assert len(split) >= 0.95 * len(after_start), [(r.kind, r.fallback_reason) for r in after_start]
    correct = sum(
        int(np.argmax(r.outputs[plan.outputs[0].name])) == int(label) for r, label in zip(results, labels, strict=True)
    )
    assert correct >= 0.97 * len(results)  # the fallback alone gets ~90%
