"""The device's configuration as data: defaults, a TOML file, command-line overrides.

Example ``device.toml`` (every key optional; ``edge/device.toml`` has them all)::

    server = "192.168.1.10:8001"
    budget_ms = 250              # per-request latency budget (split mode)
    metrics_port = 9101          # -1: no metrics endpoint
    metrics_host = "127.0.0.1"
    intra_op_threads = 1         # onnxruntime threads per session (0: its default)
    stream_workers = 2           # requests in flight in infer_stream
    tail_identity = "metadata"   # how the device knows the server runs the plan's tails (splitinf.edge.identity):
                                 # "metadata": content-addressed names + ModelMetadata (any V2 server);
                                 # "sha256": every answer must carry splitinf_model_sha256 (splitinf serve only)
    spread_seed = 7              # seeds this device's draws for shedding a shared server (policy.Spread);
                                 # absent: the OS's entropy, each device its own

    [tls]                        # present: TLS to the server
    ca = "ca.pem"                # absent: system roots
    cert = "device.pem"          # with key: mutual TLS
    key = "device.key"
    server_name = "tail.example" # when the certificate's name differs from the address

    [auth]
    token_file = "token.txt"     # bearer token sent with every call

    [network]
    prior_rtt_ms = 50            # used until the first measurement
    prior_bandwidth_mbps = 10
    probe_timeout_ms = 500
    light_probe_interval_s = 5   # ServerReady probes while not splitting
    retry_attempts = 3           # UNAVAILABLE before any response only; within the budget
    retry_backoff_ms = 10
    retry_backoff_max_ms = 100

    [policy]                     # splitinf.edge.policy.PolicyConfig; budget_s comes from budget_ms
    window_s = 30
    min_calls = 3
    failure_rate = 0.5
    slow_call_rate = 0.5
    trip_after_failures = 1
    open_s = 5
    open_multiplier = 2
    open_max_s = 120
    half_open_probes = 3
    probe_interval_s = 1
    stabilisation_s = 10
    min_dwell_s = 5
    flap_window_s = 300
    flap_limit = 4
    quarantine_s = 60
    spread_margin = 0.2          # a device leaves an option the server's queue slows only for one faster
    spread_patience_s = 5        # by more than its margin, for its patience (each drawn up to these)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from splitinf.contract.config_schema import given, load_toml
from splitinf.contract.secrets import read_token
from splitinf.edge.identity import TAIL_IDENTITY_MODES, TailIdentityMode
from splitinf.edge.policy import PolicyConfig
from splitinf.edge.tls import ClientTLS
from splitinf.errors import ConfigError

__all__ = ["DeviceConfig", "load_device_config"]


@dataclass(frozen=True)
class DeviceConfig:
    server: str | None = None
    budget_s: float = 0.25
    metrics_port: int | None = None  # None: no endpoint; 0: any free port
    metrics_host: str = "127.0.0.1"
    intra_op_threads: int = 1
    stream_workers: int = 2
    tls: ClientTLS | None = None
    token: str | None = field(default=None, repr=False)
    prior_rtt_s: float = 0.05
    prior_bandwidth_bps: float = 10e6
    probe_timeout_s: float = 0.5
    light_probe_interval_s: float = 5.0
    retry_attempts: int = 3
    retry_backoff_s: float = 0.01
    retry_backoff_max_s: float = 0.1
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    tail_identity: TailIdentityMode = "metadata"
    spread_seed: int | None = None  # the policy's Spread draws; None: the OS's entropy

    def __post_init__(self) -> None:
        if self.budget_s <= 0:
            raise ConfigError(f"budget_ms must be > 0, got {self.budget_s * 1000:g}")
        if self.retry_attempts < 1:
            raise ConfigError(f"network.retry_attempts must be >= 1, got {self.retry_attempts}")
        if self.stream_workers < 1:
            raise ConfigError(f"stream_workers must be >= 1, got {self.stream_workers}")
        if self.tail_identity not in TAIL_IDENTITY_MODES:
            raise ConfigError(f"tail_identity must be one of {list(TAIL_IDENTITY_MODES)}, got {self.tail_identity!r}")
        if self.intra_op_threads < 0:
            raise ConfigError(f"intra_op_threads must be >= 0, got {self.intra_op_threads}")
        for name in ("probe_timeout_s", "light_probe_interval_s", "prior_rtt_s", "prior_bandwidth_bps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.server is not None and (":" not in self.server or not self.server.rsplit(":", 1)[1].isdigit()):
            raise ConfigError(f"server {self.server!r} is not HOST:PORT, e.g. 192.168.1.10:8001")
        if self.policy.budget_s != self.budget_s:
            object.__setattr__(self, "policy", dataclasses.replace(self.policy, budget_s=self.budget_s))

    def with_overrides(self, **overrides: Any) -> DeviceConfig:
        """A copy with the given fields replaced (None values are ignored: the flag was not given)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self


