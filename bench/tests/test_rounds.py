"""Alternating rounds: the summaries of --metrics-cost (with / without metrics) and --ab (old /
new build)."""

import unittest

from meshbench.modes.ab import ab_derive, percent_change, spread
from meshbench.modes.metrics_cost import metrics_cost_derive
from meshbench.rounds import Round, RoundRun, all_complete, failed_runs, ok_values
from tests.builders import throughput


def run(side_label: str, rnd: int, rps_scale: float, cpu_s: float) -> RoundRun:
    return RoundRun(proxy=side_label, round=rnd, ok=True, throughput=throughput(rps_scale, cpu_s), peak_rss_mib=10.0)


def failed(side_label: str, rnd: int) -> RoundRun:
    return RoundRun(proxy=side_label, round=rnd, error="exited (code 101) during the run")


class MetricsCostTest(unittest.TestCase):
    def test_summary(self):
        rounds = [
            Round(1, {"with": run("mesh-proxy", 1, 0.96, 2.4), "without": run("n", 1, 1.0, 2.2)}),
            Round(2, {"with": run("mesh-proxy", 2, 0.90, 2.5), "without": run("n", 2, 1.0, 2.2)}),
            Round(3, {"with": run("mesh-proxy", 3, 0.98, 2.4), "without": failed("n", 3)}),
        ]
        sm = metrics_cost_derive(rounds)
        self.assertAlmostEqual(rounds[0].ratios["ratio"], 0.96)
        self.assertIsNone(rounds[2].ratios["ratio"])
        self.assertEqual(sm.rounds_complete, 2)
        self.assertAlmostEqual(sm.ratio, 0.93)  # median of 0.96 and 0.90
        self.assertAlmostEqual(sm.req_per_s_with, 80000 * 0.96)  # median of three runs
        self.assertFalse(sm.meets_target)
        self.assertEqual(list(sm.to_dict()), ["rounds_complete", "req_per_s_with", "req_per_s_without", "ratio",
                                              "cpu_us_per_req_with", "cpu_us_per_req_without", "target",
                                              "ratio_of_medians", "meets_target"])
        self.assertFalse(all_complete(rounds, ["with", "without"]))
        self.assertEqual([r.round for r in failed_runs(rounds)], [3])

    def test_no_complete_round(self):
        sm = metrics_cost_derive([Round(1, {"with": failed("mesh-proxy", 1)})])
        self.assertIsNone(sm.ratio)
        self.assertIsNone(sm.meets_target)


class ABTest(unittest.TestCase):
    def test_summary(self):
        rounds = [
            Round(1, {"old": run("old", 1, 1.00, 2.40), "new": run("new", 1, 0.99, 2.45)}),
            Round(2, {"old": run("old", 2, 1.02, 2.40), "new": run("new", 2, 1.00, 2.40)}),
            Round(3, {"old": run("old", 3, 0.98, 2.40), "new": run("new", 3, 0.98, 2.40)}),
        ]
        sm = ab_derive(rounds)
        self.assertEqual(list(rounds[0].to_dict()), ["round", "old", "new", "req_per_s_ratio", "cpu_us_per_req_ratio"])
        self.assertAlmostEqual(rounds[0].ratios["req_per_s_ratio"], 0.99)
        self.assertEqual(sm.rounds_complete, 3)
        self.assertAlmostEqual(sm.req_per_s_old, 80000.0)
        self.assertAlmostEqual(sm.req_per_s_new, 80000 * 0.99)
        # per-round ratios 0.99, 1.00/1.02, 1.0: their median is 0.99
        self.assertAlmostEqual(sm.req_per_s_ratio, 0.99)
        self.assertAlmostEqual(sm.req_per_s_ratio_of_medians, 0.99)
        self.assertAlmostEqual(sm.cpu_us_per_req_old, 12.0)
        self.assertAlmostEqual(sm.cpu_us_per_req_new, 12.0)
        self.assertAlmostEqual(sm.req_per_s_spread_old, 0.04)
        self.assertTrue(all_complete(rounds, ["old", "new"]))

    def test_a_failed_build_leaves_its_rounds_incomplete(self):
        rounds = [Round(1, {"old": run("old", 1, 1.0, 2.4), "new": failed("new", 1)})]
        sm = ab_derive(rounds)
        self.assertEqual(sm.rounds_complete, 0)
        self.assertIsNone(sm.req_per_s_ratio)
        self.assertIsNone(sm.req_per_s_new)
        self.assertEqual(ok_values(rounds, "old", "req_per_s"), [80000.0])

    def test_spread_and_percent_change(self):
        self.assertIsNone(spread([1.0]))
        self.assertAlmostEqual(spread([98.0, 100.0, 102.0]), 0.04)
        self.assertEqual(percent_change(0.987), "−1.3 %")
        self.assertEqual(percent_change(1.02), "+2.0 %")
        self.assertEqual(percent_change(None), "n/a")


if __name__ == "__main__":
    unittest.main()
