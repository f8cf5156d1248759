"""h2load: the summary parser, the run wrapper's error handling, and the per-request log."""

import subprocess
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from meshbench import h2load
from meshbench.common import BenchError
from meshbench.h2load import H2loadOutputError, LoggedRequest
from tests import samples


class ParseOutputTest(unittest.TestCase):
    def test_clean_run(self):
        r = h2load.parse_output(samples.H2LOAD_OK)
        self.assertEqual(r.seconds, 2.5)
        self.assertEqual((r.total, r.done, r.succeeded, r.failed, r.errored, r.timeout), (200000, 200000, 200000, 0, 0, 0))
        self.assertEqual(r.ok_2xx, 200000)
        self.assertEqual(r.req_per_s, 80000.0)
        self.assertTrue(r.all_2xx)

    def test_failed_requests_count_only_2xx(self):
        r = h2load.parse_output(samples.H2LOAD_FAILED_REQUESTS)
        self.assertAlmostEqual(r.seconds, 0.8455)  # "845.50ms"
        self.assertEqual((r.total, r.succeeded, r.failed), (3000, 2250, 750))
        self.assertEqual(r.ok_2xx, 2250)
        self.assertAlmostEqual(r.req_per_s, 2250 / 0.8455)
        self.assertFalse(r.all_2xx)

    def test_connection_refused_is_a_clear_failure(self):
        r = h2load.parse_output(samples.H2LOAD_CONNECTION_REFUSED)
        self.assertAlmostEqual(r.seconds, 312e-6)  # "312us"
        self.assertEqual((r.ok_2xx, r.errored, r.failed), (0, 30, 30))
        self.assertEqual(r.req_per_s, 0.0)
        self.assertFalse(r.all_2xx)

    def test_zero_duration_gives_zero_rate(self):
        text = samples.H2LOAD_OK.replace("finished in 2.50s", "finished in 0.00s")
        self.assertEqual(h2load.parse_output(text).req_per_s, 0.0)

    def test_garbage_raises_naming_the_missing_lines(self):
        with self.assertRaises(H2loadOutputError) as cm:
            h2load.parse_output(samples.H2LOAD_GARBAGE)
        msg = str(cm.exception)
        for line in ("finished in", "requests:", "status codes:"):
            self.assertIn(line, msg)

    def test_empty_raises(self):
        with self.assertRaises(H2loadOutputError):
            h2load.parse_output("")

    def test_truncated_summary_raises(self):
        cut = samples.H2LOAD_OK.split("status codes:")[0]
        with self.assertRaises(H2loadOutputError) as cm:
            h2load.parse_output(cut)
        self.assertIn("status codes:", str(cm.exception))
        self.assertNotIn("requests:", str(cm.exception))

    def test_to_dict_keeps_the_results_json_keys(self):
        d = h2load.parse_output(samples.H2LOAD_OK).to_dict()
        self.assertEqual(list(d), ["seconds", "total", "done", "succeeded", "failed", "errored", "timeout", "ok_2xx", "req_per_s"])


class TlsSessionTest(unittest.TestCase):
    def test_tls_lines(self):
        s = h2load.parse_tls_session(samples.H2LOAD_PROBE_4XX)
        self.assertEqual((s.protocol, s.cipher, s.key_exchange, s.alpn),
                         ("TLSv1.3", "TLS_AES_256_GCM_SHA384", "X25519 253 bits", "h2"))

    def test_none_over_h2c(self):
        self.assertIsNone(h2load.parse_tls_session(samples.H2LOAD_OK))  # "Application protocol: h2c" only
        self.assertIsNone(h2load.parse_output(samples.H2LOAD_OK).tls)

    def test_tls_run_keeps_the_keys_and_adds_tls_last(self):
        r = h2load.parse_output(samples.H2LOAD_TLS_OK)
        self.assertEqual((r.ok_2xx, r.tls.protocol, r.tls.alpn), (200000, "TLSv1.3", "h2"))
        d = r.to_dict()
        self.assertEqual(list(d), ["seconds", "total", "done", "succeeded", "failed", "errored", "timeout", "ok_2xx",
                                   "req_per_s", "tls"])
        self.assertEqual(d["tls"], {"protocol": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256",
                                    "key_exchange": "X25519 253 bits", "alpn": "h2"})

    def test_alpn_fallback_is_visible(self):
        s = h2load.parse_tls_session(samples.H2LOAD_TLS_OK.replace("Application protocol: h2", "Application protocol: http/1.1"))
        self.assertEqual(s.alpn, "http/1.1")


