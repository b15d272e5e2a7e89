"""Benchmarks of the call monitor: `python -m bench` (see bench/README.md).

The modules are importable on their own; `bench.stats` and `bench.report` are pure
and unit-tested (tests/unit/test_bench.py).
"""
