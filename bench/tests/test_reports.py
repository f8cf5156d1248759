"""Every mode's report renders from typed results, with successes and failures mixed, and the
cell formatting functions."""

import unittest

from meshbench.modes import ab, balance, full, handshakes, ingress, metrics_cost, mtls
from meshbench.modes.balance import BASELINE, BalanceResults, OneConnRun, failing_backend_stats, slow_backend_stats
from meshbench.report import error_cell, fmt, us
from meshbench.rounds import Round, RoundRun
from tests.builders import full_run, h2, ingress_run, rate_run, throughput
from tests.builders import log_rows as rows

META = {"timestamp": "20250101-000000", "mode": "quick", "cpu": "Test CPU", "cores": 2, "requests": 20000,
        "rate_rps": 2000, "rate_conns": 8, "rate_seconds": 3, "one_conn_requests": 3000, "slow_ms": 0, "warmup": 2000,
        "rounds": 2}


class CellTest(unittest.TestCase):
    def test_us(self):
        self.assertEqual(us(850.4), "850 µs")
        self.assertEqual(us(1250.0), "1.25 ms")
        self.assertEqual(us(None), "n/a")
        self.assertEqual(us(float("nan")), "n/a")

    def test_fmt_and_error_cell(self):
        self.assertEqual(fmt(12.345, ".1f"), "12.3")
        self.assertEqual(fmt(None, ".1f", "—"), "—")
        self.assertEqual(error_cell("a | b\nsecond line"), "a / b")
        self.assertEqual(error_cell(None), "failed")


