"""Mid-training checkpoints, so an interrupted run resumes instead of starting over.

Each cell's layer weights and AdamW state are stored as safetensors (plus JSON for scalars),
never pickled. Every save is a new snapshot: its files carry the snapshot's id, and
``progress.json``, written last and atomically, names the id, the cells, the tokens served and
the contexts consumed. Only the snapshot it names is ever restored, so a process killed in the
middle of a save leaves the previous snapshot whole (files of the unfinished one are ignored and
removed by the next save). On resume
the data stream skips the drawn rows (tokenization only, or a seek in the activation cache) and continues on fresh ones;
the shuffle buffer's unserved tokens at the time of the interruption are not trained on, so
no token is ever trained on twice.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench.results import atomic_write_text
from bench.train import Cell

PROGRESS_FILE = "progress.json"


def cell_dir_name(cell: Cell) -> str:
    return f"{cell.method}-k{cell.k}"


def save_training_state(directory: Path, cells: list[Cell], tokens_served: int, tokens_drawn: int,
                        settings_key: dict[str, Any]) -> None:
    """Write every cell's state as a new snapshot, then the progress file that makes it the valid one."""
    directory.mkdir(parents=True, exist_ok=True)
    snapshot = uuid.uuid4().hex[:12]
    for cell in cells:
        cell_dir = directory / cell_dir_name(cell)
        cell_dir.mkdir(exist_ok=True)
        tensors = {f"layer.{k}": v.detach().contiguous().cpu() for k, v in cell.layer.state_dict().items()}
        optimiser = cell.optimiser.state_dict()
        for index, state in optimiser["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
        _atomic_save_file(tensors, cell_dir / f"state-{snapshot}.safetensors")
        scalars = {"steps": cell.steps, "tokens": cell.tokens, "train_time_s": cell.train_time_s,
                   "last_loss": cell.last_loss, "status": cell.status, "error": cell.error,
                   "param_groups": optimiser["param_groups"], "scheduler": cell.scheduler.state_dict()}
        atomic_write_text(cell_dir / f"state-{snapshot}.json", json.dumps(scalars))
    progress = {"snapshot": snapshot, "tokens_served": tokens_served, "tokens_drawn": tokens_drawn,
                "cells": sorted(cell_dir_name(c) for c in cells), "settings": settings_key}
    atomic_write_text(directory / PROGRESS_FILE, json.dumps(progress, sort_keys=True))
    for stale in directory.glob("*/state-*"):  # earlier snapshots, and any a killed save left half-written
        if not stale.name.startswith(f"state-{snapshot}."):
            stale.unlink(missing_ok=True)


def load_progress(directory: Path, cells: list[Cell], settings_key: dict[str, Any]) -> dict[str, Any] | None:
    """The saved progress if it belongs to exactly these cells and settings, else None."""
    path = directory / PROGRESS_FILE
    if not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    # Cells evaluated since the save are no longer wanted, so a superset is still a match.
    covers = {cell_dir_name(c) for c in cells} <= set(progress.get("cells", []))
    valid = covers and progress.get("settings") == settings_key and "snapshot" in progress
    return progress if valid else None


def restore_cells(directory: Path, cells: list[Cell], progress: dict[str, Any]) -> None:
    """Load each cell's layer, optimiser and schedule state from the snapshot ``progress`` names."""
    snapshot = progress["snapshot"]
    for cell in cells:
        cell_dir = directory / cell_dir_name(cell)
        tensors = load_file(str(cell_dir / f"state-{snapshot}.safetensors"))
        scalars = json.loads((cell_dir / f"state-{snapshot}.json").read_text())
        device = next(cell.layer.parameters()).device
        cell.layer.load_state_dict({k[len("layer."):]: v for k, v in tensors.items() if k.startswith("layer.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = value if key == "step" else value.to(device)
        cell.optimiser.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
        cell.scheduler.load_state_dict(scalars["scheduler"])
        for key in ("steps", "tokens", "train_time_s", "last_loss", "status", "error"):
            setattr(cell, key, scalars[key])


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
