"""What --mtls and --handshakes share: starting the members of a proxy pair (A, the client side,
and B, the server side) pinned to the proxy core, the handshake load tool
(`mesh-bench-handshake`) and its JSON report, which core limited a run, and the warnings about
other work on the measured cores."""

from __future__ import annotations

import argparse
import json
import subprocess
import time

from .bench import Bench
from .common import AUTHORITY, LOAD_CORE, PROXY_CORE, BenchError, log
from .pair_configs import (
    envoy_client_config, envoy_server_config, haproxy_client_config, haproxy_server_config, mesh_client_config,
    mesh_server_config, nginx_client_config, nginx_server_config,
)
from .pki import DNS_ID, SERVER_NAME, SPIFFE_ID, Certs, EdgeCerts
from .procfs import core_busy, core_jiffies
from .processes import free_port
from .tools import tool_versions

PAIR_KINDS = ["mesh-proxy", "envoy", "haproxy", "nginx"]
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
# The keys of the handshake tool's JSON report that the harness reads.
HS_REPORT_KEYS = ("handshakes", "failures", "seconds", "per_second", "alpn_h2")


# ---- the handshake load tool -------------------------------------------------------------


def parse_handshake_report(stdout: str) -> dict:
    """The JSON object that mesh-bench-handshake prints as its last line. Raises ValueError when
    there is none, or when it lacks a key the harness reads."""
    lines = stdout.strip().splitlines()
    if not lines:
        raise ValueError("no output")
    try:
        report = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise ValueError(f"printed no JSON ({e}): {lines[-1][:300]}") from None
    if not isinstance(report, dict):
        raise ValueError(f"printed JSON that is not an object: {lines[-1][:300]}")
    missing = [k for k in HS_REPORT_KEYS if k not in report]
    if missing:
        raise ValueError(f"report lacks {', '.join(missing)}: {lines[-1][:300]}")
    return report


def handshake_tool(bench: Bench, certs: Certs | EdgeCerts, port: int, *, client_cert: bool = True,
                   concurrency: int = 16, seconds: float = 5.0, max_handshakes: int = 1_000_000,
                   server_name: str = SERVER_NAME) -> dict:
    """Runs mesh-bench-handshake on the load core against 127.0.0.1:port; its JSON report.
    client_cert False: server-only TLS (no client certificate; --ingress passes EdgeCerts, whose
    root and server_name EDGE_NAME are all the tool needs then)."""
    exe = bench.bin_dir / HS_TOOL
    if not exe.exists():
        raise BenchError(f"{exe} not found: build it (cargo build --release -p mesh-bench) or drop --no-build")
    argv = ["taskset", "-c", LOAD_CORE, str(exe), "--connect", f"127.0.0.1:{port}", "--server-name", server_name,
            "--ca", certs.root, "--concurrency", str(concurrency), "--duration", str(seconds),
            "--max-handshakes", str(max_handshakes)]
    if client_cert:
        argv += ["--cert", certs.chain("client"), "--key", certs.key("client")]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{HS_TOOL} did not finish within {seconds + 30:.0f}s: {' '.join(argv)}") from None
    if r.returncode != 0 or not r.stdout.strip():
        raise BenchError(f"{HS_TOOL} failed (rc {r.returncode}): {' '.join(argv)}\n{(r.stdout + r.stderr)[-1500:]}")
    try:
        return parse_handshake_report(r.stdout)
    except ValueError as e:
        raise BenchError(f"{HS_TOOL} {e}") from None


def top_errors(report: dict, n: int = 2) -> str:
    """The n most frequent errors of a handshake report, with their counts."""
    errs = sorted((report.get("errors") or {}).items(), key=lambda kv: -kv[1])[:n]
    return "; ".join(f"{msg} (×{cnt})" for msg, cnt in errs)


def limit_verdict(server_util: float | None, client_util: float | None) -> str:
    """Which side's core was saturated during a handshake run."""
    s = server_util is not None and server_util >= SATURATED
    c = client_util is not None and client_util >= SATURATED
    if s and c:
        return "both cores"
    if s:
        return "server"
    if c:
        return "CLIENT (saturated first)"
    return "neither core saturated"


