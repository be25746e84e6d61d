"""The one path through the suite, read top to bottom as its stages:

    load (run_context) -> plan (run_plan) -> held-out data and activations (eval_set)
    -> per memory group: train (training_run) -> evaluate (cell_eval) -> rows (results)

``run_benchmark`` trains every requested (method, K) cell of one model and layer together from one
activation stream, evaluates each on held-out tokens and appends a row per cell. Finished cells of
the same run are skipped, so re-running a command resumes it. Only the CLI and the executors call
this module; each stage lives in its own module and never imports it back.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import methods
from bench.cell_eval import evaluate_group
from bench.config import RunConfig
from bench.eval_set import build_eval_set
from bench.grouping import check_cells_fit_the_model, check_run_buffers, plan_run_groups
from bench.logs import LOGGER, MetricsSink, note, run_log
from bench.models import check_layer_in_config
from bench.rescore import score_saved_cells, task_baselines
from bench.run_context import RunContext, load_run
from bench.run_plan import plan_run
from bench.runlock import RunLock
from bench.training_run import train_group
from bench.training_source import check_training_split
from bench.validation import check_run_inputs


def _nothing() -> None:
    """The default ``on_saved`` hook."""


def run_benchmark(cfg: RunConfig, on_saved: Callable[[], None] = _nothing) -> list[dict]:
    """Train and evaluate every requested cell; returns the rows of this run directory.

    ``on_saved`` runs after each training-state checkpoint and each stored row: a run whose
    results live at a URL uploads its local copy then (``bench/storage.py``).
    """
    method_names = methods.expand_method_names(cfg.methods)
    run_dir = Path(cfg.results_dir) / cfg.run_name_or_default()
    check_run_inputs(cfg, run_dir)
    if cfg.layer is not None and not cfg.random_weights:  # a rehearsal's architecture may have no config here
        check_layer_in_config(cfg.model, cfg.layer, cfg.trust_remote_code)
    check_cells_fit_the_model(cfg.model, cfg.layer, [(m, k) for m in method_names for k in cfg.ks], cfg.expansion)
    made = _first_missing(run_dir)  # what this run creates, results directory included
    try:
        with RunLock(run_dir), run_log(run_dir):
            LOGGER.info("bench run %s", json.dumps(cfg.to_dict(), sort_keys=True))
            metrics = MetricsSink(cfg.wandb, "mxbench", run_dir.name, cfg.to_dict())
            try:
                return _run(load_run(cfg, run_dir, metrics, on_saved), method_names)
            finally:
                metrics.finish()
    except ValueError:
        # Bad input found only once the model was loaded: leave nothing behind that we made.
        if made is not None and not (run_dir / "cells.jsonl").exists():
            shutil.rmtree(made, ignore_errors=True)
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (None if it all exists)."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def _run(ctx: RunContext, method_names: list[str]) -> list[dict]:
    plan = plan_run(ctx, method_names)
    if plan.nothing_to_do:
        note(f"all {plan.requested} cells of {ctx.run_dir} are finished; nothing to do")
        return ctx.store.rows()
    cfg = ctx.cfg
    if cfg.tasks:  # unscored rows exist only when tasks were asked for
        note(f"scoring {', '.join(ctx.base_row['task_names'])} on the clean and the zero-ablated model")
        baselines = task_baselines(ctx.lm, ctx.layer, ctx.base_row["task_names"], cfg.task_limit)
        ctx.base_row.update(baselines.as_row())
        if plan.unscored:
            score_saved_cells(ctx.store, plan.unscored, ctx.lm, ctx.layer, baselines, ctx.device)
            ctx.on_saved()
    if not plan.wanted:
        return ctx.store.rows()
    check_run_buffers(ctx)  # a hopeless buffer setting fails before the held-out LM pass
    check_training_split(ctx)  # so does a --tokens larger than a local corpus
    eval_set = build_eval_set(ctx)
    groups = plan_run_groups(ctx, plan.wanted)  # counted once the eval tensors exist
    for index, group in enumerate(groups):
        cells = train_group(ctx, group, index)
        evaluate_group(ctx, cells, eval_set)
        del cells  # free this group's memory before the next one
    shutil.rmtree(ctx.training_dir, ignore_errors=True)
    ctx.on_saved()
    return ctx.store.rows()
