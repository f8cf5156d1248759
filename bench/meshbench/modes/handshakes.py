"""--handshakes: how many new mutual-TLS handshakes per second the TLS-terminating side (B) of
each proxy kind completes alone on the proxy core, driven by mesh-bench-handshake on the load
core (TLS 1.3, client certificate, no session resumption). Reports B's CPU per handshake and
which core was the limit. Writes results.md and results.json. `measure_rate`, the measurement
itself, also gives --ingress its server-only handshake rate."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..bench import Bench, Outcome, machine_meta, measure_each, run_mode, write_results
from ..common import LOAD_CORE, PROXY_CORE, BenchError, log
from ..pairs import (
    HS_TOOL, PROBE_HANDSHAKES, SATURATED, PairStarter, contention_notes, handshake_tool, limit_verdict, pair_meta,
    prepare, top_errors,
)
from ..pki import SERVER_NAME, Certs, EdgeCerts
from ..procfs import core_busy, core_jiffies, cpu_seconds, peak_rss_kib
from ..report import error_cell, fmt, run_failures
from ..stats import ratio


@dataclass
class HandshakeFigures:
    """The measured run of one server, from the tool's report and /proc."""

    per_second: float
    failures: int
    server_cpu_s: float
    server_cpu_util: float | None  # share of one core
    server_cpu_us_per_hs: float
    client_cpu_util: float | None
    limited_by: str
    # The run spans the tool's start and exit too: a few ms more than its `seconds`.
    core_busy: dict[str, float]
    other_on_proxy_core: float | None  # share of a core busy with work that was not this run's
    other_on_load_core: float | None
    peak_rss_mib: float

    def to_dict(self) -> dict:
        d: dict = {
            "per_second": self.per_second,
            "failures": self.failures,
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_util": self.server_cpu_util,
            "server_cpu_us_per_hs": self.server_cpu_us_per_hs,
            "client_cpu_util": self.client_cpu_util,
            "limited_by": self.limited_by,
            "core_busy": self.core_busy,
        }
        if self.other_on_proxy_core is not None:
            d["other_on_proxy_core"] = self.other_on_proxy_core
        if self.other_on_load_core is not None:
            d["other_on_load_core"] = self.other_on_load_core
        return d | {"peak_rss_mib": self.peak_rss_mib}


@dataclass
class HandshakeRun(Outcome):
    """One server kind. A stage that was not reached stays None and is left out of results.json."""

    port: int | None = None
    probe: dict | None = None  # the tool's report of the 10-handshake probe
    run: dict | None = None  # the tool's report of the measured run
    figures: HandshakeFigures | None = None

    def to_dict(self) -> dict:
        d: dict = {}
        if self.port is not None:
            d["port"] = self.port
        if self.probe is not None:
            d["probe"] = self.probe
        if self.run is not None:
            d["run"] = self.run
        if self.figures is not None:
            d |= self.figures.to_dict()
        return self.outcome_dict(d)


@dataclass
class HandshakeStage:
    """The handshake rate measured on a server that another mode runs (--ingress): the tool's
    reports and the figures, as a stage of that mode's result."""

    probe: dict | None = None
    run: dict | None = None
    figures: HandshakeFigures | None = None

    def to_dict(self) -> dict:
        d: dict = {}
        if self.probe is not None:
            d["probe"] = self.probe
        if self.run is not None:
            d["run"] = self.run
        if self.figures is not None:
            d |= self.figures.to_dict()
        return d


def measure_rate(into: HandshakeRun | HandshakeStage, bench: Bench, certs: Certs | EdgeCerts, port: int, pid: int, kind: str,
                 *, client_cert: bool = True, server_name: str = SERVER_NAME, what: str = "new mTLS handshakes") -> None:
    """The handshake rate of the server at 127.0.0.1:port (process tree pid): a 10-handshake
    probe (all must succeed), a 1 s warm-up, then the measured run, with the server's CPU time
    and the per-core busy shares around it. Fills into.probe, into.run and into.figures as it
    goes (so a failed probe is still in results.json); BenchError when the probe fails or no
    handshake completed. client_cert False: server-only TLS (--ingress)."""
    a = bench.args

    def tool(concurrency: int, seconds: float, max_handshakes: int) -> dict:
        return handshake_tool(bench, certs, port, client_cert=client_cert, concurrency=concurrency, seconds=seconds,
                              max_handshakes=max_handshakes, server_name=server_name)

    probe = tool(1, 10, PROBE_HANDSHAKES)
    into.probe = probe
    if probe["handshakes"] != PROBE_HANDSHAKES or probe["failures"]:
        raise BenchError(f"probe: {probe['handshakes']}/{PROBE_HANDSHAKES} handshakes, "
                         f"{probe['failures']} failures: {top_errors(probe)}")
    # Warm-up: 1 s of the same load.
    tool(a.hs_concurrency, 1.0, a.hs_max)
    log(f"{kind}: {what} for {a.hs_seconds:g}s, {a.hs_concurrency} concurrent connections")
    cpu0 = cpu_seconds(pid)
    cores0 = core_jiffies()
    run = tool(a.hs_concurrency, a.hs_seconds, a.hs_max)
    cores1 = core_jiffies()
    cpu1 = cpu_seconds(pid)
    into.run = run
    if not run["handshakes"]:
        raise BenchError(f"no handshake completed ({run['failures']} failures: {top_errors(run)})")
    secs = run["seconds"]
    server_util = (cpu1 - cpu0) / secs if secs else None
    client_util = run.get("cpu_util")
    busy = core_busy(cores0, cores1)
    into.figures = HandshakeFigures(
        per_second=run["per_second"],
        failures=run["failures"],
        server_cpu_s=cpu1 - cpu0,
        server_cpu_util=server_util,
        server_cpu_us_per_hs=(cpu1 - cpu0) * 1e6 / run["handshakes"],
        client_cpu_util=client_util,
        limited_by=limit_verdict(server_util, client_util),
        core_busy=busy,
        other_on_proxy_core=(max(0.0, busy[PROXY_CORE] - server_util)
                             if PROXY_CORE in busy and server_util is not None else None),
        other_on_load_core=(max(0.0, busy[LOAD_CORE] - client_util)
                            if LOAD_CORE in busy and client_util is not None else None),
        peak_rss_mib=peak_rss_kib(pid) / 1024.0,
    )


