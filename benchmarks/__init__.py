"""Latency benchmarks run against in-process doubles (not part of the worker)."""
