"""Parsers of the other tools' output: mesh-bench-handshake's JSON report, openssl s_client,
curl through an edge (--ingress), and the version lines of `<tool> --version`."""

import subprocess
import tempfile
import unittest
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

from meshbench import pairs
from meshbench.common import BenchError
from meshbench.modes import ingress
from meshbench.modes.mtls import parse_s_client
from meshbench.tools import first_version_line
from tests import samples


class HandshakeReportTest(unittest.TestCase):
    def test_last_line_is_the_report(self):
        r = pairs.parse_handshake_report(samples.HANDSHAKE_REPORT)
        self.assertEqual((r["handshakes"], r["failures"], r["alpn_h2"]), (9875, 4, 9875))
        self.assertEqual(r["per_second"], 1975.0)
        self.assertEqual(r["cpu_util"], 0.98)

    def test_empty_output(self):
        with self.assertRaisesRegex(ValueError, "no output"):
            pairs.parse_handshake_report("\n")

    def test_not_json(self):
        with self.assertRaisesRegex(ValueError, "printed no JSON"):
            pairs.parse_handshake_report("Error: connection refused\n")

    def test_not_an_object(self):
        with self.assertRaisesRegex(ValueError, "not an object"):
            pairs.parse_handshake_report("[1, 2]\n")

    def test_missing_keys_are_named(self):
        with self.assertRaisesRegex(ValueError, "lacks seconds, per_second, alpn_h2"):
            pairs.parse_handshake_report('{"handshakes": 1, "failures": 0}\n')

    def test_tool_failure_is_a_bench_error(self):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / pairs.HS_TOOL).touch()  # only its existence is checked; subprocess.run is faked
            bench = SimpleNamespace(bin_dir=Path(d))
            certs = SimpleNamespace(root="root.pem", chain=lambda w: f"{w}-chain.pem", key=lambda w: f"{w}.key")
            done = subprocess.CompletedProcess(args=[], returncode=0, stdout="Error: no JSON here\n", stderr="")
            with mock.patch.object(subprocess, "run", return_value=done):
                with self.assertRaisesRegex(BenchError, "mesh-bench-handshake printed no JSON"):
                    pairs.handshake_tool(bench, certs, 8443)

    def test_server_only_against_the_edge_name(self):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / pairs.HS_TOOL).touch()
            bench = SimpleNamespace(bin_dir=Path(d))
            certs = SimpleNamespace(root="root.pem")  # EdgeCerts: no client chain needed
            done = subprocess.CompletedProcess(args=[], returncode=0, stdout=samples.HANDSHAKE_REPORT, stderr="")
            with mock.patch.object(subprocess, "run", return_value=done) as run:
                pairs.handshake_tool(bench, certs, 8443, client_cert=False, server_name="edge.bench.test")
        argv = run.call_args.args[0]
        self.assertEqual(argv[argv.index("--server-name") + 1], "edge.bench.test")
        self.assertNotIn("--cert", argv)
        self.assertNotIn("--key", argv)

    def test_top_errors(self):
        r = pairs.parse_handshake_report(samples.HANDSHAKE_REPORT)
        self.assertEqual(pairs.top_errors(r), "tls: CertificateRequired (×3); connect: refused (×1)")
        self.assertEqual(pairs.top_errors(r, 1), "tls: CertificateRequired (×3)")
        self.assertEqual(pairs.top_errors({}), "")


class LimitVerdictTest(unittest.TestCase):
    def test_verdicts(self):
        self.assertEqual(pairs.limit_verdict(0.99, 0.5), "server")
        self.assertEqual(pairs.limit_verdict(0.5, 0.95), "CLIENT (saturated first)")
        self.assertEqual(pairs.limit_verdict(0.95, 0.95), "both cores")
        self.assertEqual(pairs.limit_verdict(0.5, None), "neither core saturated")


class SClientTest(unittest.TestCase):
    def test_refused(self):
        p = parse_s_client(samples.S_CLIENT_REFUSED)
        self.assertIsNone(p.negotiated)
        self.assertTrue(p.refused)
        self.assertIn("alert protocol version", p.out)
        self.assertIn("New, (NONE), Cipher is (NONE)", p.out)
        self.assertNotIn("Verification", p.out)  # only error lines and the session line are kept

    def test_negotiated(self):
        p = parse_s_client(samples.S_CLIENT_TLS12)
        self.assertEqual(p.negotiated, "TLSv1.2")
        self.assertFalse(p.refused)

    def test_no_session_line(self):
        p = parse_s_client("connect:errno=111\n")
        self.assertIsNone(p.negotiated)
        self.assertTrue(p.refused)

    def test_to_dict_leaves_out_rc_after_a_timeout(self):
        p = parse_s_client(samples.S_CLIENT_REFUSED)
        self.assertEqual(list(p.to_dict()), ["negotiated", "refused", "out"])
        p.rc = 1
        self.assertEqual(list(p.to_dict()), ["negotiated", "refused", "rc", "out"])


