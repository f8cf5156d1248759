"""The run skeleton that every mode shares.

`Bench` owns one run: its output and temporary directories, its processes and ports, the test
backends, starting each kind of proxy, and the measurements that several modes repeat on a
proxy that is already running: the smoke test, the max-throughput test with the CPU per
request, and the latency test at a fixed rate. Their results, and the parts that the modes'
results share (`Outcome`, the figures the reports read), are typed here too.

`run_mode` is the frame of a mode's run: where the results go (`new_output_dir`), the build,
stopping everything on any exit path (`run_guarded`), then writing results.md / results.json
(/ chart.svg) with `machine_meta` and `write_results`, and the exit code. `measure_each` is the
loop over the proxies that most modes run."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import h2load
from .common import (
    BENCH_DIR, LOAD_CORE, MESH_INGRESS, MESH_PROXY_KINDS, NO_METRICS, PROXY_CORE, REPO_DIR, TOOLS, BenchError, label,
    log,
)
from .h2load import H2loadResult
from .procfs import core_busy, core_jiffies, cpu_model, cpu_seconds
from .processes import Procs, free_port, http_get, tail, wait_http_ok, wait_tcp
from .proxy_configs import envoy_config, haproxy_config, mesh_proxy_config, nginx_config
from .stats import percentile
from .tools import build, envoy_binary, warn_if_unordered

# The max-throughput test: 16 connections with 32 concurrent streams each.
MAX_CONNS, MAX_STREAMS = 16, 32


@dataclass
class ThroughputRun:
    """The max-throughput test, and the CPU that the measured process trees used during it."""

    h2load: H2loadResult
    cpu_us_per_req: float | None  # None without a proxy (`direct`)
    proxy_cpu_s_max: float | None
    proxy_cpu_util_max: float | None  # share of one core; about 1.0 for a saturated proxy
    proxy_cpu_s_by_pid: list[float]  # one entry per measured process tree (A and B of a pair)
    # Busy share of each core during the run: on the proxy core, anything well above
    # proxy_cpu_util_max is someone else's work (a build, another benchmark).
    core_busy_max: dict[str, float]

    @property
    def req_per_s(self) -> float:
        return self.h2load.req_per_s

    def to_dict(self) -> dict:
        return {
            "max": self.h2load.to_dict(),
            "req_per_s": self.req_per_s,
            "cpu_us_per_req": self.cpu_us_per_req,
            "proxy_cpu_s_max": self.proxy_cpu_s_max,
            "proxy_cpu_util_max": self.proxy_cpu_util_max,
            "proxy_cpu_s_by_pid": self.proxy_cpu_s_by_pid,
            "core_busy_max": self.core_busy_max,
        }


@dataclass
class RateLatency:
    """The latency test at a fixed rate: h2load's summary and the percentiles of the 2xx
    requests' durations from its per-request log."""

    h2load: H2loadResult
    target_rps: int
    non_2xx: int
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float

    @classmethod
    def from_durations(cls, result: H2loadResult, target_rps: int, durs: list[int], non_2xx: int) -> RateLatency:
        """durs: the 2xx durations in µs, ascending (at least one)."""
        return cls(
            h2load=result,
            target_rps=target_rps,
            non_2xx=non_2xx,
            p50_us=percentile(durs, 50),
            p90_us=percentile(durs, 90),
            p99_us=percentile(durs, 99),
            p999_us=percentile(durs, 99.9),
            max_us=float(durs[-1]),
        )

    def to_dict(self) -> dict:
        return self.h2load.to_dict() | {
            "target_rps": self.target_rps,
            "non_2xx": self.non_2xx,
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
        }


@dataclass
class RateRun:
    """The latency test and the CPU per request of the measured process trees during it."""

    rate: RateLatency
    cpu_us_per_req_at_rate: float | None

    @property
    def p50_us(self) -> float:
        return self.rate.p50_us

    @property
    def p99_us(self) -> float:
        return self.rate.p99_us

    def to_dict(self) -> dict:
        return {
            "rate": self.rate.to_dict(),
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "cpu_us_per_req_at_rate": self.cpu_us_per_req_at_rate,
        }


