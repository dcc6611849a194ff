"""Live correction with real machines: a device whose CPU quota drops mid-run, a server whose does.

Each test runs the device runtime in its own process (tests/edge/live_device.py), a real
onnxruntime head and a real tail server over real sockets, and lowers a cgroup CPU quota
(splitinf.tools.bench.cgroup) between requests: the device's in the first test, the tail
server's in the second. The plan offers two splits of one model: OFFLOAD (cut at the input:
nothing on the device, the whole model on the server, 128 kB on the wire) and LATE (the heavy
layer on the device, 64 kB on the wire, a tail of microseconds). Needs root and a cgroup cpu
controller (CI runs as root); skipped with the reason otherwise. The last test (in process, no
cgroup) checks that the correction shows in the device's metrics and JSON event lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitinf.errors import UsageError
from splitinf.offline.graph import find_cut
from splitinf.offline.partition import split_model
from splitinf.ort import SessionSettings, open_session
from splitinf.tools.bench.cgroup import CpuCgroup, create_cpu_cgroup
from splitinf.tools.bench.harness import _stop
from splitinf.tools.faults.proxy import DirectionFaults, FaultProxy, FaultSettings
from splitinf.tools.testing.graphs import mlp
from splitinf.tools.testing.plans import write_plan_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
LIVE_DEVICE = Path(__file__).with_name("live_device.py")
# batch 512: 64 -> 16384 (the heavy layer, ~8 ms on one core) -> 32 -> 4
MODEL = mlp(batch=512, sizes=(64, 16384, 32, 4))
FALLBACK = mlp(batch=512, seed=7, sizes=(64, 8, 4))
OFFLOAD, LATE = "split:x:fp32", "split:relu_1:fp32"
THROTTLED_CPUS = 0.05
# The quota's granularity is 1 ms, so 0.05 CPU needs a period of 20 ms or more; a longer one makes the
# throttled device stall in longer bursts (up to a period), which it takes for a slower network.
PERIOD_US = 20_000


def _cgroup(cpus: float) -> CpuCgroup:
    try:
        return create_cpu_cgroup(cpus, period_us=PERIOD_US)
    except UsageError as exc:
        pytest.skip(f"no cgroup CPU quota here: {exc}")


def _median_run_s(model: Any, feed_shape: tuple[int, ...], runs: int = 7) -> float:
    session = open_session(model.SerializeToString(), SessionSettings().with_threads(1))
    feed = {session.get_inputs()[0].name: np.zeros(feed_shape, np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return sorted(times)[runs // 2]


@pytest.fixture(scope="module")
def timings() -> tuple[float, float]:
    """The heavy head's and the whole model's single-thread run time on this machine now."""
    head = split_model(MODEL, find_cut(MODEL, "relu_1")).head
    return _median_run_s(head, (512, 64)), _median_run_s(MODEL, (512, 64))


class LiveDevice:
    def __init__(self, plan_dir: Path, target: str, prior_bandwidth_bps: float, group: CpuCgroup | None) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self.process = subprocess.Popen(
            [sys.executable, str(LIVE_DEVICE), str(plan_dir), target, str(prior_bandwidth_bps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=group.join_preexec() if group is not None else None,
        )
        assert json.loads(self._line()) == {"ready": True}

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the device process exited ({self.process.wait()})")
        return line

    def request(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self._line())
        return answer

    def close(self) -> None:
        _stop(self.process)


def _write_plan(root: Path, *, offload_tail_s: float, late_head_s: float) -> None:
    cuts = {"x": (0.0, offload_tail_s), "relu_1": (late_head_s, 0.0005)}
    write_plan_dir(root, MODEL, FALLBACK, cuts, name="mlp", fallback_accuracy=0.5)


def _settle(device: LiveDevice, option: str, at_least: int = 4, at_most: int = 12) -> list[dict[str, Any]]:
    """Requests until ``option`` answers (a burst of other work on this shared machine can slow the
    device for a while, and the correction follows it: that is not what a test here is about)."""
    answers = [device.request() for _ in range(at_least)]
    while answers[-1]["option"] != option and len(answers) < at_most:
        answers.append(device.request())
    return answers


def _first(answers: list[dict[str, Any]], option: str) -> int | None:
    return next((i for i, a in enumerate(answers) if a["option"] == option), None)


def _throttle_and_expect(device: LiveDevice, group: CpuCgroup, option: str) -> list[dict[str, Any]]:
    """Lower ``group``'s quota; ``option`` must answer within a few requests and keep answering."""
    group.set_cpus(THROTTLED_CPUS)
    after = [device.request() for _ in range(8)]
    moved = _first(after, option)
    seen = [(a["option"], a["correction"]["heads"], a["correction"]["tails"], a["total_s"]) for a in after]
    assert moved is not None and moved <= 5, seen  # within a few requests
    assert after[-1]["option"] == option, seen
    assert group.stats().get("nr_throttled", 0) > 0
    return after


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    """Undo steps, run last first."""
    steps: list[Callable[[], object]] = []
    yield steps
    for step in reversed(steps):
        step()


