"""--ingress: TLS termination at the edge. mesh-ingress, nginx and HAProxy in turn, each alone on
the proxy core with one worker, terminate TLS 1.3 (ALPN h2 and http/1.1) with one server
certificate for `edge.bench.test` and proxy h2c to the three backends. Each gets its checks
(HTTPS with h2 and with http/1.1 through curl, the spread of one connection's requests), then the
max-throughput test and the latency test of the default mode over TLS keep-alive, the rate of
new TLS handshakes (mesh-bench-handshake, server-only TLS, no resumption), and its peak RSS.
`direct` (h2load over h2c straight to a backend) is the latency baseline. Writes results.md and
results.json."""

from __future__ import annotations

import argparse
import re
import subprocess
from dataclasses import dataclass

from .. import h2load
from ..bench import (
    MAX_CONNS, MAX_STREAMS, Bench, Outcome, ProxyFigures, RateRun, ThroughputRun, machine_meta, measure_each, run_mode,
    set_added_latency, throughput_latency_meta, write_results,
)
from ..common import LOAD_CORE, MESH_INGRESS, PROXY_CORE, BenchError, log
from ..h2load import TLS13_SUITE
from ..ingress_configs import EDGE_CONFIG, EDGE_HEADERS, haproxy_edge_config, mesh_ingress_config, nginx_edge_config
from ..pairs import HS_TOOL, PROBE_HANDSHAKES, SATURATED, contention_notes, quiet_check
from ..pki import EDGE_NAME, EdgeCerts
from ..processes import free_port
from ..procfs import peak_rss_kib
from ..report import error_cell, fmt, run_failures, us
from ..stats import ratio
from ..tools import first_version_line, tool_versions
from .full import OneConnSpread
from .handshakes import HandshakeStage, measure_rate
from .mtls import BaselineRun, CheckResult, TlsVersionProbe, parse_s_client

INGRESS_KINDS = [MESH_INGRESS, "nginx", "haproxy"]
CHECKS = [
    ("https_h2", "HTTPS, ALPN h2 (curl --http2)"),
    ("https_http1", "HTTPS, ALPN http/1.1 (curl --http1.1)"),
    ("edge_headers", "forwarding headers and request id reach the backend"),
    ("spread", "one TLS connection's requests reach all 3 backends"),
    ("h2load_tls", "h2load's session: TLS 1.3 + h2"),
]
CURL_TAIL_RE = re.compile(r"(\d{3}) (\S+)")
CURL_FLAGS = {"h2": ("--http2", "2"), "http/1.1": ("--http1.1", "1.1")}  # ALPN -> (curl option, HTTP version)


# ---- results -----------------------------------------------------------------------------


@dataclass
class IngressRun(Outcome, ProxyFigures):
    """Everything measured on one edge. A stage that was not reached stays None and its keys are
    left out of results.json."""

    port: int | None = None
    checks: dict[str, CheckResult] | None = None
    tls12: TlsVersionProbe | None = None  # information: does the edge also speak TLS 1.2?
    one_conn: OneConnSpread | None = None
    throughput: ThroughputRun | None = None  # over TLS keep-alive
    other_on_proxy_core: float | None = None  # share of the proxy core busy with others' work
    latency: RateRun | None = None
    handshakes: HandshakeStage | None = None
    peak_rss_mib: float | None = None
    added_p50_us: float | None = None  # vs `direct`; set by ingress_derive
    added_p99_us: float | None = None

    @property
    def handshakes_per_s(self) -> float | None:
        f = self.handshakes.figures if self.handshakes is not None else None
        return f.per_second if f is not None else None

    @property
    def cpu_us_per_handshake(self) -> float | None:
        f = self.handshakes.figures if self.handshakes is not None else None
        return f.server_cpu_us_per_hs if f is not None else None

    def to_dict(self) -> dict:
        d: dict = {}
        if self.port is not None:
            d["port"] = self.port
        if self.checks is not None:
            d["checks"] = {k: c.to_dict() for k, c in self.checks.items()}
        if self.tls12 is not None:
            d["tls12"] = self.tls12.to_dict()
        if self.one_conn is not None:
            d["one_conn"] = self.one_conn.to_dict()
        if self.throughput is not None:
            d |= self.throughput.to_dict()
            if self.other_on_proxy_core is not None:
                d["other_on_proxy_core"] = self.other_on_proxy_core
        if self.latency is not None:
            d |= self.latency.to_dict()
        if self.handshakes is not None:
            d["handshakes"] = self.handshakes.to_dict()
        if self.peak_rss_mib is not None:
            d["peak_rss_mib"] = self.peak_rss_mib  # read after all the loads
        return self.outcome_dict(d) | {"added_p50_us": self.added_p50_us, "added_p99_us": self.added_p99_us}


