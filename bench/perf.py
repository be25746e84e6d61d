"""``bench perf``: how fast each method trains on this machine, next to the machine's own limit.

One run measures, on one device:
- the ceiling: dense-matmul FLOP/s (fp32; bf16 too on GPU), a large square ``torch.mm``;
- every method's training step (``bench.train.train_step``: forward, backward, gradient
  projection, AdamW, constraint) at each shape and K: tokens/s, peak memory, and achieved
  FLOP/s (analytic count, ``bench.flops``) as a fraction of the ceiling, with the step's time
  split into forward / backward / project / optimiser / constrain;
- AdamW's step alone in its three implementations (for-loop, foreach, fused);
- a peer: SAELens's TopK SAE trained by its own trainer step at the TC's shape (if installed);
- the LM side: full forward vs ``collect_mlp_io`` tokens/s, CE evaluation tokens/s with and
  without prefix replay (``CrossEntropyEvaluator``), and the one-pass speed-up: cells trained
  together from one activation stream vs one stream per cell (``bench.one_pass``).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

import torch

import methods
from bench import results
from bench.flops import executed_step_flops, forward_flops, step_flops
from bench.devices import cpu_model_name, precision_label, resolve_device, resolve_dtype, resolve_precision
from bench.peers import peer_comparison
from bench.perf_table import format_report
from bench.timing import PeakMemory, matmul_ceiling, say, time_calls
from bench.devices import synchronize
from bench.train import OptimiserSettings, adamw, build_cell, train_step
from methods import expand_method_names
from methods.base import LayerSpec

GEMMA_3_270M = LayerSpec(640, 2048, True, "gelu_pytorch_tanh")
GPT2_SMALL = LayerSpec(768, 3072, False, "gelu_new")


@dataclass(frozen=True)
class Shape:
    name: str
    spec: LayerSpec
    expansion: int
    tokens_per_step: int  # on GPU; CPU runs use ``cpu_tokens_per_step``
    cpu_tokens_per_step: int


SHAPES = {
    "smoke": Shape("smoke", GEMMA_3_270M, 8, 512, 512),  # the smoke preset: Gemma 3 270M, expansion 8
    "gemma-e32": Shape("gemma-e32", GEMMA_3_270M, 32, 4096, 1024),
    "gpt2-e32": Shape("gpt2-e32", GPT2_SMALL, 32, 4096, 1024),  # PAPER.md's shape: mxd has N = 21,490
    "tiny": Shape("tiny", LayerSpec(32, 64, True, "gelu_pytorch_tanh"), 8, 64, 64),  # for tests
}
DEFAULT_SHAPES = ["smoke", "gemma-e32", "gpt2-e32"]


# ---------------------------------------------------------------------------- training steps

def _timed(fn: Callable, bucket: list[float], device: torch.device) -> Callable:
    """``fn`` that adds its own duration to ``bucket``. A wrapped method keeps its attributes
    (the LR scheduler checks optimiser.step for its ``_wrapped_by_lr_sched`` marker)."""

    def wrapper(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        synchronize(device)
        bucket.append(time.perf_counter() - start)
        return out

    return wrapper if isinstance(fn, torch.nn.Module) else functools.update_wrapper(wrapper, fn)


def measure_training(method: str, shape: Shape, k: int, tokens: int, warmup: int, steps: int,
                     device: torch.device, autocast: torch.dtype | None, compile: bool,
                     ceilings: dict[str, dict]) -> dict[str, Any]:
    """Time ``train_step`` of one (method, K) cell on random activations; one row."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, shape.spec.d_model, generator=generator).to(device)
    y = torch.randn(tokens, shape.spec.d_model, generator=generator).to(device)
    row: dict[str, Any] = {"shape": shape.name, "method": method, "k": k, "tokens_per_step": tokens,
                           "warmup_steps": warmup, "timed_steps": steps,
                           "precision": precision_label(autocast, device)}
    with PeakMemory(device) as memory:
        cell = build_cell(method, shape.spec, k, shape.expansion, OptimiserSettings(warmup_steps=1), seed=0,
                          device=device, autocast_dtype=autocast, compile=compile)
        times = time_calls(lambda: train_step(cell, x, y), warmup, steps, device)
        # The phase split needs a synchronisation around each phase, which on a GPU stalls the
        # queue the headline step time relies on: so it comes from separate, instrumented steps.
        parts: dict[str, list[float]] = {"forward": [], "project": [], "optimiser": [], "constrain": []}
        cell.forward = _timed(cell.compute, parts["forward"], device)
        cell.layer.project_gradients = _timed(cell.layer.project_gradients, parts["project"], device)
        cell.optimiser.step = _timed(cell.optimiser.step, parts["optimiser"], device)
        cell.layer.constrain = _timed(cell.layer.constrain, parts["constrain"], device)
        phase_steps = max(1, steps // 2)
        instrumented_s = statistics.median(time_calls(lambda: train_step(cell, x, y), 0, phase_steps, device))
    if cell.status != "ok":
        row.update(status="failed", error=cell.error)
        return row
    step_s = statistics.median(times)
    layer = cell.layer
    row.update(status="ok", n_params=layer.n_params(), n_units=layer.n_units, step_s=step_s,
               step_s_min=min(times), tokens_per_s=tokens / step_s,
               peak_memory_bytes=memory.bytes, memory_method=memory.method)
    phases = {name: statistics.median(v) if v else 0.0 for name, v in parts.items()}
    phases["backward_and_rest"] = max(0.0, instrumented_s - sum(phases.values()))
    row.update(phase_s=phases, phase_steps=phase_steps, instrumented_step_s=instrumented_s)
    row["phase_share"] = {name: s / instrumented_s for name, s in phases.items()}
    ceiling = ceilings[precision_label(autocast, device)]["flops_per_s"]
    fwd, conventional, executed = forward_flops(layer, tokens), step_flops(layer, tokens), executed_step_flops(layer, tokens)
    row["forward_flops_per_token"] = None if fwd is None else fwd // tokens
    row["step_flops"], row["executed_step_flops"] = conventional, executed
    if conventional is not None:
        row["achieved_flops_per_s"] = conventional / step_s
        row["ceiling_fraction"] = conventional / step_s / ceiling
        row["executed_ceiling_fraction"] = executed / step_s / ceiling
    return row


def measure_cell(method: str, shape: Shape, k: int, tokens: int, warmup: int, steps: int, device: torch.device,
                 autocast: torch.dtype | None, compile: bool, ceilings: dict[str, dict]) -> dict[str, Any]:
    """``measure_training``'s row, or a failed row naming the error (K above a small shape's width,
    out of memory): one cell that cannot run does not stop the others."""
    try:
        return measure_training(method, shape, k, tokens, warmup, steps, device, autocast, compile, ceilings)
    except (ValueError, torch.OutOfMemoryError) as error:
        return {"shape": shape.name, "method": method, "k": k, "status": "failed",
                "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}


def optimiser_variants(shape: Shape, device: torch.device, repeats: int) -> dict[str, Any]:
    """AdamW.step alone on the shape's TC parameters, per implementation (random gradients)."""
    layer = methods.create("tc", shape.spec, k=1, expansion=shape.expansion).to(device)
    for p in layer.parameters():
        p.grad = torch.randn_like(p)
    fused = adamw(layer.parameters(), OptimiserSettings()).defaults.get("fused")
    row: dict[str, Any] = {"shape": shape.name, "n_params": layer.n_params(),
                           "bench.train uses": "fused" if fused else "torch default", "variants": list(OPTIMISER_VARIANTS)}
    for name, options in OPTIMISER_VARIANTS.items():
        try:
            optimiser = torch.optim.AdamW(layer.parameters(), lr=1e-4, weight_decay=0.0, **options)
            row[name] = statistics.median(time_calls(optimiser.step, 1, repeats, device))
        except (RuntimeError, ValueError) as error:
            row[name] = None
            row[f"{name} error"] = str(error).splitlines()[0]
    return row


OPTIMISER_VARIANTS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


# ---------------------------------------------------------------------------- the LM side

def lm_dtype(device: torch.device) -> torch.dtype:
    """The LM's dtype, as ``bench run --dtype auto`` picks it."""
    return resolve_dtype("auto", device)


def load_lm(name: str, random_weights: bool, device: torch.device):
    """The LM in ``bench run``'s dtype: loaded, or built from its stored architecture (``--random-lm``)."""
    if random_weights:
        from bench.model_shapes import random_model

        return random_model(name, device, lm_dtype(device))
    from bench.models import load_model

    return load_model(name, device=str(device), dtype=lm_dtype(device))


def measure_lm(loaded, device: torch.device, contexts: int, context_length: int, ce_batch: int,
               repeats: int, layer: int | None = None) -> dict[str, Any]:
    """Full forward vs activation collection (stops after layer L's MLP, default the middle one),
    and CE evaluation with and without prefix replay, in tokens/s on random token ids."""
    from bench.activations import collect_mlp_io
    from bench.evaluate import CrossEntropyEvaluator
    from bench.models import decoder_layers, default_layer

    model = loaded.model
    dtype = next(model.parameters()).dtype
    layer = default_layer(model) if layer is None else layer
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (contexts, context_length), generator=torch.Generator().manual_seed(0)).to(device)
    n_tokens = ids.numel()

    def rate(fn: Callable[[], Any]) -> float:
        return n_tokens / statistics.median(time_calls(fn, 1, repeats, device))

    with torch.no_grad():
        forward = rate(lambda: model(input_ids=ids, use_cache=False))
    collect = rate(lambda: collect_mlp_io(model, layer, ids))
    start = time.perf_counter()
    evaluator = CrossEntropyEvaluator(model, layer, ids, batch_size=ce_batch)
    synchronize(device)
    prefix_s = time.perf_counter() - start
    replay = rate(lambda: evaluator.per_sequence_ce(None))
    evaluator.prefix = None  # every batch runs the whole model
    full = rate(lambda: evaluator.per_sequence_ce(None))
    return {"model": loaded.model_id, "dtype": str(dtype).replace("torch.", ""), "layer": layer,
            "n_layers": len(decoder_layers(model)),
            "contexts": contexts, "context_length": context_length, "ce_batch_contexts": ce_batch,
            "repeats": repeats, "full_forward_tokens_per_s": forward,
            "collect_mlp_io_tokens_per_s": collect, "collect_speedup": collect / forward,
            "ce_prefix_capture_s": prefix_s, "ce_with_replay_tokens_per_s": replay,
            "ce_without_replay_tokens_per_s": full, "ce_replay_speedup": replay / full}


# ---------------------------------------------------------------------------- the run

def add_perf_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true",
                        help="the smoke shape only, K=32, few steps, small LM batch (about a minute)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--out", default=None, help="JSON path (default: results/perf/perf-<device>.json)")
    parser.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (default)")
    parser.add_argument("--shapes", default=None,
                        help=f"comma-separated, from {', '.join(SHAPES)} (default: {','.join(DEFAULT_SHAPES)})")
    parser.add_argument("--k", dest="ks", default=None, help="comma-separated K values (default 32,128; quick: 32)")
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


