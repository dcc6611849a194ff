"""``create_server``'s process-wide side effect: the glibc allocator tuning, and its switch."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from splitinf.cloud.app import tune_allocator
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