# ---- pair members ------------------------------------------------------------------------


class PairStarter:
    """Starts A and B of each kind, with the run's test PKI, in front of the run's backend."""

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
        port = free_port(b.used_ports)
        c = self.certs
        client = role == "client"

        def write_config(admin: int | None) -> str:
            if kind == "mesh-proxy":
                return (mesh_client_config(d, c, port, admin, b_port) if client
                        else mesh_server_config(d, c, port, admin, self.backend, present))
            if kind == "envoy":
                return (envoy_client_config(d, c, port, admin, b_port) if client
                        else envoy_server_config(d, c, port, admin, self.backend, present))
            if kind == "haproxy":
                return (haproxy_client_config(d, c, port, b_port) if client
                        else haproxy_server_config(d, c, port, self.backend, present))
            if kind == "nginx":
                return (nginx_client_config(d, c, port, b_port) if client
                        else nginx_server_config(d, c, port, self.backend, present))
            raise BenchError(f"unknown proxy {kind}")

        argv, ready_url = b.proxy_command(kind, write_config, d)
        try:
            return b.launch(stem, argv, port, ready_url), port
        except BenchError as e:
            raise BenchError(f"{kind} {'A (client side)' if client else 'B (server side)'}: {e}") from None

    def start_pair(self, kind: str, tag: str = "", present: str = "server"
                   ) -> tuple[subprocess.Popen, int, subprocess.Popen, int]:
        """B, then A toward it: (A's process, A's port, B's process, B's port)."""
        pb, b_port = self.start(kind, "server", tag, present=present)
        try:
            pa, a_port = self.start(kind, "client", tag, b_port=b_port)
        except BenchError:
            self.bench.procs.stop(pb)
            raise
        return pa, a_port, pb, b_port


def prepare(bench: Bench) -> PairStarter:
    """The test PKI, a check that the machine is quiet, and the one backend that B fronts."""
    certs = Certs(bench.cfg / "pki")
    log(f"test PKI in {certs.dir}: root, intermediate, client + server leaves (ECDSA P-256)")
    starter = PairStarter(bench, certs)
    quiet_check()
    starter.backend = bench.start_backend("backend", "b1", [])
    log(f"backend on port {starter.backend}")
    return starter


# ---- the machine -------------------------------------------------------------------------


def quiet_check(seconds: float = 1.0) -> None:
    """Warns when the measured cores are already busy before the benchmark starts."""
    a = core_jiffies()
    time.sleep(seconds)
    busy = core_busy(a, core_jiffies())
    loud = {c: v for c, v in busy.items() if c in (PROXY_CORE, LOAD_CORE) and v > 0.25}
    if loud:
        log("warning: the machine is busy before the benchmark starts ("
            + ", ".join(f"core {c} {v:.0%}" for c, v in sorted(loud.items())) + "); results will be noisy")


def contention_notes(rows: list[tuple[str, float | None, float | None]]) -> list[str]:
    """A warning for each run during which other work used a core we measure on. rows: (proxy,
    share of the proxy core that was not ours, the same for the load core)."""
    notes = []
    for proxy, on_proxy_core, on_load_core in rows:
        for v, core in ((on_proxy_core, PROXY_CORE), (on_load_core, LOAD_CORE)):
            if v is not None and v > OTHER_LOAD:
                notes.append(f"- **{proxy}**: about {v:.0%} of core {core} went to work that was not this "
                             "benchmark's (a build, another job?) during the measured run: rerun on a quiet machine.")
    if notes:
        return ["", "**Warning: shared cores.**", ""] + notes
    return []


def pair_meta(args: argparse.Namespace) -> dict:
    """The keys of results.json "meta" that --mtls and --handshakes share, after machine_meta."""
    return {
        "identities": {"client": [SPIFFE_ID["client"], DNS_ID["client"]], "server": [SPIFFE_ID["server"], DNS_ID["server"]]},
        "authority": AUTHORITY,
        "configs": {n: PAIR_CONFIG.get(n, "") for n in args.proxies},
        "tools": tool_versions(),
    }
