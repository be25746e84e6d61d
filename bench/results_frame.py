"""Result rows as a data frame: every ``cells.jsonl`` read into one flat table (task scores and
versions flattened into columns, and the probing and steering scores measured since joined from their
own files by ``bench.cell_scores``), for the report and the figures alike. Needs pandas only, never
matplotlib, so writing a report or a comparison does not load a plotting stack.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from bench.cell_scores import run_scores
from bench.metrics import numeric_columns
from bench.row_file import read_row_objects

log = logging.getLogger(__name__)

REQUIRED = ("model", "layer", "method", "k")
TASK_GROUPS = ("tasks", "tasks_clean", "tasks_zero")  # flattened to "<group>.<task>.<metric>"
SETTING_COLUMNS = ("train_tokens", "eval_tokens", "ce_tokens", "seed", "lr", "batch_size", "context_length",
                   "train_time_s", "eval_time_s", "dead_units", "selection_counted_tokens", "eval_documents",
                   "ce_documents")
NUMERIC = (*numeric_columns(), *SETTING_COLUMNS)
VARIANT_KEYS = ("expansion", "train_tokens", "seed", "dataset")  # harness cell-key fields beyond REQUIRED
PRIMARY_METRICS = ("acc", "acc_norm", "exact_match", "f1")  # which task metric a figure shows

# Built-in methods, in the order tables and legends list them (and colours are handed out).
METHOD_ORDER: tuple[str, ...] = (
    "tc", "stc", "sae", "mxd", "mxd-glu", "lowrank-moe-r1", "lowrank-moe-r4", "lowrank-moe-r16",
)


def method_sort_key(method: str) -> tuple[int, str]:
    """Known methods in METHOD_ORDER, then unknown ones alphabetically."""
    if method in METHOD_ORDER:
        return (METHOD_ORDER.index(method), "")
    return (len(METHOD_ORDER), method)


def ordered_methods(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods), key=method_sort_key)


def _cells_file(path: Path) -> Path:
    path = Path(path)
    target = path / "cells.jsonl" if path.is_dir() else path
    if not target.is_file():
        raise FileNotFoundError(f"{target}: no such results file (expected a run directory or cells.jsonl)")
    return target


def _flatten(row: dict) -> dict:
    """Nested task scores and versions become flat columns; every other key is kept as is."""
    flat = {key: value for key, value in row.items() if key not in TASK_GROUPS and key != "versions"}
    for group in TASK_GROUPS:
        tasks = row.get(group)
        for task, metrics in (tasks.items() if isinstance(tasks, dict) else ()):
            for metric, value in (metrics.items() if isinstance(metrics, dict) else ()):
                flat[f"{group}.{task}.{metric}"] = value
    versions = row.get("versions")
    for name, value in (versions.items() if isinstance(versions, dict) else ()):
        flat[f"versions.{name}"] = value
    return flat


def _read_one(path: Path) -> pd.DataFrame:
    problems: list[str] = []
    scores = run_scores(path.parent)  # probing and steering scores, joined to their cells' rows here
    rows = [{**_flatten(row), **scores.columns(row)} for row in read_row_objects(path, problems=problems)]
    if not rows:
        raise ValueError(f"{path}: holds no result rows" + (f" ({problems[0]})" if problems else ""))
    frame = pd.DataFrame(rows)
    for column in REQUIRED:
        if column not in frame.columns:
            raise ValueError(f"{path}: required column {column!r} is missing")
        if frame[column].isna().any():
            raise ValueError(f"{path}: required column {column!r} is empty in some rows")
    for column in ("layer", "k"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any() or (values % 1 != 0).any():
            raise ValueError(f"{path}: required column {column!r} must hold integers")
        frame[column] = values.astype(int)
    frame["model"] = frame["model"].astype(str)
    if "random_weights" in frame.columns:  # a rehearsal is never one cell, figure or heading with the real model
        random = frame["random_weights"].fillna(False).astype(bool)
        frame.loc[random, "model"] = frame.loc[random, "model"] + " (random weights)"
    frame["method"] = frame["method"].astype(str)
    frame["source_file"] = str(path)
    return frame


def read_cells(paths: Sequence[Path] | Path) -> pd.DataFrame:
    """Every row of every file, failed ones included, in file order (the report needs the failures)."""
    if isinstance(paths, (str, Path)):
        paths = [Path(paths)]
    if not paths:
        raise ValueError("no results files given")
    frame = pd.concat([_read_one(_cells_file(Path(p))) for p in paths], ignore_index=True, sort=False)
    if "status" not in frame.columns:
        frame["status"] = "ok"  # a row without a status recorded metrics, so count it
    frame["status"] = frame["status"].fillna("ok").astype(str)
    for column in [c for c in frame.columns if c in NUMERIC or c.startswith(TASK_GROUPS)]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    if {"ce_spliced", "ce_clean"} <= set(frame.columns):  # derive what the writer left out
        derived = frame["ce_spliced"] - frame["ce_clean"]
        frame["delta_ce"] = frame["delta_ce"].fillna(derived) if "delta_ce" in frame else derived
        if "ce_zero" in frame.columns:
            recovered = (frame["ce_zero"] - frame["ce_spliced"]) / (frame["ce_zero"] - frame["ce_clean"])
            frame["ce_recovered"] = frame.get("ce_recovered", recovered).fillna(recovered)
    return frame.copy()  # one block per dtype again after the column-by-column conversions


def load_results(paths: Sequence[Path] | Path) -> pd.DataFrame:
    """The plottable rows: status "ok" only, and for a cell stored twice the later row wins."""
    frame = read_cells(paths)
    numeric = frame.select_dtypes("number").columns
    frame[numeric] = frame[numeric].replace([np.inf, -np.inf], np.nan)  # a diverged cell has no place on an axis
    ok = frame[frame["status"] == "ok"]
    repeated = ok[ok.duplicated(subset=list(REQUIRED), keep=False)]
    keys = [repeated[k] for k in REQUIRED]
    varied = [c for c in VARIANT_KEYS
              if c in repeated.columns and repeated[c].astype(str).groupby(keys).nunique().gt(1).any()]
    if varied:  # e.g. two runs with different seeds combined: only the last of each cell is plotted
        log.warning("cells repeated with different %s; keeping the last row of each", ", ".join(varied))
    return ok.drop_duplicates(subset=list(REQUIRED), keep="last").reset_index(drop=True)


def task_metrics(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(task, metric) pairs with any spliced score in ``frame``: one metric per task, acc preferred."""
    found: dict[str, list[str]] = {}
    for column in frame.columns:
        if column.startswith("tasks.") and not column.endswith("_stderr") and frame[column].notna().any():
            task, metric = column[len("tasks."):].rsplit(".", 1)
            found.setdefault(task, []).append(metric)
    pairs = []
    for task in sorted(found):
        preferred = [m for m in PRIMARY_METRICS if m in found[task]]
        pairs.append((task, preferred[0] if preferred else sorted(found[task])[0]))
    return pairs
