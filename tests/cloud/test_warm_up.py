"""A tail that refuses zeros (as silero-vad's tails refuse a zero sample rate) is still served."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.contract.manifest import MANIFEST_FORMAT
from splitinf.edge.client import InferenceClient
from splitinf.offline.partition import write_to_repository
from splitinf.tools.testing.graphs import refuses_zeros


def test_a_tail_that_refuses_zeros_loads_with_one_warning_and_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_to_repository(refuses_zeros(), tmp_path / "repo", "ranged", manifest={"format": MANIFEST_FORMAT})
    with caplog.at_level(logging.WARNING, "splitinf.cloud.repository"):
        server, port = create_server(ServerConfig(repo=tmp_path / "repo", port=0, metrics_port=None))
    try:
        warnings = [r.getMessage() for r in caplog.records if "does not run on zeros" in r.getMessage()]
        assert len(warnings) == 1 and "ranged" in warnings[0]
        with InferenceClient(f"127.0.0.1:{port}") as client:
            result = client.infer(
                "ranged", {"x": np.ones((2, 4), np.float32), "k": np.array(1, np.int64)}, timeout_s=10
            )
        np.testing.assert_allclose(result.outputs["y"], np.full((2, 4), 7.0, np.float32))
    finally:
        server.stop(grace=0)
