"""What the harness reads from /proc: CPU time and peak RSS of a process and its descendants,
the busy share of each core, TCP connections toward a port, the CPU model, TIME_WAIT sockets.

Each file format has a pure parser that takes the file's text (tested on sample text in
bench/tests/test_procfs.py); the readers around them only open the files."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- parsers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that the harness uses."""

    ppid: int
    utime_ticks: int
    stime_ticks: int

    @property
    def cpu_ticks(self) -> int:
        return self.utime_ticks + self.stime_ticks


def parse_proc_stat(text: str) -> ProcStat:
    """Parses /proc/PID/stat. The command name (field 2) is in parentheses and may itself hold
    spaces and parentheses, so the fields are counted from the LAST ")"."""
    try:
        fields = text[text.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
        return ProcStat(ppid=int(fields[1]), utime_ticks=int(fields[11]), stime_ticks=int(fields[12]))
    except (ValueError, IndexError):
        raise ValueError(f"not a /proc/PID/stat line: {text[:120]!r}") from None


def parse_core_jiffies(text: str) -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies of each CPU ("0", "1", ...) from the text of /proc/stat. Busy =
    everything but idle and iowait (steal included: time the hypervisor gave to someone else).
    The aggregate "cpu" line is skipped."""
    out = {}
    for line in text.splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            f = line.split()
            vals = [int(x) for x in f[1:9]]  # user nice system idle iowait irq softirq steal
            out[f[0][3:]] = (sum(vals) - vals[3] - vals[4], sum(vals))
    return out


def core_busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Busy share (0..1) of each CPU between two core_jiffies() snapshots."""
    out = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        out[cpu] = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return out


def parse_status_kib(status_text: str, field: str) -> int:
    """A KiB field of /proc/PID/status ("VmHWM", the peak resident set; "VmRSS", the current
    one); 0 when absent (a kernel thread or a zombie has none)."""
    total = 0
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            total += int(line.split()[1])
    return total


def parse_vmhwm_kib(status_text: str) -> int:
    """VmHWM (peak resident set, KiB) from the text of /proc/PID/status; 0 when absent."""
    return parse_status_kib(status_text, "VmHWM")


def parse_established(tcp_text: str, port: int) -> int:
    """Connections in state ESTABLISHED (01) toward 127.0.0.1:port in the text of /proc/net/tcp
    (addresses are little-endian hex: 127.0.0.1 is 0100007F)."""
    want = f"0100007F:{port:04X}"
    n = 0
    for line in tcp_text.splitlines()[1:]:
        f = line.split()
        if len(f) > 3 and f[2] == want and f[3] == "01":
            n += 1
    return n


def parse_cpu_model(cpuinfo_text: str) -> str | None:
    for line in cpuinfo_text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def parse_time_wait(sockstat_text: str) -> int | None:
    """TCP sockets in TIME_WAIT from the text of /proc/net/sockstat."""
    m = re.search(r"TCP: .*\btw (\d+)", sockstat_text)
    return int(m.group(1)) if m else None


# ---- readers ---------------------------------------------------------------------------------


def proc_tree(root: int) -> list[int]:
    """root and all its descendants (an nginx master and its worker, for example)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(parse_proc_stat(stat).ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """utime + stime (fields 14 and 15 of /proc/PID/stat) of the process tree, in seconds."""
    ticks = 0
    for pid in proc_tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ticks += parse_proc_stat(stat).cpu_ticks
    return ticks / CLK_TCK


def core_jiffies() -> dict[str, tuple[int, int]]:
    try:
        return parse_core_jiffies(Path("/proc/stat").read_text())
    except OSError:
        return {}


def tree_status_kib(root: int, field: str) -> int:
    """Sum of a KiB field of /proc/PID/status over the process tree."""
    total = 0
    for pid in proc_tree(root):
        try:
            total += parse_status_kib(Path(f"/proc/{pid}/status").read_text(), field)
        except OSError:
            continue
    return total


def peak_rss_kib(root: int) -> int:
    """Sum of VmHWM (peak resident set) over the process tree, in KiB."""
    return tree_status_kib(root, "VmHWM")


def rss_kib(root: int) -> int:
    """Sum of VmRSS (resident set now) over the process tree, in KiB."""
    return tree_status_kib(root, "VmRSS")


def established_to(port: int) -> int:
    """TCP connections in state ESTABLISHED toward 127.0.0.1:port (from /proc/net/tcp)."""
    try:
        return parse_established(Path("/proc/net/tcp").read_text(), port)
    except OSError:
        return 0


def cpu_model() -> str:
    try:
        model = parse_cpu_model(Path("/proc/cpuinfo").read_text())
        if model:
            return model
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_wait_sockets() -> int | None:
    try:
        return parse_time_wait(Path("/proc/net/sockstat").read_text())
    except OSError:
        return None