@dataclass
class Outcome:
    """How the measurement of one proxy (or pair) ended. Its results.json keys frame those of
    what was measured: proxy and ok first, the error last."""

    proxy: str  # its name in the reports
    ok: bool = False  # everything ran and passed
    error: str | None = None  # what stopped it

    def outcome_dict(self, measured: dict) -> dict:
        d = {"proxy": self.proxy, "ok": self.ok} | measured
        if self.error is not None:
            d["error"] = self.error
        return d


def stage_figure(stage: str, figure: str) -> property:
    """A figure of one stage of a result (its `throughput` or its `latency`), or None when that
    stage did not run."""

    def get(self: object) -> float | None:
        part = getattr(self, stage)
        return getattr(part, figure) if part is not None else None

    return property(get)


class ThroughputFigures:
    """The figures of a result's max-throughput test, for the reports."""

    req_per_s = stage_figure("throughput", "req_per_s")
    cpu_us_per_req = stage_figure("throughput", "cpu_us_per_req")


class ProxyFigures(ThroughputFigures):
    """The figures of a result's max-throughput and latency tests, for the reports."""

    cpu_us_per_req_at_rate = stage_figure("latency", "cpu_us_per_req_at_rate")
    p50_us = stage_figure("latency", "p50_us")
    p99_us = stage_figure("latency", "p99_us")


def set_added_latency(results: list, direct: ProxyFigures | None) -> None:
    """Added p50 / p99 of each result: its latency minus `direct`'s, measured in the same run;
    None where either failed."""
    for r in results:
        if r.ok and direct is not None and direct.ok:
            r.added_p50_us = r.p50_us - direct.p50_us
            r.added_p99_us = r.p99_us - direct.p99_us
        else:
            r.added_p50_us = r.added_p99_us = None


def rate_per_connection(args: argparse.Namespace) -> int:
    """--rate is spread evenly over --rate-conns connections, each at least 1 req/s."""
    return max(1, round(args.rate / args.rate_conns))


def throughput_latency_meta(args: argparse.Namespace) -> dict:
    """The keys of results.json "meta" that give the load of the max-throughput and latency tests."""
    return {
        "requests": args.requests,
        "rate_rps": rate_per_connection(args) * args.rate_conns,
        "rate_conns": args.rate_conns,
        "rate_seconds": args.rate_seconds,
    }


