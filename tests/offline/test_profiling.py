"""Profiling: timing with warm-up and repeats, the profile file, and `splitinf profile`."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest

from splitinf.cli import main
from splitinf.cloud.config import ServerConfig
from splitinf.contract.files import sha256_file
from splitinf.errors import PlanError
from splitinf.offline.graph import enumerate_cuts
from splitinf.offline.profiling import (
    ProgressBar,
    Timing,
    check_role,
    journal_path,
    load_profile,
    machine_info,
    profile_file,
    profile_model,
    time_callable,
)
from splitinf.ort import SessionSettings, session_options
from splitinf.tools.testing import graphs as models


class FakeClock:
    def __init__(self, steps: list[float]) -> None:
        self.now = 0.0
        self.steps = iter(steps)

    def __call__(self) -> float:
        return self.now

    def advance(self) -> None:
        self.now += next(self.steps)


def test_time_callable_runs_warmup_untimed_then_summarises_repeats() -> None:
    clock = FakeClock([9.0, 9.0] + [float(s) for s in range(1, 11)])
    calls = []

    def work() -> None:
        calls.append(clock.now)
        clock.advance()

    timing = time_callable(work, repeats=10, warmup=2, clock=clock)
    assert len(calls) == 12
    assert timing == Timing(median=5.5, p90=pytest.approx(9.1), min=1.0, repeats=10)
    with pytest.raises(PlanError, match="repeats"):
        time_callable(work, repeats=0, warmup=0)


def test_each_item_keeps_its_quietest_pass() -> None:
    from splitinf.offline.profiling import _quietest

    busy, quiet = Timing(0.05, 0.09, 0.01, 5), Timing(0.02, 0.03, 0.015, 5)
    assert _quietest([busy, quiet]) == quiet and _quietest([quiet, busy]) == quiet


def test_progress_bar_draws_only_when_enabled() -> None:
    stream = io.StringIO()
    bar = ProgressBar(4, enabled=True, stream=stream, width=8)
    for k in range(4):
        bar.step(f"item {k}")
    text = stream.getvalue()
    assert "[##......] 1/4 item 0" in text and "[########] 4/4 item 3" in text and text.endswith("\n")
    assert "ETA" in text.split("\r")[1] and "ETA" not in text.split("\r")[-1]
    quiet = io.StringIO()
    ProgressBar(2, enabled=False, stream=quiet).step("x")
    assert quiet.getvalue() == ""


def test_progress_eta_is_the_parts_left_times_the_median_part() -> None:
    clock = FakeClock([1.0, 1.0, 100.0, 1.0])
    stream = io.StringIO()
    bar = ProgressBar(10, enabled=True, stream=stream, clock=clock)
    for _ in range(3):
        clock.advance()
        bar.step("part")
    # 3 steps of 1 s, 1 s and 100 s: the median (1 s) times the 7 left, not the mean (34 s)
    assert bar.eta_s() == 7.0
    assert stream.getvalue().rstrip().endswith("1m42s, ETA 0m07s")


def test_session_options_pin_the_thread_count() -> None:
    options = session_options(SessionSettings().with_threads(3))
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options(SessionSettings().with_threads(None)).intra_op_num_threads == 0


def test_machine_info_names_the_cpu() -> None:
    info = machine_info()
    assert info["cpu_count"] and info["cpu_model"] and info["platform"]


def test_profile_times_every_requested_cut_and_codec() -> None:
    model = models.chain_cnn()
    cut_ids = [c.id for c in enumerate_cuts(model)][:3]
    profile = profile_model(
        model,
        name="chain",
        sha256="abc",
        threads=1,
        cut_ids=cut_ids,
        codecs="fp32,fp16,int8",
        repeats=3,
        warmup=1,
        passes=2,
    )
    assert profile["settings"]["passes"] == 2
    assert profile["model"] == {"name": "chain", "sha256": "abc"}
    assert profile["onnxruntime"]["version"] == ort.__version__
    assert profile["onnxruntime"]["threads"] == 1
    assert profile["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    assert [c["id"] for c in profile["cuts"]] == cut_ids
    for cut in profile["cuts"]:
        assert set(cut["codecs"]) == {"fp32", "fp16", "int8"}
        fp32 = cut["codecs"]["fp32"]
        for part in ("head", "tail", "serialize", "deserialize"):
            timing = fp32[part]
            assert 0 <= timing["min"] <= timing["median"] <= timing["p90"] and timing["repeats"] == 3
        assert fp32["head"]["median"] > 0 and ("encode" in fp32) == (cut["id"] == cut_ids[0])  # input: a passthrough
        assert fp32["tail"]["median"] > 0
        assert cut["codecs"]["fp16"]["encode"]["median"] > 0 and cut["codecs"]["int8"]["decode"]["median"] > 0
        assert fp32["wire_bytes"] == cut["bytes"]
        assert cut["codecs"]["fp16"]["wire_bytes"] * 2 == fp32["wire_bytes"]
        assert cut["codecs"]["int8"]["wire_bytes"] * 4 == fp32["wire_bytes"]
    assert profile["model_seconds"]["median"] > 0


def test_a_pause_before_each_run_is_not_timed() -> None:
    clock = FakeClock([0.5, 1.0, 2.0])
    sleeps: list[float] = []

    def work() -> None:
        clock.advance()

    original = time.sleep
    try:
        time.sleep = sleeps.append  # type: ignore[assignment]
        timing = time_callable(work, repeats=2, warmup=1, clock=clock, pause_s=0.01)
    finally:
        time.sleep = original
    assert sleeps == [0.01, 0.01]  # before each timed run, not the warm-up
    assert (timing.min, timing.median) == (1.0, 1.5)


def test_profile_command_writes_a_loadable_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_path = tmp_path / "mlp.onnx"
    onnx.save_model(models.mlp(), model_path)
    small = tmp_path / "small.onnx"
    onnx.save_model(models.mlp(sizes=(16, 4)), small)
    out = tmp_path / "p.json"
    argv = ["profile", str(model_path), "-o", str(out), "--repeats", "2", "--warmup", "0", "--fallback", str(small)]
    assert main([*argv, "--threads", "1", "--codecs", "fp32,fp16"]) == 0
    profile = load_profile(out)
    assert profile["model"]["sha256"] == sha256_file(model_path)
    assert profile["fallback"]["sha256"] == sha256_file(small)
    assert profile["settings"]["codecs"] == ["fp32", "fp16"]
    assert len(profile["cuts"]) == len(enumerate_cuts(models.mlp()))
    assert "wrote" in capsys.readouterr().out


def test_profile_command_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_path = tmp_path / "mlp.onnx"
    onnx.save_model(models.mlp(), model_path)
    assert main(["profile", str(model_path), "-o", str(tmp_path / "p.json"), "--cuts", "no-such-cut"]) == 2
    err = capsys.readouterr().err
    assert "no-such-cut" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["profile", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "p.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["profile", str(model_path), "-o", str(tmp_path / "p.json"), "--codecs", "bf16"]) == 2
    assert "unknown codec" in capsys.readouterr().err
    assert main(["profile", str(model_path), "-o", str(tmp_path / "p.json"), "--pause-ms", "-1"]) == 2
    assert "pause" in capsys.readouterr().err


def test_load_profile_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist"):
        load_profile(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not readable JSON"):
        load_profile(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": 1}))
    with pytest.raises(PlanError, match="not a splitinf profile"):
        load_profile(other)


def _small_profile(role: str) -> tuple[dict[str, Any], list[list[str]]]:
    """A profile of a residual CNN, and the key of each part it timed (the part names without the pass)."""
    timed: list[str] = []
    profile = profile_model(
        models.residual_cnn(),
        name="res",
        sha256="abc",
        threads=1,
        codecs=("fp32", "fp16", "int8"),
        repeats=2,
        warmup=0,
        passes=1,
        role=role,
        on_part=timed.append,
        fallback=(models.chain_cnn(), "small", "f00"),
    )
    return profile, [json.loads(part)[1:] for part in timed]


def test_a_device_profile_times_only_what_runs_on_the_device() -> None:
    profile, timed = _small_profile("device")
    assert profile["role"] == "device" and "fallback" in profile
    assert {"model", "segment", "check", "fallback"} <= {key[0] for key in timed}
    kinds = {key[-1] for key in timed}
    assert not kinds & {"decode", "deserialize", "tail"}
    for cut in profile["cuts"]:
        for codec, entry in cut["codecs"].items():
            assert {"head", "serialize", "wire_bytes"} <= set(entry) and not {"tail", "deserialize"} & set(entry)
            assert ("encode" in entry) == (codec != "fp32" or cut is profile["cuts"][0])
    assert all(p["part"] == "head" for p in profile["check"]["parts"])


def test_a_server_profile_times_only_the_tails() -> None:
    profile, timed = _small_profile("server")
    assert profile["role"] == "server" and "fallback" not in profile and ["fallback"] not in timed
    kinds = {key[-1] for key in timed}
    assert not kinds & {"encode", "serialize", "head"}
    for cut in profile["cuts"]:
        for codec, entry in cut["codecs"].items():
            assert {"tail", "deserialize", "wire_bytes"} <= set(entry) and not {"head", "serialize"} & set(entry)
            assert ("decode" in entry) == (codec != "fp32")
    check = profile["check"]
    assert check["parts"] and all(p["part"] == "tail" for p in check["parts"])
    assert all({"whole", "summed", "error", "held_out_error"} <= set(p) for p in check["parts"])
    # timed as `splitinf serve` runs tails (its default config), not with the device runtime's settings
    assert profile["onnxruntime"]["memory_arena"] == ServerConfig(repo=Path(".")).memory_arena is False
    assert _small_profile("device")[0]["onnxruntime"]["memory_arena"] is True


def test_the_server_role_opens_its_sessions_with_the_serving_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import splitinf.offline.sessions as sessions

    opened: list[SessionSettings] = []
    real = sessions.open_session

    def spy(data: Any, settings: SessionSettings) -> Any:
        opened.append(settings)
        return real(data, settings)

    monkeypatch.setattr(sessions, "open_session", spy)
    _small_profile("server")
    assert opened and all(s.memory_arena is False and not s.spinning for s in opened)


def test_heads_are_segment_sums_anchored_on_the_whole_model() -> None:
    profile, _ = _small_profile("both")
    segments = profile["segments"]
    assert len(segments) >= 3 and all(s["seconds"]["median"] > 0 for s in segments)
    cuts = profile["cuts"]
    last = cuts[-1]["codecs"]["fp32"]
    # the head through every segment is scaled to the full model it runs (or to a longer check head, if noise
    # made one slower: a head is never faster than one it contains)
    model = profile["model_seconds"]["median"]
    assert last["head"]["median"] >= model * (1 - 1e-9) and cuts[0]["codecs"]["fp32"]["tail"]["median"] >= model * (
        1 - 1e-9
    )
    heads = [c["codecs"]["fp32"]["head"]["median"] for c in cuts[1:]]
    tails = [c["codecs"]["fp32"]["tail"]["median"] for c in cuts]
    assert heads == sorted(heads) and tails == sorted(tails, reverse=True)


def test_a_part_timed_whole_is_its_own_timing_not_a_scaled_sum() -> None:
    profile, _ = _small_profile("both")
    by_id = {c["id"]: c["codecs"]["fp32"] for c in profile["cuts"]}
    checked = [p for p in profile["check"]["parts"] if p["part"] == "head"]
    assert checked, "the residual CNN has cuts to check"
    order = [c["id"] for c in profile["cuts"]]  # chain order: each head contains the ones before it
    for part in checked:  # the whole head's fastest run, where a scaled sum would interpolate between anchors,
        before = by_id[order[order.index(part["cut"]) - 1]]["head"]["min"]  # unless a head it contains was slower
        assert by_id[part["cut"]]["head"]["min"] == pytest.approx(max(part["whole"], before), rel=1e-12)
    first_segment = profile["segments"][0]  # the head at its end is that segment alone
    assert first_segment["end"] not in {p["cut"] for p in checked}
    assert by_id[first_segment["end"]]["head"]["median"] == pytest.approx(first_segment["seconds"]["median"], rel=1e-12)


def test_an_interrupted_profile_resumes_timing_only_the_parts_left(tmp_path: Path) -> None:
    model_path = tmp_path / "res.onnx"
    onnx.save_model(models.residual_cnn(), model_path)
    out = tmp_path / "p.json"
    args = {"threads": 1, "codecs": "fp32,fp16", "repeats": 2, "warmup": 0, "passes": 2}
    first: list[str] = []

    def crash_after_seven(part: str) -> None:
        first.append(part)
        if len(first) == 7:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        profile_file(model_path, out, on_part=crash_after_seven, **args)  # type: ignore[arg-type]
    journal = journal_path(out)
    assert not out.exists() and len(journal.read_text().splitlines()) == 1 + 7
    with journal.open("a") as torn:
        torn.write('{"part": "[1, "segm')  # a line cut short by the crash
    second: list[str] = []
    profile = profile_file(model_path, out, on_part=second.append, **args)  # type: ignore[arg-type]
    assert profile["resumed_parts"] == 7
    assert not set(first) & set(second) and len(second) > 7
    assert load_profile(out)["cuts"] and not journal.exists()
    everything: list[str] = []
    profile_file(model_path, out, on_part=everything.append, **args)  # type: ignore[arg-type]
    assert sorted(everything) == sorted(first + second)


def test_a_journal_of_other_settings_is_not_resumed(tmp_path: Path) -> None:
    model_path = tmp_path / "res.onnx"
    onnx.save_model(models.residual_cnn(), model_path)
    out = tmp_path / "p.json"
    counted: list[str] = []

    def crash_after_three(part: str) -> None:
        counted.append(part)
        if len(counted) == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        profile_file(model_path, out, threads=1, codecs="fp32", repeats=2, warmup=0, on_part=crash_after_three)
    profile = profile_file(model_path, out, threads=1, codecs="fp32", repeats=3, warmup=0)
    assert profile["resumed_parts"] == 0 and profile["settings"]["repeats"] == 3


def test_plan_takes_role_profiles_and_refuses_them_swapped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_path = tmp_path / "res.onnx"
    onnx.save_model(models.residual_cnn(), model_path)
    common = ["--threads", "1", "--codecs", "fp32,fp16", "--repeats", "2", "--warmup", "0", "--passes", "1"]
    for role in ("device", "server"):
        assert main(["profile", str(model_path), "-o", str(tmp_path / f"{role}.json"), "--role", role, *common]) == 0
    assert "(device role)" in capsys.readouterr().out
    plan = ["plan", str(model_path), "--codecs", "fp32,fp16"]
    device, server = str(tmp_path / "device.json"), str(tmp_path / "server.json")
    assert main([*plan, "--device", device, "--server", server, "-o", str(tmp_path / "plan")]) == 0
    assert main([*plan, "--device", server, "--server", device, "-o", str(tmp_path / "swapped")]) == 2
    err = capsys.readouterr().err
    assert "--role server" in err and "give it as --server" in err and "Traceback" not in err
    with pytest.raises(PlanError, match="role"):
        check_role({"role": "device"}, role="server", source="p.json")
    check_role({}, role="server", source="old.json")  # format 1, from before roles: it timed both sides


def test_ctrl_c_keeps_the_parts_and_the_same_command_resumes(tmp_path: Path) -> None:
    model_path = tmp_path / "res.onnx"
    onnx.save_model(models.residual_cnn(), model_path)
    out = tmp_path / "p.json"
    command = [sys.executable, "-m", "splitinf", "profile", str(model_path), "-o", str(out), "--threads", "1",
               "--codecs", "fp32", "--repeats", "300", "--warmup", "0", "--passes", "1"]  # fmt: skip
    journal = journal_path(out)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not (journal.is_file() and len(journal.read_text().splitlines()) >= 4):
        assert child.poll() is None and time.monotonic() < deadline, "no parts were journaled"
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    if child.returncode == 0:
        pytest.skip("the profile finished before the interrupt landed")
    assert child.returncode == 130 and "Traceback" not in err
    assert "rerun the same command to resume" in err and str(journal) in err
    kept = len(journal.read_text().splitlines()) - 1
    assert kept >= 3 and not out.exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True, env=env)
    assert f"{kept} parts resumed" in resumed.stdout and load_profile(out)["resumed_parts"] == kept


def test_a_cut_off_the_chain_is_named_in_the_notes() -> None:
    # two branches: neither head contains the other, so one's head cannot be a sum of chain segments
    cut_ids = ["relu_0+relu_4", "relu_0+relu_1"]
    profile = profile_model(
        models.inception_block(), name="inc", sha256="abc", threads=1, cut_ids=cut_ids, codecs=("fp32",),
        repeats=1, warmup=0, passes=1, role="device", inputs=None,
    )  # fmt: skip
    off_chain = [note for note in profile["notes"] if "not a prefix of the chain" in note]
    assert len(off_chain) == 1 and cut_ids[1] in off_chain[0]


def test_quantize_int8_times_the_int8_twins_of_heads_with_weights_and_of_the_fallback() -> None:
    profile = profile_model(
        models.residual_cnn(), name="res", sha256="abc", threads=1, codecs=("fp32", "fp16"), repeats=2, warmup=0,
        passes=1, role="device", quantize="int8", fallback=(models.chain_cnn(), "small", "f00"),
    )  # fmt: skip
    assert profile["settings"]["quantize"] == "int8" and profile["fallback"]["int8_seconds"]["median"] > 0
    first, *rest = profile["cuts"]
    assert all("int8_head" not in entry for entry in first["codecs"].values())  # the input cut: no weights
    for cut in rest:
        for entry in cut["codecs"].values():
            assert entry["int8_head"]["median"] > 0
    assert any(p["part"] == "int8_head" for p in profile["check"]["parts"])
    plain, _ = _small_profile("device")
    assert all("int8_head" not in e for c in plain["cuts"] for e in c["codecs"].values())
    assert "int8_seconds" not in plain["fallback"]
