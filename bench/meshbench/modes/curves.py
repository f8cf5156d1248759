"""--curves: how mesh-proxy's cost grows with what it holds, from 1 to the largest size this
machine holds, and the chart of each curve (chart.svg) with the data behind it (results.json).

Curves (each point in a fresh proxy process, alone on the proxy core unless said otherwise):

- endpoints: one service of N endpoints (one mesh-bench-backend process listening on N
  consecutive ports): RSS at rest after start, then CPU per request, req/s and peak RSS under
  the max-throughput load (h2load -c 16 -m 32), which opens a connection to most endpoints.
- services: N configured services of 10 endpoints each, traffic to one: RSS at rest (what a
  service that carries no traffic costs) and CPU per request.
- idle connections: N h2c client connections (mesh-bench-conns), each after one request, held
  idle: RSS added over the proxy's own at rest. Every installed peer is measured the same way,
  so the bytes per idle connection stand beside HAProxy's, nginx's and Envoy's.
- concurrent streams: N requests in flight at once (backends answer after STREAM_DELAY_MS):
  peak RSS added.
- runtime threads: max throughput with `[runtime] threads` 1 and 2, the proxy on both cores
  (the load generator and backends still on core 1: the proxy's scaling on this machine).
- one balancer pick against endpoints: criterion's `pick` bench of mesh-balance.

Each curve is named by its growth (`growth`): constant, or linear with the cost per unit (bytes
per connection, per endpoint, per service) from a least-squares fit, and its knee: the size where
the slope before and after differ by more than KNEE_FACTOR."""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import h2load
from ..bench import Bench, machine_meta, run_mode, write_results
from ..common import AUTHORITY, LOAD_CORE, PROXY_CORE, REPO_DIR, BenchError, log
from ..procfs import peak_rss_kib, rss_kib
from ..processes import free_port, tail, wait_http_ok, wait_tcp
from ..proxy_configs import envoy_config, haproxy_config, mesh_proxy_services_config, nginx_config
from ..report import COLORS, fmt, svg_close, svg_footnote, svg_legend, svg_line_panel, svg_open
from ..tools import envoy_binary, tool_versions

ENDPOINTS = [1, 10, 100, 1000, 10000]
SERVICES = [1, 10, 100, 1000]
SERVICE_ENDPOINTS = 10
IDLE_CONNECTIONS = [1, 10, 100, 1000, 5000, 10000]
STREAMS = [1, 10, 100, 1000, 10000]
THREADS = [1, 2]
PICK_SIZES = [1, 10, 100, 1000, 10000]
QUICK = {"endpoints": [1, 10, 100], "services": [1, 10, 100], "idle": [1, 10, 100], "streams": [1, 10, 100]}
IDLE_PEERS = ["mesh-proxy", "haproxy", "nginx", "envoy"]
STREAM_DELAY_MS = 1000
STREAMS_PER_CONN = 100  # h2load -m: streams per connection of the concurrent-streams curve
SETTLE_S = 1.0  # after a change, before RSS is read: the proxy finishes its work and frees
KNEE_FACTOR = 2.0
FD_LIMIT = 100_000
MAX_FAILED_SHARE = 0.01
# Backend ports below the ephemeral range (32768-60999): the proxy's own connections never
# take one of them.
PORT_BASES = [20000, 10000, 21000, 11000]


@dataclass
class Point:
    x: int
    values: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict:
        d: dict = {"x": self.x} | self.values
        if self.error is not None:
            d["error"] = self.error
        return d


@dataclass
class Series:
    name: str  # "mesh-proxy", "haproxy", ...
    points: list[Point] = field(default_factory=list)

    def xy(self, key: str, scale: float = 1.0) -> list[tuple[float, float]]:
        return [(p.x, p.values[key] * scale) for p in self.points if p.values.get(key) is not None]

    def to_dict(self) -> dict:
        return {"name": self.name, "points": [p.to_dict() for p in self.points]}


