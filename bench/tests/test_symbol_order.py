"""bench/symbol_order.py's pure parts: reading callgrind's output and ordering the functions."""

import collections
import unittest

from symbol_order import order, self_costs

# A callgrind output in its default compressed form: names are given once, then referred to by
# number; the line after `calls=` is the callee's inclusive cost; a function entered again
# recursively is named `name'2`; libc's costs are not the executable's.
CALLGRIND = """\
version: 1
creator: callgrind-3.19.0
events: Ir
ob=(1) /work/main/target/release/mesh-proxy
fl=(1) ???
fn=(1) _ZN4main17hAAAAE
0 10
cob=(2) /usr/lib/x86_64-linux-gnu/libc.so.6
cfn=(2) memcpy
calls=3 0
0 900
+2 5
cfn=(3) _ZN3hot17hBBBBE
calls=1 0
0 500
fn=(3)
0 400
+1 60
ob=(2)
fn=(2)
0 900
ob=(1)
fn=(4) _ZN3hot17hBBBBE'2
0 40
"""


class SelfCostTest(unittest.TestCase):
    def test_counts_only_own_instructions_of_the_executable(self):
        costs = self_costs(CALLGRIND.splitlines(), "mesh-proxy")
        self.assertEqual(costs["_ZN4main17hAAAAE"], 15)  # not the 900 + 500 of its calls
        self.assertEqual(costs["_ZN3hot17hBBBBE"], 500)  # 460, and 40 when entered recursively
        self.assertNotIn("memcpy", costs)  # libc's
        self.assertNotIn("_ZN3hot17hBBBBE'2", costs)

    def test_another_executable_has_nothing(self):
        self.assertEqual(self_costs(CALLGRIND.splitlines(), "mesh-ingress"), collections.Counter())


class OrderTest(unittest.TestCase):
    def test_groups_by_the_profiles_that_ran_them_then_by_heat(self):
        plain = collections.Counter({"common_cold": 1, "common_hot": 100, "plain": 50, "plain_and_b": 5})
        pair_a = collections.Counter({"common_cold": 1, "common_hot": 100, "a": 900})
        pair_b = collections.Counter({"common_cold": 1, "common_hot": 100, "plain_and_b": 5, "b": 7, "(below main)": 1})
        self.assertEqual(order([plain, pair_a, pair_b]), [
            # all three, hottest first
            "common_hot", "common_cold",
            # what the first profile ran stays in one range: with b, then alone
            "plain_and_b", "plain",
            # then the others' own
            "a", "b",
        ])

    def test_ties_go_by_name(self):
        costs = collections.Counter({"b": 3, "a": 3, "c": 3})
        self.assertEqual(order([costs]), ["a", "b", "c"])


if __name__ == "__main__":
    unittest.main()


class UnorderedWarningTest(unittest.TestCase):
    """The harness warns when the mesh-proxy it measures does not fit its symbol order."""

    def test_a_build_alone_passes(self):
        from meshbench.tools import unordered_warning

        self.assertIsNone(unordered_warning("mesh-proxy", 2396, 2399))
        self.assertIsNone(unordered_warning("mesh-proxy", 9, 10))
        self.assertIsNone(unordered_warning("mesh-proxy", 0, 0))

    def test_a_build_with_other_packages_is_named(self):
        from meshbench.tools import unordered_warning

        warning = unordered_warning("target/release/mesh-proxy", 1946, 2381)
        self.assertIsNotNone(warning)
        self.assertIn("1946 of the 2381", warning)
        self.assertIn("82%", warning)
        self.assertIn("cargo build --release -p mesh-proxy", warning)
