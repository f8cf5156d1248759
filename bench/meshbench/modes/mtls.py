"""--mtls: each proxy kind as a PAIR, h2load → A (h2c in) → mutual TLS 1.3 → B → backend, both
members on the proxy core. First the checks that the pair really does mTLS (client certificate
required and verified, TLS 1.2 refused, the server's identity checked by A), then the default
mode's throughput, CPU (A + B), latency and RSS measurements. Writes results.md and
results.json."""

from __future__ import annotations

import argparse
import re
import subprocess
from dataclasses import dataclass, field

from .. import h2load
from ..bench import (
    MAX_CONNS, MAX_STREAMS, Bench, Outcome, ProxyFigures, RateRun, ThroughputRun, machine_meta, measure_each, run_mode,
    set_added_latency, throughput_latency_meta, write_results,
)
from ..common import LOAD_CORE, PROXY_CORE, BenchError, log
from ..pairs import (
    PAIR_CONFIG, PROBE_HANDSHAKES, PairStarter, contention_notes, handshake_tool, pair_meta, prepare, top_errors,
)
from ..pki import SERVER_NAME, Certs
from ..procfs import established_to, peak_rss_kib
from ..report import error_cell, fmt, run_failures, us
from ..stats import ratio

CHECKS = [
    ("through_pair", "requests through A → mTLS → B"),
    ("mtls_handshake", "B accepts the client certificate (TLS 1.3, full handshake, ALPN h2)"),
    ("no_cert_refused", "B refuses a client without a certificate"),
    ("tls12_refused", "B refuses TLS 1.2"),
    ("wrong_identity_refused", "A refuses a server whose valid certificate names another identity"),
]
S_CLIENT_SESSION_RE = re.compile(r"^New, (\S+), Cipher is (\S+)", re.M)


# ---- results -----------------------------------------------------------------------------


@dataclass
class CheckResult:
    """One mTLS check: whether it passed, in words, and the probes' raw output as evidence."""

    passed: bool
    detail: str
    evidence: dict = field(default_factory=dict)  # results.json keys -> the probes' raw reports

    def to_dict(self) -> dict:
        return {"pass": self.passed, "detail": self.detail} | self.evidence


@dataclass
class BaselineRun(Outcome, ProxyFigures):
    """`direct`: h2load straight to the backend, the baseline of the added latency."""

    proxy: str = "direct"
    throughput: ThroughputRun | None = None
    latency: RateRun | None = None

    def to_dict(self) -> dict:
        d: dict = {}
        if self.throughput is not None:
            d |= self.throughput.to_dict()
        if self.latency is not None:
            d |= self.latency.to_dict()
        return self.outcome_dict(d)


@dataclass
class PairRun(Outcome, ProxyFigures):
    """Everything measured on one pair. A stage that was not reached stays None and its keys are
    left out of results.json; checks is None for a kind that was not installed."""

    checks: dict[str, CheckResult] | None = None
    ports: dict[str, int] | None = None  # "a", "b"
    throughput: ThroughputRun | None = None  # CPU of A + B
    a_to_b_connections: int | None = None  # ESTABLISHED toward B after the max-throughput run
    other_on_proxy_core: float | None = None  # share of core 0 busy with work not the pair's
    cpu_us_per_req_a: float | None = None
    cpu_us_per_req_b: float | None = None
    latency: RateRun | None = None
    peak_rss_mib_a: float | None = None
    peak_rss_mib_b: float | None = None
    added_p50_us: float | None = None  # vs `direct`; set by mtls_derive
    added_p99_us: float | None = None

    def to_dict(self) -> dict:
        d: dict = {}
        if self.checks is not None:
            d["checks"] = {k: c.to_dict() for k, c in self.checks.items()}
        if self.ports is not None:
            d["ports"] = self.ports
        if self.throughput is not None:
            d |= self.throughput.to_dict()
            d["a_to_b_connections"] = self.a_to_b_connections
            if self.other_on_proxy_core is not None:
                d["other_on_proxy_core"] = self.other_on_proxy_core
            d["cpu_us_per_req_a"] = self.cpu_us_per_req_a
            d["cpu_us_per_req_b"] = self.cpu_us_per_req_b
        if self.latency is not None:
            d |= self.latency.to_dict()
            d["peak_rss_mib_a"] = self.peak_rss_mib_a  # read right after the latency test
            d["peak_rss_mib_b"] = self.peak_rss_mib_b
        return self.outcome_dict(d) | {"added_p50_us": self.added_p50_us, "added_p99_us": self.added_p99_us}


