"""Server configuration (TOML + overrides); config.pbtxt is tests/cloud/test_model_config.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitinf.cloud.config import ServerConfig, load_server_config
from splitinf.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_toml_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "token.txt").write_text("  abc123\n")
    config_file = tmp_path / "server.toml"
    config_file.write_text(
        'repo = "models"\nhost = "0.0.0.0"\nport = 9001\nmetrics_port = -1\n'
        '[onnxruntime]\nproviders = ["CPUExecutionProvider"]\nintra_op_threads = 2\ngraph_optimization = "basic"\n'
        "[batching]\nmax_batch_size = 8\nmax_queue_delay_ms = 2.5\n"
        '[tls]\ncert = "s.pem"\nkey = "s.key"\n[auth]\ntoken_file = "token.txt"\n'
    )
    config = load_server_config(config_file, port=0, host=None)
    assert config.repo == tmp_path / "models"
    assert (config.host, config.port, config.metrics_port) == ("0.0.0.0", 0, None)
    assert (config.intra_op_threads, config.graph_optimization) == (2, "basic")
    assert (config.max_batch_size, config.batch_delay_ms) == (8, 2.5)
    assert config.tls is not None and config.tls.cert_file == tmp_path / "s.pem" and config.tls.client_ca_file is None
    assert config.token == "abc123" and "abc123" not in repr(config)


def test_the_shipped_example_config_loads() -> None:
    config = load_server_config(ROOT / "cloud" / "server.toml", repo="/models")
    assert config.port == 8001 and config.host == "0.0.0.0"
    assert config.tune_allocator is True


def test_allocator_tuning_is_a_config_switch(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text('repo = "m"\ntune_allocator = false\n')
    assert load_server_config(tmp_path / "s.toml").tune_allocator is False
    assert ServerConfig(repo=tmp_path).tune_allocator is True  # on unless turned off


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('repo = "m"\nprot = 1\n', "unknown key 'prot'"),
        ('repo = "m"\n[batching]\nmax_batch = 4\n', "unknown key 'max_batch' in \\[batching\\]"),
        ('repo = "m"\n[gpu]\nx = 1\n', "unknown key 'gpu'; known: repo, host, port"),
        ('repo = "m"\nport = 70000\n', "port 70000 must be in 0..65535"),
        ('repo = "m"\n[onnxruntime]\ngraph_optimization = "max"\n', "graph_optimization 'max' is not one of"),
        ('repo = "m"\n[tls]\ncert = "a.pem"\n', "TLS needs both a certificate and a key"),
        ('repo = "m"\ntune_allocator = "no"\n', "tune_allocator: expected bool, got str"),
        # issue 14, finding 7: wrong types name the key and the expected type instead of a TypeError
        ('repo = "m"\nhost = 5\n', "s.toml: host: expected str, got int"),
        ('repo = "m"\nport = "abc"\n', "s.toml: port: expected int, got str"),
        ('repo = "m"\nmax_inflight = "10"\n', "max_inflight: expected int, got str"),
        (
            'repo = "m"\n[onnxruntime]\nintra_op_threads = "2"\n',
            "\\[onnxruntime\\] intra_op_threads: expected int, got str",
        ),
        ('repo = "m"\n[onnxruntime]\nproviders = "CPUExecutionProvider"\n', "providers: expected array, got str"),
        ('repo = "m"\n[batching]\nmax_queue_delay_ms = true\n', "max_queue_delay_ms: expected float, got bool"),
        ('repo = "m"\nmax_streams = 0\n', "max_streams 0 must be at least 1"),
        ("repo = \n", "is not valid TOML"),
    ],
)
def test_bad_config_is_a_clear_config_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_server_config(tmp_path / "s.toml")


def test_no_repository_and_empty_token_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no model repository"):
        load_server_config(None)
    (tmp_path / "t").write_text("\n")
    with pytest.raises(ConfigError, match="token file .* is empty"):
        load_server_config(None, repo=tmp_path, token_file=tmp_path / "t")
    with pytest.raises(ConfigError, match="max_inflight 0 must be at least 1"):
        ServerConfig(repo=tmp_path, max_inflight=0)


def test_the_kubernetes_configmap_holds_a_valid_config(tmp_path: Path) -> None:
    manifest = (ROOT / "cloud" / "k8s" / "tail.yaml").read_text()
    block = manifest.split("server.toml: |\n", 1)[1].split("\n---", 1)[0]
    lines = [line[4:] for line in block.splitlines() if line.startswith("    ")]
    (tmp_path / "server.toml").write_text("\n".join(lines) + "\n")
    config = load_server_config(tmp_path / "server.toml", repo="/models")
    assert config.host == "0.0.0.0" and config.max_connection_age_s == 300.0
    assert config.drain_grace_s < 30, "keep drain_grace_s below terminationGracePeriodSeconds"


def test_onnxruntime_settings_reach_the_sessions(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from splitinf.cloud.repository import load_repository
    from splitinf.tools.testing.graphs import mlp

    (tmp_path / "m" / "1").mkdir(parents=True)
    onnx.save(mlp(), tmp_path / "m" / "1" / "model.onnx")
    model = load_repository(
        tmp_path, intra_op_threads=1, inter_op_threads=1, graph_optimization="disable", allow_unsigned=True
    )["m"]["1"]
    options = model.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match=r"\['NoSuchExecutionProvider'\] are not available.*CPUExecutionProvider"):
        load_repository(tmp_path, providers=("NoSuchExecutionProvider",))