def _names(text: str | list[str] | None) -> list[str] | None:
    if text is None or isinstance(text, list):
        return text
    return [v.strip() for v in text.split(",") if v.strip()]


def resolve_settings(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    gpu = device.type == "cuda"
    shape_names = _names(args.shapes) or (["smoke"] if args.quick else DEFAULT_SHAPES)
    unknown = [s for s in shape_names if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape {unknown[0]!r}; choose from {', '.join(SHAPES)}")
    for flag, value, least in (("--steps", args.steps, 1), ("--tokens-per-step", args.tokens_per_step, 1),
                               ("--warmup", args.warmup, 0)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    try:
        ks = [int(k) for k in _names(args.ks)] if args.ks else ([32] if args.quick else [32, 128])
    except ValueError:
        raise ValueError(f"--k must be comma-separated integers, got {args.ks!r}") from None
    if any(k < 1 for k in ks):
        raise ValueError(f"--k values must be >= 1, got {args.ks!r}")
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

    return {"shapes": shape_names, "ks": ks, "methods": expand_method_names(_names(args.methods)), "tokens": tokens,
            "steps": steps, "warmup": args.warmup if args.warmup is not None else (3 if gpu else 1),
            "ceiling_n": 8192 if gpu else (1024 if args.quick else 2048), "ceiling_repeats": 10 if gpu else 3,
            "lm_contexts": 4 if args.quick else 16 if gpu else 8, "context_length": 128, "ce_batch": 4,
            "lm_repeats": 1 if args.quick else 3 if gpu else 2, "precision": args.precision, "compile": args.compile,
            "quick": args.quick, "threads": torch.get_num_threads(), "random_lm": args.random_lm,
            "one_pass_tokens": one_pass_tokens, "one_pass_cells": [(m, k) for m in ("tc", "mxd") for k in (16, 64)]}


def machine_description(device: torch.device) -> dict[str, Any]:
    memory_bytes = None
    try:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    out = {"device": str(device), "cpu": cpu_model_name(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "memory_bytes": memory_bytes, "platform": platform.platform(),
           "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_bytes=props.total_memory)
    return out


def package_versions() -> dict[str, str]:
    """``bench run``'s versions, plus the peer's."""
    out = results.package_versions()
    try:
        out["sae-lens"] = version("sae-lens")
    except PackageNotFoundError:
        out["sae-lens"] = "not installed"
    return out


def run_perf(args: argparse.Namespace) -> dict[str, Any]:
    """Measure everything on one device, print the table, write the JSON; returns the JSON's content."""
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
        from bench.one_pass import measure_one_pass

        loaded = load_lm(args.model, args.random_lm, device)
        result["lm"] = measure_lm(loaded, device, settings["lm_contexts"], settings["context_length"],
                                  settings["ce_batch"], settings["lm_repeats"])
        if settings["one_pass_tokens"]:
            say(f"one pass vs one stream per cell: {settings['one_pass_tokens']:,} tokens per cell")
            result["one_pass"] = measure_one_pass(loaded, settings["one_pass_cells"], settings["one_pass_tokens"],
                                                  device, autocast, args.compile)
    result["machine"]["load_average_1m_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    out = Path(args.out or f"results/perf/perf-{device.type}.json")
    results.atomic_write_text(out, json.dumps(result, indent=1, default=str) + "\n")
    print(format_report(result))
    say(f"wrote {out}")
    return result


def measure_ceilings(device: torch.device, autocast: torch.dtype | None, n: int, repeats: int) -> dict[str, dict]:
    """The matmul rates cells are compared with, keyed by ``precision_label``: the float32 product
    as configured (TF32's where `bench run` lets float32 matmuls use it) and, on a GPU or under
    autocast, the low-precision one."""
    ceilings = {precision_label(None, device): matmul_ceiling(device, torch.float32, n, repeats)}
    if autocast is not None or device.type == "cuda":
        low = autocast or torch.bfloat16
        ceilings[precision_label(low, device)] = matmul_ceiling(device, low, n, repeats)
    return ceilings


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
