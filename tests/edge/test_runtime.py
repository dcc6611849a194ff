"""The device runtime against a real tail server (same process, port 0), real onnxruntime, real sockets.

The server is stopped, restarted and slowed (through the fault proxy); split answers are
compared with the full model's; bad inputs and mismatched tails are refused or fall back.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.contract.files import sha256_file, write_json_atomic
from splitinf.contract.plan import Plan
from splitinf.edge.client import InferenceClient
from splitinf.edge.config import DeviceConfig
from splitinf.edge.policy import Mode
from splitinf.edge.runtime import Runtime, RuntimeResult
from splitinf.errors import InputError, IntegrityError, PlanError
from splitinf.offline.graph import find_cut
from splitinf.offline.partition import save_model, split_model
from splitinf.tools.faults.proxy import DirectionFaults, FaultProxy, FaultSettings
from splitinf.tools.testing.device import FAST_POLICY
from splitinf.tools.testing.graphs import mlp
from splitinf.tools.testing.plans import (
    MLP_CUTS,
    MLP_FALLBACK,
    MLP_FULL,
    run_mlp,
    write_mlp_plan_dir,
    write_plan_dir,
)

FULL, FALLBACK, CUTS = MLP_FULL, MLP_FALLBACK, MLP_CUTS
build_plan_dir, run_model = write_mlp_plan_dir, run_mlp


def device_config(target: str | None, budget_s: float = 1.0, **changes: Any) -> DeviceConfig:
    return DeviceConfig(
        server=target,
        budget_s=budget_s,
        policy=FAST_POLICY,
        probe_timeout_s=0.5,
        light_probe_interval_s=0.05,
        retry_backoff_s=0.005,
        retry_backoff_max_s=0.02,
        **changes,
    )


def sample(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 16)).astype(np.float32)}


def wait_for(predicate: Any, timeout_s: float = 10.0, step: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if predicate():
            return
        time.sleep(0.01)  # polling interval, not a wait for a state
    raise AssertionError("condition not reached before the deadline")


class CountingClient(InferenceClient):
    """The real client, counting calls (to prove nothing was sent)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.infer_calls = 0

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        self.infer_calls += 1
        return super().infer(*args, **kwargs)


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    return build_plan_dir(tmp_path / "plan")


@pytest.fixture
def server(plan_dir: Path) -> Iterator[tuple[Any, int]]:
    srv, port = create_server(ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None))
    yield srv, port
    srv.stop(grace=0)


def only_cut(tmp_path: Path, cut: str, **kwargs: Any) -> Path:
    return build_plan_dir(tmp_path / f"plan-{cut}", cuts=(cut,), local=False, **kwargs)


@pytest.mark.parametrize("cut", CUTS)
def test_split_outputs_equal_the_full_model_for_fp32_cuts(tmp_path: Path, cut: str) -> None:
    plan = only_cut(tmp_path, cut)
    srv, port = create_server(ServerConfig(repo=plan / "server", port=0, metrics_port=None))
    try:
        with Runtime(plan, device_config(f"127.0.0.1:{port}"), background_probes=False) as runtime:
            for seed in range(3):
                result = runtime.infer(sample(seed))
                assert result.kind == "split" and result.option_id == f"split:{cut}:fp32", result
                assert result.fallback_reason is None and result.attempts == 1
                np.testing.assert_allclose(
                    result.outputs["y"], run_model(FULL, sample(seed)["x"]), rtol=1e-5, atol=1e-6
                )
                assert result.latency.server_s > 0 and result.latency.total_s >= result.latency.head_s
                assert result.bytes_sent > 0
    finally:
        srv.stop(grace=0)


