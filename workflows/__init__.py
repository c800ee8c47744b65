"""Temporal workflows: deterministic decisions, waits and loops; no I/O."""
