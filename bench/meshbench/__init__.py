"""meshbench: the proxy benchmark harness behind bench/run.py (Python 3 standard library only).

Layout:

- common:        paths, cores, proxy names, BenchError, log
- processes:     starting/stopping processes (own process groups), ports, readiness waits
- procfs:        /proc parsers (CPU time, peak RSS, per-core busy, TCP states) and readers
- h2load:        running h2load, parsing its summary and its per-request log
- stats:         percentiles, medians, ratios
- tools:         tool checks, versions, the Envoy executable, cargo build
- proxy_configs: mesh-proxy / Envoy / HAProxy / nginx configs of the h2c balancer role, and
                 the parts of them that the pair and edge configs reuse
- pki, pair_configs, pairs: the test PKIs, the mTLS pair configs, and what --mtls and
                 --handshakes share (pair start-up, the handshake load tool)
- ingress_configs: mesh-ingress / nginx / HAProxy configs of the TLS edge (--ingress)
- bench:         the run skeleton (Bench: backends, proxies, the shared measurements; what
                 the results share; run_mode: output directory, build, guarded run, exit code)
- rounds:        alternating rounds of two mesh-proxy variants, the run of --metrics-cost and --ab
- report:        markdown cells, the failures section and the SVG chart parts shared by the modes
- modes/:        one module per mode (full, balance, metrics_cost, ab, mtls, handshakes, ingress)
- cli:           the command line and the dispatch to a mode
"""
