"""Simulation support: attacks a malicious site can run, and an in-process harness that drives a strategy."""
