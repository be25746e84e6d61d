"""Split a run's cells into the fewest groups that fit in memory together.

All cells of a group train from one activation stream; each extra group costs one more pass
of the LM over the training data (unless an activation cache serves the later groups), so
groups are packed as full as the budget allows (first-fit decreasing). Estimates come from
closed-form parameter counts, before anything is allocated.

Besides the cells, a run holds buffers of its own while a group trains or is evaluated, and at
a large model's width they are not small: the shuffle buffer (gigabytes at the paper's
--buffer-tokens and d = 2048), one LM batch's MLP hidden states, and the CE evaluation's
logits over a 256k vocabulary. ``run_overhead_bytes`` counts their peaks (factors measured in
tests/test_memory_plan.py) and ``plan_run_groups`` keeps them out of the cells' budget.
"""
from __future__ import annotations

from pathlib import Path

import torch

import methods
from bench.logs import note
from bench.run_context import RunContext
from methods.base import LayerSpec

BYTES_PER_PARAM = 4 * 4  # fp32 weight, gradient and AdamW's two moments
HEADROOM = 0.7  # allocator slack and fragmentation, on top of the buffers counted below
# Peaks measured in tests/test_memory_plan.py (each with a margin), in units of what is named:
PARAM_TEMPORARIES = 2.5  # the largest weight: temporaries of a step (two gradients of a weight read twice, summed)
GATHER_BYTES = 80  # bytes per row gathered per token (indices, bag ids, weights and their gradients)
SHUFFLE_PEAK = 8  # one full buffer tensor (x or y): both, the refill's concatenation, the shuffle's copies
LM_BATCH_PEAK = 4  # [tokens, d_mlp + 2 d] of the LM's dtype: the MLP's gate, up and product, the residual
CE_PEAK = 7.5  # one CE batch's fp32 logits: the logits, fp32 copies, two log-softmaxes, the KL terms


class PlanError(ValueError):
    """A run that cannot be planned: a cell that cannot exist at its budget, or buffers larger than memory."""


def _method_config(method: str, k: int, expansion: int):
    """A registered method's entry and its config at (K, expansion), its other settings at their defaults."""
    entry = methods.get_method(method)
    return entry, entry.cls.Config(**{**entry.defaults, "k": k, "expansion": expansion})


def cell_bytes(method: str, spec: LayerSpec, k: int, expansion: int, batch_size: int) -> int:
    """Peak bytes of one cell's training step: optimiser-resident state, a few weight-sized temporaries,
    and one batch of activations (x, y, three [tokens, widest] tensors and the rows gathered per token)."""
    entry, config = _method_config(method, k, expansion)
    n_params = entry.cls.expected_n_params(spec, config)
    with torch.device("meta"):  # shapes only: nothing is allocated
        largest = max(p.numel() for p in entry.cls(spec, config).parameters())
    widest = max(spec.d_mlp, expansion * spec.d_model)
    gathered = k * getattr(config, "rank", 1)  # a low-rank MoE reads K x R factor rows per token
    per_token = (4 * spec.d_model + 3 * widest) * 4 + GATHER_BYTES * gathered
    return n_params * BYTES_PER_PARAM + int(PARAM_TEMPORARIES * largest * 4) + batch_size * per_token


def check_cells(cells: list[tuple[str, int]], spec: LayerSpec, expansion: int) -> None:
    """Every cell can be built on this layer at this budget (an MxD's dense branch alone can cost a TC's
    whole budget: gemma-2b's MLP is 8 d wide); checked from shapes, before anything is loaded."""
    for method, k in cells:
        try:
            cell_bytes(method, spec, k, expansion, 0)
        except ValueError as error:
            raise PlanError(f"{method} K={k} cannot be built at --expansion {expansion} on a layer of width "
                                  f"{spec.d_model} with an MLP of {spec.d_mlp}: {error}") from None


def check_cells_fit_the_model(model: str, layer: int | None, cells: list[tuple[str, int]], expansion: int) -> None:
    """``check_cells`` on the model's architecture alone (built on the meta device: no weights, no download),
    when that architecture can be read here: `bench run --methods all --model gemma-2b` at the smoke
    preset's expansion then fails at once, naming the smallest expansion that builds every cell, instead
    of after a multi-gigabyte download. A model whose config cannot be read here is checked once loaded."""
    from bench.model_shapes import architecture_layer

    try:
        _, spec = architecture_layer(model, layer)
    except (ValueError, IndexError, OSError):  # no config here, or a layer the loader will name precisely
        return
    try:
        check_cells(cells, spec, expansion)
    except PlanError as error:
        works = next((e for e in (16, 32, 64, 128, 256) if e > expansion and _all_build(cells, spec, e)), None)
        hint = f"; --expansion {works} is the smallest that builds them all" if works else ""
        raise PlanError(f"{error}{hint}") from None


def _all_build(cells: list[tuple[str, int]], spec: LayerSpec, expansion: int) -> bool:
    try:
        check_cells(cells, spec, expansion)
    except PlanError:
        return False
    return True


