"""The command line of bench/run.py: parsing and checking the options, then running the chosen
mode with the signal handling that lets an interrupted run stop its processes and still write
what it measured."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from .common import LABELS, MESH_INGRESS, NO_METRICS, PROXIES
from .modes import ab, balance, curves, full, handshakes, ingress, metrics_cost, mtls
from .modes.balance import BAL_PROXIES
from .modes.ingress import INGRESS_KINDS
from .pairs import PAIR_KINDS
from .tools import check_tools

DESCRIPTION = """Proxy benchmark harness: mesh-proxy against Envoy, HAProxy and nginx (and no proxy); with
--ingress, mesh-ingress against nginx and HAProxy as TLS-terminating edges.

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
    python3 bench/run.py --ab OLD NEW --rounds 3  # two mesh-proxy builds, alternating: old, new, old, new, ...
    python3 bench/run.py --mtls     # proxy PAIRS over mutual TLS 1.3: A (h2c in) -> mTLS -> B -> backend
    python3 bench/run.py --handshakes  # new mTLS handshakes/s of each TLS-terminating side (B)
    python3 bench/run.py --ingress  # TLS termination at the edge: mesh-ingress vs nginx vs HAProxy
    python3 bench/run.py --curves   # mesh-proxy's cost curves: endpoints, services, idle connections, streams
