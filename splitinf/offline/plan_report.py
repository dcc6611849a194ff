"""A plan the user can look at: a Markdown table and an SVG chart, both plain text (no plotting library).

Both mark what the device's rule (:func:`splitinf.contract.plan.choose_option`, through
:meth:`Plan.planned`) picks within the plan's budget. The chart draws each option's expected
latency against bandwidth (log-log) at a reference round-trip time; the planned option is drawn
thick along the bandwidths where it is picked, and marked with dots. Precision is shown apart from
the wire codec: the table's "device" column is the precision of what the device runs (the head, or
the whole local/fallback model), "wire" the codec; the chart labels int8 heads and draws them with
square markers at each end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from splitinf.contract.plan import Option, Plan, expected_latency

__all__ = ["chart_bandwidths", "latency_svg", "report_markdown"]

_MAX_CHART_LINES = 10
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _ms(seconds: float) -> str:
    return "inf" if not math.isfinite(seconds) else f"{seconds * 1e3:.3f}"


def _mbit(bps: float) -> str:
    return f"{bps / 1e6:g}"


def _grid(plan: Plan) -> tuple[list[float], list[float]]:
    """The planning grid (bandwidths, rtts) recorded in plan.json; empty for plans that lack it."""
    grid = (plan.profiles.get("evaluated") or {}).get("grid") or {}
    return [float(b) for b in grid.get("bandwidths_bps", ())], [float(r) for r in grid.get("rtts_s", ())]


def _planned_id(plan: Plan, bandwidth_bps: float, rtt_s: float) -> str | None:
    planned = plan.planned(bandwidth_bps, rtt_s)
    return None if planned is None else planned[0].id


def chart_bandwidths(plan: Plan, points: int = 60) -> tuple[float, ...]:
    bandwidths, _ = _grid(plan)
    low, high = (min(bandwidths), max(bandwidths)) if bandwidths else (0.25e6, 1000e6)
    if high <= low:
        return (low,)
    return tuple(float(b) for b in np.geomspace(low, high, points))


def report_markdown(plan: Plan, reference_rtt_s: float, bandwidths_bps: Sequence[float] = (1e6, 10e6, 100e6)) -> str:
    lines = [
        f"# Plan for {plan.model_name}",
        "",
        f"Model sha256 `{plan.model_sha256}`.",
        "",
        *_inputs_lines(plan),
        f"Expected latency (ms) at RTT {reference_rtt_s * 1e3:g} ms; the chart is `latency.svg`. **planned** marks "
        f"the option the device picks: the most accurate one expected within the {plan.budget_s * 1e3:g} ms "
        "budget (ties to the faster), else the fallback.",
        "",
    ]
    header = [
        "option",
        "kind",
        "device",
        "wire",
        "wire bytes",
        "device bytes",
        "device ms",
        "tail ms",
        "accuracy",
        "fidelity (held-out)",
    ]
    header += [f"{_mbit(b)} Mbit/s" for b in bandwidths_bps]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    planned = [_planned_id(plan, bw, reference_rtt_s) for bw in bandwidths_bps]
    for option in plan.options:
        row = _option_row(option)
        for bw, planned_id in zip(bandwidths_bps, planned, strict=True):
            mark = " **planned**" if planned_id == option.id else ""
            row.append(_ms(expected_latency(option, bw, reference_rtt_s)) + mark)
        lines.append("| " + " | ".join(row) + " |")
    lines += _device_size(plan)
    lines += _codec_section(plan)
    lines += _fallback_section(plan)
    lines += _planned_section(plan)
    lines += _notes_section(plan)
    return "\n".join(lines) + "\n"


def _inputs_lines(plan: Plan) -> list[str]:
    """The input shapes bytes and times hold at (none for plans from before they were recorded)."""
    inputs = dict(plan.inputs_at.get("inputs") or {})
    if not inputs:
        return []
    shown = ", ".join(
        f"`{name}` {e.get('dtype')}[{','.join(map(str, e.get('shape', [])))}]" for name, e in inputs.items()
    )
    source = {
        "samples": "the sample inputs",
        "shapes": "--shape or the profiles' shapes",
        "random": "random inputs with dynamic dimensions 1",
    }.get(str(plan.inputs_at.get("source")), "the profiles")
    return [f"Bytes and times are at the inputs {shown} ({source}).", ""]


def _notes_section(plan: Plan) -> list[str]:
    """What the planner skipped and why (inputs at other shapes than profiled, codecs that do not apply at a cut)."""
    evaluated = plan.profiles.get("evaluated") or {}
    notes = [*(evaluated.get("shape_warnings") or []), *(evaluated.get("notes") or [])]
    return ["", "## Notes", "", *[f"- {note}" for note in notes]] if notes else []


def _option_row(option: Option) -> list[str]:
    fid = option.fidelity.get("held_out") or option.fidelity.get("calibration") or {}
    agreement = fid.get("top1_agreement")
    fid_text = (
        f"top-1 {agreement:.3f}"
        if agreement is not None
        else (f"rel.err {fid['max_rel_error']:.2e}" if "max_rel_error" in fid else "")
    )
    split = option.kind == "split"
    return [
        f"`{option.id}`",
        option.kind,
        option.precision,
        option.codec or "",
        str(option.wire_bytes) if split else "",
        str(option.device_bytes) if option.device_bytes else "",
        _ms(option.head_seconds if split else option.seconds),
        _ms(option.tail_seconds) if split else "",
        "" if option.accuracy is None else f"{option.accuracy:.3f}",
        fid_text,
    ]


def _planned_section(plan: Plan) -> list[str]:
    """The planned option over the planning grid: what the device picks if its estimates land there."""
    bandwidths, rtts = _grid(plan)
    if not bandwidths or not rtts:
        return []
    lines = [
        "",
        f"## Planned option by network condition (budget {plan.budget_s * 1e3:g} ms)",
        "",
        "Rows: bandwidth (Mbit/s); columns: round-trip time (ms). The device applies the same rule to its "
        "live estimates, so this is what it answers with when they land on a grid point.",
        "",
        "| Mbit/s | " + " | ".join(f"{r * 1e3:g}" for r in rtts) + " |",
        "|" + "---|" * (len(rtts) + 1),
    ]
    for bw in bandwidths:
        picks = [_planned_id(plan, bw, rtt) or "none" for rtt in rtts]
        lines.append(f"| {bw / 1e6:.3g} | " + " | ".join(f"`{p}`" for p in picks) + " |")
    return lines


def _device_size(plan: Plan) -> list[str]:
    """What the device holds, by kind and precision: each file once (heads share the model's segments, and
    the local model runs them all), counted under the first option that runs it. An option's own
    ``device_bytes`` counts every file it runs, so those of options sharing segments do not add up."""
    sizes: dict[str, int] = {}
    seen: set[str] = set()
    for option in plan.options:
        key = f"{'heads' if option.kind == 'split' else option.kind} ({option.precision})"
        if plan.root is None:
            size = option.device_bytes
        else:
            new = [f for f, _ in option.device_files if f not in seen]
            seen.update(new)
            size = sum(plan.path(f).stat().st_size for f in new)
        sizes[key] = sizes.get(key, 0) + size
    if not any(sizes.values()):
        return []
    parts = ", ".join(f"{key} {size / 1e6:.3f} MB" for key, size in sizes.items())
    return ["", f"Device part: {sum(sizes.values()) / 1e6:.3f} MB, each file once ({parts})."]


def _fallback_section(plan: Plan) -> list[str]:
    """The fallback's precisions weighed (with --quantize): time, size, accuracy, and which one is held."""
    variants = (plan.profiles.get("evaluated") or {}).get("fallbacks") or []
    if len(variants) < 2:
        return []
    lines = [
        "",
        "## Fallback precisions",
        "",
        "The plan holds one fallback: the int8 one when it is as accurate as the fp32 one (within the accuracy "
        "drop allowed) and no slower. Fidelity of the int8 one is against the fp32 fallback.",
        "",
        "| precision | ms | bytes | accuracy | fidelity (held-out) | held |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        fidelity = v.get("fidelity") or {}
        accuracy = v.get("accuracy")
        lines.append(
            f"| {v.get('precision', 'fp32')} | {_ms(float(v.get('seconds', 0.0)))} | {v.get('device_bytes', '')} "
            f"| {'' if accuracy is None else f'{accuracy:.3f}'} "
            f"| {_fidelity_text(fidelity.get('held_out') or fidelity.get('calibration'))} "
            f"| {'yes' if v.get('held') else 'no'} |"
        )
    return lines


def _fidelity_text(report: Mapping[str, Any] | None) -> str:
    if not report:
        return ""
    agreement = report.get("top1_agreement")
    text = f"rel.err max {report.get('max_rel_error', 0.0):.2e} mean {report.get('mean_rel_error', 0.0):.2e}"
    return (f"top-1 {agreement:.3f}, " if agreement is not None else "") + text


def _codec_section(plan: Plan) -> list[str]:
    """Every evaluated cut and codec (held or not): bytes per sample and fidelity against fp32."""
    rows: list[tuple[str, int, Mapping[str, Any]]] = [(o.id, o.wire_bytes, o.fidelity) for o in plan.split_options]
    evaluated = plan.profiles.get("evaluated", {}) if plan.profiles else {}
    rows += [(str(o["id"]), int(o["bytes"]), o.get("fidelity") or {}) for o in evaluated.get("not_held", ())]
    if not rows:
        return []
    lines = [
        "",
        "## Codecs",
        "",
        "Every cut and codec evaluated (held ones first): bytes per sample, fidelity against the fp32 model.",
        "",
        "| option | bytes | calibration | held-out |",
        "|---|---|---|---|",
    ]
    for option_id, nbytes, fidelity in rows:
        lines.append(
            f"| `{option_id}` | {nbytes} | {_fidelity_text(fidelity.get('calibration'))} "
            f"| {_fidelity_text(fidelity.get('held_out'))} |"
        )
    return lines


def _chart_options(plan: Plan, planned: Sequence[str | None]) -> list[Option]:
    """The options but the fallback (only the planned ones when too many to read, as with --hold-all), then it."""
    options = [o for o in plan.options if o.kind != "fallback"]
    if len(options) > _MAX_CHART_LINES:
        options = [o for o in options if o.id in planned]
    return options + ([plan.fallback] if plan.fallback is not None else [])


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """[start, end) index ranges where ``flags`` is true."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


class _Axes:
    """Log-log coordinates of the plot area."""

    def __init__(self, bandwidths: Sequence[float], values: Sequence[float], box: tuple[int, int, int, int]) -> None:
        finite = [v for v in values if math.isfinite(v) and v > 0]
        low, high = (min(finite), max(finite)) if finite else (1e-3, 1.0)
        if high <= low:
            high = low * 10
        self.y_low, self.y_high = 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high))
        self.left, self.top, self.width, self.height = box
        self.x_low, self.x_high = math.log10(bandwidths[0]), math.log10(bandwidths[-1])
        self.bandwidths = bandwidths

    def x(self, bw: float) -> float:
        return self.left + self.width * (math.log10(bw) - self.x_low) / max(self.x_high - self.x_low, 1e-12)

    def y(self, seconds: float) -> float:
        value = min(max(seconds, self.y_low), self.y_high)
        span = math.log10(self.y_high) - math.log10(self.y_low)
        return self.top + self.height * (1 - (math.log10(value) - math.log10(self.y_low)) / span)

    def gridlines(self) -> list[str]:
        out = []
        bottom = self.top + self.height
        for decade in range(math.floor(self.x_low), math.ceil(self.x_high) + 1):
            bw = 10.0**decade
            if self.bandwidths[0] <= bw <= self.bandwidths[-1]:
                out.append(
                    f'<line x1="{self.x(bw):.1f}" y1="{self.top}" x2="{self.x(bw):.1f}" y2="{bottom}" stroke="#ddd"/>'
                )
                out.append(f'<text x="{self.x(bw):.1f}" y="{bottom + 15}" text-anchor="middle">{_mbit(bw)}</text>')
        for exponent in range(round(math.log10(self.y_low)), round(math.log10(self.y_high)) + 1):
            seconds = 10.0**exponent
            y, right = self.y(seconds), self.left + self.width
            out.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{self.left - 5}" y="{y + 4:.1f}" text-anchor="end">{seconds * 1e3:g} ms</text>')
        return out


def _series_svg(
    option: Option, colour: str, axes: _Axes, seconds: Sequence[float], chosen: Sequence[bool]
) -> list[str]:
    """One option's line, thick where it is the planned option, with a dot at each planned point; an int8
    device model (head or fallback) gets a square marker at each end of its line."""
    dash = ' stroke-dasharray="6,4"' if option.kind != "split" else ""
    name = escape(option.id)
    points = [f"{axes.x(bw):.1f},{axes.y(s):.1f}" for bw, s in zip(axes.bandwidths, seconds, strict=True)]
    out = [
        f'<polyline class="option" data-option="{name}" data-precision="{escape(option.precision)}" '
        f'points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>'
    ]
    if option.precision == "int8":
        for point in (points[0], points[-1]):
            x, y = (float(v) for v in point.split(","))
            out.append(
                f'<rect class="int8" data-option="{name}" x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" '
                f'fill="white" stroke="{colour}" stroke-width="1.5"/>'
            )
    for start, end in _runs(chosen):
        out.append(
            f'<polyline class="planned" data-option="{name}" points="{" ".join(points[start:end])}" fill="none" '
            f'stroke="{colour}" stroke-width="5" stroke-linecap="round"/>'
        )
    for point, flag in zip(points, chosen, strict=True):
        if flag:
            cx, cy = point.split(",")
            out.append(f'<circle class="chosen" data-option="{name}" cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>')
    return out


def latency_svg(plan: Plan, reference_rtt_s: float, width: int = 760, height: int = 440) -> str:
    """Expected latency against bandwidth per option at ``reference_rtt_s``; the planned option drawn thick."""
    bandwidths = chart_bandwidths(plan)
    planned = [_planned_id(plan, bw, reference_rtt_s) for bw in bandwidths]
    options = _chart_options(plan, planned)
    height = max(height, 40 + 14 * len(options) + 54)
    series = {o.id: [expected_latency(o, bw, reference_rtt_s) for bw in bandwidths] for o in options}
    left, right, top, bottom = 70, 250, 40, 50
    axes = _Axes(
        bandwidths, [v for vs in series.values() for v in vs], (left, top, width - left - right, height - top - bottom)
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">{escape(plan.model_name)}: expected latency vs bandwidth '
        f"(RTT {reference_rtt_s * 1e3:g} ms)</text>",
        f'<rect x="{left}" y="{top}" width="{axes.width}" height="{axes.height}" fill="none" stroke="#333"/>',
        *axes.gridlines(),
        f'<text x="{left + axes.width / 2}" y="{height - 12}" text-anchor="middle">bandwidth (Mbit/s, log)</text>',
    ]
    for k, option in enumerate(options):
        colour = _COLOURS[k % len(_COLOURS)]
        chosen = [p == option.id for p in planned]
        out += _series_svg(option, colour, axes, series[option.id], chosen)
        legend_y = top + 14 * k + 10
        dash = ' stroke-dasharray="6,4"' if option.kind != "split" else ""
        out.append(
            f'<line x1="{width - right + 15}" y1="{legend_y - 4}" x2="{width - right + 35}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
        )
        label = (
            option.id
            + (" [int8]" if option.precision == "int8" else "")
            + (" (planned somewhere)" if any(chosen) else "")
        )
        out.append(f'<text x="{width - right + 40}" y="{legend_y}">{escape(label)}</text>')
    out.append(
        f'<text x="{width - right + 15}" y="{top + 14 * len(options) + 20}">thick, with dots: the planned option '
        f"(budget {plan.budget_s * 1e3:g} ms)</text>"
    )
    if any(o.precision == "int8" for o in options):
        legend_y = top + 14 * len(options) + 34
        out.append(f'<text x="{width - right + 15}" y="{legend_y}">squares, [int8]: int8 device model</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