class StatusCountsTest(unittest.TestCase):
    def test_probe_output(self):
        c = h2load.parse_status_counts(samples.H2LOAD_PROBE_4XX)
        self.assertEqual((c.ok_2xx, c.c3xx, c.c4xx, c.c5xx), (0, 0, 4, 0))

    def test_none_without_the_line(self):
        self.assertIsNone(h2load.parse_status_counts(samples.H2LOAD_GARBAGE))

    def test_probe_result_keys(self):
        p = h2load.ProbeResult(0, 4, 0, 0, "out")
        self.assertEqual(p.to_dict(), {"ok_2xx": 0, "4xx": 4, "5xx": 0, "rc": 0, "out": "out"})


class RunTest(unittest.TestCase):
    """h2load.run without h2load: subprocess.run is replaced by a canned result."""

    def fake(self, stdout: str, rc: int = 0):
        return mock.patch.object(
            subprocess, "run", return_value=subprocess.CompletedProcess(args=[], returncode=rc, stdout=stdout, stderr="")
        )

    def test_parses_a_good_run_and_builds_the_command(self):
        with self.fake(samples.H2LOAD_OK) as run:
            r = h2load.run(8080, ["-c", "16", "-m", "32", "-n", "200000"], timeout=60, log_file=Path("/tmp/x.tsv"))
        self.assertEqual(r.ok_2xx, 200000)
        argv = run.call_args.args[0]
        self.assertEqual(argv[:4], ["taskset", "-c", "1", "h2load"])
        self.assertIn(":authority: bench.local:80", argv)
        self.assertEqual(argv[-3:], ["--log-file", "/tmp/x.tsv", "http://127.0.0.1:8080/"])

    def test_over_tls_names_the_server_and_connects_to_loopback(self):
        with self.fake(samples.H2LOAD_TLS_OK) as run:
            r = h2load.run(8443, ["-c", "1", "-n", "30"], timeout=15, server_name="edge.bench.test")
        self.assertEqual(r.tls.alpn, "h2")
        argv = run.call_args.args[0]
        self.assertEqual(argv[:4], ["taskset", "-c", "1", "h2load"])
        self.assertEqual(argv[-1], "https://edge.bench.test:8443/")  # SNI and :authority carry the name
        self.assertIn("--connect-to", argv)
        self.assertEqual(argv[argv.index("--connect-to") + 1], "127.0.0.1:8443")
        self.assertEqual(argv[argv.index("--npn-list") + 1], "h2,http/1.1")
        self.assertEqual(argv[argv.index("--tls13-ciphers") + 1], h2load.TLS13_SUITE)
        self.assertNotIn(":authority: bench.local:80", argv)

    def test_garbage_output_is_a_bench_error(self):
        with self.fake(samples.H2LOAD_GARBAGE):
            with self.assertRaises(BenchError) as cm:
                h2load.run(8080, [], timeout=5)
        self.assertIn("h2load failed (rc 0)", str(cm.exception))
        self.assertIn("unrecognized option", str(cm.exception))

    def test_nonzero_exit_is_a_bench_error_even_with_a_summary(self):
        with self.fake(samples.H2LOAD_CONNECTION_REFUSED, rc=1):
            with self.assertRaises(BenchError) as cm:
                h2load.run(8080, [], timeout=5)
        self.assertIn("rc 1", str(cm.exception))

    def test_timeout_is_a_bench_error(self):
        with mock.patch.object(subprocess, "run", side_effect=subprocess.TimeoutExpired(cmd="h2load", timeout=5)):
            with self.assertRaises(BenchError) as cm:
                h2load.run(8080, [], timeout=5)
        self.assertIn("did not finish within 5s", str(cm.exception))


class RequestLogTest(unittest.TestCase):
    def test_rows_skip_blank_and_cut_lines(self):
        rows = h2load.parse_request_log(samples.H2LOAD_REQUEST_LOG)
        self.assertEqual(len(rows), 5)
        self.assertEqual(rows[0], LoggedRequest(1733500000000100, 200, 950))
        self.assertEqual(rows[3].status, -1)  # no response
        self.assertFalse(rows[3].is_2xx)
        self.assertEqual(rows[3].end_us, 1733500000005400)

    def test_non_numeric_lines_are_skipped(self):
        self.assertEqual(h2load.parse_request_log("a\tb\tc\n1\t200\t5\n"), [LoggedRequest(1, 200, 5)])

    def test_latencies_of_2xx_sorted_and_non_2xx_count(self):
        durs, bad = h2load.latencies(h2load.parse_request_log(samples.H2LOAD_REQUEST_LOG))
        self.assertEqual(durs, [800, 950, 1200])
        self.assertEqual(bad, 2)

    def test_read_latencies_from_a_file(self):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "lat.tsv"
            path.write_text(samples.H2LOAD_REQUEST_LOG)
            self.assertEqual(h2load.read_latencies(path), ([800, 950, 1200], 2))

    def test_empty_log(self):
        self.assertEqual(h2load.latencies(h2load.parse_request_log("")), ([], 0))


if __name__ == "__main__":
    unittest.main()
