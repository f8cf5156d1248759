"""--balance: how each balancer deals with backends that are not equal. Three tests, each on a
fresh proxy process (a balancer that has served traffic has already learned): a slow backend,
the spread of ONE client connection over equal backends, and a failing backend. The peers run
their least-loaded policies with passive health checking. Writes results.md, results.json and
chart.svg."""

from __future__ import annotations

import argparse
import html
from dataclasses import dataclass, field
from pathlib import Path

from .. import h2load
from ..bench import Bench, machine_meta, new_output_dir, run_guarded, write_results
from ..common import AUTHORITY, LOAD_CORE, PROXY_CORE, TOOLS, BenchError, log
from ..h2load import H2loadResult, LoggedRequest
from ..processes import tail
from ..report import COLORS, code_block, fmt, svg_bar_panel, us
from ..stats import max_min, percentile
from ..tools import build, tool_versions

BAL_PROXIES = ["mesh-proxy", "envoy", "haproxy", "nginx"]
BASELINE = "baseline"  # mesh-proxy over the two fast backends only (test 1)
BAL_REQUESTS = 3000
BAL_CONNS, BAL_STREAMS = 4, 8  # h2load -c 4 -m 8: 32 requests in flight, closed loop
FAIL_STATUS = 503
LAST_N = 1000  # test 3 looks at the last 1000 requests by completion order
TARGET_SUCCESS_PCT = 99.0
BAL_LABELS = {BASELINE: "baseline: mesh-proxy, b1+b2 only"}
BAL_CONFIG = {
    "mesh-proxy": "its own balancer, per-service defaults (config as in the default mode)",
    "envoy": "`LEAST_REQUEST`; `outlier_detection` consecutive_5xx 7, base_ejection_time 1s, interval 1s, max_ejection_percent 50",
    "haproxy": "`balance leastconn`; servers `check observe layer7 error-limit 7 on-error mark-down`",
    "nginx": "`least_conn`, `keepalive 1024`; servers `max_fails=7 fail_timeout=1s`; `grpc_next_upstream error timeout` (default)",
}


def bal_label(name: str) -> str:
    return BAL_LABELS.get(name, name)


# ---- results -----------------------------------------------------------------------------


@dataclass
class SlowBackendRun:
    """Test 1: b3 is slow. How much of the load it still got, and the latency the client saw."""

    h2load: H2loadResult
    counts: list[int]
    logged: int
    non_2xx: int
    slow_share_pct: float | None  # None for the baseline, which has no b3
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    p99_ratio: float | None = None  # p99 / the baseline's p99; set by derive

    def to_dict(self) -> dict:
        return {
            "h2load": self.h2load.to_dict(),
            "counts": self.counts,
            "logged": self.logged,
            "non_2xx": self.non_2xx,
            "slow_share_pct": self.slow_share_pct,
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "max_us": self.max_us,
            "p99_ratio": self.p99_ratio,
        }


@dataclass
class OneConnRun:
    """Test 2: the requests of one client connection, with `streams` in flight."""

    streams: int
    requests: int
    ok_2xx: int
    counts: list[int]
    max_min: float | None  # None: a backend got nothing
    h2load: H2loadResult

    def to_dict(self) -> dict:
        return {
            "streams": self.streams,
            "requests": self.requests,
            "ok_2xx": self.ok_2xx,
            "counts": self.counts,
            "max_min": self.max_min,
            "h2load": self.h2load.to_dict(),
        }


@dataclass
class FailingBackendRun:
    """Test 3: b3 answers 503. How fast the proxy stopped sending it requests."""

    h2load: H2loadResult
    counts: list[int]
    logged: int
    non_2xx: int
    non_2xx_by_status: dict[str, int]
    failing_backend_got: int
    last_non_2xx_at: int | None  # 1-based, in completion order; None: no failure at all
    last_n: int
    success_last_pct: float
    meets_target: bool

    def to_dict(self) -> dict:
        return {
            "h2load": self.h2load.to_dict(),
            "counts": self.counts,
            "logged": self.logged,
            "non_2xx": self.non_2xx,
            "non_2xx_by_status": self.non_2xx_by_status,
            "failing_backend_got": self.failing_backend_got,
            "last_non_2xx_at": self.last_non_2xx_at,
            "last_n": self.last_n,
            "success_last_pct": self.success_last_pct,
            "meets_target": self.meets_target,
        }