# ---- checks ------------------------------------------------------------------------------


@dataclass
class CurlResponse:
    """One request made by `curl -D - -w '\\n%{http_code} %{http_version}'`."""

    status: int  # 0: no response
    http_version: str  # "2", "1.1"; "0" without a response
    body: str
    backend: str | None  # the backend's x-backend header
    request_id: str | None = None  # the x-request-id header the edge sent back

    def to_dict(self) -> dict:
        return {"status": self.status, "http_version": self.http_version, "body": self.body[:200],
                "backend": self.backend, "request_id": self.request_id}


def parse_curl_output(text: str) -> CurlResponse:
    """curl's stdout with `-D -` (the status line and the response headers, then an empty
    line; CRLF or, read in text mode, LF), the body, then the `-w` line "<status> <http version>"
    (curl writes "000 0" when no response came). Raises ValueError when the last line is not
    that."""
    head, _sep, last = text.replace("\r\n", "\n").rpartition("\n")
    m = CURL_TAIL_RE.fullmatch(last.strip())
    if not m:
        raise ValueError(f"curl printed no status line at the end: {text[-200:]!r}")
    headers_text, _sep, body = head.partition("\n\n")
    headers = {}
    for line in headers_text.split("\n")[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return CurlResponse(status=int(m.group(1)), http_version=m.group(2), body=body, backend=headers.get("x-backend"),
                        request_id=headers.get("x-request-id"))


def run_curl(port: int, certs: EdgeCerts, flag: str, path: str) -> tuple[CurlResponse | None, CheckResult | None]:
    """One HTTPS GET of `path` through the edge with curl (see curl_check): the response, or the
    failed check that says why there is none."""
    argv = ["taskset", "-c", LOAD_CORE, "curl", "-sS", flag, "--cacert", certs.root,
            "--resolve", f"{EDGE_NAME}:{port}:127.0.0.1", "--max-time", "10", "-D", "-",
            "-w", "\\n%{http_code} %{http_version}", f"https://{EDGE_NAME}:{port}{path}"]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
                           start_new_session=True)
    except subprocess.TimeoutExpired:
        return None, CheckResult(False, "curl did not finish within 20 s")
    evidence: dict = {"rc": r.returncode}
    try:
        resp = parse_curl_output(r.stdout)
    except ValueError as e:
        return None, CheckResult(False, f"curl rc {r.returncode}: {(r.stderr.strip() or str(e))[:200]}", evidence)
    if r.returncode != 0 or resp.status == 0:
        evidence["response"] = resp.to_dict()
        return None, CheckResult(False, f"curl rc {r.returncode}: {r.stderr.strip()[:200]}", evidence)
    return resp, None


def parse_header_lines(body: str) -> dict[str, list[str]]:
    """The backend's `/__headers` answer: `name: value` lines -> name -> values, in order."""
    headers: dict[str, list[str]] = {}
    for line in body.splitlines():
        name, colon, value = line.partition(": ")
        if colon:
            headers.setdefault(name.strip().lower(), []).append(value)
    return headers


