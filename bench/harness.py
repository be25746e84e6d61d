"""The one path through the suite: model -> data -> activations -> cells -> metrics -> rows.

``run_benchmark`` trains every requested (method, K) cell of one model and layer together
from one activation stream, evaluates each on held-out tokens and appends a row per cell.
Finished cells of the same run are skipped, so re-running a command resumes it.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

import methods
from bench import data as data_mod
from bench.activation_cache import CacheKey, CacheWriter, StaleCache, open_cache, read_chunks
from bench.activations import collect_all, lm_chunks, shuffled_batches
from bench.config import RunConfig
from bench.devices import hardware_description, precision_label, resolve_device, resolve_dtype, resolve_precision
from bench.evaluate import CrossEntropyEvaluator, compare_ce, reconstruction_metrics
from bench.models import check_layer, check_layer_in_config, default_layer, layer_spec, load_model, mlp_module
from bench.grouping import cell_bytes, memory_budget, plan_groups
from bench.logs import LOGGER, MetricsSink, note, run_log
from bench.runlock import RunLock
from bench.results import CELL_KEY, RunStore, cell_key, package_versions, timestamp
from bench.splice import SplicedMLP, ZeroMLP, spliced, zero_ablated
from bench.tasks import evaluate_tasks, resolve_tasks
from bench.train import Cell, OptimiserSettings, build_cell, train_cells
from bench.training_state import load_progress, restore_cells, save_training_state
from methods.base import LayerSpec
from methods.checkpoint import load_layer, save_layer


@dataclass
class Baselines:
    clean: torch.Tensor
    zero: torch.Tensor


def _nothing() -> None:
    """The default ``on_saved`` hook."""


def run_benchmark(cfg: RunConfig, on_saved: Callable[[], None] = _nothing) -> list[dict]:
    """Train and evaluate every requested cell; returns the rows of this run directory.

    ``on_saved`` runs after each training-state checkpoint and each stored row: a run whose
    results live at a URL uploads its local copy then (``bench/storage.py``).
    """
    method_names = methods.expand_method_names(cfg.methods)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    run_dir = Path(cfg.results_dir) / (cfg.run_name or default_run_name(cfg))
    check_writable(run_dir)
    check_dataset(cfg.dataset)
    if cfg.layer is not None:
        check_layer_in_config(cfg.model, cfg.layer, cfg.trust_remote_code)
    created = not run_dir.exists()
    try:
        with RunLock(run_dir), run_log(run_dir):
            LOGGER.info("bench run %s", json.dumps(cfg.to_dict(), sort_keys=True))
            metrics = MetricsSink(cfg.wandb, "mxbench", run_dir.name, cfg.to_dict())
            try:
                return _run_locked(cfg, method_names, device, dtype, run_dir, metrics, on_saved)
            finally:
                metrics.finish()
    except ValueError:
        # Bad input found only once the model was loaded: leave nothing behind that we made.
        if created and not (run_dir / "cells.jsonl").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _run_locked(cfg: RunConfig, method_names: list[str], device: torch.device, dtype: torch.dtype,
                run_dir: Path, metrics: MetricsSink, on_saved: Callable[[], None]) -> list[dict]:
    store = RunStore(run_dir)
    loaded = load_model(cfg.model, device=str(device), dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    model, tokenizer = loaded.model, loaded.tokenizer
    layer = check_layer(model, cfg.layer if cfg.layer is not None else default_layer(model))
    spec = layer_spec(model, layer)
    base_row = settings_row(cfg, loaded.model_id, layer, device, dtype)

    finished = {cell_key(row): row for row in store.rows() if row.get("status") == "ok"}
    requested = [(m, k, cell_key({**base_row, "method": m, "k": k})) for m in method_names for k in cfg.ks]
    wanted = [(m, k) for m, k, key in requested if key not in finished]
    # Finished cells that lack the task scores this run asks for are scored from their checkpoints.
    unscored = [finished[key] for _, _, key in requested
                if key in finished and lacks_tasks(finished[key], base_row["task_names"], cfg.task_limit)]
    for row in [r for r in unscored if not (r.get("checkpoint") and (run_dir / r["checkpoint"]).is_dir())]:
        note(f"cell {row['method']} K={row['k']} has no checkpoint to score tasks with; delete its row to retrain it")
        unscored.remove(row)
    if not wanted and not unscored:
        note(f"all {len(requested)} cells of {run_dir} are finished; nothing to do")
        return store.rows()
    for method, k in wanted:  # constructor checks (K <= units, ...) now, on no memory at all
        with torch.device("meta"):
            methods.create(method, spec, k=k, expansion=cfg.expansion)
    if cfg.tasks:
        note(f"scoring {', '.join(base_row['task_names'])} on the clean and the zero-ablated model")
        base_row["tasks_clean"], base_row["tasks_zero"] = task_baselines(model, tokenizer, layer,
                                                                         base_row["task_names"], cfg.task_limit)
    if unscored:
        score_saved_cells(run_dir, store, unscored, model, tokenizer, layer, base_row, device)
        on_saved()
    if not wanted:
        return store.rows()
    groups = plan_cell_groups(cfg, spec, wanted, device)

    eval_contexts = data_mod.take_contexts(
        data_mod.pack_contexts(data_mod.iter_documents(cfg.dataset, "eval"), tokenizer, cfg.context_length),
        max(cfg.eval_tokens, cfg.ce_tokens), cfg.context_length, split="eval")
    n_eval = -(-cfg.eval_tokens // cfg.context_length)
    n_ce = -(-cfg.ce_tokens // cfg.context_length)
    with progress("collecting eval activations", eval_contexts[:n_eval].numel()) as bar:
        x_eval, y_eval = collect_all(model, layer, eval_contexts[:n_eval], cfg.lm_batch_size, bar.update)
    with progress("caching the eval prefix and clean/zero CE", 3 * eval_contexts[:n_ce].numel()) as bar:
        evaluator = CrossEntropyEvaluator(model, layer, eval_contexts[:n_ce], cfg.ce_batch_size, bar.update)
        bar.update(eval_contexts[:n_ce].numel())
        baselines = Baselines(evaluator.per_sequence_ce(None), evaluator.per_sequence_ce(ZeroMLP()))

    settings = OptimiserSettings(lr=cfg.lr, warmup_steps=cfg.warmup_steps)
    autocast = resolve_precision(cfg.precision, device)
    for group in groups:
        cells = [build_cell(m, spec, k, cfg.expansion, settings, cfg.seed, device, autocast, cfg.compile)
                 for m, k in group]
        train_with_checkpoints(cfg, model, tokenizer, layer, loaded.model_id, cells, run_dir / "checkpoints" / "_training",
                               {k: base_row[k] for k in CELL_KEY if k not in ("method", "k")}, device, metrics,
                               on_saved)
        with progress("evaluating cells", len(cells)) as bar:
            for cell in cells:
                store.append(finish_cell(cell, run_dir, base_row, spec, model, tokenizer, x_eval, y_eval, evaluator,
                                         baselines, metrics))
                on_saved()
                bar.update(1)
        del cells  # free this group's memory before the next one
    shutil.rmtree(run_dir / "checkpoints" / "_training", ignore_errors=True)
    on_saved()
    return store.rows()


class TokenCounter:
    """Counts the activation rows drawn from a source, so a resume knows where to continue."""

    def __init__(self, chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], start: int = 0) -> None:
        self._chunks = chunks
        self.tokens = start

    def __iter__(self):
        return self

    def __next__(self):
        x, y = next(self._chunks)
        self.tokens += len(x)
        return x, y


def _teed(chunks, writer: CacheWriter):
    for x, y in chunks:
        writer.add(x, y)
        yield x, y


def training_source(cfg: RunConfig, model, tokenizer, layer: int, model_id: str,
                    drawn: int) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], CacheWriter | None]:
    """(x, y) chunks in document order from the activation cache when it is usable, else from
    the LM (filling the cache on the way when one was asked for). ``drawn`` rows are skipped."""
    def live():
        stream = data_mod.pack_contexts(data_mod.iter_documents(cfg.dataset, "train"), tokenizer, cfg.context_length)
        contexts = itertools.islice(stream, drawn // cfg.context_length, None)
        return lm_chunks(model, layer, contexts, cfg.lm_batch_size)

    if not cfg.activation_cache:
        return live(), None
    key = CacheKey(model_id, layer, cfg.dataset, "train", cfg.context_length,
                   f"{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}", cfg.activation_cache_dtype)
    directory = key.directory(Path(cfg.activation_cache))
    try:
        manifest = open_cache(directory, key, cfg.train_tokens)
    except StaleCache as reason:
        if drawn:
            note(f"{reason}; this resumed run reads the LM without caching")
            return live(), None
        note(f"{reason}; building it during this run")
        writer = CacheWriter(directory, key)
        return _teed(live(), writer), writer
    note(f"reading activations from the cache at {directory}")
    return read_chunks(directory, manifest, skip_tokens=drawn), None


def train_with_checkpoints(cfg: RunConfig, model, tokenizer, layer: int, model_id: str, cells: list[Cell],
                           state_dir: Path, settings_key: dict, device: torch.device, metrics: MetricsSink,
                           on_saved: Callable[[], None] = _nothing) -> None:
    """Train all cells from one stream, resuming from and saving to ``state_dir``."""
    served = drawn = 0
    saved = load_progress(state_dir, cells, settings_key)
    if saved:
        restore_cells(state_dir, cells, saved)
        served, drawn = saved["tokens_served"], saved["tokens_drawn"]
        note(f"resuming {len(cells)} cells at {served:,} of {cfg.train_tokens:,} tokens")
    source, writer = training_source(cfg, model, tokenizer, layer, model_id, drawn)
    counter = TokenCounter(source, start=drawn)
    batches = shuffled_batches(counter, cfg.train_tokens - served, cfg.batch_size, cfg.buffer_tokens,
                               cfg.seed + drawn, device)
    last_save = time.monotonic()
    with progress(f"training {len(cells)} cells", cfg.train_tokens) as bar:
        bar.update(served)

        def report(tokens: int, live: list[Cell]) -> None:
            nonlocal served, last_save
            served += tokens
            bar.update(tokens)
            bar.set_postfix_str(" ".join(f"{c.method}/{c.k}:{c.last_loss:.3f}" for c in live[:4]), refresh=False)
            metrics.log({f"loss/{c.method}/k{c.k}": c.last_loss for c in live}, step=served)
            if time.monotonic() - last_save >= cfg.checkpoint_minutes * 60:
                save_training_state(state_dir, cells, served, counter.tokens, settings_key)
                LOGGER.info("saved training state at %d tokens", served)
                on_saved()
                last_save = time.monotonic()

        try:
            train_cells(cells, batches, report, note)
        finally:  # also on Ctrl-C: keep the work done so far (each file is replaced atomically)
            save_training_state(state_dir, cells, served, counter.tokens, settings_key)
    if writer is not None and writer.tokens >= cfg.train_tokens:
        writer.finish()
        note(f"saved {writer.tokens:,} tokens of activations to the cache at {writer.directory}")


def task_baselines(model, tokenizer, layer: int, tasks: list[str], limit: int | None) -> tuple[dict, dict]:
    """Task scores of the clean model and of the model with layer ``layer``'s MLP zero-ablated."""
    clean = evaluate_tasks(model, tokenizer, tasks, limit)
    with zero_ablated(model, layer):
        zero = evaluate_tasks(model, tokenizer, tasks, limit)
    return clean, zero


