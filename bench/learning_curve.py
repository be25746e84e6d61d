"""Learning curves: how a cell's ΔCE falls as it trains on more tokens, read from runs that differ
only in ``--tokens`` (``bench curve``).

A point is one finished cell: (method, K, training tokens). Points are comparable only if nothing but
the budget moved between them, so every row must agree on every setting that identifies a cell's
result (``bench.rows.identity``: model, layer, dataset, seed, LM dtype, loss, ..., and per method its
config and learning rate) except ``train_tokens``, and every run must hold the same K values; runs
may hold different methods. Anything else is refused in one line naming the setting. Random-weight
rehearsals pass only among themselves (``random_weights`` is one of those settings).

This module reads the rows and writes the points as CSV and markdown; ``bench.curve_figure`` draws them.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench.figure_names import display_name, figures_dir_for
from bench.metrics import metric
from bench.results import CELL_KEY, ROWS_FILE, atomic_write_text
from bench.results_frame import method_sort_key
from bench.row_file import read_row_objects
from bench.rows import LEGACY_VALUES, identity
from bench.validation import UsageError

TABLE_STEM = "learning_curve"
POINT_COLUMNS = ("method", "k", "train_tokens", "delta_ce", "delta_ce_stderr", "kl", "kl_stderr", "nmse", "run")
PER_CELL = ("method", "k", "method_config", "lr")  # settings a run's cells may differ in (lr: --method-lr)
VARIED = "train_tokens"  # the one setting the runs may differ in
REFUSAL = "a learning curve compares runs that differ only in --tokens"


@dataclass(frozen=True)
class LearningCurve:
    model: str
    layer: int
    random_weights: bool
    runs: tuple[str, ...]  # run directory names, in the order given
    points: tuple[dict, ...]  # POINT_COLUMNS each, sorted by method, K, training tokens

    def lines(self) -> dict[tuple[str, int], list[dict]]:
        """(method, K) -> its points in order of training tokens: one line of the figure each."""
        lines: dict[tuple[str, int], list[dict]] = {}
        for point in self.points:
            lines.setdefault((point["method"], point["k"]), []).append(point)
        return lines

    @property
    def title(self) -> str:
        ks = sorted({p["k"] for p in self.points})
        title = f"{display_name(self.model)} · layer {self.layer}" + (f" · K={ks[0]}" if len(ks) == 1 else "")
        return title + (" · RANDOM WEIGHTS" if self.random_weights else "")


# ----------------------------------------------------------------------------- reading and checking

def _finished_rows(run_dir: Path) -> list[dict]:
    """The run's successful rows; a cell stored twice (a retry) keeps its later row, as the report does."""
    cells_file = run_dir / ROWS_FILE
    if not cells_file.is_file():
        raise UsageError(f"{run_dir}: no {ROWS_FILE}; give run directories (results/<run>)")
    rows = [row for row in read_row_objects(cells_file) if row.get("status", "ok") == "ok"]
    if not rows:
        raise UsageError(f"{run_dir}: no finished cells (status ok) to draw a learning curve from")
    latest = {tuple(str(row.get(key)) for key in CELL_KEY): row for row in rows}
    return list(latest.values())


def _settings(row: dict) -> dict:
    """The row's identifying settings, values an older row implies filled in (bench.rows.LEGACY_VALUES)."""
    return identity({**LEGACY_VALUES, **row})


def _where(run_dir: Path, row: dict) -> str:
    tokens = row.get(VARIED)
    budget = f"{tokens:,} tokens" if isinstance(tokens, int) else "no train_tokens"
    return f"{run_dir} ({row['method']} K={row['k']}, {budget})"


def _check_same_settings(rows: list[tuple[Path, dict]]) -> None:
    """Every row agrees with the first row on the run's settings, and with the first row of its own
    (method, K) on the cell's; the first difference is refused, naming the setting and both rows."""
    first_of_cell: dict[tuple[str, int], tuple[Path, dict]] = {}
    for run_dir, row in rows:
        same_cell = first_of_cell.setdefault((row["method"], row["k"]), (run_dir, row))
        for key, value in _settings(row).items():
            reference = same_cell if key in PER_CELL else rows[0]
            other = _settings(reference[1])[key]
            if key != VARIED and value != other:
                raise UsageError(f"the runs differ in {key}: {_where(*reference)} has {other!r}, "
                                 f"{_where(run_dir, row)} has {value!r}; {REFUSAL}")


