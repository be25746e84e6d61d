"""The evaluate stage: a trained cell -> its row (NMSE, L0, dead units, spliced CE, tasks), with the
checkpoint saved before the row that points at it."""
from __future__ import annotations

import hashlib
import json
import time

from bench.eval_set import EvalSet
from bench.evaluate import compare_ce, paired_stderr, reconstruction_metrics
from bench.logs import LOGGER, note, progress
from bench.row_checks import dead_units_warning
from bench.metrics import WANDB, shown_in
from bench.models import mlp_module
from bench.rows import cell_row
from bench.run_context import RunContext
from bench.sequence_store import write_sequences
from bench.splice import SplicedMLP, spliced
from bench.tasks import evaluate_tasks
from bench.train import Cell
from methods.base import SparseLayer
from methods.checkpoint import save_layer


def score_layer(ctx: RunContext, layer: SparseLayer, eval_set: EvalSet, row: dict) -> dict:
    """Every metric of a sparse layer spliced into the run's LM (a trained cell or a loaded dictionary),
    added to ``row``; per-sequence CE and KL are stored beside the rows."""
    start = time.perf_counter()
    row.update(vars(reconstruction_metrics(layer, eval_set.x, eval_set.y)))
    scores = eval_set.ce.score(SplicedMLP(layer, mlp_module(ctx.model, ctx.layer)))
    row.update(vars(compare_ce(eval_set.clean, scores["ce"], eval_set.zero)))
    row["kl"], row["kl_stderr"] = scores["kl"].mean().item(), paired_stderr(scores["kl"])
    row.update(eval_set.document_stats(scores))  # ΔCE and KL stderrs clustered by document; document counts
    row["baseline_sequences"] = eval_set.baseline_file
    row["sequences"] = write_sequences(ctx.run_dir, cell_file_name(row), scores)
    if ctx.base_row.get("task_names"):
        with spliced(ctx.model, ctx.layer, layer):
            row["tasks"] = evaluate_tasks(ctx.model, ctx.tokenizer, ctx.base_row["task_names"],
                                          ctx.base_row.get("task_limit"))
    row["eval_time_s"] = round(time.perf_counter() - start, 2)
    return row


def evaluate_cell(ctx: RunContext, cell: Cell, eval_set: EvalSet) -> dict:
    """The cell's row; a failed cell's row carries its error and no metrics."""
    row = cell_row(cell, ctx.base_row)
    return score_layer(ctx, cell.layer, eval_set, row) if cell.status == "ok" else row


def cell_file_name(row: dict) -> str:
    """A cell's file name in the run: method, K, and the seed and budget when they vary within runs."""
    name = f"{row['method']}-k{row['k']}-L{row['layer']}-t{row['train_tokens']}-s{row['seed']}"
    if row.get("source"):  # a loaded dictionary: its source tells two of the same kind apart
        name += "-" + hashlib.sha256(str(row["source"]).encode()).hexdigest()[:8]
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)


def checkpoint_name(method: str, k: int, seed: int) -> str:
    """A trained cell's checkpoint directory: ``<method>-k<K>``, plus ``-s<seed>`` for seeds other than 0,
    so the cells of ``--seeds 0,1,2`` keep one checkpoint each (seed 0 keeps the name older runs used)."""
    return f"{method}-k{k}" if seed == 0 else f"{method}-k{k}-s{seed}"


def finish_cell(ctx: RunContext, cell: Cell, eval_set: EvalSet) -> dict:
    """Evaluate a trained cell, save its checkpoint and log its row (which the caller stores)."""
    row = evaluate_cell(ctx, cell, eval_set)
    if cell.status == "ok":  # the checkpoint exists before the row that points at it
        name = checkpoint_name(cell.method, cell.k, ctx.cfg.seed)
        try:
            save_layer(cell.layer, ctx.run_dir / "checkpoints" / name)
            row["checkpoint"] = f"checkpoints/{name}"
        except OSError as error:  # a full disk loses the weights, not the measured row
            row["checkpoint"], row["checkpoint_error"] = None, f"{error.strerror or error}"
            note(f"cell {cell.method} K={cell.k}: its checkpoint could not be saved ({error.strerror or error}); "
                 f"the row is kept without it")
    LOGGER.info("cell %s", json.dumps(row, sort_keys=True, default=str))
    ctx.metrics.log({f"{spec.name}/{cell.method}/k{cell.k}": row[spec.name] for spec in shown_in(WANDB)
                     if spec.name in row})
    if cell.status != "ok":
        note(f"cell {cell.method} K={cell.k} failed: {cell.error}")
    warning = dead_units_warning(row)
    if warning:
        note(warning)
    return row


def evaluate_group(ctx: RunContext, cells: list[Cell], eval_set: EvalSet) -> None:
    """Evaluate and store each trained cell of a group, one row at a time."""
    with progress("evaluating cells", len(cells)) as bar:
        for cell in cells:
            ctx.store.append(finish_cell(ctx, cell, eval_set))
            ctx.on_saved()
            bar.update(1)
