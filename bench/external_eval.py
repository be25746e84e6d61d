"""``bench eval --load``: dictionaries trained elsewhere (SAELens, sparsify, our own exports), scored
with exactly the evaluation a trained cell gets, as rows of a run beside trained cells.

The converted layer is saved in the run as a checkpoint like a trained cell's (``checkpoints/<name>``:
safetensors weights and a JSON config, never a pickle), and the row names it, so every command that
reads saved cells (``bench probe``, ``bench inspect``, ``bench steer``, ``bench eval --tasks``) reads it
the same way, with no need for the original source (a hub repository, a folder that may move).

A TopK dictionary keeps its K. A JumpReLU or ReLU dictionary has no K: its row's ``k`` is its measured
L0 on the eval tokens, rounded (``k_from_l0: true``), so it sits on the figures' K axis where its
sparsity puts it.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.cell_eval import cell_file_name, score_layer
from bench.config import RunConfig
from bench.eval_set import build_eval_set
from bench.interop import load_dictionary, splice_site
from bench.logs import LOGGER, MetricsSink, note, run_log
from bench.results import timestamp
from bench.rows import settings_digest
from bench.run_context import load_run
from bench.runlock import RunLock
from bench.validation import check_run_inputs
from methods.base import SparseLayer
from methods.checkpoint import save_layer


def evaluate_external(cfg: RunConfig, sources: list[str], norm_scaling_factor: float | None = None) -> list[dict]:
    """Score each dictionary at ``sources`` on ``cfg``'s model, layer and eval tokens; rows are stored
    in ``cfg``'s run directory (which may hold trained cells too). Returns the run's rows."""
    run_dir = Path(cfg.results_dir) / cfg.run_name_or_default()
    check_run_inputs(cfg, run_dir)
    with RunLock(run_dir), run_log(run_dir):
        ctx = load_run(cfg, run_dir, MetricsSink(False, "", "", {}), lambda: None)
        site = splice_site(ctx.model, ctx.layer)
        loaded = [load_dictionary(source, site, norm_scaling_factor=norm_scaling_factor) for source in sources]
        eval_set = build_eval_set(ctx)
        for dictionary in loaded:
            layer = dictionary.layer.to(ctx.device).eval()
            row = {**ctx.base_row, **dictionary.row_fields(), "status": "ok", "error": None, "checkpoint": None,
                   "train_tokens": None, "trained_tokens": 0, "timestamp": timestamp()}
            row = score_layer(ctx, layer, eval_set, row)
            if row["k"] is None:
                row["k"], row["k_from_l0"] = max(1, round(row["l0"])), True
            row["settings_digest"] = settings_digest(row)
            row.update(save_converted(ctx.run_dir, layer, row))
            LOGGER.info("external %s", json.dumps(row, sort_keys=True, default=str))
            ctx.store.append(row)
            note(f"{dictionary.method} from {dictionary.source}: ΔCE {row['delta_ce']:+.4f}, NMSE {row['nmse']:.3f}")
        return ctx.store.rows()


def save_converted(run_dir: Path, layer: SparseLayer, row: dict) -> dict:
    """Save the converted layer under ``run_dir/checkpoints``; the row's ``checkpoint`` fields. A full disk
    loses the weights, not the measured row (as for a trained cell)."""
    name = f"checkpoints/{cell_file_name(row)}"
    try:
        save_layer(layer, run_dir / name)
    except OSError as error:
        note(f"{row['method']} from {row['source']}: its checkpoint could not be saved ({error.strerror or error})")
        return {"checkpoint": None, "checkpoint_error": f"{error.strerror or error}"}
    return {"checkpoint": name}
