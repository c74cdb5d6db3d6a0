"""Benchmark harness: pytest-benchmark suites (bench_*.py) and the report CLI (report.py)."""
