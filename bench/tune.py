"""``bench tune``: each method's learning rate, picked by held-out loss over a grid.

One shared learning rate measures how well each method happens to suit it, not the method. ``bench
tune`` trains every (method, LR) pair of a grid for a short budget from one activation stream (every
pair sees the same batches in the same order), scores each on held-out validation tokens the training
never saw and no reported metric uses (the eval-split tokens after those ``bench run`` scores on), and
picks per method the LR whose held-out NMSE is lowest. A diverged pair scores +inf, so it is never
chosen. The result is written as JSON with the grid, every score and the command that regenerates it,
and printed as the ``--method-lr`` value to pass to ``bench run`` (the presets carry values found
this way).
"""
from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import methods
from bench.activations import shuffled_batches
from bench.config import RunConfig
from bench.eval_set import heldout_activations, validation_contexts
from bench.evaluate import reconstruction_metrics
from bench.logs import MetricsSink, note, progress
from bench.results import atomic_write_text
from bench.run_context import load_run
from bench.train import OptimiserSettings, build_cell, train_cells
from bench.training_source import training_source

DEFAULT_GRID = (1e-4, 3e-4, 1e-3, 3e-3)


@dataclass
class TunedMethod:
    method: str
    k: int
    grid: list[float]
    heldout_nmse: list[float]  # one per grid point; inf where training diverged
    chosen_lr: float


@dataclass
class Tuning:
    layer: int  # the layer tuned: the model's middle one when --layer is not given
    methods: list[TunedMethod]


def choose_lr(grid: list[float], losses: list[float]) -> float:
    """The grid point with the lowest held-out loss (the smaller LR on a tie); refuses if all diverged."""
    finite = [(loss, lr) for lr, loss in zip(grid, losses) if math.isfinite(loss)]
    if not finite:
        raise ValueError(f"every learning rate of the grid {grid} diverged; try smaller ones")
    return min(finite)[1]


def tune_learning_rates(cfg: RunConfig, grid: list[float], k: int, tokens: int) -> Tuning:
    """Train each (method, LR) of ``grid`` on ``tokens`` tokens at sparsity ``k``; pick per method."""
    if not grid or any(not (math.isfinite(lr) and lr > 0) for lr in grid):
        raise ValueError(f"--grid must be learning rates > 0, got {grid}")
    names = methods.expand_method_names(cfg.methods)
    ctx = load_run(cfg, Path(cfg.results_dir) / "tune", MetricsSink(False, "", "", {}), lambda: None)
    x, y = heldout_activations(ctx, validation_contexts(ctx))  # not the tokens the run reports on
    cells = [build_cell(m, ctx.spec, k, cfg.expansion, OptimiserSettings(lr=lr, warmup_steps=cfg.warmup_steps),
                        cfg.seed, ctx.device, ctx.autocast) for m in names for lr in grid]
    source, _ = training_source(ctx, 0)
    batches = shuffled_batches(source, tokens, cfg.batch_size, cfg.buffer_tokens, cfg.seed, ctx.device)
    with progress(f"tuning {len(names)} methods x {len(grid)} learning rates", tokens) as bar:
        train_cells(cells, batches, lambda n, _: bar.update(n), note)
    results = []
    for i, method in enumerate(names):
        group = cells[i * len(grid):(i + 1) * len(grid)]
        losses = [reconstruction_metrics(c.layer, x, y).nmse if c.status == "ok" else math.inf for c in group]
        results.append(TunedMethod(method, k, list(grid), losses, choose_lr(list(grid), losses)))
    return Tuning(ctx.layer, results)


def method_lr_flag(results: list[TunedMethod]) -> str:
    """The ``--method-lr`` value that applies the tuned learning rates."""
    return ",".join(f"{r.method}={r.chosen_lr:g}" for r in results)


def write_tuning(tuning: Tuning, cfg: RunConfig, tokens: int, path: Path) -> Path:
    results = tuning.methods
    record = {"command": "bench " + shlex.join(sys.argv[1:]), "model": cfg.model, "layer": tuning.layer,
              "dataset": cfg.dataset, "tokens": tokens, "scored_on": "validation: the eval_tokens held-out tokens after those bench run reports on",
              "eval_tokens": cfg.eval_tokens, "batch_size": cfg.batch_size, "seed": cfg.seed,
              "method_lr": method_lr_flag(results), "methods": [asdict(r) for r in results]}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def format_tuning(results: list[TunedMethod]) -> str:
    grid = results[0].grid
    lines = ["held-out NMSE after tuning (lowest per method marked *):",
             "method".ljust(16) + "".join(f"{lr:>11g}" for lr in grid)]
    for r in results:
        cells = [f"{loss:.4f}{'*' if lr == r.chosen_lr else ' '}" if math.isfinite(loss) else "diverged "
                 for lr, loss in zip(r.grid, r.heldout_nmse)]
        lines.append(r.method.ljust(16) + "".join(f"{c:>11}" for c in cells))
    lines.append(f"bench run --method-lr {method_lr_flag(results)}")
    return "\n".join(lines)