def edge_headers_check(port: int, certs: EdgeCerts) -> CheckResult:
    """The work of an edge, seen from the backend: each of EDGE_HEADERS arrived once, the
    forwarded client is 127.0.0.1 over https, and the request id the edge sent back is the one
    the backend got."""
    resp, failed = run_curl(port, certs, "--http2", "/__headers")
    if failed is not None:
        return failed
    assert resp is not None
    seen = parse_header_lines(resp.body)
    evidence = {"response": resp.to_dict(), "backend_saw": seen}
    problems = [f"{name} x{len(seen.get(name, []))}" for name in EDGE_HEADERS if len(seen.get(name, [])) != 1]
    if not problems:
        if seen["x-forwarded-for"] != ["127.0.0.1"]:
            problems.append(f"x-forwarded-for {seen['x-forwarded-for'][0]!r}")
        if seen["x-forwarded-proto"] != ["https"]:
            problems.append(f"x-forwarded-proto {seen['x-forwarded-proto'][0]!r}")
        if resp.request_id != seen["x-request-id"][0]:
            problems.append(f"x-request-id sent back {resp.request_id!r}, backend got {seen['x-request-id'][0]!r}")
    if resp.status != 200 or problems:
        return CheckResult(False, f"HTTP {resp.status}; " + ", ".join(problems or ["ok"]), evidence)
    return CheckResult(True, "the backend got " + ", ".join(EDGE_HEADERS) + "; the same x-request-id came back",
                       evidence)


def curl_check(port: int, certs: EdgeCerts, alpn: str) -> CheckResult:
    """One HTTPS GET through the edge with curl: SNI and Host edge.bench.test, the server's chain
    verified against the test root for that name, ALPN `alpn` (curl --http2 offers h2 and
    http/1.1, --http1.1 only http/1.1). Passes on 200, body `ok`, the expected HTTP version and
    an x-backend header."""
    flag, version = CURL_FLAGS[alpn]
    resp, failed = run_curl(port, certs, flag, "/")
    if failed is not None:
        return failed
    assert resp is not None
    evidence: dict = {"response": resp.to_dict()}
    ok = resp.status == 200 and resp.http_version == version and resp.body.strip() == "ok" and resp.backend is not None
    detail = (f"HTTP/{resp.http_version} {resp.status}, body {resp.body.strip()[:40]!r}, "
              f"x-backend {resp.backend or 'missing'}")
    if resp.http_version != version:
        detail += f" (expected HTTP/{version})"
    return CheckResult(ok, detail, evidence)


def tls12_offer(port: int, certs: EdgeCerts) -> TlsVersionProbe:
    """openssl s_client limited to TLS 1.2 (SNI edge.bench.test): whether the edge accepts it.
    Information only: each edge is configured TLS 1.3 only, so each should refuse it."""
    argv = ["taskset", "-c", LOAD_CORE, "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
            "-servername", EDGE_NAME, "-CAfile", certs.root]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
                           start_new_session=True)
    except subprocess.TimeoutExpired:
        return TlsVersionProbe(negotiated=None, refused=False, out="openssl s_client timed out")
    probe = parse_s_client(r.stdout + r.stderr)
    probe.rc = r.returncode
    return probe


def tls12_cell(probe: TlsVersionProbe | None) -> str:
    if probe is None:
        return "not run"
    if probe.refused:
        return "refused"
    return f"accepted ({probe.negotiated})" if probe.negotiated else "unknown (s_client timed out)"


def session_check(mx: ThroughputRun) -> CheckResult:
    """What h2load's max-throughput run negotiated: it must be TLS 1.3 with ALPN h2."""
    s = mx.h2load.tls
    if s is None:
        return CheckResult(False, "h2load printed no TLS session")
    ok = s.protocol == "TLSv1.3" and s.alpn == "h2"
    return CheckResult(ok, f"{s.protocol}, {s.cipher}, {s.key_exchange}, ALPN {s.alpn}")


def one_tls_connection(bench: Bench, port: int) -> OneConnSpread:
    """--one-conn-requests requests on ONE TLS connection (-c 1 -m 1), and the backends' counts."""
    n = bench.args.one_conn_requests
    bench.reset_counts()
    r = h2load.run(port, ["-c", "1", "-m", "1", "-n", str(n)], timeout=max(30, bench.args.duration),
                   server_name=EDGE_NAME)
    return OneConnSpread(requests=n, ok_2xx=r.ok_2xx, counts=bench.counts())


# ---- measurements ------------------------------------------------------------------------


