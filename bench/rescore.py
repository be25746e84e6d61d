"""Task scores for cells that are already trained: the clean and zero-ablated baselines, and
scoring saved checkpoints (``bench eval``, or ``--tasks`` added to a finished run)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bench.devices import resolve_device, resolve_dtype
from bench.logs import progress, run_log
from bench.models import LoadedModel, load_model
from bench.results import RunStore
from bench.runlock import RunLock
from bench.splice import spliced, zero_ablated
from bench.tasks import evaluate_tasks
from methods.checkpoint import load_layer


@dataclass
class TaskBaselines:
    """The tasks asked for, their example limit, and the clean and zero-ablated model's scores."""

    names: list[str]
    limit: int | None
    clean: dict
    zero: dict

    def as_row(self) -> dict:
        return {"task_names": self.names, "task_limit": self.limit, "tasks_clean": self.clean, "tasks_zero": self.zero}


def task_baselines(lm: LoadedModel, layer: int, names: list[str], limit: int | None) -> TaskBaselines:
    """Task scores of the clean model and of the model with layer ``layer``'s MLP zero-ablated."""
    clean = evaluate_tasks(lm.model, lm.tokenizer, names, limit)
    with zero_ablated(lm.model, layer):
        zero = evaluate_tasks(lm.model, lm.tokenizer, names, limit)
    return TaskBaselines(names, limit, clean, zero)


def lacks_tasks(row: dict, task_names: list[str] | None, limit: int | None) -> bool:
    """The row has no scores for some of ``task_names`` at this example limit."""
    if not task_names:
        return False
    scored = row.get("tasks") or {}
    return row.get("task_limit") != limit or any(name not in scored for name in task_names)


def score_saved_cells(store: RunStore, rows: list[dict], lm: LoadedModel, layer: int, baselines: TaskBaselines,
                      device: torch.device) -> None:
    """Add task scores to finished rows from their checkpoints, and store the rows again."""
    with progress(f"tasks for {len(rows)} saved cells", len(rows)) as bar:
        for row in rows:
            trained = load_layer(store.run_dir / row["checkpoint"], device=device)
            with spliced(lm.model, layer, trained):
                row["tasks"] = evaluate_tasks(lm.model, lm.tokenizer, baselines.names, baselines.limit)
            row.update(baselines.as_row())
            store.append(row)
            bar.update(1)


def evaluate_saved_tasks(run_dir: Path, tasks: list[str], limit: int | None, device_name: str = "auto") -> None:
    """``bench eval``: add task scores to the finished rows of a run from their checkpoints."""
    store = RunStore(run_dir)
    rows = [r for r in store.rows() if r.get("status") == "ok" and r.get("checkpoint")]
    if not rows:
        raise ValueError(f"{run_dir} has no finished cells with checkpoints to evaluate")
    device = resolve_device(device_name)
    with RunLock(run_dir), run_log(run_dir):
        for (model_name, layer), group in _by_model_and_layer(rows).items():
            lm = load_model(model_name, device=str(device), dtype=resolve_dtype("auto", device))
            score_saved_cells(store, group, lm, layer, task_baselines(lm, layer, tasks, limit), device)


def _by_model_and_layer(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["layer"]), []).append(row)
    return groups
