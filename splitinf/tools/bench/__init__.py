"""``splitinf bench``: emulate a Raspberry Pi honestly and measure split inference end to end.

- :mod:`splitinf.tools.bench.harness`: the orchestrator (``run_bench(BenchConfig)``).
- :mod:`splitinf.tools.bench.cgroup`: a cgroup CPU quota for the device process (v1 and v2).
- :mod:`splitinf.tools.bench.device`: the device worker process, steered over stdin/stdout.
- :mod:`splitinf.tools.bench.echo`: a bare gRPC echo (generic handler), the yardstick for overhead.
- :mod:`splitinf.tools.bench.bench_report`: the pure core: statistics, Markdown table, SVG chart.
"""

from __future__ import annotations

from splitinf.tools.bench.bench_report import (
    bench_markdown,
    bench_svg,
    emulation_summary,
    model_accuracy,
    summarise,
    summarise_cell,
)
from splitinf.tools.bench.cgroup import CpuCgroup, create_cpu_cgroup, detect_cgroup_version
from splitinf.tools.bench.harness import BenchConfig, choose_cuts, command_line, quick_config, run_bench

__all__ = [
    "BenchConfig",
    "CpuCgroup",
    "bench_markdown",
    "bench_svg",
    "choose_cuts",
    "command_line",
    "create_cpu_cgroup",
    "detect_cgroup_version",
    "emulation_summary",
    "model_accuracy",
    "quick_config",
    "run_bench",
    "summarise",
    "summarise_cell",
]
