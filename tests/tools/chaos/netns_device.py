"""The device side of the network-namespace scenario, run inside the device namespace.

gRPC's core opens sockets on threads of its own, so the device cannot be put into a
namespace from the test process; it runs here, as a subprocess, driven by one command per
line on stdin, answering one JSON object per line on stdout:

    run N            -> {"answers": [...]}                 N requests, 20 ms apart
    until_split T    -> {"ok": bool, "answers": [...], "took_s": s}   until a split answer
    until OPTION T   -> the same, until an answer from that option
    estimate         -> {"bandwidth_bps": b, "rtt_s": r}
    check            -> {"ok": bool, "error": str|null}   Recorder.check() (exactly once, outputs, bounds, metrics)
    quit             -> {"ok": bool, "leaked": [...], "rss_growth_mib": x}

Usage: python tests/tools/chaos/netns_device.py PLAN_DIR HOST:PORT BUDGET_S [POLICY_JSON]
(POLICY_JSON: overrides of chaos_harness.CHAOS_POLICY, e.g. '{"window_s": 1.0}')
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from chaos_harness import Answer, Recorder, device_config, device_threads, load_chaos_plan, rss_bytes, wait_until

from splitinf.edge.runtime import Runtime


def summary(answer: Answer) -> dict[str, Any]:
    result = answer.result
    return {
        "index": answer.index,
        "kind": result.kind,
        "option": result.option_id,
        "mode": result.mode,
        "total_s": result.latency.total_s,
        "reason": result.fallback_reason,
        "attempts": result.attempts,
        "at": answer.at,
    }


def main(plan_dir: str, server: str, budget_s: float, policy: dict[str, Any]) -> int:
    threads_before = device_threads()
    plan = load_chaos_plan(Path(plan_dir))
    runtime = Runtime(plan.path, device_config(server, budget_s=budget_s, policy=policy))
    recorder = Recorder(runtime, plan, budget_s)
    rss_before = rss_bytes()  # after the sessions and the channel exist: growth from here is a leak
    print(json.dumps({"ready": True, "bound_s": recorder.bound_s}), flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        reply: dict[str, Any]
        if command == "run":
            reply = {"answers": [summary(a) for a in recorder.run(int(args[0]), pace_s=0.02)]}
        elif command in ("until_split", "until"):
            wanted = args[0] if command == "until" else None
            first = len(recorder.answers)
            start = time.monotonic()

            def reached(answer: Answer, wanted: str | None = wanted) -> bool:
                return answer.result.option_id == wanted if wanted else answer.result.kind == "split"

            try:
                recorder.run_until(reached, timeout_s=float(args[-1]))
                ok = True
            except AssertionError:
                ok = False
            reply = {
                "ok": ok,
                "took_s": time.monotonic() - start,
                "answers": [summary(a) for a in recorder.answers[first:]],
            }
        elif command == "estimate":
            snapshot = runtime.estimator.snapshot(time.monotonic())
            reply = {"bandwidth_bps": snapshot.bandwidth_bps, "rtt_s": snapshot.rtt_s}
        elif command == "check":
            try:
                recorder.check()
                reply = {"ok": True, "error": None}
            except AssertionError as exc:
                reply = {"ok": False, "error": str(exc)}
        elif command == "quit":
            recorder.close()
            try:
                wait_until(lambda: device_threads() <= threads_before, 10.0, "device threads to finish")
            except AssertionError:
                pass
            leaked = sorted(t.name for t in device_threads() - threads_before)
            growth = (rss_bytes() - rss_before) / 2**20
            print(json.dumps({"ok": not leaked, "leaked": leaked, "rss_growth_mib": growth}), flush=True)
            return 0
        else:
            reply = {"error": f"unknown command {command!r}"}
        print(json.dumps(reply), flush=True)
    recorder.close()
    return 0


if __name__ == "__main__":
    overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), overrides))
