"""``splitinf triton-config``: the config.pbtxt Triton needs, beside each tail; Triton's own proto reads it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import text_format

from splitinf.cli import main
from splitinf.cloud.model_config import parse_model_config
from splitinf.cloud.repository import load_repository
from splitinf.protocol import model_config_pb2 as mc
from splitinf.tools.testing.graphs import mlp


def test_writes_a_triton_config_per_tail_that_triton_reads(
    write_v2_repository: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_v2_repository(tmp_path, {"mlp.c1": mlp(), "fixed": mlp(batch=1)})
    assert main(["triton-config", str(tmp_path), "--max-batch", "8", "--batch-delay-ms", "0.5"]) == 0
    assert capsys.readouterr().out.count("wrote ") == 2
    text = (tmp_path / "mlp.c1" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text
    config = parse_model_config(text)
    assert (config.name, config.max_batch_size) == ("mlp.c1", 8)
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", mc.TYPE_FP32, [16])]  # no batch dim
    assert [(t.name, list(t.dims)) for t in config.output] == [("y", [4])]
    # Triton's full model_config.proto (as tritonclient ships it) reads the same file, field for field.
    from tritonclient.grpc import model_config_pb2 as triton

    assert text_format.Parse(text, triton.ModelConfig()).SerializeToString() == config.SerializeToString()
    # splitinf serve reads it back: batching as written.
    served = load_repository(tmp_path, warmup=False)["mlp.c1"]["1"]
    assert (served.max_batch_size, served.batch_delay_s) == (8, 0.0005)
    fixed = parse_model_config((tmp_path / "fixed" / "config.pbtxt").read_text())
    assert fixed.max_batch_size == 0 and not fixed.HasField("dynamic_batching")  # no batch dimension: no batching
    assert list(fixed.input[0].dims) == [1, 16]


def test_keeps_an_existing_config_unless_overwrite(
    write_v2_repository: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_v2_repository(tmp_path, {"mlp": mlp()})
    handwritten = "# mine\nmax_batch_size: 4\ndynamic_batching {}\n"
    (tmp_path / "mlp" / "config.pbtxt").write_text(handwritten)
    assert main(["triton-config", str(tmp_path)]) == 0
    assert "kept" in capsys.readouterr().out and (tmp_path / "mlp" / "config.pbtxt").read_text() == handwritten
    assert main(["triton-config", str(tmp_path), "--overwrite"]) == 0
    config = parse_model_config((tmp_path / "mlp" / "config.pbtxt").read_text())
    assert config.max_batch_size == 4 and config.input[0].name == "x" and config.platform == "onnxruntime_onnx"


def test_a_config_that_contradicts_the_model_is_a_usage_error(
    write_v2_repository: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_v2_repository(tmp_path, {"mlp": mlp()})
    (tmp_path / "mlp" / "config.pbtxt").write_text('input [{ name: "image" }]\n')
    assert main(["triton-config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "declares input 'image', the model's inputs are ['x']" in err and "Traceback" not in err
    assert main(["triton-config", str(tmp_path / "nowhere")]) == 2
