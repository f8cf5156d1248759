"""Formatting shared by the modes' reports: numbers and durations in table cells, failure
listings, the proxies' chart colours, axis ticks, and the bar panel of the SVG charts."""

from __future__ import annotations

import html
import math


def fmt(v: float | int | None, spec: str, none: str = "n/a") -> str:
    """v formatted with spec; `none` for a missing or NaN value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def us(v: float | None) -> str:
    """A duration given in µs: "850 µs", or "1.25 ms" from 1 ms up."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v / 1000:.2f} ms" if abs(v) >= 1000 else f"{v:.0f} µs"


def error_cell(error: str | None, width: int = 120) -> str:
    """The first line of an error, cut to width, safe inside a markdown table cell."""
    return (error or "failed").splitlines()[0][:width].replace("|", "/")


def code_block(text: str | None) -> list[str]:
    """text as an indented fenced block under a markdown list item."""
    return ["  ```"] + ["  " + x for x in (text or "").splitlines()] + ["  ```"]


def failures_section(entries: list[tuple[str, list[str | None]]]) -> list[str]:
    """The "Failures:" list at the end of a report. entries: (heading, in markdown, and the errors
    shown under it); no section when there is none."""
    if not entries:
        return []
    lines = ["", "Failures:", ""]
    for heading, errors in entries:
        lines.append(f"- {heading}:")
        for error in errors:
            lines += code_block(error)
    return lines


def run_failures(runs: list) -> list[str]:
    """The failures section of the runs (anything with proxy, ok and error) that failed."""
    return failures_section([(f"**{r.proxy}**", [r.error]) for r in runs if not r.ok])


COLORS = {
    "direct": "#9e9e9e",
    "mesh-proxy": "#1b7f3b",
    "mesh-proxy (no metrics)": "#86c99a",
    "envoy": "#ad4bd6",
    "haproxy": "#1f6fb4",
    "nginx": "#e08a00",
}


def nice_step(span: float, max_ticks: int = 5) -> float:
    """A 1/2/2.5/5 x 10^k tick step giving at most max_ticks intervals over span."""
    if span <= 0:
        return 1.0
    raw = span / max_ticks
    exp = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * exp:
            return m * exp
    return 10 * exp


