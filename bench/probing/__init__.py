"""Sparse probing: how well single units (or a few) of each trained sparse layer encode known concepts.

``probe_run(run_dir)`` scores every saved cell of a run and writes ``<run>/probing.jsonl``;
``add_probe_arguments`` / ``run_probe_command`` are ``bench probe``. The protocol is in docs/PROBING.md.

Modules, in the order data flows through them: ``datasets`` (labelled texts), ``codes`` (texts ->
pooled codes), ``probes`` (unit ranking and logistic probes), ``metrics`` (F1, balanced accuracy,
bootstrap SEs), ``scoring`` (features -> score rows), ``store`` (probing.jsonl), ``runner``, ``cli``,
``summary`` (points for the probing-vs-dCE figure).
"""
from bench.probing.cli import add_probe_arguments, format_probe_table, run_probe_command
from bench.probing.datasets import DEFAULT_TEXTS_PER_CLASS

__all__ = ["DEFAULT_TEXTS_PER_CLASS", "ProbeError", "add_probe_arguments", "format_probe_table", "probe_run",
           "run_probe_command"]


def __getattr__(name: str):
    """``probe_run`` and ``ProbeError`` load on first use, so registering the CLI stays light."""
    if name in ("probe_run", "ProbeError"):
        from bench.probing import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'bench.probing' has no attribute {name!r}")
