"""Parsers of the other tools' output: mesh-bench-handshake's JSON report, openssl s_client,
and the version lines of `<tool> --version`."""

import subprocess
import tempfile
import unittest
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

from meshbench import pairs
from meshbench.common import BenchError
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


class VersionLineTest(unittest.TestCase):
    def test_first_line_except_envoy(self):
        self.assertEqual(first_version_line("h2load", "h2load nghttp2/1.52.0\n"), "h2load nghttp2/1.52.0")
        self.assertEqual(first_version_line("haproxy", "HAProxy version 2.8.5\nStatus: LTS\n"), "HAProxy version 2.8.5")
        self.assertEqual(first_version_line("envoy", "\nenvoy  version: 1.31.0/Clean/RELEASE\n"), "envoy  version: 1.31.0/Clean/RELEASE")
        self.assertEqual(first_version_line("nginx", ""), "")


if __name__ == "__main__":
    unittest.main()
