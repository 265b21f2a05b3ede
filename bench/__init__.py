"""Benchmarks (not tests): ``python -m bench.robust`` and ``python -m bench.aggregation_speed``."""
