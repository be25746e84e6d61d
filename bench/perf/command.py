"""``bench perf``: how fast each method trains on this machine, next to the machine's own limit.

One run measures, on one device (each measurement is in ``bench.perf.measure``):
- the dense-matmul ceiling (fp32; bf16 too on GPU or under ``--precision bf16``);
- every method's training step at each shape and K, with its FLOP/s against the ceiling and its
  time split into phases; each method's step time over the TC's beside its FLOP ratio;
- AdamW's step alone in its three implementations;
- a peer: SAELens's TopK SAE trained by its own trainer step at the TC's shape (``bench.perf.peers``);
- the LM side: activation collection and CE evaluation rates, and the one-pass speed-up: cells
  trained together from one activation stream vs one stream per cell (``bench.perf.one_pass``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from bench import results
from bench.devices import resolve_device, resolve_dtype, resolve_precision
from bench.parsing import int_list, name_list
from bench.perf.measure import (Shape, load_average, machine_description, measure_cell, measure_ceilings,
                                measure_lm, optimiser_variants, package_versions)
from bench.perf.peers import peer_comparison
from bench.perf.table import format_report
from bench.perf.timing import say
from methods import expand_method_names
from methods.base import LayerSpec

GEMMA_3_270M = LayerSpec(640, 2048, True, "gelu_pytorch_tanh")
GPT2_SMALL = LayerSpec(768, 3072, False, "gelu_new")

SHAPES = {
    "smoke": Shape("smoke", GEMMA_3_270M, 8, 512, 512),  # the smoke preset: Gemma 3 270M, expansion 8
    "gemma-e32": Shape("gemma-e32", GEMMA_3_270M, 32, 4096, 1024),
    "gpt2-e32": Shape("gpt2-e32", GPT2_SMALL, 32, 4096, 1024),  # the paper's GPT-2 shape: mxd has N = 21,490
    "tiny": Shape("tiny", LayerSpec(32, 64, True, "gelu_pytorch_tanh"), 8, 64, 64),  # for tests
}
DEFAULT_SHAPES = ["smoke", "gemma-e32", "gpt2-e32"]


def add_perf_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true",
                        help="the smoke shape only, K=32, few steps, small LM batch (about a minute)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--out", default=None, help="JSON path (default: results/perf/perf-<device>.json)")
    parser.add_argument("--methods", type=name_list, default=["all"],
                        help="comma-separated method names, or 'all' (default)")
    parser.add_argument("--shapes", type=name_list, default=None,
                        help=f"comma-separated, from {', '.join(SHAPES)} (default: {','.join(DEFAULT_SHAPES)})")
    parser.add_argument("--k", dest="ks", type=int_list, default=None,
                        help="comma-separated K values (default 32,128; quick: 32)")
    parser.add_argument("--tokens-per-step", type=int, default=None,
                        help="tokens per training step for every shape (default: per shape, see docs/PERFORMANCE.md)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per cell (default: 5 CPU smoke, 3 CPU "
                        "paper shapes, 20 GPU; quick: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 CPU, 3 GPU)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="sparse layers' compute (auto: bf16 autocast on GPU, fp32 on CPU), as `bench run`")
    parser.add_argument("--compile", action="store_true", help="torch.compile the layers, as `bench run --compile`")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--model", default="gemma-3-270m", help="LM for the activation/CE measurements")
    parser.add_argument("--random-lm", action="store_true",
                        help="build --model's architecture with random weights and feed random token ids (the "
                             "rates do not depend on them): no download, tokenizer or embedded package needed")
    parser.add_argument("--no-lm", dest="lm", action="store_false",
                        help="skip the LM measurements (and the one-pass comparison, which needs the LM)")
    parser.add_argument("--one-pass-tokens", type=int, default=None,
                        help="training tokens per cell for the one-pass comparison, 0 skips it "
                             "(default 8192 CPU, 262144 GPU; quick: 2048)")
    parser.add_argument("--no-peers", dest="peers", action="store_false", help="skip the SAELens comparison")
    return parser


def resolve_settings(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The flags filled in for this device (defaults differ between CPU, GPU and ``--quick``), checked."""
    gpu = device.type == "cuda"
    shape_names = args.shapes or (["smoke"] if args.quick else DEFAULT_SHAPES)
    unknown = [s for s in shape_names if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape {unknown[0]!r}; choose from {', '.join(SHAPES)}")
    for flag, value, least in (("--steps", args.steps, 1), ("--tokens-per-step", args.tokens_per_step, 1),
                               ("--warmup", args.warmup, 0)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    ks = args.ks or ([32] if args.quick else [32, 128])
    if any(k < 1 for k in ks):
        raise ValueError(f"--k values must be >= 1, got {','.join(map(str, ks))}")
    tokens = {s: args.tokens_per_step or (SHAPES[s].tokens_per_step if gpu else SHAPES[s].cpu_tokens_per_step)
              for s in shape_names}
    if args.quick and not args.tokens_per_step:
        tokens = {s: min(t, 256) for s, t in tokens.items()}
    steps = {s: args.steps or (2 if args.quick else 20 if gpu else 5 if s == "smoke" else 3) for s in shape_names}
    one_pass_tokens = args.one_pass_tokens if args.one_pass_tokens is not None else (
        2048 if args.quick else 2**18 if gpu else 8192)
    if one_pass_tokens < 0:
        raise ValueError(f"--one-pass-tokens must be >= 0, got {one_pass_tokens}")
    if args.lm and args.random_lm:
        from bench.model_shapes import model_config

        model_config(args.model)  # refuse an unknown name now, not after the training measurements

    return {"shapes": shape_names, "ks": ks, "methods": expand_method_names(args.methods), "tokens": tokens,
            "steps": steps, "warmup": args.warmup if args.warmup is not None else (3 if gpu else 1),
            "ceiling_n": 8192 if gpu else (1024 if args.quick else 2048), "ceiling_repeats": 10 if gpu else 3,
            "lm_contexts": 4 if args.quick else 16 if gpu else 8, "context_length": 128, "ce_batch": 4,
            "lm_repeats": 1 if args.quick else 3 if gpu else 2, "precision": args.precision, "compile": args.compile,
            "quick": args.quick, "threads": torch.get_num_threads(), "random_lm": args.random_lm,
            "one_pass_tokens": one_pass_tokens, "one_pass_cells": [(m, k) for m in ("tc", "mxd") for k in (16, 64)]}


def load_lm(name: str, random_weights: bool, device: torch.device):
    """The LM in ``bench run --dtype auto``'s dtype: loaded, or built from its stored architecture
    (``--random-lm``)."""
    dtype = resolve_dtype("auto", device)
    if random_weights:
        from bench.model_shapes import random_model

        return random_model(name, device, dtype)
    from bench.models import load_model

    return load_model(name, device=str(device), dtype=dtype)


def run_perf(args: argparse.Namespace) -> dict[str, Any]:
    """Measure everything on one device, print the table, write the JSON; returns the JSON's content."""
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    autocast = resolve_precision(args.precision, device)  # as `bench run`, TF32 included
    settings = resolve_settings(args, device)
    result: dict[str, Any] = {"schema": "mxbench-perf/1", "timestamp": results.timestamp(),
                              "machine": machine_description(device), "versions": package_versions(), "settings": settings}

    ceilings = measure_ceilings(device, autocast, settings["ceiling_n"], settings["ceiling_repeats"])
    result["ceiling"] = ceilings
    say("matmul ceiling: " + ", ".join(f"{k} {v['flops_per_s'] / 1e9:,.1f} GFLOP/s" for k, v in ceilings.items()))

    shapes = [SHAPES[s] for s in settings["shapes"]]
    train_rows = []
    for shape in shapes:
        for method in settings["methods"]:
            for k in settings["ks"]:
                row = measure_cell(method, shape, k, settings["tokens"][shape.name], settings["warmup"],
                                   settings["steps"][shape.name], device, autocast, args.compile, ceilings)
                train_rows.append(row)
                say(f"{shape.name} {method} K={k}: " + (f"{row['tokens_per_s']:,.0f} tokens/s"
                          if row["status"] == "ok" else row.get("error", "failed")))
    result["train"] = train_rows
    result["step_time_ratios"] = step_time_ratios(train_rows)
    result["optimiser"] = [optimiser_variants(shape, device, settings["ceiling_repeats"]) for shape in shapes]
    if args.peers:
        result["peers"] = peer_comparison(shapes, settings["ks"], train_rows, settings, device, autocast is not None)
    else:
        result["peers"] = {"status": "skipped", "message": "--no-peers", "rows": []}
    if args.lm:
        from bench.perf.one_pass import measure_one_pass

        loaded = load_lm(args.model, args.random_lm, device)
        result["lm"] = measure_lm(loaded, device, settings["lm_contexts"], settings["context_length"],
                                  settings["ce_batch"], settings["lm_repeats"])
        if settings["one_pass_tokens"]:
            say(f"one pass vs one stream per cell: {settings['one_pass_tokens']:,} tokens per cell")
            result["one_pass"] = measure_one_pass(loaded, settings["one_pass_cells"], settings["one_pass_tokens"],
                                                  device, autocast, args.compile)
    result["machine"]["load_average_1m_at_end"] = load_average()
    out = Path(args.out or f"results/perf/perf-{device.type}.json")
    results.atomic_write_text(out, json.dumps(result, indent=1, default=str) + "\n")
    print(format_report(result))
    say(f"wrote {out}")
    return result


def step_time_ratios(rows: list[dict]) -> list[dict]:
    """Each method's step time over the TC's at the same shape and K (methods are parameter-matched),
    beside its executed-FLOP ratio: where the two agree, the extra time is arithmetic the method
    must do (MxD's dense hidden branch), not overhead a faster implementation could remove."""
    tc = {(r["shape"], r["k"]): r for r in rows if r["method"] == "tc" and r.get("status") == "ok"}
    out = []
    for r in rows:
        base = tc.get((r["shape"], r["k"]))
        if base is not None and r.get("status") == "ok" and r["method"] != "tc":
            flops = r.get("executed_step_flops"), base.get("executed_step_flops")
            out.append({"shape": r["shape"], "k": r["k"], "method": r["method"],
                        "params_ratio": r["n_params"] / base["n_params"],
                        "step_time_over_tc": r["step_s"] / base["step_s"],
                        "executed_flops_over_tc": flops[0] / flops[1] if None not in flops else None})
    return out
