"""`python3 -m meshbench` (from bench/) runs the same command line as bench/run.py."""

import sys

from .cli import main

sys.exit(main())
