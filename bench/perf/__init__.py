"""The performance tooling: ``bench perf`` (how fast each method trains here) and ``bench cost``
(what a sweep will take here), both from the measurements in ``bench.perf.measure``.

``bench.cli`` imports this package at start-up, so it exports only the four entry points; the
LM-side and peer measurements import their heavier packages when they run.
"""
from bench.perf.command import add_perf_arguments, run_perf
from bench.perf.cost import add_cost_arguments, run_cost

__all__ = ["add_perf_arguments", "run_perf", "add_cost_arguments", "run_cost"]
