"""Benchmarks that run inside distml pods."""
