"""Mid-training checkpoints, so an interrupted run resumes instead of starting over.

Each cell's layer weights and AdamW state are stored as safetensors (plus JSON for scalars),
never pickled. Every save is a new snapshot: its files carry the snapshot's id, and
``progress.json``, written last and atomically, names the id, the cells, the tokens served, the
contexts consumed and the sha256 of every file of the snapshot. Only the snapshot it names is
ever restored, and only if every file still has its checksum, so a process killed in the middle
of a save leaves the previous snapshot whole (files of the unfinished one are ignored and removed
by the next save), a save the disk refuses raises ``StateNotSaved`` and leaves it whole too, and a
file damaged later (truncated, overwritten) means a clean restart instead of an error on every
re-run. At most two snapshots are on disk at once: the valid one and the one being written.
On resume
the data stream skips the drawn rows (tokenization only, or a seek in the activation cache) and continues on fresh ones;
the shuffle buffer's unserved tokens at the time of the interruption are not trained on, so
no token is ever trained on twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from bench.logs import note
from bench.results import atomic_write_text
from bench.safetensors_stream import write_safetensors
from bench.train import Cell

PROGRESS_FILE = "progress.json"
_SUFFIXES = (".safetensors", ".json")  # the files of one cell in one snapshot


class StateNotSaved(OSError):
    """A save the disk refused (full, quota, I/O error): the snapshot saved before it stays in force."""


def cell_dir_name(cell: Cell) -> str:
    return f"{cell.method}-k{cell.k}"


def save_training_state(directory: Path, cells: list[Cell], tokens_served: int, tokens_drawn: int,
                        settings_key: dict[str, Any], training_done: bool = False) -> None:
    """Write every cell's state as a new snapshot, then the progress file that makes it the valid one.

    A cell's state is its layer plus AdamW's two moments, three times the layer; with
    ``training_done`` (no step will follow) the moments are left out, a third of the size.
    Raises StateNotSaved (an OSError, with the original errno) when a file cannot be written; the
    new snapshot's files are removed then, and the previous snapshot is untouched.
    """
    snapshot = uuid.uuid4().hex[:12]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        checksums: dict[str, str] = {}
        for cell in cells:
            checksums.update(_save_cell(directory, cell, snapshot, with_moments=not training_done))
        progress = {"snapshot": snapshot, "tokens_served": tokens_served, "tokens_drawn": tokens_drawn,
                    "cells": sorted(cell_dir_name(c) for c in cells), "settings": settings_key,
                    "checksums": checksums}
        atomic_write_text(directory / PROGRESS_FILE, json.dumps(progress, sort_keys=True))
    except OSError as error:
        _remove_snapshot_files(directory, lambda name: name.startswith(f"state-{snapshot}."))
        raise StateNotSaved(error.errno, f"the training state could not be saved in {directory} "
                                         f"({error.strerror or error}); the previous one, if any, is kept") from error
    # Earlier snapshots, and any that a killed save left half-written.
    _remove_snapshot_files(directory, lambda name: not name.startswith(f"state-{snapshot}."))


def _save_cell(directory: Path, cell: Cell, snapshot: str, with_moments: bool) -> dict[str, str]:
    """Write one cell's layer, AdamW moments (if asked) and scalars; returns {relative path: sha256}."""
    cell_dir = directory / cell_dir_name(cell)
    cell_dir.mkdir(exist_ok=True)
    tensors = {f"layer.{k}": v.detach() for k, v in cell.layer.state_dict().items()}
    optimiser = cell.optimiser.state_dict()
    for index, state in (optimiser["state"] if with_moments else {}).items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach()
    tensors.update({f"cell.{name}": value.detach() for name, value in cell.extra_state().items()})
    scalars = {"steps": cell.steps, "tokens": cell.tokens, "train_time_s": cell.train_time_s,
               "last_loss": cell.last_loss, "status": cell.status, "error": cell.error,
               "param_groups": optimiser["param_groups"], "scheduler": cell.scheduler.state_dict()}
    # Streamed from the tensors' own memory (a serialised copy of a big cell's state was what ran a
    # 24 GB machine out of memory); written by Python, so a full disk raises OSError(ENOSPC).
    weights_path = cell_dir / f"state-{snapshot}{_SUFFIXES[0]}"
    checksums = {f"{cell_dir.name}/{weights_path.name}": write_safetensors(weights_path, tensors)}
    scalars_path = cell_dir / f"state-{snapshot}{_SUFFIXES[1]}"
    data = json.dumps(scalars).encode("utf-8")
    with open(scalars_path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before progress.json vouches for it
    checksums[f"{cell_dir.name}/{scalars_path.name}"] = hashlib.sha256(data).hexdigest()
    return checksums


def _remove_snapshot_files(directory: Path, doomed: Callable[[str], bool]) -> None:
    for path in [*directory.glob("*/state-*"), *directory.glob("*/.state-*")]:  # .state-*: older temporaries
        if doomed(path.name.lstrip(".")):
            path.unlink(missing_ok=True)


def load_progress(directory: Path, cells: list[Cell], settings_key: dict[str, Any]) -> dict[str, Any] | None:
    """The saved progress if it belongs to exactly these cells and settings and its files are intact, else None.

    A snapshot whose files fail their checksums is reported in one line and not resumed.
    """
    path = directory / PROGRESS_FILE
    if not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    # Cells evaluated since the save are no longer wanted, so a superset is still a match.
    covers = {cell_dir_name(c) for c in cells} <= set(progress.get("cells", []))
    if not (covers and progress.get("settings") == settings_key and "snapshot" in progress):
        return None
    problem = _damage(directory, cells, progress)
    if problem:
        note(f"training state at {directory} is corrupt ({problem}); retraining from the start")
        return None
    return progress


def _damage(directory: Path, cells: list[Cell], progress: dict[str, Any]) -> str | None:
    """What is wrong with the files of ``cells`` in the snapshot ``progress`` names, or None."""
    checksums = progress.get("checksums")
    if not isinstance(checksums, dict):
        return "it has no checksums: it was saved by an older mxbench"
    for cell in cells:
        for suffix in _SUFFIXES:
            name = f"{cell_dir_name(cell)}/state-{progress['snapshot']}{suffix}"
            try:
                with open(directory / name, "rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
            except OSError as error:
                return f"{name} is unreadable: {error.strerror or error}"
            if digest != checksums.get(name):
                return f"checksum mismatch in {name}"
    return None


def restore_cells(directory: Path, cells: list[Cell], progress: dict[str, Any]) -> None:
    """Load each cell's layer, optimiser and schedule state from the snapshot ``progress`` names."""
    snapshot = progress["snapshot"]
    for cell in cells:
        cell_dir = directory / cell_dir_name(cell)
        tensors = load_file(str(cell_dir / f"state-{snapshot}.safetensors"))
        scalars = json.loads((cell_dir / f"state-{snapshot}.json").read_text())
        device = next(cell.layer.parameters()).device
        cell.layer.load_state_dict({k[len("layer."):]: v for k, v in tensors.items() if k.startswith("layer.")})
        cell.load_extra_state({k[len("cell."):]: v for k, v in tensors.items() if k.startswith("cell.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, index, key = name.split(".", 2)
                state.setdefault(int(index), {})[key] = value if key == "step" else value.to(device)
        cell.optimiser.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
        cell.scheduler.load_state_dict(scalars["scheduler"])
        for key in ("steps", "tokens", "train_time_s", "last_loss", "status", "error"):
            setattr(cell, key, scalars[key])
