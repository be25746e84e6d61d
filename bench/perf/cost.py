"""What a sweep costs on this machine: each run's rates measured now, at its own shapes, multiplied out.

A run pays one LM pass over its training and evaluation tokens (activation collection, which
stops after layer L), every cell's training steps, and one spliced CE evaluation per cell plus the
clean and zero-ablated baselines:

    seconds = (train + eval tokens) / collection rate + sum over cells (train tokens / step rate)
              + (cells + 2) x CE tokens / CE rate + the CE prefix capture

``bench cost SWEEP.toml`` (or plain ``bench cost``, for ``bench run``'s default run) measures each
rate on this device for each run: its model's architecture with random weights (a forward costs
the same whatever the weights), its layer, context length and batch sizes, and every (method, K)
cell at its budget and batch, in `bench run`'s precision. It leaves out lm-eval tasks and the
extra LM pass of each further group when cells do not fit in memory together; the JSON says so
next to the figures.
"""
from __future__ import annotations

import argparse
import gc
import json
import re
from pathlib import Path
from typing import Any

import torch

from bench import results
from bench.config import RunConfig, load_config_file, sweep_configs
from bench.devices import precision_label, resolve_device, resolve_dtype, resolve_precision
from bench.model_shapes import random_model
from bench.models import check_layer, default_layer, layer_spec
from bench.perf.measure import Shape, machine_description, measure_cell, measure_ceilings, measure_lm, package_versions
from bench.perf.timing import say as say_perf
from methods import expand_method_names


def say(message: str) -> None:
    say_perf(message, "cost")


LEFT_OUT = ("lm-eval tasks", "extra LM passes when cells train in several memory groups")


def add_cost_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", metavar="SWEEP.toml", nargs="?", default=None,
                        help="a sweep file, as `bench run --config` takes (default: plain `bench run`'s run)")
    parser.add_argument("--preset", default=None, help="override every run's preset (as `bench run --preset`)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per cell (default 10 GPU, 2 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 GPU, 1 CPU)")
    parser.add_argument("--lm-contexts", type=int, default=None,
                        help="contexts per LM rate measurement (default: the run's lm_batch_size on GPU, 8 on CPU)")
    parser.add_argument("--out", default=None, help="JSON path (default: results/perf/cost-<sweep>-<device>.json)")
    return parser


def run_seconds(cfg: RunConfig, n_cells: int, lm: dict[str, Any], step_rates: list[float]) -> dict[str, float]:
    """The formula of the module docstring, part by part."""
    ce_tokens_measured = lm["contexts"] * lm["context_length"]
    parts = {
        "collect_s": (cfg.train_tokens + cfg.eval_tokens) / lm["collect_mlp_io_tokens_per_s"],
        "train_s": sum(cfg.train_tokens / rate for rate in step_rates),
        "ce_s": (n_cells + 2) * cfg.ce_tokens / lm["ce_with_replay_tokens_per_s"]
        + lm["ce_prefix_capture_s"] * cfg.ce_tokens / ce_tokens_measured,
    }
    parts["total_s"] = sum(parts.values())
    return parts