def test_most_accurate_option_in_budget_is_chosen(plan_dir: Path, server: tuple[Any, int]) -> None:
    with Runtime(plan_dir, device_config(f"127.0.0.1:{server[1]}"), background_probes=False) as runtime:
        # all splits are equally accurate: the one with the fewest bytes wins; local (5 s) is over budget
        result = runtime.infer(sample())
        assert result.option_id == "split:x:fp32"
        # a budget too small for any split option (even at the prior estimates) answers on the device
        result = runtime.infer(sample(), budget_s=0.0005)
        assert result.kind == "fallback" and runtime.mode is Mode.FALLBACK
        np.testing.assert_allclose(result.outputs["y"], run_model(FALLBACK, sample()["x"]), rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_refused_before_anything_is_sent(plan_dir: Path, server: tuple[Any, int]) -> None:
    client = CountingClient(f"127.0.0.1:{server[1]}")
    with Runtime(plan_dir, device_config(None), client=client, background_probes=False) as runtime:
        good = sample()["x"]
        cases = [
            ({"x": good.astype(np.float64)}, "input 'x': dtype float64 does not match the expected float32"),
            ({"x": good.reshape(16, 1)}, r"input 'x': shape \[16, 1\] does not match the expected \[1, 16\]"),
            ({}, r"missing input\(s\) \['x'\]; expected exactly \['x'\]"),
            ({"x": good, "z": good}, r"unexpected input\(s\) \['z'\]"),
            ({"x": good.tolist()}, "numpy array"),
        ]
        for inputs, message in cases:
            with pytest.raises(InputError, match=message):
                runtime.infer(inputs)
        assert client.infer_calls == 0
        assert runtime.infer(sample()).kind == "split"
        assert client.infer_calls == 1
    client.close()


def test_server_stopped_then_restarted(plan_dir: Path) -> None:
    srv, port = create_server(ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None))
    target = f"127.0.0.1:{port}"
    runtime = Runtime(plan_dir, device_config(target, retry_attempts=3))
    try:
        assert runtime.infer(sample()).kind == "split"
        samples_before = runtime.estimator.snapshot(runtime.clock()).rtt_samples
        srv.stop(grace=0)
        result = runtime.infer(sample(1))
        # answered once, by the fallback, with the reason; UNAVAILABLE before any response was retried
        assert result.kind == "fallback" and result.fallback_reason == "unavailable"
        assert result.attempted_option == "split:x:fp32" and result.attempts == 3
        np.testing.assert_allclose(result.outputs["y"], run_model(FALLBACK, sample(1)["x"]), rtol=1e-5, atol=1e-6)
        assert runtime.mode is not Mode.SPLIT
        assert [e.new for e in result.events] == ["fallback"]
        # while the server is down, requests are answered locally without remote calls
        assert runtime.infer(sample(2)).attempts == 0
        srv, _ = create_server(ServerConfig(repo=plan_dir / "server", port=port, metrics_port=None))
        # background probes bring it back through PROBING after stabilisation
        wait_for(lambda: runtime.mode is Mode.SPLIT, timeout_s=15)
        modes = [(e.old, e.new) for e in runtime.events if e.kind == "mode"]
        assert ("fallback", "probing") in modes and modes[-1] == ("probing", "split")
        result = runtime.infer(sample(3))
        assert result.kind == "split"
        np.testing.assert_allclose(result.outputs["y"], run_model(FULL, sample(3)["x"]), rtol=1e-5, atol=1e-6)
        # probes and calls after the restart fed the RTT estimator
        assert runtime.estimator.snapshot(runtime.clock()).rtt_samples > samples_before
    finally:
        runtime.close()
        srv.stop(grace=0)


def test_stalled_link_is_answered_by_fallback_within_budget(plan_dir: Path, server: tuple[Any, int]) -> None:
    budget = 0.3
    with FaultProxy(f"127.0.0.1:{server[1]}") as proxy:
        with Runtime(plan_dir, device_config(proxy.address, budget_s=budget), background_probes=False) as runtime:
            assert runtime.infer(sample()).kind == "split"
            proxy.set(FaultSettings(upstream=DirectionFaults(blackhole=True)))
            result = runtime.infer(sample(1))
            assert result.kind == "fallback" and result.fallback_reason == "timeout"
            # budget + fallback time (+ slack for a loaded machine); without the deadline this
            # would wait for keepalive (seconds) or forever
            assert result.latency.total_s <= budget + result.latency.on_device_s + 1.0
            assert runtime.mode is Mode.FALLBACK


def test_slowed_link_falls_back_then_recovers(plan_dir: Path, server: tuple[Any, int]) -> None:
    with FaultProxy(f"127.0.0.1:{server[1]}") as proxy:
        config = device_config(proxy.address, budget_s=0.15)
        with Runtime(plan_dir, config, background_probes=False) as runtime:
            assert runtime.infer(sample()).kind == "split"
            proxy.set(FaultSettings(upstream=DirectionFaults(latency_ms=300)))
            result = runtime.infer(sample(1))
            assert (result.kind, result.fallback_reason) == ("fallback", "timeout")
            assert runtime.mode is Mode.FALLBACK
            # half-open probes are slow as well: it stays off the link
            wait_for(lambda: any(e.reason == "probe_slow" for e in runtime.events), step=runtime.probe_once)
            assert runtime.mode is Mode.FALLBACK
            proxy.clear()
            wait_for(lambda: runtime.mode is Mode.SPLIT, step=runtime.probe_once, timeout_s=15)
            assert runtime.infer(sample(2)).kind == "split"


