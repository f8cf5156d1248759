"""/proc parsing: process CPU time and parent, per-core busy time, peak RSS, TCP states."""

import unittest

from meshbench import procfs
from tests import samples


class ProcStatTest(unittest.TestCase):
    def test_fields_after_a_name_with_spaces_and_parentheses(self):
        st = procfs.parse_proc_stat(samples.PROC_STAT)
        self.assertEqual(st.ppid, 4200)
        self.assertEqual((st.utime_ticks, st.stime_ticks), (150, 75))
        self.assertEqual(st.cpu_ticks, 225)

    def test_malformed_raises(self):
        for text in ("", "4242 (x", "4242 (x) S"):
            with self.assertRaises(ValueError):
                procfs.parse_proc_stat(text)


class CoreJiffiesTest(unittest.TestCase):
    def test_per_core_busy_and_total_skip_the_aggregate(self):
        cores = procfs.parse_core_jiffies(samples.PROC_STAT_CPUS)
        self.assertEqual(set(cores), {"0", "1"})
        # cpu0: 2000+100+600+8000+200+0+20+10 = 10930 in total; busy excludes idle 8000 and iowait 200.
        self.assertEqual(cores["0"], (2730, 10930))
        self.assertEqual(cores["1"], (3285, 11855))

    def test_busy_share_between_snapshots(self):
        before = {"0": (1000, 10000), "1": (500, 10000)}
        after = {"0": (1900, 11000), "1": (500, 11000), "2": (10, 20)}
        busy = procfs.core_busy(before, after)
        self.assertAlmostEqual(busy["0"], 0.9)
        self.assertEqual(busy["1"], 0.0)
        self.assertEqual(busy["2"], 0.0)  # no earlier snapshot: no interval to measure

    def test_garbage_gives_no_core(self):
        self.assertEqual(procfs.parse_core_jiffies("intr 1 2 3\n"), {})


class StatusAndNetTest(unittest.TestCase):
    def test_vmhwm(self):
        self.assertEqual(procfs.parse_vmhwm_kib(samples.PROC_STATUS), 20480)

    def test_vmhwm_absent_is_zero(self):
        self.assertEqual(procfs.parse_vmhwm_kib("Name:\tkthreadd\nState:\tS (sleeping)\n"), 0)

    def test_established_to_a_port(self):
        self.assertEqual(procfs.parse_established(samples.PROC_NET_TCP, 8443), 2)
        self.assertEqual(procfs.parse_established(samples.PROC_NET_TCP, 8080), 1)
        self.assertEqual(procfs.parse_established(samples.PROC_NET_TCP, 9999), 0)

    def test_cpu_model(self):
        self.assertEqual(procfs.parse_cpu_model(samples.PROC_CPUINFO), "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz")
        self.assertIsNone(procfs.parse_cpu_model("processor\t: 0\n"))

    def test_time_wait(self):
        self.assertEqual(procfs.parse_time_wait(samples.PROC_SOCKSTAT), 23456)
        self.assertIsNone(procfs.parse_time_wait("sockets: used 3\n"))


if __name__ == "__main__":
    unittest.main()
