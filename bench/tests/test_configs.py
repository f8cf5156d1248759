"""The generated proxy configurations that the standard library can read back (TOML), and the
marks of each balancing policy in the others."""

import tempfile
import unittest
from pathlib import Path
from types import SimpleNamespace

from meshbench.ingress_configs import haproxy_edge_config, mesh_ingress_config, nginx_edge_config
from meshbench.proxy_configs import (
    envoy_config, haproxy_config, mesh_proxy_config, mesh_proxy_services_config, nginx_config,
)

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

    @unittest.skipIf(tomllib is None, "tomllib needs Python 3.11")
    def test_many_services_and_a_connection_cap(self):
        services = [(f"svc-{i}.bench.local:80", [6000 + i, 7000 + i]) for i in range(100)]
        path = mesh_proxy_services_config(self.d, 4000, 4001, services, threads=2, max_connections=20000)
        conf = tomllib.loads(Path(path).read_text())
        self.assertEqual(len(conf["outbound"]["services"]), 100)
        self.assertEqual(conf["outbound"]["services"][99]["endpoints"], ["127.0.0.1:6099", "127.0.0.1:7099"])
        self.assertEqual(conf["runtime"]["threads"], 2)
        self.assertEqual(conf["server"]["max_connections"], 20000)

    def test_peers_take_the_connection_room(self):
        self.assertIn("maxconn 21024", Path(haproxy_config(self.d, 1, [3], "http", maxconn=21024)).read_text())
        self.assertIn("worker_connections 21024;", Path(nginx_config(self.d, 1, [3], worker_connections=21024)).read_text())
        self.assertIn("maxconn 4096", Path(haproxy_config(self.d, 1, [3], "http")).read_text())

    def test_policies(self):
        self.assertIn("ROUND_ROBIN", Path(envoy_config(self.d, 1, 2, [3])).read_text())
        self.assertIn("outlier_detection", Path(envoy_config(self.d, 1, 2, [3], policy="least")).read_text())
        self.assertIn("balance roundrobin", Path(haproxy_config(self.d, 1, [3], "http")).read_text())
        least = Path(haproxy_config(self.d, 1, [3], "http", policy="least")).read_text()
        self.assertIn("balance leastconn", least)
        self.assertIn("observe layer7", least)
        self.assertIn("max_fails=0", Path(nginx_config(self.d, 1, [3])).read_text())
        self.assertIn("least_conn", Path(nginx_config(self.d, 1, [3], policy="least")).read_text())


class EdgeConfigTest(unittest.TestCase):
    """--ingress: the three edges' configs, with stand-in certificate paths (no openssl)."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.d = Path(self.tmp.name)
        self.certs = SimpleNamespace(root="/pki/root.pem", chain="/pki/edge-chain.pem", key="/pki/edge.key",
                                     bundle="/pki/edge.pem")

    @unittest.skipIf(tomllib is None, "tomllib needs Python 3.11")
    def test_mesh_ingress_toml(self):
        conf = tomllib.loads(Path(mesh_ingress_config(self.d, self.certs, 8443, 9990, [5001, 5002, 5003])).read_text())
        self.assertEqual(conf["log"], "warn")
        self.assertEqual(conf["admin"]["listen"], "127.0.0.1:9990")
        self.assertEqual(conf["runtime"]["threads"], 1)
        self.assertEqual(conf["metrics"], {"requests": True})
        self.assertEqual(conf["https"]["listen"], "127.0.0.1:8443")
        self.assertEqual(conf["https"]["min_tls_version"], "1.3")  # as nginx and HAProxy
        self.assertEqual(conf["https"]["certificates"],
                         [{"cert": "/pki/edge-chain.pem", "key": "/pki/edge.key", "default": True}])
        self.assertEqual(conf["edge"], {"access_log": False})
        self.assertEqual(conf["routes"], [{"backends": [{"service": "backends:80"}]}])
        self.assertEqual(conf["services"], [{"authority": "backends:80", "plaintext": True,
                                             "endpoints": ["127.0.0.1:5001", "127.0.0.1:5002", "127.0.0.1:5003"]}])
        self.assertNotIn("http", conf)  # TLS only

    def test_nginx_edge(self):
        text = Path(nginx_edge_config(self.d, self.certs, 8443, [5001, 5002, 5003])).read_text()
        self.assertIn("listen 127.0.0.1:8443 ssl http2;", text)
        self.assertIn("ssl_protocols TLSv1.3;", text)
        self.assertIn("ssl_certificate /pki/edge-chain.pem;", text)
        self.assertIn("ssl_certificate_key /pki/edge.key;", text)
        self.assertIn("grpc_pass grpc://backends;", text)
        self.assertEqual(text.count("max_fails=0;"), 3)
        self.assertIn("worker_processes 1;", text)
        self.assertIn("access_log off;", text)
        for line in ("grpc_set_header X-Forwarded-For $remote_addr;", "grpc_set_header X-Request-ID $request_id;",
                     "add_header X-Request-ID $request_id always;"):
            self.assertIn(line, text)

    def test_haproxy_edge(self):
        text = Path(haproxy_edge_config(self.d, self.certs, 8443, [5001, 5002, 5003])).read_text()
        self.assertIn("bind 127.0.0.1:8443 ssl crt /pki/edge.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3", text)
        self.assertIn("balance roundrobin", text)
        self.assertEqual(text.count(" proto h2"), 3)  # h2c to each backend; the bind is TLS
        self.assertIn("nbthread 1", text)
        fe = text[text.index("frontend fe"):text.index("backend be")]
        for line in ("option forwardfor", "unique-id-header X-Request-ID", "http-after-response set-header X-Request-ID"):
            self.assertIn(line, fe)


if __name__ == "__main__":
    unittest.main()