def lacks_tasks(row: dict, task_names: list[str] | None, limit: int | None) -> bool:
    """The row has no scores for some of ``task_names`` at this example limit."""
    if not task_names:
        return False
    scored = row.get("tasks") or {}
    return row.get("task_limit") != limit or any(name not in scored for name in task_names)


def score_saved_cells(run_dir: Path, store: RunStore, rows: list[dict], model, tokenizer, layer: int,
                      baselines: dict, device: torch.device) -> None:
    """Add task scores to finished rows from their checkpoints; ``baselines`` holds ``task_names``,
    ``task_limit`` and the clean/zero-ablated scores (``tasks_clean``, ``tasks_zero``)."""
    tasks, limit = baselines["task_names"], baselines["task_limit"]
    with progress(f"tasks for {len(rows)} saved cells", len(rows)) as bar:
        for row in rows:
            trained = load_layer(run_dir / row["checkpoint"], device=device)
            with spliced(model, layer, trained):
                row["tasks"] = evaluate_tasks(model, tokenizer, tasks, limit)
            row.update({key: baselines[key] for key in ("task_names", "task_limit", "tasks_clean", "tasks_zero")})
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
            loaded = load_model(model_name, device=str(device), dtype=resolve_dtype("auto", device))
            clean, zero = task_baselines(loaded.model, loaded.tokenizer, layer, tasks, limit)
            baselines = {"task_names": tasks, "task_limit": limit, "tasks_clean": clean, "tasks_zero": zero}
            score_saved_cells(run_dir, store, group, loaded.model, loaded.tokenizer, layer, baselines, device)


