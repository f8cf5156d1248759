"""results.json keeps the keys it had before the results became dataclasses: the readers of
past results must keep working. The expected key lists are the ones the harness has always
written, in order; a stage that did not run leaves its keys out."""

import json
import unittest

from meshbench.bench import to_jsonable
from meshbench.modes.full import L4Run, OneConnSpread, ProxyRun, add_derived
from meshbench.modes.handshakes import HandshakeFigures, HandshakeRun, HandshakeStage
from meshbench.modes.ingress import IngressRun, ingress_derive
from meshbench.modes.mtls import BaselineRun, CheckResult, PairRun, mtls_derive
from meshbench.rounds import Round, RoundRun
from tests.builders import full_run, h2, ingress_run, rate_run, throughput

H2LOAD_KEYS = ["seconds", "total", "done", "succeeded", "failed", "errored", "timeout", "ok_2xx", "req_per_s"]
THROUGHPUT_KEYS = ["max", "req_per_s", "cpu_us_per_req", "proxy_cpu_s_max", "proxy_cpu_util_max", "proxy_cpu_s_by_pid",
                   "core_busy_max"]
LATENCY_KEYS = ["rate", "p50_us", "p99_us", "cpu_us_per_req_at_rate"]
RATE_KEYS = H2LOAD_KEYS + ["target_rps", "non_2xx", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
ADDED = ["added_p50_us", "added_p99_us"]


class FullModeKeysTest(unittest.TestCase):
    def test_complete_run(self):
        runs = [full_run("direct"), full_run()]
        add_derived(runs)
        d = runs[1].to_dict()
        self.assertEqual(list(d), ["proxy", "ok", "port"] + THROUGHPUT_KEYS + LATENCY_KEYS + ["one_conn", "peak_rss_mib"] + ADDED)
        self.assertEqual(list(d["max"]), H2LOAD_KEYS)
        self.assertEqual(list(d["rate"]), RATE_KEYS)
        self.assertEqual(list(d["one_conn"]), ["requests", "ok_2xx", "counts"])
        self.assertEqual(d["added_p99_us"], 0.0)

    def test_direct_has_null_proxy_figures(self):
        d = full_run("direct").to_dict()
        self.assertIsNone(d["cpu_us_per_req"])
        self.assertIsNone(d["peak_rss_mib"])

    def test_failed_during_the_latency_test(self):
        r = ProxyRun(proxy="envoy", port=4001, throughput=throughput(), error="fixed-rate test: no successful request")
        add_derived([r])
        self.assertEqual(list(r.to_dict()), ["proxy", "ok", "port"] + THROUGHPUT_KEYS + ["error"] + ADDED)

    def test_failed_to_start_or_not_installed(self):
        r = ProxyRun(proxy="nginx", error="nginx not installed")
        add_derived([r])
        self.assertEqual(r.to_dict(), {"proxy": "nginx", "ok": False, "error": "nginx not installed",
                                       "added_p50_us": None, "added_p99_us": None})

    def test_l4(self):
        self.assertEqual(list(L4Run("haproxy-tcp (L4)", True, None, OneConnSpread(3000, 3000, [3000, 0, 0])).to_dict()),
                         ["proxy", "ok", "one_conn"])
        self.assertEqual(list(L4Run("haproxy-tcp (L4)", False, "boom").to_dict()), ["proxy", "ok", "error"])

    def test_serializes_through_json(self):
        data = {"results": [full_run()], "l4": None}
        back = json.loads(json.dumps(data, default=to_jsonable))
        self.assertEqual(back["results"][0]["proxy"], "mesh-proxy")


class RoundKeysTest(unittest.TestCase):
    def test_round_run_and_round(self):
        ok = RoundRun(proxy="mesh-proxy", round=1, ok=True, throughput=throughput(), peak_rss_mib=10.0)
        self.assertEqual(list(ok.to_dict()), ["proxy", "round", "ok"] + THROUGHPUT_KEYS + ["peak_rss_mib"])
        failed = RoundRun(proxy="mesh-proxy (no metrics)", round=1, error="not found")
        self.assertEqual(list(failed.to_dict()), ["proxy", "round", "ok", "error"])
        rd = Round(1, {"with": ok, "without": failed}, {"ratio": None})
        self.assertEqual(list(rd.to_dict()), ["round", "with", "without", "ratio"])


class MtlsKeysTest(unittest.TestCase):
    def pair(self) -> PairRun:
        return PairRun(
            proxy="mesh-proxy", ok=True, checks={"through_pair": CheckResult(True, "30/30 requests answered 2xx")},
            ports={"a": 1, "b": 2}, throughput=throughput(pids=2), a_to_b_connections=1, other_on_proxy_core=0.01,
            cpu_us_per_req_a=6.0, cpu_us_per_req_b=6.0, latency=rate_run(), peak_rss_mib_a=10.0, peak_rss_mib_b=11.0,
        )

    def test_pair(self):
        r = self.pair()
        mtls_derive([r], BaselineRun(ok=True, throughput=throughput(pids=0), latency=rate_run(with_cpu=False)))
        self.assertEqual(
            list(r.to_dict()),
            ["proxy", "ok", "checks", "ports"] + THROUGHPUT_KEYS
            + ["a_to_b_connections", "other_on_proxy_core", "cpu_us_per_req_a", "cpu_us_per_req_b"]
            + LATENCY_KEYS + ["peak_rss_mib_a", "peak_rss_mib_b"] + ADDED,
        )
        self.assertEqual(r.to_dict()["checks"]["through_pair"], {"pass": True, "detail": "30/30 requests answered 2xx"})

    def test_not_installed_pair_has_no_checks(self):
        r = PairRun(proxy="envoy", error="envoy not installed")
        mtls_derive([r], None)
        self.assertEqual(list(r.to_dict()), ["proxy", "ok", "error"] + ADDED)

    def test_baseline(self):
        b = BaselineRun(ok=True, throughput=throughput(pids=0), latency=rate_run(with_cpu=False))
        self.assertEqual(list(b.to_dict()), ["proxy", "ok"] + THROUGHPUT_KEYS + LATENCY_KEYS)

    def test_check_evidence_follows_pass_and_detail(self):
        c = CheckResult(False, "negotiated TLSv1.2", {"probe": {"negotiated": "TLSv1.2"}})
        self.assertEqual(list(c.to_dict()), ["pass", "detail", "probe"])


class HandshakeKeysTest(unittest.TestCase):
    def test_complete_and_partial(self):
        figures = HandshakeFigures(per_second=2000.0, failures=0, server_cpu_s=2.0, server_cpu_util=0.4,
                                   server_cpu_us_per_hs=200.0, client_cpu_util=0.97, limited_by="CLIENT (saturated first)",
                                   core_busy={"0": 0.45, "1": 0.99}, other_on_proxy_core=0.05, other_on_load_core=None,
                                   peak_rss_mib=9.0)
        r = HandshakeRun(proxy="mesh-proxy", ok=True, port=5, probe={"handshakes": 10}, run={"handshakes": 10000},
                         figures=figures)
        self.assertEqual(list(r.to_dict()),
                         ["proxy", "ok", "port", "probe", "run", "per_second", "failures", "server_cpu_s", "server_cpu_util",
                          "server_cpu_us_per_hs", "client_cpu_util", "limited_by", "core_busy", "other_on_proxy_core",
                          "peak_rss_mib"])
        probe_failed = HandshakeRun(proxy="nginx", port=5, probe={"handshakes": 3}, error="probe: 3/10")
        self.assertEqual(list(probe_failed.to_dict()), ["proxy", "ok", "port", "probe", "error"])


class IngressKeysTest(unittest.TestCase):
    def test_complete_run(self):
        r = ingress_run()
        ingress_derive([r], BaselineRun(ok=True, throughput=throughput(pids=0), latency=rate_run(with_cpu=False)))
        d = r.to_dict()
        self.assertEqual(list(d), ["proxy", "ok", "port", "checks", "tls12", "one_conn"] + THROUGHPUT_KEYS
                         + ["other_on_proxy_core"] + LATENCY_KEYS + ["handshakes", "peak_rss_mib"] + ADDED)
        self.assertEqual(list(d["handshakes"]), ["probe", "run", "per_second", "failures", "server_cpu_s",
                                                 "server_cpu_util", "server_cpu_us_per_hs", "client_cpu_util",
                                                 "limited_by", "core_busy", "other_on_proxy_core",
                                                 "other_on_load_core", "peak_rss_mib"])
        self.assertEqual(list(d["checks"]), ["https_h2", "https_http1", "edge_headers", "spread", "h2load_tls"])
        self.assertEqual(d["tls12"]["refused"], True)
        json.dumps(d, default=to_jsonable)

    def test_failed_in_the_checks(self):
        r = IngressRun(proxy="nginx", port=8443, checks={"https_h2": CheckResult(False, "curl rc 60")},
                       error="HTTPS with h2 through the edge: curl rc 60")
        ingress_derive([r], None)
        self.assertEqual(list(r.to_dict()), ["proxy", "ok", "port", "checks", "error"] + ADDED)

    def test_handshake_stage_probe_only(self):
        self.assertEqual(HandshakeStage(probe={"handshakes": 3}).to_dict(), {"probe": {"handshakes": 3}})


class H2loadInsideResultsTest(unittest.TestCase):
    def test_rate_latency_from_durations(self):
        r = rate_run(p50=400)
        self.assertEqual(r.p50_us, 400.0)  # 201 values, 300..499 and 2000: the 101st
        self.assertEqual(r.rate.max_us, 2000.0)
        self.assertEqual(r.rate.h2load, h2(ok_2xx=201, seconds=10.0))


if __name__ == "__main__":
    unittest.main()
