"""What a result row holds besides its metrics: the run's settings, machine and versions, and
each cell's training record, so that a row can be read on its own."""
from __future__ import annotations

import hashlib
import json

import torch

from bench.config import RunConfig
from bench.data import PACKING
from bench.devices import hardware_description, precision_label
from bench.results import CELL_KEY, package_versions, timestamp
from bench.tasks import resolve_tasks
from bench.train import Cell
from bench.unit_usage import usage_fields

# Settings beyond the cell key (results.CELL_KEY: model, layer, method, K, budget, seed, dataset)
# that change a cell's numbers. A finished cell counts as done only for the same values; resume
# state is matched on them too. Cells whose CELL_KEY differs may share a run directory (a sweep
# over seeds or token budgets); cells that differ only here may not.
IDENTITY_SETTINGS = ("model_id", "eval_tokens", "ce_tokens", "context_length", "batch_size", "buffer_tokens", "lr",
                     "warmup_steps", "lm_dtype", "precision", "activation_cache_dtype", "compile", "method_config",
                     "random_weights",
                     "loss", "packing", "aux_k_coef", "aux_k", "dead_window")


def identity(row: dict) -> dict:
    """The settings that identify a cell's result (CELL_KEY and IDENTITY_SETTINGS)."""
    return {key: row.get(key) for key in (*CELL_KEY, *IDENTITY_SETTINGS)}


def settings_digest(row: dict) -> str:
    """A short hash of ``identity(row)``, stored in each row."""
    text = json.dumps(identity(row), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# What rows made before these settings existed were trained with.
LEGACY_VALUES = {"loss": "nmse", "packing": "bos-per-document", "aux_k_coef": 0.0, "random_weights": False}


def first_difference(old: dict, new: dict) -> str | None:
    """The first identity setting two rows both record (or that an old row implies) with different
    values, as 'name old -> new'."""
    for key in IDENTITY_SETTINGS:
        if key not in old and key in LEGACY_VALUES:
            old = {**old, key: LEGACY_VALUES[key]}
        if key in old and key in new and old[key] != new[key]:
            return f"{key} {old[key]!r} -> {new[key]!r}"
    return None


def settings_row(cfg: RunConfig, model_id: str, layer: int, device: torch.device, dtype: torch.dtype,
                 autocast: torch.dtype | None) -> dict:
    """Everything every row of a run carries: settings, token counts, machine, versions."""
    return {
        "run": cfg.run_name_or_default(), "model": cfg.model, "model_id": model_id, "layer": layer,
        "dataset": cfg.dataset, "preset": cfg.preset, "expansion": cfg.expansion,
        "train_tokens": cfg.train_tokens, "eval_tokens": cfg.eval_tokens,
        "ce_tokens": -(-cfg.ce_tokens // cfg.context_length) * (cfg.context_length - 1),
        "context_length": cfg.context_length, "batch_size": cfg.batch_size, "buffer_tokens": cfg.buffer_tokens,
        "lr": cfg.lr, "method_lr": cfg.method_lr,
        "warmup_steps": cfg.warmup_steps, "seed": cfg.seed, "device": str(device), "lm_dtype": str(dtype),
        "precision": precision_label(autocast, device), "compile": cfg.compile, "loss": cfg.loss,
        "packing": PACKING, "aux_k_coef": cfg.aux_k_coef,
        "aux_k": cfg.aux_k if cfg.aux_k_coef > 0 else None,  # AuxK's settings only where it is on
        "dead_window": cfg.dead_window if cfg.aux_k_coef > 0 else None,
        "activation_cache_dtype": cfg.activation_cache_dtype if cfg.activation_cache else None,
        "task_names": resolve_tasks(cfg.tasks) if cfg.tasks else None, "task_limit": cfg.task_limit,
        "hardware": hardware_description(device), "versions": package_versions(),
        "random_weights": cfg.random_weights,
    }


def cell_row(cell: Cell, base_row: dict) -> dict:
    """A trained cell's row before evaluation: its identity, size and training record."""
    row = {**base_row, "method": cell.method, "k": cell.k, "status": cell.status, "error": cell.error,
           "n_params": cell.layer.n_params(), "n_units": cell.layer.n_units,
           "method_config": cell.layer.to_config()["config"], "train_steps": cell.steps, "trained_tokens": cell.tokens,
           "micro_batches": cell.micro_batches, "resumed_at_tokens": cell.resumed_at_tokens, "train_time_s": round(cell.train_time_s, 2),
           "final_train_loss": cell.last_loss, "timestamp": timestamp()}
    row.update(usage_fields(cell.selection_counts, int(cell.counted_tokens), cell.tokens))  # never selected in training
    if cell.aux.coef > 0:
        row["final_aux_loss"] = cell.last_aux_loss
    row["lr"] = cell.optimiser.param_groups[0]["initial_lr"]  # the cell's own (--method-lr), not the run's --lr
    row["settings_digest"] = settings_digest(row)
    return row
