"""cuts, split --verify and profile on real third-party graphs, at the user's shapes and samples
(issue 13): silero-vad (recurrent, rejects random inputs), PP-OCRv4 detection (dynamic image size)
and a BERT-style encoder (int64 inputs, dynamic sequence)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from splitinf.cli import main
from splitinf.contract.plan import load_plan
from splitinf.offline.graph import GraphView, load_model
from splitinf.offline.profiling import load_profile

FAST_PROFILE = ["--repeats", "2", "--warmup", "0", "--passes", "1"]


def cuts_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["cuts", *argv, "--json"]) == 0
    listed: dict[str, Any] = json.loads(capsys.readouterr().out)
    return listed


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"splitinf {command}:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def split_the_middle_cut(
    capsys: pytest.CaptureFixture[str], model: Path, samples: Path, tmp_path: Path, expect_sets: int
) -> tuple[list[str], str]:
    """List the cuts at the samples, split at the middle one verified on the samples; (ids, middle id)."""
    ids = [c["id"] for c in cuts_json(capsys, str(model), "--samples", str(samples))["cuts"]]
    middle = ids[len(ids) // 2]
    assert main(["split", str(model), "--cut", middle, "-o", str(tmp_path / "p"), "--samples", str(samples)]) == 0
    assert f"verified on {expect_sets} input sets: max abs error 0" in capsys.readouterr().out
    return ids, middle


# ----------------------------------------------------------------------------- silero-vad


def test_silero_cuts_at_the_samples_and_the_if_named(
    silero_vad: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, samples = silero_vad
    listed = cuts_json(capsys, str(model), "--samples", str(samples))
    assert listed["inputs"]["source"] == "samples"
    assert listed["inputs"]["inputs"]["input"]["shape"] == [1, 512]
    ids = [c["id"] for c in listed["cuts"]]
    assert ids[0] == "input+sr+state" and ids[-1] == "output+stateN" and len(ids) == 5
    assert listed["cuts"][0]["bytes"] == 512 * 4 + 2 * 128 * 4 + 8
    assert listed["cuts"][-1]["bytes"] == 4 + 2 * 128 * 4  # the recurrent state goes back to the device
    assert any("If node" in reason for reason in listed["uncuttable"])


def test_silero_split_verifies_on_the_samples_only(
    silero_vad: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, samples = silero_vad
    argv = ["split", str(model), "--cut", "If_0_outputs_0+If_0_outputs_1", "-o", str(tmp_path / "p")]
    assert main([*argv, "--verify", "--samples", str(samples)]) == 0
    assert "verified on 4 input sets" in capsys.readouterr().out
    # its own random inputs crash the model (Pad reflect needs >= 2 samples): one line, exit 2
    assert main([*argv, "--verify"]) == 2
    line = one_line_error(capsys, "split")
    assert "Pad reflect" in line and "input float32[2,1]" in line and "--samples" in line


def test_silero_profile_on_the_samples(
    silero_vad: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, samples = silero_vad
    out = tmp_path / "profile.json"
    cuts = "input+sr+state,If_0_outputs_0+If_0_outputs_1"
    argv = ["profile", str(model), "-o", str(out), "--cuts", cuts, "--codecs", "fp32,int8", *FAST_PROFILE]
    assert main([*argv, "--samples", str(samples)]) == 0
    profile = load_profile(out)
    assert profile["inputs"]["inputs"]["input"]["shape"] == [1, 512]
    assert [set(c["codecs"]) for c in profile["cuts"]] == [{"fp32", "int8"}] * 2
    assert main(argv) == 2  # no samples: random inputs, which it rejects
    assert "give real inputs with --samples" in one_line_error(capsys, "profile")


# ----------------------------------------------------------------------------- PP-OCRv4 detection


def test_detector_bytes_and_flops_are_at_the_users_image_size(
    ocr_detector: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = ocr_detector
    at_size = cuts_json(capsys, str(model), "--shape", "x=1x3x320x448")
    at_one = cuts_json(capsys, str(model))  # dynamic dims 1, with a warning
    assert at_size["cuts"][0]["bytes"] == 3 * 320 * 448 * 4 and at_one["cuts"][0]["bytes"] == 3 * 4
    assert at_size["cuts"][0]["total_flops"] > 1e9 > 1e7 > at_one["cuts"][0]["total_flops"]
    # the walk keeps live sets small at the real sizes, so the cuts in between may differ with the size
    assert (
        [c["id"] for c in at_size["cuts"][::330]]
        == [c["id"] for c in at_one["cuts"][::330]]
        == ["x", "sigmoid_0.tmp_0"]
    )
    assert at_size["uncuttable"] == []


def test_detector_split_verify_and_profile_at_the_users_inputs(
    ocr_detector: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, samples = ocr_detector
    ids, middle = split_the_middle_cut(capsys, model, samples, tmp_path, expect_sets=2)
    out = tmp_path / "profile.json"
    argv = ["profile", str(model), "-o", str(out), "--cuts", f"{ids[0]},{middle}", "--codecs", "fp32,int8"]
    assert main([*argv, *FAST_PROFILE, "--shape", "x=1x3x64x96"]) == 0
    profile = load_profile(out)
    assert profile["inputs"] == {"source": "shapes", "inputs": {"x": {"dtype": "float32", "shape": [1, 3, 64, 96]}}}
    assert profile["cuts"][0]["bytes"] == 3 * 64 * 96 * 4
    assert profile["cuts"][0]["codecs"]["int8"]["wire_bytes"] == 3 * 64 * 96


def test_recognizer_cuts_after_the_reshape_that_static_inference_loses(
    ocr_recognizer: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, samples = ocr_recognizer
    static = GraphView(load_model(model))
    static_cuts = static.cuts()
    assert "no known type or shape after static shape inference" in static.uncuttable()[0]
    listed = cuts_json(capsys, str(model), "--samples", str(samples))
    assert listed["uncuttable"] == [] and len(listed["cuts"]) > len(static_cuts) + 100
    last_static = max(c.head_nodes for c in static_cuts if c.head_nodes < c.total_nodes)
    late = [c for c in listed["cuts"] if last_static < c["head_nodes"] < c["total_nodes"]]
    assert late and late[0]["head_flops"] < 0.99 * late[0]["total_flops"]  # the tail's MatMuls are counted
    cut = late[len(late) // 2]["id"]
    assert main(["split", str(model), "--cut", cut, "-o", str(tmp_path / "p"), "--samples", str(samples)]) == 0
    assert "verified on 2 input sets: max abs error 0" in capsys.readouterr().out


# ----------------------------------------------------------------------------- BERT-style encoder


def test_bert_cuts_count_tokens_at_the_samples_sequence(
    bert_like: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, samples = bert_like
    listed = cuts_json(capsys, str(model), "--samples", str(samples))
    first = listed["cuts"][0]
    assert first["id"] == "attention_mask+input_ids" and first["bytes"] == 2 * 128 * 8
    by_shape = cuts_json(capsys, str(model), "--shape", "input_ids=1x128", "--shape", "attention_mask=1x128")
    assert by_shape["cuts"][0]["total_flops"] == first["total_flops"]
    short = cuts_json(capsys, str(model), "--shape", "input_ids=1x1", "--shape", "attention_mask=1x1")
    assert first["total_flops"] > 100 * short["cuts"][0]["total_flops"]


def test_bert_split_verify_and_profile_on_samples_with_no_codec_on_token_ids(
    bert_like: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, samples = bert_like
    ids, middle = split_the_middle_cut(capsys, model, samples, tmp_path, expect_sets=4)
    out = tmp_path / "profile.json"
    argv = ["profile", str(model), "-o", str(out), "--cuts", f"{ids[0]},{middle}", "--codecs", "fp32,fp16,int8"]
    assert main([*argv, *FAST_PROFILE, "--samples", str(samples)]) == 0
    captured = capsys.readouterr()
    assert (
        "note: cut attention_mask+input_ids: no codec fp16/int8, its int64 tensors travel as they are" in captured.err
    )
    profile = load_profile(out)
    assert list(profile["cuts"][0]["codecs"]) == ["fp32"]
    assert set(profile["cuts"][1]["codecs"]) == {"fp32", "fp16", "int8"}
    assert profile["inputs"]["inputs"]["input_ids"] == {"dtype": "int64", "shape": [1, 128]}


def test_fused_bert_offers_cuts_inside_the_encoder_once_a_run_types_them(
    bert_fused: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, samples = bert_fused
    static = GraphView(load_model(model))  # what static shape inference alone offers
    static_cuts, reasons = static.cuts(), static.uncuttable()
    assert "no known type or shape after static shape inference; give --samples" in reasons[0]
    listed = cuts_json(capsys, str(model), "--samples", str(samples))
    assert listed["uncuttable"] == [] and len(listed["cuts"]) > 2 * len(static_cuts)
    recovered = [c for c in listed["cuts"] if any(None in t["shape"] for t in c["tensors"])]
    assert recovered and recovered[0]["bytes"] > 0
    cut = recovered[len(recovered) // 2]["id"]
    assert main(["split", str(model), "--cut", cut, "-o", str(tmp_path / "p"), "--samples", str(samples)]) == 0
    assert "verified on 4 input sets: max abs error 0" in capsys.readouterr().out


def test_bert_profile_and_plan_at_the_users_sequence_length(
    bert_like: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, samples = bert_like
    shapes = ["--shape", "input_ids=1x64", "--shape", "attention_mask=1x64"]
    ids = [c["id"] for c in cuts_json(capsys, str(model), *shapes)["cuts"]]
    first, middle = ids[0], ids[len(ids) // 2]
    profile = tmp_path / "profile.json"
    argv = ["profile", str(model), "-o", str(profile), "--cuts", f"{first},{middle}", "--codecs", "fp32,fp16"]
    assert main([*argv, *FAST_PROFILE, *shapes]) == 0
    plan_argv = ["plan", str(model), "--device", str(profile), "--server", str(profile), "--hold-all"]
    assert main([*plan_argv, "-o", str(tmp_path / "plan"), "--codecs", "fp32,fp16", *shapes]) == 0
    assert "note: cut attention_mask+input_ids: no codec fp16" in capsys.readouterr().err
    plan = load_plan(tmp_path / "plan", check_files=("device", "server"))
    assert plan.inputs_at["inputs"]["input_ids"] == {"dtype": "int64", "shape": [1, 64]}
    assert plan.profiles["evaluated"]["shape_warnings"] == []
    options = {o.id: o for o in plan.split_options}
    assert set(options) == {f"split:{first}:fp32", f"split:{middle}:fp32", f"split:{middle}:fp16"}
    assert options[f"split:{first}:fp32"].wire_bytes == 2 * 64 * 8  # the token ids at 64, as they are
    # the answer crosses back: last_hidden_state [1,64,64] and pooler_output [1,64], float32
    assert {o.response_bytes for o in options.values()} == {4 * (64 * 64 + 64)}
    assert options[f"split:{middle}:fp32"].wire_bytes == 2 * options[f"split:{middle}:fp16"].wire_bytes > 0
    # at the samples' 128 tokens, the 64-token profile's times no longer hold: the plan says so
    assert main([*plan_argv, "-o", str(tmp_path / "plan128"), "--codecs", "fp32", "--samples", str(samples)]) == 0
    (line, _) = load_plan(tmp_path / "plan128").profiles["evaluated"]["shape_warnings"]
    assert "'input_ids' is [1, 128]" in line and "[1, 64]" in line
