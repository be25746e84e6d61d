"""The measurements ``bench perf`` and ``bench cost`` both make, on one device.

- the ceiling: dense-matmul FLOP/s of a large square ``torch.mm``, in the precision the cells run in;
- one (method, K) cell's training step (``bench.train.train_step``: forward, backward, gradient
  projection, AdamW, constraint) on random activations at a ``Shape``: tokens/s, peak memory,
  achieved FLOP/s (analytic count, ``bench.perf.flops``) as a fraction of the ceiling, and the
  step's time split into forward / backward / project / optimiser / constrain;
- AdamW's step alone in its three implementations (for-loop, foreach, fused);
- the LM side: full forward vs ``collect_mlp_io`` tokens/s, and CE evaluation tokens/s with and
  without prefix replay (``CrossEntropyEvaluator``);
- the machine and package versions every result records.
"""
from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

import torch

import methods
from bench import results
from bench.devices import cpu_model_name, precision_label, synchronize
from bench.perf.flops import executed_step_flops, forward_flops, step_flops
from bench.perf.timing import PeakMemory, matmul_ceiling, time_calls
from bench.train import OptimiserSettings, adamw, build_cell, train_step
from methods.base import LayerSpec


@dataclass(frozen=True)
class Shape:
    """A layer to train cells at: its spec, the parameter budget (a TC of width expansion x d)
    and the tokens per step."""

    name: str
    spec: LayerSpec
    expansion: int
    tokens_per_step: int  # on GPU; CPU runs use ``cpu_tokens_per_step``
    cpu_tokens_per_step: int


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


def measure_ceilings(device: torch.device, autocast: torch.dtype | None, n: int, repeats: int) -> dict[str, dict]:
    """The matmul rates cells are compared with, keyed by ``precision_label``: the float32 product
    as configured (TF32's where `bench run` lets float32 matmuls use it) and, on a GPU or under
    autocast, the low-precision one."""
    ceilings = {precision_label(None, device): matmul_ceiling(device, torch.float32, n, repeats)}
    if autocast is not None or device.type == "cuda":
        low = autocast or torch.bfloat16
        ceilings[precision_label(low, device)] = matmul_ceiling(device, low, n, repeats)
    return ceilings


OPTIMISER_VARIANTS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


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


# ---------------------------------------------------------------------------- the LM side

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


# ---------------------------------------------------------------------------- what every result records

def machine_description(device: torch.device) -> dict[str, Any]:
    memory_bytes = None
    try:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    out = {"device": str(device), "cpu": cpu_model_name(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "memory_bytes": memory_bytes, "platform": platform.platform(),
           "load_average_1m_at_start": load_average()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_bytes=props.total_memory)
    return out


def load_average() -> float | None:
    """The 1-minute load average (a shared machine's figures are only as good as its quiet)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def package_versions() -> dict[str, str]:
    """``bench run``'s versions, plus the peer's."""
    out = results.package_versions()
    try:
        out["sae-lens"] = version("sae-lens")
    except PackageNotFoundError:
        out["sae-lens"] = "not installed"
    return out