def _by_model_and_layer(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["layer"]), []).append(row)
    return groups


def plan_cell_groups(cfg: RunConfig, spec: LayerSpec, wanted: list[tuple[str, int]],
                     device: torch.device) -> list[list[tuple[str, int]]]:
    """Cells that fit together train together; say so when they do not all fit."""
    budget = int(cfg.memory_budget_gb * 2**30) if cfg.memory_budget_gb else memory_budget(device)
    sizes = {(m, k): cell_bytes(m, spec, k, cfg.expansion, cfg.batch_size) for m, k in wanted}
    groups = plan_groups(wanted, sizes, budget)
    if len(groups) > 1:
        note(f"the {len(wanted)} cells need about {sum(sizes.values()) / 2**30:.1f} GiB together, more than the "
             f"{budget / 2**30:.1f} GiB budget on {device}: training them in {len(groups)} groups "
             f"(one LM pass over the training data each)")
    return groups


def finish_cell(cell: Cell, run_dir: Path, base_row: dict, spec: LayerSpec, model, tokenizer, x_eval, y_eval,
                evaluator: CrossEntropyEvaluator, baselines: Baselines, metrics: MetricsSink) -> dict:
    """Evaluate a trained cell, save its checkpoint, and log its row (which the caller stores)."""
    row = evaluate_cell(cell, base_row, spec, model, x_eval, y_eval, evaluator, baselines, tokenizer)
    if cell.status == "ok":  # the checkpoint exists before the row that points at it
        name = f"{cell.method}-k{cell.k}"
        save_layer(cell.layer, run_dir / "checkpoints" / name)
        row["checkpoint"] = f"checkpoints/{name}"
    LOGGER.info("cell %s", json.dumps(row, sort_keys=True, default=str))
    metrics.log({f"{k}/{cell.method}/k{cell.k}": row[k] for k in ("delta_ce", "nmse", "l0") if k in row})
    if cell.status != "ok":
        note(f"cell {cell.method} K={cell.k} failed: {cell.error}")
    return row


