"""The tail server's configuration as data: defaults, TOML file, command-line overrides.

Example ``server.toml`` (every key optional; ``cloud/server.toml`` has them all)::

    repo = "/models"
    host = "0.0.0.0"          # loopback (127.0.0.1) unless an address is given
    port = 8001
    metrics_port = 8002       # -1 turns the metrics endpoint off
    max_message_bytes = 67108864
    max_request_bytes = 67108864  # tensor bytes per inference request (default: max_message_bytes)
    max_inflight = 64         # admitted requests (running + queued); more get RESOURCE_EXHAUSTED
    max_streams = 32          # open ModelStreamInfer streams, all clients together
    max_streams_per_client = 8  # per client address; more get RESOURCE_EXHAUSTED
    stream_idle_timeout_s = 60.0  # a stream with no request in progress this long is cancelled
    drain_grace_s = 10.0
    max_connection_age_s = 300.0  # clients re-resolve DNS (new replicas) at least this often
    tune_allocator = true     # glibc keeps tensor-sized buffers in its heap; process-wide (see below)
    allow_unsigned = false    # true: serve versions without manifest.json (sha256 unchecked; a warning at start)

    [onnxruntime]
    providers = ["CPUExecutionProvider"]
    intra_op_threads = 0      # 0: onnxruntime's default
    inter_op_threads = 0
    graph_optimization = "all"  # disable | basic | extended | all
    memory_arena = false      # true: onnxruntime's CPU arena (keeps the largest request's memory for good)
    instances = 1             # concurrent executions per model

    [batching]                # overrides config.pbtxt for every model with a batch dimension
    max_batch_size = 8        # 0: off
    max_queue_delay_ms = 2.0
    wait_when_idle = false    # true: always wait the delay for more requests, as Triton does

    [tls]
    cert = "server.pem"
    key = "server.key"
    client_ca = "ca.pem"      # present: mutual TLS

    [auth]
    token_file = "token.txt"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from splitinf.cloud.auth import ServerTLS
from splitinf.contract.config_schema import given, load_toml
from splitinf.contract.secrets import read_token
from splitinf.errors import ConfigError
from splitinf.ort import SERVING_SETTINGS

__all__ = ["GRAPH_OPTIMIZATION_LEVELS", "ServerConfig", "load_server_config"]

MIB = 1024 * 1024
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


# The ranges a type cannot say: field -> (lowest, highest or None). An unset (None) value passes.
_RANGES: dict[str, tuple[float, float | None]] = {
    "port": (0, 65535),
    "metrics_port": (0, 65535),
    "max_message_bytes": (1024, None),
    "max_request_bytes": (1, None),
    "max_inflight": (1, None),
    "max_streams": (1, None),
    "max_streams_per_client": (1, None),
    "stream_idle_timeout_s": (0.001, None),
    "instances": (1, None),
    "max_batch_size": (0, None),
    "batch_delay_ms": (0, None),
    "drain_grace_s": (0, None),
}


@dataclass(frozen=True)
class ServerConfig:
    repo: Path
    host: str = "127.0.0.1"
    port: int = 8001
    metrics_port: int | None = 8002  # None: no metrics endpoint; 0: any free port
    max_message_bytes: int = 64 * MIB
    max_request_bytes: int | None = None  # None: max_message_bytes
    max_inflight: int = 64
    # Each open stream holds a server thread: bounded in all and per client, idle ones cancelled.
    max_streams: int = 32
    max_streams_per_client: int = 8
    stream_idle_timeout_s: float = 60.0
    drain_grace_s: float = 10.0
    # Close each connection after this long (gracefully), so DNS round_robin clients re-resolve
    # and spread onto new replicas; None: connections live as long as the client wants.
    max_connection_age_s: float | None = None
    providers: tuple[str, ...] = SERVING_SETTINGS.providers
    intra_op_threads: int = SERVING_SETTINGS.intra_op_threads
    inter_op_threads: int = SERVING_SETTINGS.inter_op_threads
    graph_optimization: str = SERVING_SETTINGS.graph_optimization
    memory_arena: bool = SERVING_SETTINGS.memory_arena  # the server-role profile times tails the same way
    instances: int = 1
    # None: each model's config.pbtxt decides; 0: batching off for every model.
    max_batch_size: int | None = None
    batch_delay_ms: float | None = None
    # False: a batch runs at once when no other request for the model is in the server;
    # True: always wait up to the delay for more (Triton's behaviour).
    batch_wait_when_idle: bool = False
    tls: ServerTLS | None = None
    token: str | None = field(default=None, repr=False)
    warmup: bool = True
    # The device pings every ~2 s; anything slower than this from a client is allowed.
    min_client_ping_interval_ms: int = 1000
    server_name: str = "splitinf"
    # glibc's mallopt, so 0.8 MB tensors stop costing an mmap and ~200 page faults each
    # (splitinf.cloud.app.tune_allocator). It changes malloc for the whole process, for good:
    # turn it off when the server is embedded in a process that wants glibc's defaults.
    tune_allocator: bool = True
    # Serve model versions without a manifest.json (their sha256 unchecked); logged as a warning at start.
    allow_unsigned: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name, (lowest, highest) in _RANGES.items():
            value = getattr(self, name)
            if value is None or (value >= lowest and (highest is None or value <= highest)):
                continue
            within = f"in {lowest}..{highest}" if highest is not None else f"at least {lowest}"
            problems.append(f"{name} {value} must be {within}")
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            problems.append(
                f"graph_optimization {self.graph_optimization!r} is not one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )
        if not self.providers:
            problems.append("providers is empty; use e.g. ['CPUExecutionProvider']")
        for name in ("warmup", "batch_wait_when_idle", "tune_allocator", "allow_unsigned", "memory_arena"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, not {getattr(self, name)!r}")
        if problems:
            raise ConfigError("bad server configuration: " + "; ".join(problems))

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)


class _OnnxruntimeTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    providers: tuple[str, ...] | None = None
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    graph_optimization: str | None = None
    memory_arena: bool | None = None
    instances: int | None = None


class _BatchingTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    wait_when_idle: bool | None = None


class _TLSTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None


class _AuthTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    token_file: str | None = None


class _ServerFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """server.toml's keys and the type each must have (``splitinf.contract.config_schema``)."""

    repo: str | None = None
    host: str | None = None
    port: int | None = None
    metrics_port: int | None = None
    max_message_bytes: int | None = None
    max_request_bytes: int | None = None
    max_inflight: int | None = None
    max_streams: int | None = None
    max_streams_per_client: int | None = None
    stream_idle_timeout_s: float | None = None
    drain_grace_s: float | None = None
    max_connection_age_s: float | None = None
    warmup: bool | None = None
    tune_allocator: bool | None = None
    allow_unsigned: bool | None = None
    onnxruntime: _OnnxruntimeTable | None = None
    batching: _BatchingTable | None = None
    tls: _TLSTable | None = None
    auth: _AuthTable | None = None


