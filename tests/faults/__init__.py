"""Fault-injection tests: crashes and retries at chosen points, then a rerun."""
