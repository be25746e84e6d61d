"""Scores measured after training, joined to a run's cell rows when the rows are read: sparse probing
(``<run>/probing.jsonl``, written by ``bench probe``) and steering (``<run>/steering/<cell>.json``,
written by ``bench steer``).

Why a join and not more keys in ``cells.jsonl``: a cell row records what training and evaluation
measured, written once when the cell finished; each later score stays in the one file its command
writes, and this module is the only place that matches the two. summary.csv, the results frame (and
so REPORT.md and the figures) read the joined columns from here.

A score belongs to the weights it was measured on: probing rows and steering files record the
SHA-256 of the checkpoint's weights (``weights_sha256``), and a score whose weights are not the
checkpoint's any more (the cell was retrained) is not joined. Of the probing rows, only those with
the settings of the run's latest ``bench probe`` (texts per class, seed) are used, so one table
never mixes settings.

Columns added to a cell's row (absent where the command has not run on that cell):

    probing.<dataset>.f1_k<k>[_stderr]   class-mean test F1 of the k-sparse probe (bootstrap SE), k in REPORTED_KS
    probing.mean.f1_k<k>[_stderr]        its mean over the run's probing datasets (SEs combined as independent)
    probing.texts_per_class, probing.probe_seed
    steering.units                       how many units were steered
    steering.perplexity[_stderr]         clean-model perplexity of the steered samples, mean over units (SE over units)
    steering.baseline_perplexity         the same for the unsteered samples
    steering.coherence_proxy[_stderr]    the offline coherence PROXY (docs/INSPECT.md), mean over units
    steering.coherence_judge, steering.judge   a judge's coherence, when one judge rated every steered unit
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bench.row_file import CELL_KEY

PROBING_FILE = "probing.jsonl"  # written by bench.probing.store; named here so reading rows needs no torch
STEERING_DIR = "steering"
REPORTED_KS = (1, 5)  # k-sparse probe sizes joined to rows and tabled in REPORT.md
SETTINGS = ("texts_per_class", "probe_seed")
SETTINGS_COLUMN = {name: f"probing.{name}" for name in SETTINGS}


def weights_digest(run_dir: Path, checkpoint: str | None) -> str | None:
    """The SHA-256 a checkpoint's config.json records for its weights, or None (no checkpoint on disk)."""
    if not checkpoint:
        return None
    try:
        return json.loads((Path(run_dir) / checkpoint / "config.json").read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def cell_identity(row: dict[str, Any]) -> tuple:
    """What names one cell in both files: the cell's key fields and its checkpoint, as JSON text."""
    return tuple(json.dumps(row.get(name), sort_keys=True) for name in (*CELL_KEY, "checkpoint"))


def mean_with_se(scores: list[tuple[float, float]]) -> tuple[float, float]:
    """Mean of values with standard errors, the values independent: (mean, sqrt(sum SE^2) / n)."""
    return (sum(v for v, _ in scores) / len(scores),
            math.sqrt(sum((se or 0.0) ** 2 for _, se in scores)) / len(scores))


def is_current(score: dict[str, Any], run_dir: Path, digests: dict[str, str | None]) -> bool:
    """A score row or file is current unless both it and the checkpoint name weights, and they differ."""
    recorded = score.get("weights_sha256")
    checkpoint = score.get("checkpoint")
    if recorded is None or not checkpoint:
        return True
    if checkpoint not in digests:
        digests[checkpoint] = weights_digest(run_dir, checkpoint)
    return digests[checkpoint] in (None, recorded)


def current_probing_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Probing rows with the settings of the run's latest probing row, minus those of retrained cells."""
    path = Path(run_dir) / PROBING_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not rows:
        return []
    latest = tuple(rows[-1].get(name) for name in SETTINGS)
    digests: dict[str, str | None] = {}
    return [r for r in rows if tuple(r.get(name) for name in SETTINGS) == latest and is_current(r, run_dir, digests)]


def f1_by_dataset(rows: Iterable[dict[str, Any]], probe: str, probe_k: int | None) -> dict[tuple, dict[str, tuple]]:
    """Source identity (a cell's, or a baseline's method and width) -> {dataset: (F1, SE)} of one probe."""
    found: dict[tuple, dict[str, tuple]] = {}
    for row in rows:
        if row["probe"] == probe and row.get("probe_k") == probe_k:
            found.setdefault(source_identity(row), {})[row["probe_dataset"]] = (row["f1"], row["f1_se"])
    return found


def source_identity(row: dict[str, Any]) -> tuple:
    """A probing row's source: the cell's identity, or the baseline's model, layer, method and width."""
    if row.get("kind") == "cell":
        return ("cell", *cell_identity(row))
    return ("baseline", row.get("model"), row.get("layer"), row.get("method"), row.get("n_units"))


def probing_columns(rows: list[dict[str, Any]], ks: tuple[int, ...] = REPORTED_KS) -> dict[tuple, dict[str, Any]]:
    """Cell identity -> its probing columns (see the module docstring), from current probing rows."""
    datasets = sorted({r["probe_dataset"] for r in rows})
    columns: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if row.get("kind") == "cell":
            columns.setdefault(cell_identity(row), {SETTINGS_COLUMN[n]: row.get(n) for n in SETTINGS})
    for k in ks:
        for source, scores in f1_by_dataset(rows, "k-sparse", k).items():
            if source[0] != "cell":
                continue
            out = columns[source[1:]]
            for dataset, (f1, se) in scores.items():
                out[f"probing.{dataset}.f1_k{k}"], out[f"probing.{dataset}.f1_k{k}_stderr"] = f1, se
            if sorted(scores) == datasets:  # a mean over fewer datasets would not compare with the others
                out[f"probing.mean.f1_k{k}"], out[f"probing.mean.f1_k{k}_stderr"] = mean_with_se(
                    [scores[d] for d in datasets])
    return columns


def steering_files(run_dir: Path) -> list[dict[str, Any]]:
    """Every readable ``steering/*.json`` of the run whose weights are still the checkpoint's."""
    folder = Path(run_dir) / STEERING_DIR
    found, digests = [], {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(stored, dict) and stored.get("units") and is_current(stored, run_dir, digests):
            found.append(stored)
    return found


def steering_summary(stored: dict[str, Any]) -> dict[str, Any]:
    """One steering file -> its columns: means over the steered units (SE over units when two or more)."""
    entries = list(stored["units"].values())
    out: dict[str, Any] = {"steering.units": len(entries)}
    for name, key in (("steering.perplexity", "perplexity"), ("steering.coherence_proxy", "coherence_proxy")):
        values = [float(e[key]) for e in entries if e.get(key) is not None]
        if values:
            out[name], out[f"{name}_stderr"] = _mean_and_se(values)
    baselines = [float(e["baseline"]["perplexity"]) for e in entries if (e.get("baseline") or {}).get("perplexity")]
    if baselines:
        out["steering.baseline_perplexity"] = sum(baselines) / len(baselines)
    judges = {e.get("coherence_source") for e in entries}
    judged = [e["coherence"] for e in entries if e.get("coherence") is not None]
    if len(judges) == 1 and str(next(iter(judges))).startswith("judge:") and len(judged) == len(entries):
        out["steering.judge"] = next(iter(judges))[len("judge:"):]
        out["steering.coherence_judge"] = sum(judged) / len(judged)
    return out


def _mean_and_se(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


@dataclass
class RunScores:
    """The probing and steering columns of one run's cells, ready to join to its rows."""

    probing: dict[tuple, dict[str, Any]] = field(default_factory=dict)  # by cell_identity
    steering: dict[tuple, dict[str, Any]] = field(default_factory=dict)  # by (model, layer, checkpoint)

    def columns(self, row: dict[str, Any]) -> dict[str, Any]:
        """The joined columns of one cells.jsonl row (empty when no later command scored it)."""
        found = dict(self.probing.get(cell_identity(row), {}))
        if row.get("checkpoint"):
            found.update(self.steering.get((row.get("model"), row.get("layer"), row["checkpoint"]), {}))
        return found

    def __bool__(self) -> bool:
        return bool(self.probing or self.steering)


def run_scores(run_dir: Path) -> RunScores:
    """Read ``run_dir``'s probing and steering results (nothing when neither command has run)."""
    steering = {(s.get("model"), s.get("layer"), s.get("checkpoint")): steering_summary(s)
                for s in steering_files(run_dir) if s.get("checkpoint")}
    return RunScores(probing_columns(current_probing_rows(run_dir)), steering)
