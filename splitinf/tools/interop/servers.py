"""Start Seldon MLServer, KServe's ModelServer or Triton (PyTriton's) on loopback ports, serving a plan's tails.

``start_server("mlserver", plan_dir, workdir)`` runs the server from its cached environment
(``setup_envs``) as a child process in a session of its own, waits with a deadline until it and every
tail of the plan are ready, and returns a ``ServerProcess``; ``kill()`` ends it at once (SIGKILL to its
process group, the way a crash would), ``start()`` brings it back on the same ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from splitinf.contract.plan import load_plan
from splitinf.edge.client import InferenceClient
from splitinf.errors import ConfigError, TransportError
from splitinf.tools.interop.setup_envs import SERVERS

__all__ = ["KINDS", "ServerProcess", "free_port", "running_server", "start_server"]

HERE = Path(__file__).resolve().parent
KINDS = tuple(SERVERS)


def free_port() -> int:
    """A loopback port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    kind: str
    command: list[str]
    workdir: Path
    grpc_port: int
    models: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    scratch: Path | None = None  # the server's working files, removed when it is killed
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    def start(self, ready_within_s: float = 60.0) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.kind} is already running (pid {self.process.pid})")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.workdir,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(ready_within_s)

    def wait_ready(self, within_s: float) -> None:
        """Poll ServerReady and ModelReady of every tail until all answer true, or raise with the log's tail."""
        deadline = time.monotonic() + within_s
        with InferenceClient(self.target) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    break
                with contextlib.suppress(TransportError):
                    if client.server_ready(timeout_s=1.0) and all(
                        client.model_ready(name, timeout_s=1.0) for name in self.models
                    ):
                        return
                time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
        self.kill()
        raise RuntimeError(f"{self.kind} did not become ready within {within_s:g} s; its log ends:\n{tail}")

    def kill(self) -> None:
        """Crash the server: SIGKILL, no shutdown, and reap it.

        PyTriton's server is the ``tritonserver`` process under the Python program that bound the models;
        that one is killed, and the program, seeing its server gone, removes its shared memory and exits.
        The others are killed whole (their process group). Whatever is left after 20 s is killed too.
        """
        process = self.process
        if process is None or process.poll() is not None:
            return
        servers = _children(process.pid, "tritonserver") if self.kind == "pytriton" else []
        for pid in servers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            process.wait(timeout=20 if servers else 0.001)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        for path in Path("/dev/shm").glob(f"pytrtion{process.pid}-*"):  # PyTriton's, named after our process
            path.unlink(missing_ok=True)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _children(pid: int, name: str) -> list[int]:
    """The ids of ``pid``'s child processes called ``name`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            command, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
            if command == name and int(rest[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _write_mlserver_repository(workdir: Path, repository: Path, names: Sequence[str], ports: dict[str, int]) -> None:
    settings = {
        "host": "127.0.0.1",
        "http_port": ports["http"],
        "grpc_port": ports["grpc"],
        "metrics_port": ports["metrics"],
        "parallel_workers": 0,
        "debug": False,
        "load_models_at_startup": True,
        "model_repository_root": str(workdir / "models"),
    }
    (workdir / "settings.json").write_text(json.dumps(settings, indent=2))
    for name in names:
        folder = workdir / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        model = {
            "name": name,
            "implementation": "mlserver_runtime.OnnxRuntime",
            "parameters": {"uri": str(repository / name / "1" / "model.onnx"), "version": "1"},
        }
        (folder / "model-settings.json").write_text(json.dumps(model, indent=2))


def start_server(kind: str, plan_dir: str | os.PathLike[str], workdir: str | os.PathLike[str]) -> ServerProcess:
    """Start ``kind`` ("mlserver", "kserve" or "pytriton") serving the tails in ``plan_dir/server``;
    ready when it returns."""
    if kind not in SERVERS:
        raise ConfigError(f"unknown server {kind!r}; choose one of {list(SERVERS)}")
    env = SERVERS[kind]
    if not env.ready:
        raise ConfigError(
            f"the {kind} environment is not installed at {env.path}; "
            f"run `python -m splitinf.tools.interop.setup_envs {kind}`"
        )
    plan = load_plan(plan_dir)
    repository = Path(plan_dir).resolve() / "server"
    names = tuple(o.tail_model for o in plan.split_options if o.tail_model is not None)
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    # PyTriton's workspace holds Unix sockets, whose paths must stay under 108 bytes: not below a test's tmp_path
    scratch = (
        Path(tempfile.gettempdir()) / f"splitinf-pytriton-{os.getpid()}-{ports['grpc']}" if kind == "pytriton" else None
    )
    if kind == "mlserver":
        _write_mlserver_repository(work, repository, names, ports)
        command = [str(env.path / "bin" / "mlserver"), "start", str(work)]
        extra = {"PYTHONPATH": str(HERE)}
    elif kind == "kserve":
        command = [
            str(env.python),
            str(HERE / "kserve_server.py"),
            str(repository),
            f"--grpc-port={ports['grpc']}",
            f"--http-port={ports['http']}",
        ]
        extra = {}
    else:
        command = [
            str(env.python),
            str(HERE / "pytriton_server.py"),
            str(repository),
            f"--grpc-port={ports['grpc']}",
            f"--http-port={ports['http']}",
            f"--metrics-port={ports['metrics']}",
            f"--workspace={scratch}",
        ]
        extra = {}
    server = ServerProcess(kind, command, work, ports["grpc"], names, env=extra, scratch=scratch)
    server.start()
    return server


@contextlib.contextmanager
def running_server(
    kind: str, plan_dir: str | os.PathLike[str], workdir: str | os.PathLike[str]
) -> Iterator[ServerProcess]:
    server = start_server(kind, plan_dir, workdir)
    try:
        yield server
    finally:
        server.kill()
