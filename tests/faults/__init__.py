"""Fault-injection tests: crashes and retries at chosen points, then a rerun (ISSUE 3 §7)."""
