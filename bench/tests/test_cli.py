"""The command line: the modes' options, --ab above all (its binaries, its rounds, what it
turns off). Nothing is run; argparse errors are caught as SystemExit."""

import contextlib
import io
import os
import stat
import tempfile
import unittest
from pathlib import Path

from meshbench.cli import parse_args
from meshbench.common import NO_METRICS


class CliTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.old = self.executable("mesh-proxy-old")
        self.new = self.executable("mesh-proxy-new")

    def executable(self, name: str) -> str:
        path = Path(self.tmp.name) / name
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    def rejects(self, argv: list[str]) -> str:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as cm:
            parse_args(argv)
        self.assertEqual(cm.exception.code, 2)
        return err.getvalue()


class ABArgsTest(CliTestCase):
    def test_defaults(self):
        a = parse_args(["--ab", self.old, self.new])
        self.assertEqual([str(p) for p in a.ab], [self.old, self.new])
        self.assertEqual(a.rounds, 3)
        self.assertTrue(a.no_build)  # --ab never builds
        self.assertEqual(a.proxies, ["mesh-proxy"])
        self.assertFalse(a.l4)
        self.assertEqual((a.requests, a.warmup), (200000, 20000))  # the default mode's max-throughput test

    def test_rounds_and_quick(self):
        a = parse_args(["--ab", self.old, self.new, "--rounds", "5", "--quick"])
        self.assertEqual((a.rounds, a.requests, a.warmup), (5, 20000, 2000))

    def test_missing_or_not_executable_binary(self):
        self.assertIn("is not an executable file", self.rejects(["--ab", self.old, "/nonexistent/mesh-proxy"]))
        plain = Path(self.tmp.name) / "plain"
        plain.write_text("")
        os.chmod(plain, 0o644)
        self.assertIn("is not an executable file", self.rejects(["--ab", str(plain), self.new]))

    def test_needs_two_binaries(self):
        self.rejects(["--ab", self.old])

    def test_rounds_bounds(self):
        self.assertIn("--rounds must be in 1..100", self.rejects(["--ab", self.old, self.new, "--rounds", "0"]))

    def test_rounds_without_ab(self):
        self.assertIn("--rounds applies to --ab", self.rejects(["--rounds", "3"]))

    def test_one_mode_at_a_time(self):
        self.assertIn("separate modes", self.rejects(["--ab", self.old, self.new, "--metrics-cost"]))
        self.assertIn("separate modes", self.rejects(["--ab", self.old, self.new, "--balance"]))

    def test_mesh_proxy_bin_does_not_apply(self):
        self.assertIn("--mesh-proxy-bin does not apply", self.rejects(["--ab", self.old, self.new, "--mesh-proxy-bin", self.old]))


class OtherModesArgsTest(CliTestCase):
    def test_default_mode_adds_direct(self):
        a = parse_args(["--proxies", "mesh-proxy,envoy"])
        self.assertEqual(a.proxies, ["direct", "mesh-proxy", "envoy"])
        self.assertIsNone(a.ab)
        self.assertEqual((a.slow_ms, a.rate_seconds), (0, 10))

    def test_label_accepted_for_no_metrics(self):
        self.assertIn(NO_METRICS, parse_args(["--proxies", "mesh-proxy (no metrics)"]).proxies)

    def test_metrics_cost(self):
        a = parse_args(["--metrics-cost"])
        self.assertEqual((a.metrics_cost, a.proxies, a.l4), (3, ["mesh-proxy", NO_METRICS], False))
        self.assertEqual(parse_args(["--metrics-cost", "5"]).metrics_cost, 5)

    def test_balance(self):
        a = parse_args(["--balance"])
        self.assertEqual((a.slow_ms, a.proxies), (20, ["mesh-proxy", "envoy", "haproxy", "nginx"]))
        self.assertIn("--quick does not apply", self.rejects(["--balance", "--quick"]))

    def test_mtls_and_handshakes(self):
        a = parse_args(["--mtls", "--quick"])
        self.assertEqual(a.proxies, ["mesh-proxy", "envoy", "haproxy", "nginx"])
        self.assertEqual(a.hs_seconds, 2.0)
        self.assertEqual(parse_args(["--handshakes"]).hs_seconds, 5.0)

    def test_ingress(self):
        a = parse_args(["--ingress", "--quick"])
        self.assertEqual(a.proxies, ["mesh-ingress", "nginx", "haproxy"])  # `direct` runs anyway, as the baseline
        self.assertEqual((a.hs_seconds, a.hs_concurrency, a.l4, a.requests), (2.0, 16, False, 20000))
        self.assertEqual(parse_args(["--ingress", "--proxies", "direct,haproxy,mesh-ingress"]).proxies,
                         ["haproxy", "mesh-ingress"])

    def test_ingress_rejections(self):
        self.assertIn("separate modes", self.rejects(["--ingress", "--mtls"]))
        self.assertIn("at least one of mesh-ingress,nginx,haproxy", self.rejects(["--ingress", "--proxies", "envoy"]))
        self.assertIn("mesh-ingress runs only in --ingress", self.rejects(["--proxies", "mesh-ingress"]))
        self.assertIn("--mesh-proxy-bin does not apply to --ingress",
                      self.rejects(["--ingress", "--mesh-proxy-bin", self.old]))

    def test_unknown_proxy(self):
        self.assertIn("unknown proxies", self.rejects(["--proxies", "traefik"]))


if __name__ == "__main__":
    unittest.main()
