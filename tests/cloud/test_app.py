"""``create_server``'s settings: its gRPC options, and its process-wide side effect (the glibc allocator tuning)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from splitinf.cloud.app import server_options, tune_allocator
from splitinf.cloud.config import ServerConfig
from splitinf.edge.client import ChannelOptions
from splitinf.tools.testing.graphs import mlp

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter per case: the tuning is process-wide and cannot be undone in this one.
SERVE_ONCE = """
import sys
from pathlib import Path
from splitinf.cloud.app import allocator_tuned, create_server
from splitinf.cloud.config import ServerConfig
server, _ = create_server(
    ServerConfig(repo=Path(sys.argv[1]), port=0, metrics_port=None, tune_allocator=sys.argv[2] == "on")
)
server.stop()
print(allocator_tuned())
"""


def test_allocator_tuning_is_idempotent() -> None:
    first = tune_allocator()
    assert tune_allocator() is first


@pytest.mark.parametrize("switch", ["on", "off"])
def test_create_server_tunes_the_allocator_only_when_configured(
    write_v2_repository: Callable[..., Path], tmp_path: Path, switch: str
) -> None:
    repo = write_v2_repository(tmp_path, {"mlp": mlp()})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", SERVE_ONCE, str(repo), switch], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    glibc = platform.libc_ver()[0] == "glibc"
    assert done.stdout.strip() == str(switch == "on" and glibc)


def test_server_permits_the_device_keepalive_pings() -> None:
    """The device pings every ~2 s, with or without calls; the server's ping policy must allow that rate,
    or it answers GOAWAY too_many_pings and the device loses its connection exactly when idle."""
    device = dict(ChannelOptions().grpc_options())
    server = dict(server_options(ServerConfig(repo=Path("."))))
    assert device["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.http2.min_ping_interval_without_data_ms"] < device["grpc.keepalive_time_ms"]
    assert server["grpc.http2.max_ping_strikes"] == 0  # never GOAWAY a device for pinging
