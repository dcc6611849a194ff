"""`splitinf profile PLAN --server HOST:PORT`: a server-role profile read from a real running tail server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from splitinf.cli import main
from splitinf.cloud.app import create_server
from splitinf.cloud.config import ServerConfig
from splitinf.contract.plan import load_plan
from splitinf.edge.client import InferenceClient
from splitinf.offline.planner import plan_model
from splitinf.offline.profiling import load_profile, profile_file
from splitinf.tools.testing.plans import write_mlp_plan_dir


@pytest.fixture
def served_plan(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    plan = write_mlp_plan_dir(tmp_path / "plan", local=False)
    srv, port = create_server(ServerConfig(repo=plan / "server", port=0, metrics_port=None))
    try:
        yield plan, f"127.0.0.1:{port}"
    finally:
        srv.stop()


def test_live_profile_reads_the_servers_tail_times_and_the_planner_accepts_it(
    served_plan: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_dir, target = served_plan
    plan = load_plan(plan_dir)
    source = plan_dir / "source" / "model.onnx"
    timed_here = tmp_path / "here.json"
    profile_file(source, timed_here, codecs="fp32", repeats=3, warmup=1, passes=1)
    live = tmp_path / "live.json"

    args = ["profile", str(plan_dir), "--server", target, "-o", str(live), "--base", str(timed_here)]
    assert main([*args, "--min-requests", "5"]) == 0
    assert "live from" in capsys.readouterr().out

    profile = load_profile(live)
    assert profile["role"] == "server"
    cuts = {c["id"]: c for c in profile["cuts"]}
    splits = [o for o in plan.options if o.kind == "split"]
    with InferenceClient(target) as client:
        for option in splits:
            tail = cuts[option.cut_id]["codecs"]["fp32"]["tail"]
            stats = client.model_statistics(str(option.tail_model), 5.0).model_stats[0].inference_stats
            assert tail["median"] > 0
            assert tail["repeats"] == stats.compute_infer.count >= 5  # the server ran them: its own figures
            assert tail["median"] == pytest.approx(stats.compute_infer.ns / stats.compute_infer.count / 1e9)

    made = plan_model(
        source, device_profile=timed_here, server_profile=live, output=tmp_path / "replanned", codecs="fp32",
        include_local=False, hold_all=True,
    )  # fmt: skip
    live_tails = {c: e["codecs"]["fp32"]["tail"]["median"] for c, e in cuts.items()}
    replanned = {o.cut_id: o.tail_seconds for o in made.options if o.kind == "split"}
    priced_live = [c for c in replanned if c in {o.cut_id for o in splits}]
    assert priced_live, (replanned, [o.cut_id for o in splits])
    for cut_id in priced_live:
        assert replanned[cut_id] == pytest.approx(live_tails[cut_id])


def test_live_profile_without_a_server_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_dir = write_mlp_plan_dir(tmp_path / "plan", local=False)
    status = main(["profile", str(plan_dir), "--server", "127.0.0.1:1", "-o", str(tmp_path / "p.json")])
    assert status in (1, 2)
    assert "127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_a_device_role_live_profile_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["profile", str(tmp_path), "--server", "127.0.0.1:1", "--role", "device", "-o", "x.json"])
    assert status == 2
    assert "device profile" in capsys.readouterr().err


def test_live_profile_of_a_server_requiring_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_dir = write_mlp_plan_dir(tmp_path / "plan", cuts=("relu_0",), local=False)
    srv, port = create_server(ServerConfig(repo=plan_dir / "server", port=0, metrics_port=None, token="s3cret"))
    try:
        token_file = tmp_path / "token.txt"
        token_file.write_text("s3cret\n")
        out = tmp_path / "live.json"
        args = ["profile", str(plan_dir), "--server", f"127.0.0.1:{port}", "-o", str(out), "--min-requests", "2"]
        assert main(args) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err.upper()
        assert main([*args, "--token-file", str(token_file)]) == 0
    finally:
        srv.stop(grace=0)
    (entry,) = load_profile(out)["cuts"]
    assert entry["codecs"]["fp32"]["tail"]["repeats"] == 2