class Bench:
    """One run: directories, processes, ports, backends, and the shared measurements."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cfg = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
        self.procs = Procs()
        self.used_ports: set[int] = set()
        self.backends: list[int] = []
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_DIR / "target"))
        self.bin_dir = target / "release"
        # --mesh-proxy-bin: another mesh-proxy build (a debug one, say) instead of the release one.
        self.mesh_exe = getattr(args, "mesh_proxy_bin", None) or self.bin_dir / "mesh-proxy"
        self.ingress_exe = self.bin_dir / "mesh-ingress"  # --ingress

    def close(self) -> None:
        """Stops every process of the run and removes the generated configs."""
        self.procs.stop_all()
        shutil.rmtree(self.cfg, ignore_errors=True)

    # ---- setup ---------------------------------------------------------------------------

    def launch(self, stem: str, argv: list[str], port: int, ready_url: str | None = None) -> subprocess.Popen:
        """Start argv (its output in logs/<stem>.log) and wait until it accepts TCP connections on
        port and, with ready_url, answers 200 there. A process that does not get there is stopped."""
        lf = self.logs / f"{stem}.log"
        p = self.procs.start(stem, argv, lf)
        try:
            wait_tcp(port, p, lf)
            if ready_url:
                wait_http_ok(ready_url, p, lf)
        except BenchError:
            self.procs.stop(p)
            raise
        return p

    def check_running(self, p: subprocess.Popen | None, what: str, stem: str) -> None:
        """BenchError, with the end of its log (logs/<stem>.log), when p exited during the run."""
        if p is not None and p.poll() is not None:
            raise BenchError(f"{what} exited (code {p.returncode}) during the run\n{tail(self.logs / f'{stem}.log')}")

    def start_backend(self, log_stem: str, name: str, extra: list[str]) -> int:
        """Start one mesh-bench-backend on the load core; returns its port."""
        exe = self.bin_dir / "mesh-bench-backend"
        if not exe.exists():
            raise BenchError(f"{exe} not found: build it (cargo build --release -p mesh-bench) or drop --no-build")
        port = free_port(self.used_ports)
        argv = ["taskset", "-c", LOAD_CORE, str(exe), "--listen", f"127.0.0.1:{port}", "--name", name] + extra
        self.launch(log_stem, argv, port)
        return port

    def start_backends(self) -> None:
        """The default mode's three backends, b3 delayed by --slow-ms."""
        for i in range(3):
            extra = ["--delay-ms", str(self.args.slow_ms)] if i == 2 and self.args.slow_ms > 0 else []
            self.backends.append(self.start_backend(f"backend-{i + 1}", f"b{i + 1}", extra))
        log(f"backends on ports {self.backends}" + (f" (b3 +{self.args.slow_ms} ms)" if self.args.slow_ms else ""))

    def reset_counts(self, ports: list[int] | None = None) -> None:
        for b in self.backends if ports is None else ports:
            status, _ = http_get(f"http://127.0.0.1:{b}/__reset", method="POST")
            if status != 200:
                raise BenchError(f"backend :{b} /__reset answered {status}")

    def counts(self, ports: list[int] | None = None) -> list[int]:
        out = []
        for b in self.backends if ports is None else ports:
            status, body = http_get(f"http://127.0.0.1:{b}/__count")
            if status != 200:
                raise BenchError(f"backend :{b} /__count answered {status}")
            out.append(int(body.strip()))
        return out

    def proxy_command(
        self, kind: str, write_config: Callable[[int | None], str], prefix: Path, mesh_exe: Path | None = None,
    ) -> tuple[list[str], str | None]:
        """The command line of a proxy of `kind`, pinned to the proxy core, and the URL that
        answers 200 once it is ready: /ready on the admin port of mesh-proxy (once it holds a
        certificate, when it has an identity), of mesh-ingress (once it serves) and of Envoy;
        None for the others.

        write_config(admin port, None for the kinds without one) writes the configuration and
        returns its path. prefix: nginx's prefix directory. mesh_exe: the mesh-proxy executable
        for this start (--ab), instead of the run's one."""
        admin = None
        if kind in MESH_PROXY_KINDS:
            exe = mesh_exe or self.mesh_exe
            if not exe.exists():
                raise BenchError(f"{exe} not found (cargo build --release -p mesh-proxy)")
            admin = free_port(self.used_ports)
            argv = [str(exe), "--config", write_config(admin)]
        elif kind == MESH_INGRESS:
            if not self.ingress_exe.exists():
                raise BenchError(f"{self.ingress_exe} not found (cargo build --release -p mesh-ingress)")
            admin = free_port(self.used_ports)
            argv = [str(self.ingress_exe), "--config", write_config(admin)]
        elif kind == "envoy":
            exe = envoy_binary()
            if exe is None:
                raise BenchError(f"envoy not found ({TOOLS['envoy']})")
            admin = free_port(self.used_ports)
            argv = [exe, "-c", write_config(admin), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
        elif kind in ("haproxy", "haproxy-tcp"):
            argv = ["haproxy", "-db", "-f", write_config(None)]
        elif kind == "nginx":
            argv = ["nginx", "-e", "stderr", "-p", str(prefix), "-c", write_config(None)]
        else:
            raise BenchError(f"unknown proxy {kind}")
        ready_url = None if admin is None else f"http://127.0.0.1:{admin}/ready"
        return ["taskset", "-c", PROXY_CORE] + argv, ready_url

    def start_proxy(
        self, name: str, backends: list[int] | None = None, policy: str = "rr", log_name: str | None = None,
        mesh_exe: Path | None = None,
    ) -> tuple[subprocess.Popen | None, int]:
        """Start one proxy pinned to the proxy core; returns (process, listen port).

        backends: the upstream ports (default: the three of the default mode). policy: "rr" for
        the default mode, "least" for the peers' least-loaded + passive-health-check configs
        (--balance); mesh-proxy's config does not change. log_name: the log file's stem.
        mesh_exe: the mesh-proxy executable for this start (--ab), instead of the run's one."""
        backends = self.backends if backends is None else backends
        if name == "direct":
            return None, backends[0]
        port = free_port(self.used_ports)

        def write_config(admin: int | None) -> str:
            if name in MESH_PROXY_KINDS:
                return mesh_proxy_config(self.cfg, port, admin, backends, metrics=name != NO_METRICS)
            if name == "envoy":
                return envoy_config(self.cfg, port, admin, backends, policy)
            if name == "nginx":
                return nginx_config(self.cfg, port, backends, policy)
            return haproxy_config(self.cfg, port, backends, "tcp" if name == "haproxy-tcp" else "http", policy)

        argv, ready_url = self.proxy_command(name, write_config, self.cfg, mesh_exe)
        return self.launch(log_name or name, argv, port, ready_url), port

    @contextmanager
    def proxy(
        self, name: str, backends: list[int] | None = None, policy: str = "rr", log_name: str | None = None,
        mesh_exe: Path | None = None,
    ) -> Iterator[tuple[subprocess.Popen | None, int]]:
        """start_proxy for the length of a with block, at the end of which the proxy is stopped."""
        p, port = self.start_proxy(name, backends, policy, log_name, mesh_exe)
        try:
            yield p, port
        finally:
            if p is not None:
                self.procs.stop(p)

    # ---- measurements --------------------------------------------------------------------

    def smoke(self, port: int, n: int = 30, server_name: str | None = None) -> None:
        """n requests on one connection, all 2xx. server_name: over TLS (h2load.target)."""
        r = h2load.run(port, ["-c", "1", "-m", "1", "-n", str(n)], timeout=15, server_name=server_name)
        if r.ok_2xx != n:
            raise BenchError(f"smoke test: {r.ok_2xx}/{n} requests answered 2xx ({r.to_dict()})")

    def max_throughput(self, name: str, p: subprocess.Popen | None, port: int) -> ThroughputRun:
        """Smoke, warm-up, then the max-throughput test and the proxy CPU per request."""
        return self.max_throughput_of(name, [p.pid] if p else [], port)

    def max_throughput_of(self, name: str, pids: list[int], port: int, server_name: str | None = None) -> ThroughputRun:
        """max_throughput with the CPU summed over the process trees of pids (none: no proxy,
        `direct`; two: an --mtls pair). `proxy_cpu_s_by_pid` has each tree's share.
        server_name: every h2load run over TLS with that SNI and :authority (--ingress)."""
        a = self.args
        load = ["-c", str(MAX_CONNS), "-m", str(MAX_STREAMS)]
        self.smoke(port, server_name=server_name)
        # Warm-up: connection pools, allocator, caches.
        h2load.run(port, load + ["-n", str(a.warmup)], timeout=a.duration, server_name=server_name)

        log(f"{label(name)}: max throughput, {a.requests} requests, h2load -c {MAX_CONNS} -m {MAX_STREAMS}")
        cpu0 = [cpu_seconds(pid) for pid in pids]
        cores0 = core_jiffies()
        mx = h2load.run(port, load + ["-n", str(a.requests)], timeout=a.duration, server_name=server_name)
        cores1 = core_jiffies()
        cpu1 = [cpu_seconds(pid) for pid in pids]
        used = [after - before for before, after in zip(cpu0, cpu1)]
        total = sum(used)
        return ThroughputRun(
            h2load=mx,
            cpu_us_per_req=total * 1e6 / mx.ok_2xx if pids and mx.ok_2xx else None,
            proxy_cpu_s_max=total if pids else None,
            proxy_cpu_util_max=total / mx.seconds if pids and mx.seconds else None,
            proxy_cpu_s_by_pid=used,
            core_busy_max=core_busy(cores0, cores1),
        )

    def latency_at_rate(
        self, name: str, port: int, pids: list[int], log_stem: str | None = None, server_name: str | None = None,
    ) -> RateRun:
        """Latency at a fixed rate, and the CPU per request of the process trees of pids during
        it (summed). server_name: over TLS, keep-alive (h2load.target)."""
        a = self.args
        per_conn = rate_per_connection(a)
        log(f"{label(name)}: latency at {per_conn * a.rate_conns} req/s over {a.rate_conns} connections for {a.rate_seconds}s")
        lat_log = self.logs / f"{log_stem or name}-latency.tsv"
        lat_log.unlink(missing_ok=True)
        cpu0 = sum(cpu_seconds(pid) for pid in pids)
        # -m 16: a request due while the previous one is in flight is sent at once instead of
        # waiting in h2load (which would hide the wait from the measured latency).
        rt = h2load.run(
            port,
            ["-c", str(a.rate_conns), "-m", "16", "--rps", str(per_conn), "-D", str(a.rate_seconds)],
            timeout=a.rate_seconds + 30,
            log_file=lat_log,
            server_name=server_name,
        )
        cpu1 = sum(cpu_seconds(pid) for pid in pids)
        durs, bad = h2load.read_latencies(lat_log)
        if not durs:
            raise BenchError("fixed-rate test: no successful request")
        rate = RateLatency.from_durations(rt, per_conn * a.rate_conns, durs, bad)
        if not a.keep_latency_logs:
            lat_log.unlink(missing_ok=True)
        return RateRun(rate=rate, cpu_us_per_req_at_rate=(cpu1 - cpu0) * 1e6 / len(durs) if pids else None)


# ---- around the measurements -------------------------------------------------------------


def new_output_dir(args: argparse.Namespace, mode: str | None) -> tuple[str, Path]:
    """The run's timestamp and output directory: --out, or bench/results/<timestamp>[-<mode>]."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or (BENCH_DIR / "results" / (f"{stamp}-{mode}" if mode else stamp))
    out.mkdir(parents=True, exist_ok=True)
    return stamp, out


def run_mode(
    args: argparse.Namespace, mode: str | None, body: Callable[[Bench], None], measured: Callable[[], bool],
    write: Callable[[Bench, str], bool],
) -> int:
    """A mode's run around its measurements: the output directory (suffixed with mode), the
    build, then body(bench), which fills the mode's results in place, guarded by run_guarded.
    When measured() says there is something to write, even from an interrupted run,
    write(bench, the run's timestamp) writes the results and says whether everything passed.

    Returns the exit code: 0 when everything passed, 3 when something failed, 1 on a setup error
    (a failed build, or nothing measured) and 130 when interrupted."""
    stamp, out = new_output_dir(args, mode)
    if not build(args):
        return 1
    bench = Bench(args, out)
    if not getattr(args, "ingress", False) and bench.mesh_exe.exists():
        warn_if_unordered(bench.mesh_exe)
    rc = run_guarded(bench, lambda: body(bench))
    if not measured():
        return rc or 1
    if rc:
        log("writing the partial results gathered so far")
    passed = write(bench, stamp)
    return rc or (0 if passed else 3)


def run_guarded(bench: Bench, body: Callable[[], None]) -> int:
    """Runs the measurements; returns 0, 130 when interrupted (Ctrl-C, SIGTERM, SIGHUP) or 1 on
    a setup error. Whatever happens, every process of the run is stopped. The body fills its
    results in place, so what was measured before an interruption is still written."""
    try:
        body()
        return 0
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        bench.close()


def measure_each(
    names: list[str], skip: list[str], results: list, result_type: type, measure: Callable[[str], object],
    heading: str = "",
) -> None:
    """Measures each proxy in turn into results, filled as it goes so that an interruption keeps
    what was measured. A proxy that is not installed gets a failed result_type instead."""
    for name in names:
        shown = label(name)
        if name in skip:
            results.append(result_type(proxy=shown, error=f"{name} not installed ({TOOLS.get(name, '')})"))
            continue
        log(f"=== {shown}{heading} ===")
        r = measure(name)
        if not r.ok:
            log(f"{shown} FAILED: {r.error}")
        results.append(r)


def machine_meta(stamp: str, mode: str) -> dict:
    """The first keys of every results.json "meta": when, which mode, on what machine."""
    return {
        "timestamp": stamp,
        "mode": mode,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
    }


def to_jsonable(obj: object) -> object:
    """json.dumps hook: result dataclasses serialize through their to_dict, which keeps the keys
    that results.json has always had."""
    to_dict = getattr(obj, "to_dict", None)
    if to_dict is None:
        raise TypeError(f"{type(obj).__name__} is not JSON serializable")
    return to_dict()


def write_results(out: Path, md: str, data: dict, chart_svg: str | None = None) -> None:
    """results.md (also printed), results.json and, for the modes that draw one, chart.svg."""
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(data, indent=2, default=to_jsonable) + "\n")
    files = "results.md, results.json"
    if chart_svg is not None:
        (out / "chart.svg").write_text(chart_svg)
        files += ", chart.svg"
    print(md)
    log(f"wrote {out}/{files} (process logs in {out}/logs)")