def start_edge(bench: Bench, certs: EdgeCerts, kind: str) -> tuple[subprocess.Popen, int]:
    """The edge of `kind` in front of the run's three backends, pinned to the proxy core; its
    config in its own directory (nginx's prefix), its output in logs/<kind>.log."""
    d = bench.cfg / f"{kind}-edge"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port(bench.used_ports)

    def write_config(admin: int | None) -> str:
        if kind == MESH_INGRESS:
            return mesh_ingress_config(d, certs, port, admin, bench.backends)
        if kind == "nginx":
            return nginx_edge_config(d, certs, port, bench.backends)
        if kind == "haproxy":
            return haproxy_edge_config(d, certs, port, bench.backends)
        raise BenchError(f"unknown edge {kind}")

    argv, ready_url = bench.proxy_command(kind, write_config, d)
    return bench.launch(kind, argv, port, ready_url), port


def measure_direct(bench: Bench) -> BaselineRun:
    """h2load over h2c straight to backend b1 (no proxy, no TLS): the baseline of the added latency."""
    res = BaselineRun()
    try:
        res.throughput = bench.max_throughput_of("direct", [], bench.backends[0])
        res.latency = bench.latency_at_rate("direct", bench.backends[0], [], log_stem="direct")
        res.ok = True
    except BenchError as e:
        res.error = str(e)
    return res


def measure_edge(bench: Bench, certs: EdgeCerts, kind: str) -> IngressRun:
    res = IngressRun(proxy=kind)
    try:
        p, port = start_edge(bench, certs, kind)
    except BenchError as e:
        res.error = str(e)
        return res
    try:
        res.port = port
        res.checks = {}
        for key, alpn in (("https_h2", "h2"), ("https_http1", "http/1.1")):
            res.checks[key] = curl_check(port, certs, alpn)
        res.checks["edge_headers"] = edge_headers_check(port, certs)
        if not res.checks["https_h2"].passed:
            raise BenchError(f"HTTPS with h2 through the edge: {res.checks['https_h2'].detail}")
        res.tls12 = tls12_offer(port, certs)
        res.one_conn = one_tls_connection(bench, port)
        counts = res.one_conn.counts
        res.checks["spread"] = CheckResult(
            all(c > 0 for c in counts) and res.one_conn.ok_2xx == res.one_conn.requests,
            f"{res.one_conn.ok_2xx}/{res.one_conn.requests} 2xx; b1/b2/b3 = {' / '.join(map(str, counts))}",
        )
        mx = bench.max_throughput_of(kind, [p.pid], port, server_name=EDGE_NAME)
        res.throughput = mx
        busy = mx.core_busy_max.get(PROXY_CORE)
        if busy is not None and mx.proxy_cpu_util_max is not None:
            res.other_on_proxy_core = max(0.0, busy - mx.proxy_cpu_util_max)
        res.checks["h2load_tls"] = session_check(mx)
        if not res.checks["h2load_tls"].passed:
            raise BenchError(f"h2load did not get TLS 1.3 + h2: {res.checks['h2load_tls'].detail}")
        res.latency = bench.latency_at_rate(kind, port, [p.pid], server_name=EDGE_NAME)
        res.handshakes = HandshakeStage()
        measure_rate(res.handshakes, bench, certs, port, p.pid, kind, client_cert=False, server_name=EDGE_NAME,
                     what="new TLS handshakes (server certificate only)")
        res.peak_rss_mib = peak_rss_kib(p.pid) / 1024.0
        bench.check_running(p, kind, kind)
        res.ok = True
    except BenchError as e:
        res.error = str(e)
    finally:
        bench.procs.stop(p)
    return res


# ---- report ------------------------------------------------------------------------------


