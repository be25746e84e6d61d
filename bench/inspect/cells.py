"""Find one trained cell of a run (``METHOD-K``) and load what reading it needs: its row,
the LM it was trained on, and the sparse layer from its checkpoint.

``bench inspect`` and ``bench steer`` both start here, so they agree on what a cell name means.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.devices import resolve_device, resolve_dtype
from bench.models import LoadedModel, check_layer, load_model
from bench.results import RunStore
from methods.base import SparseLayer
from methods.checkpoint import load_layer

_CELL_NAME = re.compile(r"^(?P<method>.+)-k?(?P<k>\d+)$")


class CellError(ValueError):
    """A cell name, run directory or unit list that cannot be used."""


def parse_cell_name(cell: str) -> tuple[str, int]:
    """``"mxd-32"`` (or the checkpoint spelling ``"mxd-k32"``) -> ("mxd", 32)."""
    match = _CELL_NAME.match(cell.strip())
    if not match:
        raise CellError(f"cell {cell!r} is not METHOD-K (e.g. tc-32, mxd-k64)")
    return match["method"], int(match["k"])


def cell_label(row: dict[str, Any]) -> str:
    """The canonical name of a row's cell, used for output file names: ``<method>-<k>``."""
    return f"{row['method']}-{row['k']}"


def find_cell(run_dir: Path, cell: str) -> dict[str, Any]:
    """The finished row of ``cell`` in ``run_dir/cells.jsonl``; a clear error when there is not exactly one."""
    method, k = parse_cell_name(cell)
    store = RunStore(Path(run_dir))
    if not store.rows_path.is_file():
        raise CellError(f"{run_dir} has no {store.rows_path.name}: not a run directory (results/<run>)")
    usable = [r for r in store.rows() if r.get("status") == "ok" and r.get("checkpoint")]
    matches = [r for r in usable if r.get("method") == method and r.get("k") == k]
    if not matches:
        known = ", ".join(sorted({cell_label(r) for r in usable})) or "none"
        raise CellError(f"cell {cell!r} is not a finished cell with a checkpoint in {run_dir} (cells: {known})")
    if len(matches) > 1:
        sites = ", ".join(f"{r.get('model')} layer {r.get('layer')}" for r in matches)
        raise CellError(f"cell {cell!r} matches {len(matches)} rows in {run_dir} ({sites}); "
                        "inspect runs with one model and layer")
    return matches[0]


@dataclass
class LoadedCell:
    row: dict[str, Any]
    label: str
    lm: LoadedModel
    layer_index: int
    layer: SparseLayer
    device: torch.device


def load_cell(run_dir: Path, cell: str, device_name: str = "auto") -> LoadedCell:
    """Load the LM (in the dtype ``auto`` gives on ``device``) and the cell's trained layer (fp32)."""
    row = find_cell(Path(run_dir), cell)
    checkpoint = Path(run_dir) / row["checkpoint"]
    if not checkpoint.is_dir():
        raise CellError(f"checkpoint {checkpoint} of cell {cell!r} is missing")
    device = resolve_device(device_name)
    lm = load_model(row["model"], device=str(device), dtype=resolve_dtype("auto", device))
    layer_index = check_layer(lm.model, int(row["layer"]))
    layer = load_layer(checkpoint, device=device).eval().requires_grad_(False)
    return LoadedCell(row, cell_label(row), lm, layer_index, layer, device)


def check_units(units: list[int], n_units: int) -> list[int]:
    """Units must exist in the layer; duplicates are dropped, order kept."""
    bad = [u for u in units if not 0 <= u < n_units]
    if bad:
        raise CellError(f"unit {bad[0]} does not exist: this layer has units 0..{n_units - 1}")
    return list(dict.fromkeys(units))