def test_tail_from_another_partition_falls_back_never_wrong_numbers(tmp_path: Path) -> None:
    other = split_model(mlp(batch=1, seed=3), find_cut(mlp(batch=1, seed=3), "relu_1")).tail
    plan = only_cut(tmp_path, "relu_1", served_tails={"relu_1": other})
    srv, port = create_server(ServerConfig(repo=plan / "server", port=0, metrics_port=None))
    try:
        with Runtime(plan, device_config(f"127.0.0.1:{port}"), background_probes=False) as runtime:
            result = runtime.infer(sample())
            assert (result.kind, result.fallback_reason) == ("fallback", "mismatch")
            np.testing.assert_allclose(result.outputs["y"], run_model(FALLBACK, sample()["x"]), rtol=1e-5, atol=1e-6)
            assert [(e.kind, e.old) for e in result.events][0] == ("quarantine", "split:relu_1:fp32")
            # the option is set aside: the next request does not call the server at all
            assert runtime.infer(sample(1)).attempts == 0
    finally:
        srv.stop(grace=0)


def test_wrong_tensors_and_unknown_model_fall_back(tmp_path: Path) -> None:
    wrong = mlp(batch=1, seed=0, sizes=(32, 5))  # takes relu_0's shape, answers y with 5 columns
    wrong.graph.input[0].name = "relu_0"
    for node in wrong.graph.node:
        node.input[:] = ["relu_0" if i == "x" else i for i in node.input]
    plan = only_cut(tmp_path, "relu_0", served_tails={"relu_0": wrong})
    plan_data = (plan / "plan.json").read_text()
    # the plan trusts the deployed file's hash here, so only the tensors are wrong
    true_sha = Plan.from_json(__import__("json").loads(plan_data)).options[0].tail_sha256
    assert true_sha is not None
    (plan / "plan.json").write_text(
        plan_data.replace(true_sha, sha256_file(next((plan / "server").glob("mlp.relu_0.fp32.*/1/model.onnx"))))
    )
    srv, port = create_server(ServerConfig(repo=plan / "server", port=0, metrics_port=None))
    try:
        with Runtime(plan, device_config(f"127.0.0.1:{port}"), background_probes=False) as runtime:
            result = runtime.infer(sample())
            assert (result.kind, result.fallback_reason) == ("fallback", "mismatch")
        # a server without the tail at all: NOT_FOUND, the option is set aside too
        srv.stop(grace=0)
        other_repo = tmp_path / "other-repo"
        save_model(FULL, other_repo / "other" / "1" / "model.onnx")
        srv, port = create_server(ServerConfig(repo=other_repo, port=0, metrics_port=None, allow_unsigned=True))
        with Runtime(plan, device_config(f"127.0.0.1:{port}"), background_probes=False) as runtime:
            result = runtime.infer(sample())
            assert (result.kind, result.fallback_reason) == ("fallback", "rejected")
            assert any(e.kind == "quarantine" for e in result.events)
    finally:
        srv.stop(grace=0)


def test_no_server_configured_answers_on_device(plan_dir: Path) -> None:
    with Runtime(plan_dir, device_config(None)) as runtime:
        result = runtime.infer(sample())
        assert result.kind in ("fallback", "local") and result.attempts == 0


def test_stream_preserves_order_and_answers(plan_dir: Path, server: tuple[Any, int]) -> None:
    with Runtime(plan_dir, device_config(f"127.0.0.1:{server[1]}"), background_probes=False) as runtime:
        results: list[RuntimeResult] = list(runtime.infer_stream((sample(i) for i in range(12)), workers=3))
        assert len(results) == 12
        for i, result in enumerate(results):
            assert result.kind == "split"
            np.testing.assert_allclose(result.outputs["y"], run_model(FULL, sample(i)["x"]), rtol=1e-5, atol=1e-6)


