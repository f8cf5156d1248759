"""Starting, watching and stopping the processes of a run (backends, proxies), free ports on
127.0.0.1, and waiting until a process listens or answers HTTP 200.

Everything started goes through `Procs`: each process gets its own process group, so that a
Ctrl-C reaches only the harness, and `stop_all` can kill every process it started (nginx
workers included) on any exit path."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from .common import BenchError, log


class Procs:
    """The processes of one run, stopped in reverse start order by stop_all."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], logfile: Path, cwd: Path | None = None) -> subprocess.Popen:
        out = open(logfile, "ab")
        try:
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,  # own process group: Ctrl-C reaches us, we reap it
            )
        finally:
            out.close()
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, grace: float = 3.0) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=grace)
        else:
            # The leader exited; children it left in its group (nginx workers) must go too.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs = [(n, q) for (n, q) in self.procs if q is not p]

    def stop_all_but(self, keep: set[int]) -> None:
        """Stops every process whose pid is not in keep (a curve's proxy, not its backends)."""
        for _name, p in list(reversed(self.procs)):
            if p.pid not in keep:
                self.stop(p)

    def stop_all(self) -> None:
        for _name, p in list(reversed(self.procs)):
            try:
                self.stop(p)
            except Exception as e:  # keep going: everything must be stopped
                log(f"warning: could not stop pid {p.pid}: {e}")


def free_port(used: set[int]) -> int:
    """A port the kernel just found free, never one handed out before in this run."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in used:
            used.add(port)
            return port
    raise BenchError("no free port on 127.0.0.1")


def tail(path: Path, n: int = 15) -> str:
    """The last n lines of a log, indented, for an error message."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def wait_tcp(port: int, proc: subprocess.Popen, logfile: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} before listening on :{port}\n{tail(logfile)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"not accepting on 127.0.0.1:{port} after {timeout:.0f}s\n{tail(logfile)}")


def http_get(url: str, timeout: float = 2.0, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""


def wait_http_ok(url: str, proc: subprocess.Popen, logfile: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} before {url} was ready\n{tail(logfile)}")
        try:
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError(f"{url} not ready after {timeout:.0f}s (last: {last})\n{tail(logfile)}")
