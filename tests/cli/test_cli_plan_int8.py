"""`splitinf profile/plan --quantize int8` on the shipped digits pair: int8 heads and fallback as options."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from splitinf.cli import main
from splitinf.contract.plan import Option, load_plan
from splitinf.edge.chain import SessionPool
from splitinf.offline.graph import enumerate_cuts, load_model
from splitinf.offline.planner import _choose_fallback, _Fallback, select_candidates
from splitinf.ort import SessionSettings
from splitinf.tools.models import digits_fallback_path, digits_main_path, load_digits_test


@dataclasses.dataclass
class Digits:
    root: Path
    device: Path
    server: Path
    samples: Path


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    root = tmp_path_factory.mktemp("int8")
    cuts = enumerate_cuts(load_model(digits_main_path()))
    chosen = ",".join([cuts[0].id, cuts[3].id, cuts[-3].id])
    common = ["--cuts", chosen, "--codecs", "fp32,int8", "--repeats", "3", "--warmup", "1", "--passes", "1"]
    fallback = ["--fallback", str(digits_fallback_path())]
    device, server = root / "device.json", root / "server.json"
    assert main(["profile", str(digits_main_path()), "-o", str(device), "--quantize", "int8", *fallback, *common]) == 0
    assert main(["profile", str(digits_main_path()), "-o", str(server), *common]) == 0
    images, labels = load_digits_test()
    np.savez(root / "digits.npz", image=images[:160], labels=labels[:160])
    return Digits(root, device, server, root / "digits.npz")


def _plan(d: Digits, out: Path, *extra: str) -> list[str]:
    model = str(digits_main_path())
    devices = ["--device", str(d.device), "--server", str(d.server)]
    return ["plan", model, *devices, "-o", str(out), "--codecs", "fp32,int8", *extra]


def test_the_device_profile_times_int8_heads_and_the_int8_fallback(digits: Digits) -> None:
    profile = json.loads(digits.device.read_text())
    assert profile["settings"]["quantize"] == "int8"
    input_cut, *others = profile["cuts"]
    assert all("int8_head" not in c for c in input_cut["codecs"].values())  # nothing to quantize there
    assert all(c["int8_head"]["median"] > 0 for cut in others for c in cut["codecs"].values())
    assert profile["fallback"]["int8_seconds"]["median"] > 0
    assert "int8_head" not in json.dumps(json.loads(digits.server.read_text()))


@pytest.fixture(scope="module")
def int8_plan(digits: Digits) -> Path:
    out = digits.root / "plan"
    argv = _plan(digits, out, "--calibration", str(digits.samples), "--fallback", str(digits_fallback_path()))
    assert main([*argv, "--quantize", "int8", "--hold-all"]) == 0
    return out


def test_the_plan_holds_int8_head_options_that_agree_with_fp32(int8_plan: Path) -> None:
    plan = load_plan(int8_plan, check_files=("device", "server"))
    int8 = [o for o in plan.split_options if o.precision == "int8"]
    assert len(int8) == 4  # 2 cuts with weights x 2 codecs; the input cut has none
    for option in int8:
        twin = plan.option(option.id.removesuffix(":int8head"))
        assert option.id == f"split:{option.cut_id}:{option.codec}:int8head" and twin.precision == "fp32"
        # its chain: int8 segments, then the codec graph it shares with its fp32 twin
        assert option.head[0].startswith("device/segments-int8/")
        if option.codec == "int8":
            assert option.head[-1] == twin.head[-1] and option.head[-1].startswith("device/codecs/")
        assert option.tail_model == twin.tail_model and option.tail_sha256 == twin.tail_sha256  # one fp32 tail
        assert option.wire == twin.wire and option.wire_bytes == twin.wire_bytes
        assert option.device_bytes == sum(plan.path(f).stat().st_size for f in option.head) and option.head_seconds > 0
        # the fp32 head: the chain's segments then its codec's graph, its size theirs added up
        assert twin.device_bytes == sum(plan.path(f).stat().st_size for f in twin.head)
        assert 0 < option.device_bytes < twin.device_bytes
        assert option.fidelity["quantization"]["method"] == "static"
        assert option.fidelity["quantization"]["format"] == "QDQ"
        for key in ("calibration", "held_out"):
            assert option.fidelity[key]["top1_agreement"] >= 0.99
        assert option.accuracy is not None and twin.accuracy is not None
        assert option.accuracy >= twin.accuracy - 0.01
        manifest = json.loads((plan.path(f"server/{option.tail_model}/1/manifest.json")).read_text())
        int8_parts = [manifest["parts"][f"head_int8.{i}"] for i in range(len(option.head))]
        assert [(p["file"], p["sha256"]) for p in int8_parts] == list(option.device_files)
        fp32_parts = [manifest["parts"][f"head.{i}"] for i in range(len(twin.head))]
        assert [(p["file"], p["sha256"]) for p in fp32_parts] == list(twin.device_files)


def test_an_int8_head_and_the_fp32_tail_answer_like_the_full_model(int8_plan: Path) -> None:
    plan = load_plan(int8_plan)
    images, _ = load_digits_test()
    batch = images[200:260]
    full = ort.InferenceSession(str(digits_main_path()), providers=["CPUExecutionProvider"])
    expected = np.concatenate([full.run(None, {"image": image[None]})[0] for image in batch]).argmax(axis=1)
    files = SessionPool(plan.path, SessionSettings())
    for option in (o for o in plan.split_options if o.precision == "int8"):
        head = files.chain(option.id, option.head)
        tail = ort.InferenceSession(
            str(plan.path(f"server/{option.tail_model}/1/model.onnx")), providers=["CPUExecutionProvider"]
        )
        got = []
        for image in batch:
            values = head.run({"image": image[None]})
            got.append(tail.run(None, {t.name: values[t.name] for t in option.wire})[0])
        assert (np.concatenate(got).argmax(axis=1) == expected).mean() >= 0.99


def test_the_int8_fallback_is_weighed_and_one_fallback_is_held(int8_plan: Path) -> None:
    plan = load_plan(int8_plan)
    variants = plan.profiles["evaluated"]["fallbacks"]
    assert [v["precision"] for v in variants] == ["fp32", "int8"]
    assert sum(v["held"] for v in variants) == 1
    int8 = variants[1]
    assert int8["fidelity"]["held_out"]["top1_agreement"] >= 0.99 and int8["fidelity"]["against"] == "the fp32 fallback"
    assert int8["seconds"] > 0 and int8["device_bytes"] > 0 and int8["accuracy"] is not None
    held = next(v for v in variants if v["held"])
    assert plan.fallback is not None and plan.fallback.precision == held["precision"]
    assert plan.fallback.kind == "fallback" and plan.fallback.id == "fallback"


def test_the_report_shows_head_and_wire_precision_apart_and_the_chart_marks_int8(
    digits: Digits, int8_plan: Path, tmp_path: Path
) -> None:
    report = (int8_plan / "report.md").read_text()
    assert "| option | kind | device | wire | wire bytes | device bytes |" in report
    assert "## Fallback precisions" in report
    int8_row = next(line for line in report.splitlines() if ":int8:int8head`" in line and "| split |" in line)
    assert "| split | int8 | int8 |" in int8_row  # head precision, then wire codec
    # a plan with few enough options for the chart to draw them all
    argv = _plan(digits, tmp_path / "p", "--calibration", str(digits.samples), "--quantize", "int8", "--hold-all")
    assert main([*argv, "--codecs", "fp32"]) == 0
    plan = load_plan(tmp_path / "p")
    svg = ET.parse(tmp_path / "p" / "latency.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    marked = {r.get("data-option") for r in svg.iter(f"{ns}rect") if r.get("class") == "int8"}
    int8_ids = {o.id for o in plan.options if o.precision == "int8"}
    assert len(int8_ids) == 2 and marked == int8_ids
    legend = [t.text or "" for t in svg.iter(f"{ns}text")]
    assert all(any(text.startswith(f"{i} [int8]") for text in legend) for i in int8_ids)


def test_quantize_max_device_share_and_progress_work_together(
    digits: Digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cuts = enumerate_cuts(load_model(digits_main_path()))
    profiled = [cuts[0], cuts[3], cuts[-3]]  # as the digits fixture profiles
    weighted = sorted((c for c in profiled if c.head_flops > 0), key=lambda c: c.head_flops)
    early, late = weighted[0], weighted[-1]
    limit = (early.head_flops + late.head_flops) / 2 / late.total_flops
    argv = _plan(digits, tmp_path / "p", "--calibration", str(digits.samples), "--quantize", "int8", "--hold-all")
    assert main([*argv, "--max-device-share", f"flops:{limit}", "--progress"]) == 0
    plan = load_plan(tmp_path / "p", check_files=("device", "server"))
    evaluated = plan.profiles["evaluated"]
    assert late.id in evaluated["refused_by_device_share"] and plan.local is None  # the whole model is over it
    assert {o.cut_id for o in plan.split_options} == {"image", early.id}  # no int8 head of a refused cut either
    assert {o.id for o in plan.split_options if o.precision == "int8"} == {
        f"split:{early.id}:{codec}:int8head" for codec in ("fp32", "int8")
    }
    # one progress step per (cut, codec), the int8 head weighed with its fp32 twin
    frames = [f for f in capsys.readouterr().err.split("\r") if f.strip()]
    assert len(frames) == 2 * 2 and "ETA" in frames[0] and "4/4" in frames[-1]
    # the device runs every head as a chain: fp32 heads over the fp32 segments, int8 heads over the int8 ones
    images, _ = load_digits_test()
    full = ort.InferenceSession(str(digits_main_path()), providers=["CPUExecutionProvider"])
    files = SessionPool(plan.path, SessionSettings())
    for option in plan.split_options:
        tail = ort.InferenceSession(
            str(plan.path(f"server/{option.tail_model}/1/model.onnx")), providers=["CPUExecutionProvider"]
        )
        head = files.chain(option.id, option.head)
        agree = []
        for image in images[:40]:
            values = head.run({"image": image[None]})
            got = tail.run(None, {t.name: values[t.name] for t in option.wire})[0]
            agree.append(got.argmax() == full.run(None, {"image": image[None]})[0].argmax())
        assert np.mean(agree) >= 0.95, option.id
    report = (tmp_path / "p" / "report.md").read_text()
    unique = {f for o in plan.options for f, _ in o.device_files}
    assert f"Device part: {sum(plan.path(f).stat().st_size for f in unique) / 1e6:.3f} MB, each file once" in report


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bad_combinations_are_clear_errors(digits: Digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_plan(digits, tmp_path / "a", "--quantize", "int8")) == 2
    assert "--samples" in _one_line_error(capsys)
    # a device profile without int8 timings (the server's here) cannot price int8 heads
    argv = ["plan", str(digits_main_path()), "--device", str(digits.server), "--server", str(digits.server)]
    argv += ["-o", str(tmp_path / "b"), "--codecs", "fp32,int8", "--calibration", str(digits.samples)]
    assert main([*argv, "--quantize", "int8"]) == 2
    assert "profile --quantize int8" in _one_line_error(capsys)
    with pytest.raises(SystemExit) as exit_info:
        main(_plan(digits, tmp_path / "c", "--quantize", "int4"))
    assert exit_info.value.code == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _split(option_id: str, accuracy: float, head_seconds: float, precision: str = "fp32", size: int = 1000) -> Option:
    cut = option_id.split(":")[1]
    return Option(
        id=option_id,
        kind="split",
        cut_id=cut,
        codec="fp32",
        head="h",
        tail_model="t",
        wire_bytes=size,
        head_seconds=head_seconds,
        tail_seconds=0.001,
        accuracy=accuracy,
        precision=precision,
    )


def test_the_accuracy_floor_keeps_a_costly_int8_head_out() -> None:
    offload = _split("split:x:fp32", 1.0, 0.0, size=1_000_000)  # the input is large: the cut pays somewhere
    fp32 = _split("split:c1:fp32", 1.0, 0.010)
    int8 = _split("split:c1:fp32:int8head", 0.95, 0.002, "int8")
    held = select_candidates([offload, fp32, int8], full_offload={offload.id}, min_accuracy=0.99)
    assert int8 not in held and fp32 in held
    held = select_candidates([offload, fp32, int8], full_offload={offload.id}, min_accuracy=0.9)
    assert int8 in held  # faster everywhere, within the floor: it replaces its fp32 twin
    assert fp32 not in held


def _fallback(precision: str, accuracy: float, seconds: float) -> _Fallback:
    option = Option(id="fallback", kind="fallback", seconds=seconds, accuracy=accuracy, precision=precision)
    return _Fallback(option, None)  # type: ignore[arg-type]


def test_the_int8_fallback_is_held_only_when_as_accurate_and_no_slower() -> None:
    fp32 = _fallback("fp32", 0.90, 0.010)
    assert _choose_fallback([fp32, _fallback("int8", 0.895, 0.004)], 0.01).option.precision == "int8"  # type: ignore[union-attr]
    assert _choose_fallback([fp32, _fallback("int8", 0.85, 0.004)], 0.01) is fp32
    assert _choose_fallback([fp32, _fallback("int8", 0.90, 0.020)], 0.01) is fp32
    assert _choose_fallback([fp32], 0.01) is fp32 and _choose_fallback([], 0.01) is None
