"""Benchmarks that produce docs/BENCHMARKS.md (`make bench`): measured on this machine, never in tests."""
