"""Unit dashboards: what each unit of a trained cell fires on and what it writes (``bench inspect``).

``write_dashboard(run_dir, cell, units, n_texts, device)`` is the entry point; ``decode`` holds the
per-family output-from-codes computation that steering (``bench.steer``) shares.
"""
from bench.inspect.cli import add_inspect_arguments, run_inspect
from bench.inspect.dashboard import write_dashboard

__all__ = ["add_inspect_arguments", "run_inspect", "write_dashboard"]
