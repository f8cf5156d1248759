"""Unit tests of the harness's parsers and pure functions: no network, no root, no external
tools. Run from bench/: python3 -m unittest discover -s tests -t ."""