def svg_open(width: float, height: float, left: float, title: str, subtitle: str) -> list[str]:
    """The start of a chart: its root element on a white background, the title and, under it,
    subtitle (markup: its text already escaped)."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="28" font-size="18" font-weight="bold">{html.escape(title)}</text>',
        f'<text x="{left}" y="48" fill="#444">{subtitle}</text>',
    ]


def svg_legend(s: list[str], x: float, entries: list[tuple[str, str]], pad: float, char_width: float) -> None:
    """A row of colour swatches with their names under the title. entries: (name, colour); each
    takes pad plus char_width per character of its name."""
    for text, color in entries:
        s.append(f'<rect x="{x}" y="64" width="14" height="14" fill="{color}"/>')
        s.append(f'<text x="{x + 20}" y="76">{html.escape(text)}</text>')
        x += pad + char_width * len(text)


def svg_panel_frame(
    s: list[str], x0: float, top: float, pw: float, title: str, subtitle: str, ticks: list[tuple[float, str]],
    y0: float, axis_top: float, axis_bottom: float,
) -> None:
    """A panel's title and subtitle, its grid lines with their tick labels (ticks: (y, label)),
    the zero line at y0 and the vertical axis."""
    s.append(f'<text x="{x0 + pw / 2}" y="{top}" text-anchor="middle" font-size="14" font-weight="bold">{html.escape(title)}</text>')
    s.append(f'<text x="{x0 + pw / 2}" y="{top + 18}" text-anchor="middle" fill="#444">{html.escape(subtitle)}</text>')
    for y, text in ticks:
        s.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        s.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555" font-size="11">{text}</text>')
    s.append(f'<line x1="{x0}" y1="{y0:.1f}" x2="{x0 + pw}" y2="{y0:.1f}" stroke="#333"/>')
    s.append(f'<line x1="{x0}" y1="{axis_top}" x2="{x0}" y2="{axis_bottom:.1f}" stroke="#333"/>')


def svg_footnote(s: list[str], x: float, y: float, text: str) -> None:
    """A line of small print under the panels (text: markup)."""
    s.append(f'<text x="{x}" y="{y}" fill="#444" font-size="11">{text}</text>')


def svg_close(s: list[str]) -> str:
    return "\n".join(s + ["</svg>"]) + "\n"


def svg_bar_panel(
    s: list[str], x0: float, top: float, pw: float, plot_h: float, title: str, subtitle: str,
    bars: list[dict], fixed_max: float | None = None, ref: tuple[float, str] | None = None,
    groups: list[tuple[str, int, int, int]] | None = None,
) -> None:
    """One bar panel. bars: dicts with label, value (None: `missing` text instead), color,
    opacity, text (printed above), tip; {"spacer": True} leaves a gap. ref: (value, label) dashed
    line, explained above the plot. groups: (label, first bar, last bar, row) written under the
    bar labels, row 0 first."""
    present = [b["value"] for b in bars if not b.get("spacer") and b["value"] is not None]
    hi = fixed_max if fixed_max is not None else max(present + ([ref[0]] if ref else []) + [1e-9])
    step = nice_step(hi)
    vmax = fixed_max if fixed_max is not None else max(step, math.ceil(hi / step) * step)
    ticks = max(1, round(vmax / step))
    ptop = top + 52  # room for the reference-line legend between the subtitle and the top bar labels

    def y_of(v: float) -> float:
        return ptop + plot_h * (vmax - v) / vmax

    y0 = y_of(0.0)
    svg_panel_frame(s, x0, top, pw, title, subtitle, [(y_of(step * t), f"{step * t:g}") for t in range(ticks + 1)],
                    y0, ptop, y0)
    slot = pw / max(1, len(bars))
    bw = slot * 0.72
    for j, b in enumerate(bars):
        if b.get("spacer"):
            continue
        bx = x0 + j * slot + (slot - bw) / 2
        cx = bx + bw / 2
        v = b["value"]
        if v is None:
            s.append(f'<text x="{cx:.1f}" y="{y0 - 6:.1f}" text-anchor="middle" fill="#888" font-size="10">{html.escape(b["missing"])}</text>')
        else:
            yv = y_of(min(v, vmax))
            s.append(
                f'<rect x="{bx:.1f}" y="{yv:.1f}" width="{bw:.1f}" height="{max(y0 - yv, 0.5):.1f}" fill="{b["color"]}" '
                f'fill-opacity="{b.get("opacity", 1)}"><title>{html.escape(b["tip"])}</title></rect>'
            )
            s.append(f'<text x="{cx:.1f}" y="{yv - 5:.1f}" text-anchor="middle" font-size="10">{html.escape(b["text"])}</text>')
        s.append(f'<text x="{cx:.1f}" y="{y0 + 14:.1f}" text-anchor="middle" font-size="10" fill="#333">{html.escape(b["label"])}</text>')
    if ref is not None:  # drawn over the bars; its meaning is written above the plot
        yr = y_of(ref[0])
        s.append(f'<line x1="{x0}" y1="{yr:.1f}" x2="{x0 + pw}" y2="{yr:.1f}" stroke="#c62828" stroke-dasharray="5,4"/>')
        s.append(f'<line x1="{x0 + pw - 150}" y1="{top + 30}" x2="{x0 + pw - 128}" y2="{top + 30}" stroke="#c62828" stroke-dasharray="5,4"/>')
        s.append(f'<text x="{x0 + pw - 124}" y="{top + 34}" fill="#c62828" font-size="10">{html.escape(ref[1])}</text>')
    for label, first, last, row in groups or []:
        cx = x0 + (first + last + 1) / 2 * slot
        weight = "bold" if row else "normal"
        s.append(f'<text x="{cx:.1f}" y="{y0 + 28 + 15 * row:.1f}" text-anchor="middle" font-size="11" font-weight="{weight}" '
                 f'fill="#333">{html.escape(label)}</text>')


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten from the one at or below lo to the one at or above hi (the x ticks of a
    log-scale axis)."""
    lo_exp = math.floor(math.log10(max(lo, 1e-12)))
    hi_exp = math.ceil(math.log10(max(hi, lo, 1e-12)))
    return [10.0 ** e for e in range(lo_exp, max(hi_exp, lo_exp + 1) + 1)]


