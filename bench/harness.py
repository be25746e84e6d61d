"""The one path through the suite: model -> data -> activations -> cells -> metrics -> rows.

``run_benchmark`` trains every requested (method, K) cell of one model and layer together
from one activation stream, evaluates each on held-out tokens and appends a row per cell.
Finished cells of the same run are skipped, so re-running a command resumes it.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import methods
from bench import data as data_mod
from bench.activations import collect_all, shuffled_batches
from bench.config import RunConfig
from bench.evaluate import CrossEntropyEvaluator, compare_ce, reconstruction_metrics
from bench.models import check_layer, check_layer_in_config, default_layer, layer_spec, load_model
from bench.results import RunStore, cell_key, hardware_description, package_versions, timestamp
from bench.splice import SplicedMLP, ZeroMLP
from bench.train import Cell, OptimiserSettings, build_cell, train_cells
from methods.base import LayerSpec


@dataclass
class Baselines:
    clean: torch.Tensor
    zero: torch.Tensor


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]


def expand_methods(requested: list[str]) -> list[str]:
    """``all`` means every registered method; otherwise the given names, checked."""
    names = methods.method_names() if requested == ["all"] else requested
    for name in names:
        methods.get_method(name)
    return names


def run_benchmark(cfg: RunConfig) -> list[dict]:
    """Train and evaluate every requested cell; returns the rows of this run directory."""
    method_names = expand_methods(cfg.methods)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    run_dir = Path(cfg.results_dir) / (cfg.run_name or default_run_name(cfg))
    store = RunStore(run_dir)

    if cfg.layer is not None:
        check_layer_in_config(cfg.model, cfg.layer)
    loaded = load_model(cfg.model, device=str(device), dtype=dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    layer = check_layer(model, cfg.layer if cfg.layer is not None else default_layer(model))
    spec = layer_spec(model, layer)
    base_row = settings_row(cfg, loaded.model_id, layer, device, dtype)

    finished = store.finished_keys()
    wanted = [(m, k) for m in method_names for k in cfg.ks
              if cell_key({**base_row, "method": m, "k": k}) not in finished]
    if not wanted:
        print(f"all {len(method_names) * len(cfg.ks)} cells of {run_dir} are finished; nothing to do", file=sys.stderr)
        return store.rows()
    settings = OptimiserSettings(lr=cfg.lr, warmup_steps=cfg.warmup_steps)
    cells = [build_cell(m, spec, k, cfg.expansion, settings, cfg.seed, device) for m, k in wanted]

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

    train_contexts = data_mod.pack_contexts(data_mod.iter_documents(cfg.dataset, "train"), tokenizer, cfg.context_length)
    batches = shuffled_batches(model, layer, train_contexts, cfg.train_tokens, cfg.batch_size, cfg.lm_batch_size,
                               cfg.buffer_tokens, cfg.seed, device)
    with progress(f"training {len(cells)} cells", cfg.train_tokens) as bar:
        def report(tokens: int, live: list[Cell]) -> None:
            bar.update(tokens)
            bar.set_postfix_str(" ".join(f"{c.method}/{c.k}:{c.last_loss:.3f}" for c in live[:4]), refresh=False)
        train_cells(cells, batches, report)

    with progress("evaluating cells", len(cells)) as bar:
        for cell in cells:
            store.append(evaluate_cell(cell, base_row, spec, model, x_eval, y_eval, evaluator, baselines))
            bar.update(1)
    return store.rows()


def evaluate_cell(cell: Cell, base_row: dict, spec: LayerSpec, model, x_eval, y_eval,
                  evaluator: CrossEntropyEvaluator, baselines: Baselines) -> dict:
    row = {**base_row, "method": cell.method, "k": cell.k, "status": cell.status, "error": cell.error,
           "n_params": cell.layer.n_params(), "n_units": cell.layer.n_units,
           "method_config": cell.layer.to_config()["config"], "train_steps": cell.steps,
           "train_time_s": round(cell.train_time_s, 2), "final_train_loss": cell.last_loss,
           "timestamp": timestamp()}
    if cell.status != "ok":
        return row
    start = time.perf_counter()
    rec = reconstruction_metrics(cell.layer, x_eval, y_eval)
    spliced = evaluator.per_sequence_ce(SplicedMLP(cell.layer, _base_mlp(model, base_row["layer"])))
    ce = compare_ce(baselines.clean, spliced, baselines.zero)
    row.update(vars(rec))
    row.update(vars(ce))
    row["eval_time_s"] = round(time.perf_counter() - start, 2)
    return row


def _base_mlp(model, layer: int):
    from bench.models import mlp_module
    return mlp_module(model, layer)


def settings_row(cfg: RunConfig, model_id: str, layer: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Everything a row needs to be read on its own: settings, token counts, machine, versions."""
    return {
        "run": cfg.run_name or default_run_name(cfg), "model": cfg.model, "model_id": model_id, "layer": layer,
        "dataset": cfg.dataset, "preset": cfg.preset, "expansion": cfg.expansion,
        "train_tokens": cfg.train_tokens, "eval_tokens": cfg.eval_tokens,
        "ce_tokens": -(-cfg.ce_tokens // cfg.context_length) * (cfg.context_length - 1),
        "context_length": cfg.context_length, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "warmup_steps": cfg.warmup_steps, "seed": cfg.seed, "device": str(device), "lm_dtype": str(dtype),
        "hardware": hardware_description(device), "versions": package_versions(),
    }


def default_run_name(cfg: RunConfig) -> str:
    model = Path(cfg.model).name if Path(cfg.model).exists() else cfg.model.replace("/", "_")
    return f"{model}-{cfg.preset}"


def progress(description: str, total: int) -> tqdm:
    return tqdm(total=total, desc=description, unit="tok" if total > 1000 else "it", unit_scale=True,
                dynamic_ncols=True, leave=True)