def test_metrics_endpoint_reports_paths_fallbacks_and_modes(plan_dir: Path) -> None:
    srv, port = create_server(ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None))
    with Runtime(plan_dir, device_config(f"127.0.0.1:{port}", retry_attempts=1), background_probes=False) as runtime:
        metrics_port = runtime.start_metrics_server(0)
        runtime.infer(sample())
        srv.stop(grace=0)
        runtime.infer(sample())
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert 'splitinf_device_request_seconds_count{kind="split",path="split:x:fp32"} 1.0' in body
    assert 'splitinf_device_fallbacks_total{reason="unavailable"} 1.0' in body
    assert 'splitinf_device_mode_transitions_total{from_mode="split",to_mode="fallback"} 1.0' in body
    assert "splitinf_device_breaker_state 2.0" in body
    assert 'splitinf_device_mode{mode="fallback"} 1.0' in body
    assert "splitinf_device_sent_bytes_total" in body and "splitinf_device_rtt_estimate_seconds" in body
    assert "process_resident_memory_bytes" in body


def test_plan_with_a_tampered_head_is_refused(plan_dir: Path) -> None:
    head = next((plan_dir / "device/segments").iterdir())
    head.write_bytes(head.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="sha256"):
        Runtime(plan_dir, device_config(None))


def test_plan_without_fallback_is_refused(tmp_path: Path) -> None:
    plan = build_plan_dir(tmp_path / "p", cuts=("x",))
    data = Plan.from_json(__import__("json").loads((plan / "plan.json").read_text()))
    write_json_atomic(
        plan / "plan.json",
        Plan(data.model_name, data.model_sha256, data.inputs, data.outputs, data.options[:-1]).to_json(),
    )
    with pytest.raises(PlanError, match="fallback"):
        Runtime(plan, device_config(None))


def test_device_metrics_export_cpu_temperature_when_the_board_has_one(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from splitinf.edge.metrics import DeviceMetrics

    zone = tmp_path / "thermal_zone0"
    zone.mkdir()
    (zone / "temp").write_text("61250\n")
    body = generate_latest(DeviceMetrics(thermal_root=str(tmp_path)).registry).decode()
    assert "splitinf_device_cpu_temperature_celsius 61.25" in body
    body = generate_latest(DeviceMetrics(thermal_root=str(tmp_path / "none")).registry).decode()
    assert "cpu_temperature" not in body


class FirstCallToADeadPort(InferenceClient):
    """The real client, whose first inference goes to a port nobody listens on (a real refusal)."""

    def __init__(self, target: str, dead_target: str):
        super().__init__(target)
        self.dead = InferenceClient(dead_target)
        self.calls = 0

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return (self.dead if self.calls == 1 else super()).infer(*args, **kwargs)

    def close(self) -> None:
        self.dead.close()
        super().close()


def test_unavailable_is_retried_once_within_budget_and_gives_no_rtt_sample(
    plan_dir: Path, server: tuple[Any, int]
) -> None:
    dead_srv, dead_port = create_server(ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None))
    dead_srv.stop(grace=0)
    client = FirstCallToADeadPort(f"127.0.0.1:{server[1]}", f"127.0.0.1:{dead_port}")
    with Runtime(plan_dir, device_config(None), client=client, background_probes=False) as runtime:
        samples_at_start = runtime.estimator.snapshot(runtime.clock()).rtt_samples  # the start-up link probe
        result = runtime.infer(sample())
        assert (result.kind, result.attempts, result.fallback_reason) == ("split", 2, None)
        # Karn's rule: which attempt was answered is ambiguous, so the call gave no RTT sample
        assert runtime.estimator.snapshot(runtime.clock()).rtt_samples == samples_at_start
        assert runtime.infer(sample()).attempts == 1
        assert runtime.estimator.snapshot(runtime.clock()).rtt_samples == samples_at_start + 1
    client.close()


def test_answer_cut_mid_flight_falls_back(plan_dir: Path, server: tuple[Any, int]) -> None:
    with FaultProxy(f"127.0.0.1:{server[1]}") as proxy:
        with Runtime(plan_dir, device_config(proxy.address, budget_s=2.0), background_probes=False) as runtime:
            assert runtime.infer(sample()).kind == "split"
            proxy.set(FaultSettings(downstream=DirectionFaults(close_after_bytes=20)))
            result = runtime.infer(sample(1))
            assert result.kind == "fallback" and result.fallback_reason in ("unavailable", "timeout")
            np.testing.assert_allclose(result.outputs["y"], run_model(FALLBACK, sample(1)["x"]), rtol=1e-5, atol=1e-6)


