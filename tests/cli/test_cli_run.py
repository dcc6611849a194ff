"""``splitinf run`` and the device TOML config, against a real tail server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitinf.cli import main
from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.edge.config import DeviceConfig, load_device_config
from splitinf.errors import ConfigError
from splitinf.tools.testing.plans import MLP_FALLBACK as FALLBACK
from splitinf.tools.testing.plans import MLP_FULL as FULL
from splitinf.tools.testing.plans import run_mlp as run_model
from splitinf.tools.testing.plans import write_mlp_plan_dir as build_plan_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plan_and_server(tmp_path: Path) -> Iterator[tuple[Path, Any, str]]:
    plan = build_plan_dir(tmp_path / "plan", cuts=("x", "relu_1"))
    srv, port = create_server(ServerConfig(repo=plan / "server", port=0, metrics_port=None))
    yield plan, srv, f"127.0.0.1:{port}"
    srv.stop(grace=0)


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def test_run_prints_path_and_latency_per_input_and_a_summary(
    plan_and_server: tuple[Path, Any, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, _, target = plan_and_server
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        np.save(inputs / f"{i}.npy", rows(1, i))
    np.savez(tmp_path / "batch.npz", x=rows(4, 9))  # keys are the input names, but 4 rows: 4 requests
    status = main(["run", "--plan", str(plan), "--server", target, "--budget-ms", "2000", str(inputs)])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert len(out) == 4 and all("split:x:fp32" in line and " ms" in line for line in out[:3])
    assert out[0].startswith(str(inputs / "0.npy"))
    assert out[-1].startswith("summary: 3 requests") and "fallbacks none" in out[-1]

    status = main(["run", "--plan", str(plan), "--server", target, "--json", "--stream", str(tmp_path / "batch.npz")])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0 and len(records) == 5
    for i, record in enumerate(records[:4]):
        assert record["kind"] == "split" and record["input"].endswith(f"batch.npz:x[{i}]")
        assert record["top"] == int(run_model(FULL, rows(4, 9)[i : i + 1]).argmax())
    assert records[-1]["summary"]["requests"] == 4


def test_run_falls_back_when_the_server_is_gone(
    plan_and_server: tuple[Path, Any, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, srv, target = plan_and_server
    srv.stop(grace=0)
    np.save(tmp_path / "a.npy", rows(2))
    status = main(["run", "--plan", str(plan), "--server", target, "--json", str(tmp_path / "a.npy")])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    assert records[0]["kind"] == "fallback" and records[0]["fallback_reason"] == "unavailable"
    assert records[0]["top"] == int(run_model(FALLBACK, rows(2)[:1]).argmax())
    assert records[-1]["summary"]["fallbacks"] == {"unavailable": 1}
    assert records[-1]["summary"]["mode"] == "fallback"


def test_bad_inputs_and_flags_are_usage_errors(
    plan_and_server: tuple[Path, Any, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, _, target = plan_and_server
    np.save(tmp_path / "wrong.npy", np.zeros((1, 5), dtype=np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    np.save(tmp_path / "f64.npy", np.zeros((1, 16)))
    cases = [
        ([str(tmp_path / "wrong.npy")], r"shape \[1, 5\]"),
        ([str(tmp_path / "junk.npy")], "not a readable numpy file"),
        ([str(tmp_path / "f64.npy")], "astype"),
        ([str(tmp_path / "missing.npy")], "does not exist"),
        ([], "give INPUT"),
    ]
    for extra, message in cases:
        assert main(["run", "--plan", str(plan), "--server", target, *extra]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and message.split("\\")[0].split("[")[0] in err, err
    assert main(["run", "--plan", str(plan), str(tmp_path / "wrong.npy")]) == 2
    assert "--server" in capsys.readouterr().err
    assert main(["run", "--plan", str(tmp_path / "nope"), "--server", target, str(tmp_path / "f64.npy")]) == 2
    assert "plan.json" in capsys.readouterr().err


def test_run_without_traceback_from_a_subprocess(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "splitinf", "run", "--plan", str(tmp_path), "--server", "127.0.0.1:1", "x.npy"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr and "plan.json" in result.stderr


def test_watch_answers_files_as_they_appear(
    plan_and_server: tuple[Path, Any, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, _, target = plan_and_server
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    np.save(inbox / "first.npy", rows(1, 1))
    args = ["run", "--plan", str(plan), "--server", target, "--watch", str(inbox), "--max-files", "2", "--json"]
    status: list[int] = []
    worker = threading.Thread(target=lambda: status.append(main(args)))
    worker.start()
    np.save(inbox / "second.npy", rows(1, 2))
    worker.join(timeout=60)
    assert status == [0]
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["input"]).name for r in records[:2]] == ["first.npy", "second.npy"]


def test_example_device_config_loads_and_overrides() -> None:
    config = load_device_config(ROOT / "edge" / "device.toml")
    assert config.server == "192.168.1.10:8001"
    assert config.budget_s == pytest.approx(0.25) and config.policy.budget_s == pytest.approx(0.25)
    assert config.policy.open_max_s == 120 and config.policy.half_open_probes == 3
    assert config.prior_bandwidth_bps == pytest.approx(10e6) and config.metrics_port == 9101
    changed = config.with_overrides(server="10.0.0.1:9000", budget_s=0.5, metrics_port=None)
    assert changed.server == "10.0.0.1:9000" and changed.policy.budget_s == 0.5 and changed.metrics_port == 9101


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("budget_ms = 'fast'", "must be a number"),
        ("sever = 'a:1'", r"unknown key\(s\) \['sever'\]"),
        ("[policy]\nfailure_rate = 2", "failure_rate"),
        ("[policy]\nbudget_s = 2", "unknown key"),
        ("server = 'nohostport'", "HOST:PORT"),
        ("[network]\nretry_attempts = 0", "retry_attempts"),
        ("this is = not toml =", "not valid TOML"),
        ("[auth]\ntoken_file = 'missing.txt'", "missing.txt"),
    ],
)
def test_bad_device_config_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "device.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_device_config(path)


def test_config_tls_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "token.txt").write_text("secret\n")
    path = tmp_path / "device.toml"
    path.write_text('[tls]\nca = "ca.pem"\nserver_name = "tail"\n[auth]\ntoken_file = "token.txt"\n')
    config = load_device_config(path)
    assert config.tls is not None and config.tls.ca_file == tmp_path / "ca.pem"
    assert config.token == "secret" and "secret" not in repr(config)
    assert DeviceConfig().policy.budget_s == DeviceConfig().budget_s
