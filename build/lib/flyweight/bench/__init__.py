"""Benchmarks: layer and model speed, and the comparison report."""
