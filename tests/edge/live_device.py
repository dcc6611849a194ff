"""A device runtime in a process of its own (so a cgroup can limit it), steered over stdin.

    python tests/edge/live_device.py PLAN_DIR TARGET PRIOR_BANDWIDTH_BPS

Prints ``{"ready": true}`` once the runtime is up, then answers one request per line read
on stdin with one JSON line: the option that answered and the correction in force after it.
Used by tests/edge/test_correction_live.py; not a test module itself.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from splitinf.edge.config import DeviceConfig
from splitinf.edge.policy import PolicyConfig
from splitinf.edge.runtime import Runtime


def main() -> int:
    plan_dir, target, prior_bandwidth = sys.argv[1], sys.argv[2], float(sys.argv[3])
    budget = 5.0  # far above every option here: the test is about which option, not about the budget
    config = DeviceConfig(
        server=target,
        budget_s=budget,
        prior_bandwidth_bps=prior_bandwidth,
        prior_rtt_s=0.001,
        policy=PolicyConfig(budget_s=budget),
    )
    with Runtime(plan_dir, config) as runtime:
        feeds = {
            s.name: np.random.default_rng(0).standard_normal(s.shape).astype(s.dtype)  # type: ignore[arg-type]
            for s in runtime.plan.inputs
        }
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if line.strip() != "go":
                break
            result = runtime.infer(feeds)
            correction = runtime.corrector.correction(runtime.clock())
            answer = {
                "option": result.option_id,
                "kind": result.kind,
                "mode": result.mode,
                "total_s": result.latency.total_s,
                "correction": correction.to_json(),
                "bandwidth_bps": runtime.estimator.snapshot(runtime.clock()).bandwidth_bps,
            }
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
