"""The emulated device: one process, started inside the CPU-limited cgroup, steered over stdin.

    python -m splitinf.tools.bench.device --threads 4

It reads one JSON command per line on stdin and answers one JSON line on stdout (anything
else the process or its libraries print goes to stderr). Everything the device does in the
benchmark runs here, under the same CPU limit and onnxruntime thread count: the device
profile, the local model, each option's head followed by its V2 call to the tail (exactly
the runtime's path: head session, then ``InferenceClient.infer``), the framework-overhead
comparison with a bare gRPC echo, and the failover scenario with a real ``Runtime``.

Commands (``op``): hello, profile, local, measure, overhead, failover, quit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["main"]

_Handler = Callable[["_Device", dict[str, Any]], dict[str, Any]]


def _load_inputs(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: np.ascontiguousarray(data[k]) for k in data.files}


class _Device:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._sessions: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}

    def session(self, path: str) -> Any:
        from splitinf.offline.sessions import make_session

        if path not in self._sessions:
            self._sessions[path] = make_session(path, self.threads)
        return self._sessions[path]

    def chain(self, paths: list[str]) -> Any:
        """An option's device files run in order as the runtime runs them, each file's session opened once."""
        from splitinf.ort import Chain

        return Chain(" -> ".join(paths), [self.session(p) for p in paths], paths)

    def client(self, target: str) -> Any:
        from splitinf.edge.client import InferenceClient

        if target not in self._clients:
            self._clients[target] = InferenceClient(target)
        return self._clients[target]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    # -- commands ----------------------------------------------------------------------------------

    def hello(self, cmd: dict[str, Any]) -> dict[str, Any]:
        import onnxruntime as ort

        try:
            cgroups = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            cgroups = []
        return {
            "pid": os.getpid(),
            "cgroups": cgroups,
            "threads": self.threads,
            "cpu_count": os.cpu_count(),
            "onnxruntime": ort.__version__,
        }

    def profile(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from splitinf.contract.files import sha256_file, write_json_atomic
        from splitinf.offline.graph import GraphView, load_model
        from splitinf.offline.inputs import model_inputs
        from splitinf.offline.profiling import profile_model

        fallback = None
        if cmd.get("fallback"):
            path = cmd["fallback"]
            fallback = (load_model(path), Path(path).stem, sha256_file(path))
        start = time.perf_counter()
        model = load_model(cmd["model"])
        profile = profile_model(
            model,
            name=Path(cmd["model"]).stem,
            sha256=sha256_file(cmd["model"]),
            threads=self.threads,
            cut_ids=cmd.get("cuts"),
            codecs=cmd.get("codecs", ("fp32", "fp16")),
            repeats=int(cmd.get("repeats", 5)),
            warmup=int(cmd.get("warmup", 1)),
            fallback=fallback,
            progress=bool(cmd.get("progress", True)),
            inputs=model_inputs(GraphView(model).input_specs(), samples=cmd.get("samples")),
            pause_s=float(cmd.get("pause_s", 0.0)),
        )
        write_json_atomic(cmd["output"], profile)
        return {"output": cmd["output"], "seconds": time.perf_counter() - start}

    def local(self, cmd: dict[str, Any]) -> dict[str, Any]:
        model = self.chain(cmd["model"])
        feed = _load_inputs(cmd["inputs"])
        samples = []
        started = time.perf_counter()
        for i in range(int(cmd.get("warmup", 1)) + int(cmd["requests"])):
            time.sleep(float(cmd.get("pause_s", 0.0)))  # requests arrive apart, as the profile timed them
            t0 = time.perf_counter()
            model.run(feed)
            elapsed = time.perf_counter() - t0
            if i >= int(cmd.get("warmup", 1)):
                samples.append({"total_s": elapsed, "head_s": 0.0, "call_s": 0.0, "server_s": 0.0})
                samples[-1].update(request_bytes=0, response_bytes=0)
                if len(samples) >= int(cmd.get("min_requests", 3)) and time.perf_counter() - started > cmd["max_s"]:
                    break
        return {"samples": samples}

    def measure(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Each split option as the runtime runs it (head on the device, then the V2 call), the options
        interleaved: round after round, one request per option in a shuffled order, so a burst of other
        load on a shared machine falls on every option alike instead of on whichever ran then."""
        import random

        client = self.client(cmd["target"])
        feed = _load_inputs(cmd["inputs"])
        options = list(cmd["options"])
        heads = {o["id"]: self.chain(o["head"]) for o in options}
        results: dict[str, Any] = {o["id"]: {"samples": [], "errors": []} for o in options}
        for option in options:  # warm-up: sessions, connections, the tail's first run
            for _ in range(int(cmd.get("warmup", 1))):
                self._one_request(client, heads[option["id"]], option, feed, cmd, results[option["id"]])
        order = random.Random(int(cmd.get("seed", 0)))
        cap_s = float(cmd["max_s"]) * max(1, len(options))
        minimum = int(cmd.get("min_requests", 3))
        started = time.perf_counter()
        for _ in range(int(cmd["requests"])):
            order.shuffle(options)
            for option in options:
                entry = results[option["id"]]
                sample = self._one_request(client, heads[option["id"]], option, feed, cmd, entry)
                if sample is not None:
                    entry["samples"].append(sample)
            enough = all(len(r["samples"]) >= minimum for r in results.values())
            if enough and time.perf_counter() - started > cap_s:
                break
        return {"options": results}

    def _one_request(
        self,
        client: Any,
        head: Any,
        option: dict[str, Any],
        feed: dict[str, np.ndarray],
        cmd: dict[str, Any],
        entry: dict[str, Any],
    ) -> dict[str, Any] | None:
        """One request of ``option``: ``head`` (its chain) on the device, then the V2 call; None when it failed
        (the error kept in ``entry["errors"]``)."""
        from splitinf.errors import TransportError

        wire_names = option.get("wire") or head.output_names
        t0 = time.perf_counter()
        wire_all = head.run(feed)
        wire = {n: wire_all[n] for n in wire_names}
        t1 = time.perf_counter()
        try:
            answer = client.infer(
                option["tail_model"], wire, timeout_s=float(cmd["timeout_s"]), version=option["tail_version"]
            )
        except TransportError as exc:
            entry["errors"].append(str(exc))
            return None
        t2 = time.perf_counter()
        return {
            "total_s": t2 - t0,
            "head_s": t1 - t0,
            "call_s": t2 - t1,
            "server_s": answer.server_compute_s,
            "request_bytes": answer.request_bytes,
            "response_bytes": answer.response_bytes,
        }

    def overhead(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """V2 calls (minus the server's compute time) against echoes of the same bytes, interleaved."""
        from splitinf.tools.bench.echo import EchoClient

        client = self.client(cmd["target"])
        echo = EchoClient(cmd["echo_target"])
        feed = _load_inputs(cmd["inputs"])
        cases = []
        try:
            for case in cmd["cases"]:
                head = self.chain(case["head"])
                wire_all = head.run(feed)
                wire = {n: wire_all[n] for n in (case.get("wire") or head.output_names)}
                v2: list[float] = []
                bare: list[float] = []
                sizes = (0, 0)
                for i in range(int(cmd.get("warmup", 2)) + int(cmd["requests"])):
                    t0 = time.perf_counter()
                    answer = client.infer(case["tail_model"], wire, timeout_s=30.0, version=case["tail_version"])
                    transport = time.perf_counter() - t0 - answer.server_compute_s
                    sizes = (answer.request_bytes, answer.response_bytes)
                    echo_s = echo.round_trip(*sizes)
                    if i >= int(cmd.get("warmup", 2)):
                        v2.append(transport)
                        bare.append(echo_s)
                cases.append(
                    {
                        "id": case["id"],
                        "request_bytes": sizes[0],
                        "response_bytes": sizes[1],
                        "v2_s": v2,
                        "echo_s": bare,
                    }
                )
        finally:
            echo.close()
        return {"cases": cases}

    def failover(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Steady split mode, then a cut (black hole) of the link, an outage, and a heal.

        Returns every answer (monotonic start/end, kind, option, reason) and the cut and heal times;
        CLOCK_MONOTONIC is system-wide, so the orchestrator can read them too.
        """
        from splitinf.edge.config import DeviceConfig
        from splitinf.edge.policy import PolicyConfig
        from splitinf.edge.runtime import Runtime
        from splitinf.tools.faults import control_request

        policy = PolicyConfig(budget_s=float(cmd["budget_s"]), **cmd.get("policy", {}))
        config = DeviceConfig(
            server=cmd["target"],
            budget_s=float(cmd["budget_s"]),
            intra_op_threads=self.threads,
            prior_rtt_s=float(cmd["prior_rtt_s"]),
            prior_bandwidth_bps=float(cmd["prior_bandwidth_bps"]),
            policy=policy,
        )
        feed = _load_inputs(cmd["inputs"])
        interval = float(cmd.get("interval_s", 0.05))
        answers: list[dict[str, Any]] = []
        pace = threading.Event()  # never set: waits pace the requests, like a sensor's frame rate

        def ask(runtime: Runtime) -> dict[str, Any]:
            t0 = time.monotonic()
            result = runtime.infer(feed)
            t1 = time.monotonic()
            answer = {
                "start": t0,
                "end": t1,
                "kind": result.kind,
                "option": result.option_id,
                "reason": result.fallback_reason,
                "mode": result.mode,
            }
            answers.append(answer)
            pace.wait(max(0.0, interval - (t1 - t0)))
            return answer

        out: dict[str, Any] = {"answers": answers, "interval_s": interval}
        with Runtime(cmd["plan"], config) as runtime:
            deadline = time.monotonic() + float(cmd.get("warm_timeout_s", 60))
            streak = 0
            while streak < int(cmd.get("warm_splits", 5)):
                if time.monotonic() > deadline:
                    out["error"] = "the runtime never reached a steady split mode before the cut"
                    out["events"] = [e.as_log_fields() | {"at": e.at} for e in runtime.events]
                    return out
                streak = streak + 1 if ask(runtime)["kind"] == "split" else 0
            out["cut_at"] = time.monotonic()
            control_request(cmd["control"], {"op": "set", "blackhole": True})
            first_local: dict[str, Any] | None = None
            deadline = time.monotonic() + float(cmd.get("outage_timeout_s", 60))
            while time.monotonic() < deadline:
                answer = ask(runtime)
                if answer["kind"] != "split" and first_local is None:
                    first_local = answer
                if first_local is not None and time.monotonic() - first_local["end"] >= float(cmd["outage_s"]):
                    break
            out["heal_at"] = time.monotonic()
            control_request(cmd["control"], {"op": "clear"})
            deadline = time.monotonic() + float(cmd.get("recovery_timeout_s", 60))
            while time.monotonic() < deadline:
                if ask(runtime)["kind"] == "split":
                    break
            out["events"] = [e.as_log_fields() | {"at": e.at} for e in runtime.events]
        return out


_COMMANDS: dict[str, _Handler] = {
    "hello": _Device.hello,
    "profile": _Device.profile,
    "local": _Device.local,
    "measure": _Device.measure,
    "overhead": _Device.overhead,
    "failover": _Device.failover,
}


def serve(device: _Device, commands: IO[str], replies: IO[str]) -> None:
    for line in commands:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.get("op")
        if op == "quit":
            break
        handler = _COMMANDS.get(op)
        reply: Mapping[str, Any]
        if handler is None:
            reply = {"ok": False, "error": f"unknown command {op!r}; known: {sorted(_COMMANDS)} and quit"}
        else:
            try:
                reply = {"ok": True, **handler(device, cmd)}
            except Exception as exc:  # report, do not die: the orchestrator decides
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitinf.tools.bench.device", description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    # Replies own the real stdout; everything else anybody prints (C libraries too) goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    device = _Device(args.threads)
    try:
        serve(device, sys.stdin, replies)
    finally:
        device.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
