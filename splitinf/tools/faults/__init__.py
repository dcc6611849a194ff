"""Fault injection for chaos tests and link emulation.

- ``splitinf.tools.faults.proxy``: ``FaultProxy``, a TCP proxy that adds latency, jitter,
  a bandwidth cap, black holes, resets and mid-stream cuts, per direction, changed
  while running (from Python, a JSON control socket, or a schedule).
- ``splitinf.tools.faults.netns``: real kernel links: two network namespaces joined by a
  veth pair, ``tc`` rate limits, severing by taking the link down (needs root).
"""

from __future__ import annotations

from splitinf.tools.faults.proxy import (
    DIRECTIONS,
    DirectionFaults,
    FaultProxy,
    FaultSettings,
    ProxyStats,
    control_request,
    parse_host_port,
    parse_schedule,
)

__all__ = [
    "DIRECTIONS",
    "DirectionFaults",
    "FaultProxy",
    "FaultSettings",
    "ProxyStats",
    "control_request",
    "parse_host_port",
    "parse_schedule",
]
