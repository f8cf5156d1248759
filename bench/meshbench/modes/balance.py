"""--balance: how each balancer deals with backends that are not equal. Three tests, each on a
fresh proxy process (a balancer that has served traffic has already learned): a slow backend,
the spread of ONE client connection over equal backends, and a failing backend. The peers run
their least-loaded policies with passive health checking. Writes results.md, results.json and
chart.svg."""

from __future__ import annotations

import argparse
import html
import subprocess
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from .. import h2load
from ..bench import Bench, machine_meta, run_mode, write_results
from ..common import AUTHORITY, LOAD_CORE, PROXY_CORE, TOOLS, BenchError, log
from ..h2load import H2loadResult, LoggedRequest
from ..report import (
    COLORS, failures_section, fmt, svg_bar_panel, svg_close, svg_footnote, svg_legend, svg_open, us,
)
from ..stats import max_min, percentile
from ..tools import tool_versions

T = TypeVar("T")

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


def bal_kind(name: str) -> str:
    """The proxy that runs for name: the baseline is mesh-proxy (over two backends)."""
    return "mesh-proxy" if name == BASELINE else name


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
        return asdict(self)


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
        return asdict(self)


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
        return asdict(self)


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
    durs, _ = h2load.latencies(rows)
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
        ups = self.upstreams(test, name)
        with self.proxy(name, ups, tag) as (p, port):
            b.reset_counts(list(self.ports.values()))
            if log_file is not None:
                log_file.unlink(missing_ok=True)
            r = h2load.run(port, extra, timeout=max(30.0, self.args.duration), log_file=log_file)
            counts = b.counts(ups)
            b.check_running(p, bal_kind(name), f"{name}-{tag}")
        return r, counts

    def proxy(self, name: str, ups: list[int], tag: str) -> AbstractContextManager[tuple[subprocess.Popen | None, int]]:
        """A fresh `name` in its least-loaded configuration over ups, for a with block."""
        return self.bench.proxy(bal_kind(name), ups, policy="least", log_name=f"{name}-{tag}")

    def preflight(self, name: str) -> None:
        """30 requests through a throw-away instance over fast backends: proves the generated
        config works before the measured (fresh, unwarmed) runs."""
        with self.proxy(name, self.upstreams("one_conn", name), "preflight") as (_p, port):
            self.bench.smoke(port)

    def logged_run(self, name: str, test: str, stats: Callable[[H2loadResult, list[int], list[LoggedRequest], int], T]) -> T:
        """The closed-loop load of tests 1 and 3 (BAL_REQUESTS over -c BAL_CONNS -m BAL_STREAMS),
        and stats of h2load's summary, the backend counters and h2load's request log."""
        lf = self.bench.logs / f"{name}-{test}.tsv"
        r, counts = self.run(name, test, test, ["-c", str(BAL_CONNS), "-m", str(BAL_STREAMS), "-n", str(BAL_REQUESTS)], lf)
        rows = h2load.read_request_log(lf)
        if not self.args.keep_latency_logs:
            lf.unlink(missing_ok=True)
        return stats(r, counts, rows, BAL_REQUESTS)

    def slow(self, name: str) -> SlowBackendRun:
        return self.logged_run(name, "slow", slow_backend_stats)

    def one_conn(self, name: str) -> dict[str, OneConnRun]:
        out = {}
        n = self.args.one_conn_requests
        for m in (BAL_STREAMS, 1):
            r, counts = self.run(name, "one_conn", f"oneconn-m{m}", ["-c", "1", "-m", str(m), "-n", str(n)], None)
            out[f"m{m}"] = OneConnRun(streams=m, requests=n, ok_2xx=r.ok_2xx, counts=counts, max_min=max_min(counts), h2load=r)
        return out

    def failing(self, name: str) -> FailingBackendRun:
        return self.logged_run(name, "failing", failing_backend_stats)

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

    def table(
        heading: str, header: str, align: str, who: list[str], measured: dict, row: Callable[[str, object], str],
    ) -> list[str]:
        """A test's section: a row per proxy from its result, or why there is none."""
        lines = ["", heading, "", header, align]
        empty_cells = align.count("|") - 3  # after the proxy and why it has no figures
        for name in who:
            r = measured.get(name)
            lines.append(f"| {bal_label(name)} | {failed(name)} |" + " |" * empty_cells if r is None else row(name, r))
        return lines

    def slow_row(name: str, r: SlowBackendRun) -> str:
        share = "— (no b3)" if r.slow_share_pct is None else f"{r.slow_share_pct:.1f} %"
        rt = "1.00 (baseline)" if name == BASELINE else fmt(r.p99_ratio, ".2f")
        return f"| {bal_label(name)} | {share} | {counts(r.counts)} | {us(r.p50_us)} | {us(r.p99_us)} | {rt} | {r.non_2xx} |"

    def one_conn_row(name: str, runs: dict[str, OneConnRun]) -> str:
        a, b = runs[f"m{BAL_STREAMS}"], runs["m1"]
        return f"| {name} | {counts(a.counts)} | {spread(a.max_min)} | {counts(b.counts)} | {spread(b.max_min)} |"

    def failing_row(name: str, f: FailingBackendRun) -> str:
        last = "none" if f.last_non_2xx_at is None else str(f.last_non_2xx_at)
        return (f"| {name} | {f.non_2xx} | {f.failing_backend_got} | {last} | "
                f"{f.success_last_pct:.1f} % | {'yes' if f.meets_target else '**no**'} |")

    lines = [
        f"# Balancing benchmark {meta['timestamp']}",
        "",
        f"{meta['cpu']} ({meta['cores']} cores); proxy pinned to core {PROXY_CORE} with one worker thread, backends and "
        f"h2load on core {LOAD_CORE}. Peers in their least-loaded modes with passive health checking (configs below); "
        "mesh-proxy with its own balancer and per-service defaults. **Every measured run starts the proxy afresh** "
        "(a new process: no warm-up, nothing learned), after a throw-away 30-request preflight instance. h2load sends "
        f"every request as fast as it can (closed loop, {BAL_CONNS * BAL_STREAMS} in flight for -c {BAL_CONNS} -m {BAL_STREAMS}), "
        "so a run lasts a fraction of a second to a few seconds and the balancer's first decisions weigh in.",
    ]
    lines += table(
        f"## 1. Slow backend (b3 +{slow_ms} ms), {BAL_REQUESTS} requests, h2load -c {BAL_CONNS} -m {BAL_STREAMS}",
        "| proxy | b3 (slow) share | counts b1/b2/b3 | p50 | p99 | p99 / baseline p99 | non-2xx |",
        "|---|---:|---|---:|---:|---:|---:|",
        [BASELINE] + names, res.slow, slow_row,
    )
    lines += table(
        f"## 2. Equal backends, {meta['one_conn_requests']} requests over ONE client connection",
        f"| proxy | -c 1 -m {BAL_STREAMS}: b1/b2/b3 | max/min | -c 1 -m 1: b1/b2/b3 | max/min |",
        "|---|---|---:|---|---:|",
        names, res.one_conn, one_conn_row,
    )
    lines += table(
        f"## 3. One failing backend (b3 answers {FAIL_STATUS}), {BAL_REQUESTS} requests, h2load -c {BAL_CONNS} -m {BAL_STREAMS}",
        f"| proxy | non-2xx (of {BAL_REQUESTS}) | b3 (failing) got | last non-2xx at # | success, last {LAST_N} | ≥ {TARGET_SUCCESS_PCT:g} % |",
        "|---|---:|---:|---:|---:|:---:|",
        names, res.failing, failing_row,
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
    lines += failures_section([(f"**{bal_label(name)}**", errs) for name, errs in errors.items()])
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
    s = svg_open(
        width, height, left, "Balancing: slow backend, one connection, failing backend",
        f'{html.escape(meta["timestamp"])} · {html.escape(meta["cpu"])} · proxy on 1 core · '
        'fresh proxy process per run · h2load closed loop · "failed" = proxy did not run (see results.md)',
    )
    svg_legend(s, left, [(bal_label(n), colors.get(n, "#555")) for n in [BASELINE] + names], 40, 7)

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
    svg_footnote(
        s, left, height - 30, f"Slow and failing tests: {BAL_REQUESTS} requests, h2load -c {BAL_CONNS} -m {BAL_STREAMS}, "
        "proxy started fresh. Peers: Envoy LEAST_REQUEST + outlier detection, HAProxy leastconn + observe layer7, nginx "
        "least_conn + max_fails.",
    )
    svg_footnote(
        s, left, height - 14, f"nginx retries on error/timeout (grpc_next_upstream default) but neither counts nor "
        f"retries a {FAIL_STATUS}: it has no passive ejection on 5xx. Details and raw counts: results.md.",
    )
    return svg_close(s)


# ---- the mode ----------------------------------------------------------------------------


def run(args: argparse.Namespace, skip: list[str]) -> int:
    names = [p for p in args.proxies if p != "direct"]
    res = BalanceResults()
    bal: list[Balance] = []  # one, on the run's Bench; a list so that the body can hand it on

    def body(bench: Bench) -> None:
        bal.append(Balance(bench))
        bal[0].start_backends()
        bal[0].measure_all(names, skip, res)

    def measured() -> bool:
        """Whether there is anything to write; if not, why (a run that failed early)."""
        if not res.any_measured():
            for name, errs in res.errors.items():
                log(f"{name}: " + " | ".join(e.splitlines()[0] for e in errs))
        return res.any_measured()

    def write(bench: Bench, stamp: str) -> bool:
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
            "backend_ports": bal[0].ports,
            "configs": {n: BAL_CONFIG.get(n, "") for n in names},
            "authority": AUTHORITY,
            "tools": tool_versions(),
        }
        md = balance_markdown(res, meta)
        write_results(bench.out, md, {"meta": meta, "results": res}, svg_balance_chart(res, meta))
        return not res.errors

    return run_mode(args, "balance", body, measured, write)