class CurlTest(unittest.TestCase):
    def test_h2_response(self):
        r = ingress.parse_curl_output(samples.CURL_H2_OK)
        self.assertEqual((r.status, r.http_version, r.body, r.backend), (200, "2", "ok\n", "b2"))

    def test_text_mode_newlines(self):
        # subprocess.run(text=True) turns CRLF into LF: the same response.
        r = ingress.parse_curl_output(samples.CURL_H2_OK.replace("\r\n", "\n"))
        self.assertEqual((r.status, r.body, r.backend), (200, "ok\n", "b2"))

    def test_error_status_without_body(self):
        r = ingress.parse_curl_output(samples.CURL_HTTP1_502)
        self.assertEqual((r.status, r.http_version, r.body.strip(), r.backend), (502, "1.1", "", None))

    def test_no_response(self):
        r = ingress.parse_curl_output(samples.CURL_NO_RESPONSE)
        self.assertEqual((r.status, r.http_version, r.backend), (0, "0", None))

    def test_no_status_line(self):
        with self.assertRaisesRegex(ValueError, "no status line"):
            ingress.parse_curl_output("curl: (6) Could not resolve host\n")

    def fake_curl(self, stdout: str, rc: int = 0, stderr: str = ""):
        done = subprocess.CompletedProcess(args=[], returncode=rc, stdout=stdout, stderr=stderr)
        return mock.patch.object(subprocess, "run", return_value=done)

    def test_check_passes_and_builds_the_command(self):
        certs = SimpleNamespace(root="/pki/root.pem")
        with self.fake_curl(samples.CURL_H2_OK) as run:
            c = ingress.curl_check(8443, certs, "h2")
        self.assertTrue(c.passed, c.detail)
        self.assertEqual(c.detail, "HTTP/2 200, body 'ok', x-backend b2")
        argv = run.call_args.args[0]
        self.assertIn("--http2", argv)
        self.assertEqual(argv[argv.index("--cacert") + 1], "/pki/root.pem")  # verified, not -k
        self.assertEqual(argv[argv.index("--resolve") + 1], "edge.bench.test:8443:127.0.0.1")
        self.assertEqual(argv[-1], "https://edge.bench.test:8443/")

    def test_check_fails_on_the_wrong_version_or_status(self):
        certs = SimpleNamespace(root="/pki/root.pem")
        with self.fake_curl(samples.CURL_H2_OK):
            c = ingress.curl_check(8443, certs, "http/1.1")  # asked for HTTP/1.1, got HTTP/2
        self.assertFalse(c.passed)
        self.assertIn("expected HTTP/1.1", c.detail)
        with self.fake_curl(samples.CURL_HTTP1_502):
            self.assertFalse(ingress.curl_check(8443, certs, "http/1.1").passed)

    def test_check_fails_when_the_certificate_does_not_verify(self):
        certs = SimpleNamespace(root="/pki/root.pem")
        with self.fake_curl(samples.CURL_NO_RESPONSE, rc=60, stderr="curl: (60) SSL certificate problem"):
            c = ingress.curl_check(8443, certs, "h2")
        self.assertFalse(c.passed)
        self.assertEqual(c.detail, "curl rc 60: curl: (60) SSL certificate problem")
        self.assertEqual(c.evidence["rc"], 60)

    def test_edge_headers_check(self):
        certs = SimpleNamespace(root="/pki/root.pem")
        with self.fake_curl(samples.CURL_EDGE_HEADERS) as run:
            c = ingress.edge_headers_check(8443, certs)
        self.assertTrue(c.passed, c.detail)
        self.assertEqual(run.call_args.args[0][-1], "https://edge.bench.test:8443/__headers")
        # An edge that set no Forwarded, or sent back another id, fails and says which.
        with self.fake_curl(samples.CURL_EDGE_HEADERS.replace("forwarded: for=127.0.0.1;proto=https;host=edge.bench.test\n", "")):
            c = ingress.edge_headers_check(8443, certs)
        self.assertFalse(c.passed)
        self.assertIn("forwarded x0", c.detail)
        with self.fake_curl(samples.CURL_EDGE_HEADERS.replace("x-request-id: 4f1c\r\n", "x-request-id: 9999\r\n")):
            c = ingress.edge_headers_check(8443, certs)
        self.assertFalse(c.passed)
        self.assertIn("x-request-id sent back '9999', backend got '4f1c'", c.detail)

    def test_header_lines(self):
        self.assertEqual(ingress.parse_header_lines("a: 1\nb: x: y\na: 2\nnot a header\n"),
                         {"a": ["1", "2"], "b": ["x: y"]})

    def test_tls12_cell(self):
        self.assertEqual(ingress.tls12_cell(parse_s_client(samples.S_CLIENT_REFUSED)), "refused")
        self.assertEqual(ingress.tls12_cell(parse_s_client(samples.S_CLIENT_TLS12)), "accepted (TLSv1.2)")
        self.assertEqual(ingress.tls12_cell(None), "not run")


class VersionLineTest(unittest.TestCase):
    def test_first_line_except_envoy(self):
        self.assertEqual(first_version_line("h2load", "h2load nghttp2/1.52.0\n"), "h2load nghttp2/1.52.0")
        self.assertEqual(first_version_line("haproxy", "HAProxy version 2.8.5\nStatus: LTS\n"), "HAProxy version 2.8.5")
        self.assertEqual(first_version_line("envoy", "\nenvoy  version: 1.31.0/Clean/RELEASE\n"), "envoy  version: 1.31.0/Clean/RELEASE")
        self.assertEqual(first_version_line("nginx", ""), "")


if __name__ == "__main__":
    unittest.main()