# TOML keys whose ServerConfig field has another name.
_RENAMED = {"max_queue_delay_ms": "batch_delay_ms", "wait_when_idle": "batch_wait_when_idle"}


def load_server_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Defaults, then the TOML file (relative paths inside it resolve against its folder), then ``overrides``.

    ``overrides`` use ServerConfig field names plus ``cert``, ``key``, ``client_ca`` and
    ``token_file``; a None override means "not given" and is skipped.
    """
    values: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        values = given(load_toml(path, _ServerFile), _RENAMED)
        base = path.parent
        for key in ("repo", "cert", "key", "client_ca", "token_file"):
            if key in values:
                values[key] = base / str(values[key])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "repo" not in values:
        raise ConfigError("no model repository: pass --repo DIR or set repo in the config file")
    if values.get("metrics_port") == -1:
        values["metrics_port"] = None
    cert, key, client_ca = values.pop("cert", None), values.pop("key", None), values.pop("client_ca", None)
    if (cert is None) != (key is None):
        raise ConfigError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
    if client_ca is not None and cert is None:
        raise ConfigError("mutual TLS (client CA) needs a server certificate and key too")
    if cert is not None:
        values["tls"] = ServerTLS(Path(cert), Path(key), Path(client_ca) if client_ca else None)
    token_file = values.pop("token_file", None)
    if token_file is not None:
        values["token"] = read_token(token_file)
    if "providers" in values:
        values["providers"] = tuple(values["providers"])
    values["repo"] = Path(values["repo"])
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    unknown = set(values) - fields
    if unknown:
        raise ConfigError(f"unknown server settings: {', '.join(sorted(unknown))}")
    try:
        return ServerConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"bad server configuration: {exc}") from exc