def fit_line(xy: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope and intercept of y over x (at least one point)."""
    n = len(xy)
    mx = sum(x for x, _ in xy) / n
    my = sum(y for _, y in xy) / n
    sxx = sum((x - mx) ** 2 for x, _ in xy)
    if sxx == 0:
        return 0.0, my
    slope = sum((x - mx) * (y - my) for x, y in xy) / sxx
    return slope, my - slope * mx


def growth(xy: list[tuple[float, float]], unit: str, per: str, flat: float = 0.15) -> dict:
    """What a curve's growth is: "constant" when y stays within `flat` of its smallest value
    (relative), else "linear" with the least-squares slope in `unit` per `per`; and its knee:
    the x where the slope before and the slope after differ by more than KNEE_FACTOR. Returns a
    dict with kind, slope, intercept, knee_at (None without) and text."""
    pts = sorted(xy)
    if len(pts) < 2:
        return {"kind": "unknown", "slope": None, "intercept": None, "knee_at": None, "text": "too few points"}
    ys = [y for _, y in pts]
    lo, hi = min(ys), max(ys)
    slope, intercept = fit_line(pts)
    if lo > 0 and (hi - lo) / lo <= flat or hi == lo:
        kind, text = "constant", f"constant: {lo:,.3g} to {hi:,.3g} {unit}"
    else:
        kind, text = "linear", f"linear: {slope:,.3g} {unit} per {per}"
    knee = None
    span = hi - lo
    if kind == "linear":
        # The interior point where the slope before it (from the first point) and after it (to
        # the last) differ most, if by more than KNEE_FACTOR; each side must move y by a tenth
        # of its range, so that the noise of small sizes does not make a knee.
        best = 0.0
        (xa, ya), (xz, yz) = pts[0], pts[-1]
        for xk, yk in pts[1:-1]:
            if abs(yk - ya) < span / 10 or abs(yz - yk) < span / 10 or xk in (xa, xz):
                continue
            before, after = (yk - ya) / (xk - xa), (yz - yk) / (xz - xk)
            if before <= 0 or after <= 0:
                continue
            ratio = max(after / before, before / after)
            if ratio > KNEE_FACTOR and ratio > best:
                best, knee = ratio, xk
    if knee is not None:
        text += f"; knee at {knee:,.0f}"
    return {"kind": kind, "slope": slope, "intercept": intercept, "knee_at": knee, "text": text}


class CurvesRun:
    """The measurements of one --curves run, written as they are taken."""

    def __init__(self, bench: Bench, args: argparse.Namespace) -> None:
        self.bench = bench
        self.args = args
        self.curves: dict[str, list[Series]] = {}
        self.pick: Series | None = None
        self.notes: list[str] = []

    # ---- helpers -------------------------------------------------------------------------

    def sizes(self, curve: str, full: list[int]) -> list[int]:
        return QUICK[curve] if self.args.quick else full

    def multi_port_backend(self, stem: str, count: int, extra: list[str] | None = None) -> list[int]:
        """One mesh-bench-backend on `count` consecutive ports below the ephemeral range."""
        exe = self.bench.bin_dir / "mesh-bench-backend"
        if not exe.exists():
            raise BenchError(f"{exe} not found: build it (cargo build --release -p mesh-bench) or drop --no-build")
        last_error = ""
        for base in PORT_BASES:
            ports = list(range(base, base + count))
            argv = ["taskset", "-c", LOAD_CORE, str(exe), "--listen", f"127.0.0.1:{base}", "--ports", str(count),
                    "--name", stem] + (extra or [])
            try:
                self.bench.launch(stem, argv, ports[-1])
                self.bench.used_ports.update(ports)
                return ports
            except BenchError as e:
                last_error = str(e)
        raise BenchError(f"no free range of {count} ports for {stem}: {last_error}")

    def start_mesh(self, stem: str, services: list[tuple[str, list[int]]], threads: int = 1,
                   max_connections: int | None = None, cores: str = PROXY_CORE):
        b = self.bench
        port = free_port(b.used_ports)
        admin = free_port(b.used_ports)
        cfg = mesh_proxy_services_config(b.cfg, port, admin, services, threads, max_connections, name=f"{stem}.toml")
        argv = ["taskset", "-c", cores, str(b.mesh_exe), "--config", cfg]
        return b.launch(stem, argv, port, f"http://127.0.0.1:{admin}/ready"), port

    def start_peer(self, kind: str, stem: str, backends: list[int], max_connections: int):
        """A peer in the default mode's round-robin h2c role, with room for max_connections."""
        b = self.bench
        if kind == "mesh-proxy":
            return self.start_mesh(stem, [(AUTHORITY, backends)], max_connections=max_connections)
        port = free_port(b.used_ports)

        def write(admin: int | None) -> str:
            if kind == "haproxy":
                return haproxy_config(b.cfg, port, backends, "http", maxconn=max_connections)
            if kind == "nginx":
                return nginx_config(b.cfg, port, backends, worker_connections=max_connections)
            return envoy_config(b.cfg, port, admin or 0, backends)

        argv, ready = b.proxy_command(kind, write, b.cfg)
        return b.launch(stem, argv, port, ready), port

    def settled_rss(self, pid: int) -> int:
        time.sleep(SETTLE_S)
        return rss_kib(pid)

    def curve(self, key: str, sizes: list[int], what: str, body) -> None:
        """mesh-proxy's curve `key`: body(n) -> values at each size (see measure)."""
        series = Series("mesh-proxy")
        self.curves[key] = [series]
        for n in sizes:
            log(f"=== {what}: {n} ===")
            self.measure(series, n, lambda n=n: body(n))

    def measure(self, series: Series, x: int, body) -> None:
        """body() -> values; a BenchError becomes the point's error and the curve goes on."""
        try:
            series.points.append(Point(x, body()))
        except BenchError as e:
            log(f"{series.name} at {x}: FAILED: {e}")
            series.points.append(Point(x, error=str(e)))
        finally:
            self.bench.procs.stop_all_but(self.keep)

    # ---- the curves ----------------------------------------------------------------------

    def run(self) -> None:
        raise_fd_limit(self.notes)
        b = self.bench
        biggest = max(self.sizes("endpoints", ENDPOINTS))
        self.ports = self.multi_port_backend("backend-many", biggest)
        b.start_backends()
        self.keep = set(b.procs.procs[i][1].pid for i in range(len(b.procs.procs)))
        self.endpoints_curve()
        self.services_curve()
        self.idle_curve()
        self.threads_curve()
        self.streams_curve()
        if not self.args.no_pick:
            self.pick_curve()

    def load_point(self, p, port: int) -> dict:
        before = self.settled_rss(p.pid)
        run = self.bench.max_throughput("mesh-proxy", p, port)
        failed = self.args.requests - run.h2load.ok_2xx
        # A few failures are a figure of the curve (10,000 cold endpoints: connects that wait
        # on one backend process past the connect timeout); more fail the point.
        if failed > self.args.requests * MAX_FAILED_SHARE:
            raise BenchError(f"{run.h2load.ok_2xx}/{self.args.requests} requests answered 2xx")
        return {
            "rss_rest_kib": before,
            "rss_peak_kib": peak_rss_kib(p.pid),
            "cpu_us_per_req": run.cpu_us_per_req,
            "req_per_s": run.req_per_s,
            "failed_requests": failed,
        }

    def endpoints_curve(self) -> None:
        def body(n: int) -> dict:
            p, port = self.start_mesh(f"endpoints-{n}", [(AUTHORITY, self.ports[:n])])
            return self.load_point(p, port)
        self.curve("endpoints", self.sizes("endpoints", ENDPOINTS), "endpoints", body)

    def services_curve(self) -> None:
        def body(n: int) -> dict:
            services = [(AUTHORITY if i == 0 else f"svc-{i}.bench.local:80",
                         [self.ports[(i * SERVICE_ENDPOINTS + j) % len(self.ports)] for j in range(SERVICE_ENDPOINTS)])
                        for i in range(n)]
            p, port = self.start_mesh(f"services-{n}", services)
            return self.load_point(p, port)
        self.curve("services", self.sizes("services", SERVICES), "services", body)

    def idle_curve(self) -> None:
        conns_exe = self.bench.bin_dir / "mesh-bench-conns"
        self.curves["idle_connections"] = []
        for kind in IDLE_PEERS:
            if kind == "envoy" and envoy_binary() is None:
                self.notes.append("envoy is not installed: its idle-connection curve is missing")
                continue
            if kind in ("haproxy", "nginx") and shutil.which(kind) is None:
                self.notes.append(f"{kind} is not installed: its idle-connection curve is missing")
                continue
            series = Series(kind)
            self.curves["idle_connections"].append(series)
            for n in self.sizes("idle", IDLE_CONNECTIONS):
                log(f"=== idle connections: {kind}, {n} ===")

                def body(n: int = n, kind: str = kind) -> dict:
                    # HAProxy reserves two descriptors per maxconn: ask only for what it holds.
                    room = n + 512 if kind == "haproxy" else 2 * n + 1024
                    p, port = self.start_peer(kind, f"idle-{kind}-{n}", self.bench.backends, room)
                    self.bench.smoke(port)
                    before = self.settled_rss(p.pid)
                    after = self.hold_connections(conns_exe, port, n, lambda: self.settled_rss(p.pid))
                    return {"rss_rest_kib": before, "rss_kib": after,
                            "bytes_per_connection": (after - before) * 1024 / n}
                self.measure(series, n, body)

    def hold_connections(self, exe: Path, port: int, n: int, read) -> int:
        """Opens n idle connections with mesh-bench-conns, returns read() taken while they are
        all open, then lets them go."""
        if not exe.exists():
            raise BenchError(f"{exe} not found (cargo build --release -p mesh-bench)")
        logfile = self.bench.logs / f"conns-{port}-{n}.log"
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(
                ["taskset", "-c", LOAD_CORE, str(exe), "--target", f"127.0.0.1:{port}", "--connections", str(n),
                 "--authority", AUTHORITY, "--hold-secs", "120"],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while f"open {n}" not in logfile.read_text(errors="replace"):
                if proc.poll() is not None:
                    raise BenchError(f"mesh-bench-conns exited with {proc.returncode}\n{tail(logfile)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{n} connections not open after 60 s\n{tail(logfile)}")
                time.sleep(0.05)
            return read()
        finally:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def streams_curve(self) -> None:
        delayed = [self.bench.start_backend(f"backend-delayed-{i}", f"d{i}", ["--delay-ms", str(STREAM_DELAY_MS)])
                   for i in range(3)]
        self.keep.update(q.pid for _, q in self.bench.procs.procs)

        def body(n: int) -> dict:
            p, port = self.start_mesh(f"streams-{n}", [(AUTHORITY, delayed)])
            before = self.settled_rss(p.pid)
            conns = max(1, math.ceil(n / STREAMS_PER_CONN))
            r = h2load.run(port, ["-c", str(conns), "-m", str(min(n, STREAMS_PER_CONN)), "-n", str(n)], timeout=120)
            if r.ok_2xx != n:
                raise BenchError(f"{r.ok_2xx}/{n} requests answered 2xx")
            peak = peak_rss_kib(p.pid)
            return {"rss_rest_kib": before, "rss_peak_kib": peak, "bytes_per_stream": (peak - before) * 1024 / n,
                    "seconds": r.seconds}
        self.curve("streams", self.sizes("streams", STREAMS), "concurrent streams", body)

    def threads_curve(self) -> None:
        def body(n: int) -> dict:
            cores = PROXY_CORE if n == 1 else f"{PROXY_CORE},{LOAD_CORE}"
            p, port = self.start_mesh(f"threads-{n}", [(AUTHORITY, self.bench.backends)], threads=n, cores=cores)
            return self.load_point(p, port)
        self.curve("threads", THREADS, "runtime threads", body)

    def pick_curve(self) -> None:
        """criterion's pick bench of mesh-balance, then its estimates."""
        log("=== one balancer pick (cargo bench -p mesh-balance --bench pick) ===")
        argv = ["cargo", "bench", "-p", "mesh-balance", "--bench", "pick", "--",
                "--warm-up-time", "1", "--measurement-time", "2", "--noplot"]
        with open(self.bench.logs / "pick.log", "wb") as out:
            rc = subprocess.call(argv, cwd=REPO_DIR, stdout=out, stderr=subprocess.STDOUT)
        series = Series("mesh-balance pick")
        self.pick = series
        if rc != 0:
            self.notes.append(f"cargo bench failed (exit {rc}); see logs/pick.log")
            return
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_DIR / "target"))
        for n in PICK_SIZES:
            est = target / "criterion" / "pick" / str(n) / "new" / "estimates.json"
            try:
                ns = json.loads(est.read_text())["mean"]["point_estimate"]
                series.points.append(Point(n, {"ns_per_pick": ns}))
            except (OSError, KeyError, ValueError) as e:
                series.points.append(Point(n, error=f"{est}: {e}"))