def _check_same_ks(rows_by_run: dict[Path, list[dict]]) -> None:
    ks = {run_dir: sorted({row["k"] for row in rows}) for run_dir, rows in rows_by_run.items()}
    (first, first_ks), *others = ks.items()
    for run_dir, run_ks in others:
        if run_ks != first_ks:
            shown = lambda values: ",".join(map(str, values))  # noqa: E731
            raise UsageError(f"the runs differ in k: {first} has K={shown(first_ks)}, {run_dir} has "
                             f"K={shown(run_ks)}; {REFUSAL}")


def _point(run_dir: Path, row: dict) -> dict:
    tokens = row.get(VARIED)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise UsageError(f"{_where(run_dir, row)}: train_tokens must be a positive integer, got {tokens!r}")
    return {**{column: row.get(column) for column in POINT_COLUMNS}, "run": run_dir.name}


def learning_curve(run_dirs: Sequence[Path]) -> LearningCurve:
    """The points of ``run_dirs``, after checking that they differ only in training tokens."""
    if not run_dirs:
        raise UsageError("give the run directories of the curve, e.g. results/<run>-65k results/<run>-1m")
    rows_by_run = {Path(run_dir): _finished_rows(Path(run_dir)) for run_dir in run_dirs}
    rows = [(run_dir, row) for run_dir, run_rows in rows_by_run.items() for row in run_rows]
    _check_same_settings(rows)
    _check_same_ks(rows_by_run)
    points: dict[tuple[str, int, int], dict] = {}
    for run_dir, row in rows:
        point = _point(run_dir, row)
        key = (point["method"], point["k"], point[VARIED])
        if key in points:
            raise UsageError(f"{points[key]['run']} and {run_dir.name} both hold {key[0]} K={key[1]} at "
                             f"{key[2]:,} training tokens; give each budget once")
        points[key] = point
    budgets = sorted({key[2] for key in points})
    if len(budgets) < 2:
        raise UsageError(f"every cell was trained on {budgets[0]:,} tokens: {REFUSAL}, and these do not")
    order = sorted(points, key=lambda key: (method_sort_key(key[0]), key[1], key[2]))
    first = rows[0][1]
    return LearningCurve(model=str(first["model"]), layer=int(first["layer"]),
                         random_weights=bool(_settings(first)["random_weights"]),
                         runs=tuple(Path(d).name for d in run_dirs), points=tuple(points[key] for key in order))


# ----------------------------------------------------------------------------- where the outputs go

def default_out_dir(run_dirs: Sequence[Path]) -> Path:
    """``figures/<shared name>-curve`` beside the first run's results directory, where the shared name
    is the dash-separated words every run's name starts with (gemma-3-270m-curve-65k and
    gemma-3-270m-curve-1m: figures/gemma-3-270m-curve), the first run's name when they share none;
    '-curve' is appended unless the shared name already ends in it."""
    names = [Path(d).name for d in run_dirs]
    shared = os.path.commonprefix([name.split("-") for name in names])
    stem = "-".join(shared) or names[0]
    name = stem if stem.split("-")[-1] == "curve" else f"{stem}-curve"
    return figures_dir_for(Path(run_dirs[0]).parent / name)


# ----------------------------------------------------------------------------- tables

def points_csv(curve: LearningCurve) -> str:
    """Every point with the values exactly as the rows hold them (Python's shortest round-trip floats),
    so README tables can be rebuilt from it; an unrecorded value is an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(POINT_COLUMNS)
    for point in curve.points:
        writer.writerow(["" if point[column] is None else point[column] for column in POINT_COLUMNS])
    return buffer.getvalue()


def points_markdown(curve: LearningCurve) -> str:
    """The points as a markdown table, formatted as REPORT.md formats these metrics."""
    specs = [metric(name) for name in ("delta_ce", "kl", "nmse")]
    header = ["method", "K", "train tokens", *(spec.header for spec in specs)]
    lines = [f"Learning curve: {curve.title}; runs {', '.join(curve.runs)}.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for point in curve.points:
        values = [point["method"], str(point["k"]), f"{point[VARIED]:,}", *(spec.format(point) for spec in specs)]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_points(curve: LearningCurve, out_dir: Path) -> list[Path]:
    """Write learning_curve.csv and learning_curve.md into out_dir; returns their paths."""
    written = []
    for suffix, text in ((".csv", points_csv(curve)), (".md", points_markdown(curve))):
        path = Path(out_dir) / f"{TABLE_STEM}{suffix}"
        atomic_write_text(path, text)
        written.append(path)
    return written

