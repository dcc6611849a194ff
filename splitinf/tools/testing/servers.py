"""A tail server in a process of its own, for tests and benchmarks that measure the process (its RSS).

``ServerProcess(repo, **config)`` starts ``create_server(ServerConfig(repo, port=0, metrics_port=0,
**config))`` in a fresh interpreter; ``port``, ``metrics_port``, ``rss_mib()``; ``stop()`` or a
``with`` block ends it. Config values travel as JSON (numbers, strings, booleans).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["ServerProcess", "rss_mib"]

_ROOT = Path(__file__).resolve().parents[3]

_SERVE = """
import json
import sys
from pathlib import Path
from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
server, port = create_server(ServerConfig(repo=Path(sys.argv[1]), port=0, metrics_port=0, **json.loads(sys.argv[2])))
print(port, server.metrics_port, flush=True)
sys.stdin.read()
server.stop()
"""


def rss_mib(pid: int) -> float:
    """A process's resident memory in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


class ServerProcess:
    """A tail server in a child process; it serves until ``stop()`` closes its stdin."""

    def __init__(self, repo: Path | str, **config: Any):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(repo), json.dumps(config)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=60)
            raise RuntimeError(f"the server process exited with {self.process.returncode} before serving")
        self.port, self.metrics_port = (int(word) for word in line.split())

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        return rss_mib(self.process.pid)

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        self.process.wait(timeout=60)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