def ingress_derive(results: list[IngressRun], direct: BaselineRun | None) -> dict[str, dict[str, float | None]]:
    """Added p50 / p99 over `direct`, and mesh-ingress ÷ each peer for every figure."""
    set_added_latency(results, direct)
    mesh = next((r for r in results if r.proxy == MESH_INGRESS and r.ok), None)
    ratios: dict[str, dict[str, float | None]] = {}
    if mesh is None:
        return ratios

    def positive(v: float | None) -> float | None:
        return v if v is not None and v > 0 else None  # a ratio of added p99 needs both > 0

    for r in results:
        if r is mesh or not r.ok:
            continue
        ratios[r.proxy] = {
            "req_per_s": ratio(mesh.req_per_s, r.req_per_s),
            "cpu_us_per_req": ratio(mesh.cpu_us_per_req, r.cpu_us_per_req),
            "cpu_us_per_req_at_rate": ratio(mesh.cpu_us_per_req_at_rate, r.cpu_us_per_req_at_rate),
            "handshakes_per_s": ratio(mesh.handshakes_per_s, r.handshakes_per_s),
            "cpu_us_per_handshake": ratio(mesh.cpu_us_per_handshake, r.cpu_us_per_handshake),
            "added_p99_us": ratio(positive(mesh.added_p99_us), positive(r.added_p99_us)),
            "peak_rss_mib": ratio(mesh.peak_rss_mib, r.peak_rss_mib),
        }
    return ratios


def checks_summary(r: IngressRun) -> str:
    checks = r.checks or {}
    if not checks:
        return "not run"
    passed = sum(1 for c in checks.values() if c.passed)
    failed = [k for k, c in checks.items() if not c.passed]
    return f"{passed}/{len(CHECKS)}" + (f" (failed: {', '.join(failed)})" if failed else "")


