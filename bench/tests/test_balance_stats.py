"""--balance: the figures of the slow-backend and failing-backend tests, from h2load's request
log and the backend counters."""

import unittest

from meshbench.common import BenchError
from meshbench.h2load import LoggedRequest
from meshbench.modes.balance import (
    BASELINE, LAST_N, BalanceResults, OneConnRun, failing_backend_stats, slow_backend_stats,
)
from meshbench.stats import max_min
from tests.builders import h2
from tests.builders import log_rows as rows


class SlowBackendTest(unittest.TestCase):
    def test_share_and_percentiles(self):
        log = [LoggedRequest(i, 200, d) for i, d in enumerate([100, 200, 300, 400, 20000])] + [LoggedRequest(9, 503, 5)]
        r = slow_backend_stats(h2(ok_2xx=5, total=6), [2, 2, 1], log, requests=6)
        self.assertAlmostEqual(r.slow_share_pct, 20.0)
        self.assertEqual(r.non_2xx, 1)
        self.assertEqual(r.logged, 6)
        self.assertEqual((r.p50_us, r.p99_us, r.max_us), (300.0, 20000.0, 20000.0))

    def test_baseline_has_no_third_backend(self):
        r = slow_backend_stats(h2(ok_2xx=2), [1, 1], rows([200, 200]), requests=2)
        self.assertIsNone(r.slow_share_pct)

    def test_no_2xx_is_an_error(self):
        with self.assertRaisesRegex(BenchError, "no 2xx"):
            slow_backend_stats(h2(ok_2xx=0, total=2), [0, 0, 2], rows([503, -1]), requests=2)

    def test_p99_ratio_against_the_baseline(self):
        res = BalanceResults()
        res.slow[BASELINE] = slow_backend_stats(h2(), [1, 1], rows([200] * 10, duration=100), requests=10)
        res.slow["envoy"] = slow_backend_stats(h2(), [1, 1, 1], rows([200] * 10, duration=300), requests=10)
        res.derive()
        self.assertEqual(res.slow[BASELINE].p99_ratio, 1.0)
        self.assertEqual(res.slow["envoy"].p99_ratio, 3.0)


class FailingBackendTest(unittest.TestCase):
    def test_early_ejection(self):
        statuses = [200, 503, 200, 503, 503] + [200] * 2995
        r = failing_backend_stats(h2(ok_2xx=2997, total=3000), [1400, 1597, 3], rows(statuses), requests=3000)
        self.assertEqual(r.non_2xx, 3)
        self.assertEqual(r.non_2xx_by_status, {"503": 3})
        self.assertEqual(r.last_non_2xx_at, 5)
        self.assertEqual(r.last_n, LAST_N)
        self.assertEqual(r.success_last_pct, 100.0)
        self.assertTrue(r.meets_target)
        self.assertEqual(r.failing_backend_got, 3)

    def test_completion_order_not_start_order(self):
        # The failure started first but completed last: it is the last request to complete.
        log = [LoggedRequest(0, 503, 1000), LoggedRequest(10, 200, 5), LoggedRequest(20, 200, 5)]
        r = failing_backend_stats(h2(ok_2xx=2, total=3), [1, 1, 1], log, requests=3)
        self.assertEqual(r.last_non_2xx_at, 3)
        self.assertAlmostEqual(r.success_last_pct, 200 / 3)
        self.assertFalse(r.meets_target)

    def test_unlogged_requests_count_as_non_2xx(self):
        r = failing_backend_stats(h2(ok_2xx=2, total=4), [2, 0, 1], rows([200, -1, 200]), requests=4)
        self.assertEqual(r.non_2xx, 2)  # the -1 and the request h2load never logged
        self.assertEqual(r.non_2xx_by_status, {"-1": 1})

    def test_never_failing(self):
        r = failing_backend_stats(h2(ok_2xx=3), [1, 1, 1], rows([200, 200, 200]), requests=3)
        self.assertIsNone(r.last_non_2xx_at)

    def test_empty_log_is_an_error(self):
        with self.assertRaisesRegex(BenchError, "logged no request"):
            failing_backend_stats(h2(ok_2xx=0), [0, 0, 0], [], requests=3000)


class BalanceResultsTest(unittest.TestCase):
    def test_to_dict(self):
        res = BalanceResults()
        res.one_conn["mesh-proxy"] = {
            "m8": OneConnRun(8, 3000, 3000, [1000, 1001, 999], max_min([1000, 1001, 999]), h2(ok_2xx=3000)),
        }
        res.errors["nginx"] = ["nginx not installed"]
        d = res.to_dict()
        self.assertEqual(list(d), ["slow", "one_conn", "failing", "errors"])
        self.assertEqual(list(d["one_conn"]["mesh-proxy"]["m8"]), ["streams", "requests", "ok_2xx", "counts", "max_min", "h2load"])
        self.assertTrue(res.any_measured())
        self.assertFalse(BalanceResults().any_measured())


if __name__ == "__main__":
    unittest.main()