def raise_fd_limit(notes: list[str], want: int = FD_LIMIT) -> None:
    """10,000 idle connections need more descriptors than a shell's usual limit, in each proxy
    (HAProxy sizes its tables from maxconn and refuses to start short of them). The processes
    the run starts inherit the limit; raising the hard limit takes root."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
        notes.append(f"open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} (wanted {want}): "
                     "the largest idle-connection points may fail")


# ---- the report ------------------------------------------------------------------------------

# The figures whose growth is named: (curve, value key, unit, per what, scale to the unit).
FIGURES = [
    ("endpoints", "rss_rest_kib", "KiB", "endpoint", 1.0),
    ("endpoints", "rss_peak_kib", "KiB", "endpoint", 1.0),
    ("endpoints", "cpu_us_per_req", "µs per request", "endpoint", 1.0),
    ("services", "rss_rest_kib", "KiB", "service", 1.0),
    ("services", "cpu_us_per_req", "µs per request", "service", 1.0),
    ("idle_connections", "rss_kib", "KiB", "connection", 1.0),
    ("streams", "rss_peak_kib", "KiB", "stream", 1.0),
    ("threads", "req_per_s", "req/s", "thread", 1.0),
    ("threads", "cpu_us_per_req", "µs per request", "thread", 1.0),
]


def growths(curves: dict[str, list[Series]], pick: Series | None) -> list[dict]:
    out = []
    for curve, key, unit, per, scale in FIGURES:
        for series in curves.get(curve, []):
            xy = series.xy(key, scale)
            g = growth(xy, unit, per)
            if unit == "KiB" and g["slope"] is not None:
                g["bytes_per_unit"] = g["slope"] * 1024
                ys = [y for _, y in xy]
                if g["kind"] == "linear":
                    g["text"] = g["text"].replace(f"{g['slope']:,.3g} KiB", f"{g['slope'] * 1024:,.0f} bytes")
                else:
                    g["text"] = f"constant: {min(ys) / 1024:.1f} to {max(ys) / 1024:.1f} MiB"
            out.append({"curve": curve, "figure": key, "series": series.name} | g)
    if pick is not None:
        # With one endpoint there is no second choice to weigh: the growth is read from 10 up.
        g = growth([(x, y) for x, y in pick.xy("ns_per_pick") if x >= 10], "ns", "endpoint", flat=0.5)
        g["text"] += " (from 10 endpoints; one endpoint has no second choice)"
        out.append({"curve": "pick", "figure": "ns_per_pick", "series": pick.name} | g)
    return out


def curves_markdown(run: CurvesRun, meta: dict, grown: list[dict]) -> str:
    lines = [
        f"# mesh-proxy cost curves {meta['timestamp']}",
        "",
        f"{meta['cpu']} ({meta['cores']} cores). Each point in a fresh proxy process on core {PROXY_CORE} (one "
        f"runtime thread unless said), backends and load on core {LOAD_CORE}; RSS from /proc (VmRSS at rest after "
        f"{SETTLE_S:g} s, VmHWM for peaks). Load: {meta['requests']} requests, h2load -c 16 -m 32. Chart: chart.svg; "
        "data: results.json.",
        "",
        "## Growth",
        "",
        "| curve | figure | series | growth |",
        "|---|---|---|---|",
    ]
    for g in grown:
        lines.append(f"| {g['curve']} | {g['figure']} | {g['series']} | {g['text']} |")
    for curve, series_list in run.curves.items():
        lines += ["", f"## {curve}", ""]
        keys = sorted({k for s in series_list for p in s.points for k in p.values})
        lines.append("| series | x | " + " | ".join(keys) + " |")
        lines.append("|---|---:|" + "---:|" * len(keys))
        for s in series_list:
            for p in s.points:
                if p.error:
                    lines.append(f"| {s.name} | {p.x:,} | failed: {p.error.splitlines()[0][:100]} |")
                else:
                    lines.append(f"| {s.name} | {p.x:,} | " + " | ".join(fmt(p.values.get(k), ',.1f') for k in keys) + " |")
    if run.pick is not None:
        lines += ["", "## one balancer pick (criterion)", "", "| endpoints | ns per pick |", "|---:|---:|"]
        lines += [f"| {p.x:,} | {fmt(p.values.get('ns_per_pick'), '.1f')} |" for p in run.pick.points]
    if run.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in run.notes]
    lines.append("")
    return "\n".join(lines)


def curves_svg(run: CurvesRun, meta: dict, grown: list[dict]) -> str:
    cols, pw, ph, gap_x, gap_y, left = 2, 470, 210, 110, 110, 70
    panels = []
    mib = 1 / 1024

    def colour(name: str, alt: str) -> str:
        return COLORS.get(name, alt)

    def one(curve: str, key: str, name: str) -> list[tuple[float, float]]:
        for s in run.curves.get(curve, []):
            if s.name == name:
                return s.xy(key, mib if key.endswith("_kib") else 1.0)
        return []

    def added(series: Series, key: str) -> list[tuple[float, float]]:
        """key over the proxy's own RSS at rest before the point's load, in MiB."""
        return [(p.x, (p.values[key] - p.values["rss_rest_kib"]) * mib) for p in series.points
                if p.values.get(key) is not None and p.values.get("rss_rest_kib") is not None]

    def text_of(curve: str, key: str, series: str = "mesh-proxy") -> str:
        for g in grown:
            if g["curve"] == curve and g["figure"] == key and g["series"] == series:
                return g["text"]
        return ""

    green = colour("mesh-proxy", "#1b7f3b")
    panels.append(("RSS against endpoints of one service", "MiB; " + text_of("endpoints", "rss_rest_kib"),
                   [("at rest", "#86c99a", one("endpoints", "rss_rest_kib", "mesh-proxy")),
                    ("peak under load", green, one("endpoints", "rss_peak_kib", "mesh-proxy"))], "endpoints", True))
    panels.append(("CPU per request against endpoints", "µs; " + text_of("endpoints", "cpu_us_per_req"),
                   [("mesh-proxy", green, one("endpoints", "cpu_us_per_req", "mesh-proxy"))], "endpoints", True))
    panels.append(("RSS against configured services (10 endpoints each)", "MiB; " + text_of("services", "rss_rest_kib"),
                   [("at rest", "#86c99a", one("services", "rss_rest_kib", "mesh-proxy")),
                    ("peak, traffic to one", green, one("services", "rss_peak_kib", "mesh-proxy"))], "services", True))
    panels.append(("CPU per request against configured services", "µs; " + text_of("services", "cpu_us_per_req"),
                   [("mesh-proxy", green, one("services", "cpu_us_per_req", "mesh-proxy"))], "services", True))
    idle = [(s.name, colour(s.name, "#555"), added(s, "rss_kib")) for s in run.curves.get("idle_connections", [])]
    per_conn = ", ".join(f"{g['series']} {g['bytes_per_unit']:,.0f}" for g in grown
                         if g["curve"] == "idle_connections" and g.get("bytes_per_unit") is not None)
    panels.append(("RSS added by idle client connections", f"MiB; bytes per connection: {per_conn}", idle,
                   "idle h2c connections", True))
    panels.append(("Peak RSS against concurrent streams", "MiB; " + text_of("streams", "rss_peak_kib"),
                   [("mesh-proxy", green, one("streams", "rss_peak_kib", "mesh-proxy"))], "streams in flight", True))
    pick = run.pick.xy("ns_per_pick") if run.pick else []
    pick_text = next((g["text"] for g in grown if g["curve"] == "pick"), "")
    panels.append(("One balancer pick against endpoints (criterion)", "ns; " + pick_text,
                   [("pick", green, pick)], "endpoints", True))
    panels.append(("Throughput against runtime threads", "req/s (2 threads share core 1 with the load)",
                   [("mesh-proxy", green, one("threads", "req_per_s", "mesh-proxy"))], "threads", False))
    rows = math.ceil(len(panels) / cols)
    width = left + cols * pw + (cols - 1) * gap_x + 40
    height = 110 + rows * (ph + gap_y)
    s = svg_open(width, height, left, f"mesh-proxy cost curves ({meta['timestamp']})",
                 f"{meta['cpu']}, {meta['cores']} cores; each point a fresh proxy on one core; log-scale x")
    svg_legend(s, left, [(n, colour(n, "#555")) for n, _, _ in idle], 40, 7)
    for i, (title, subtitle, series, x_label, log_x) in enumerate(panels):
        x0 = left + (i % cols) * (pw + gap_x)
        top = 100 + (i // cols) * (ph + gap_y)
        svg_line_panel(s, x0, top, pw, ph, title, subtitle, series, log_x=log_x, x_label=x_label)
    svg_footnote(s, left, height - 12, "Data and growth fits: results.json and results.md beside this chart.")
    return svg_close(s)


def run(args: argparse.Namespace, skip: list[str]) -> int:
    holder: dict[str, CurvesRun] = {}

    def body(bench: Bench) -> None:
        holder["run"] = CurvesRun(bench, args)
        holder["run"].run()

    def measured() -> bool:
        return "run" in holder and bool(holder["run"].curves)

    def write(bench: Bench, stamp: str) -> bool:
        cr = holder["run"]
        meta = machine_meta(stamp, "curves") | {"requests": args.requests, "warmup": args.warmup,
                                                 "tools": tool_versions()}
        grown = growths(cr.curves, cr.pick)
        data = {"meta": meta, "growth": grown,
                "curves": {k: [s.to_dict() for s in v] for k, v in cr.curves.items()},
                "pick": cr.pick.to_dict() if cr.pick else None, "notes": cr.notes}
        write_results(bench.out, curves_markdown(cr, meta, grown), data, curves_svg(cr, meta, grown))
        return all(p.error is None for v in cr.curves.values() for s in v for p in s.points)

    return run_mode(args, "curves", body, measured, write)
