"""The device side of the network-namespace scenario, run inside the device namespace.

gRPC's core opens sockets on threads of its own, so the device cannot be put into a
namespace from the test process; it runs here, as a subprocess, driven by one command per
line on stdin, answering one JSON object per line on stdout:

    run N            -> {"answers": [...]}                 N requests, 20 ms apart
    until_split T    -> {"ok": bool, "answers": [...], "took_s": s}   until a split answer
    check            -> {"ok": bool, "error": str|null}   Recorder.check() (exactly once, outputs, bounds, metrics)
    quit             -> {"ok": bool, "leaked": [...], "rss_growth_mib": x}

Usage: python tests/chaos/netns_device.py PLAN_DIR HOST:PORT BUDGET_S
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from chaos_harness import Answer, Recorder, device_config, device_threads, load_chaos_plan, rss_bytes, wait_until

from splitinf.runtime import Runtime


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


def main(plan_dir: str, server: str, budget_s: float) -> int:
    threads_before = device_threads()
    plan = load_chaos_plan(Path(plan_dir))
    recorder = Recorder(Runtime(plan.path, device_config(server, budget_s=budget_s)), plan, budget_s)
    rss_before = rss_bytes()  # after the sessions and the channel exist: growth from here is a leak
    print(json.dumps({"ready": True, "bound_s": recorder.bound_s}), flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        reply: dict[str, Any]
        if command == "run":
            reply = {"answers": [summary(a) for a in recorder.run(int(args[0]), pace_s=0.02)]}
        elif command == "until_split":
            first = len(recorder.answers)
            start = time.monotonic()
            try:
                recorder.run_until(lambda a: a.result.kind == "split", timeout_s=float(args[0]))
                ok = True
            except AssertionError:
                ok = False
            reply = {
                "ok": ok,
                "took_s": time.monotonic() - start,
                "answers": [summary(a) for a in recorder.answers[first:]],
            }
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
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
