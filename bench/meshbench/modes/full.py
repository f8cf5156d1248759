"""The default mode (and --quick): each proxy in turn, as an h2c L7 round-robin balancer over
three backends, gets a smoke test and warm-up, the max-throughput test with its CPU per request,
the latency test at a fixed rate, the spread of one connection's requests over the backends,
and its peak RSS. HAProxy in `mode tcp` adds the L4 comparison. Writes results.md,
results.json and chart.svg."""

from __future__ import annotations

import argparse
import html
import math
from dataclasses import dataclass

from .. import h2load
from ..bench import (
    MAX_CONNS, MAX_STREAMS, Bench, Outcome, ProxyFigures, RateRun, ThroughputRun, machine_meta, measure_each, run_mode,
    set_added_latency, throughput_latency_meta, write_results,
)
from ..common import AUTHORITY, LOAD_CORE, NO_METRICS_TOML, PROXY_CORE, BenchError, label, log
from ..procfs import peak_rss_kib
from ..report import (
    COLORS, error_cell, fmt, nice_step, run_failures, svg_close, svg_footnote, svg_legend, svg_open, svg_panel_frame,
    us,
)
from ..tools import tool_versions


@dataclass
class OneConnSpread:
    """How the requests of ONE client connection landed on the backends."""

    requests: int
    ok_2xx: int
    counts: list[int]

    def to_dict(self) -> dict:
        return {"requests": self.requests, "ok_2xx": self.ok_2xx, "counts": self.counts}


@dataclass
class ProxyRun(Outcome, ProxyFigures):
    """Everything measured on one proxy, by its label ("mesh-proxy (no metrics)" rather than its
    --proxies name). A stage that was not reached (the proxy failed before it) stays None and
    its keys are left out of results.json."""

    port: int | None = None
    throughput: ThroughputRun | None = None
    latency: RateRun | None = None
    one_conn: OneConnSpread | None = None
    peak_rss_mib: float | None = None  # None for `direct`: no proxy process
    added_p50_us: float | None = None  # vs `direct`; set by add_derived
    added_p99_us: float | None = None

    def to_dict(self) -> dict:
        d: dict = {}
        if self.port is not None:
            d["port"] = self.port
        if self.throughput is not None:
            d |= self.throughput.to_dict()
        if self.latency is not None:
            d |= self.latency.to_dict()
        if self.one_conn is not None:
            d["one_conn"] = self.one_conn.to_dict()
            d["peak_rss_mib"] = self.peak_rss_mib  # measured right after the one-connection test
        return self.outcome_dict(d) | {"added_p50_us": self.added_p50_us, "added_p99_us": self.added_p99_us}


@dataclass
class L4Run(Outcome):
    """HAProxy in `mode tcp`: only the one-connection spread."""

    one_conn: OneConnSpread | None = None

    def to_dict(self) -> dict:
        return self.outcome_dict({"one_conn": self.one_conn.to_dict()} if self.one_conn is not None else {})


# ---- measurements ------------------------------------------------------------------------


def one_connection(bench: Bench, port: int) -> OneConnSpread:
    n = bench.args.one_conn_requests
    bench.reset_counts()
    r = h2load.run(port, ["-c", "1", "-m", "1", "-n", str(n)], timeout=max(30, bench.args.duration))
    return OneConnSpread(requests=n, ok_2xx=r.ok_2xx, counts=bench.counts())


def measure(bench: Bench, name: str) -> ProxyRun:
    res = ProxyRun(proxy=label(name))
    try:
        with bench.proxy(name) as (p, port):
            res.port = port
            res.throughput = bench.max_throughput(name, p, port)
            res.latency = bench.latency_at_rate(name, port, [p.pid] if p else [])
            # How the requests of ONE client connection are spread over the backends.
            res.one_conn = one_connection(bench, port)
            # Peak RSS after all loads.
            res.peak_rss_mib = peak_rss_kib(p.pid) / 1024.0 if p else None
            bench.check_running(p, label(name), name)
            res.ok = True
    except BenchError as e:
        res.error = str(e)
    return res


def measure_l4(bench: Bench) -> L4Run:
    """HAProxy in TCP mode: balances connections, not requests."""
    res = L4Run(proxy="haproxy-tcp (L4)")
    try:
        with bench.proxy("haproxy-tcp") as (_p, port):
            bench.smoke(port)
            res.one_conn = one_connection(bench, port)
            res.ok = True
    except BenchError as e:
        res.error = str(e)
    return res


