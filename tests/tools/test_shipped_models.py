"""The shipped digits model pair, its held-out data and record, and the ResNet-50-like builder."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from splitinf.contract.files import sha256_file
from splitinf.errors import InputError, UsageError
from splitinf.tools.models import (
    DIGITS_INPUT,
    DIGITS_OUTPUT,
    digits_fallback_path,
    digits_info,
    digits_main_path,
    load_digits_test,
    preprocess,
)
from splitinf.tools.models.resnet import build_resnet50

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = ROOT / "scripts" / "train_digits.py"
MAIN_MIN_ACCURACY = 0.95
FALLBACK_MIN_ACCURACY = 0.80
# torchvision's resnet50 has 25,557,032 parameters; folding its BatchNorms removes one scale per channel
# (26,560 of them) and turns each shift into the convolution's bias.
RESNET50_FOLDED_PARAMS = 25_557_032 - 26_560


@pytest.fixture(scope="module")
def info() -> dict[str, Any]:
    return digits_info()


@pytest.fixture(scope="module")
def train_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_digits", TRAIN_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def param_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(init.dims, dtype=np.int64)) for init in model.graph.initializer)


def sklearn_heldout_indices(seed: int, fraction: float) -> np.ndarray:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    _, test = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(test)


@pytest.mark.parametrize("path_fn", [digits_main_path, digits_fallback_path])
def test_shipped_models_pass_the_onnx_checker_with_opset_17(path_fn: Any) -> None:
    path = path_fn()
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert {(op.domain, op.version) for op in model.opset_import} == {("", 17)}


def test_shipped_files_match_the_recorded_sha256s(info: dict[str, Any]) -> None:
    models_dir = digits_main_path().parent
    assert sha256_file(digits_main_path()) == info["models"]["main"]["sha256"]
    assert sha256_file(digits_fallback_path()) == info["models"]["fallback"]["sha256"]
    assert sha256_file(models_dir / info["test_data"]["file"]) == info["test_data"]["sha256"]
    total = sum(p.stat().st_size for p in models_dir.iterdir() if p.suffix in {".onnx", ".npz", ".json"})
    assert total < 1_000_000, "the shipped model files should stay small"


def test_heldout_accuracy_matches_the_record_and_the_thresholds(info: dict[str, Any]) -> None:
    images, labels = load_digits_test()
    accuracy = {}
    for role, path in (("main", digits_main_path()), ("fallback", digits_fallback_path())):
        logits = session(path).run([DIGITS_OUTPUT], {DIGITS_INPUT: images})[0]
        assert logits.shape == (len(labels), 10)
        correct = int((logits.argmax(axis=1) == labels).sum())
        assert correct == info["models"][role]["correct"]
        accuracy[role] = correct / len(labels)
        assert accuracy[role] == pytest.approx(info["models"][role]["accuracy"], abs=1e-6)
    assert accuracy["main"] >= MAIN_MIN_ACCURACY
    assert FALLBACK_MIN_ACCURACY <= accuracy["fallback"] < accuracy["main"]


def test_fallback_has_exactly_the_main_models_inputs_and_outputs() -> None:
    main = onnx.load(str(digits_main_path())).graph
    fallback = onnx.load(str(digits_fallback_path())).graph
    assert [vi.SerializeToString() for vi in fallback.input] == [vi.SerializeToString() for vi in main.input]
    assert [vi.SerializeToString() for vi in fallback.output] == [vi.SerializeToString() for vi in main.output]
    (image,) = main.input
    assert image.name == DIGITS_INPUT
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert [o.name for o in main.output] == [DIGITS_OUTPUT]


def test_fallback_is_far_smaller_than_main(info: dict[str, Any]) -> None:
    main = onnx.load(str(digits_main_path()))
    fallback = onnx.load(str(digits_fallback_path()))
    assert param_count(main) == info["models"]["main"]["parameters"]
    assert param_count(fallback) == info["models"]["fallback"]["parameters"]
    assert param_count(fallback) * 10 < param_count(main)


def test_main_model_has_residual_skip_connections() -> None:
    graph = onnx.load(str(digits_main_path())).graph
    # Nodes are topologically sorted; depth = nodes on the longest path from the graph input.
    depth = {vi.name: 0 for vi in graph.input}
    depth.update({init.name: 0 for init in graph.initializer})
    ancestors: dict[str, set[str]] = {name: set() for name in depth}
    for node in graph.node:
        for output in node.output:
            depth[output] = 1 + max(depth[name] for name in node.input if name)
            ancestors[output] = {node.name}.union(*(ancestors[name] for name in node.input if name))
    adds = [node for node in graph.node if node.op_type == "Add"]
    assert len(adds) >= 2
    for add in adds:
        left, right = add.input
        # A skip joins two paths that fork from one tensor and have different lengths.
        assert ancestors[left] & ancestors[right], f"{add.name} does not join two paths from one fork"
        assert depth[left] != depth[right], f"{add.name} joins paths of equal length: not a skip"


@pytest.mark.parametrize("batch", [1, 5])
def test_shipped_models_accept_any_batch_size(batch: int) -> None:
    images, _ = load_digits_test()
    for path in (digits_main_path(), digits_fallback_path()):
        logits = session(path).run([DIGITS_OUTPUT], {DIGITS_INPUT: images[:batch]})[0]
        assert logits.shape == (batch, 10)


def test_heldout_set_is_the_recorded_sklearn_split(info: dict[str, Any], train_script: ModuleType) -> None:
    from sklearn.datasets import load_digits

    split = info["split"]
    assert info["dataset"]["name"] == "sklearn.datasets.load_digits"
    expected = sklearn_heldout_indices(split["seed"], split["test_fraction"])
    assert split["test_indices"] == expected.tolist()
    assert split["test_indices_sha256"] == train_script.indices_sha256(expected)
    _, script_test = train_script.heldout_split(load_digits().target, split["seed"], split["test_fraction"])
    assert np.array_equal(script_test, expected)

    digits = load_digits()
    with np.load(digits_main_path().parent / info["test_data"]["file"], allow_pickle=False) as data:
        assert data["images"].dtype == np.uint8
        assert np.array_equal(data["images"], digits.images[expected])
        assert np.array_equal(data["labels"], digits.target[expected])


def test_load_digits_test_gives_model_input_and_labels(info: dict[str, Any]) -> None:
    images, labels = load_digits_test()
    assert images.dtype == np.float32 and images.shape == (info["split"]["test_samples"], 1, 8, 8)
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))


def test_preprocess_scales_and_adds_the_channel_axis() -> None:
    images = np.array([[[0] * 8] * 8, [[16] * 8] * 8], dtype=np.uint8)
    batch = preprocess(images)
    assert batch.shape == (2, 1, 8, 8) and batch.dtype == np.float32
    assert batch[0].max() == 0.0 and batch[1].min() == 1.0
    assert np.array_equal(preprocess(batch * 16), batch)


@pytest.mark.parametrize(
    ("images", "problem"),
    [
        (np.zeros((2, 64), dtype=np.uint8), "shaped"),
        (np.zeros((2, 3, 8, 8), dtype=np.uint8), "shaped"),
        (np.full((1, 8, 8), 17, dtype=np.uint8), "0..16"),
        (np.full((1, 8, 8), -1.0), "0..16"),
    ],
)
def test_preprocess_rejects_bad_images(images: np.ndarray, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        preprocess(images)


def test_training_script_imports_and_splits_without_torch(tmp_path: Path) -> None:
    # torch is a development extra: the script must import (and compute the split) without it.
    out = tmp_path / "out"
    code = f"""