def test_stream_answers_every_input_once_when_the_server_dies_mid_stream(plan_dir: Path) -> None:
    srv, port = create_server(ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None))
    with Runtime(plan_dir, device_config(f"127.0.0.1:{port}"), background_probes=False) as runtime:

        def inputs() -> Iterator[dict[str, np.ndarray]]:
            for i in range(20):
                if i == 8:
                    srv.stop(grace=0)
                yield sample(i)

        results = list(runtime.infer_stream(inputs(), workers=3))
    assert len(results) == 20
    kinds = [r.kind for r in results]
    assert kinds[:5] == ["split"] * 5 and kinds[-5:] == ["fallback"] * 5
    for i, result in enumerate(results):
        reference = FULL if result.kind == "split" else FALLBACK
        np.testing.assert_allclose(result.outputs["y"], run_model(reference, sample(i)["x"]), rtol=1e-5, atol=1e-6)


def test_the_link_is_measured_at_start_so_a_pessimistic_prior_does_not_force_a_fallback(
    plan_dir: Path, server: tuple[Any, int]
) -> None:
    # A prior RTT far over the budget: deciding on the prior alone would answer locally.
    config = device_config(f"127.0.0.1:{server[1]}", budget_s=0.2, prior_rtt_s=5.0)
    with Runtime(plan_dir, config, background_probes=False) as runtime:
        assert runtime.estimator.snapshot(runtime.clock()).rtt_samples == 1
        result = runtime.infer(sample())
        assert result.kind == "split", result.fallback_reason


def test_a_server_down_at_start_leaves_the_prior_and_answers_from_the_fallback(plan_dir: Path) -> None:
    dead_srv, dead_port = create_server(ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None))
    dead_srv.stop(grace=0)
    with Runtime(plan_dir, device_config(f"127.0.0.1:{dead_port}", budget_s=0.2), background_probes=False) as runtime:
        assert runtime.estimator.snapshot(runtime.clock()).rtt_samples == 0
        assert runtime.infer(sample()).kind == "fallback"


def test_a_probe_that_shared_the_link_with_a_request_is_not_taken_for_the_path_delay(
    plan_dir: Path, server: tuple[Any, int]
) -> None:
    skew = [0.0]  # the runtime's clock, moved past the window instead of waiting it out
    with FaultProxy(f"127.0.0.1:{server[1]}") as proxy:
        config = device_config(proxy.address)
        clock = lambda: time.monotonic() + skew[0]  # noqa: E731
        with Runtime(plan_dir, config, clock=clock, background_probes=False) as runtime:
            clean = runtime.estimator.snapshot(clock())
            assert clean.base_rtt_s is not None and clean.base_rtt_s < 0.1
            proxy.set(FaultSettings(downstream=DirectionFaults(latency_ms=300)))
            skew[0] += config.policy.window_s + 1.0  # the start probe's baseline has aged out
            sent = proxy.stats().bytes_forwarded["upstream"]
            request = threading.Thread(target=runtime.infer, args=(sample(),))
            request.start()
            # the request has reached the server; its answer is held for 300 ms
            wait_for(lambda: proxy.stats().bytes_forwarded["upstream"] > sent, timeout_s=5)
            assert runtime.probe_once() == "ready"
            request.join(5)
            assert not request.is_alive()
            shared = runtime.estimator.snapshot(clock())
            # neither the probe nor the (light) request had the link to itself: no RTT sample, old baseline
            assert shared.rtt_samples == clean.rtt_samples
            assert shared.base_rtt_s == clean.base_rtt_s
            # the baseline is still stale, so the next probe is due; alone on the link it is a clean
            # sample, and the path's new delay is followed
            assert runtime.probe_once() == "ready"
            alone = runtime.estimator.snapshot(clock())
            assert alone.rtt_samples == clean.rtt_samples + 1
            assert alone.base_rtt_s is not None and alone.base_rtt_s >= 0.3


def test_inputs_at_other_shapes_than_planned_warn_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from splitinf.tools.testing.plans import write_plan_dir

    plan = write_plan_dir(
        tmp_path, mlp(batch=None), mlp(batch=None, seed=7, sizes=(16, 8, 4)), {"relu_0": (1e-4, 1e-4)}
    )
    at = {"source": "shapes", "inputs": {"x": {"dtype": "float32", "shape": [1, 16]}}}
    write_json_atomic(tmp_path / "plan.json", {**plan.to_json(), "inputs_at": at})
    batch_of = {n: {"x": np.zeros((n, 16), np.float32)} for n in (1, 3)}
    with Runtime(tmp_path, device_config(None)) as runtime, caplog.at_level("WARNING", "splitinf.edge.runtime"):
        runtime.infer(batch_of[1])
        assert not [r for r in caplog.records if "measured at" in r.getMessage()]
        for _ in range(3):
            assert runtime.infer(batch_of[3]).outputs["y"].shape == (3, 4)
    warned = [r.getMessage() for r in caplog.records if "measured at" in r.getMessage()]
    assert len(warned) == 1 and "'x' is [3, 16]" in warned[0] and "[1, 16]" in warned[0]


