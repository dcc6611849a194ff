"""int8 heads as chains of int8 segments: each int8 weight on the device once, measured as the device runs it.

The shipped digits pair, profiled and planned for real (onnxruntime sessions, files on disk), at cuts
chosen so the chain has segments with weights (convolutions) and without (a Relu alone, a Flatten).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.contract.files import write_json_atomic
from splitinf.contract.plan import Option, Plan, load_plan
from splitinf.edge.config import DeviceConfig
from splitinf.edge.runtime import Runtime
from splitinf.errors import IntegrityError
from splitinf.offline.codecs import compare_outputs, label_accuracy, run_model
from splitinf.offline.device_share import DeviceShare
from splitinf.offline.graph import enumerate_cuts, load_model
from splitinf.offline.partition import save_model, split_model
from splitinf.offline.planner import plan_model
from splitinf.offline.profiling import profile_file
from splitinf.offline.quantize import quantize_model
from splitinf.tools.models import digits_fallback_path, digits_main_path, load_digits_test
from splitinf.tools.testing.device import FAST_POLICY

# the input, a convolution, a Relu alone (no weights), more convolutions, the pooling, a Flatten alone
CUT_INDICES = (0, 1, 2, 12, 19, 20)


@dataclasses.dataclass
class Digits:
    root: Path
    profile: Path
    calibration: Path
    held_out: Path
    cut_ids: list[str]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    root = tmp_path_factory.mktemp("int8-chain")
    cuts = enumerate_cuts(load_model(digits_main_path()))
    cut_ids = [cuts[i].id for i in CUT_INDICES]
    profile = root / "profile.json"
    profile_file(
        digits_main_path(),
        profile,
        cut_ids=cut_ids,
        codecs="fp32,int8",
        repeats=3,
        warmup=1,
        passes=1,
        fallback=digits_fallback_path(),
        quantize="int8",
    )
    images, labels = load_digits_test()
    np.savez(root / "calibration.npz", image=images[:120], labels=labels[:120])
    np.savez(root / "held_out.npz", image=images[120:180], labels=labels[120:180])
    return Digits(root, profile, root / "calibration.npz", root / "held_out.npz", cut_ids)


def _plan(digits: Digits, out: Path, profile: Path | None = None, **kwargs: Any) -> Plan:
    return plan_model(
        digits_main_path(),
        device_profile=profile or digits.profile,
        server_profile=digits.profile,
        output=out,
        fallback=digits_fallback_path(),
        calibration=digits.calibration,
        held_out=digits.held_out,
        codecs="fp32,int8",
        quantize="int8",
        include_local=False,  # no fp32 segments for the local model: those written are the fp32 heads'
        max_device_share=DeviceShare("params", 1.0),  # every cut, however deep
        **kwargs,
    )


@pytest.fixture(scope="module")
def all_held(digits: Digits) -> Plan:
    return _plan(digits, digits.root / "all", hold_all=True)


def _int8(plan: Plan) -> list[Any]:
    return [o for o in plan.split_options if o.precision == "int8"]


def _files_bytes(plan: Plan, files: set[str]) -> int:
    return sum(plan.path(f).stat().st_size for f in files)


def test_int8_heads_share_their_segments_each_written_once(digits: Digits, all_held: Plan) -> None:
    plan = all_held
    int8 = _int8(plan)
    assert {o.cut_id for o in int8} == set(digits.cut_ids[1:]) and {o.codec for o in int8} == {"fp32", "int8"}
    by_path: dict[str, set[str | None]] = {}
    for option in int8:
        for path, sha in option.device_files:
            by_path.setdefault(path, set()).add(sha)
    assert all(len(shas) == 1 for shas in by_path.values())  # a file is the same file in every head running it
    written = {str(p.relative_to(plan.root)) for p in (plan.root / "device/segments-int8").iterdir()}  # type: ignore[operator]
    assert written == {p for p in by_path if p.startswith("device/segments-int8/")}
    # one int8 segment per segment with weights; those without (the Relu, the Flatten) are the fp32 files
    assert len(written) == 3
    for option in int8:
        twin = plan.option(option.id.removesuffix(":int8head"))
        assert len(option.head) == len(twin.head)  # the same chain, segment for segment
        for mine, theirs in zip(option.head, twin.head, strict=True):
            assert mine == theirs or mine.startswith("device/segments-int8/")
    relu_cut = digits.cut_ids[2]
    relu_head = plan.option(f"split:{relu_cut}:fp32:int8head").head
    assert relu_head[-1] == plan.option(f"split:{relu_cut}:fp32").head[-1]  # the weightless Relu segment, shared
    # one cut, two wire codecs: the same int8 segments, then the codec graph (the fp32 twin's)
    for cut_id in digits.cut_ids[1:]:
        fp32_wire, int8_wire = (plan.option(f"split:{cut_id}:{codec}:int8head").head for codec in ("fp32", "int8"))
        assert int8_wire[:-1] == fp32_wire and int8_wire[-1] == plan.option(f"split:{cut_id}:int8").head[-1]
    # the device holds them in fewer bytes than whole int8 heads, one per option, would take
    model = load_model(digits_main_path())
    cuts = {c.id: c for c in enumerate_cuts(model)}
    images, _ = load_digits_test()
    calibration = [{"image": images[i : i + 1]} for i in range(120)]
    whole = {}
    for cut_id in digits.cut_ids[1:]:
        head = split_model(model, cuts[cut_id]).head
        whole[cut_id] = len(quantize_model(head, calibration).model.SerializeToString())
    held_bytes = _files_bytes(plan, {f for o in int8 for f in o.head})
    assert held_bytes < sum(whole[str(o.cut_id)] for o in int8)
    assert held_bytes < sum(whole.values())  # even against one whole int8 head per cut
    assert all(o.device_bytes == _files_bytes(plan, set(o.head)) for o in int8)


def test_an_int8_segment_replaces_its_fp32_twin_when_only_int8_heads_need_it(digits: Digits) -> None:
    # a device on which fp32 heads are far slower: the int8 heads win everywhere they are as accurate
    profile = json.loads(digits.profile.read_text())
    for cut in profile["cuts"][1:]:
        for timings in cut["codecs"].values():
            timings["head"] = {k: v * 50 if isinstance(v, float) else v for k, v in timings["head"].items()}
    slow = digits.root / "slow-fp32.json"
    slow.write_text(json.dumps(profile))
    plan = _plan(digits, digits.root / "int8-only", profile=slow, max_accuracy_drop=0.05)
    held_int8 = _int8(plan)
    assert held_int8 and all(o.cut_id == digits.cut_ids[0] for o in plan.split_options if o.precision == "fp32")
    assert plan.root is not None and not (plan.root / "device/segments").exists()  # no fp32 segment at all
    # the int8 chain only as deep as the deepest int8 head held, the weightless segments in it once
    files = sorted({f for o in held_int8 for f in o.head if f.startswith("device/segments-int8/")})
    assert sorted(str(p.relative_to(plan.root)) for p in (plan.root / "device/segments-int8").iterdir()) == files

    def int8_segments(option: Option) -> list[str]:
        return sorted(f for f in option.head if f.startswith("device/segments-int8/"))

    # the deepest by its segments: a codec graph makes a shallower head's file list as long
    assert files == max((int8_segments(o) for o in held_int8), key=len)
    report = (plan.root / "report.md").read_text()
    unique = {f for o in plan.options for f, _ in o.device_files}
    assert f"Device part: {_files_bytes(plan, unique) / 1e6:.3f} MB, each file once" in report


def _only(plan: Plan, option_id: str, target: Path) -> Path:
    """A copy of the plan holding one split option and the fallback."""
    assert plan.root is not None
    shutil.copytree(plan.root, target)
    data = json.loads((target / "plan.json").read_text())
    data["options"] = [o for o in data["options"] if o["id"] in (option_id, "fallback")]
    write_json_atomic(target / "plan.json", data)
    return target


def _answers(plan_dir: Path, option_id: str, images: np.ndarray) -> list[dict[str, np.ndarray]]:
    server, port = create_server(ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None))
    try:
        config = DeviceConfig(server=f"127.0.0.1:{port}", budget_s=5.0, policy=FAST_POLICY)
        with Runtime(plan_dir, config, background_probes=False) as runtime:
            results = [runtime.infer({"image": image[None]}) for image in images]
    finally:
        server.stop(grace=0)
    assert all(r.kind == "split" and r.option_id == option_id for r in results)
    return [dict(r.outputs) for r in results]


def test_the_runtime_runs_an_int8_chain_as_the_planner_measured_it(
    digits: Digits, all_held: Plan, tmp_path: Path
) -> None:
    # int8 segments and the weightless Relu segment (fp32, shared), then QuantizeLinear
    option = all_held.option(f"split:{digits.cut_ids[4]}:int8:int8head")
    assert len(option.head) == 5 and sum("segments-int8" in f for f in option.head) == 3
    plan_dir = _only(all_held, option.id, tmp_path / "plan")
    with np.load(digits.held_out) as data:
        images, labels = data["image"], data["labels"]
    got = _answers(plan_dir, option.id, images)
    recomputed = compare_outputs(run_model(load_model(digits_main_path()), [{"image": i[None]} for i in images]), got)
    measured = option.fidelity["held_out"]
    assert recomputed["top1_agreement"] == measured["top1_agreement"]
    for key in ("max_rel_error", "mean_rel_error"):
        assert recomputed[key] == pytest.approx(measured[key], rel=1e-3, abs=1e-6)
    assert option.accuracy == label_accuracy(got, labels)


def test_a_tampered_int8_segment_is_refused(all_held: Plan, tmp_path: Path) -> None:
    assert all_held.root is not None
    plan_dir = tmp_path / "plan"
    shutil.copytree(all_held.root, plan_dir)
    segment = next((plan_dir / "device/segments-int8").iterdir())
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_plan(plan_dir)
    with pytest.raises(IntegrityError, match=segment.name):
        Runtime(plan_dir, DeviceConfig(), background_probes=False)


def test_a_plan_with_a_single_file_int8_head_still_loads_and_answers(
    digits: Digits, all_held: Plan, tmp_path: Path
) -> None:
    cut_id = digits.cut_ids[3]
    option_id = f"split:{cut_id}:fp32:int8head"
    plan_dir = _only(all_held, option_id, tmp_path / "plan")
    # as plans wrote int8 heads before they were chains: the whole head quantized, one file in device/heads
    model = load_model(digits_main_path())
    images, _ = load_digits_test()
    head = split_model(model, next(c for c in enumerate_cuts(model) if c.id == cut_id)).head
    whole = quantize_model(head, [{"image": images[i : i + 1]} for i in range(60)]).model
    relative = f"device/heads/split-{cut_id}-fp32-int8head.onnx"
    data = json.loads((plan_dir / "plan.json").read_text())
    option = next(o for o in data["options"] if o["id"] == option_id)
    option.update(head=[relative], head_sha256=[save_model(whole, plan_dir / relative)])
    write_json_atomic(plan_dir / "plan.json", data)
    shutil.rmtree(plan_dir / "device/segments-int8")
    batch = images[200:240]
    got = _answers(plan_dir, option_id, batch)
    expected = run_model(model, [{"image": i[None]} for i in batch])
    assert compare_outputs(expected, got)["top1_agreement"] >= 0.95