def ingress_markdown(results: list[IngressRun], direct: BaselineRun | None, ratios: dict, meta: dict) -> str:
    lines = [
        f"# TLS edge benchmark {meta['timestamp']}",
        "",
        f"{meta['mode']} run on {meta['cpu']} ({meta['cores']} cores). Each edge runs alone on core {PROXY_CORE} "
        f"(one worker), terminates TLS with one ECDSA P-256 certificate for `{EDGE_NAME}` (leaf + intermediate, "
        "ALPN h2 and http/1.1) and proxies h2c (prior knowledge) to three `mesh-bench-backend`s; the backends, "
        f"h2load and `{HS_TOOL}` run on core {LOAD_CORE}. Every client sends SNI `{EDGE_NAME}`; h2load offers "
        f"the one TLS 1.3 suite {meta['tls13_suite']} (key exchange: X25519).",
        "",
        "| edge | req/s (TLS keep-alive) | CPU µs/req | CPU µs/req @rate | p50 | p99 | added p99 vs direct "
        "| handshakes/s | CPU µs/handshake | handshakes limited by | peak RSS MiB | checks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    if direct is not None:
        if direct.ok:
            lines.append(f"| direct (h2c to b1, no TLS) | {direct.throughput.req_per_s:,.0f} | n/a | n/a | "
                         f"{us(direct.latency.p50_us)} | {us(direct.latency.p99_us)} | — | n/a | n/a | | n/a | |")
        else:
            lines.append(f"| direct (h2c to b1, no TLS) | FAILED: {error_cell(direct.error, 100)} | | | | | | | | | | |")
    for r in results:
        if not r.ok:
            lines.append(f"| {r.proxy} | FAILED: {error_cell(r.error)} | | | | | | | | | | {checks_summary(r)} |")
            continue
        added = r.added_p99_us
        f = r.handshakes.figures
        lines.append(
            f"| {r.proxy} | {r.req_per_s:,.0f} | {fmt(r.cpu_us_per_req, '.1f')} | "
            f"{fmt(r.cpu_us_per_req_at_rate, '.1f')} | {us(r.p50_us)} | {us(r.p99_us)} | "
            f"{'n/a' if added is None else ('+' if added >= 0 else '') + us(added)} | "
            f"{f.per_second:,.0f} | {fmt(f.server_cpu_us_per_hs, '.0f')} | {f.limited_by} | "
            f"{fmt(r.peak_rss_mib, '.1f')} | {checks_summary(r)} |"
        )
    lines += ["", "## mesh-ingress ÷ each peer", ""]
    if ratios:
        lines += [
            "| mesh-ingress ÷ | req/s (higher is better) | CPU µs/req (lower) | CPU µs/req @rate (lower) "
            "| handshakes/s (higher) | CPU µs/handshake (lower) | added p99 (lower) | peak RSS (lower) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for peer, q in ratios.items():
            cells = [fmt(q[k], ".2f") + ("×" if q[k] is not None else "")
                     for k in ("req_per_s", "cpu_us_per_req", "cpu_us_per_req_at_rate", "handshakes_per_s",
                               "cpu_us_per_handshake")]
            cells.append(fmt(q["added_p99_us"], ".2f", "n/a (≤ 0)") + ("×" if q["added_p99_us"] is not None else ""))
            cells.append(fmt(q["peak_rss_mib"], ".2f") + ("×" if q["peak_rss_mib"] is not None else ""))
            lines.append(f"| {peer} | " + " | ".join(cells) + " |")
    else:
        lines.append(f"n/a: {MESH_INGRESS} did not run (see Failures).")
    client_bound = [r.proxy for r in results if r.ok and r.handshakes.figures.limited_by.startswith("CLIENT")]
    lines.append("")
    if client_bound:
        lines.append(
            f"**The handshake client saturated its core before the edge did** for: {', '.join(client_bound)}. Their "
            "handshakes/s are a lower bound of the edge's capacity, not the capacity; compare CPU µs/handshake "
            "instead (1 000 000 ÷ it estimates what one saturated core would do)."
        )
    elif any(r.ok for r in results):
        lines.append(f"The handshake client's core stayed below {SATURATED:.0%} in every run (it was not the limit).")

    lines += ["", "## Checks", "",
              "| edge | " + " | ".join(text for _k, text in CHECKS) + " | TLS 1.2 offered (information) |",
              "|---|" + "---|" * (len(CHECKS) + 1)]
    for r in results:
        cells = []
        for k, _text in CHECKS:
            c = (r.checks or {}).get(k)
            cells.append("not run" if c is None else ("pass" if c.passed else "**FAIL**") + ": " +
                         c.detail.replace("|", "/"))
        lines.append(f"| {r.proxy} | " + " | ".join(cells) + f" | {tls12_cell(r.tls12)} |")

    rate = f"{meta['rate_rps']} req/s over {meta['rate_conns']} TLS connections for {meta['rate_seconds']} s"
    lines += [
        "", "## How each figure is measured", "",
        f"- **req/s**: `h2load -c {MAX_CONNS} -m {MAX_STREAMS} -n {meta['requests']}` to `https://{EDGE_NAME}:<port>/` "
        "(`--connect-to 127.0.0.1:<port>`: SNI and `:authority` carry the name), TLS 1.3 with ALPN h2, keep-alive: "
        f"the {MAX_CONNS} connections are handshaken once. 2xx responses ÷ h2load's elapsed time, after a "
        f"30-request smoke test and a {meta['warmup']}-request warm-up. `direct` is h2c without TLS, for reference.",
        "- **CPU µs/req**: utime + stime of the edge's process tree (nginx: master + worker) from "
        "`/proc/PID/stat` before and after the max-throughput run, ÷ its 2xx responses. **@rate**: the same during "
        "the latency test.",
        f"- **p50, p99**: latency at {rate} (`h2load -c {meta['rate_conns']} -m 16 --rps "
        f"{meta['rate_rps'] // meta['rate_conns']} -D {meta['rate_seconds']} --log-file`, TLS keep-alive), "
        "nearest-rank over the 2xx requests. **Added p99** = p99 through the edge − `direct`'s p99 (h2load over h2c "
        "straight to backend b1, same run).",
        f"- **handshakes/s**: `{HS_TOOL}` (tokio + rustls, one core): {meta['concurrency']} concurrent loops of TCP "
        f"connect → full TLS 1.3 handshake (the edge's chain verified against the root for `{EDGE_NAME}`, no "
        "client certificate, ALPN h2) → close_notify → wait for the edge to close, for "
        f"{meta['seconds']:g} s after a {PROBE_HANDSHAKES}-handshake probe and a 1 s warm-up. No HTTP request is "
        "sent: this is the handshake alone (h2load has no such mode: `--rate` opens connections at a fixed rate). "
        "**No resumption**: the tool keeps no session and offers no ticket or "
        "PSK, and it checks that every handshake was a full one. Nothing was disabled on the servers: each issues "
        "TLS 1.3 session tickets as by default (rustls: 2 stateful tickets per handshake; OpenSSL in nginx and "
        "HAProxy: 2 stateless ones), which the tool reads and drops. **CPU µs/handshake** = the edge's utime + "
        "stime during the run ÷ completed handshakes; it does not depend on which side was the limit.",
        "- **peak RSS**: `VmHWM` summed over the edge's process tree, read after all the loads (the handshake "
        "run included).",
        f"- **checks**: curl through the edge with the chain verified against the test root (`--cacert`, "
        f"`--resolve {EDGE_NAME}:<port>:127.0.0.1`), once offering h2 and once http/1.1 only; "
        f"{meta['one_conn_requests']} requests on one TLS connection (`-c 1 -m 1`) counted by each backend; the "
        "TLS version, cipher and ALPN that h2load printed. **TLS 1.2 offered**: `openssl s_client -tls1_2`.",
        "",
        "## Edge configuration", "", "| edge | configuration |", "|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.proxy} | {EDGE_CONFIG.get(r.proxy, '')} |")
    rows = [(r.proxy, r.other_on_proxy_core, None) for r in results]
    rows += [(f"{r.proxy} (handshakes)", r.handshakes.figures.other_on_proxy_core,
              r.handshakes.figures.other_on_load_core)
             for r in results if r.handshakes is not None and r.handshakes.figures is not None]
    lines += contention_notes(rows)
    lines += run_failures([*results, *([direct] if direct else [])])
    lines.append("")
    return "\n".join(lines)


def curl_version() -> str:
    try:
        r = subprocess.run(["curl", "--version"], capture_output=True, text=True, timeout=20)
        return first_version_line("curl", r.stdout + r.stderr)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"


# ---- the mode ----------------------------------------------------------------------------


def run(args: argparse.Namespace, skip: list[str]) -> int:
    results: list[IngressRun] = []
    baseline: list[BaselineRun] = []  # at most one; a list so that the body can fill it in place

    def body(bench: Bench) -> None:
        certs = EdgeCerts(bench.cfg / "pki")
        log(f"edge PKI in {certs.dir}: root, intermediate, a leaf for {EDGE_NAME} (ECDSA P-256)")
        quiet_check()
        bench.start_backends()
        log("=== direct (h2c to b1, no proxy): the latency baseline ===")
        baseline.append(measure_direct(bench))
        if not baseline[0].ok:
            log(f"direct FAILED: {baseline[0].error}")
        measure_each(args.proxies, skip, results, IngressRun, lambda name: measure_edge(bench, certs, name),
                     " (TLS edge)")

    def write(bench: Bench, stamp: str) -> bool:
        direct = baseline[0] if baseline else None
        ratios = ingress_derive(results, direct)
        meta = machine_meta(stamp, "ingress" + (" (quick)" if args.quick else "")) | throughput_latency_meta(args) | {
            "warmup": args.warmup,
            "one_conn_requests": args.one_conn_requests,
            "slow_ms": args.slow_ms,
            "server_name": EDGE_NAME,
            "tls13_suite": TLS13_SUITE,
            "concurrency": args.hs_concurrency,
            "seconds": args.hs_seconds,
            "max_handshakes": args.hs_max,
            "saturated_at": SATURATED,
            "configs": {n: EDGE_CONFIG.get(n, "") for n in args.proxies},
            "tools": tool_versions() | {"curl": curl_version()},
        }
        md = ingress_markdown(results, direct, ratios, meta)
        write_results(bench.out, md, {"meta": meta, "direct": direct, "results": results,
                                      "ratios_mesh_ingress_over_peer": ratios})
        failed_checks = any(not c.passed for r in results for c in (r.checks or {}).values())
        return all(r.ok for r in results) and not failed_checks and (direct is None or direct.ok)

    return run_mode(args, "ingress", body, lambda: bool(results) or bool(baseline), write)
