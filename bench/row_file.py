"""Reading ``cells.jsonl`` line by line, so one bad line costs that line and not the run.

A line that is not UTF-8, not JSON, or not a row object (a JSON object naming model, layer, method
and K) is skipped with a warning giving the file and line number; a row that holds NaN or Infinity
in a metric is kept but warned about (a hand edit, or a diverged cell that should have failed).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("mxbench")
ROW_FIELDS = ("model", "layer", "method", "k")
# What tells two cells of one run directory apart (``source``: a loaded dictionary's origin).
CELL_KEY = ("model", "layer", "method", "k", "expansion", "train_tokens", "seed", "dataset", "source")


def read_row_objects(path: Path, warn: bool = True, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Every row object of ``path`` in file order; bad lines skipped (with a warning when ``warn``), and
    described in ``problems`` when a list is given."""
    rows = []
    for lineno, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        problem, row = _parse(raw)
        if problem:
            if problems is not None:
                problems.append(f"line {lineno}: {problem}")
            if warn:
                log.warning("%s:%d: skipped, %s", path, lineno, problem)
            continue
        if warn:
            bad = sorted(k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v))
            if bad and row.get("status", "ok") == "ok":
                log.warning("%s:%d: %s %s non-finite (%s)", path, lineno, ", ".join(bad),
                            "is" if len(bad) == 1 else "are", ", ".join(str(row[k]) for k in bad))
        rows.append(row)
    return rows


def _parse(raw: bytes) -> tuple[str | None, dict]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"not UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})", {}
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        return f"not JSON ({error.msg})", {}
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not a row object", {}
    missing = [field for field in ROW_FIELDS if field not in row]
    if missing:
        return f"a row without {', '.join(repr(m) for m in missing)}", {}
    return None, row