import sys, importlib.util

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, BlockTorch())
spec = importlib.util.spec_from_file_location("train_digits", {str(TRAIN_SCRIPT)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from sklearn.datasets import load_digits
train, test = module.heldout_split(load_digits().target)
print(len(train), len(test))
try:
    module.main(["--help"])
except SystemExit as exc:
    assert exc.code == 0
try:
    module.main(["--out", {str(out)!r}])
except SystemExit as exc:
    print(exc.code)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "1437 360"
    assert "--epochs" in result.stdout
    assert "pip install -e '.[train]'" in result.stdout, "training without torch must say how to get it"
    assert not out.exists(), "nothing may be written before torch is found missing"


def test_training_script_rerun_writes_a_consistent_record(tmp_path: Path, info: dict[str, Any]) -> None:
    pytest.importorskip("torch", reason="torch is the optional 'train' extra")
    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--out", str(tmp_path), "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rerun = json.loads((tmp_path / "digits.json").read_text())
    assert rerun["split"] == info["split"]
    assert rerun["test_data"] == info["test_data"], "the held-out file must not depend on training"
    for role in ("main", "fallback"):
        path = tmp_path / rerun["models"][role]["file"]
        onnx.checker.check_model(str(path), full_check=True)
        assert sha256_file(path) == rerun["models"][role]["sha256"]
        assert rerun["models"][role]["parameters"] == info["models"][role]["parameters"]


def test_resnet50_full_width_has_resnet50s_structure_and_parameters() -> None:
    model = build_resnet50()
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops == {"Conv": 53, "Relu": 49, "Add": 16, "MaxPool": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    assert param_count(model) == RESNET50_FOLDED_PARAMS
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 224, 224]


def test_resnet50_small_width_passes_the_checker_and_runs() -> None:
    model = build_resnet50(batch="batch", num_classes=10, seed=3, width=0.125)
    onnx.checker.check_model(model, full_check=True)
    assert 100_000 < param_count(model) < RESNET50_FOLDED_PARAMS / 20
    images = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"image": images}
    )[0]
    assert logits.shape == (2, 10)
    assert np.isfinite(logits).all()
    assert 0.01 < float(logits.std()) < 100.0, "He init should keep logits at a usable scale"


def test_resnet50_weights_are_seeded() -> None:
    def first_weight(seed: int) -> np.ndarray:
        model = build_resnet50(seed=seed, num_classes=10, width=0.0625)
        return numpy_helper.to_array(model.graph.initializer[0])

    assert np.array_equal(first_weight(1), first_weight(1))
    assert not np.array_equal(first_weight(1), first_weight(2))


@pytest.mark.parametrize(
    "kwargs",
    [{"batch": 0}, {"batch": "2x"}, {"batch": True}, {"num_classes": 0}, {"width": 0.0}, {"width": float("nan")}],
)
def test_resnet50_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        build_resnet50(**kwargs)