@dataclass
class BalanceResults:
    """Per test, per proxy; filled in place, so an interruption keeps what was measured."""

    slow: dict[str, SlowBackendRun] = field(default_factory=dict)
    one_conn: dict[str, dict[str, OneConnRun]] = field(default_factory=dict)  # "m8", "m1"
    failing: dict[str, FailingBackendRun] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def any_measured(self) -> bool:
        return bool(self.slow or self.one_conn or self.failing)

    def derive(self) -> None:
        """The p99 ratio of test 1: each proxy's p99 over the baseline's."""
        base = self.slow.get(BASELINE)
        for r in self.slow.values():
            r.p99_ratio = r.p99_us / base.p99_us if base and base.p99_us > 0 else None

    def to_dict(self) -> dict:
        return {
            "slow": {n: r.to_dict() for n, r in self.slow.items()},
            "one_conn": {n: {m: r.to_dict() for m, r in runs.items()} for n, runs in self.one_conn.items()},
            "failing": {n: r.to_dict() for n, r in self.failing.items()},
            "errors": self.errors,
        }


def slow_backend_stats(r: H2loadResult, counts: list[int], rows: list[LoggedRequest], requests: int) -> SlowBackendRun:
    """Test 1's figures from h2load's summary, the backend counters and h2load's request log."""
    durs = sorted(row.duration_us for row in rows if row.is_2xx)
    if not durs:
        raise BenchError(f"slow-backend test: no 2xx response ({r.to_dict()})")
    total = sum(counts)
    return SlowBackendRun(
        h2load=r,
        counts=counts,
        logged=len(rows),
        non_2xx=requests - len(durs),
        slow_share_pct=100.0 * counts[2] / total if len(counts) == 3 and total else None,
        p50_us=percentile(durs, 50),
        p90_us=percentile(durs, 90),
        p99_us=percentile(durs, 99),
        max_us=float(durs[-1]),
    )


def failing_backend_stats(r: H2loadResult, counts: list[int], rows: list[LoggedRequest], requests: int) -> FailingBackendRun:
    """Test 3's figures. Requests are ordered by completion (start + duration): the question is
    how late the last failure came, and how clean the last LAST_N were."""
    if not rows:
        raise BenchError(f"failing-backend test: h2load logged no request ({r.to_dict()})")
    done = sorted(rows, key=lambda row: row.end_us)
    bad_idx = [i for i, row in enumerate(done) if not row.is_2xx]
    last = done[-LAST_N:]
    ok_last = sum(1 for row in last if row.is_2xx)
    non_2xx = len(bad_idx) + (requests - len(rows))  # requests h2load did not log never got a 2xx
    statuses: dict[str, int] = {}
    for row in rows:
        if not row.is_2xx:
            statuses[str(row.status)] = statuses.get(str(row.status), 0) + 1
    success_last_pct = 100.0 * ok_last / len(last)
    return FailingBackendRun(
        h2load=r,
        counts=counts,
        logged=len(rows),
        non_2xx=non_2xx,
        non_2xx_by_status=statuses,
        failing_backend_got=counts[2],
        last_non_2xx_at=bad_idx[-1] + 1 if bad_idx else None,
        last_n=len(last),
        success_last_pct=success_last_pct,
        meets_target=success_last_pct >= TARGET_SUCCESS_PCT,
    )


# ---- measurements ------------------------------------------------------------------------


