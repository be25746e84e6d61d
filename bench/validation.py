"""The one place run settings are checked, before any model is loaded.

``validate`` checks a RunConfig's values (types from RunConfig's annotations, ranges, names that
must exist); ``check_run_inputs`` checks the file system the run will touch. Bad input raises
``UsageError``: one line naming the setting, the value and what is allowed (exit code 2).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import methods
from bench.config import PRESETS, RunConfig, flag_name, parse_method_lr, setting_types
from bench.devices import check_device_name, resolve_device

POSITIVE_INTS = ("train_tokens", "eval_tokens", "ce_tokens", "batch_size", "expansion", "context_length",
                 "lm_batch_size", "ce_batch_size", "buffer_tokens", "aux_k", "dead_window")


class UsageError(ValueError):
    """Bad input from the user: printed as one line, exit code 2."""


def _type_ok(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == list[int]:
        return isinstance(value, list) and all(_type_ok(v, int) for v in value)
    if kind == list[str]:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)


def _kind_name(kind: Any) -> str:
    return {list[int]: "a list of integers", list[str]: "a list of names", bool: "true or false"}.get(
        kind, getattr(kind, "__name__", str(kind)))


def check_types(cfg: RunConfig) -> None:
    """Every setting has its field's type (a TOML file can hold anything)."""
    for name, (kind, optional) in setting_types().items():
        value = getattr(cfg, name)
        if value is None and optional:
            continue
        if not _type_ok(value, kind):
            raise UsageError(f"{flag_name(name)} must be {_kind_name(kind)}, got {value!r}")
        choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(RunConfig)}[name]
        if choices and value not in choices:
            raise UsageError(f"{flag_name(name)} must be one of {', '.join(choices)}, got {value!r}")


def check_ranges(cfg: RunConfig) -> None:
    for name in POSITIVE_INTS:
        if getattr(cfg, name) < 1:
            raise UsageError(f"{flag_name(name)} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.context_length < 2:
        raise UsageError(f"--context-length must be at least 2 (a token and its successor), got {cfg.context_length}")
    if not cfg.ks:
        raise UsageError("--k needs at least one K value")
    bad = [k for k in cfg.ks if k < 1]
    if bad:
        raise UsageError(f"--k values must be >= 1, got {bad[0]}")
    repeated = sorted({k for k in cfg.ks if cfg.ks.count(k) > 1})
    if repeated:
        raise UsageError(f"--k lists {repeated[0]} more than once; each K is one cell")
    if cfg.layer is not None and cfg.layer < 0:
        raise UsageError(f"--layer must be >= 0, got {cfg.layer}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UsageError(f"--lr must be a finite number > 0, got {cfg.lr}")
    for method, lr in parse_method_lr(cfg.method_lr).items():
        methods.get_method(method)
        if not (math.isfinite(lr) and lr > 0):
            raise UsageError(f"--method-lr {method}={lr} must be a finite number > 0")
    if cfg.warmup_steps < 0:
        raise UsageError(f"--warmup-steps must be >= 0, got {cfg.warmup_steps}")
    if not (math.isfinite(cfg.checkpoint_minutes) and cfg.checkpoint_minutes >= 0):
        raise UsageError(f"--checkpoint-minutes must be a finite number >= 0, got {cfg.checkpoint_minutes}")
    if cfg.memory_budget_gb is not None and not (math.isfinite(cfg.memory_budget_gb) and cfg.memory_budget_gb > 0):
        raise UsageError(f"--memory-budget-gb must be a finite number > 0, got {cfg.memory_budget_gb}")
    if cfg.task_limit is not None and cfg.task_limit < 1:
        raise UsageError(f"--task-limit must be a positive integer, got {cfg.task_limit}")
    if not (math.isfinite(cfg.aux_k_coef) and cfg.aux_k_coef >= 0):
        raise UsageError(f"--aux-k-coef must be a finite number >= 0 (0 turns AuxK off), got {cfg.aux_k_coef}")


def check_names(cfg: RunConfig) -> None:
    """Methods, tasks, preset and device that must exist; optional packages a setting needs."""
    if not cfg.methods:
        raise UsageError("--methods needs at least one method name (or 'all')")
    methods.expand_method_names(cfg.methods)
    if cfg.aux_k_coef > 0:
        lacking = [m for m in methods.expand_method_names(cfg.methods) if not methods.get_method(m).cls.supports_aux()]
        if lacking:
            raise UsageError(f"--aux-k-coef needs methods with an AuxK term (forward_with_aux); "
                             f"{', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} none")
    if cfg.preset not in PRESETS:
        raise UsageError(f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
    if cfg.tasks is not None:
        from bench.tasks import resolve_tasks

        resolve_tasks(cfg.tasks)
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise UsageError("--wandb needs the wandb package: pip install wandb")
    check_device_name(cfg.device)


def validate(cfg: RunConfig) -> None:
    """Cheap checks of every setting, before any model is loaded."""
    check_types(cfg)
    check_ranges(cfg)
    check_names(cfg)


def check_writable(directory: Path, what: str = "results directory") -> None:
    """Fail before any heavy work if ``directory`` cannot be created or written (creating nothing)."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {directory} is not writable ({existing} is not a writable directory)")


def check_dataset(dataset: str) -> None:
    """A name that looks like a local path must exist (hub names are checked when streamed)."""
    looks_local = dataset.startswith((".", "/", "~")) or Path(dataset).suffix in (".jsonl", ".json", ".txt", ".parquet")
    if looks_local and not Path(dataset).expanduser().exists():
        raise UsageError(f"dataset {dataset!r} does not exist; give wiki-offline, a hub dataset name, or a local file")


def check_run_inputs(cfg: RunConfig, run_dir: Path) -> None:
    """What the run reads and writes on this machine: the results directory, a local dataset, and
    the model (reachable, or in the cache; the embedded model's cache writable)."""
    from bench.models import check_model_available

    check_writable(run_dir)
    check_dataset(cfg.dataset)
    resolve_device(cfg.device)  # a GPU asked for must exist here, before the run directory is made
    if cfg.random_weights:  # built offline from the architecture: it needs a config, not weights
        from bench.model_shapes import model_config

        model_config(cfg.model)
    else:
        check_model_available(cfg.model)
