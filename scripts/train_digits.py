"""Train and export the digits model pair shipped in ``splitinf/tools/models``.

    pip install -e '.[train]'          # torch==2.13.0 (CPU build) and scikit-learn
    python scripts/train_digits.py [--out DIR] [--epochs N]

Data: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1797 grey 8x8
images, values 0..16; nothing is downloaded). A stratified split with a fixed seed holds out 20%;
the models never see it during training (fixed epoch count, no early stopping on it).

Writes into DIR (default: ``splitinf/tools/models``):

- ``digits_main.onnx``: residual CNN, stem conv -> 3 residual blocks (Add skips) -> global average
  pool -> Linear. BatchNorm is folded into the convolutions by the exporter.
- ``digits_fallback.onnx``: 2x2 average pool (a 4x4 thumbnail) -> Linear 16->32 -> ReLU -> Linear,
  a few hundred parameters. Same input and output as the main model.
- ``digits_test.npz``: the held-out ``images`` (uint8 [M, 8, 8], 0..16) and ``labels`` (uint8 [M]).
- ``digits.json``: the split, each model's held-out accuracy measured with onnxruntime, parameter
  counts, file sha256s, opset and library versions.

Training is seeded, single-threaded and uses deterministic algorithms, and the files are written
without timestamps, so a rerun on the same library versions reproduces the shipped bytes.
torch is imported inside functions: importing this module needs only numpy (and scikit-learn to
compute the split).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "splitinf" / "models"

DATASET = "sklearn.datasets.load_digits"
SPLIT_SEED = 0
TEST_FRACTION = 0.2
TRAIN_SEED = 0
OPSET = 17
DEFAULT_EPOCHS = 60
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"

MAIN_FILE = "digits_main.onnx"
FALLBACK_FILE = "digits_fallback.onnx"
TEST_FILE = "digits_test.npz"
INFO_FILE = "digits.json"


def log(message: str) -> None:
    print(message, flush=True)


def heldout_split(
    labels: np.ndarray, seed: int = SPLIT_SEED, fraction: float = TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, held-out) sample indices: stratified by label, seeded."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def indices_sha256(indices: np.ndarray) -> str:
    """Hash of a sample-index list, independent of platform integer size."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (readable by ``np.load``) without the zip timestamps ``np.savez`` writes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def build_models() -> tuple[Any, Any]:
    """(main, fallback) torch modules with seeded initial weights."""
    import torch
    from torch import nn

    class ResidualBlock(nn.Module):
        def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels_out)
            self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels_out)
            self.relu = nn.ReLU()
            self.shortcut: nn.Module = nn.Identity()
            if stride != 1 or channels_in != channels_out:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False), nn.BatchNorm2d(channels_out)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            branch = self.relu(self.bn1(self.conv1(x)))
            branch = self.bn2(self.conv2(branch))
            return self.relu(branch + self.shortcut(x))

    torch.manual_seed(TRAIN_SEED)
    main = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        ResidualBlock(16, 16, stride=1),
        ResidualBlock(16, 32, stride=2),
        ResidualBlock(32, 32, stride=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    fallback = nn.Sequential(
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    return main, fallback


def count_params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def train(model: Any, images: np.ndarray, labels: np.ndarray, epochs: int, name: str, shift: bool) -> None:
    """Adam with cosine decay; ``shift`` adds random +-1 pixel translations (a cheap augmentation)."""
    import torch
    from torch import nn

    x = torch.from_numpy(images)
    y = torch.from_numpy(labels.astype(np.int64))
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(x) + BATCH_SIZE - 1) // BATCH_SIZE
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total_loss = 0.0
        correct = 0
        for start in range(0, len(x), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            if shift:
                dy, dx = (int(v) for v in torch.randint(0, 3, (2,), generator=generator))
                inputs = padded[batch, :, dy : dy + 8, dx : dx + 8]
            else:
                inputs = x[batch]
            logits = model(inputs)
            loss = loss_fn(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(1) == y[batch]).sum())
        if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
            log(
                f"  {name} epoch {epoch:3d}/{epochs}: loss {total_loss / len(x):.4f}, "
                f"train accuracy {correct / len(x):.4f} ({time.perf_counter() - started:.1f} s)"
            )
    model.eval()


def export_onnx(model: Any, path: Path) -> None:
    """Export with opset 17 and a dynamic batch dimension, then check it."""
    import onnx
    import torch

    buffer: Any = io.BytesIO()  # export accepts a file object; its annotation says path only
    # The TorchScript exporter: the dynamo one needs onnxscript, and this one folds eval-mode
    # BatchNorm into the preceding convolution. Its deprecation notice is expected.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX export")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    write_bytes(path, proto.SerializeToString())


def onnx_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits: np.ndarray = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
    return logits


def torch_logits(model: Any, inputs: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        result: np.ndarray = model(torch.from_numpy(inputs)).numpy()
    return result


def onnx_param_count(path: Path) -> int:
    import onnx

    model = onnx.load(str(path))
    return int(sum(np.prod(init.dims, dtype=np.int64) for init in model.graph.initializer))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs per model (default: {DEFAULT_EPOCHS})"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        raise SystemExit(
            "train_digits.py needs PyTorch (CPU build): pip install -e '.[train]' (torch==2.13.0); "
            "splitinf itself runs without it"
        ) from None
    import onnx
    import onnxruntime
    import sklearn
    from sklearn.datasets import load_digits

    from splitinf.tools.models import preprocess

    torch.set_num_threads(1)  # float reduction order depends on the thread count
    torch.use_deterministic_algorithms(True)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    digits = load_digits()
    raw_images = digits.images.astype(np.uint8)  # integers 0..16 stored as float64
    if not np.array_equal(raw_images, digits.images):
        raise SystemExit("load_digits returned non-integer pixels; the uint8 held-out file would lose data")
    labels = digits.target.astype(np.int64)
    train_index, test_index = heldout_split(labels)
    log(f"{DATASET}: {len(labels)} samples; train {len(train_index)}, held out {len(test_index)} (seed {SPLIT_SEED})")
    train_x, test_x = preprocess(raw_images[train_index]), preprocess(raw_images[test_index])
    train_y, test_y = labels[train_index], labels[test_index]

    main_model, fallback_model = build_models()
    log(f"main: residual CNN, {count_params(main_model)} parameters")
    train(main_model, train_x, train_y, args.epochs, "main", shift=True)
    log(f"fallback: 4x4 thumbnail MLP, {count_params(fallback_model)} parameters")
    train(fallback_model, train_x, train_y, args.epochs, "fallback", shift=False)

    models_info: dict[str, Any] = {}
    for role, model, filename, description in (
        ("main", main_model, MAIN_FILE, "stem conv -> 3 residual blocks (Add skips) -> global average pool -> Linear"),
        ("fallback", fallback_model, FALLBACK_FILE, "2x2 average pool -> Linear 16->32 -> ReLU -> Linear 32->10"),
    ):
        path = out / filename
        export_onnx(model, path)
        ort_out = onnx_logits(path, test_x)
        max_diff = float(np.abs(ort_out - torch_logits(model, test_x)).max())
        if max_diff > 1e-4:
            raise SystemExit(f"{filename}: onnxruntime differs from torch by {max_diff:.2e}")
        accuracy = float((ort_out.argmax(axis=1) == test_y).mean())
        data = path.read_bytes()
        models_info[role] = {
            "file": filename,
            "sha256": sha256_bytes(data),
            "bytes": len(data),
            "parameters": onnx_param_count(path),
            "accuracy": round(accuracy, 6),
            "correct": int((ort_out.argmax(axis=1) == test_y).sum()),
            "architecture": description,
            "ort_vs_torch_max_abs_diff": max_diff,
        }
        log(f"{filename}: held-out accuracy {accuracy:.4f} (onnxruntime), {len(data)} bytes, torch diff {max_diff:.1e}")

    test_data = npz_bytes({"images": raw_images[test_index], "labels": test_y.astype(np.uint8)})
    write_bytes(out / TEST_FILE, test_data)
    info = {
        "format": 1,
        "dataset": {
            "name": DATASET,
            "samples": len(labels),
            "classes": 10,
            "image_shape": [8, 8],
            "pixel_range": [0, 16],
        },
        "split": {
            "method": "sklearn.model_selection.train_test_split(stratify=labels), indices sorted",
            "seed": SPLIT_SEED,
            "test_fraction": TEST_FRACTION,
            "train_samples": len(train_index),
            "test_samples": len(test_index),
            "test_indices_sha256": indices_sha256(test_index),
            "test_indices": [int(i) for i in test_index],
        },
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [BATCH_DIM, 1, 8, 8], "scale": "pixel / 16"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [BATCH_DIM, 10]},
        "test_data": {"file": TEST_FILE, "sha256": sha256_bytes(test_data)},
        "models": models_info,
        "training": {
            "seed": TRAIN_SEED,
            "epochs": args.epochs,
            "batch_size": BATCH_SIZE,
            "optimizer": f"Adam(lr={LEARNING_RATE}, weight_decay={WEIGHT_DECAY}), cosine decay",
            "augmentation": {"main": "random +-1 pixel shift per batch", "fallback": "none"},
        },
        "opset": OPSET,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
    }
    write_bytes(out / INFO_FILE, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    log(f"wrote {MAIN_FILE}, {FALLBACK_FILE}, {TEST_FILE}, {INFO_FILE} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