def run_overhead_bytes(spec: LayerSpec, vocab_size: int, lm_dtype_bytes: int, *, train_tokens: int,
                       buffer_tokens: int, lm_batch_size: int, ce_batch_size: int, context_length: int) -> int:
    """The run's own peak besides its cells: while a group trains, the shuffle buffer (fp32 x and y of
    up to ``buffer_tokens`` rows) and one LM batch's forward; while it is evaluated, one CE batch's logits."""
    shuffle = SHUFFLE_PEAK * min(buffer_tokens, train_tokens) * spec.d_model * 4
    lm_tokens = lm_batch_size * context_length
    lm_forward = LM_BATCH_PEAK * lm_tokens * (spec.d_mlp + 2 * spec.d_model) * lm_dtype_bytes
    ce_logits = CE_PEAK * ce_batch_size * context_length * vocab_size * 4
    return int(max(shuffle + lm_forward, ce_logits))


def free_memory(device: torch.device) -> int:
    """Free GPU memory (what torch holds cached counts as free), or the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Memory torch holds in its cache (the lm-eval baselines' logits, say) is free to our tensors.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(8 * 2**30 / HEADROOM)


def memory_budget(device: torch.device) -> int:
    """Bytes the cells and the run's buffers may use: free memory times HEADROOM."""
    return int(free_memory(device) * HEADROOM)


def plan_groups(cells: list[tuple[str, int]], sizes: dict[tuple[str, int], int],
                budget: int) -> list[list[tuple[str, int]]]:
    """First-fit decreasing; a cell larger than the budget gets a group of its own."""
    groups: list[list[tuple[str, int]]] = []
    loads: list[int] = []
    for cell in sorted(cells, key=lambda c: -sizes[c]):
        for i, load in enumerate(loads):
            if load + sizes[cell] <= budget:
                groups[i].append(cell)
                loads[i] += sizes[cell]
                break
        else:
            groups.append([cell])
            loads.append(sizes[cell])
    order = {cell: i for i, cell in enumerate(cells)}
    return [sorted(group, key=order.__getitem__) for group in groups]


def plan_cell_groups(cells: list[tuple[str, int]], spec: LayerSpec, expansion: int, batch_size: int,
                     budget: int, device: torch.device, cached: bool = False) -> list[list[tuple[str, int]]]:
    """Cells that fit together train together; say so when they do not all fit.

    ``budget`` is measured after the eval tensors exist, so it already leaves room for them.
    ``cached``: the training activations go to an activation cache, so later groups read it instead
    of running the LM again.
    """
    sizes = {(m, k): cell_bytes(m, spec, k, expansion, batch_size) for m, k in cells}
    groups = plan_groups(cells, sizes, budget)
    too_big = [cell for cell in cells if sizes[cell] > budget]
    if too_big:
        method, k = max(too_big, key=sizes.__getitem__)
        note(f"{len(too_big)} of the cells need more than the {max(budget, 0) / 2**30:.1f} GiB budget on {device} "
             f"each ({method} K={k}: about {sizes[(method, k)] / 2**30:.1f} GiB): they train alone and may run out "
             f"of memory; a smaller --batch-size or --expansion shrinks them")
    if len(groups) > 1:
        passes = "one LM pass in all: later groups read the activation cache" if cached else \
            f"{len(groups)} LM passes over the training data, one per group"
        note(f"the {len(cells)} cells need about {sum(sizes.values()) / 2**30:.1f} GiB together, more than the "
             f"{max(budget, 0) / 2**30:.1f} GiB budget on {device}: training them in {len(groups)} groups of "
             f"{'/'.join(str(len(g)) for g in groups)} cells ({passes})")
    return groups


def check_run_buffers(ctx: RunContext) -> int:
    """The run's own peak (``run_overhead_bytes``); a ``PlanError`` if it exceeds the free memory.
    Cheap: call it before the eval set is built too, so a hopeless setting fails before an LM pass."""
    cfg = ctx.cfg
    vocab = ctx.model.get_output_embeddings().weight.shape[0]
    overhead = run_overhead_bytes(
        ctx.spec, vocab, next(ctx.model.parameters()).element_size(), train_tokens=cfg.train_tokens,
        buffer_tokens=cfg.buffer_tokens, lm_batch_size=cfg.lm_batch_size, ce_batch_size=cfg.ce_batch_size,
        context_length=cfg.context_length)
    free = free_memory(ctx.device)
    if overhead > free:
        raise PlanError(
            f"the run's own buffers need about {overhead / 2**30:.1f} GiB at their peak (shuffle buffer, one LM "
            f"batch, CE logits over {vocab:,} tokens), more than the {free / 2**30:.1f} GiB free on {ctx.device}: "
            f"lower --buffer-tokens ({cfg.buffer_tokens}), --lm-batch-size ({cfg.lm_batch_size}) or "
            f"--ce-batch-size ({cfg.ce_batch_size})")
    return overhead


def plan_run_groups(ctx: RunContext, cells: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """The groups of a run, called once its eval tensors exist: ``--memory-budget-gb`` is the cells'
    budget as given; else the device's free memory times HEADROOM, less the run's own buffers. (A
    training-state save needs no memory of its own: bench.safetensors_stream writes from the tensors.)"""
    cfg = ctx.cfg
    if cfg.memory_budget_gb:
        budget = int(cfg.memory_budget_gb * 2**30)
    else:
        budget = memory_budget(ctx.device) - check_run_buffers(ctx)
    return plan_cell_groups(cells, ctx.spec, cfg.expansion, cfg.batch_size, budget, ctx.device,
                            cached=bool(cfg.activation_cache))