def evaluate_cell(cell: Cell, base_row: dict, spec: LayerSpec, model, x_eval, y_eval,
                  evaluator: CrossEntropyEvaluator, baselines: Baselines, tokenizer=None) -> dict:
    row = {**base_row, "method": cell.method, "k": cell.k, "status": cell.status, "error": cell.error,
           "n_params": cell.layer.n_params(), "n_units": cell.layer.n_units,
           "method_config": cell.layer.to_config()["config"], "train_steps": cell.steps, "trained_tokens": cell.tokens,
           "micro_batches": cell.micro_batches,
           "train_time_s": round(cell.train_time_s, 2), "final_train_loss": cell.last_loss,
           "timestamp": timestamp()}
    if cell.status != "ok":
        return row
    start = time.perf_counter()
    rec = reconstruction_metrics(cell.layer, x_eval, y_eval)
    spliced_ce = evaluator.per_sequence_ce(SplicedMLP(cell.layer, mlp_module(model, base_row["layer"])))
    ce = compare_ce(baselines.clean, spliced_ce, baselines.zero)
    row.update(vars(rec))
    row.update(vars(ce))
    if base_row.get("task_names"):
        with spliced(model, base_row["layer"], cell.layer):
            row["tasks"] = evaluate_tasks(model, tokenizer, base_row["task_names"], base_row.get("task_limit"))
    row["eval_time_s"] = round(time.perf_counter() - start, 2)
    return row


def check_writable(run_dir: Path) -> None:
    """Fail before any heavy work if results cannot be written (creating nothing)."""
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"results directory {run_dir} is not writable ({existing} is not a writable directory)")


def check_dataset(dataset: str) -> None:
    """A name that looks like a local path must exist (hub names are checked when streamed)."""
    looks_local = dataset.startswith((".", "/", "~")) or Path(dataset).suffix in (".jsonl", ".json", ".txt", ".parquet")
    if looks_local and not Path(dataset).expanduser().exists():
        raise ValueError(f"dataset {dataset!r} does not exist; give wiki-offline, a hub dataset name, or a local file")


def settings_row(cfg: RunConfig, model_id: str, layer: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Everything a row needs to be read on its own: settings, token counts, machine, versions."""
    return {
        "run": cfg.run_name or default_run_name(cfg), "model": cfg.model, "model_id": model_id, "layer": layer,
        "dataset": cfg.dataset, "preset": cfg.preset, "expansion": cfg.expansion,
        "train_tokens": cfg.train_tokens, "eval_tokens": cfg.eval_tokens,
        "ce_tokens": -(-cfg.ce_tokens // cfg.context_length) * (cfg.context_length - 1),
        "context_length": cfg.context_length, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "warmup_steps": cfg.warmup_steps, "seed": cfg.seed, "device": str(device), "lm_dtype": str(dtype),
        "precision": precision_label(resolve_precision(cfg.precision, device), device), "compile": cfg.compile,
        "activation_cache_dtype": cfg.activation_cache_dtype if cfg.activation_cache else None,
        "task_names": resolve_tasks(cfg.tasks) if cfg.tasks else None, "task_limit": cfg.task_limit,
        "hardware": hardware_description(device), "versions": package_versions(),
    }


def default_run_name(cfg: RunConfig) -> str:
    model = Path(cfg.model).name if Path(cfg.model).exists() else cfg.model.replace("/", "_")
    return f"{model}-{cfg.preset}"


def progress(description: str, total: int) -> tqdm:
    return tqdm(total=total, desc=description, unit="tok" if total > 1000 else "it", unit_scale=True,
                dynamic_ncols=True, leave=True)
