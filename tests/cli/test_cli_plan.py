"""`splitinf plan`: the plan directory end to end from real profiles, and its refusals of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from splitinf.cli import main
from splitinf.contract.files import sha256_file, write_json_atomic
from splitinf.contract.plan import Option, content_addressed_name, expected_latency, load_plan
from splitinf.edge.chain import SessionPool
from splitinf.offline.profiling import profile_model
from splitinf.ort import SessionSettings
from splitinf.tools.testing import graphs as models

# The device profile is this machine's, slowed down by this factor: a stand-in for a Pi, so
# that splitting pays off somewhere on the grid.
DEVICE_SLOWDOWN = 500.0


@dataclass
class Setup:
    root: Path
    model: Path
    fallback: Path
    device: Path
    server: Path
    samples: Path
    full: onnx.ModelProto


def _fallback_model() -> onnx.ModelProto:
    """Same inputs and outputs as chain_cnn: GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(1)
    w = onnx.numpy_helper.from_array(rng.standard_normal((10, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _slow_down(profile: dict[str, Any], factor: float) -> dict[str, Any]:
    slowed = json.loads(json.dumps(profile))

    def scale(timing: dict[str, Any]) -> None:
        for key in ("median", "p90", "min"):
            timing[key] *= factor

    scale(slowed["model_seconds"])
    scale(slowed["fallback"]["seconds"])
    for cut in slowed["cuts"]:
        for codec in cut["codecs"].values():
            for part in ("head", "tail", "serialize", "deserialize"):
                scale(codec[part])
    return slowed


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("plan")
    full = models.chain_cnn()
    model_path = root / "chain.onnx"
    onnx.save_model(full, model_path)
    fallback_path = root / "small.onnx"
    onnx.save_model(_fallback_model(), fallback_path)
    profile = profile_model(
        full,
        name="chain",
        sha256=sha256_file(model_path),
        threads=1,
        codecs="fp32,fp16,int8",
        repeats=3,
        warmup=1,
        fallback=(_fallback_model(), "small", sha256_file(fallback_path)),
    )
    write_json_atomic(root / "server.json", profile)
    write_json_atomic(root / "device.json", _slow_down(profile, DEVICE_SLOWDOWN))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"x": x})[0].argmax(axis=1)
    labels[:4] = (labels[:4] + 1) % 10  # 4 of 16 wrong: the model's label accuracy is known
    np.savez(root / "samples.npz", x=x, labels=labels)
    return Setup(
        root, model_path, fallback_path, root / "device.json", root / "server.json", root / "samples.npz", full
    )


def _plan_args(s: Setup, out: Path, *extra: str) -> list[str]:
    return ["plan", str(s.model), "--device", str(s.device), "--server", str(s.server), "-o", str(out), *extra]


@pytest.fixture(scope="module")
def plan_dir(setup: Setup) -> Path:
    out = setup.root / "plandir"
    argv = _plan_args(
        setup, out, "--fallback", str(setup.fallback), "--calibration", str(setup.samples), "--codecs", "fp32,fp16,int8"
    )
    assert main(argv) == 0
    return out


def test_the_plan_loads_with_device_and_server_files_checked(plan_dir: Path, setup: Setup) -> None:
    plan = load_plan(plan_dir, check_files=("device", "server"))
    assert plan.model_sha256 == sha256_file(setup.model)
    assert [t.name for t in plan.inputs] == ["x"] and [t.name for t in plan.outputs] == ["y"]
    kinds = [o.kind for o in plan.options]
    assert kinds.count("local") == 1 and kinds.count("fallback") == 1
    assert any(o.cut_id == "x" for o in plan.split_options), "full offload must always be held"
    assert len({o.cut_id for o in plan.split_options if o.cut_id != "x"}) <= 4
    for option in plan.split_options:
        assert option.tail_sha256 is not None  # the tail is named after its content
        base = f"chain.{option.cut_id}.{option.codec}".replace("/", "_")
        assert option.tail_model == content_addressed_name(base, option.tail_sha256)
        manifest = json.loads((plan_dir / "server" / option.tail_model / "1" / "manifest.json").read_text())
        assert manifest["parts"]["tail"]["sha256"] == option.tail_sha256
        head_parts = [manifest["parts"][f"head.{i}"] for i in range(len(option.head))]
        assert [(p["file"], p["sha256"]) for p in head_parts] == list(option.device_files)
        assert manifest["codec"] == option.codec and manifest["source"]["sha256"] == plan.model_sha256
        assert manifest["cut"]["id"] == option.cut_id
        assert option.wire_bytes > 0 and option.head_seconds > 0 and option.tail_seconds > 0
        assert option.fidelity["calibration"]["samples"] == 12 and option.fidelity["held_out"]["samples"] == 4


def test_held_heads_and_tails_reproduce_the_full_model(plan_dir: Path, setup: Setup) -> None:
    plan = load_plan(plan_dir, check_files=("device", "server"))
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    full = ort.InferenceSession(str(setup.model), providers=["CPUExecutionProvider"])
    expected = full.run(None, {"x": x})[0]
    files = SessionPool(plan.path, SessionSettings())
    for option in plan.split_options:
        head = files.chain(option.id, option.head)
        tail_path = plan.path(f"server/{option.tail_model}/1/model.onnx")
        tail = ort.InferenceSession(str(tail_path), providers=["CPUExecutionProvider"])
        values = head.run({"x": x})
        wire = {t.name: values[t.name] for t in option.wire}
        assert [(w.name, w.dtype) for w in option.wire] == [(k, v.dtype.name) for k, v in wire.items()]
        assert sum(v.nbytes for v in wire.values()) == option.wire_bytes
        got = tail.run(None, wire)[0]
        tolerance = {"fp32": 1e-5, "fp16": 1e-2, "int8": 0.1}[option.codec or "fp32"]
        assert np.abs(got - expected).max() <= tolerance * max(np.abs(expected).max(), 1.0)
    local = plan.local
    assert local is not None
    assert [sha256_file(plan.path(f)) for f in local.model] == list(local.sha256)
    np.testing.assert_allclose(files.chain("local", local.model).run({"x": x})["y"], expected, rtol=1e-5, atol=1e-6)
    # each weight once: every segment is opened once however many heads run it, and the heads are prefixes
    # of the local model's chain (plus at most a codec graph)
    assert len(files) == len({f for o in plan.options if o.kind != "fallback" for f in o.device_files})
    for option in plan.split_options:
        segments = [f for f in option.head if f.startswith("device/segments/")]
        assert list(local.model[: len(segments)]) == segments and len(option.head) - len(segments) <= 1


def test_the_plan_matches_or_beats_sending_the_input_at_every_grid_point(plan_dir: Path) -> None:
    plan = load_plan(plan_dir)
    evaluated = plan.profiles["evaluated"]
    assert evaluated["options"] == len(evaluated["cuts"]) * 3
    offload = [o for o in plan.split_options if o.cut_id == "x"]
    not_held = [Option.from_json({**e, "kind": "split", "cut_id": "x", "head": "-", "tail_model": "-"})
                for e in evaluated["not_held"] if e["id"].startswith("split:x:")]  # fmt: skip
    held = plan.split_options + ((plan.local,) if plan.local else ())
    for bw in evaluated["grid"]["bandwidths_bps"]:
        for rtt in evaluated["grid"]["rtts_s"]:
            fastest_held = min(expected_latency(o, bw, rtt) for o in held)
            assert fastest_held <= min(expected_latency(o, bw, rtt) for o in offload + not_held)


def test_the_planned_option_is_the_device_rule_within_the_plan_budget(plan_dir: Path) -> None:
    plan = load_plan(plan_dir)
    assert plan.budget_s == 0.25  # the device's default, recorded in plan.json
    grid = plan.profiles["evaluated"]["grid"]
    for bw in grid["bandwidths_bps"]:
        for rtt in grid["rtts_s"]:
            planned = plan.planned(bw, rtt)
            assert planned is not None
            option, seconds = planned
            fitting = [o for o in plan.options if expected_latency(o, bw, rtt) <= plan.budget_s]
            if option.kind == "fallback" and seconds > plan.budget_s:
                assert not fitting
            else:
                assert seconds <= plan.budget_s
                assert all((o.accuracy or 0) <= (option.accuracy or 0) for o in fitting)
    # a slow device on a fast link splits; on a slow link with a long RTT it computes locally
    fast, slow = max(grid["bandwidths_bps"]), min(grid["bandwidths_bps"])
    assert plan.planned(fast, min(grid["rtts_s"]))[0].kind == "split"  # type: ignore[index]
    assert plan.planned(slow, max(grid["rtts_s"]))[0].kind == "local"  # type: ignore[index]


def test_accuracy_comes_from_labels_when_given(plan_dir: Path, setup: Setup) -> None:
    plan = load_plan(plan_dir)
    # labels of the 4 held-out samples (the last quarter) are the model's own: accuracy 1.0
    assert plan.local is not None and plan.local.accuracy == 1.0
    assert plan.fallback is not None and plan.fallback.accuracy is not None and plan.fallback.accuracy < 1.0
    assert plan.profiles["evaluated"]["accuracy"] == "labels"
    fp32 = [o for o in plan.split_options if o.codec == "fp32"]
    assert all(o.accuracy == 1.0 for o in fp32)


def test_the_report_has_a_table_and_a_chart_with_the_choice_marked(plan_dir: Path) -> None:
    plan = load_plan(plan_dir)
    report = (plan_dir / "report.md").read_text()
    for option in plan.options:
        assert f"`{option.id}`" in report
    assert "**planned**" in report and "## Planned option by network condition" in report and "## Codecs" in report
    assert "Decision table" not in report
    for entry in plan.profiles["evaluated"]["not_held"]:
        assert f"`{entry['id']}`" in report
    svg = ET.parse(plan_dir / "latency.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    lines = {p.get("data-option") for p in svg.iter(f"{ns}polyline")}
    assert lines == {o.id for o in plan.options}
    marked = {c.get("data-option") for c in svg.iter(f"{ns}circle")}
    thick = {p.get("data-option") for p in svg.iter(f"{ns}polyline") if p.get("class") == "planned"}
    assert marked and thick and thick <= marked <= {o.id for o in plan.options}
    assert {plan.planned(bw, 0.02)[0].id for bw in (1e6, 10e6, 100e6)} <= marked  # type: ignore[index]


def test_without_samples_the_plan_uses_random_inputs_and_refuses_int8(setup: Setup, tmp_path: Path) -> None:
    assert main(_plan_args(setup, tmp_path / "p", "--no-local", "--max-candidates", "1")) == 0
    plan = load_plan(tmp_path / "p", check_files=("device", "server"))
    assert plan.local is None and plan.fallback is None
    assert {o.codec for o in plan.split_options} <= {"fp32", "fp16"}
    assert len({o.cut_id for o in plan.split_options if o.cut_id != "x"}) <= 1
    assert plan.profiles["evaluated"]["samples"] == "random"
    assert main(_plan_args(setup, tmp_path / "q", "--codecs", "int8")) == 2


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_profile_of_another_model_is_refused(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = json.loads(setup.server.read_text())
    other["model"]["sha256"] = "0" * 64
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(other))
    argv = ["plan", str(setup.model), "--device", str(setup.device), "--server", str(bad), "-o", str(tmp_path / "p")]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert "server profile" in err and "sha256" in err and "splitinf profile" in err
    assert not (tmp_path / "p").exists()


def test_a_profile_missing_cuts_is_refused(setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    partial = json.loads(setup.server.read_text())
    dropped = partial["cuts"].pop(2)["id"]
    bad = tmp_path / "partial.json"
    bad.write_text(json.dumps(partial))
    argv = ["plan", str(setup.model), "--device", str(setup.device), "--server", str(bad), "-o", str(tmp_path / "p")]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert f"lacks cut {dropped}" in err


def test_a_fallback_with_other_inputs_or_outputs_is_refused(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.onnx"
    onnx.save_model(models.mlp(), wrong)
    assert main(_plan_args(setup, tmp_path / "p", "--fallback", str(wrong))) == 2
    err = _one_line_error(capsys)
    assert "fallback" in err and "inputs" in err and "same tensors" in err


def test_an_empty_calibration_set_is_refused(setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 3, 16, 16), np.float32))
    assert main(_plan_args(setup, tmp_path / "p", "--calibration", str(empty))) == 2
    err = _one_line_error(capsys)
    assert "empty.npz" in err and "are empty" in err


def test_an_existing_directory_that_is_not_a_plan_is_not_replaced(setup: Setup, tmp_path: Path) -> None:
    target = tmp_path / "keep"
    target.mkdir()
    (target / "precious.txt").write_text("mine")
    assert main(_plan_args(setup, target)) == 2
    assert (target / "precious.txt").read_text() == "mine"


def test_bad_input_from_the_command_line_is_one_line_without_traceback(setup: Setup, tmp_path: Path) -> None:
    other = json.loads(setup.device.read_text())
    other["model"]["sha256"] = "f" * 64
    bad = tmp_path / "dev.json"
    bad.write_text(json.dumps(other))
    argv = ["plan", str(setup.model), "--device", str(bad), "--server", str(setup.server), "-o", str(tmp_path / "p")]
    result = subprocess.run([sys.executable, "-m", "splitinf", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("splitinf plan: error: the device profile")
    assert len(result.stderr.strip().splitlines()) == 1


def test_hold_all_holds_every_evaluated_option_and_the_budget_is_recorded(
    setup: Setup, plan_dir: Path, tmp_path: Path
) -> None:
    argv = _plan_args(
        setup, tmp_path / "all", "--fallback", str(setup.fallback), "--calibration", str(setup.samples), "--hold-all"
    )
    assert main([*argv, "--budget-ms", "40"]) == 0
    capped, every = load_plan(plan_dir), load_plan(tmp_path / "all", check_files=("device", "server"))
    assert len(every.split_options) == every.profiles["evaluated"]["options"] > len(capped.split_options)
    assert {o.id for o in capped.split_options} <= {o.id for o in every.split_options}
    assert every.budget_s == pytest.approx(0.04)
    assert "budget 40 ms" in (tmp_path / "all" / "report.md").read_text()
    assert main([*argv, "--budget-ms", "0"]) == 2


def test_a_cut_of_graph_outputs_is_never_a_split_option(setup: Setup, tmp_path: Path) -> None:
    """Splitting at the outputs leaves the tail nothing to do: the local option plus a round trip."""
    from splitinf.offline.graph import enumerate_cuts

    output_cut = enumerate_cuts(setup.full)[-1]
    assert set(output_cut.names) == {o.name for o in setup.full.graph.output}
    argv = _plan_args(
        setup,
        tmp_path / "all",
        "--fallback",
        str(setup.fallback),
        "--calibration",
        str(setup.samples),
        "--hold-all",
        "--no-local",
    )
    assert main(argv) == 0
    every = load_plan(tmp_path / "all")
    held_cuts = {o.cut_id for o in every.split_options}
    assert output_cut.id not in held_cuts
    assert enumerate_cuts(setup.full)[0].id in held_cuts  # sending the input still is one


def test_samples_are_batch_slices_or_one_per_entry_and_mismatches_are_named(tmp_path: Path) -> None:
    from splitinf.contract.samples import read_samples
    from splitinf.contract.tensors import TensorSpec
    from splitinf.errors import InputError

    spec = (TensorSpec("x", "float32", ("N", 4)),)
    np.savez(tmp_path / "batch.npz", x=np.arange(12, dtype=np.float64).reshape(3, 4), labels=np.array([0, 1, 2]))
    samples, labels = read_samples(tmp_path / "batch.npz", spec)
    assert [s["x"].shape for s in samples] == [(1, 4)] * 3 and samples[2]["x"].dtype == np.float32
    assert labels is not None and labels.tolist() == [0, 1, 2]
    np.savez(tmp_path / "stacked.npz", x=np.zeros((2, 1, 4), np.float32))
    assert [s["x"].shape for s in read_samples(tmp_path / "stacked.npz", spec)[0]] == [(1, 4)] * 2
    np.savez(tmp_path / "wrong.npz", y=np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match=r"missing \['x'\]"):
        read_samples(tmp_path / "wrong.npz", spec)
    np.savez(tmp_path / "labels.npz", x=np.zeros((2, 4), np.float32), labels=np.array([1, 2, 3]))
    with pytest.raises(InputError, match="label"):
        read_samples(tmp_path / "labels.npz", spec)


def test_a_fallback_missing_from_the_device_profile_is_timed_here_and_says_so(setup: Setup, tmp_path: Path) -> None:
    device = json.loads(setup.device.read_text())
    del device["fallback"]
    bare = tmp_path / "device.json"
    bare.write_text(json.dumps(device))
    argv = ["plan", str(setup.model), "--device", str(bare), "--server", str(setup.server)]
    assert main([*argv, "--fallback", str(setup.fallback), "-o", str(tmp_path / "p")]) == 0
    fallback = load_plan(tmp_path / "p").fallback
    assert fallback is not None and fallback.seconds > 0
    assert "planning machine" in fallback.fidelity["seconds_source"]


def _shares(full: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    from splitinf.offline.graph import enumerate_cuts

    return {c.id: (c.head_flops / c.total_flops, c.head_params / c.total_params) for c in enumerate_cuts(full)}


@pytest.mark.parametrize(
    ("flags", "measure", "limit", "local"),
    [
        (["--max-device-share", "0.5"], 0, 0.5, False),
        (["--max-device-share", "params:0.3"], 1, 0.3, False),
        (["--no-local"], 1, 0.5, False),  # --no-local alone caps heads at half the parameters
        (["--no-local", "--max-device-share", "flops:0.9"], 0, 0.9, False),
        (["--max-device-share", "1"], 0, 1.0, True),
    ],
)
def test_the_device_share_caps_every_held_head(
    setup: Setup, tmp_path: Path, flags: list[str], measure: int, limit: float, local: bool
) -> None:
    out = tmp_path / "plan"
    assert (
        main(_plan_args(setup, out, "--fallback", str(setup.fallback), "--codecs", "fp32", "--hold-all", *flags)) == 0
    )
    plan = load_plan(out, check_files=("device", "server"))
    shares = _shares(setup.full)
    evaluated = plan.profiles["evaluated"]
    held = {o.cut_id for o in plan.split_options}
    assert held and all(shares[c][measure] <= limit for c in held if c is not None)
    refused = evaluated["refused_by_device_share"]
    assert all(share > limit for share in refused.values()) and all(shares[c][measure] > limit for c in refused)
    assert set(evaluated["cuts"]) | set(refused) >= {c for c, s in shares.items() if s[0] < 1.0} - {"y"}
    assert (plan.local is not None) is local
    if limit < 1.0:
        assert refused, "the chain model has cuts past any cap below 1: some must be refused"


@pytest.mark.parametrize("value", ["1.5", "0", "gpu:0.5", "half"])
def test_a_bad_device_share_is_a_usage_error(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    assert main(_plan_args(setup, tmp_path / "p", "--max-device-share", value)) == 2
    assert "--max-device-share" in _one_line_error(capsys)


def test_plan_progress_shows_each_option_with_an_eta_only_when_asked(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_plan_args(setup, tmp_path / "quiet", "--codecs", "fp32,fp16")) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal here
    assert main(_plan_args(setup, tmp_path / "shown", "--codecs", "fp32,fp16", "--progress")) == 0
    err = capsys.readouterr().err
    evaluated = load_plan(tmp_path / "shown").profiles["evaluated"]["options"]
    frames = [f for f in err.split("\r") if f.strip()]
    assert len(frames) == evaluated and err.endswith("\n")
    assert all("ETA" in f for f in frames[:-1]) and "elapsed" in frames[-1] and "ETA" not in frames[-1]
    assert f"{evaluated}/{evaluated} split:" in frames[-1]