def test_a_model_that_rejects_zeros_starts_with_a_warning_and_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from splitinf.tools.testing.graphs import refuses_zeros
    from splitinf.tools.testing.plans import write_plan_dir

    model = refuses_zeros()
    write_plan_dir(tmp_path, model, model, {"k,x": (1e-4, 1e-4)}, local_seconds=1e-4)
    with caplog.at_level("WARNING", "splitinf.edge.runtime"), Runtime(tmp_path, device_config(None)) as runtime:
        assert "does not run on zeros" in caplog.text
        result = runtime.infer({"x": np.zeros((1, 4), np.float32), "k": np.array(1, np.int64)})
        np.testing.assert_allclose(result.outputs["y"], np.full((1, 4), 6.0, np.float32))


def test_checked_inputs_keep_a_scalar_scalar_and_make_the_rest_contiguous() -> None:
    from splitinf.contract.tensors import TensorSpec
    from splitinf.edge.runtime import check_inputs

    specs = [TensorSpec("x", "float32", ("N", 4)), TensorSpec("sr", "int64", ())]
    strided = np.zeros((4, 4), np.float32).T
    checked = check_inputs(specs, {"x": strided, "sr": np.array(16000, np.int64)})
    assert checked["sr"].shape == () and checked["x"].flags.c_contiguous


def as_format_1(plan_dir: Path, model: Any) -> Path:
    """Rewrite a plan as format 1 wrote it: one head file per split option, carrying its own weights."""
    import json

    data = json.loads((plan_dir / "plan.json").read_text())
    for option in data["options"]:
        if option["kind"] == "split":
            head = split_model(model, find_cut(model, option["cut_id"])).head
            relative = f"device/heads/split-{option['cut_id']}-fp32.onnx"
            option.update(head=relative, head_sha256=save_model(head, plan_dir / relative))
        elif option["kind"] == "local":
            option.update(model="device/local.onnx", sha256=save_model(model, plan_dir / "device/local.onnx"))
        else:
            option.update(model=option["model"][0], sha256=option["sha256"][0])
    data["format"] = 1
    write_json_atomic(plan_dir / "plan.json", data)
    return plan_dir


@pytest.mark.parametrize("cut", CUTS)
def test_chained_heads_answer_as_format_1_single_heads_and_the_full_model(tmp_path: Path, cut: str) -> None:
    chained = only_cut(tmp_path, cut)
    single = as_format_1(only_cut(tmp_path / "old", cut), FULL)
    srv, port = create_server(ServerConfig(repo=chained / "server", port=0, metrics_port=None))
    try:
        with (
            Runtime(chained, device_config(f"127.0.0.1:{port}"), background_probes=False) as new,
            Runtime(single, device_config(f"127.0.0.1:{port}"), background_probes=False) as old,
        ):
            for seed in range(3):
                a, b = new.infer(sample(seed)), old.infer(sample(seed))
                assert a.kind == b.kind == "split" and a.option_id == b.option_id
                np.testing.assert_allclose(a.outputs["y"], b.outputs["y"], rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(a.outputs["y"], run_model(FULL, sample(seed)["x"]), rtol=1e-5, atol=1e-6)
    finally:
        srv.stop(grace=0)


def test_the_local_model_runs_as_the_whole_chain(tmp_path: Path) -> None:
    plan_dir = tmp_path / "plan"
    write_plan_dir(plan_dir, FULL, FALLBACK, dict.fromkeys(CUTS, (0.001, 0.001)), name="mlp", local_seconds=0.0001)
    plan = Plan.from_json(__import__("json").loads((plan_dir / "plan.json").read_text()))
    local = plan.local
    assert local is not None and len(local.model) == len(CUTS)  # a segment per cut after the input, then the rest
    with Runtime(plan_dir, device_config(None), background_probes=False) as runtime:
        result = runtime.infer(sample(4))
        assert result.kind == "local"
        np.testing.assert_allclose(result.outputs["y"], run_model(FULL, sample(4)["x"]), rtol=1e-5, atol=1e-6)
