"""The device's TOML file: every wrong type or unknown key is one line naming the key (issue 14, finding 7).

The shipped example and the range checks are tests/cli/test_cli_run.py's; tail_identity is test_identity.py's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import pytest

from splitinf.edge.config import _PolicyTable, load_device_config
from splitinf.edge.policy import PolicyConfig
from splitinf.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('budget_ms = "100"', "d.toml: budget_ms: expected float, got str"),
        ("server = 5", "d.toml: server: expected str, got int"),
        ("metrics_port = 9101.5", "d.toml: metrics_port: expected int, got float"),
        ("stream_workers = true", "d.toml: stream_workers: expected int, got bool"),
        ('[network]\nretry_attempts = "3"', r"d.toml: \[network\] retry_attempts: expected int, got str"),
        ("[network]\nprior_rtt_ms = [50]", r"d.toml: \[network\] prior_rtt_ms: expected float, got array"),
        ("[policy]\nmin_calls = 2.5", r"d.toml: \[policy\] min_calls: expected int, got float"),
        ("[policy]\nwindow_s = false", r"d.toml: \[policy\] window_s: expected float, got bool"),
        ("[tls]\nca = 1", r"d.toml: \[tls\] ca: expected str, got int"),
        ("network = 5", "d.toml: network: expected object, got int"),
        ("budget = 100", "d.toml: unknown key 'budget'; known: server, budget_ms, "),
        ("[network]\nrtt_ms = 50", r"d.toml: unknown key 'rtt_ms' in \[network\]; known: prior_rtt_ms, "),
        ("[auth]\ntoken = 'x'", r"d.toml: unknown key 'token' in \[auth\]; known: token_file$"),
    ],
)
def test_a_wrong_type_or_unknown_key_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "d.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message) as caught:
        load_device_config(path)
    assert "\n" not in str(caught.value)


def test_units_are_converted_and_ints_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        "budget_ms = 100\nmetrics_port = -1\n"
        "[network]\nprior_rtt_ms = 20\nprior_bandwidth_mbps = 2.5\nprobe_timeout_ms = 300\n"
        "retry_backoff_ms = 5\nretry_backoff_max_ms = 50\nlight_probe_interval_s = 2\n"
        "[policy]\nwindow_s = 10\nmin_calls = 4\n"
    )
    config = load_device_config(path)
    assert config.budget_s == pytest.approx(0.1) and config.policy.budget_s == pytest.approx(0.1)
    assert config.metrics_port is None
    assert (config.prior_rtt_s, config.probe_timeout_s) == pytest.approx((0.02, 0.3))
    assert config.prior_bandwidth_bps == pytest.approx(2.5e6)
    assert (config.retry_backoff_s, config.retry_backoff_max_s) == pytest.approx((0.005, 0.05))
    assert config.light_probe_interval_s == 2.0
    assert (config.policy.window_s, config.policy.min_calls) == (10.0, 4)


def test_an_empty_tls_table_means_tls_with_the_system_roots(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text("[tls]\n")
    config = load_device_config(path)
    assert config.tls is not None and (config.tls.ca_file, config.tls.cert_file) == (None, None)
    path.write_text("[auth]\n")
    assert load_device_config(path).tls is None and load_device_config(path).token is None


def test_a_missing_file_points_at_the_example(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; see edge/device.toml"):
        load_device_config(tmp_path / "none.toml")


def test_the_policy_table_has_every_policy_setting_but_the_budget() -> None:
    table = {f.name: f.type for f in msgspec.structs.fields(_PolicyTable)}
    policy = {f.name: f.type for f in dataclasses.fields(PolicyConfig) if f.name != "budget_s"}
    assert list(table) == list(policy)
    assert {name: str(kind).replace(" | None", "") for name, kind in table.items()} == policy
