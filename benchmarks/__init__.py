"""Benchmark scripts; each writes its figures into docs/benchmarks.md."""
