"""A plan the user can look at: a Markdown table and an SVG chart, both plain text (no plotting library).

The chart draws each option's expected latency against bandwidth (log-log) at a reference
round-trip time; the option the decision table picks is drawn thick along the bandwidths where
it is chosen, and marked with dots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

from splitinf.contract.plan import Option, Plan, expected_latency
from splitinf.offline.planner import best_option, log_grid

__all__ = ["chart_bandwidths", "latency_svg", "report_markdown"]

_MAX_CHART_LINES = 10
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _ms(seconds: float) -> str:
    return "inf" if not math.isfinite(seconds) else f"{seconds * 1e3:.3f}"


def _mbit(bps: float) -> str:
    return f"{bps / 1e6:g}"


def _table_options(plan: Plan) -> list[Option]:
    """The options the decision table picks from (the fallback answers only on failure)."""
    if plan.table is None:
        return [o for o in plan.options if o.kind != "fallback"]
    chosen = {c for row in plan.table.choices for c in row}
    return [o for o in plan.options if o.id in chosen or o.kind in ("split", "local")]


def chart_bandwidths(plan: Plan, points: int = 60) -> tuple[float, ...]:
    if plan.table is not None and plan.table.bandwidths_bps:
        low, high = plan.table.bandwidths_bps[0], plan.table.bandwidths_bps[-1]
    else:
        low, high = 0.25e6, 1000e6
    return log_grid(low, high, points)


def report_markdown(plan: Plan, reference_rtt_s: float, bandwidths_bps: Sequence[float] = (1e6, 10e6, 100e6)) -> str:
    lines = [
        f"# Plan for {plan.model_name}",
        "",
        f"Model sha256 `{plan.model_sha256}`.",
        "",
        f"Expected latency (ms) at RTT {reference_rtt_s * 1e3:g} ms; the chart is `latency.svg`.",
        "",
    ]
    header = ["option", "kind", "codec", "bytes", "head ms", "tail ms", "accuracy", "fidelity (held-out)"]
    header += [f"{_mbit(b)} Mbit/s" for b in bandwidths_bps]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    choices = _table_options(plan)
    for option in plan.options:
        fid = option.fidelity.get("held_out") or option.fidelity.get("calibration") or {}
        agreement = fid.get("top1_agreement")
        fid_text = (
            f"top-1 {agreement:.3f}"
            if agreement is not None
            else (f"rel.err {fid['max_rel_error']:.2e}" if "max_rel_error" in fid else "")
        )
        row = [
            f"`{option.id}`",
            option.kind,
            option.codec or "",
            str(option.wire_bytes) if option.kind == "split" else "",
            _ms(option.head_seconds if option.kind == "split" else option.seconds),
            _ms(option.tail_seconds) if option.kind == "split" else "",
            "" if option.accuracy is None else f"{option.accuracy:.3f}",
            fid_text,
        ]
        for bw in bandwidths_bps:
            seconds = expected_latency(option, bw, reference_rtt_s)
            mark = " **best**" if choices and best_option(choices, bw, reference_rtt_s).id == option.id else ""
            row.append(_ms(seconds) + mark)
        lines.append("| " + " | ".join(row) + " |")
    lines += _codec_section(plan)
    if plan.table is not None:
        lines += ["", "## Decision table", "", "Rows: bandwidth (Mbit/s); columns: round-trip time (ms).", ""]
        lines.append("| Mbit/s | " + " | ".join(f"{r * 1e3:g}" for r in plan.table.rtts_s) + " |")
        lines.append("|" + "---|" * (len(plan.table.rtts_s) + 1))
        for bw, picks in zip(plan.table.bandwidths_bps, plan.table.choices, strict=True):
            lines.append(f"| {bw / 1e6:.3g} | " + " | ".join(f"`{c}`" for c in picks) + " |")
    return "\n".join(lines) + "\n"


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


def latency_svg(plan: Plan, reference_rtt_s: float, width: int = 760, height: int = 440) -> str:
    """Expected latency against bandwidth per option at ``reference_rtt_s``; the chosen option drawn thick."""
    options = _table_options(plan)
    if len(options) > _MAX_CHART_LINES and plan.table is not None:
        # too many lines to read (a plan written with --hold-all): draw the ones the table picks
        chosen_ids = {c for row in plan.table.choices for c in row}
        options = [o for o in options if o.id in chosen_ids]
    if plan.fallback is not None:
        options.append(plan.fallback)
    height = max(height, 40 + 14 * len(options) + 40)
    bandwidths = chart_bandwidths(plan)
    series = {o.id: [expected_latency(o, bw, reference_rtt_s) for bw in bandwidths] for o in options}
    values = [v for vs in series.values() for v in vs if math.isfinite(v) and v > 0]
    y_low = min(values) if values else 1e-3
    y_high = max(values) if values else 1.0
    if y_high <= y_low:
        y_high = y_low * 10
    y_low, y_high = 10 ** math.floor(math.log10(y_low)), 10 ** math.ceil(math.log10(y_high))
    left, right, top, bottom = 70, 250, 40, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    x_low, x_high = math.log10(bandwidths[0]), math.log10(bandwidths[-1])

    def x(bw: float) -> float:
        return left + plot_w * (math.log10(bw) - x_low) / max(x_high - x_low, 1e-12)

    def y(seconds: float) -> float:
        value = min(max(seconds, y_low), y_high)
        return top + plot_h * (1 - (math.log10(value) - math.log10(y_low)) / (math.log10(y_high) - math.log10(y_low)))

    table_options = [o for o in options if o.kind != "fallback"]
    chosen = [best_option(table_options, bw, reference_rtt_s).id for bw in bandwidths] if table_options else []
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">{escape(plan.model_name)}: expected latency vs bandwidth '
        f"(RTT {reference_rtt_s * 1e3:g} ms)</text>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>',
    ]
    decade = math.floor(x_low)
    while decade <= math.ceil(x_high):
        bw = 10.0**decade
        if bandwidths[0] <= bw <= bandwidths[-1]:
            out.append(f'<line x1="{x(bw):.1f}" y1="{top}" x2="{x(bw):.1f}" y2="{top + plot_h}" stroke="#ddd"/>')
            out.append(f'<text x="{x(bw):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{_mbit(bw)}</text>')
        decade += 1
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">bandwidth (Mbit/s, log)</text>')
    exponent = round(math.log10(y_low))
    while exponent <= round(math.log10(y_high)):
        seconds = 10.0**exponent
        out.append(
            f'<line x1="{left}" y1="{y(seconds):.1f}" x2="{left + plot_w}" y2="{y(seconds):.1f}" stroke="#ddd"/>'
        )
        out.append(f'<text x="{left - 5}" y="{y(seconds) + 4:.1f}" text-anchor="end">{seconds * 1e3:g} ms</text>')
        exponent += 1
    for k, option in enumerate(options):
        colour = _COLOURS[k % len(_COLOURS)]
        dash = ' stroke-dasharray="6,4"' if option.kind != "split" else ""
        points = " ".join(f"{x(bw):.1f},{y(s):.1f}" for bw, s in zip(bandwidths, series[option.id], strict=True))
        out.append(
            f'<polyline class="option" data-option="{escape(option.id)}" points="{points}" fill="none" '
            f'stroke="{colour}" stroke-width="1.5"{dash}/>'
        )
        chosen_points = [
            (bw, s) for bw, s, c in zip(bandwidths, series[option.id], chosen, strict=False) if c == option.id
        ]
        for bw, s in chosen_points:
            out.append(
                f'<circle class="chosen" data-option="{escape(option.id)}" cx="{x(bw):.1f}" cy="{y(s):.1f}" r="3" '
                f'fill="{colour}"/>'
            )
        legend_y = top + 14 * k + 10
        out.append(
            f'<line x1="{width - right + 15}" y1="{legend_y - 4}" x2="{width - right + 35}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
        )
        label = option.id + (" (chosen somewhere)" if chosen_points else "")
        out.append(f'<text x="{width - right + 40}" y="{legend_y}">{escape(label)}</text>')
    out.append(
        f'<text x="{width - right + 15}" y="{top + 14 * len(options) + 20}">dots: the option the plan picks</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"