def measure_handshakes(starter: PairStarter, kind: str) -> HandshakeRun:
    bench = starter.bench
    res = HandshakeRun(proxy=kind)
    try:
        pb, b_port = starter.start(kind, "server", "-hs")
    except BenchError as e:
        res.error = str(e)
        return res
    try:
        res.port = b_port
        measure_rate(res, bench, starter.certs, b_port, pb.pid, kind)
        bench.check_running(pb, kind, f"{kind}-server-hs")
        res.ok = True
    except BenchError as e:
        res.error = str(e)
    finally:
        bench.procs.stop(pb)
    return res


def handshakes_markdown(results: list[HandshakeRun], meta: dict) -> str:
    lines = [
        f"# mTLS handshake rate {meta['timestamp']}",
        "",
        f"{meta['cpu']} ({meta['cores']} cores). The TLS-terminating side (B) of each kind alone on core {PROXY_CORE} "
        f"(one worker); `{HS_TOOL}` on core {LOAD_CORE}: {meta['concurrency']} concurrent connections for "
        f"{meta['seconds']:g} s, each one TCP connect + a full TLS 1.3 handshake with the client certificate "
        "(ECDSA P-256 leaf + intermediate, no session resumption, ALPN h2) + close_notify, waiting for the server "
        "to close (so it has verified the client's certificate). After a 10-handshake probe and a 1 s warm-up.",
        "",
        "| server | handshakes/s | failures | server CPU µs/handshake | server CPU (of one core) "
        "| client CPU (of one core) | limited by | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        if not r.ok:
            lines.append(f"| {r.proxy} | FAILED: {error_cell(r.error)} | | | | | | |")
            continue
        f = r.figures
        lines.append(
            f"| {r.proxy} | {f.per_second:,.0f} | {f.failures} | {fmt(f.server_cpu_us_per_hs, '.0f')} | "
            f"{fmt(f.server_cpu_util, '.0%')} | {fmt(f.client_cpu_util, '.0%')} | {f.limited_by} | "
            f"{fmt(f.peak_rss_mib, '.1f')} |"
        )
    mesh = next((r for r in results if r.proxy == "mesh-proxy" and r.ok), None)
    lines += ["", "## mesh-proxy ÷ each peer", ""]
    if mesh:
        lines += ["| mesh-proxy ÷ | handshakes/s (higher is better) | server CPU µs/handshake (lower) |",
                  "|---|---:|---:|"]
        for r in results:
            if r is mesh or not r.ok:
                continue
            lines.append(f"| {r.proxy} | {fmt(ratio(mesh.figures.per_second, r.figures.per_second), '.2f')}× | "
                         f"{fmt(ratio(mesh.figures.server_cpu_us_per_hs, r.figures.server_cpu_us_per_hs), '.2f')}× |")
    else:
        lines.append("n/a: mesh-proxy did not run (see Failures).")
    client_bound = [r.proxy for r in results if r.ok and r.figures.limited_by.startswith("CLIENT")]
    lines.append("")
    if client_bound:
        lines.append(
            f"**The client saturated its core before the server did** for: {', '.join(client_bound)}. Their "
            "handshakes/s are a lower bound of the server's capacity, not the capacity; compare the server CPU "
            "µs/handshake column instead (1 000 000 ÷ it estimates what one saturated core would do)."
        )
    else:
        lines.append(f"The client's core stayed below {SATURATED:.0%} in every run (it was not the limit).")
    lines += contention_notes([(r.proxy, r.figures.other_on_proxy_core, r.figures.other_on_load_core)
                               for r in results if r.figures is not None])
    lines += run_failures(results)
    lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace, skip: list[str]) -> int:
    results: list[HandshakeRun] = []

    def body(bench: Bench) -> None:
        starter = prepare(bench)
        measure_each(args.proxies, skip, results, HandshakeRun, lambda name: measure_handshakes(starter, name),
                     " (handshakes)")

    def write(bench: Bench, stamp: str) -> bool:
        meta = machine_meta(stamp, "handshakes" + (" (quick)" if args.quick else "")) | pair_meta(args) | {
            "concurrency": args.hs_concurrency,
            "seconds": args.hs_seconds,
            "max_handshakes": args.hs_max,
            "saturated_at": SATURATED,
        }
        md = handshakes_markdown(results, meta)
        write_results(bench.out, md, {"meta": meta, "results": results})
        return all(r.ok for r in results)

    return run_mode(args, "handshakes", body, lambda: bool(results), write)