class Balance:
    """The three tests. Every measured run gets a fresh proxy process."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.args = bench.args
        self.ports: dict[str, int] = {}

    def start_backends(self) -> None:
        b = self.bench
        self.ports["b1"] = b.start_backend("backend-b1", "b1", [])
        self.ports["b2"] = b.start_backend("backend-b2", "b2", [])
        self.ports["b3"] = b.start_backend("backend-b3", "b3", [])
        self.ports["slow"] = b.start_backend("backend-slow", "b3-slow", ["--delay-ms", str(self.args.slow_ms)])
        self.ports["fail"] = b.start_backend("backend-fail", "b3-fail", ["--fail-status", str(FAIL_STATUS)])
        log(f"backends: {self.ports} (slow +{self.args.slow_ms} ms, fail answers {FAIL_STATUS})")

    def upstreams(self, test: str, name: str) -> list[int]:
        p = self.ports
        if name == BASELINE:
            return [p["b1"], p["b2"]]
        third = {"slow": "slow", "one_conn": "b3", "failing": "fail"}[test]
        return [p["b1"], p["b2"], p[third]]

    def run(self, name: str, test: str, tag: str, extra: list[str], log_file: Path | None) -> tuple[H2loadResult, list[int]]:
        """Start `name` fresh, reset the counters, run h2load, read the counters, stop it."""
        b = self.bench
        proxy = "mesh-proxy" if name == BASELINE else name
        ups = self.upstreams(test, name)
        p, port = b.start_proxy(proxy, ups, policy="least", log_name=f"{name}-{tag}")
        try:
            b.reset_counts(list(self.ports.values()))
            if log_file is not None:
                log_file.unlink(missing_ok=True)
            r = h2load.run(port, extra, timeout=max(30.0, self.args.duration), log_file=log_file)
            counts = b.counts(ups)
            if p is not None and p.poll() is not None:
                raise BenchError(f"{proxy} exited (code {p.returncode}) during the run\n{tail(b.logs / f'{name}-{tag}.log')}")
        finally:
            if p is not None:
                b.procs.stop(p)
        return r, counts

    def preflight(self, name: str) -> None:
        """30 requests through a throw-away instance over fast backends: proves the generated
        config works before the measured (fresh, unwarmed) runs."""
        b = self.bench
        proxy = "mesh-proxy" if name == BASELINE else name
        p, port = b.start_proxy(proxy, self.upstreams("one_conn", name), policy="least", log_name=f"{name}-preflight")
        try:
            b.smoke(port)
        finally:
            if p is not None:
                b.procs.stop(p)

    def read_and_drop_log(self, path: Path) -> list[LoggedRequest]:
        rows = h2load.read_request_log(path)
        if not self.args.keep_latency_logs:
            path.unlink(missing_ok=True)
        return rows

    def slow(self, name: str) -> SlowBackendRun:
        n = BAL_REQUESTS
        lf = self.bench.logs / f"{name}-slow.tsv"
        r, counts = self.run(name, "slow", "slow", ["-c", str(BAL_CONNS), "-m", str(BAL_STREAMS), "-n", str(n)], lf)
        return slow_backend_stats(r, counts, self.read_and_drop_log(lf), n)

    def one_conn(self, name: str) -> dict[str, OneConnRun]:
        out = {}
        n = self.args.one_conn_requests
        for m in (BAL_STREAMS, 1):
            r, counts = self.run(name, "one_conn", f"oneconn-m{m}", ["-c", "1", "-m", str(m), "-n", str(n)], None)
            out[f"m{m}"] = OneConnRun(streams=m, requests=n, ok_2xx=r.ok_2xx, counts=counts, max_min=max_min(counts), h2load=r)
        return out

    def failing(self, name: str) -> FailingBackendRun:
        n = BAL_REQUESTS
        lf = self.bench.logs / f"{name}-failing.tsv"
        r, counts = self.run(name, "failing", "failing", ["-c", str(BAL_CONNS), "-m", str(BAL_STREAMS), "-n", str(n)], lf)
        return failing_backend_stats(r, counts, self.read_and_drop_log(lf), n)

    def measure_all(self, names: list[str], skip: list[str], res: BalanceResults) -> None:
        """Fills res in place, so an interruption still leaves what was measured."""
        errors = res.errors
        ok_names = []
        for name in [BASELINE] + names:
            if name in skip:
                errors.setdefault(name, []).append(f"{name} not installed ({TOOLS.get(name, '')})")
                continue
            log(f"=== {bal_label(name)}: preflight (30 requests, throw-away instance) ===")
            try:
                self.preflight(name)
                ok_names.append(name)
            except BenchError as e:
                errors.setdefault(name, []).append(f"preflight: {e}")
                log(f"{bal_label(name)} FAILED preflight: {e}")
        proxies = [n for n in ok_names if n != BASELINE]
        plan = [
            (res.slow, "slow backend", ok_names, self.slow),  # the baseline first
            (res.one_conn, "one connection, equal backends", proxies, self.one_conn),
            (res.failing, "one failing backend", proxies, self.failing),
        ]
        for into, what, who, fn in plan:
            for name in who:
                log(f"=== {what}: {bal_label(name)} (fresh process) ===")
                try:
                    into[name] = fn(name)
                except BenchError as e:
                    errors.setdefault(name, []).append(f"{what}: {e}")
                    log(f"{name} FAILED ({what}): {e}")


# ---- report ------------------------------------------------------------------------------


def balance_markdown(res: BalanceResults, meta: dict) -> str:
    names = meta["proxies"]
    errors = res.errors
    slow_ms = meta["slow_ms"]

    def failed(name: str) -> str:
        if not errors.get(name):
            return "not run (interrupted)"
        return "FAILED: " + errors[name][0].splitlines()[0][:120].replace("|", "/")

    def counts(c: list[int]) -> str:
        return " / ".join(map(str, c))

    def spread(v: float | None) -> str:
        return "∞ (a backend got 0)" if v is None else f"{v:.2f}"

    lines = [
        f"# Balancing benchmark {meta['timestamp']}",
        "",
        f"{meta['cpu']} ({meta['cores']} cores); proxy pinned to core {PROXY_CORE} with one worker thread, backends and "
        f"h2load on core {LOAD_CORE}. Peers in their least-loaded modes with passive health checking (configs below); "
        "mesh-proxy with its own balancer and per-service defaults. **Every measured run starts the proxy afresh** "
        "(a new process: no warm-up, nothing learned), after a throw-away 30-request preflight instance. h2load sends "
        f"every request as fast as it can (closed loop, {BAL_CONNS * BAL_STREAMS} in flight for -c {BAL_CONNS} -m {BAL_STREAMS}), "
        "so a run lasts a fraction of a second to a few seconds and the balancer's first decisions weigh in.",
        "",
        f"## 1. Slow backend (b3 +{slow_ms} ms), {BAL_REQUESTS} requests, h2load -c {BAL_CONNS} -m {BAL_STREAMS}",
        "",
        "| proxy | b3 (slow) share | counts b1/b2/b3 | p50 | p99 | p99 / baseline p99 | non-2xx |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name in [BASELINE] + names:
        r = res.slow.get(name)
        if r is None:
            lines.append(f"| {bal_label(name)} | {failed(name)} | | | | | |")
            continue
        share = "— (no b3)" if r.slow_share_pct is None else f"{r.slow_share_pct:.1f} %"
        rt = "1.00 (baseline)" if name == BASELINE else fmt(r.p99_ratio, ".2f")
        lines.append(
            f"| {bal_label(name)} | {share} | {counts(r.counts)} | {us(r.p50_us)} | {us(r.p99_us)} | {rt} | {r.non_2xx} |"
        )
    n1 = meta["one_conn_requests"]
    lines += [
        "",
        f"## 2. Equal backends, {n1} requests over ONE client connection",
        "",
        f"| proxy | -c 1 -m {BAL_STREAMS}: b1/b2/b3 | max/min | -c 1 -m 1: b1/b2/b3 | max/min |",
        "|---|---|---:|---|---:|",
    ]
    for name in names:
        runs = res.one_conn.get(name)
        if runs is None:
            lines.append(f"| {name} | {failed(name)} | | | |")
            continue
        a, b = runs[f"m{BAL_STREAMS}"], runs["m1"]
        lines.append(f"| {name} | {counts(a.counts)} | {spread(a.max_min)} | {counts(b.counts)} | {spread(b.max_min)} |")
    lines += [
        "",
        f"## 3. One failing backend (b3 answers {FAIL_STATUS}), {BAL_REQUESTS} requests, h2load -c {BAL_CONNS} -m {BAL_STREAMS}",
        "",
        f"| proxy | non-2xx (of {BAL_REQUESTS}) | b3 (failing) got | last non-2xx at # | success, last {LAST_N} | ≥ {TARGET_SUCCESS_PCT:g} % |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for name in names:
        f = res.failing.get(name)
        if f is None:
            lines.append(f"| {name} | {failed(name)} | | | | |")
            continue
        last = "none" if f.last_non_2xx_at is None else str(f.last_non_2xx_at)
        lines.append(
            f"| {name} | {f.non_2xx} | {f.failing_backend_got} | {last} | "
            f"{f.success_last_pct:.1f} % | {'yes' if f.meets_target else '**no**'} |"
        )
    lines += [
        "",
        "Requests are ordered by completion (start + duration, from h2load's --log-file). Note: **nginx retries on error** "
        "(`grpc_next_upstream error timeout`, its default: a connection error or timeout is retried on another server). "
        f"A {FAIL_STATUS} answer is neither retried nor counted by `max_fails`, so nginx has no passive ejection on 5xx "
        "for `grpc_pass` and passes every 503 through. No retries are configured for Envoy (no retry policy) or HAProxy "
        "(`retry-on` default: connection failures only). When b3 got more requests than there are non-2xx answers, "
        "the proxy resent some of them to another backend.",
        "",
        "## Balancer configuration",
        "",
        "| proxy | configuration |",
        "|---|---|",
    ]
    for name in names:
        lines.append(f"| {name} | {BAL_CONFIG.get(name, '')} |")
    if errors:
        lines += ["", "Failures:", ""]
        for name, errs in errors.items():
            lines.append(f"- **{bal_label(name)}**:")
            for e in errs:
                lines += code_block(e)
    lines.append("")
    return "\n".join(lines)


def svg_balance_chart(res: BalanceResults, meta: dict) -> str:
    names = meta["proxies"]
    colors = dict(COLORS, baseline="#8cc99c")
    errors = res.errors

    def missing(name: str) -> str:
        return "failed" if name in errors else "not run"

    def short(name: str) -> str:
        return "baseline" if name == BASELINE else name

    left, top, gap, pw, plot_h = 60, 110, 60, 330, 220
    row2 = top + plot_h + 125
    width = left + 3 * pw + 2 * gap + 20
    height = row2 + 52 + plot_h + 95
    s = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="28" font-size="18" font-weight="bold">Balancing: slow backend, one connection, failing backend</text>',
        f'<text x="{left}" y="48" fill="#444">{html.escape(meta["timestamp"])} · {html.escape(meta["cpu"])} · proxy on 1 core · '
        f'fresh proxy process per run · h2load closed loop · "failed" = proxy did not run (see results.md)</text>',
    ]
    lx = left
    for n in [BASELINE] + names:
        s.append(f'<rect x="{lx}" y="64" width="14" height="14" fill="{colors.get(n, "#555")}"/>')
        text = bal_label(n)
        s.append(f'<text x="{lx + 20}" y="76">{html.escape(text)}</text>')
        lx += 40 + 7 * len(text)

    # Row 1: slow share, p99 ratio, success of the last 1000.
    slow_names = [BASELINE] + names
    bars = []
    for n in slow_names:
        r = res.slow.get(n)
        v = r.slow_share_pct if r else None
        bars.append({"label": short(n), "value": v, "color": colors.get(n, "#555"),
                     "missing": "no b3" if n == BASELINE and r else missing(n),
                     "text": f"{v:.1f}%" if v is not None else "", "tip": f"{n}: {v:.2f} % of requests to the slow backend" if v is not None else ""})
    svg_bar_panel(s, left, top, pw, plot_h, f"Slow backend (+{meta['slow_ms']} ms) share", "% of requests to b3 (lower is better)", bars,
                  ref=(100 / 3, "round robin: 33.3 %"))
    bars = []
    for n in slow_names:
        r = res.slow.get(n)
        v = r.p99_ratio if r else None
        bars.append({"label": short(n), "value": v, "color": colors.get(n, "#555"), "missing": missing(n) if not r else "n/a",
                     "text": f"{v:.2f}" if v is not None else "", "tip": f"{n}: p99 {us(r.p99_us)}, {v:.2f} x baseline" if v is not None else ""})
    svg_bar_panel(s, left + pw + gap, top, pw, plot_h, "p99 / baseline p99 (slow backend test)",
                  "baseline = mesh-proxy over b1+b2 (lower is better)", bars, ref=(1.0, "baseline"))
    bars = []
    for n in names:
        f = res.failing.get(n)
        v = f.success_last_pct if f else None
        bars.append({"label": short(n), "value": v, "color": colors.get(n, "#555"), "missing": missing(n),
                     "text": f"{v:.1f}%" if v is not None else "", "tip": f"{n}: {v:.2f} % 2xx in the last {LAST_N}" if v is not None else ""})
    svg_bar_panel(s, left + 2 * (pw + gap), top, pw, plot_h, f"One failing backend ({FAIL_STATUS})",
                  f"% 2xx of the last {LAST_N} requests (higher is better)", bars, fixed_max=100.0,
                  ref=(TARGET_SUCCESS_PCT, f"target {TARGET_SUCCESS_PCT:g} %"))

    # Row 2: per-backend counts over one connection, b1/b2/b3 triples per proxy and -m.
    bars, groups = [], []
    for i, n in enumerate(names):
        if i:
            bars.append({"spacer": True})
        runs = res.one_conn.get(n)
        first = len(bars)
        for m in (BAL_STREAMS, 1):
            one = runs[f"m{m}"] if runs else None
            start = len(bars)
            for k in range(3):
                v = float(one.counts[k]) if one else None
                bars.append({"label": f"b{k + 1}", "value": v, "color": colors.get(n, "#555"),
                             "opacity": (1.0, 0.7, 0.45)[k], "missing": missing(n) if k == 1 else "",
                             "text": f"{v:.0f}" if v is not None else "", "tip": f"{n} -c 1 -m {m}: b{k + 1} got {v:.0f}" if v is not None else ""})
            groups.append((f"-c 1 -m {m}", start, len(bars) - 1, 0))
        groups.append((n, first, len(bars) - 1, 1))
    n1 = meta["one_conn_requests"]
    svg_bar_panel(s, left, row2, width - left - 20, plot_h, f"Per-backend counts, {n1} requests over ONE client connection (equal backends)",
                  f"requests served by b1 / b2 / b3, with -c 1 -m {BAL_STREAMS} and -c 1 -m 1 (even is better)", bars,
                  ref=(n1 / 3, f"even: {n1 / 3:.0f}"), groups=groups)
    s.append(
        f'<text x="{left}" y="{height - 30}" fill="#444" font-size="11">Slow and failing tests: {BAL_REQUESTS} requests, h2load '
        f'-c {BAL_CONNS} -m {BAL_STREAMS}, proxy started fresh. Peers: Envoy LEAST_REQUEST + outlier detection, HAProxy '
        "leastconn + observe layer7, nginx least_conn + max_fails.</text>"
    )
    s.append(
        f'<text x="{left}" y="{height - 14}" fill="#444" font-size="11">nginx retries on error/timeout (grpc_next_upstream '
        f"default) but neither counts nor retries a {FAIL_STATUS}: it has no passive ejection on 5xx. Details and raw "
        "counts: results.md.</text>"
    )
    s.append("</svg>")
    return "\n".join(s) + "\n"


# ---- the mode ----------------------------------------------------------------------------


def run(args: argparse.Namespace, skip: list[str]) -> int:
    stamp, out = new_output_dir(args, "balance")
    if not build(args):
        return 1
    names = [p for p in args.proxies if p != "direct"]
    bench = Bench(args, out)
    bal = Balance(bench)
    res = BalanceResults()

    def body() -> None:
        bal.start_backends()
        bal.measure_all(names, skip, res)

    rc = run_guarded(bench, body)
    if not res.any_measured():
        if res.errors:
            for name, errs in res.errors.items():
                log(f"{name}: " + " | ".join(e.splitlines()[0] for e in errs))
        return rc or 1
    if rc:
        log("writing the partial results gathered so far")
    res.derive()
    meta = machine_meta(stamp, "balance") | {
        "proxies": names,
        "requests": BAL_REQUESTS,
        "conns": BAL_CONNS,
        "streams": BAL_STREAMS,
        "one_conn_requests": args.one_conn_requests,
        "slow_ms": args.slow_ms,
        "fail_status": FAIL_STATUS,
        "last_n": LAST_N,
        "target_success_pct": TARGET_SUCCESS_PCT,
        "backend_ports": bal.ports,
        "configs": {n: BAL_CONFIG.get(n, "") for n in names},
        "authority": AUTHORITY,
        "tools": tool_versions(),
    }
    md = balance_markdown(res, meta)
    write_results(out, md, {"meta": meta, "results": res}, svg_balance_chart(res, meta))
    if rc:
        return rc
    return 3 if res.errors else 0
