#!/usr/bin/env python3
"""Proxy benchmark harness: mesh-proxy against Envoy, HAProxy and nginx (and no proxy).

The entry point; the harness itself is the `meshbench` package next to this file (see
bench/README.md). `python3 bench/run.py --help` lists the modes and options.
"""

import sys
from pathlib import Path

# The package sits next to this file; make it importable whatever the current directory is.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from meshbench.cli import main  # noqa: E402 (needs the path above)

if __name__ == "__main__":
    sys.exit(main())
