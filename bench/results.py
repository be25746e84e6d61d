"""Result rows on disk: ``results/<run>/cells.jsonl`` (one JSON row per cell) and ``summary.csv``.

Every write replaces the file atomically (temp file + rename), so a crash or kill never
leaves a half-written row; a reader also skips any line that does not parse.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable

from bench.cell_scores import RunScores, run_scores
from bench.metrics import SUMMARY, TABLE, shown_in
from bench.row_file import CELL_KEY, read_row_objects  # noqa: F401  (CELL_KEY: imported from here by others)
from bench.results_frame import method_sort_key


ROWS_FILE = "cells.jsonl"
SUMMARY_FILE = "summary.csv"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes the file private; results are for sharing
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def source_revision() -> str:
    """The git commit of this checkout (``+dirty`` with local changes), or "unknown" outside git."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "mxbench_source": source_revision()}
    for name in ("mxbench", "torch", "transformers", "lm-eval", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cell_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(name) for name in CELL_KEY)


class RunStore:
    """The rows of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.rows_path = self.run_dir / ROWS_FILE

    def rows(self) -> list[dict[str, Any]]:
        """The run's rows; a line that is not a row (hand-edited, cut short) is skipped with a warning."""
        return read_row_objects(self.rows_path) if self.rows_path.is_file() else []

    def finished_keys(self) -> set[tuple]:
        return {cell_key(row) for row in self.rows() if row.get("status") == "ok"}

    def append(self, row: dict[str, Any]) -> None:
        """Add ``row``, replacing an earlier row of the same cell (a failed attempt, say)."""
        rows = [r for r in self.rows() if cell_key(r) != cell_key(row)] + [row]
        atomic_write_text(self.rows_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        self.write_summary(rows)

    def write_summary(self, rows: Iterable[dict[str, Any]]) -> None:
        """summary.csv: the rows, with the probing and steering scores measured since (bench.cell_scores)."""
        table = summary_frame(list(rows), run_scores(self.run_dir))
        atomic_write_text(self.run_dir / SUMMARY_FILE, table.to_csv(index=False))


IDENTITY_COLUMNS = ["model", "layer", "method", "k", "status"]
TRAILING_COLUMNS = ["train_tokens", "ce_tokens", "train_time_s", "seed", "device", "error"]


def summary_columns() -> list[str]:
    """summary.csv's columns: the cell's identity, every metric marked for it (with its stderr), the budget."""
    metrics = [name for spec in shown_in(SUMMARY) for name in (spec.name, spec.stderr) if name]
    return IDENTITY_COLUMNS + metrics + TRAILING_COLUMNS


def summary_frame(rows: list[dict[str, Any]], scores: RunScores | None = None):
    """A flat table: the main columns first, task scores as ``task:<name>:<metric>``, then the probing
    and steering columns ``scores`` holds for each row (``bench.cell_scores``; none before those commands)."""
    import pandas as pd

    columns = summary_columns()
    flat = []
    for row in rows:
        entry = {c: row.get(c) for c in columns}
        for task, metrics in (row.get("tasks") or {}).items():
            for metric, value in metrics.items():
                entry[f"task:{task}:{metric}"] = value
        entry.update(scores.columns(row) if scores else {})
        flat.append(entry)
    return pd.DataFrame(flat, columns=None if flat else columns)


def format_table(rows: list[dict[str, Any]], method_order: list[str] | None = None) -> str:
    """The table ``bench run`` prints at the end: one block per (model, layer), methods in
    ``method_order`` (the order they were asked for), columns as wide as their widest value."""
    if not rows:
        return "(no rows)"
    specs = shown_in(TABLE)
    lines = []
    for (model, layer), group in _grouped(rows):
        lines.append(_block_title(model, layer, group))
        table = [["method", "K"] + [spec.short for spec in specs] + ["train s"]]
        failures = []
        for r in sorted(group, key=lambda r: (_method_rank(r["method"], method_order), r["k"])):
            if r.get("status") != "ok":
                failures.append(f"{r['method']} K={r['k']} FAILED: {r.get('error')}")
                continue
            table.append([r["method"], str(r["k"])] + [spec.format(r) for spec in specs]
                         + [_f(r.get("train_time_s"), 0)])
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for line in table:
            cells = [line[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(line[1:], widths[1:])]
            lines.append("  ".join(cells).rstrip())
        lines += failures
    return "\n".join(lines)


def _block_title(model: str, layer: int, group: list[dict[str, Any]]) -> str:
    """The baselines are the same in every row of a block; a failed row may lack them."""
    def first(key: str):
        return next((r[key] for r in group if r.get(key) is not None), None)

    return (f"{model} layer {layer}: clean CE {_f(first('ce_clean'), 4)}, zero-ablated CE {_f(first('ce_zero'), 4)}, "
            f"{first('train_tokens') or 0:,} train tokens, {first('ce_tokens') or 0:,} CE tokens")


def _method_rank(method: str, order: list[str] | None) -> tuple:
    if order and method in order:
        return (0, order.index(method), "")
    return (1, *method_sort_key(method))


def _grouped(rows):
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault((row["model"], row["layer"]), []).append(row)
    return groups.items()


def _f(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