def test_a_throttled_device_moves_to_offloading_within_a_few_requests(
    tmp_path: Path, timings: tuple[float, float], start_v2_server: Any, cleanup: list[Callable[[], object]]
) -> None:
    head_s, full_s = timings
    # The server's profile is taken as 4x slower than it runs here, so that LATE is clearly the choice
    # at first (its costs as profiled) and OFFLOAD clearly once the device runs its head ~20x slower.
    _write_plan(tmp_path, offload_tail_s=4 * full_s, late_head_s=head_s)
    server = start_v2_server(repo=tmp_path / "server")
    proxy = FaultProxy(server.target, settings=FaultSettings(upstream=DirectionFaults(rate_kbit=100_000)))
    proxy.start()
    cleanup.append(proxy.stop)
    group = _cgroup(2.0)  # as many CPUs as the machine has: no limit yet
    cleanup.append(group.remove)
    device = LiveDevice(tmp_path, proxy.address, 100e6, group)
    cleanup.append(device.close)

    before = _settle(device, LATE)
    assert before[-1]["option"] == LATE, [(a["option"], a["correction"]["heads"]) for a in before]

    after = _throttle_and_expect(device, group, OFFLOAD)
    assert after[_first(after, OFFLOAD) or 0]["correction"]["head"] > 4, after


def test_a_loaded_server_moves_the_work_back_to_the_device(
    tmp_path: Path, timings: tuple[float, float], cleanup: list[Callable[[], object]]
) -> None:
    head_s, full_s = timings
    # The device's profile is taken as 8x slower than it runs here: OFFLOAD is the choice while the
    # server is idle, LATE once the server runs its tails ~20x slower.
    _write_plan(tmp_path, offload_tail_s=full_s, late_head_s=8 * head_s)
    group = _cgroup(2.0)
    cleanup.append(group.remove)
    server, target = _start_server(tmp_path / "server", group)
    cleanup.append(lambda: _stop(server))
    device = LiveDevice(tmp_path, target, 1e9, None)
    cleanup.append(device.close)

    before = _settle(device, OFFLOAD)
    assert before[-1]["option"] == OFFLOAD, [(a["option"], a["correction"]["tails"]) for a in before]

    after = _throttle_and_expect(device, group, LATE)
    assert after[_first(after, LATE) or 0]["correction"]["tail"] > 3, after


def _start_server(repo: Path, group: CpuCgroup) -> tuple[subprocess.Popen[str], str]:
    """``splitinf serve`` (one onnxruntime thread per session) as a process inside ``group``."""
    argv = [sys.executable, "-m", "splitinf", "serve", "--repo", str(repo), "--port", "0", "--metrics-port", "-1"]
    process = subprocess.Popen(
        [*argv, "--threads", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        preexec_fn=group.join_preexec(),
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("serving on "):
            return process, line.split()[2]
    raise AssertionError(f"the tail server exited ({process.wait()}) before serving")


def test_the_correction_is_in_the_metrics_and_in_the_json_event_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from splitinf.cloud.app import create_server
    from splitinf.cloud.config import ServerConfig
    from splitinf.edge.config import DeviceConfig
    from splitinf.edge.runtime import EVENTS_LOGGER, Runtime
    from splitinf.tools.testing.plans import write_mlp_plan_dir

    plan_dir = write_mlp_plan_dir(tmp_path, local=False)
    server, port = create_server(ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None))
    config = DeviceConfig(server=f"127.0.0.1:{port}", budget_s=2.0, retry_attempts=1, prior_bandwidth_bps=1e9)
    x = {"x": np.zeros((1, 16), np.float32)}
    with caplog.at_level("INFO", logger=EVENTS_LOGGER), Runtime(plan_dir, config, background_probes=False) as runtime:
        split = [runtime.infer(x) for _ in range(3)][-1]  # a value counts once three samples hold it up
        server.stop(grace=0)
        assert runtime.infer(x).kind == "fallback"
        runtime.infer(x)  # decided with the correction gauges refreshed
        value = runtime.metrics.registry.get_sample_value
        assert value("splitinf_device_cost_correction_ratio", {"part": "head", "option": ""}) is not None
        assert value("splitinf_device_cost_correction_ratio", {"part": "tail", "option": split.option_id}) is not None
        # splitinf serve reports its queue time (splitinf_queue_ns), so the device keeps it per option
        assert value("splitinf_device_server_queue_seconds", {"option": split.option_id}) is not None
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == EVENTS_LOGGER]
    chosen = next(line for line in lines if line["event"] == "option_change")
    assert chosen["to"] == split.option_id and chosen["correction"]["head"] > 0
    mode = next(line for line in lines if line["event"] == "mode_change")
    assert mode["to"] == "fallback" and set(mode["correction"]) >= {"head", "tail", "queues_s", "tails"}
    # the device's own draws for sharing the server (splitinf.edge.policy.Spread)
    assert chosen["spread"] == mode["spread"] == runtime.policy.spread.to_json()
    assert 0 < chosen["spread"]["margin"] <= config.policy.spread_margin
