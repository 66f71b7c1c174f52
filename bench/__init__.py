"""Benchmark suite: `make bench` runs every bench/bench_*.py and rewrites BENCHMARKS.md."""
