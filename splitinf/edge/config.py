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
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitinf.contract.secrets import read_token
from splitinf.edge.identity import TAIL_IDENTITY_MODES, TailIdentityMode
from splitinf.edge.policy import PolicyConfig
from splitinf.edge.tls import ClientTLS
from splitinf.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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


_TOP = {"server", "budget_ms", "metrics_port", "metrics_host", "intra_op_threads", "stream_workers", "tail_identity"}
_SECTIONS = {"tls", "auth", "network", "policy"}
_NETWORK = {
    "prior_rtt_ms",
    "prior_bandwidth_mbps",
    "probe_timeout_ms",
    "light_probe_interval_s",
    "retry_attempts",
    "retry_backoff_ms",
    "retry_backoff_max_ms",
}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str, path: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def _number(table: Mapping[str, Any], key: str, where: str, path: Path) -> float:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: {where}{key} must be a number, got {value!r}")
    return float(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} does not exist; see edge/device.toml for an example") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _top_level(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if "server" in data:
        kwargs["server"] = str(data["server"])
    if "budget_ms" in data:
        kwargs["budget_s"] = _number(data, "budget_ms", "", path) / 1000
    if "metrics_port" in data:
        port = int(_number(data, "metrics_port", "", path))
        kwargs["metrics_port"] = None if port < 0 else port
    for key in ("metrics_host", "tail_identity"):
        if key in data:
            kwargs[key] = str(data[key])
    for key in ("intra_op_threads", "stream_workers"):
        if key in data:
            kwargs[key] = int(_number(data, key, "", path))
    return kwargs


def _security(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``tls`` and ``token`` from the [tls] and [auth] tables; their files are relative to the config file."""
    base = path.parent
    kwargs: dict[str, Any] = {}
    tls = data.get("tls")
    if tls is not None:
        _check_keys(tls, {"ca", "cert", "key", "server_name"}, "[tls]", path)
        kwargs["tls"] = ClientTLS(
            ca_file=base / tls["ca"] if "ca" in tls else None,
            cert_file=base / tls["cert"] if "cert" in tls else None,
            key_file=base / tls["key"] if "key" in tls else None,
            server_name=tls.get("server_name"),
        )
    auth = data.get("auth")
    if auth is not None:
        _check_keys(auth, {"token_file"}, "[auth]", path)
        if "token_file" in auth:
            kwargs["token"] = read_token(base / auth["token_file"])
    return kwargs


# [network] key -> (DeviceConfig field, factor to its unit)
_NETWORK_SCALE = {
    "prior_rtt_ms": ("prior_rtt_s", 1e-3),
    "prior_bandwidth_mbps": ("prior_bandwidth_bps", 1e6),
    "probe_timeout_ms": ("probe_timeout_s", 1e-3),
    "light_probe_interval_s": ("light_probe_interval_s", 1.0),
    "retry_backoff_ms": ("retry_backoff_s", 1e-3),
    "retry_backoff_max_ms": ("retry_backoff_max_s", 1e-3),
}


def _network(network: Mapping[str, Any], path: Path) -> dict[str, Any]:
    _check_keys(network, _NETWORK, "[network]", path)
    kwargs: dict[str, Any] = {
        name: _number(network, key, "network.", path) * factor
        for key, (name, factor) in _NETWORK_SCALE.items()
        if key in network
    }
    if "retry_attempts" in network:
        kwargs["retry_attempts"] = int(_number(network, "retry_attempts", "network.", path))
    return kwargs


def _policy(policy: Mapping[str, Any], budget_s: float, path: Path) -> PolicyConfig:
    fields = {f.name: f for f in dataclasses.fields(PolicyConfig)}
    _check_keys(policy, set(fields) - {"budget_s"}, "[policy]", path)
    policy_kwargs: dict[str, Any] = {}
    for key in policy:
        value = _number(policy, key, "policy.", path)
        policy_kwargs[key] = int(value) if fields[key].type in ("int", int) else value
    return PolicyConfig(budget_s=budget_s, **policy_kwargs)


def load_device_config(path: str | Path) -> DeviceConfig:
    """Read a device TOML file; relative paths in it are relative to the file."""
    path = Path(path)
    data = _read_toml(path)
    _check_keys(data, _TOP | _SECTIONS, "the top level", path)
    kwargs = _top_level(data, path) | _security(data, path) | _network(data.get("network", {}), path)
    kwargs["policy"] = _policy(data.get("policy", {}), kwargs.get("budget_s", DeviceConfig.budget_s), path)
    return DeviceConfig(**kwargs)
