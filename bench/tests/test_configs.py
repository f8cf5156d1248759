"""The generated proxy configurations that the standard library can read back (TOML), and the
marks of each balancing policy in the others."""

import tempfile
import unittest
from pathlib import Path

from meshbench.proxy_configs import envoy_config, haproxy_config, mesh_proxy_config, nginx_config

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


class ConfigTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.d = Path(self.tmp.name)

    @unittest.skipIf(tomllib is None, "tomllib needs Python 3.11")
    def test_mesh_proxy_toml(self):
        conf = tomllib.loads(Path(mesh_proxy_config(self.d, 4000, 4001, [5001, 5002, 5003])).read_text())
        self.assertEqual(conf["outbound"]["listen"], "127.0.0.1:4000")
        self.assertEqual(conf["admin"]["listen"], "127.0.0.1:4001")
        self.assertEqual(conf["outbound"]["services"][0]["authority"], "bench.local:80")
        self.assertEqual(len(conf["outbound"]["services"][0]["endpoints"]), 3)
        self.assertEqual(conf["runtime"]["threads"], 1)
        self.assertNotIn("metrics", conf)
        path = mesh_proxy_config(self.d, 4000, 4001, [5001], metrics=False)
        self.assertTrue(path.endswith("mesh-proxy-no-metrics.toml"))
        self.assertEqual(tomllib.loads(Path(path).read_text())["metrics"], {"requests": False})

    def test_policies(self):
        self.assertIn("ROUND_ROBIN", Path(envoy_config(self.d, 1, 2, [3])).read_text())
        self.assertIn("outlier_detection", Path(envoy_config(self.d, 1, 2, [3], policy="least")).read_text())
        self.assertIn("balance roundrobin", Path(haproxy_config(self.d, 1, [3], "http")).read_text())
        least = Path(haproxy_config(self.d, 1, [3], "http", policy="least")).read_text()
        self.assertIn("balance leastconn", least)
        self.assertIn("observe layer7", least)
        self.assertIn("max_fails=0", Path(nginx_config(self.d, 1, [3])).read_text())
        self.assertIn("least_conn", Path(nginx_config(self.d, 1, [3], policy="least")).read_text())


if __name__ == "__main__":
    unittest.main()