# ---- probes: the checks that a pair really does mTLS -------------------------------------


@dataclass
class TlsVersionProbe:
    """openssl s_client forced to one TLS version: what got negotiated, if anything."""

    negotiated: str | None  # "TLSv1.2", or None when no session was established
    refused: bool
    out: str  # the error lines and the session line of s_client's output
    rc: int | None = None  # None: s_client timed out

    def to_dict(self) -> dict:
        d: dict = {"negotiated": self.negotiated, "refused": self.refused}
        if self.rc is not None:
            d["rc"] = self.rc
        return d | {"out": self.out}


def parse_s_client(out: str) -> TlsVersionProbe:
    """Reads openssl s_client's output: "New, TLSv1.2, Cipher is ECDHE-…" when a session was
    established; "New, (NONE), Cipher is (NONE)" (and an alert error line) when refused."""
    m = S_CLIENT_SESSION_RE.search(out)
    negotiated = m.group(1) if m and m.group(2) != "(NONE)" else None
    evidence = "\n".join(line for line in out.splitlines() if "error" in line.lower() or line.startswith("New,"))
    return TlsVersionProbe(negotiated=negotiated, refused=negotiated is None, out=evidence[-600:])


def tls12_probe(port: int, certs: Certs) -> TlsVersionProbe:
    """openssl s_client forced to TLS 1.2 with the client certificate: what got negotiated."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-servername", SERVER_NAME,
            "-cert", certs.leaf("client"), "-cert_chain", certs.issuer_cert, "-key", certs.key("client"),
            "-CAfile", certs.root, "-alpn", "h2"]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
                           start_new_session=True)
    except subprocess.TimeoutExpired:
        return TlsVersionProbe(negotiated=None, refused=False, out="openssl s_client timed out")
    probe = parse_s_client(r.stdout + r.stderr)
    probe.rc = r.returncode
    return probe


def checks_on(starter: PairStarter, b_port: int) -> dict[str, CheckResult]:
    """The checks that need only B: client cert accepted, no cert refused, TLS 1.2 refused."""
    bench, c = starter.bench, starter.certs
    out: dict[str, CheckResult] = {}
    try:
        hs = handshake_tool(bench, c, b_port, concurrency=1, seconds=10, max_handshakes=PROBE_HANDSHAKES)
        ok = hs["handshakes"] == PROBE_HANDSHAKES and hs["failures"] == 0 and hs["alpn_h2"] == PROBE_HANDSHAKES
        detail = (f"{hs['handshakes']}/{PROBE_HANDSHAKES} full TLS 1.3 handshakes with the client chain, "
                  f"ALPN h2 on {hs['alpn_h2']}")
        if hs["failures"]:
            detail += f"; {hs['failures']} failed: {top_errors(hs)}"
        out["mtls_handshake"] = CheckResult(ok, detail, {"report": hs})
    except BenchError as e:
        out["mtls_handshake"] = CheckResult(False, str(e).splitlines()[0])

    probe = h2load.probe(f"https://127.0.0.1:{b_port}/")
    try:
        hs0 = handshake_tool(bench, c, b_port, client_cert=False, concurrency=1, seconds=10, max_handshakes=3)
    except BenchError as e:
        hs0 = {"handshakes": None, "failures": None, "errors": {str(e).splitlines()[0]: 1}}
    if hs0.get("handshakes") == 0 and hs0.get("failures"):
        how = f"at the TLS level ({top_errors(hs0, 1)})"
    elif probe.c4xx:
        how = f"at the HTTP level: the TLS handshake completes, then every request gets a 4xx ({probe.c4xx}/4)"
    else:
        how = f"(h2load: {probe.ok_2xx} 2xx, {probe.c4xx} 4xx, {probe.c5xx} 5xx of 4)"
    out["no_cert_refused"] = CheckResult(
        probe.ok_2xx == 0,
        (f"0/4 requests answered 2xx; refused {how}" if probe.ok_2xx == 0
         else f"{probe.ok_2xx}/4 requests WITHOUT a client certificate got 2xx"),
        {"h2load": probe.to_dict(), "tool": hs0},
    )
    t12 = tls12_probe(b_port, c)
    out["tls12_refused"] = CheckResult(
        t12.refused,
        "handshake refused" if t12.refused else f"negotiated {t12.negotiated}",
        {"probe": t12.to_dict()},
    )
    return out


def wrong_identity_check(starter: PairStarter, kind: str) -> CheckResult:
    """A in front of a B that presents the CLIENT's certificate (a valid chain to the same
    root, but not the expected server identity): no request may get through."""
    try:
        pa, a_port, pb, _ = starter.start_pair(kind, tag="-wrongid", present="client")
    except BenchError as e:
        return CheckResult(False, f"could not start the pair: {str(e).splitlines()[0]}")
    try:
        r = h2load.probe(f"http://127.0.0.1:{a_port}/", n=10)
        ok = r.ok_2xx == 0
        detail = (f"0/10 requests answered 2xx (A answered {r.c5xx} 5xx, {r.c4xx} 4xx)" if ok
                  else f"{r.ok_2xx}/10 requests reached a server with the WRONG identity")
        return CheckResult(ok, detail, {"h2load": r.to_dict()})
    finally:
        starter.bench.procs.stop(pa)
        starter.bench.procs.stop(pb)


# ---- measurements ------------------------------------------------------------------------


def measure_direct(starter: PairStarter) -> BaselineRun:
    """h2load straight to the backend: the baseline of the added latency."""
    bench = starter.bench
    res = BaselineRun()
    try:
        res.throughput = bench.max_throughput_of("direct", [], starter.backend)
        res.latency = bench.latency_at_rate("direct", starter.backend, [], log_stem="direct")
        res.ok = True
    except BenchError as e:
        res.error = str(e)
    return res


def measure_pair(starter: PairStarter, kind: str) -> PairRun:
    b = starter.bench
    res = PairRun(proxy=kind, checks={})
    try:
        pa, a_port, pb, b_port = starter.start_pair(kind)
    except BenchError as e:
        res.error = str(e)
        return res
    try:
        res.ports = {"a": a_port, "b": b_port}
        try:
            b.smoke(a_port)
            res.checks["through_pair"] = CheckResult(True, "30/30 requests answered 2xx")
        except BenchError as e:
            res.checks["through_pair"] = CheckResult(False, str(e).splitlines()[0])
            raise
        mx = b.max_throughput_of(kind, [pa.pid, pb.pid], a_port)
        res.throughput = mx
        # How A spreads the requests over TLS connections to B (HTTP/2 multiplexing or not).
        res.a_to_b_connections = established_to(b_port)
        used = mx.proxy_cpu_s_by_pid
        ok = mx.h2load.ok_2xx
        busy = mx.core_busy_max.get(PROXY_CORE)
        if busy is not None and mx.proxy_cpu_util_max is not None:
            res.other_on_proxy_core = max(0.0, busy - mx.proxy_cpu_util_max)
        res.cpu_us_per_req_a = used[0] * 1e6 / ok if ok else None
        res.cpu_us_per_req_b = used[1] * 1e6 / ok if ok else None
        res.latency = b.latency_at_rate(kind, a_port, [pa.pid, pb.pid], log_stem=f"{kind}-pair")
        res.peak_rss_mib_a = peak_rss_kib(pa.pid) / 1024.0
        res.peak_rss_mib_b = peak_rss_kib(pb.pid) / 1024.0
        for p, who in ((pa, "client"), (pb, "server")):
            b.check_running(p, f"{kind} ({who} side)", f"{kind}-{who}")
        res.checks.update(checks_on(starter, b_port))
        res.ok = True
    except BenchError as e:
        res.error = str(e)
    finally:
        b.procs.stop(pa)
        b.procs.stop(pb)
    if res.ok:
        res.checks["wrong_identity_refused"] = wrong_identity_check(starter, kind)
    return res


# ---- report ------------------------------------------------------------------------------


def mtls_derive(results: list[PairRun], direct: BaselineRun | None) -> dict[str, dict[str, float | None]]:
    """Added p50 / p99 over `direct`, and mesh-proxy ÷ each peer for every metric."""
    set_added_latency(results, direct)
    mesh = next((r for r in results if r.proxy == "mesh-proxy" and r.ok), None)
    ratios = {}
    if mesh:

        def positive(v: float | None) -> float | None:
            return v if v is not None and v > 0 else None  # a ratio of added p99 needs both > 0

        for r in results:
            if r is mesh or not r.ok:
                continue
            ratios[r.proxy] = {
                "req_per_s": ratio(mesh.req_per_s, r.req_per_s),
                "cpu_us_per_req": ratio(mesh.cpu_us_per_req, r.cpu_us_per_req),
                "cpu_us_per_req_at_rate": ratio(mesh.cpu_us_per_req_at_rate, r.cpu_us_per_req_at_rate),
                "added_p99_us": ratio(positive(mesh.added_p99_us), positive(r.added_p99_us)),
                "peak_rss_mib_a": ratio(mesh.peak_rss_mib_a, r.peak_rss_mib_a),
                "peak_rss_mib_b": ratio(mesh.peak_rss_mib_b, r.peak_rss_mib_b),
            }
    return ratios


def checks_summary(r: PairRun) -> str:
    checks = r.checks or {}
    if not checks:
        return "not run"
    passed = sum(1 for c in checks.values() if c.passed)
    failed = [k for k, c in checks.items() if not c.passed]
    return f"{passed}/{len(CHECKS)}" + (f" (failed: {', '.join(failed)})" if failed else "")


def mtls_markdown(results: list[PairRun], direct: BaselineRun | None, ratios: dict, meta: dict) -> str:
    lines = [
        f"# mTLS pair benchmark {meta['timestamp']}",
        "",
        f"{meta['mode']} run on {meta['cpu']} ({meta['cores']} cores). Each kind runs as a PAIR: h2load → (h2c) → "
        "**A** (client side) → mutual TLS 1.3 (ECDSA P-256 leaf + intermediate on both sides, each side verifies the "
        "other against the root; A also checks the server's identity) → **B** (server side) → (h2c) → one backend. "
        f"A and B pinned together on core {PROXY_CORE}, one worker each; the backend and h2load on core {LOAD_CORE}. "
        f"Max throughput: {meta['requests']} requests, h2load -c {MAX_CONNS} -m {MAX_STREAMS}. Latency: {meta['rate_rps']} req/s over "
        f"{meta['rate_conns']} connections for {meta['rate_seconds']} s. CPU = A + B.",
        "",
        "| pair | req/s | CPU µs/req (A+B) | A / B | CPU µs/req @rate (A+B) | p50 | p99 | added p99 vs direct "
        "| peak RSS MiB A | peak RSS MiB B | A→B TLS conns | mTLS checks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    if direct is not None:
        if direct.ok:
            lines.append(f"| direct (no proxy) | {direct.throughput.req_per_s:,.0f} | n/a | | n/a | "
                         f"{us(direct.latency.p50_us)} | {us(direct.latency.p99_us)} | — | | | | |")
        else:
            lines.append(f"| direct (no proxy) | FAILED: {(direct.error or '').splitlines()[0][:100]} | | | | | | | | | | |")
    for r in results:
        if not r.ok:
            lines.append(f"| {r.proxy} | FAILED: {error_cell(r.error)} | | | | | | | | | | {checks_summary(r)} |")
            continue
        added = r.added_p99_us
        conns = "n/a" if r.a_to_b_connections is None else r.a_to_b_connections
        lines.append(
            f"| {r.proxy} | {r.req_per_s:,.0f} | {fmt(r.cpu_us_per_req, '.1f')} | "
            f"{fmt(r.cpu_us_per_req_a, '.1f')} / {fmt(r.cpu_us_per_req_b, '.1f')} | "
            f"{fmt(r.cpu_us_per_req_at_rate, '.1f')} | {us(r.p50_us)} | {us(r.p99_us)} | "
            f"{'n/a' if added is None else ('+' if added >= 0 else '') + us(added)} | "
            f"{fmt(r.peak_rss_mib_a, '.1f')} | {fmt(r.peak_rss_mib_b, '.1f')} | {conns} | "
            f"{checks_summary(r)} |"
        )
    lines += ["", "## mesh-proxy ÷ each peer", ""]
    if ratios:
        lines += [
            "| mesh-proxy ÷ | req/s (higher is better) | CPU µs/req (lower) | CPU µs/req @rate (lower) | added p99 (lower) "
            "| RSS A (lower) | RSS B (lower) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for peer, q in ratios.items():
            lines.append(
                f"| {peer} | {fmt(q['req_per_s'], '.2f')}× | {fmt(q['cpu_us_per_req'], '.2f')}× | "
                f"{fmt(q['cpu_us_per_req_at_rate'], '.2f')}× | {fmt(q['added_p99_us'], '.2f', 'n/a (≤ 0)')}"
                f"{'×' if q['added_p99_us'] is not None else ''} | {fmt(q['peak_rss_mib_a'], '.2f')}× | "
                f"{fmt(q['peak_rss_mib_b'], '.2f')}× |"
            )
    else:
        lines.append("n/a: the mesh-proxy pair did not run (see Failures).")
    lines += ["", "## mTLS checks", "", "| pair | " + " | ".join(text for _k, text in CHECKS) + " |",
              "|---|" + "---|" * len(CHECKS)]
    for r in results:
        cells = []
        for k, _text in CHECKS:
            c = (r.checks or {}).get(k)
            cells.append("not run" if c is None else ("pass" if c.passed else "**FAIL**") + ": " +
                         c.detail.replace("|", "/"))
        lines.append(f"| {r.proxy} | " + " | ".join(cells) + " |")
    lines += ["", "## Pair configuration", "", "| pair | configuration |", "|---|---|"]
    for r in results:
        lines.append(f"| {r.proxy} | {PAIR_CONFIG.get(r.proxy, '')} |")
    lines += contention_notes([(r.proxy, r.other_on_proxy_core, None) for r in results])
    lines += run_failures([*results, *([direct] if direct else [])])
    lines.append("")
    return "\n".join(lines)


# ---- the mode ----------------------------------------------------------------------------


def run(args: argparse.Namespace, skip: list[str]) -> int:
    results: list[PairRun] = []
    baseline: list[BaselineRun] = []  # at most one; a list so that the body can fill it in place

    def body(bench: Bench) -> None:
        starter = prepare(bench)
        log("=== direct (no proxy): the latency baseline ===")
        baseline.append(measure_direct(starter))
        if not baseline[0].ok:
            log(f"direct FAILED: {baseline[0].error}")
        measure_each(args.proxies, skip, results, PairRun, lambda name: measure_pair(starter, name), " (pair)")

    def write(bench: Bench, stamp: str) -> bool:
        direct = baseline[0] if baseline else None
        meta = machine_meta(stamp, "mtls" + (" (quick)" if args.quick else "")) | pair_meta(args)
        ratios = mtls_derive(results, direct)
        meta |= throughput_latency_meta(args)
        md = mtls_markdown(results, direct, ratios, meta)
        write_results(bench.out, md, {"meta": meta, "direct": direct, "results": results, "ratios_mesh_over_peer": ratios})
        failed_checks = any(not c.passed for r in results for c in (r.checks or {}).values())
        return all(r.ok for r in results) and not failed_checks and (direct is None or direct.ok)

    return run_mode(args, "mtls", body, lambda: bool(results), write)