class _TLSTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None


class _AuthTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    token_file: str | None = None


class _NetworkTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    prior_rtt_ms: float | None = None
    prior_bandwidth_mbps: float | None = None
    probe_timeout_ms: float | None = None
    light_probe_interval_s: float | None = None
    retry_attempts: int | None = None
    retry_backoff_ms: float | None = None
    retry_backoff_max_ms: float | None = None


class _PolicyTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """PolicyConfig's fields but budget_s (it comes from budget_ms); a test keeps the two in step."""

    window_s: float | None = None
    min_calls: int | None = None
    failure_rate: float | None = None
    slow_call_rate: float | None = None
    trip_after_failures: int | None = None
    open_s: float | None = None
    open_multiplier: float | None = None
    open_max_s: float | None = None
    half_open_probes: int | None = None
    probe_interval_s: float | None = None
    stabilisation_s: float | None = None
    min_dwell_s: float | None = None
    flap_window_s: float | None = None
    flap_limit: int | None = None
    quarantine_s: float | None = None
    spread_margin: float | None = None
    spread_patience_s: float | None = None


class _DeviceFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """device.toml's keys and the type each must have (``splitinf.contract.config_schema``)."""

    server: str | None = None
    budget_ms: float | None = None
    metrics_port: int | None = None
    metrics_host: str | None = None
    intra_op_threads: int | None = None
    stream_workers: int | None = None
    tail_identity: str | None = None
    spread_seed: int | None = None
    tls: _TLSTable | None = None
    auth: _AuthTable | None = None
    network: _NetworkTable | None = None
    policy: _PolicyTable | None = None


# File key -> (DeviceConfig field, factor from the file's unit to the field's)
_SCALED = {
    "budget_ms": ("budget_s", 1e-3),
    "prior_rtt_ms": ("prior_rtt_s", 1e-3),
    "prior_bandwidth_mbps": ("prior_bandwidth_bps", 1e6),
    "probe_timeout_ms": ("probe_timeout_s", 1e-3),
    "retry_backoff_ms": ("retry_backoff_s", 1e-3),
    "retry_backoff_max_ms": ("retry_backoff_max_s", 1e-3),
}


def _security(file: _DeviceFile, base: Path) -> dict[str, Any]:
    """``tls`` (an empty [tls] too: system roots) and ``token``; their files are relative to the config file."""
    kwargs: dict[str, Any] = {}
    if file.tls is not None:
        tls = file.tls
        kwargs["tls"] = ClientTLS(
            ca_file=base / tls.ca if tls.ca is not None else None,
            cert_file=base / tls.cert if tls.cert is not None else None,
            key_file=base / tls.key if tls.key is not None else None,
            server_name=tls.server_name,
        )
    if file.auth is not None and file.auth.token_file is not None:
        kwargs["token"] = read_token(base / file.auth.token_file)
    return kwargs


def load_device_config(path: str | Path) -> DeviceConfig:
    """Read a device TOML file; relative paths in it are relative to the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist; see edge/device.toml for an example")
    file = load_toml(path, _DeviceFile)
    kwargs = _security(file, path.parent)
    values = given(msgspec.structs.replace(file, tls=None, auth=None, policy=None))
    for key, (name, factor) in _SCALED.items():
        if key in values:
            kwargs[name] = values.pop(key) * factor
    if values.get("metrics_port", 0) < 0:
        values["metrics_port"] = None
    kwargs.update(values)
    policy = given(file.policy) if file.policy is not None else {}
    kwargs["policy"] = PolicyConfig(budget_s=kwargs.get("budget_s", DeviceConfig.budget_s), **policy)
    return DeviceConfig(**kwargs)
