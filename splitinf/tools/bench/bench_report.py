"""The benchmark's pure core: summary statistics, the grid summary, and the Markdown and SVG outputs.

Everything here takes and returns plain data (the results dict that ``bench.json`` holds), so
the figures in the table, the JSON and the chart are the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

from splitinf.contract.stats import quantile

__all__ = [
    "STRATEGIES",
    "bench_markdown",
    "bench_svg",
    "emulation_summary",
    "model_accuracy",
    "summarise",
    "summarise_cell",
]

# The four answers the table compares at each grid point, in column order.
STRATEGIES = ("local", "remote", "planned", "best")
_COLOURS = {"local": "#7f7f7f", "remote": "#d62728", "planned": "#1f77b4", "best": "#2ca02c"}


def summarise(samples: Sequence[Mapping[str, float]]) -> dict[str, Any] | None:
    """Median and p90 of the total latency, and the medians of its parts; None without samples."""
    if not samples:
        return None
    totals = [float(s["total_s"]) for s in samples]

    def median_of(key: str) -> float:
        return float(statistics.median(float(s.get(key, 0.0)) for s in samples))

    return {
        "n": len(samples),
        "median_s": float(statistics.median(totals)),
        "p90_s": quantile(totals, 0.9),
        "min_s": min(totals),
        "max_s": max(totals),
        "head_median_s": median_of("head_s"),
        "call_median_s": median_of("call_s"),
        "server_median_s": median_of("server_s"),
        # What the link and the protocol took: the call minus the server's own compute time.
        "network_median_s": float(
            statistics.median(float(s.get("call_s", 0.0)) - float(s.get("server_s", 0.0)) for s in samples)
        ),
        "request_bytes": int(statistics.median(int(s.get("request_bytes", 0)) for s in samples)),
        "response_bytes": int(statistics.median(int(s.get("response_bytes", 0)) for s in samples)),
    }


def summarise_cell(
    options: Mapping[str, Mapping[str, Any]],
    local: Mapping[str, Any] | None,
    *,
    planned_id: str | None,
    full_offload_ids: Sequence[str],
) -> dict[str, Any]:
    """The four strategies at one grid point from the measured options.

    ``options`` maps each split option id to ``{"stats": summarise(...) or None, ...}``; local is
    the local model's stats (or None). remote = the fastest measured full-offload option; best =
    the fastest of everything measured (local included); planned = the device's choice here
    (``Plan.planned``; None for a plan without a fallback when nothing fits).
    """

    def entry(option_id: str | None, stats: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"option": option_id, "stats": None if stats is None else dict(stats)}

    measured = {k: v["stats"] for k, v in options.items() if v.get("stats")}
    if local is not None:
        measured["local"] = local
    remote_ids = [i for i in full_offload_ids if i in measured]
    remote = min(remote_ids, key=lambda i: measured[i]["median_s"]) if remote_ids else None
    best = min(measured, key=lambda i: measured[i]["median_s"]) if measured else None
    return {
        "local": entry("local" if local is not None else None, local),
        "remote": entry(remote, measured.get(remote) if remote else None),
        "planned": entry(planned_id, measured.get(planned_id) if planned_id else None),
        "best": entry(best, measured.get(best) if best else None),
    }


def model_accuracy(grid: Sequence[Mapping[str, Any]], local: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How well the cost model predicted what was measured (issue 5's accuracy criteria).

    For every measured option at every grid point: the relative error of the predicted latency
    against the measured median; and per grid point whether the planned option's measured median
    is within 5% of the best measured one.
    """
    errors = []
    for cell in grid:
        for option_id, entry in cell["options"].items():
            stats = entry.get("stats")
            if stats and entry.get("predicted_s"):
                error = entry["predicted_s"] / stats["median_s"] - 1.0
                errors.append({"bandwidth_mbit": cell["bandwidth_mbit"], "rtt_ms": cell["rtt_ms"],
                               "option": option_id, "relative_error": error})  # fmt: skip
    if local and local.get("stats") and local.get("predicted_s"):
        errors.append({"option": "local", "relative_error": local["predicted_s"] / local["stats"]["median_s"] - 1.0})
    planned = []
    for cell in grid:
        p, b = cell["summary"]["planned"].get("stats"), cell["summary"]["best"].get("stats")
        if p and b:
            planned.append(
                {"bandwidth_mbit": cell["bandwidth_mbit"], "rtt_ms": cell["rtt_ms"],
                 "planned_over_best": p["median_s"] / b["median_s"]}
            )  # fmt: skip
    absolute = sorted(abs(e["relative_error"]) for e in errors)
    return {
        "predictions": errors,
        "median_abs_relative_error": float(statistics.median(absolute)) if absolute else None,
        "max_abs_relative_error": absolute[-1] if absolute else None,
        "within_15_percent": sum(1 for a in absolute if a <= 0.15),
        "predicted": len(absolute),
        "planned_vs_best": planned,
        "planned_within_5_percent": sum(1 for p in planned if p["planned_over_best"] <= 1.05),
        "grid_points": len(planned),
    }


