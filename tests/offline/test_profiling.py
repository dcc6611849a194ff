"""Profiling: timing with warm-up and repeats, the profile file, and `splitinf profile`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from splitinf.cli import main
from splitinf.contract.files import sha256_file
from splitinf.errors import PlanError
from splitinf.offline.graph import enumerate_cuts
from splitinf.offline.profiling import (
    ProgressBar,
    Timing,
    load_profile,
    machine_info,
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
    quiet = io.StringIO()
    ProgressBar(2, enabled=False, stream=quiet).step("x")
    assert quiet.getvalue() == ""


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
            assert 0 < timing["min"] <= timing["median"] <= timing["p90"] and timing["repeats"] == 3
        assert fp32["wire_bytes"] == cut["bytes"]
        assert cut["codecs"]["fp16"]["wire_bytes"] * 2 == fp32["wire_bytes"]
        assert cut["codecs"]["int8"]["wire_bytes"] * 4 == fp32["wire_bytes"]
    assert profile["model_seconds"]["median"] > 0


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


def test_progress_bar_eta_is_the_mean_step_time_times_the_steps_left() -> None:
    now = [100.0]
    stream = io.StringIO()
    bar = ProgressBar(5, enabled=True, stream=stream, clock=lambda: now[0])
    now[0] += 20.0
    bar.step("a")
    now[0] += 40.0
    bar.step("b")  # 60 s for 2 steps: 30 s each, 3 left
    assert bar.eta_s() == pytest.approx(90.0)
    assert stream.getvalue().endswith("1m00s elapsed, ETA 1m30s")
