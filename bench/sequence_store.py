"""Per-sequence values of a run (CE of the clean, zero-ablated and each spliced model; KL), kept
beside the rows in ``<run>/sequences/*.json`` so that any two cells can be compared pair by pair
later (``bench compare``), from committed results alone."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.results import atomic_write_text

SEQUENCES_DIR = "sequences"


def write_sequences(run_dir: Path, name: str, values: dict[str, torch.Tensor | list[float]]) -> str:
    """Store ``values`` (name -> one number per eval sequence) as ``sequences/<name>.json``;
    returns the path relative to the run directory, which rows record."""
    relative = f"{SEQUENCES_DIR}/{name}.json"
    lists = {key: [float(v) for v in (value.tolist() if isinstance(value, torch.Tensor) else value)]
             for key, value in values.items()}
    atomic_write_text(Path(run_dir) / relative, json.dumps(lists, sort_keys=True))
    return relative


def read_sequences(run_dir: Path, relative: str) -> dict[str, list[float]]:
    """The values ``write_sequences`` stored; a missing or unreadable file is a one-line ValueError."""
    path = Path(run_dir) / relative
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"per-sequence values {path} are missing (was the run copied without sequences/?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"per-sequence values {path} are not readable JSON: {error}") from None
    if not isinstance(values, dict) or not all(isinstance(v, list) for v in values.values()):
        raise ValueError(f"per-sequence values {path} must map names to lists of numbers")
    return values
