"""`splitinf plan` at the user's shapes (issue 13): without --shape/--samples it plans at the shapes
the profiles were measured at, at other shapes it warns and records them; codecs go only where they
apply (a codec the profile skipped at a cut, an opset-9 model's int8) with a note, never a failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from splitinf.cli import main
from splitinf.contract.plan import Plan, load_plan
from splitinf.edge.chain import SessionPool
from splitinf.ort import SessionSettings
from splitinf.tools.testing.graphs import dynamic_cnn

FAST_PROFILE = ["--repeats", "2", "--warmup", "0", "--passes", "1"]
PROFILED_AT = (1, 3, 24, 32)


def profile(model: Path, out: Path, *extra: str) -> Path:
    assert main(["profile", str(model), "-o", str(out), *FAST_PROFILE, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The dynamic CNN and its profile at x=1x3x24x32 (fp32, fp16)."""
    root = tmp_path_factory.mktemp("shapes")
    model = root / "cnn.onnx"
    onnx.save(dynamic_cnn(), model)
    shape = "x=" + "x".join(map(str, PROFILED_AT))
    return model, profile(model, root / "profile.json", "--shape", shape, "--codecs", "fp32,fp16")


def plan(model: Path, device: Path, out: Path, *extra: str, server: Path | None = None) -> Plan:
    argv = ["plan", str(model), "--device", str(device), "--server", str(server or device), "-o", str(out)]
    assert main([*argv, "--codecs", "fp32,fp16", *extra]) == 0
    return load_plan(out, check_files=("device", "server"))


def offload_bytes(plan: Plan) -> int:
    input_cut = plan.profiles["evaluated"]["cuts"][0]
    return next(o.wire_bytes for o in plan.split_options if o.cut_id == input_cut and o.codec == "fp32")


def test_without_shapes_the_plan_is_at_the_profiles_shapes(profiled: tuple[Path, Path], tmp_path: Path) -> None:
    model, device = profiled
    held = plan(model, device, tmp_path / "plan", "--hold-all")
    assert held.inputs_at["inputs"]["x"] == {"dtype": "float32", "shape": list(PROFILED_AT)}
    assert offload_bytes(held) == 4 * int(np.prod(PROFILED_AT))
    assert {o.response_bytes for o in held.split_options} == {4 * 10}  # y float32[1,10] comes back
    assert held.profiles["evaluated"]["shape_warnings"] == []
    assert "`x` float32[1,3,24,32]" in (tmp_path / "plan" / "report.md").read_text()
    # every profiled cut was found again: the planner enumerated them at the profile's shapes
    profiled_ids = [c["id"] for c in json.loads(device.read_text())["cuts"]]
    assert set(held.profiles["evaluated"]["cuts"]) <= set(profiled_ids)


def test_other_shapes_warn_and_are_recorded(
    profiled: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, device = profiled
    with caplog.at_level("WARNING", "splitinf.offline.planner"):
        held = plan(model, device, tmp_path / "plan", "--shape", "x=1x3x16x16", "--hold-all")
    assert held.inputs_at["inputs"]["x"]["shape"] == [1, 3, 16, 16]
    assert offload_bytes(held) == 4 * 3 * 16 * 16  # bytes at the planned shapes, not the profiled ones
    (warning,) = held.profiles["evaluated"]["shape_warnings"]
    assert "[1, 3, 16, 16]" in warning and "[1, 3, 24, 32]" in warning
    assert warning in caplog.text and warning in (tmp_path / "plan" / "report.md").read_text()


def test_a_codec_the_profile_skipped_at_a_cut_is_skipped_with_a_note(
    profiled: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, device = profiled
    data = json.loads(device.read_text())
    skipped = data["cuts"][2]["id"]
    del data["cuts"][2]["codecs"]["fp16"]  # as profile leaves out a codec that does not apply there
    edited = tmp_path / "device.json"
    edited.write_text(json.dumps(data))
    held = plan(model, edited, tmp_path / "plan", "--hold-all", server=device)
    ids = {o.id for o in held.split_options}
    assert f"split:{skipped}:fp32" in ids and f"split:{skipped}:fp16" not in ids
    note = f"codec fp16 skipped at cut {skipped}: the device profile did not time it there (see its notes)"
    assert held.profiles["evaluated"]["notes"] == [note]
    assert f"note: {note}" in capsys.readouterr().err


def test_int8_on_an_opset_9_model_is_converted_or_skipped_never_a_failure(tmp_path: Path) -> None:
    model = tmp_path / "old.onnx"
    onnx.save(dynamic_cnn(opset=9), model)
    samples = tmp_path / "samples.npz"
    np.savez(samples, x=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    device = profile(model, tmp_path / "profile.json", "--samples", str(samples), "--codecs", "fp32,int8")
    held = plan(model, device, tmp_path / "plan", "--samples", str(samples), "--codecs", "fp32,int8", "--hold-all")
    notes = held.profiles["evaluated"]["notes"]
    for cut_id in held.profiles["evaluated"]["cuts"]:
        has_int8 = f"split:{cut_id}:int8" in {o.id for o in held.split_options}
        assert has_int8 or any(f"cut {cut_id}" in note and "opset" in note for note in notes), (cut_id, notes)
    int8 = [o for o in held.split_options if o.codec == "int8"]
    assert all(o.wire[0].dtype == "int8" for o in int8)
    if int8:  # a converted head runs (QuantizeLinear needs opset 10)
        head = SessionPool(held.path, SessionSettings()).chain(int8[-1].id, int8[-1].head)
        wire = head.run({"x": np.zeros((1, 3, 16, 16), np.float32)})[int8[-1].wire[0].name]
        assert wire.dtype == np.int8
