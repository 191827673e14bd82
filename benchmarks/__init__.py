"""Benchmark suite (pytest-benchmark + scripts); results are recorded in RESULTS.md."""
