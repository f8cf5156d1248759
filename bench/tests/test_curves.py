"""The cost curves' pure parts: growth fits and knees, the report and the chart (their configs are
in test_configs)."""

import unittest

from meshbench.modes.curves import CurvesRun, Point, Series, curves_markdown, curves_svg, fit_line, growth, growths
from meshbench.procfs import parse_status_kib

XS = [1, 10, 100, 1000, 10000]


class GrowthTest(unittest.TestCase):
    def test_fit_line_exact(self):
        slope, intercept = fit_line([(x, 3 * x + 7) for x in XS])
        self.assertAlmostEqual(slope, 3.0)
        self.assertAlmostEqual(intercept, 7.0)

    def test_linear_has_slope_and_no_knee(self):
        g = growth([(x, 9000 + 2 * x) for x in XS], "KiB", "connection")
        self.assertEqual(g["kind"], "linear")
        self.assertAlmostEqual(g["slope"], 2.0)
        self.assertIsNone(g["knee_at"])
        self.assertIn("per connection", g["text"])

    def test_constant(self):
        g = growth([(x, 10.0 + (x % 3) * 0.1) for x in XS], "µs per request", "endpoint")
        self.assertEqual(g["kind"], "constant")
        self.assertTrue(g["text"].startswith("constant"))

    def test_knee_where_the_slope_jumps(self):
        # 10 KiB per unit up to 1000, then 1 KiB per unit
        pts = [(1, 1000), (10, 1090), (100, 1990), (1000, 10990), (10000, 19990)]
        g = growth(pts, "KiB", "service")
        self.assertEqual(g["knee_at"], 1000)
        self.assertIn("knee at 1,000", g["text"])

    def test_too_few_points(self):
        self.assertEqual(growth([(1, 5.0)], "KiB", "x")["kind"], "unknown")

    def test_kib_growth_is_told_in_bytes(self):
        s = Series("mesh-proxy", [Point(x, {"rss_kib": 9000 + 2 * x}) for x in XS])
        g = [g for g in growths({"idle_connections": [s]}, None) if g["curve"] == "idle_connections"][0]
        self.assertAlmostEqual(g["bytes_per_unit"], 2048.0)
        self.assertIn("2,048 bytes per connection", g["text"])


class ReportTest(unittest.TestCase):
    def run_with(self):
        r = CurvesRun.__new__(CurvesRun)
        r.curves = {
            "endpoints": [Series("mesh-proxy", [Point(x, {"rss_rest_kib": 9000 + 5 * x, "rss_peak_kib": 12000 + 40 * x,
                                                        "cpu_us_per_req": 10.0, "req_per_s": 9e4}) for x in XS])],
            "idle_connections": [
                Series("mesh-proxy", [Point(x, {"rss_kib": 9000 + 2 * x, "rss_rest_kib": 9000}) for x in XS]),
                Series("nginx", [Point(x, {"rss_kib": 5000 + x, "rss_rest_kib": 5000}) for x in XS[:3]]
                       + [Point(1000, error="boom")]),
            ],
            "threads": [Series("mesh-proxy", [Point(1, {"req_per_s": 9e4}), Point(2, {"req_per_s": 1.2e5})])],
        }
        r.pick = Series("mesh-balance pick", [Point(x, {"ns_per_pick": 20.0}) for x in XS])
        r.notes = ["envoy is not installed"]
        return r

    def test_markdown_and_svg(self):
        r = self.run_with()
        meta = {"timestamp": "20261207-120000", "cpu": "test CPU", "cores": 2, "requests": 1000}
        grown = growths(r.curves, r.pick)
        md = curves_markdown(r, meta, grown)
        self.assertIn("| idle_connections | rss_kib | mesh-proxy | linear: 2,048 bytes per connection |", md)
        self.assertIn("failed: boom", md)
        self.assertIn("envoy is not installed", md)
        svg = curves_svg(r, meta, grown)
        self.assertTrue(svg.startswith("<svg") and svg.rstrip().endswith("</svg>"))
        self.assertIn("RSS added by idle client connections", svg)
        self.assertIn("bytes per connection: mesh-proxy 2,048, nginx 1,024", svg)
        # endpoints: at rest, peak, CPU; idle: two peers; pick; threads (no services, no streams)
        self.assertEqual(svg.count("<polyline"), 7)
        self.assertIn("no data", svg)  # the services panels had no points


class ProcStatusTest(unittest.TestCase):
    def test_fields(self):
        text = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
        self.assertEqual(parse_status_kib(text, "VmRSS"), 1024)
        self.assertEqual(parse_status_kib(text, "VmHWM"), 2048)
        self.assertEqual(parse_status_kib("Name:\tkthreadd\n", "VmRSS"), 0)


if __name__ == "__main__":
    unittest.main()
