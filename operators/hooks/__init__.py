"""Hooks: each owns one connection to a system (the workload program, a cloud's credentials)."""
