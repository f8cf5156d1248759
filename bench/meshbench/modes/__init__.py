"""One module per mode of bench/run.py. Each has a `run(args, skip) -> exit code` that measures,
then writes results.md and results.json (and, for some, chart.svg) into its output directory:

- full:         the default mode (and --quick): throughput, CPU, latency, spread, RSS per proxy
- balance:      --balance, how the balancers handle a slow, a shared and a failing backend
- metrics_cost: --metrics-cost, mesh-proxy with vs without its request metrics, alternating
- ab:           --ab, two mesh-proxy builds measured alternately (a regression check)
- mtls:         --mtls, each proxy kind as a client/server pair over mutual TLS
- handshakes:   --handshakes, new mTLS handshakes per second of each TLS-terminating side
- ingress:      --ingress, TLS termination at the edge: mesh-ingress against nginx and HAProxy
"""