class RenderTest(unittest.TestCase):
    def test_full(self):
        results = [full_run("direct"), full_run("mesh-proxy"), full.ProxyRun(proxy="envoy", error="envoy not installed")]
        full.add_derived(results)
        l4 = full.L4Run("haproxy-tcp (L4)", error="exited with code 127")
        md = full.markdown(results, l4, META)
        self.assertIn("| mesh-proxy | 80,000 | 12.0 |", md)
        self.assertIn("| envoy | FAILED: envoy not installed |", md)
        self.assertIn("- **haproxy-tcp (L4)**:", md)
        svg = full.svg_chart(results, META)
        self.assertTrue(svg.startswith("<svg") and svg.endswith("</svg>\n"))

    def test_balance(self):
        res = BalanceResults()
        res.slow[BASELINE] = slow_backend_stats(h2(), [1, 1], rows([200] * 10), requests=10)
        res.slow["mesh-proxy"] = slow_backend_stats(h2(), [5, 4, 1], rows([200] * 10), requests=10)
        res.one_conn["mesh-proxy"] = {f"m{m}": OneConnRun(m, 3000, 3000, [1000] * 3, 1.0, h2(ok_2xx=3000)) for m in (8, 1)}
        res.failing["mesh-proxy"] = failing_backend_stats(h2(), [5, 4, 1], rows([503] + [200] * 9), requests=10)
        res.errors["nginx"] = ["preflight: exited"]
        res.derive()
        meta = META | {"proxies": ["mesh-proxy", "nginx"], "slow_ms": 20}
        md = balance.balance_markdown(res, meta)
        self.assertIn("| mesh-proxy | 10.0 % | 5 / 4 / 1 |", md)
        self.assertIn("| nginx | FAILED: preflight: exited |", md)
        self.assertTrue(balance.svg_balance_chart(res, meta).endswith("</svg>\n"))

    def test_metrics_cost_and_ab(self):
        def rr(label: str, rnd: int) -> RoundRun:
            return RoundRun(proxy=label, round=rnd, ok=True, throughput=throughput(), peak_rss_mib=10.0)

        rounds = [Round(1, {"with": rr("mesh-proxy", 1), "without": rr("n", 1)}),
                  Round(2, {"with": rr("mesh-proxy", 2), "without": RoundRun(proxy="n", round=2, error="boom")})]
        md = metrics_cost.metrics_cost_markdown(rounds, metrics_cost.metrics_cost_derive(rounds), META)
        self.assertIn("| 2 | 80,000 | FAILED: boom |", md)
        self.assertIn("1 of 2 rounds complete", md)

        rounds = [Round(1, {"old": rr("old", 1), "new": rr("new", 1)}),
                  Round(2, {"old": rr("old", 2), "new": RoundRun(proxy="new", round=2, error="exited")})]
        binary = {"path": "/x", "size": 1, "modified": "2025-01-01T00:00:00", "sha256": "ab" * 32}
        md = ab.ab_markdown(rounds, ab.ab_derive(rounds), META | {"binaries": {"old": binary, "new": binary}})
        self.assertIn("| 1 | 80,000 | 80,000 | 1.000 | 12.0 | 12.0 | 1.000 |", md)
        self.assertIn("same file contents", md)
        self.assertIn("- **new**, round 2:", md)

    def test_mtls_and_handshakes(self):
        ok = mtls.PairRun(proxy="mesh-proxy", ok=True, checks={"through_pair": mtls.CheckResult(True, "30/30")},
                          ports={"a": 1, "b": 2}, throughput=throughput(pids=2), a_to_b_connections=1,
                          cpu_us_per_req_a=6.0, cpu_us_per_req_b=6.0, latency=rate_run(), peak_rss_mib_a=10.0,
                          peak_rss_mib_b=11.0)
        peer = mtls.PairRun(proxy="envoy", ok=True, checks={}, ports={"a": 3, "b": 4}, throughput=throughput(0.5, pids=2),
                            a_to_b_connections=1, cpu_us_per_req_a=8.0, cpu_us_per_req_b=8.0, latency=rate_run(500),
                            peak_rss_mib_a=20.0, peak_rss_mib_b=21.0, other_on_proxy_core=0.3)
        direct = mtls.BaselineRun(ok=True, throughput=throughput(pids=0), latency=rate_run(300, with_cpu=False))
        results = [ok, peer, mtls.PairRun(proxy="nginx", error="nginx not installed")]
        ratios = mtls.mtls_derive(results, direct)
        self.assertAlmostEqual(ratios["envoy"]["req_per_s"], 2.0)
        md = mtls.mtls_markdown(results, direct, ratios, META | {"mode": "mtls"})
        self.assertIn("| mesh-proxy | 80,000 |", md)
        self.assertIn("1/5", md)
        self.assertIn("**Warning: shared cores.**", md)

        fig = handshakes.HandshakeFigures(2000.0, 0, 2.0, 0.4, 200.0, 0.97, "CLIENT (saturated first)",
                                          {"0": 0.4, "1": 0.99}, 0.0, 0.02, 9.0)
        hs = [handshakes.HandshakeRun("mesh-proxy", True, figures=fig),
              handshakes.HandshakeRun("haproxy", error="probe: 0/10")]
        md = handshakes.handshakes_markdown(hs, META | {"concurrency": 16, "seconds": 5.0})
        self.assertIn("| mesh-proxy | 2,000 | 0 | 200 | 40% | 97% | CLIENT (saturated first) | 9.0 |", md)
        self.assertIn("**The client saturated its core before the server did** for: mesh-proxy", md)

    def test_ingress(self):
        mesh = ingress_run("mesh-ingress", rps_scale=0.5, cpu_us_per_hs=200.0, client_bound=True, rss=15.0)
        nginx = ingress_run("nginx", cpu_us_per_hs=400.0, rss=30.0)
        nginx.checks["https_http1"] = mtls.CheckResult(False, "HTTP/1.1 502, body '', x-backend missing")
        haproxy = ingress.IngressRun(proxy="haproxy", error="haproxy not installed")
        direct = mtls.BaselineRun(ok=True, throughput=throughput(pids=0), latency=rate_run(300, with_cpu=False))
        results = [mesh, nginx, haproxy]
        ratios = ingress.ingress_derive(results, direct)
        self.assertEqual(list(ratios), ["nginx"])  # haproxy did not run
        q = ratios["nginx"]
        self.assertAlmostEqual(q["req_per_s"], 0.5)
        self.assertAlmostEqual(q["cpu_us_per_req"], 1.0)
        self.assertAlmostEqual(q["cpu_us_per_handshake"], 0.5)
        self.assertAlmostEqual(q["handshakes_per_s"], 4000.0 / 2500.0)
        self.assertAlmostEqual(q["peak_rss_mib"], 0.5)
        self.assertAlmostEqual(q["added_p99_us"], 1.0)  # 498 - 398 µs both
        md = ingress.ingress_markdown(results, direct, ratios, META | {
            "mode": "ingress (quick)", "tls13_suite": "TLS_AES_128_GCM_SHA256", "concurrency": 16, "seconds": 2.0})
        self.assertIn("| direct (h2c to b1, no TLS) | 80,000 | n/a | n/a | 300 µs |", md)
        self.assertIn("| mesh-ingress | 40,000 | 12.0 | 35.0 | 400 µs | 498 µs | +100 µs | 4,000 | 200 | "
                      "CLIENT (saturated first) | 15.0 | 5/5 |", md)
        self.assertIn("| nginx | 80,000 | 12.0 | 35.0 | 400 µs | 498 µs | +100 µs | 2,500 | 400 | server | 30.0 | "
                      "4/5 (failed: https_http1) |", md)
        self.assertIn("| haproxy | FAILED: haproxy not installed |", md)
        self.assertIn("| nginx | 0.50× | 1.00× | 1.00× | 1.60× | 0.50× | 1.00× | 0.50× |", md)
        self.assertIn("**The handshake client saturated its core before the edge did** for: mesh-ingress", md)
        self.assertIn("**FAIL**: HTTP/1.1 502", md)
        self.assertIn("| refused |", md)
        self.assertIn("No HTTP request is sent", md)
        self.assertIn("- **haproxy**:", md)

    def test_ingress_without_mesh_ingress(self):
        results = [ingress.IngressRun(proxy="mesh-ingress", error="not found"), ingress_run("nginx")]
        ratios = ingress.ingress_derive(results, None)
        self.assertEqual(ratios, {})
        md = ingress.ingress_markdown(results, None, ratios, META | {
            "mode": "ingress", "tls13_suite": "TLS_AES_128_GCM_SHA256", "concurrency": 16, "seconds": 5.0})
        self.assertIn("n/a: mesh-ingress did not run (see Failures).", md)
        self.assertIn("| nginx | 80,000 |", md)
        self.assertIn("| nginx | 80,000 | 12.0 | 35.0 | 400 µs | 498 µs | n/a |", md)  # no direct: no added p99


if __name__ == "__main__":
    unittest.main()
