"""config.pbtxt read with protobuf's text_format, strictly as Triton does; completed and written for Triton."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from splitinf.cloud.model_config import (
    ServingConfig,
    complete_model_config,
    parse_model_config,
    read_model_config,
    serving_config,
)
from splitinf.cloud.repository import load_repository
from splitinf.contract.tensors import TensorSpec
from splitinf.errors import ConfigError
from splitinf.protocol import model_config_pb2 as mc
from splitinf.tools.testing.graphs import mlp

TRITON_CONFIG = """
# A Triton config for an ONNX tail
name: "digits.c12.fp16"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "h"
    data_type: TYPE_FP16
    dims: [ 32, 4, 4 ]
  }
]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 10 ] } ]
instance_group [ { count: 2, kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
}
parameters { key: "note" value: { string_value: "it's \\"quoted\\"" } }
"""


def _write(folder: Path, text: str | bytes) -> Path:
    path = folder / "config.pbtxt"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return folder


def test_a_real_triton_config_parses_as_triton_reads_it(tmp_path: Path) -> None:
    config = read_model_config(_write(tmp_path, TRITON_CONFIG))
    assert config is not None
    assert config.name == "digits.c12.fp16" and config.max_batch_size == 16
    assert list(config.input[0].dims) == [32, 4, 4] and config.input[0].data_type == mc.TYPE_FP16
    assert config.output[0].name == "logits" and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.parameters["note"].string_value == 'it\'s "quoted"'
    assert serving_config(config) == ServingConfig(16, True, 0.0005)


def test_no_config_file_and_no_dynamic_batching(tmp_path: Path) -> None:
    assert read_model_config(tmp_path) is None and serving_config(None) == ServingConfig()
    assert serving_config(parse_model_config("max_batch_size: 8")) == ServingConfig(8, False, 0.0)


def test_valid_text_format_parses_as_protobuf_does() -> None:
    """Adjacent strings concatenate, <> and {} both open messages, ; and , separate: the hand parser misread these."""
    config = parse_model_config('name: "tail" ".c12"\nmax_batch_size: 4\ninput < name: "x"; dims: [1, 2] >, output {}')
    assert config.name == "tail.c12" and config.max_batch_size == 4
    assert list(config.input[0].dims) == [1, 2] and len(config.output) == 1


def test_a_typo_is_an_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r'config.pbtxt:1:1: .*has no field named "max_bach_size"'):
        parse_model_config("max_bach_size: 4")
    with pytest.raises(ConfigError, match='has no field named "max_queue_delay"'):
        parse_model_config("dynamic_batching { max_queue_delay: 5 }")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('dynamic_batching { max_queue_delay_microseconds: "abc" }', r":1:50: Couldn't parse integer: \"abc\""),
        ("dynamic_batching { max_queue_delay_microseconds: -5 }", r":1:50: Value out of range: -5"),
        ("max_batch_size: -3", r"max_batch_size must be 0 \(no batching\) or more, got -3"),
        ("max_batch_size: 99999999999", r"Value out of range"),
        ("max_batch_size: 4 max_batch_size: 5", r'multiple "max_batch_size" fields'),
        ('input [{ name: "x" data_type: TYPE_FP99 }]', r"has no value named TYPE_FP99"),
        ("dynamic_batching { max_queue_delay_microseconds: 5\n", r'Expected "}"'),
        ("dynamic_batching " + "{" * 5000 + "}" * 5000, r":1:19: "),
        ("{" * 5000, r":1:1: "),
        ('platform: "tensorrt_plan"', r"serves ONNX models only"),
        ('input [{ name: "x" dims: [0] }]', r"use sizes > 0 or -1"),
    ],
)
def test_malformed_text_is_one_short_config_error(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        read_model_config(_write(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400 + len(str(tmp_path)), message
    assert message.startswith(str(tmp_path / "config.pbtxt"))


def test_a_binary_or_huge_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 2\)"):
        read_model_config(_write(tmp_path, b"\x08\x04\xff\xfe\x00onnx"))
    with pytest.raises(ConfigError, match=r"Expected identifier or number, got \\x00"):
        read_model_config(_write(tmp_path, b"max_batch_size: 4\x00\x01"))
    with pytest.raises(ConfigError, match="is not a model configuration"):
        read_model_config(_write(tmp_path, b"#" * (2 << 20)))


def test_the_repository_batches_as_config_pbtxt_says(write_v2_repository: Callable[..., Path], tmp_path: Path) -> None:
    write_v2_repository(tmp_path, {"mlp": mlp()})
    _write(tmp_path / "mlp", "max_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n")
    model = load_repository(tmp_path, warmup=False)["mlp"]["1"]
    assert (model.max_batch_size, model.batch_delay_s) == (4, 0.002)
    assert model.config.platform == "onnxruntime_onnx" and model.config.input[0].name == "x"  # the ModelConfig answer
    assert list(model.config.input[0].dims) == [16]
    assert model.config.dynamic_batching.max_queue_delay_microseconds == 2000
    _write(tmp_path / "mlp", "max_bach_size: 4\n")
    with pytest.raises(ConfigError, match="max_bach_size"):
        load_repository(tmp_path, warmup=False)
    _write(tmp_path / "mlp", 'input [{ name: "x" dims: [8] }]\n')  # Triton refuses this at load too
    with pytest.raises(ConfigError, match=r"dims \[8\], the model has \[-1, 16\]"):
        load_repository(tmp_path, warmup=False)
    _write(tmp_path / "mlp", 'name: "other"\n')
    with pytest.raises(ConfigError, match="config.pbtxt names it 'other'; the folder's name is the model's"):
        load_repository(tmp_path, warmup=False)


SPECS_IN = (TensorSpec("a", "float32", ("batch", 8)), TensorSpec("b", "float16", ("batch", 4)))
SPECS_OUT = (TensorSpec("y", "float32", ("batch", 2)),)


def test_completion_fills_what_the_config_leaves_out_like_triton() -> None:
    config = complete_model_config(None, "tail", SPECS_IN, SPECS_OUT)
    assert (config.name, config.platform, config.backend) == ("tail", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("a", mc.TYPE_FP32, [-1, 8]),
        ("b", mc.TYPE_FP16, [-1, 4]),
    ]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    batched = complete_model_config(
        parse_model_config('input [{ name: "b" }]'),
        "tail",
        SPECS_IN,
        SPECS_OUT,
        max_batch_size=8,
        max_queue_delay_s=0.001,
    )
    assert [t.name for t in batched.input] == ["b", "a"]  # the config's order first, then the model's
    assert list(batched.input[1].dims) == [8] and list(batched.output[0].dims) == [2]  # no batch dimension
    assert batched.dynamic_batching.max_queue_delay_microseconds == 1000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('input [{ name: "c" }]', r"declares input 'c', the model's inputs are \['a', 'b'\]"),
        ('input [{ name: "a" data_type: TYPE_INT8 }]', r"data_type TYPE_INT8, the model has TYPE_FP32"),
        ('output [{ name: "y" dims: [-1, 3] }]', r"dims \[-1, 3\], the model has \[-1, 2\]"),
    ],
)
def test_completion_refuses_a_config_that_contradicts_the_model(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        complete_model_config(parse_model_config(text), "tail", SPECS_IN, SPECS_OUT)


def test_batching_needs_a_batch_dimension() -> None:
    fixed = (TensorSpec("a", "float32", (1, 8)),)
    with pytest.raises(ConfigError, match="needs a variable first"):
        complete_model_config(None, "tail", fixed, SPECS_OUT, max_batch_size=4)