"""

AB_DEFAULT_ROUNDS = 3


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 20000 requests, 3 s latency test")
    ap.add_argument("--balance", action="store_true",
                    help="balancing benchmark instead: slow backend, one connection, failing backend "
                         "(peers in least-loaded modes; writes bench/results/<timestamp>-balance)")
    ap.add_argument("--metrics-cost", type=int, nargs="?", const=3, metavar="ROUNDS",
                    help="instead: only mesh-proxy with and without its request-metrics layer, alternating, ROUNDS "
                         "times each (default 3), max-throughput test only; per-round and median req/s, ratio, "
                         "CPU µs/req (writes bench/results/<timestamp>-metrics-cost)")
    ap.add_argument("--ab", type=Path, nargs=2, metavar=("OLD", "NEW"),
                    help="instead: two mesh-proxy executables (same TOML config) measured alternately, old, new, "
                         "old, new, ... for --rounds rounds; max-throughput test and CPU µs/req only, as in the "
                         "default mode; per-round figures, medians and new/old ratios. Builds nothing "
                         "(writes bench/results/<timestamp>-ab)")
    ap.add_argument("--rounds", type=int, metavar="N",
                    help=f"--ab: rounds of old + new (default {AB_DEFAULT_ROUNDS})")
    ap.add_argument("--mtls", action="store_true",
                    help="instead: each proxy kind as a PAIR, A (h2c from h2load) -> mutual TLS 1.3 -> B -> backend, "
                         "both on core 0; req/s, CPU µs/req of A+B, added p99, RSS per proxy, mTLS checks "
                         "(writes bench/results/<timestamp>-mtls)")
    ap.add_argument("--handshakes", action="store_true",
                    help="instead: new mTLS handshakes/s (TLS 1.3, client certificate, no resumption) of each kind's "
                         "TLS-terminating side alone on core 0, driven by mesh-bench-handshake on core 1 "
                         "(writes bench/results/<timestamp>-handshakes)")
    ap.add_argument("--ingress", action="store_true",
                    help="instead: TLS termination at the edge: mesh-ingress, nginx and HAProxy each alone on core 0 "
                         "terminate TLS 1.3 (ALPN h2, http/1.1; one certificate for edge.bench.test) and proxy h2c to "
                         "the three backends; req/s and CPU µs/req over TLS keep-alive, p50/p99 at --rate, new TLS "
                         "handshakes/s (no resumption), peak RSS; `direct` is the latency baseline; builds "
                         "mesh-ingress instead of mesh-proxy (writes bench/results/<timestamp>-ingress)")
    ap.add_argument("--curves", action="store_true",
                    help="instead: mesh-proxy's cost curves: RSS and CPU per request against endpoints of one service "
                         "(1-10000) and configured services (1-1000), RSS against idle client connections (1-10000, "
                         "beside each installed peer) and concurrent streams (1-10000), req/s against runtime threads, "
                         "one balancer pick against endpoints (criterion); growth fits and chart.svg (writes "
                         "bench/results/<timestamp>-curves)")
    ap.add_argument("--no-pick", action="store_true", help="--curves: skip the criterion pick bench (and its build)")
    ap.add_argument("--hs-concurrency", type=int, default=16,
                    help="--handshakes, --ingress: concurrent connections of the handshake load tool (default 16)")
    ap.add_argument("--hs-seconds", type=float,
                    help="--handshakes, --ingress: seconds of each measured handshake run (default 5, quick 2)")
    ap.add_argument("--hs-max", type=int, default=1_000_000,
                    help="--handshakes, --ingress: at most this many connections per handshake run (default 1000000)")
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
    ap.add_argument("--proxies",
                    help=f"comma-separated subset of {','.join(PROXIES)} (the default: all; {NO_METRICS}: mesh-proxy "
                         f"with `[metrics] requests = false`); with --ingress, of {','.join(INGRESS_KINDS)} (the "
                         "default: all three)")
    ap.add_argument("--no-l4", dest="l4", action="store_false", help="skip the HAProxy mode tcp (L4) comparison")
    ap.add_argument("--out", type=Path, help="output directory (default bench/results/<timestamp>)")
    ap.add_argument("--keep-latency-logs", action="store_true", help="keep h2load per-request logs in the output dir")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.proxies is None:
        args.proxies = ",".join(INGRESS_KINDS if args.ingress else PROXIES)
    # The row's label is accepted too: --proxies 'mesh-proxy (no metrics)'.
    by_label = {v: k for k, v in LABELS.items()}
    args.proxies = [by_label.get(p.strip(), p.strip()) for p in args.proxies.split(",") if p.strip()]
    unknown = [p for p in args.proxies if p not in PROXIES and p != MESH_INGRESS]
    if unknown:
        ap.error(f"unknown proxies {unknown}; choose from {PROXIES} ({MESH_INGRESS} with --ingress)")
    modes = [m for m, on in (("--balance", args.balance), ("--metrics-cost", args.metrics_cost is not None),
                             ("--ab", args.ab is not None), ("--mtls", args.mtls), ("--handshakes", args.handshakes),
                             ("--ingress", args.ingress), ("--curves", args.curves))
             if on]
    if len(modes) > 1:
        ap.error(f"{' and '.join(modes)} are separate modes: choose one")
    if args.rounds is not None and args.ab is None:
        ap.error("--rounds applies to --ab (--metrics-cost takes its rounds as its own value: --metrics-cost 5)")
    if MESH_INGRESS in args.proxies and not args.ingress:
        ap.error(f"{MESH_INGRESS} runs only in --ingress")
    if args.ingress:
        # The edges only; `direct` is the latency baseline and always runs.
        args.proxies = [p for p in args.proxies if p in INGRESS_KINDS]
        if not args.proxies:
            ap.error(f"--ingress needs at least one of {','.join(INGRESS_KINDS)} in --proxies")
        if args.mesh_proxy_bin is not None:
            ap.error("--mesh-proxy-bin does not apply to --ingress (it runs target/release/mesh-ingress)")
        args.l4 = False
    if args.mtls or args.handshakes or args.ingress:
        if not args.ingress:
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
        if args.metrics_cost < 1 or args.metrics_cost > 100:
            ap.error("--metrics-cost ROUNDS must be in 1..100")
        # Only mesh-proxy with and without metrics run; --proxies and the L4 comparison do not apply.
        args.proxies = ["mesh-proxy", NO_METRICS]
        args.l4 = False
    elif args.ab is not None:
        for exe in args.ab:
            if not exe.is_file() or not os.access(exe, os.X_OK):
                ap.error(f"--ab: {exe} is not an executable file")
        if args.mesh_proxy_bin is not None:
            ap.error("--mesh-proxy-bin does not apply to --ab: both builds are given to --ab OLD NEW")
        if args.rounds is None:
            args.rounds = AB_DEFAULT_ROUNDS
        if args.rounds < 1 or args.rounds > 100:
            ap.error("--rounds must be in 1..100")
        # Both builds run with the default mode's mesh-proxy config; nothing is built, so the
        # run measures exactly the executables given.
        args.proxies = ["mesh-proxy"]
        args.l4 = False
        args.no_build = True
    elif args.balance:
        if args.quick:
            ap.error("--quick does not apply to --balance (its runs are 3000 requests each)")
        # direct has nothing to balance; the baseline is mesh-proxy over the two fast backends
        args.proxies = [p for p in args.proxies if p in BAL_PROXIES]
        if not args.proxies:
            ap.error("--balance needs at least one of mesh-proxy,envoy,haproxy,nginx in --proxies")
        args.l4 = False
    elif args.curves:
        args.l4 = False  # the curves run mesh-proxy (and, for idle connections, each installed peer)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    skip = check_tools(args)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # Explicitly: a shell starting us in the background may have left SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    if args.balance:
        return balance.run(args, skip)
    if args.metrics_cost is not None:
        return metrics_cost.run(args, skip)
    if args.ab is not None:
        return ab.run(args, skip)
    if args.mtls or args.handshakes:
        return (mtls if args.mtls else handshakes).run(args, skip)
    if args.ingress:
        return ingress.run(args, skip)
    if args.curves:
        return curves.run(args, skip)
    return full.run(args, skip)
