"""Result objects with plausible numbers, for the tests of results.json keys and of the reports."""

from meshbench.bench import RateLatency, RateRun, ThroughputRun
from meshbench.h2load import H2loadResult, LoggedRequest
from meshbench.modes.full import OneConnSpread, ProxyRun
from meshbench.modes.handshakes import HandshakeFigures, HandshakeStage
from meshbench.modes.ingress import IngressRun
from meshbench.modes.mtls import CheckResult, TlsVersionProbe


def h2(ok_2xx: int = 200000, seconds: float = 2.5, total: int | None = None) -> H2loadResult:
    total = ok_2xx if total is None else total
    return H2loadResult(seconds=seconds, total=total, done=total, succeeded=ok_2xx, failed=total - ok_2xx, errored=0,
                        timeout=0, ok_2xx=ok_2xx, req_per_s=ok_2xx / seconds)


def throughput(rps_scale: float = 1.0, cpu_s: float = 2.4, pids: int = 1) -> ThroughputRun:
    r = h2(seconds=2.5 / rps_scale)
    return ThroughputRun(h2load=r, cpu_us_per_req=cpu_s * 1e6 / r.ok_2xx if pids else None,
                         proxy_cpu_s_max=cpu_s if pids else None, proxy_cpu_util_max=cpu_s / r.seconds if pids else None,
                         proxy_cpu_s_by_pid=[cpu_s / pids] * pids if pids else [], core_busy_max={"0": 0.98, "1": 0.95})


def rate_run(p50: int = 400, with_cpu: bool = True) -> RateRun:
    durs = sorted(list(range(p50 - 100, p50 + 100)) + [p50 * 5])
    return RateRun(rate=RateLatency.from_durations(h2(ok_2xx=len(durs), seconds=10.0), 2000, durs, 0),
                   cpu_us_per_req_at_rate=35.0 if with_cpu else None)


def full_run(proxy: str = "mesh-proxy") -> ProxyRun:
    """A complete default-mode run; `direct` has no proxy process, so no CPU or RSS figure."""
    direct = proxy == "direct"
    return ProxyRun(proxy=proxy, ok=True, port=4000, throughput=throughput(pids=0 if direct else 1),
                    latency=rate_run(with_cpu=not direct), one_conn=OneConnSpread(3000, 3000, [1000, 1000, 1000]),
                    peak_rss_mib=None if direct else 12.5)


def log_rows(statuses: list[int], start_step: int = 10, duration: int = 100) -> list[LoggedRequest]:
    """An h2load request log: one request per status, started start_step µs apart."""
    return [LoggedRequest(1_000_000 + i * start_step, st, duration) for i, st in enumerate(statuses)]


def ingress_run(proxy: str = "mesh-ingress", rps_scale: float = 1.0, cpu_us_per_hs: float = 200.0,
                client_bound: bool = False, rss: float = 20.0) -> IngressRun:
    """A complete --ingress run of one edge, every check passed."""
    per_second = 4000.0 if client_bound else 1e6 / cpu_us_per_hs
    figures = HandshakeFigures(per_second=per_second, failures=0, server_cpu_s=per_second * 5 * cpu_us_per_hs / 1e6,
                               server_cpu_util=0.8 if client_bound else 0.99, server_cpu_us_per_hs=cpu_us_per_hs,
                               client_cpu_util=0.95 if client_bound else 0.7,
                               limited_by="CLIENT (saturated first)" if client_bound else "server",
                               core_busy={"0": 0.99, "1": 0.95}, other_on_proxy_core=0.0, other_on_load_core=0.0,
                               peak_rss_mib=rss)
    checks = {k: CheckResult(True, "fine") for k in ("https_h2", "https_http1", "edge_headers", "spread", "h2load_tls")}
    return IngressRun(proxy=proxy, ok=True, port=8443, checks=checks,
                      tls12=TlsVersionProbe(negotiated=None, refused=True, out="alert protocol version"),
                      one_conn=OneConnSpread(3000, 3000, [1000, 1000, 1000]), throughput=throughput(rps_scale),
                      other_on_proxy_core=0.01, latency=rate_run(),
                      handshakes=HandshakeStage(probe={"handshakes": 10}, run={"handshakes": 20000}, figures=figures),
                      peak_rss_mib=rss)
