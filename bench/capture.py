#!/usr/bin/env python3
"""What transparent capture adds to a call: the same proxy, the same backend, the same client,
reached two ways in one run, alternately.

- explicit: the client dials the outbound listener (127.0.0.1:4140) and names the service
  in `:authority`, as an app that knows the mesh does;
- captured: the client dials the service's virtual address (a ClusterIP that no interface
  holds); `mesh-proxy init`'s nftables rule redirects it to the same listener, which reads
  the original destination (SO_ORIGINAL_DST) and balances it over the same service.

Two network namespaces joined by a veth pair (addresses from 198.18.0.0/15): the client's,
with the proxy running as its own user, and the backend's (mesh-bench-backend, h2c). h2load
sends sequential requests (one connection, one stream at a time) in h2c, so each figure is one
request's latency; new connections are measured too (a Python client: connect, one HTTP/1.1
request, read to the close, the same client both ways), since capture adds its work per
connection. Rounds alternate the two ways; the figures are
medians over rounds. Needs root, `ip`, `nft`, `setpriv` and h2load (nghttp2-client).

Usage: python3 bench/capture.py [--rounds 5] [--requests 5000] [--skip-build]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from meshbench.h2load import read_latencies  # noqa: E402

PROXY_UID = "2102"
CLIENT_IP, BACKEND_IP, VIP = "198.18.6.1", "198.18.6.2", "198.18.7.1"
AUTHORITY = "web.bench:80"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def percentile(sorted_us: list[int], p: float) -> float:
    if not sorted_us:
        return float("nan")
    return float(sorted_us[min(len(sorted_us) - 1, int(p * len(sorted_us)))])


# Sequential HTTP/1.1 requests, each on a new connection closed after it: the time from
# connect to the end of the response, in µs, one per line. The same client both ways.
FRESH_CONNECTIONS = """
import socket, sys, time
host, port, authority, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
request = f"GET / HTTP/1.1\\r\\nHost: {authority}\\r\\nConnection: close\\r\\n\\r\\n".encode()
for _ in range(n):
    start = time.perf_counter_ns()
    s = socket.create_connection((host, port))
    s.sendall(request)
    answer = b""
    while chunk := s.recv(4096):
        answer += chunk
    s.close()
    if not answer.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"not 200: {answer[:200]!r}")
    print((time.perf_counter_ns() - start) // 1000)
"""


def fresh_connections(ns: str, host: str, port: int, authority: str, n: int) -> list[int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", FRESH_CONNECTIONS,
                          host, str(port), authority, str(n)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"the connection client failed: {out.stderr[-800:]}")
    return sorted(int(line) for line in out.stdout.split())


def h2load(ns: str, url: str, requests: int, log: Path, extra: list[str]) -> list[int]:
    """`requests` sequential requests on one h2c connection."""
    argv = ["ip", "netns", "exec", ns, "h2load", "-n", str(requests), "-c", "1", "-m", "1",
            "--log-file", str(log), *extra, url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if out.returncode != 0 or "succeeded" not in out.stdout:
        raise SystemExit(f"h2load failed: {out.stdout[-800:]} {out.stderr[-800:]}")
    durations, failed = read_latencies(log)
    if failed:
        raise SystemExit(f"{failed} requests to {url} did not answer 2xx")
    return durations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--skip-build", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces and firewall rules")
    if not args.skip_build:
        sh("cargo", "build", "--release", "-q", "-p", "mesh-proxy", "-p", "mesh-bench")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    work = Path(tempfile.mkdtemp(prefix="mesh-capture-bench-"))
    os.chmod(work, 0o755)
    proxy_bin = work / "mesh-proxy"
    proxy_bin.write_bytes((target / "mesh-proxy").read_bytes())
    os.chmod(proxy_bin, 0o755)

    tag = str(os.getpid())
    client, server = f"mcb-c-{tag}", f"mcb-s-{tag}"
    procs: list[subprocess.Popen] = []
    try:
        for ns in (client, server):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"mcb{tag}a", "netns", client, "type", "veth",
           "peer", "name", f"mcb{tag}b", "netns", server)
        for ns, dev, ip in ((client, f"mcb{tag}a", CLIENT_IP), (server, f"mcb{tag}b", BACKEND_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", client, "route", "add", f"{VIP}/32", "dev", f"mcb{tag}a")

        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", server, str(target / "mesh-bench-backend"),
             "--listen", f"{BACKEND_IP}:8080"],
            stdout=subprocess.DEVNULL, stderr=open(work / "backend.log", "w")))
        config = work / "proxy.toml"
        config.write_text(
            "log = \"warn\"\n[admin]\nlisten = \"127.0.0.1:4191\"\n"
            "[outbound]\nlisten = \"127.0.0.1:4140\"\ntransparent = true\n"
            f"[[outbound.services]]\nauthority = \"{AUTHORITY}\"\n"
            f"addresses = [\"{VIP}:80\"]\nendpoints = [\"{BACKEND_IP}:8080\"]\n")
        os.chmod(config, 0o644)
        sh("ip", "netns", "exec", client, str(proxy_bin), "init", "--proxy-uid", PROXY_UID)
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", client, "setpriv", "--reuid", PROXY_UID, "--regid", PROXY_UID,
             "--clear-groups", str(proxy_bin), "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=open(work / "proxy.log", "w")))
        for _ in range(100):
            ready = sh("ip", "netns", "exec", client, "curl", "-s", "-o", "/dev/null", "-w",
                       "%{http_code}", "http://127.0.0.1:4191/ready", check=False)
            if ready.stdout == "200":
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"the proxy never became ready: {(work / 'proxy.log').read_text()}")

        ways = {
            "explicit": ("http://127.0.0.1:4140/", ["-H", f":authority: {AUTHORITY}"],
                         ("127.0.0.1", 4140, AUTHORITY)),
            "captured": (f"http://{VIP}:80/", [], (VIP, 80, f"{VIP}:80")),
        }
        # Warm both ways (connection pools, the balancer's estimates) before measuring.
        for name, (url, extra, _) in ways.items():
            h2load(client, url, 500, work / f"warm-{name}.log", extra)
        figures: dict[str, dict[str, list[float]]] = {
            f"{w} {k}": {"p50": [], "p99": []} for w in ways for k in ("requests", "connections")
        }
        for round_no in range(args.rounds):
            order = list(ways.items()) if round_no % 2 == 0 else list(reversed(ways.items()))
            for name, (url, extra, (host, port, authority)) in order:
                log = work / f"{name}-{round_no}.log"
                for kind, durations in (
                    ("requests", h2load(client, url, args.requests, log, extra)),
                    ("connections", fresh_connections(client, host, port, authority,
                                                      max(args.requests // 10, 200))),
                ):
                    figures[f"{name} {kind}"]["p50"].append(percentile(durations, 0.5))
                    figures[f"{name} {kind}"]["p99"].append(percentile(durations, 0.99))

        print(f"\nCaptured vs explicit listener: {args.rounds} rounds, alternating; "
              f"medians over rounds (µs)\n")
        print("| way | p50 | p99 |")
        print("|---|---|---|")
        med = {k: {p: statistics.median(v) for p, v in f.items()} for k, f in figures.items()}
        for key, f in med.items():
            print(f"| {key} | {f['p50']:.0f} | {f['p99']:.0f} |")
        for kind in ("requests", "connections"):
            e, c = med[f"explicit {kind}"], med[f"captured {kind}"]
            print(f"\n{kind}: captured adds {c['p50'] - e['p50']:+.0f} µs at p50 "
                  f"(ratio {c['p50'] / e['p50']:.3f}), {c['p99'] - e['p99']:+.0f} µs at p99 "
                  f"(ratio {c['p99'] / e['p99']:.3f})")
        return 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in (client, server):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    sys.exit(main())
