"""Percentiles, medians, ratios and the spread of per-backend counts."""

import math
import unittest

from meshbench.stats import max_min, median, percentile, ratio


class PercentileTest(unittest.TestCase):
    def test_nearest_rank(self):
        vals = list(range(1, 11))  # 1..10
        self.assertEqual(percentile(vals, 50), 5.0)
        self.assertEqual(percentile(vals, 90), 9.0)
        self.assertEqual(percentile(vals, 99), 10.0)
        self.assertEqual(percentile(vals, 100), 10.0)
        self.assertEqual(percentile(vals, 0), 1.0)

    def test_p99_and_p999_of_many(self):
        vals = list(range(1, 1001))
        self.assertEqual(percentile(vals, 99), 990.0)
        self.assertEqual(percentile(vals, 99.9), 999.0)

    def test_single_value(self):
        self.assertEqual(percentile([42], 99), 42.0)

    def test_empty_is_nan(self):
        self.assertTrue(math.isnan(percentile([], 50)))


class MedianTest(unittest.TestCase):
    def test_odd_and_even(self):
        self.assertEqual(median([3.0, 1.0, 2.0]), 2.0)
        self.assertEqual(median([4.0, 1.0, 3.0, 2.0]), 2.5)

    def test_none_values_are_ignored(self):
        self.assertEqual(median([None, 5.0, None, 7.0]), 6.0)

    def test_nothing_to_take(self):
        self.assertIsNone(median([]))
        self.assertIsNone(median([None, None]))


class RatioTest(unittest.TestCase):
    def test_ratio(self):
        self.assertEqual(ratio(3.0, 2.0), 1.5)

    def test_missing_zero_or_nan(self):
        self.assertIsNone(ratio(None, 2.0))
        self.assertIsNone(ratio(1.0, None))
        self.assertIsNone(ratio(1.0, 0))
        self.assertIsNone(ratio(float("nan"), 2.0))

    def test_max_min(self):
        self.assertEqual(max_min([1000, 1000, 1000]), 1.0)
        self.assertEqual(max_min([1500, 1000, 500]), 3.0)
        self.assertIsNone(max_min([3000, 0, 0]))
        self.assertIsNone(max_min([]))


if __name__ == "__main__":
    unittest.main()
