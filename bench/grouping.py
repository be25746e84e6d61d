"""Split a run's cells into the fewest groups that fit in memory together.

All cells of a group train from one activation stream; each extra group costs one more pass
of the LM over the training data, so groups are packed as full as the budget allows
(first-fit decreasing). Estimates come from closed-form parameter counts, before anything
is allocated.
"""
from __future__ import annotations

from pathlib import Path

import torch

import methods
from bench.logs import note
from methods.base import LayerSpec

BYTES_PER_PARAM = 4 * 4  # fp32 weight, gradient and AdamW's two moments
HEADROOM = 0.7  # leave room for the LM's activations, the shuffle buffer and allocator slack


def cell_bytes(method: str, spec: LayerSpec, k: int, expansion: int, batch_size: int) -> int:
    """Optimiser-resident bytes plus one batch of activations (x, y and the widest hidden layer)."""
    entry = methods.get_method(method)
    config = entry.cls.Config(**{**entry.defaults, "k": k, "expansion": expansion})
    n_params = entry.cls.expected_n_params(spec, config)
    widest = max(spec.d_mlp, expansion * spec.d_model)
    return n_params * BYTES_PER_PARAM + batch_size * (4 * spec.d_model + 3 * widest) * 4


def memory_budget(device: torch.device) -> int:
    """Bytes the cells may use: free GPU memory, or available host memory, times HEADROOM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Memory torch holds in its cache (the lm-eval baselines' logits, say) is free to our tensors.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + cached) * HEADROOM)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * HEADROOM)
    except OSError:
        pass
    return 8 * 2**30


def plan_groups(cells: list[tuple[str, int]], sizes: dict[tuple[str, int], int], budget: int) -> list[list[tuple[str, int]]]:
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
                     budget: int, device: torch.device) -> list[list[tuple[str, int]]]:
    """Cells that fit together train together; say so when they do not all fit.

    ``budget`` is measured after the eval tensors exist, so it already leaves room for them.
    """
    sizes = {(m, k): cell_bytes(m, spec, k, expansion, batch_size) for m, k in cells}
    groups = plan_groups(cells, sizes, budget)
    if len(groups) > 1:
        note(f"the {len(cells)} cells need about {sum(sizes.values()) / 2**30:.1f} GiB together, more than the "
             f"{budget / 2**30:.1f} GiB budget on {device}: training them in {len(groups)} groups "
             f"(one LM pass over the training data each)")
    return groups