def svg_line_panel(
    s: list[str], x0: float, top: float, pw: float, plot_h: float, title: str, subtitle: str,
    series: list[tuple[str, str, list[tuple[float, float]]]], log_x: bool = True, x_label: str = "",
) -> None:
    """One line-chart panel. series: (name, colour, points (x, y)), each drawn as a polyline with
    a dot and a tooltip per point and its name at its last point; x on a log scale (log_x) or
    linear, y linear from 0."""
    xs = [x for _, _, pts in series for x, _ in pts]
    ys = [y for _, _, pts in series for _, y in pts]
    ptop = top + 34
    if not xs:
        svg_panel_frame(s, x0, top, pw, title, subtitle, [], ptop + plot_h, ptop, ptop + plot_h)
        s.append(f'<text x="{x0 + pw / 2}" y="{ptop + plot_h / 2}" text-anchor="middle" fill="#888">no data</text>')
        return
    hi = max(ys + [1e-9])
    step = nice_step(hi)
    vmax = max(step, math.ceil(hi / step) * step)
    if log_x:
        xticks = log_ticks(min(xs), max(xs))
        lx0, lx1 = math.log10(xticks[0]), math.log10(xticks[-1])

        def x_of(x: float) -> float:
            return x0 + pw * (math.log10(max(x, 1e-12)) - lx0) / (lx1 - lx0)
    else:
        # Few distinct sizes (runtime threads): a tick at each, the axis from 0.
        xticks = sorted(set(xs))
        span = xticks[-1] * 1.1 or 1.0

        def x_of(x: float) -> float:
            return x0 + pw * x / span

    def y_of(v: float) -> float:
        return ptop + plot_h * (vmax - v) / vmax

    ticks = max(1, round(vmax / step))
    y0 = y_of(0.0)
    svg_panel_frame(s, x0, top, pw, title, subtitle, [(y_of(step * t), f"{step * t:g}") for t in range(ticks + 1)],
                    y0, ptop, y0)
    for xt in xticks:
        xp = x_of(xt)
        s.append(f'<line x1="{xp:.1f}" y1="{y0:.1f}" x2="{xp:.1f}" y2="{y0 + 4:.1f}" stroke="#333"/>')
        s.append(f'<text x="{xp:.1f}" y="{y0 + 16:.1f}" text-anchor="middle" fill="#555" font-size="11">{xt:,g}</text>')
    if x_label:
        s.append(f'<text x="{x0 + pw / 2}" y="{y0 + 32:.1f}" text-anchor="middle" fill="#333" font-size="11">'
                 f'{html.escape(x_label)}</text>')
    for name, color, pts in series:
        if not pts:
            continue
        path = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in pts)
        s.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            s.append(f'<circle cx="{x_of(x):.1f}" cy="{y_of(y):.1f}" r="3" fill="{color}">'
                     f'<title>{html.escape(name)}: {y:,.3g} at {x:,.0f}</title></circle>')
        lx, ly = pts[-1]
        s.append(f'<text x="{x_of(lx) - 4:.1f}" y="{y_of(ly) - 7:.1f}" text-anchor="end" fill="{color}" '
                 f'font-size="10">{html.escape(name)}</text>')