def estimate_run(cfg: RunConfig, device: torch.device, steps: int, warmup: int,
                 lm_contexts: int | None) -> dict[str, Any]:
    """Measure one run's rates on ``device`` and add up its cost."""
    autocast = resolve_precision(cfg.precision, device)
    loaded = random_model(cfg.model, device, resolve_dtype(cfg.dtype, device), seed=cfg.seed)
    layer = default_layer(loaded.model) if cfg.layer is None else check_layer(loaded.model, cfg.layer)
    spec = layer_spec(loaded.model, layer)
    contexts = lm_contexts or (cfg.lm_batch_size if device.type == "cuda" else 8)
    say(f"{cfg.model} layer {layer}: LM rates on {contexts} x {cfg.context_length} tokens")
    lm = measure_lm(loaded, device, contexts, cfg.context_length, min(cfg.ce_batch_size, contexts), 2, layer)
    del loaded
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    shape = Shape(f"{cfg.model}-L{layer}-e{cfg.expansion}", spec, cfg.expansion, cfg.batch_size, cfg.batch_size)
    ceilings = measure_ceilings(device, autocast, 8192 if device.type == "cuda" else 2048, 3)
    cells = []
    for method in expand_method_names(cfg.methods):
        for k in cfg.ks:
            row = measure_cell(method, shape, k, cfg.batch_size, warmup, steps, device, autocast, cfg.compile,
                               ceilings)
            cells.append({key: row.get(key) for key in ("method", "k", "status", "error", "tokens_per_s",
                                                         "step_s", "n_params", "executed_ceiling_fraction")})
            say(f"  {method} K={k}: " + (f"{row['tokens_per_s']:,.0f} tokens/s" if row["status"] == "ok"
                                          else row["error"]))
    measured = [c["tokens_per_s"] for c in cells if c["status"] == "ok"]
    seconds = run_seconds(cfg, len(cells), lm, measured)
    return {"run": cfg.run_name, "model": cfg.model, "layer": layer, "d_model": spec.d_model, "expansion": cfg.expansion,
            "train_tokens": cfg.train_tokens, "eval_tokens": cfg.eval_tokens, "ce_tokens": cfg.ce_tokens,
            "batch_size": cfg.batch_size, "precision": precision_label(autocast, device), "lm": lm, "cells": cells,
            "complete": len(measured) == len(cells), **seconds}


def run_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Estimate every run of the sweep; print the table, write the JSON; returns the JSON's content."""
    configs = sweep_configs(load_config_file(args.config) if args.config else [{}], args.preset)
    for cfg in configs:
        expand_method_names(cfg.methods)  # an unknown method is refused before anything is measured
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps if args.steps is not None else (10 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    if steps < 1 or warmup < 0 or (args.lm_contexts is not None and args.lm_contexts < 1):
        raise ValueError(f"--steps and --lm-contexts must be >= 1 and --warmup >= 0; got {steps}, "
                         f"{args.lm_contexts}, {warmup}")
    sweep = args.config or "bench run (the default run)"
    result: dict[str, Any] = {"schema": "mxbench-cost/1", "sweep": sweep, "timestamp": results.timestamp(),
                              "machine": machine_description(device), "versions": package_versions(),
                              "settings": {"steps": steps, "warmup": warmup, "lm_contexts": args.lm_contexts,
                                           "preset": args.preset},
                              "left_out": list(LEFT_OUT)}
    result["runs"] = [estimate_run(cfg, device, steps, warmup, args.lm_contexts) for cfg in configs]
    result["total_hours"] = sum(r["total_s"] for r in result["runs"]) / 3600
    result["complete"] = all(r["complete"] for r in result["runs"])
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(args.config).stem) if args.config else "default"
    out = Path(args.out or f"results/perf/cost-{name}-{device.type}.json")
    results.atomic_write_text(out, json.dumps(result, indent=1, default=str) + "\n")
    print(format_estimate(result))
    say(f"wrote {out}")
    return result


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:,.1f} h"


def format_estimate(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [f"{result['sweep']} on {machine.get('gpu') or machine['cpu']} ({machine['device']}):", "",
             f"{'run':<28} {'layer':>5} {'cells':>5} {'tokens':>12} {'collect/s':>10} {'CE/s':>8} "
             f"{'collect':>9} {'train':>9} {'CE':>9} {'total':>9}"]
    for r in result["runs"]:
        lines.append(f"{(r['run'] or r['model'])[:28]:<28} {r['layer']:>5} {len(r['cells']):>5} {r['train_tokens']:>12,} "
                     f"{r['lm']['collect_mlp_io_tokens_per_s']:>10,.0f} {r['lm']['ce_with_replay_tokens_per_s']:>8,.0f} "
                     + " ".join(f"{_duration(r[part]):>9}" for part in ("collect_s", "train_s", "ce_s", "total_s")))
        lines += [f"  {c['method']} K={c['k']}: failed ({c['error']}), not counted" for c in r["cells"]
                  if c["status"] != "ok"]
    lines += ["", f"total: {_duration(result['total_hours'] * 3600)} on this machine"
              + ("" if result["complete"] else " (incomplete: failed cells are not counted)")
              + f"; not included: {', '.join(result['left_out'])}"]
    return "\n".join(lines)
