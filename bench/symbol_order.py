#!/usr/bin/env python3
"""Writes bins/proxy/symbol-order.txt: the functions mesh-proxy runs, hottest first, for the
linker to lay out together (see bins/proxy/build.rs for why).

    cargo build --release -p mesh-proxy -p mesh-bench   # the backends
    cargo build --release -p mesh-proxy                 # then the proxy alone: see below
    python3 bench/symbol_order.py                       # needs valgrind and h2load

It runs mesh-proxy under valgrind's callgrind through the work a sidecar does: h2c proxying at
the bench's S1 concurrency and over one connection, HTTP/1.1, the admin endpoints, and both
members of an mTLS pair (A: h2c in, mTLS out; B: mTLS in, h2c out), each stopped with SIGTERM so
that the drain runs too. Every function that ran is listed, grouped by the runs that ran it
(see `order`), hottest first (by the instructions it spent itself) in each group.

The names are mangled with a hash that depends on the features each crate is built with, and
cargo unifies features over every package of one build: the list matches only a mesh-proxy
built alone (`cargo build --release -p mesh-proxy`), which is how the Dockerfile and
bench/run.py build it. `--check` reports how much of the list the built executable has.

Python 3 standard library only; 127.0.0.1 only; every load is bounded in count and time.
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from meshbench.common import AUTHORITY  # noqa: E402
from meshbench.pair_configs import mesh_client_config, mesh_server_config  # noqa: E402
from meshbench.pki import Certs  # noqa: E402
from meshbench.processes import free_port, http_get  # noqa: E402
from meshbench.proxy_configs import mesh_proxy_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RELEASE = REPO / "target" / "release"
ORDER_FILE = REPO / "bins" / "proxy" / "symbol-order.txt"
HEADER = """\
# The functions mesh-proxy runs, hottest first: the linker lays them out together, so that the
# few MiB of code a proxy uses are the pages it maps (bins/proxy/build.rs).
# Written by `python3 bench/symbol_order.py` for a `cargo build --release -p mesh-proxy`;
# names not in the executable are skipped, and the rest of the code keeps its usual order.
"""
STARTUP_S = 60.0  # valgrind makes the start 20-50x slower
LOAD_TIMEOUT_S = 300.0

NAME_RE = re.compile(r"^(c?)(ob|fn)=\((\d+)\)(?: (.*))?$")


def self_costs(lines, executable: str) -> collections.Counter:
    """Instructions each function of `executable` spent itself, from a callgrind output file
    (`--demangle=no`, name compression on, as callgrind writes by default). The cost line after
    `calls=` is the callee's inclusive cost, so it is not the caller's own."""
    names: dict[str, str] = {}
    objects: dict[str, str] = {}
    costs: collections.Counter = collections.Counter()
    obj = fn = None
    skip_next = False
    for raw in lines:
        line = raw.rstrip("\n")
        if skip_next:
            skip_next = False
            continue
        m = NAME_RE.match(line)
        if m:
            called, kind, ident, name = m.groups()
            table = objects if kind == "ob" else names
            if name:
                table[ident] = name
            if not called:
                if kind == "ob":
                    obj = objects.get(ident)
                else:
                    fn = names.get(ident)
            continue
        if line.startswith("calls="):
            skip_next = True
            continue
        if not line or not (line[0].isdigit() or line[0] in "+-*"):
            continue
        if fn is None or obj is None or Path(obj).name != executable:
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            # A function entered again recursively is named `name'2`: the same code.
            costs[re.sub(r"'\d+$", "", fn)] += int(parts[1])
    return costs


def order(profiles: list[collections.Counter]) -> list[str]:
    """The functions of every profile, grouped by which profiles ran them and hottest first in
    each group. Groups go by the profiles that did not run them, in the profiles' order: first
    what all ran, and what the first profile ran comes before what it did not. So the code of
    the first profile (the plain proxy) is one range, and each other profile's is a few; a
    single order by heat would spread one profile's code among another's. Ties go by name, so
    that one set of profiles gives one file."""
    total: collections.Counter = collections.Counter()
    for costs in profiles:
        total.update(costs)

    def key(name: str) -> tuple:
        return tuple(name not in costs for costs in profiles), -total[name], name

    return [name for name in sorted(total, key=key) if not name.startswith("(")]


def defined_functions(exe: Path) -> set[str]:
    out = subprocess.run(["nm", "--defined-only", str(exe)], capture_output=True, text=True, check=True).stdout
    return {p[2] for p in (line.split() for line in out.splitlines()) if len(p) == 3 and p[1] in "tTwW"}


def listed(path: Path) -> list[str]:
    return [s for s in (line.split("#", 1)[0].strip() for line in path.read_text().splitlines()) if s]


class Runner:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.used: set[int] = set()
        self.profiles: list[Path] = []

    def port(self) -> int:
        return free_port(self.used)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def backend(self) -> int:
        port = self.port()
        self.spawn(f"backend-{port}", [str(RELEASE / "mesh-bench-backend"), "--listen", f"127.0.0.1:{port}"])
        return port

    def proxy(self, name: str, config: str, admin: int) -> subprocess.Popen:
        out = self.work / f"callgrind.{name}.out"
        self.profiles.append(out)
        p = self.spawn(name, [
            "valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={out}",
            str(RELEASE / "mesh-proxy"), "--config", config,
        ])
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise SystemExit(f"{name} exited: see {self.work / (name + '.log')}")
            try:
                if http_get(f"http://127.0.0.1:{admin}/ready")[0] == 200:
                    return p
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        raise SystemExit(f"{name} not ready in {STARTUP_S:.0f} s")

    def stop(self, p: subprocess.Popen) -> None:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=LOAD_TIMEOUT_S)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def h2load(port: int, *opts: str) -> None:
    argv = ["h2load", "-H", f":authority: {AUTHORITY}", *opts, f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=LOAD_TIMEOUT_S).stdout
    m = re.search(r"status codes: (\d+) 2xx", out)
    if not m or int(m.group(1)) == 0:
        raise SystemExit(f"no 2xx from {' '.join(argv)}:\n{out}")


def admin_calls(admin: int) -> None:
    for path in ("/live", "/ready", "/metrics", "/config", "/log-level"):
        http_get(f"http://127.0.0.1:{admin}{path}")


def profile(work: Path) -> list[Path]:
    run = Runner(work)
    try:
        backends = [run.backend() for _ in range(3)]
        port, admin = run.port(), run.port()
        plain = run.proxy("plain", mesh_proxy_config(work, port, admin, backends), admin)
        h2load(port, "-c16", "-m32", "-n20000")
        h2load(port, "-c1", "-m1", "-n2000")
        h2load(port, "--h1", "-c4", "-n2000")
        admin_calls(admin)
        run.stop(plain)

        certs = Certs(work / "pki")
        a_port, a_admin, b_port, b_admin = run.port(), run.port(), run.port(), run.port()
        (work / "a").mkdir()
        (work / "b").mkdir()
        b = run.proxy("pair-b", mesh_server_config(work / "b", certs, b_port, b_admin, backends[0], "server"), b_admin)
        a = run.proxy("pair-a", mesh_client_config(work / "a", certs, a_port, a_admin, b_port), a_admin)
        h2load(a_port, "-c16", "-m32", "-n10000")
        h2load(a_port, "--h1", "-c4", "-n1000")
        admin_calls(a_admin)
        admin_calls(b_admin)
        run.stop(a)
        run.stop(b)
    finally:
        run.stop_all()
    return run.profiles


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="only report how many listed functions target/release/mesh-proxy defines")
    args = ap.parse_args()
    exe = RELEASE / "mesh-proxy"
    if args.check:
        names = listed(ORDER_FILE)
        have = defined_functions(exe)
        found = sum(1 for n in names if n in have)
        print(f"{found} of {len(names)} listed functions are in {exe} ({100 * found / max(1, len(names)):.1f}%)")
        return 0 if found * 10 >= len(names) * 9 else 1
    with tempfile.TemporaryDirectory(prefix="mesh-symbol-order-") as tmp:
        profiles = profile(Path(tmp))
        costs = []
        for path in profiles:
            with open(path) as f:
                costs.append(self_costs(f, exe.name))
    names = order(costs)
    ORDER_FILE.write_text(HEADER + "\n".join(names) + "\n")
    have = defined_functions(exe)
    print(f"wrote {ORDER_FILE}: {len(names)} functions, "
          f"{sum(1 for n in names if n in have)} defined in {exe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
