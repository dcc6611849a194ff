"""``splitinf run`` as a user runs it (mostly in a subprocess) and the device config, against a real tail server."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
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
from splitinf.tools.testing.graphs import mlp
from splitinf.tools.testing.plans import MLP_FALLBACK as FALLBACK
from splitinf.tools.testing.plans import MLP_FULL as FULL
from splitinf.tools.testing.plans import run_mlp as run_model
from splitinf.tools.testing.plans import write_mlp_plan_dir as build_plan_dir
from splitinf.tools.testing.plans import write_plan_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plan_and_server(tmp_path: Path) -> Iterator[tuple[Path, Any, str]]:
    plan = build_plan_dir(tmp_path / "plan", cuts=("x", "relu_1"))
    srv, port = create_server(ServerConfig(repo=plan / "server", port=0, metrics_port=None))
    yield plan, srv, f"127.0.0.1:{port}"
    srv.stop(grace=0)


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def splitinf_run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``splitinf run`` as a user runs it: a new process, its output as text."""
    command = [sys.executable, "-m", "splitinf", "run", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


STAGES = ("head", "network", "server", "on_device", "wait")


def test_run_prints_path_and_latency_per_input_and_a_summary(
    plan_and_server: tuple[Path, Any, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, _, target = plan_and_server
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(3):
        np.save(inputs / f"{i}.npy", rows(1, i))
    np.savez(tmp_path / "batch.npz", x=rows(4, 9))  # named by input; 4 rows of a batch-1 model: 4 requests
    status = main(["run", "--plan", str(plan), "--server", target, "--budget-ms", "2000", str(inputs)])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert len(out) == 4 and all("split:x:fp32" in line and " ms" in line for line in out[:3])
    assert out[0].startswith(str(inputs / "0.npy"))
    assert out[-1].startswith("summary: 3 requests") and "fallbacks none" in out[-1]

    status = main(["run", "--plan", str(plan), "--server", target, "--json", "--stream", str(tmp_path / "batch.npz")])
    records = json_lines(capsys.readouterr().out)
    assert status == 0 and len(records) == 5
    for i, record in enumerate(records[:4]):
        assert record["kind"] == "split" and record["input"].endswith(f"batch.npz[{i}]")
        y = record["outputs"]["y"]
        assert y["shape"] == [1, 4] and y["dtype"] == "float32"
        np.testing.assert_allclose(y["values"], run_model(FULL, rows(4, 9)[i : i + 1]), rtol=1e-5, atol=1e-6)
        latency = record["latency_ms"]
        assert sum(latency[s] for s in STAGES) == pytest.approx(latency["total"], abs=0.003)
    assert records[-1]["summary"]["requests"] == 4


def test_output_writes_one_npz_per_input_with_every_output(
    plan_and_server: tuple[Path, Any, str], tmp_path: Path
) -> None:
    plan, _, target = plan_and_server
    np.save(tmp_path / "one.npy", rows(1, 1))
    np.save(tmp_path / "stacked.npy", rows(3, 2)[:, None, :])  # [3, 1, 16]: three samples of [1, 16]
    np.savez(tmp_path / "rows.npz", x=rows(4, 3))  # [4, 16] for a batch-1 model: four samples
    files = [str(tmp_path / name) for name in ("one.npy", "stacked.npy", "rows.npz")]
    done = splitinf_run("--plan", str(plan), "--server", target, "--output", str(tmp_path / "out"), *files)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.npz", "rows.npz", "stacked.npz"]
    with np.load(tmp_path / "out" / "one.npz") as answer:
        assert answer.files == ["y"]
        np.testing.assert_allclose(answer["y"], run_model(FULL, rows(1, 1)), rtol=1e-5, atol=1e-6)
    with np.load(tmp_path / "out" / "stacked.npz") as answer:
        assert answer["y"].shape == (3, 1, 4)
        for i in range(3):
            np.testing.assert_allclose(answer["y"][i], run_model(FULL, rows(3, 2)[i : i + 1]), rtol=1e-5, atol=1e-6)
    with np.load(tmp_path / "out" / "rows.npz") as answer:
        assert answer["y"].shape == (4, 4)
        np.testing.assert_allclose(answer["y"][2:3], run_model(FULL, rows(4, 3)[2:3]), rtol=1e-5, atol=1e-6)


def test_npz_arrays_are_named_by_input_and_extra_ones_are_refused(
    plan_and_server: tuple[Path, Any, str], tmp_path: Path
) -> None:
    plan, _, target = plan_and_server
    np.savez(tmp_path / "samples.npz", x=rows(2), labels=np.array([1, 2]))
    np.savez(tmp_path / "renamed.npz", input=rows(2))
    done = splitinf_run("--plan", str(plan), "--server", target, str(tmp_path / "samples.npz"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "extra array(s) ['labels']" in done.stderr
    done = splitinf_run("--plan", str(plan), "--server", target, str(tmp_path / "renamed.npz"))
    assert done.returncode == 2 and "['input']" in done.stderr and "lacks ['x']" in done.stderr


def test_labels_give_the_top_classes(plan_and_server: tuple[Path, Any, str], tmp_path: Path) -> None:
    plan, _, target = plan_and_server
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
    np.save(tmp_path / "a.npy", rows(1, 4))
    argv = ["--plan", str(plan), "--server", target, "--labels", str(tmp_path / "labels.txt"), "--top-k", "2"]
    done = splitinf_run(*argv, "--json", str(tmp_path / "a.npy"))
    assert done.returncode == 0, done.stderr
    top = json_lines(done.stdout)[0]["outputs"]["y"]["top"]
    scores = run_model(FULL, rows(1, 4))[0]
    best = np.argsort(-scores)[:2]
    assert [t["label"] for t in top] == [["cat", "dog", "bird", "fish"][i] for i in best]
    assert top[0]["score"] == pytest.approx(float(scores[best[0]]), rel=1e-5)
    text = splitinf_run(*argv, str(tmp_path / "a.npy"))
    assert text.stdout.splitlines()[0].endswith(top[0]["label"])
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    wrong = splitinf_run("--plan", str(plan), "--server", target, "--labels", str(tmp_path / "three.txt"), "x.npy")
    assert wrong.returncode == 2 and "3 names" in wrong.stderr


def test_dynamic_batch_is_one_request_per_sample_unless_batch_says_otherwise(tmp_path: Path) -> None:
    model = mlp(batch=None)
    write_plan_dir(
        tmp_path / "plan", model, mlp(batch=None, seed=7, sizes=(16, 8, 4)), {"relu_1": (0.0001, 0.0001)}, name="mlpn"
    )
    srv, port = create_server(ServerConfig(repo=tmp_path / "plan" / "server", port=0, metrics_port=None))
    try:
        np.save(tmp_path / "six.npy", rows(6, 5))
        argv = ["--plan", str(tmp_path / "plan"), "--server", f"127.0.0.1:{port}", "--json"]
        for extra, requests in (([], 6), (["--batch", "4"], 2)):
            out = tmp_path / f"out{requests}"
            done = splitinf_run(*argv, *extra, "--output", str(out), str(tmp_path / "six.npy"))
            assert done.returncode == 0, done.stderr
            records = json_lines(done.stdout)
            assert records[-1]["summary"]["requests"] == requests
            with np.load(out / "six.npz") as answer:
                np.testing.assert_allclose(answer["y"], run_model(model, rows(6, 5)), rtol=1e-5, atol=1e-6)
        assert [r["input"].rsplit("six.npy", 1)[1] for r in records[:2]] == ["[0:4]", "[4:6]"]
    finally:
        srv.stop(grace=0)


def test_batch_needs_a_dynamic_batch_dimension(plan_and_server: tuple[Path, Any, str], tmp_path: Path) -> None:
    plan, _, target = plan_and_server
    np.save(tmp_path / "four.npy", rows(4))
    done = splitinf_run("--plan", str(plan), "--server", target, "--batch", "2", str(tmp_path / "four.npy"))
    assert done.returncode == 2 and "batch dimension is fixed" in done.stderr


def test_no_server_ever_reachable_exits_1_unless_offline_is_allowed(
    plan_and_server: tuple[Path, Any, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, srv, target = plan_and_server
    srv.stop(grace=0)
    np.save(tmp_path / "a.npy", rows(2))
    status = main(["run", "--plan", str(plan), "--server", target, "--json", str(tmp_path / "a.npy")])
    captured = capsys.readouterr()
    records = json_lines(captured.out)
    assert status == 1 and "never answered" in captured.err and "--allow-offline" in captured.err
    assert records[0]["kind"] == "fallback" and records[0]["fallback_reason"] == "unavailable"
    np.testing.assert_allclose(records[0]["outputs"]["y"]["values"], run_model(FALLBACK, rows(2)[:1]), rtol=1e-5)
    latency = records[0]["latency_ms"]
    assert latency["wait"] > 0 and sum(latency[s] for s in STAGES) == pytest.approx(latency["total"], abs=0.003)
    assert records[-1]["summary"]["fallbacks"] == {"unavailable": 1}
    assert records[-1]["summary"]["mode"] == "fallback"
    # mode changes are bare JSON lines on stderr
    events = json_lines(captured.err)
    assert any(e["event"] == "mode_change" and (e["from"], e["to"]) == ("split", "fallback") for e in events)
    status = main(["run", "--plan", str(plan), "--server", target, "--allow-offline", str(tmp_path / "a.npy")])
    assert status == 0


def test_events_are_pure_json_lines_from_a_subprocess(plan_and_server: tuple[Path, Any, str], tmp_path: Path) -> None:
    plan, srv, target = plan_and_server
    srv.stop(grace=0)
    np.save(tmp_path / "a.npy", rows(1))
    done = splitinf_run("--plan", str(plan), "--server", target, "--allow-offline", str(tmp_path / "a.npy"))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines() if '"event"' in line]
    assert any(e["event"] == "mode_change" and (e["from"], e["to"]) == ("split", "fallback") for e in events)


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
        (["--watch", str(tmp_path / "nowhere")], "is not a directory"),
        (["--listen", "localhost"], "HOST:PORT"),
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
    result = splitinf_run("--plan", str(tmp_path), "--server", "127.0.0.1:1", "x.npy")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "plan.json" in result.stderr


def without_root_powers() -> list[str]:
    """A command prefix under which file permissions apply: as root, drop the capabilities that bypass them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): cannot make a file unreadable to root")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def test_a_plan_the_service_cannot_read_is_a_clear_error(tmp_path: Path) -> None:
    """Real permissions (chmod 000; as root, without the capabilities that ignore them), not a simulation."""
    plan = build_plan_dir(tmp_path / "plan", cuts=("x",))
    np.save(tmp_path / "a.npy", rows(1))
    prefix = without_root_powers()
    argv = ["--plan", str(plan), "--server", "127.0.0.1:1", "--allow-offline", str(tmp_path / "a.npy")]

    def run_as_the_service() -> subprocess.CompletedProcess[str]:
        command = [*prefix, sys.executable, "-m", "splitinf", "run", *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert run_as_the_service().returncode == 0
    private = plan / "device" / "fallback.onnx"
    for unreadable, named in ((private, str(private)), (plan, "permission denied")):
        unreadable.chmod(0o000)
        try:
            done = run_as_the_service()
        finally:
            unreadable.chmod(0o755 if unreadable.is_dir() else 0o644)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert named in done.stderr and "chmod -R a+rX" in done.stderr


class Service:
    """``splitinf run --watch`` (and --listen) as a long-running process, its stdout read as it comes."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "splitinf", "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.errors: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True)
        self._reader.start()
        self._error_reader = threading.Thread(target=self._read, args=(self.process.stderr, self.errors), daemon=True)
        self._error_reader.start()

    @staticmethod
    def _read(stream: Any, into: queue.SimpleQueue[str]) -> None:
        for line in stream:
            into.put(line)

    def next_line(self, timeout_s: float = 60) -> str:
        return self.lines.get(timeout=timeout_s)

    def stop(self) -> tuple[int, list[str], str]:
        """SIGTERM, as systemd stops it; returns the exit status, the stdout lines not yet read, stderr."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        self._error_reader.join(timeout=10)
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        errors = []
        while not self.errors.empty():
            errors.append(self.errors.get())
        return status, rest, "".join(errors)


def drop(inbox: Path, name: str, array: np.ndarray) -> None:
    """Write beside the inbox's files under a hidden name, then rename: the watcher never sees a partial file."""
    np.save(inbox / f".{name}", array)
    os.replace(inbox / f".{name}", inbox / name)


def poll(predicate: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.02)  # polling interval, not a wait for a state


def test_watch_answers_moves_to_done_and_a_restart_answers_nothing_twice(
    plan_and_server: tuple[Path, Any, str], tmp_path: Path
) -> None:
    plan, _, target = plan_and_server
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    drop(inbox, "first.npy", rows(1, 1))
    argv = ["--plan", str(plan), "--server", target, "--watch", str(inbox), "--output", str(out), "--json"]
    argv += ["--watch-interval", "0.05"]
    service = Service(*argv)
    assert json.loads(service.next_line())["input"] == str(inbox / "first.npy")
    drop(inbox, "second.npy", rows(1, 2))
    np.savez(inbox / "samples.npz", x=rows(1, 3), labels=np.array([3]))  # refused, set aside, not retried
    assert json.loads(service.next_line())["input"] == str(inbox / "second.npy")
    poll(lambda: (inbox / "failed" / "samples.npz").exists() and (inbox / "done" / "second.npy").exists())
    status, rest, err = service.stop()
    assert status == 0, err
    assert json.loads(rest[-1])["summary"]["requests"] == 2
    assert "refused" in err and "['labels']" in err
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["first.npy", "second.npy"]
    assert sorted(p.name for p in out.iterdir()) == ["first.npz", "second.npz"]
    with np.load(out / "second.npz") as answer:
        np.testing.assert_allclose(answer["y"], run_model(FULL, rows(1, 2)), rtol=1e-5, atol=1e-6)

    # restart: only the new file is answered; the old ones are in done/, not in the inbox
    drop(inbox, "third.npy", rows(1, 4))
    service = Service(*argv, "--delete")
    assert json.loads(service.next_line())["input"] == str(inbox / "third.npy")
    poll(lambda: not (inbox / "third.npy").exists())
    status, rest, err = service.stop()
    assert status == 0, err
    assert [json.loads(line) for line in rest] == [json.loads(rest[-1])]  # the summary, nothing answered again
    assert json.loads(rest[-1])["summary"]["requests"] == 1
    assert not (inbox / "done" / "third.npy").exists() and (out / "third.npz").exists()  # --delete


def test_listen_serves_applications_until_sigterm(plan_and_server: tuple[Path, Any, str]) -> None:
    import tritonclient.grpc as triton

    plan, _, target = plan_and_server
    argv = ["--plan", str(plan), "--server", target, "--listen", "127.0.0.1:0", "--model-name", "digits"]
    service = Service(*argv, "--metrics-port", "0")
    metrics_line = service.errors.get(timeout=60)
    while not metrics_line.startswith("metrics: "):  # after any warning about the link at start
        metrics_line = service.errors.get(timeout=60)
    assert metrics_line.startswith("metrics: http://127.0.0.1:"), metrics_line
    line = service.next_line()
    assert line.startswith("endpoint: model 'digits' on 127.0.0.1:"), line
    address = line.split(" on ")[1].split()[0]
    client = triton.InferenceServerClient(address)
    tensor = triton.InferInput("x", [1, 16], "FP32")
    tensor.set_data_from_numpy(rows(1, 6))
    answer = client.infer("digits", [tensor], client_timeout=30)
    np.testing.assert_allclose(answer.as_numpy("y"), run_model(FULL, rows(1, 6)), rtol=1e-5, atol=1e-6)
    assert answer.get_response().parameters["splitinf_kind"].string_param == "split"
    client.close()
    with urllib.request.urlopen(metrics_line.split()[1], timeout=10) as response:  # the device's metrics
        metrics = response.read().decode()
    assert 'splitinf_device_request_seconds_count{kind="split",path="split:x:fp32"} 1.0' in metrics
    status, _, err = service.stop()
    assert status == 0, err


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
        ("budget_ms = 'fast'", "device.toml: budget_ms: expected float, got str"),
        ("sever = 'a:1'", "unknown key 'sever'; known: server, budget_ms"),
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
