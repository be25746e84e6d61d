"""``<run>/probing.jsonl``: one row per (cell or baseline) x dataset x probe, rewritten atomically.

A row's identity is its source (the cell's key and checkpoint, or the baseline and its width), the
probing dataset, the probe and its k, and the settings that change the numbers (texts per class,
probing seed). A re-run finds finished rows by that identity and does not compute them again.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from bench.cell_scores import PROBING_FILE, is_current
from bench.results import CELL_KEY, atomic_write_text

ROW_KEY = ("kind", *CELL_KEY, "checkpoint", "n_units", "probe_dataset", "probe", "probe_k", "texts_per_class",
           "probe_seed")


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(json.dumps(row.get(name), sort_keys=True) for name in ROW_KEY)


class ProbeStore:
    """The probing rows of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / PROBING_FILE

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line we never wrote; skip it rather than lose the rest
        return rows

    def keys(self) -> set[tuple]:
        """Identities of the stored rows whose cell still has the weights they were measured on."""
        digests: dict[str, str | None] = {}
        return {row_key(row) for row in self.rows() if is_current(row, self.path.parent, digests)}

    def add(self, new_rows: Iterable[dict[str, Any]]) -> None:
        """Add rows, replacing earlier rows with the same identity; one atomic rewrite."""
        new_rows = list(new_rows)
        replaced = {row_key(row) for row in new_rows}
        rows = [row for row in self.rows() if row_key(row) not in replaced] + new_rows
        atomic_write_text(self.path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
