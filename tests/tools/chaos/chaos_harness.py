"""The chaos scenarios' harness: a plan built with the partitioner, a real tail server that
can be killed and restarted on its port, a FaultProxy between, and a recorder that checks
every answer against the model that claims to have produced it.

Checks common to every scenario (``Recorder.check``):

- every request is answered exactly once, labelled with its path (option id and kind),
  and its outputs are those of the model behind that label for that very input;
- no answer later than the budget plus the fallback model's run time plus ``MARGIN_S``;
- the device's metrics agree with the recorder's own counts.

``leak_guard`` adds: no thread left behind after the runtime closes, memory (RSS) flat.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from splitinf.cloud.app import TailServer, create_server
from splitinf.cloud.config import ServerConfig
from splitinf.contract.plan import load_plan
from splitinf.edge.config import DeviceConfig
from splitinf.edge.policy import PolicyConfig
from splitinf.edge.runtime import Runtime, RuntimeResult
from splitinf.tools.testing.plans import write_plan_dir

# Stated margin on top of budget + fallback run time: two shared, noisy cores (six engineers'
# test suites at once) can stall any thread for a while; the point is "not TCP's minutes".
MARGIN_S = 0.25
WIDTH = 8192  # input floats: 32 KiB on the wire for full offload
MODEL_NAME = "chaos"

# Short, real-time policy settings so a scenario takes seconds, not minutes.
CHAOS_POLICY = PolicyConfig(
    budget_s=0.3,
    window_s=2.0,
    min_calls=3,
    trip_after_failures=1,
    open_s=0.3,
    open_multiplier=2.0,
    open_max_s=1.0,
    half_open_probes=2,
    probe_interval_s=0.05,
    stabilisation_s=0.3,
    min_dwell_s=0.2,
    flap_window_s=60.0,
    flap_limit=3,
    quarantine_s=60.0,
)


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def full_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,8192] -> scale, relu -> a -> matmul 8192x64, relu -> b[1,64] -> matmul 64x10 -> y[1,10].

    Two useful cuts: ``x`` (full offload, 32 KiB) and ``b`` (256 bytes after the heavy matmul)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"], name="scale"),
        helper.make_node("Relu", ["scaled"], ["a"], name="relu_a"),
        helper.make_node("MatMul", ["a", "w1"], ["h"], name="matmul_1"),
        helper.make_node("Relu", ["h"], ["b"], name="relu_b"),
        helper.make_node("MatMul", ["b", "w2"], ["y"], name="matmul_2"),
    ]
    inits = [
        _init("scale", rng.uniform(0.5, 1.5, (1, WIDTH))),
        _init("w1", rng.standard_normal((WIDTH, 64)) / np.sqrt(WIDTH)),
        _init("w2", rng.standard_normal((64, 10)) / 8),
    ]
    graph = helper.make_graph(
        nodes,
        "chaos_full",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def fallback_model(seed: int = 7) -> onnx.ModelProto:
    """The small local stand-in: one matmul x[1,8192] -> y[1,10]."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wf"], ["y"], name="matmul_f")],
        "chaos_fallback",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [_init("wf", rng.standard_normal((WIDTH, 10)) / np.sqrt(WIDTH))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass
class ChaosPlan:
    """A plan directory (heads, fallback, tails under ``server/``) plus reference sessions."""

    path: Path
    big_option: str  # full offload: 32 KiB per request
    small_option: str  # cut after the heavy matmul: 256 bytes per request
    fallback_s: float  # the fallback model's worst warm run time measured here
    tails: dict[str, str]  # option id -> tail model name on the server
    _full: Any = field(repr=False, default=None)
    _fallback: Any = field(repr=False, default=None)

    @property
    def server_repo(self) -> Path:
        return self.path / "server"

    def expected(self, kind: str, x: np.ndarray) -> np.ndarray:
        session = self._full if kind == "split" else self._fallback
        return np.asarray(session.run(["y"], {"x": x})[0])


def build_chaos_plan(root: Path) -> ChaosPlan:
    # head_seconds as a Pi would measure them: the early cut is free, the late one pays the matmul
    # (x wins while the bandwidth estimate is above ~1.8 Mbit/s, b below it)
    write_plan_dir(
        root,
        full_model(),
        fallback_model(),
        {"x": (0.0, 0.004), "b": (0.15, 0.0005)},
        name=MODEL_NAME,
        accuracy=0.95,
        fallback_accuracy=0.7,
        fallback_seconds=0.002,
    )
    return load_chaos_plan(root)


def load_chaos_plan(root: Path) -> ChaosPlan:
    """A ChaosPlan for a plan directory ``build_chaos_plan`` wrote (also from another process)."""
    plan = load_plan(root)
    split = {o.cut_id: o for o in plan.options if o.kind == "split"}
    providers = ["CPUExecutionProvider"]
    full_session = ort.InferenceSession(str(root / "source" / "model.onnx"), providers=providers)
    fallback_session = ort.InferenceSession(str(root / "device" / "fallback.onnx"), providers=providers)
    x = sample_input(0)
    timings = []
    for _ in range(30):
        start = time.perf_counter()
        fallback_session.run(["y"], {"x": x})
        timings.append(time.perf_counter() - start)
    tails = {o.id: o.tail_model for o in split.values() if o.tail_model is not None}
    return ChaosPlan(root, split["x"].id, split["b"].id, max(timings[5:]), tails, full_session, fallback_session)


def sample_input(i: int) -> np.ndarray:
    return np.random.default_rng(1000 + i).standard_normal((1, WIDTH)).astype(np.float32)


class TailProcess:
    """A real tail server in this process that the scenario can kill and restart on the same port."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.server: TailServer | None = None
        self.port = 0
        self.start()

    def start(self) -> None:
        assert self.server is None
        self.server, self.port = create_server(ServerConfig(repo=self.repo, port=self.port, metrics_port=None))

    def kill(self) -> None:
        """Stop at once: connections close, calls in flight fail."""
        if self.server is not None:
            self.server.stop(grace=0)
            self.server = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def requests_ok(self, tail_model: str) -> float:
        """Requests the live server instance has answered successfully for a model."""
        assert self.server is not None and self.server.metrics is not None
        value = self.server.metrics.registry.get_sample_value(
            "splitinf_requests_total", {"model": tail_model, "code": "OK"}
        )
        return value or 0.0


def device_config(target: str, *, budget_s: float = 0.3, **changes: Any) -> DeviceConfig:
    policy_changes = changes.pop("policy", {})
    return DeviceConfig(
        server=target,
        budget_s=budget_s,
        policy=dataclasses.replace(CHAOS_POLICY, budget_s=budget_s, **policy_changes),
        prior_rtt_s=0.005,
        probe_timeout_s=0.3,
        light_probe_interval_s=changes.pop("light_probe_interval_s", 0.1),
        retry_backoff_s=0.005,
        retry_backoff_max_s=0.02,
        **changes,
    )


@dataclass(frozen=True)
class Answer:
    index: int
    result: RuntimeResult
    at: float  # monotonic time the answer arrived


class Recorder:
    """Drives a runtime and keeps every answer; ``check`` asserts the common guarantees."""

    def __init__(self, runtime: Runtime, plan: ChaosPlan, budget_s: float) -> None:
        self.runtime = runtime
        self.plan = plan
        self.budget_s = budget_s
        self.answers: list[Answer] = []
        self.issued = 0
        self._lock = threading.Lock()
        self._load_threads: list[threading.Thread] = []
        self._metrics_before = self._metric_counts()

    def close(self) -> None:
        self.runtime.close()

    @property
    def bound_s(self) -> float:
        return self.budget_s + self.plan.fallback_s + MARGIN_S

    def one(self) -> Answer:
        with self._lock:
            index = self.issued
            self.issued += 1
        result = self.runtime.infer({"x": sample_input(index)}, budget_s=self.budget_s)
        answer = Answer(index, result, time.monotonic())
        with self._lock:
            self.answers.append(answer)
        return answer

    def run(self, n: int, pace_s: float = 0.0) -> list[Answer]:
        out = []
        pacer = threading.Event()
        for _ in range(n):
            out.append(self.one())
            if pace_s:
                pacer.wait(pace_s)  # request pacing, not waiting for a state
        return out

    def run_until(self, done: Callable[[Answer], bool], timeout_s: float, pace_s: float = 0.02) -> Answer:
        """Send requests until one satisfies ``done``; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout_s
        pacer = threading.Event()
        while time.monotonic() < deadline:
            answer = self.one()
            if done(answer):
                return answer
            pacer.wait(pace_s)
        raise AssertionError(f"no answer satisfied the condition within {timeout_s}s; last: {self.answers[-1]}")

    def run_concurrently(self, workers: int, until: threading.Event, pace_s: float = 0.01) -> None:
        """``workers`` threads sending requests until ``until`` is set; ``join_load`` waits for them."""
        threads = [
            threading.Thread(target=self._load_loop, args=(until, pace_s), name=f"chaos-load-{i}")
            for i in range(workers)
        ]
        for thread in threads:
            thread.start()
        self._load_threads = threads

    def join_load(self, timeout_s: float = 10.0) -> None:
        for thread in self._load_threads:
            thread.join(timeout_s)
            assert not thread.is_alive(), "a load thread is stuck: a request was never answered"

    def _load_loop(self, until: threading.Event, pace_s: float) -> None:
        while not until.is_set():
            self.one()
            until.wait(pace_s)

    # ---- checks ----------------------------------------------------------------------------------

    def _metric_counts(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {}
        for metric in self.runtime.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "splitinf_device_request_seconds_count":
                    counts[("request", sample.labels["path"], sample.labels["kind"])] = sample.value
                elif sample.name == "splitinf_device_fallbacks_total":
                    counts[("fallback", sample.labels["reason"])] = sample.value
                elif sample.name == "splitinf_device_mode_transitions_total":
                    counts[("transition", sample.labels["from_mode"], sample.labels["to_mode"])] = sample.value
        return counts

    def metric_deltas(self) -> Counter[tuple[str, ...]]:
        after = self._metric_counts()
        deltas: Counter[tuple[str, ...]] = Counter()
        for key, value in after.items():
            delta = value - self._metrics_before.get(key, 0.0)
            if delta:
                deltas[key] = int(delta)
        return deltas

    def kinds(self, answers: Sequence[Answer] | None = None) -> Counter[str]:
        return Counter(a.result.kind for a in (self.answers if answers is None else answers))

    def check(self) -> None:
        answers = sorted(self.answers, key=lambda a: a.index)
        assert [a.index for a in answers] == list(range(self.issued)), "every request answered exactly once"
        split_ids = {self.plan.big_option, self.plan.small_option}
        late = []
        for answer in answers:
            result = answer.result
            if result.kind == "split":
                assert result.option_id in split_ids and result.fallback_reason is None
            else:
                assert result.kind == "fallback" and result.option_id == "fallback", result
            expected = self.plan.expected(result.kind, sample_input(answer.index))
            np.testing.assert_allclose(
                result.outputs["y"], expected, rtol=1e-4, atol=1e-5,
                err_msg=f"request {answer.index}: outputs are not {result.kind}'s answer to its own input",
            )  # fmt: skip
            if result.latency.total_s > self.bound_s:
                late.append((answer.index, round(result.latency.total_s, 3), result.kind, result.fallback_reason))
        assert not late, f"answers later than budget + fallback + margin ({self.bound_s:.3f}s): {late}"
        self.check_metrics()

    def check_metrics(self) -> None:
        deltas = self.metric_deltas()
        by_path = Counter(("request", a.result.option_id, a.result.kind) for a in self.answers)
        by_reason = Counter(("fallback", a.result.fallback_reason) for a in self.answers if a.result.fallback_reason)
        assert {k: v for k, v in deltas.items() if k[0] == "request"} == dict(by_path)
        assert {k: v for k, v in deltas.items() if k[0] == "fallback"} == dict(by_reason)
        transitions = sum(v for k, v in deltas.items() if k[0] == "transition")
        events = [e for e in self.runtime.events if e.kind == "mode"]
        if len(self.runtime.events) < 256:  # the runtime keeps the last 256 events
            assert transitions == len(events), (transitions, events)

    def mode_events(self) -> list[Any]:
        return [e for e in self.runtime.events if e.kind == "mode"]


Device = Callable[..., Recorder]  # the ``device`` fixture: device(budget_s=..., **config) -> Recorder


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``predicate``; return the seconds it took, AssertionError at the deadline."""
    start = time.monotonic()
    pacer = threading.Event()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        pacer.wait(0.01)
    return time.monotonic() - start


# Threads of the in-process tail server (its gRPC executor grows on demand, its batchers and
# grpc's serving thread live with each server instance): the scenarios kill and restart it,
# and these are not the device's.
SERVER_THREAD_PREFIXES = ("splitinf-grpc", "batcher-")
SERVER_THREAD_SUFFIXES = ("(_serve)",)


def device_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if not t.name.startswith(SERVER_THREAD_PREFIXES) and not t.name.endswith(SERVER_THREAD_SUFFIXES)
    }


@contextmanager
def leak_guard(max_rss_growth_bytes: int = 64 << 20) -> Iterator[None]:
    """No (non-server) thread started inside survives it; RSS does not grow by more than the bound."""
    before_threads = device_threads()
    before_rss = rss_bytes()
    yield
    try:
        wait_until(lambda: device_threads() <= before_threads, 10.0, "threads to finish")
    except AssertionError:
        leaked = sorted(t.name for t in device_threads() - before_threads)
        raise AssertionError(f"threads leaked: {leaked}") from None
    growth = rss_bytes() - before_rss
    assert growth < max_rss_growth_bytes, f"RSS grew by {growth / 2**20:.1f} MiB"