def _ms(seconds: float | None) -> str:
    """Milliseconds with three significant figures (a digits model answers in hundredths of a ms)."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def _cell(strategy: Mapping[str, Any]) -> str:
    stats = strategy.get("stats")
    if not stats:
        return "not measured"
    return f"{_ms(stats['median_s'])} / {_ms(stats['p90_s'])}"


def _ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    sa, sb = a.get("stats"), b.get("stats")
    if not sa or not sb or sb["median_s"] <= 0:
        return "n/a"
    return f"{sa['median_s'] / sb['median_s']:.2f}"


def _emulation_lines(emulation: Mapping[str, Any]) -> list[str]:
    device = emulation["device"]
    limit = device["cpu_limit"]
    if limit.get("applied"):
        cpu = (
            f"{limit['cpus']:g} CPU via {limit['mechanism']} (quota {limit['quota_us']} us per {limit['period_us']} us "
            f"period, cgroup `{limit['path']}`, removed afterwards: {limit.get('removed')})"
        )
    else:
        cpu = f"**NO CPU limit** ({limit.get('reason', 'not requested')})"
    link = emulation["link"]
    server = emulation["server"]
    return [
        f"- Device: its own process ({device['process']}), {cpu}; onnxruntime intra-op threads {device['threads']}. "
        f"{device.get('emulates', '')}",
        f"- Server: {server['process']}; no CPU limit; {server.get('threads', '')}",
        f"- Link: {link['mechanism']}; {link['shaping']}",
        f"- Machine: {emulation.get('machine', {}).get('cpu_count')} CPUs "
        f"({emulation.get('machine', {}).get('cpu_model', '?')}), shared with other work: "
        "compare ratios within this run.",
    ]


def emulation_summary(results: Mapping[str, Any]) -> str:
    """One line: how the device and the link were emulated (for the chart)."""
    emulation = results["emulation"]
    limit = emulation["device"]["cpu_limit"]
    cpu = (
        f"{limit['cpus']:g} CPU ({limit['mechanism']}, {limit['quota_us']}/{limit['period_us']} us)"
        if limit.get("applied")
        else "NO CPU limit"
    )
    return (
        f"device: {cpu}, {emulation['device']['threads']} ORT thread(s); link: FaultProxy rate cap and RTT/2 "
        f"each way; {results['command']}"
    )


def bench_markdown(results: Mapping[str, Any]) -> str:
    lines = [
        f"# splitinf bench: {results['model']['name']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Started {results['started_utc']}, wall time {results.get('wall_s', 0):.0f} s.",
        "",
        "## Emulation",
        "",
        *_emulation_lines(results["emulation"]),
    ]
    for section in (
        _strategy_lines,
        _option_lines,
        _local_lines,
        _accuracy_lines,
        _overhead_lines,
        _failover_lines,
        _throughput_lines,
        _notes_lines,
    ):
        lines += section(results)
    return "\n".join(lines) + "\n"


def _strategy_lines(results: Mapping[str, Any]) -> list[str]:
    budget = results.get("settings", {}).get("budget_s")
    within = f"within a {_ms(budget)} ms budget " if budget else ""
    lines = [
        "",
        "## End-to-end latency per request (ms, median / p90)",
        "",
        "local: the full model on the device. remote: full offload (send the input) with the fastest "
        "codec measured. planned: the option the device's rule picks at this point (the most accurate "
        f"option expected {within}from the profiles measured in this run, ties to the faster). best: the "
        "fastest of every option measured. Ratios are of medians.",
        "",
        "| Mbit/s | RTT ms | local | remote | planned | best | planned option | predicted ms | "
        "planned/best | local/planned | remote/planned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in results["grid"]:
        s = cell["summary"]
        planned = s["planned"]
        lines.append(
            f"| {cell['bandwidth_mbit']:g} | {cell['rtt_ms']:g} | {_cell(s['local'])} | "
            f"{_cell(s['remote'])} (`{s['remote']['option']}`) | {_cell(planned)} | {_cell(s['best'])} "
            f"(`{s['best']['option']}`) | `{planned['option']}` | {_ms(cell['planned_predicted_s'])} | "
            f"{_ratio(planned, s['best'])} | {_ratio(s['local'], planned)} | {_ratio(s['remote'], planned)} |"
        )
    return lines


def _option_cell(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return ""
    if entry.get("stats"):
        return f"{_ms(entry['stats']['median_s'])} ({_ms(entry['predicted_s'])})"
    return f"skipped ({_ms(entry['predicted_s'])})"


def _option_lines(results: Mapping[str, Any]) -> list[str]:
    option_ids = list(dict.fromkeys(i for cell in results["grid"] for i in cell["options"]))
    if not option_ids:
        return []
    lines = [
        "",
        "## Every option (median ms measured; cost-model prediction in brackets)",
        "",
        "| Mbit/s | RTT ms | " + " | ".join(f"`{i}`" for i in option_ids) + " |",
        "|---|---|" + "---|" * len(option_ids),
    ]
    for cell in results["grid"]:
        row = [_option_cell(cell["options"].get(i)) for i in option_ids]
        lines.append(f"| {cell['bandwidth_mbit']:g} | {cell['rtt_ms']:g} | " + " | ".join(row) + " |")
    skip = results.get("settings", {}).get("skip_rule")
    return lines + (["", f"Skipped: {skip}"] if skip else [])


def _local_lines(results: Mapping[str, Any]) -> list[str]:
    local = results.get("local")
    if not local or not local.get("stats"):
        return []
    st = local["stats"]
    return [
        "",
        f"Local model on the device: median {_ms(st['median_s'])} ms, p90 {_ms(st['p90_s'])} ms over "
        f"{st['n']} runs (no network: 0 bytes sent). Device profile predicted "
        f"{_ms(local.get('predicted_s'))} ms.",
    ]


def _accuracy_lines(results: Mapping[str, Any]) -> list[str]:
    accuracy = results.get("accuracy")
    if not accuracy or not accuracy.get("predicted"):
        return []
    return [
        "",
        "## Cost model against measurement",
        "",
        f"- Predicted vs measured median latency, over {accuracy['predicted']} measured (option, point) pairs "
        f"and local: median |error| {accuracy['median_abs_relative_error'] * 100:.1f}%, worst "
        f"{accuracy['max_abs_relative_error'] * 100:.1f}%, {accuracy['within_15_percent']} within 15%.",
        f"- The planned option measured within 5% of the best measured option at "
        f"{accuracy['planned_within_5_percent']} of {accuracy['grid_points']} grid points.",
    ]


def _overhead_lines(results: Mapping[str, Any]) -> list[str]:
    overhead = results.get("overhead") or []
    if not overhead:
        return []
    lines = [
        "",
        "## Framework overhead against a bare gRPC echo of the same bytes (ms, medians)",
        "",
        "Both from the device process straight to the server machine (no emulated link). V2 = "
        "`InferenceClient.infer` minus the server's reported compute time (so it holds encoding, "
        "gRPC, the server's decode/encode and the client's decode); echo = a generic-handler gRPC "
        "method answering the same number of bytes.",
        "",
        "| case | request bytes | response bytes | V2 | echo | overhead | V2/echo |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in overhead:
        lines.append(
            f"| `{case['id']}` | {case['request_bytes']} | {case['response_bytes']} | {_ms(case['v2_median_s'])} | "
            f"{_ms(case['echo_median_s'])} | {_ms(case['overhead_s'])} | {case['ratio']:.2f} |"
        )
    return lines


def _failover_lines(results: Mapping[str, Any]) -> list[str]:
    failover = results.get("failover")
    if not failover:
        return []
    lines = ["", "## Failover and recovery", ""]
    if failover.get("error"):
        return lines + [f"Not measured: {failover['error']}"]
    return lines + [
        f"At {failover['bandwidth_mbit']:g} Mbit/s, RTT {failover['rtt_ms']:g} ms, budget "
        f"{_ms(failover['budget_s'])} ms, one request every {_ms(failover['interval_s'])} ms at most; "
        f"the link is cut by {failover['cut']}.",
        "",
        f"- Failover (cut -> first answer not from the split path): **{_ms(failover['failover_s'])} ms** "
        f"(answered by `{failover['first_local_option']}`, reason {failover['first_local_reason']}).",
        f"- Recovery (heal -> first split answer): **{_ms(failover['recovery_s'])} ms**.",
        f"- During the outage: {failover['outage_answers']} answers, worst latency "
        f"{_ms(failover['outage_worst_s'])} ms; none lost (each request answered once).",
        f"- Policy: {failover['policy']}.",
    ]


def _throughput_lines(results: Mapping[str, Any]) -> list[str]:
    throughput = results.get("throughput")
    if not throughput:
        return []
    lines = [
        "",
        f"## Tail-server throughput (`{throughput['option']}`, {throughput['request_bytes']} bytes per request)",
        "",
        "Concurrent clients on the server side (no emulated link), each its own channel, back to back.",
        "",
        "| clients | requests | seconds | requests/s | median ms |",
        "|---|---|---|---|---|",
    ]
    for level in throughput["levels"]:
        lines.append(
            f"| {level['concurrency']} | {level['requests']} | {level['seconds']:.1f} | "
            f"{level['rps']:.1f} | {_ms(level['median_s'])} |"
        )
    return lines


def _notes_lines(results: Mapping[str, Any]) -> list[str]:
    notes = results.get("notes") or []
    return ["", "## Notes", "", *[f"- {n}" for n in notes]] if notes else []


def bench_svg(results: Mapping[str, Any], panel_w: int = 300, panel_h: int = 260) -> str:
    """One panel per RTT: median latency of each strategy against bandwidth (log-log)."""
    rtts = sorted({cell["rtt_ms"] for cell in results["grid"]})
    bandwidths = sorted({cell["bandwidth_mbit"] for cell in results["grid"]})
    values = [
        cell["summary"][s]["stats"]["median_s"]
        for cell in results["grid"]
        for s in STRATEGIES
        if cell["summary"][s].get("stats")
    ]
    y_low = 10 ** math.floor(math.log10(min(values))) if values else 1e-3
    y_high = 10 ** math.ceil(math.log10(max(values))) if values else 1.0
    if y_high <= y_low:
        y_high = y_low * 10
    left, top, gap, bottom = 60, 62, 30, 45
    width = left + len(rtts) * (panel_w + gap) + 120
    height = top + panel_h + bottom
    x_low = math.log10(bandwidths[0]) if bandwidths else 0.0
    x_high = math.log10(bandwidths[-1]) if bandwidths else 1.0
    if x_high <= x_low:
        x_low, x_high = x_low - 0.5, x_high + 0.5

    def x(panel: int, bw: float) -> float:
        return left + panel * (panel_w + gap) + panel_w * (math.log10(bw) - x_low) / (x_high - x_low)

    def y(seconds: float) -> float:
        value = min(max(seconds, y_low), y_high)
        frac = (math.log10(value) - math.log10(y_low)) / (math.log10(y_high) - math.log10(y_low))
        return top + panel_h * (1 - frac)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">{escape(results["model"]["name"])}: measured median latency '
        "against bandwidth (log-log), one panel per RTT</text>",
        f'<text class="emulation" x="{left}" y="34" font-size="10">{escape(emulation_summary(results))}</text>',
    ]
    for p, rtt in enumerate(rtts):
        x0 = left + p * (panel_w + gap)
        out.append(f'<rect x="{x0}" y="{top}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#333"/>')
        out.append(f'<text x="{x0 + panel_w / 2}" y="{top - 8}" text-anchor="middle">RTT {rtt:g} ms</text>')
        for bw in bandwidths:
            out.append(f'<text x="{x(p, bw):.1f}" y="{top + panel_h + 15}" text-anchor="middle">{bw:g}</text>')
        exponent = round(math.log10(y_low))
        while exponent <= round(math.log10(y_high)):
            seconds = 10.0**exponent
            out.append(
                f'<line x1="{x0}" y1="{y(seconds):.1f}" x2="{x0 + panel_w}" y2="{y(seconds):.1f}" stroke="#ddd"/>'
            )
            if p == 0:
                out.append(f'<text x="{x0 - 5}" y="{y(seconds) + 4:.1f}" text-anchor="end">{seconds * 1e3:g} ms</text>')
            exponent += 1
        cells = sorted((c for c in results["grid"] if c["rtt_ms"] == rtt), key=lambda c: c["bandwidth_mbit"])
        for strategy in STRATEGIES:
            points = [
                (c["bandwidth_mbit"], c["summary"][strategy]["stats"]["median_s"])
                for c in cells
                if c["summary"][strategy].get("stats")
            ]
            colour = _COLOURS[strategy]
            dash = ' stroke-dasharray="5,3"' if strategy == "best" else ""
            if len(points) > 1:
                text = " ".join(f"{x(p, bw):.1f},{y(s):.1f}" for bw, s in points)
                out.append(
                    f'<polyline class="series" data-strategy="{strategy}" data-rtt="{rtt:g}" points="{text}" '
                    f'fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
                )
            for bw, s in points:
                out.append(
                    f'<circle class="point" data-strategy="{strategy}" data-rtt="{rtt:g}" data-bandwidth="{bw:g}" '
                    f'data-median-s="{s:.6f}" cx="{x(p, bw):.1f}" cy="{y(s):.1f}" r="3" fill="{colour}"/>'
                )
    out.append(
        f'<text x="{left + (len(rtts) * (panel_w + gap)) / 2}" y="{height - 10}" text-anchor="middle">'
        "bandwidth (Mbit/s)</text>"
    )
    legend_x = left + len(rtts) * (panel_w + gap)
    for k, strategy in enumerate(STRATEGIES):
        ly = top + 16 * k + 10
        out.append(
            f'<line x1="{legend_x}" y1="{ly - 4}" x2="{legend_x + 20}" y2="{ly - 4}" '
            f'stroke="{_COLOURS[strategy]}" stroke-width="2"/>'
        )
        out.append(f'<text x="{legend_x + 25}" y="{ly}">{strategy}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
