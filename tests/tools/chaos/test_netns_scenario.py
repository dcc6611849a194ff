"""Sever by link down over real network namespaces: the tail server runs in one namespace,
the device in another, joined by a veth pair; the link is cut with ``ip link set down``.

Needs root, ip and tc (CI runs as root); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos_harness import MARGIN_S, ChaosPlan

from splitinf.edge.client import ChannelOptions
from splitinf.tools.faults.netns import NetnsLink, netns_unavailable_reason

REASON = netns_unavailable_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(REASON is not None, reason=f"network namespaces unavailable: {REASON}"),
    pytest.mark.timeout(120),
]
DEVICE_SCRIPT = Path(__file__).with_name("netns_device.py")
BUDGET_S = 0.3


class DeviceProcess:
    """The device runtime running inside the device namespace, driven line by line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.hello = self.read()
        assert self.hello.get("ready"), self.hello

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the device process died (exit {self.process.poll()})"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()


@pytest.fixture
def link() -> Iterator[NetnsLink]:
    with NetnsLink() as created:
        yield created


def start_server(link: NetnsLink, repo: Path) -> str:
    argv = [sys.executable, "-m", "splitinf", "serve", "--repo", str(repo), "--host", link.server_ip,
            "--port", "0", "--metrics-port", "-1"]  # fmt: skip
    process = link.popen("server", argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # "serving on HOST:PORT (models)"
    assert line.startswith("serving on "), f"server did not start: {line!r} (exit {process.poll()})"
    return line.split()[2]


def start_device(link: NetnsLink, plan: ChaosPlan, target: str, budget_s: float, **policy: Any) -> DeviceProcess:
    argv = [sys.executable, str(DEVICE_SCRIPT), str(plan.path), target, str(budget_s), json.dumps(policy)]
    return DeviceProcess(link.popen("device", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))


def finish(device: DeviceProcess) -> None:
    checked = device.ask("check")
    assert checked["ok"], checked["error"]
    final = device.ask("quit")
    assert final["ok"], f"threads leaked in the device: {final['leaked']}"
    assert final["rss_growth_mib"] < 64
    assert device.process.wait(10) == 0


def test_link_down_between_namespaces_falls_back_within_budget_and_heals(
    link: NetnsLink, chaos_plan: ChaosPlan
) -> None:
    target = start_server(link, chaos_plan.server_repo)
    device = start_device(link, chaos_plan, target, BUDGET_S)
    bound_s = device.hello["bound_s"]
    assert bound_s <= BUDGET_S + MARGIN_S + 0.05

    healthy = device.ask("run 10")["answers"]
    assert {a["kind"] for a in healthy} == {"split"}

    link.sever()  # the server's end goes down: the device's packets vanish, nothing is refused
    cut = device.ask("run 15")["answers"]
    assert {a["kind"] for a in cut} == {"fallback"}
    assert cut[0]["reason"] in ("timeout", "budget_spent")
    assert max(a["total_s"] for a in cut) <= bound_s
    assert sum(a["attempts"] for a in cut) <= 5, "the dead link kept being tried while the breaker was open"

    link.heal()
    healed_at = time.monotonic()
    back = device.ask("until_split 15")
    assert back["ok"], back
    policy_limit_s = 1.0 + 0.3 + 0.2  # CHAOS_POLICY: open_max_s + stabilisation_s + min_dwell_s
    reconnect_s = ChannelOptions().max_reconnect_backoff_ms / 1000
    assert time.monotonic() - healed_at <= policy_limit_s + reconnect_s + 3.0  # + TCP retransmission backoff
    finish(device)


def test_tbf_bandwidth_collapse_between_namespaces_moves_the_estimate_and_the_cut(
    link: NetnsLink, chaos_plan: ChaosPlan
) -> None:
    cap_kbit = 1000.0
    target = start_server(link, chaos_plan.server_repo)
    device = start_device(link, chaos_plan, target, 0.6, window_s=1.0)
    healthy = device.ask("run 15")["answers"]
    assert {a["option"] for a in healthy} == {chaos_plan.big_option}
    link.shape(rate_kbit=cap_kbit)  # tc tbf on both ends of the veth pair
    switched = device.ask(f"until {chaos_plan.small_option} 10")
    assert switched["ok"], switched
    assert len(switched["answers"]) <= 8, f"took {len(switched['answers'])} requests to leave the 32 KiB cut"
    estimate = device.ask("estimate")["bandwidth_bps"]
    assert 0.5 * cap_kbit * 1000 <= estimate <= 1.5 * cap_kbit * 1000, f"estimate {estimate:.0f} b/s"
    finish(device)
