"""splitinf bench: the CPU limit, the pure summaries, the echo yardstick, and real end-to-end runs.

The end-to-end tests run the real harness: a device worker process (inside a cgroup CPU quota
when this machine allows one), a real `splitinf serve` subprocess, the FaultProxy link, the
planner's CLI. They check that the outputs exist, parse and agree with each other and with
physics (every remote call pays the emulated RTT; fewer bits per second means slower
transfers), never absolute speeds.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import onnx
import pytest

from splitinf.cli import main
from splitinf.contract.plan import load_plan
from splitinf.errors import UsageError
from splitinf.offline.graph import enumerate_cuts, load_model
from splitinf.tools.bench import (
    bench_markdown,
    bench_svg,
    choose_cuts,
    create_cpu_cgroup,
    detect_cgroup_version,
    quick_config,
    run_bench,
    summarise,
    summarise_cell,
)
from splitinf.tools.bench.echo import EchoClient, echo_payload, start_echo_server
from splitinf.tools.models import digits_main_path


def _cgroup_usable() -> bool:
    try:
        group = create_cpu_cgroup(0.5)
    except UsageError:
        return False
    group.remove()
    return True


CGROUP = _cgroup_usable()


# --- the CPU limit ------------------------------------------------------------------------------


def test_cgroup_v1_files_get_quota_and_period(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    group = create_cpu_cgroup(0.25, 20_000, root=tmp_path, name="g")
    assert detect_cgroup_version(tmp_path) == 1
    assert (tmp_path / "cpu" / "g" / "cpu.cfs_quota_us").read_text() == "5000"
    assert (tmp_path / "cpu" / "g" / "cpu.cfs_period_us").read_text() == "20000"
    assert group.cpus == 0.25
    assert group.describe()["files"] == {"cpu.cfs_quota_us": 5000, "cpu.cfs_period_us": 20000}


def test_cgroup_v2_enables_the_controller_and_writes_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io memory\n")
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    group = create_cpu_cgroup(1.5, 10_000, root=tmp_path, name="g")
    assert group.version == 2
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (tmp_path / "g" / "cpu.max").read_text() == "15000 10000"


def test_no_cpu_controller_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--no-cpu-limit"):
        create_cpu_cgroup(0.5, root=tmp_path)


@pytest.mark.parametrize("cpus, period", [(0.0, 10_000), (-1.0, 10_000), (0.5, 10)])
def test_bad_quota_settings_are_refused(tmp_path: Path, cpus: float, period: int) -> None:
    with pytest.raises(UsageError, match="must be"):
        create_cpu_cgroup(cpus, period, root=tmp_path)


@pytest.mark.skipif(not CGROUP, reason="needs root and a cgroup cpu controller")
def test_real_cgroup_is_created_and_removed() -> None:
    group = create_cpu_cgroup(0.5, 10_000)
    try:
        assert group.path.is_dir()
        assert group.members() == []
    finally:
        assert group.remove()
    assert not group.path.exists()


# --- pure pieces --------------------------------------------------------------------------------


def test_summarise_medians_and_p90() -> None:
    samples = [{"total_s": float(i), "call_s": float(i) / 2, "server_s": 0.1} for i in range(1, 11)]
    stats = summarise(samples)
    assert stats is not None
    assert stats["n"] == 10
    assert stats["median_s"] == pytest.approx(5.5)
    assert stats["p90_s"] == pytest.approx(9.1)
    assert stats["network_median_s"] == pytest.approx(2.75 - 0.1)
    assert summarise([]) is None


def test_summarise_cell_picks_remote_and_best_from_measurements() -> None:
    def stats(median: float) -> dict[str, Any]:
        return {"median_s": median, "p90_s": median}

    options: dict[str, dict[str, Any]] = {
        "split:in:fp32": {"stats": stats(0.5)},
        "split:in:int8": {"stats": stats(0.3)},
        "split:mid:fp16": {"stats": stats(0.2)},
        "split:late:fp32": {"stats": None},
    }
    cell = summarise_cell(
        options, stats(0.4), planned_id="split:in:int8", full_offload_ids=["split:in:fp32", "split:in:int8"]
    )
    assert cell["remote"]["option"] == "split:in:int8"
    assert cell["best"]["option"] == "split:mid:fp16"
    assert cell["planned"]["stats"]["median_s"] == 0.3
    assert cell["local"]["stats"]["median_s"] == 0.4


def test_choose_cuts_starts_at_the_input_and_stops_before_the_outputs() -> None:
    model = load_model(digits_main_path())
    cuts = enumerate_cuts(model)
    chosen = choose_cuts(cuts, 3)
    ids = [c.id for c in cuts]
    assert chosen[0] == cuts[0].id
    assert cuts[-1].id not in chosen
    assert len(chosen) == 3
    assert chosen == sorted(chosen, key=ids.index)
    # the smallest cut before the outputs is on the bytes frontier, so it is always a candidate
    smallest = min(cuts[1:-1], key=lambda c: (c.bytes_per_sample, ids.index(c.id)))
    assert smallest.id in chosen


def test_echo_answers_the_asked_number_of_bytes() -> None:
    assert echo_payload((5).to_bytes(8, "little") + b"ab") == b"ababa"
    assert echo_payload((2).to_bytes(8, "little") + b"abcdef") == b"ab"
    server, port = start_echo_server()
    client = EchoClient(f"127.0.0.1:{port}")
    try:
        assert client.round_trip(100_000, 3_000) > 0
    finally:
        client.close()
        server.stop(None)


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--bandwidths", "1,x"], "--bandwidths takes comma-separated numbers"),
        (["--rtts", "0"], "--rtts needs positive numbers"),
        (["--device-cpus", "0"], "--device-cpus must be > 0"),
        (["--budget-ms", "-5"], "--budget-ms must be > 0"),
        (["--requests", "1"], "--requests must be >= 3"),
        (["--model", "/nonexistent/model.onnx"], "neither resnet50, digits nor an existing ONNX file"),
        (["--link", "netns", "--quick"], "--link netns is not supported"),
    ],
)
def test_bad_flags_exit_2_with_a_message(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--out", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err


# --- end to end ---------------------------------------------------------------------------------


def _medians(cell: dict[str, Any]) -> dict[str, float]:
    return {k: v["stats"]["median_s"] for k, v in cell["options"].items() if v.get("stats")}


def test_quick_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    flags = ["bench", "--quick", *([] if CGROUP else ["--no-cpu-limit"]), "--out", str(out)]
    assert main(flags) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "bench.json").read_text())
    markdown = (out / "bench.md").read_text()
    svg = ET.fromstring((out / "bench.svg").read_text())  # well-formed SVG
    assert printed.startswith(markdown.splitlines()[0])
    assert f"Command: `splitinf {' '.join(flags)}`" in markdown

    limit = results["emulation"]["device"]["cpu_limit"]
    if CGROUP:
        assert limit["applied"] and limit["removed"] and limit["cpus"] == 0.5
        assert not Path(limit["path"]).exists()
        assert any(Path(limit["path"]).name in line for line in results["emulation"]["device"]["cgroups"])
        assert limit["cpu_stat"]["nr_periods"] > 0  # the quota was in force while the device ran
        assert "0.5 CPU via cgroup" in markdown
        assert "device: 0.5 CPU (cgroup v" in next(e.text or "" for e in svg.iter() if e.get("class") == "emulation")
    else:
        assert not limit["applied"] and "NO CPU limit" in markdown

    plan_ids = {o["id"] for o in results["plan"]["options"]}
    # predictions and "planned" come from the plan made again with the running server's tail times
    plan, offline = load_plan(results["plan"]["live_dir"]), load_plan(results["plan"]["dir"])
    live_profile = json.loads((Path(results["plan"]["dir"]).parent / "server_profile_live.json").read_text())
    assert live_profile["role"] == "server" and "as the running server measured them" in markdown
    tails = {o.id: o.tail_seconds for o in offline.split_options}
    assert {o.id for o in plan.split_options} == set(tails)
    assert any(o.tail_seconds != tails[o.id] for o in plan.split_options)  # not the offline profile's figures
    assert plan.budget_s == results["settings"]["budget_s"] == 0.25
    assert "the device's rule picks" in markdown and "within a 250 ms budget" in markdown
    local = results["local"]["stats"]
    assert local["network_median_s"] == 0 and local["request_bytes"] == 0  # local never touches the link
    assert len(results["grid"]) == len(results["settings"]["bandwidths_mbit"]) * len(results["settings"]["rtts_ms"])
    for cell in results["grid"]:
        rtt_s = cell["rtt_ms"] / 1e3
        medians = _medians(cell)
        assert medians, "every grid point measures at least one split option"
        for option_id, entry in cell["options"].items():
            assert option_id in plan_ids and entry["predicted_s"] > 0
            if entry["stats"]:
                assert entry["stats"]["min_s"] >= 0.95 * rtt_s  # each remote answer pays the emulated RTT
                assert entry["stats"]["request_bytes"] > 0
                assert not entry["errors"]
        summary = cell["summary"]
        assert summary["planned"]["option"] == cell["planned_option"] in plan_ids
        # planned is the device's rule within the bench's budget, the same function the policy calls
        rule = plan.planned(cell["bandwidth_mbit"] * 1e6, rtt_s, results["settings"]["budget_s"])
        assert rule is not None and (rule[0].id, rule[1]) == (cell["planned_option"], cell["planned_predicted_s"])
        assert summary["planned"]["stats"] is not None
        best = summary["best"]["stats"]["median_s"]
        assert best <= min([*medians.values(), local["median_s"]])
        assert summary["remote"]["option"] in results["plan"]["full_offload"]
        assert summary["local"]["stats"] == local
        assert f"| {cell['bandwidth_mbit']:g} | {cell['rtt_ms']:g} |" in markdown

    for case in results["overhead"]:
        assert case["request_bytes"] > 0 and case["v2_median_s"] > 0 and case["echo_median_s"] > 0
        assert len(case["v2_s"]) == len(case["echo_s"]) >= 10

    failover = results["failover"]
    assert "error" not in failover, failover
    assert failover["first_local_option"] == "fallback"
    assert failover["failover_s"] > 0 and failover["recovery_s"] > 0
    assert failover["outage_answers"] > 0 and failover["outage_split_answers"] == 0
    assert any(e["to"] == "fallback" for e in failover["events"]) and failover["events"][-1]["to"] == "split"

    points = [e for e in svg.iter("{http://www.w3.org/2000/svg}circle") if e.get("class") == "point"]
    assert len(points) == 4 * len(results["grid"])  # local, remote, planned, best at every point
    assert {p.get("data-strategy") for p in points} == {"local", "remote", "planned", "best"}

    levels = results["throughput"]["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2]
    assert all(lv["requests"] > 0 and lv["rps"] > 0 for lv in levels)
    assert "## Tail-server throughput" in markdown and "## Failover and recovery" in markdown


def test_remote_latency_grows_as_bandwidth_shrinks(tmp_path: Path) -> None:
    """A model with a big input and little compute (ResNet-50 at 1/16 width): sending the input
    at 10 Mbit/s must take longer than at 100 Mbit/s, and the extra time is on the network."""
    from splitinf.tools.models.resnet import build_resnet50

    model, fallback = tmp_path / "wide_input.onnx", tmp_path / "wide_input_fallback.onnx"
    onnx.save_model(build_resnet50(batch=1, num_classes=10, width=1 / 16), str(model))
    onnx.save_model(build_resnet50(batch=1, num_classes=10, width=1 / 32, seed=3), str(fallback))
    config = quick_config(
        tmp_path / "bench",
        model=str(model),
        fallback=str(fallback),
        bandwidths_mbit=(10.0, 100.0),
        rtts_ms=(2.0,),
        codecs=("fp32",),
        requests=3,
        max_cuts=2,
        calibration_samples=4,
        failover=False,
        concurrency=(1,),
        throughput_s=0.5,
        device_cpus=None,  # the unlimited path, said so in the outputs
        progress=False,
    )
    results = run_bench(config)
    assert results["emulation"]["device"]["cpu_limit"]["applied"] is False
    assert "**NO CPU limit**" in bench_markdown(results)
    assert any("WITHOUT a CPU limit" in note for note in results["notes"])
    slow, fast = sorted(results["grid"], key=lambda c: c["bandwidth_mbit"])
    remote_id = results["plan"]["full_offload"][0]
    slow_stats, fast_stats = slow["options"][remote_id]["stats"], fast["options"][remote_id]["stats"]
    assert slow_stats["request_bytes"] == fast_stats["request_bytes"] > 600_000
    assert slow_stats["median_s"] > fast_stats["median_s"]
    assert slow_stats["network_median_s"] > fast_stats["network_median_s"]
    assert slow["options"][remote_id]["predicted_s"] > fast["options"][remote_id]["predicted_s"]
    ET.fromstring(bench_svg(results))


def test_a_model_path_at_the_users_shape_and_an_opset_9_int8(tmp_path: Path) -> None:
    """`bench --model PATH --shape`: profiles and plan at that shape; int8 on an opset-9 model is converted
    (or skipped with a note), never a failed run."""
    from splitinf.tools.testing.graphs import dynamic_cnn

    model, out = tmp_path / "old.onnx", tmp_path / "bench"
    onnx.save_model(dynamic_cnn(opset=9), str(model))
    flags = ["bench", "--quick", *([] if CGROUP else ["--no-cpu-limit"]), "--model", str(model)]
    flags += ["--shape", "x=1x3x24x32", "--codecs", "fp32,int8", "--bandwidths", "100", "--requests", "3"]
    flags += ["--no-failover", "--out", str(out)]
    assert main(flags) == 0
    results = json.loads((out / "bench.json").read_text())
    assert "x float32[1,3,24,32]" in results["model"]["description"]
    assert "--shape x=1x3x24x32" in results["command"]
    for side in ("device", "server"):
        profile = json.loads(Path(results["profiles"][side]["path"]).read_text())
        assert profile["inputs"]["inputs"]["x"]["shape"] == [1, 3, 24, 32]
    plan = load_plan(results["plan"]["dir"])
    assert plan.inputs_at["inputs"]["x"]["shape"] == [1, 3, 24, 32]
    int8 = [o for o in plan.split_options if o.codec == "int8"]
    skipped = [n for n in results["notes"] if "codec int8 skipped" in n]
    assert int8 or skipped
    assert any(c["options"][o.id]["stats"] for c in results["grid"] for o in int8) or skipped