def add_derived(results: list[ProxyRun]) -> None:
    """Added p50 / p99: each proxy's latency minus `direct`'s, from the same run."""
    set_added_latency(results, next((r for r in results if r.proxy == "direct" and r.ok), None))


# ---- report ------------------------------------------------------------------------------


def markdown(results: list[ProxyRun], l4: L4Run | None, meta: dict) -> str:
    lines = [
        f"# Proxy benchmark {meta['timestamp']}",
        "",
        f"{meta['mode']} run on {meta['cpu']} ({meta['cores']} cores), proxy pinned to core {PROXY_CORE}, "
        f"backends + h2load on core {LOAD_CORE}. Max throughput: {meta['requests']} requests, h2load -c {MAX_CONNS} -m {MAX_STREAMS}. "
        f"Latency: {meta['rate_rps']} req/s over {meta['rate_conns']} connections for {meta['rate_seconds']} s. "
        f"One connection: {meta['one_conn_requests']} requests, -c 1 -m 1."
        + (f" Backend b3 delayed by {meta['slow_ms']} ms." if meta["slow_ms"] else ""),
        "",
        "| proxy | req/s | CPU µs/req | CPU µs/req @rate | p50 | p99 | added p99 vs direct | peak RSS MiB | per-backend counts, one connection (b1/b2/b3) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if not r.ok:
            lines.append(f"| {r.proxy} | FAILED: {error_cell(r.error)} | | | | | | | |")
            continue
        added = "—" if r.proxy == "direct" else ("+" if (r.added_p99_us or 0) >= 0 else "") + us(r.added_p99_us)
        lines.append(
            f"| {r.proxy} | {r.req_per_s:,.0f} | {fmt(r.cpu_us_per_req, '.1f')} | "
            f"{fmt(r.cpu_us_per_req_at_rate, '.1f')} | {us(r.p50_us)} | {us(r.p99_us)} | {added} | "
            f"{fmt(r.peak_rss_mib, '.1f')} | {' / '.join(map(str, r.one_conn.counts))} |"
        )
    if l4 is not None:
        lines += ["", "L4 comparison (one h2 connection through a TCP balancer, round robin per connection):", ""]
        lines += ["| balancer | requests (2xx) | per-backend counts (b1/b2/b3) |", "|---|---:|---|"]
        rows: list[L4Run | ProxyRun] = [l4] + [r for r in results if r.proxy == "mesh-proxy"]
        for row in rows:
            if row.ok:
                oc = row.one_conn
                lines.append(f"| {row.proxy} | {oc.ok_2xx} | {' / '.join(map(str, oc.counts))} |")
            else:
                lines.append(f"| {row.proxy} | FAILED: {error_cell(row.error)} | |")
    lines += run_failures([*results, *([l4] if l4 else [])])
    lines.append("")
    return "\n".join(lines)


def svg_chart(results: list[ProxyRun], meta: dict) -> str:
    panels = [
        ("Max throughput", "requests / s", "higher is better", "req_per_s", lambda v: f"{v / 1000:.1f}k"),
        ("Proxy CPU per request", "µs of CPU / request", "lower is better", "cpu_us_per_req", lambda v: f"{v:.1f}"),
        (f"Added p99 latency @ {meta['rate_rps']} req/s", "µs over direct", "lower is better", "added_p99_us", lambda v: f"{v:.0f}"),
        ("Peak memory (RSS)", "MiB", "lower is better", "peak_rss_mib", lambda v: f"{v:.1f}"),
    ]
    names = [r.proxy for r in results]
    pw, ph = (300 if len(names) <= 5 else 70 * len(names)), 330  # panel size; 70 px per bar past 5 bars
    left, top, gap = 60, 110, 40
    width = left + len(panels) * (pw + gap)
    height = top + ph + 30
    plot_h = ph - 90
    s = svg_open(
        width, height, left, "Service-mesh proxies, h2c L7 round robin over 3 backends",
        f'{html.escape(meta["timestamp"])} · {html.escape(meta["mode"])} run · '
        f'{html.escape(meta["cpu"])} · proxy on 1 core · "n/a" = not applicable (no proxy) · "failed" = proxy did not run',
    )
    svg_legend(s, left, [(n, COLORS.get(n, "#555")) for n in names], 50, 8)
    for i, (title, unit, better, attr, short) in enumerate(panels):
        x0 = left + i * (pw + gap)
        y_base = top + 40 + plot_h  # y of value 0 when all values >= 0
        vals = [(r.proxy, getattr(r, attr) if r.ok else None, r.ok) for r in results]
        present = [v for _, v, _ in vals if v is not None]
        hi = max([v for v in present if v > 0], default=1.0)
        lo = min([v for v in present if v < 0], default=0.0)
        step = nice_step(hi - lo)
        vmax = math.ceil(hi / step) * step
        vmin = math.floor(lo / step) * step
        span = vmax - vmin
        ticks = round(span / step)

        def y_of(v: float) -> float:
            return top + 40 + plot_h * (vmax - v) / span

        tick_values = [vmin + step * t for t in range(ticks + 1)]
        y0 = y_of(0.0)
        svg_panel_frame(
            s, x0, top, pw, title, f"{unit} ({better})",
            [(y_of(v), f"{v / 1000:g}k" if span >= 10000 else f"{v:g}") for v in tick_values],
            y0, top + 40, y_base if vmin == 0 else y_of(vmin),
        )
        slot = pw / max(1, len(vals))
        bw = slot * 0.7
        for j, (name, v, ok) in enumerate(vals):
            bx = x0 + j * slot + (slot - bw) / 2
            cx = bx + bw / 2
            color = COLORS.get(name, "#555")
            if attr == "added_p99_us" and name == "direct" and ok:
                s.append(f'<text x="{cx:.1f}" y="{y0 - 6:.1f}" text-anchor="middle" fill="#888" font-size="11">baseline</text>')
            elif v is None:
                msg = "failed" if not ok else "n/a"
                s.append(f'<text x="{cx:.1f}" y="{y0 - 6:.1f}" text-anchor="middle" fill="#888" font-size="11">{msg}</text>')
            else:
                yv = y_of(v)
                ytop, h = (yv, y0 - yv) if v >= 0 else (y0, yv - y0)
                s.append(f'<rect x="{bx:.1f}" y="{ytop:.1f}" width="{bw:.1f}" height="{max(h, 0.5):.1f}" fill="{color}">'
                         f'<title>{html.escape(name)}: {v:.3g} {html.escape(unit)}</title></rect>')
                ty = ytop - 5 if v >= 0 else ytop + h + 13
                s.append(f'<text x="{cx:.1f}" y="{ty:.1f}" text-anchor="middle" font-size="11">{short(v)}</text>')
            # category label under the axis; "mesh-proxy (no metrics)" on two lines
            ly = top + 40 + plot_h + (plot_h * (-vmin) / span if vmin < 0 else 0) + 16
            for k, part in enumerate(name.replace(" (", "\n(").split("\n")):
                s.append(f'<text x="{cx:.1f}" y="{ly + 12 * k:.1f}" '
                         f'text-anchor="middle" font-size="10" fill="#333">{html.escape(part)}</text>')
    svg_footnote(
        s, left, height - 16, f'Added p99 = p99 through the proxy minus p99 without proxy, at {meta["rate_rps"]} req/s '
        f'over {meta["rate_conns"]} h2 connections. CPU = utime+stime of the proxy process during the max-throughput '
        "run, divided by the requests answered. RSS = peak (VmHWM).",
    )
    return svg_close(s)


# ---- the mode ----------------------------------------------------------------------------


def run(args: argparse.Namespace, skip: list[str]) -> int:
    results: list[ProxyRun] = []
    l4: list[L4Run] = []  # at most one; a list so that the body can fill it in place

    def body(bench: Bench) -> None:
        bench.start_backends()
        measure_each(args.proxies, skip, results, ProxyRun, lambda name: measure(bench, name))
        if args.l4:
            log("=== L4: haproxy mode tcp ===")
            l4.append(measure_l4(bench))

    def write(bench: Bench, stamp: str) -> bool:
        add_derived(results)
        meta = machine_meta(stamp, "quick" if args.quick else "full") | throughput_latency_meta(args) | {
            "one_conn_requests": args.one_conn_requests,
            "slow_ms": args.slow_ms,
            "authority": AUTHORITY,
            "no_metrics_config": f"mesh-proxy's config plus {NO_METRICS_TOML!r}",
            "tools": tool_versions(),
        }
        l4_run = l4[0] if l4 else None
        md = markdown(results, l4_run, meta)
        write_results(bench.out, md, {"meta": meta, "results": results, "l4": l4_run}, svg_chart(results, meta))
        return all(r.ok for r in results)

    return run_mode(args, None, body, lambda: bool(results), write)
