"""The server times its tails itself: at load (with the serving session) and from every request after."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from splitinf.cloud.repository import WARM_UP_TIMED_RUNS
from splitinf.edge.client import InferenceClient

StartV2Server = Callable[..., Any]
TIMEOUT = 10.0


def typical_compute_s(running: Any) -> float | None:
    value = running.server.metrics.registry.get_sample_value(
        "splitinf_typical_compute_seconds", {"model": "mlp", "version": "1"}
    )
    return None if value is None else float(value)


def test_a_tails_run_time_is_known_at_load_and_follows_real_requests(start_v2_server: StartV2Server) -> None:
    running = start_v2_server(metrics_port=0)
    model = running.server.dataplane.model("mlp")
    assert len(model.warm_up_seconds) == WARM_UP_TIMED_RUNS
    assert all(s > 0 for s in model.warm_up_seconds)
    at_load = typical_compute_s(running)
    assert at_load is not None and at_load == float(np.median(model.warm_up_seconds))  # before any request

    with InferenceClient(f"127.0.0.1:{running.port}") as client:
        before = client.model_statistics("mlp", TIMEOUT).model_stats[0].inference_stats.compute_infer
        assert before.count == 0  # the standard statistics count real requests only, as Triton's do
        for _ in range(2 * 31):  # more than RunTimes keeps: the load timings are gone from its window
            client.infer("mlp", {"x": np.ones((1, 16), np.float32)}, timeout_s=TIMEOUT)
        after = client.model_statistics("mlp", TIMEOUT).model_stats[0].inference_stats.compute_infer
    assert after.count == 62 and after.ns > 0
    live = typical_compute_s(running)
    assert live is not None and live > 0 and live not in model.warm_up_seconds
