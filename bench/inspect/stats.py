"""Held-out contexts -> each unit's firing frequency, top-activating contexts and activation histogram.

A unit FIRES on a token when it is among the token's TopK codes with a non-zero value. The
SCORED tokens are every position of the held-out contexts except the boundary tokens
(``bench.data.unscored_token_ids``): the BOS that starts every context, the EOS between two
documents, and padding. Those positions carry no text and, in many LMs, outsized activations that
would crowd every top-context list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from bench.activations import collect_mlp_io
from methods.base import SparseCodes, SparseLayer


@dataclass
class CodeTable:
    """The layer's codes for every token of ``input_ids`` ([n, T]); per-token tensors are flat [n*T, ...]."""

    input_ids: torch.Tensor
    scored: torch.Tensor  # bool [n*T]
    codes: SparseCodes  # [n*T, K] on the CPU
    sources: torch.Tensor  # the layer's input at each token (x, or y for an mlp_output layer), fp32 CPU


@torch.no_grad()
def collect_codes(model: nn.Module, layer_index: int, layer: SparseLayer, input_ids: torch.Tensor,
                  unscored_ids: Iterable[int], batch_size: int = 8) -> CodeTable:
    """Run the LM up to layer ``layer_index``'s MLP on each batch of contexts and encode with ``layer``;
    positions holding one of ``unscored_ids`` (BOS, EOS, padding) are marked not scored."""
    device = next(layer.parameters()).device
    values, indices, sources = [], [], []
    for batch in input_ids.split(batch_size):
        x, y = collect_mlp_io(model, layer_index, batch)
        source = (y if layer.input_site == "mlp_output" else x).to(device, torch.float32)
        _, codes = layer(source)
        values.append(codes.values.float().cpu())
        indices.append(codes.indices.cpu())
        sources.append(source.cpu())
    scored = ~torch.isin(input_ids, torch.tensor(list(unscored_ids), dtype=input_ids.dtype)).reshape(-1)
    return CodeTable(input_ids.cpu(), scored.cpu(), SparseCodes(torch.cat(values), torch.cat(indices)),
                     torch.cat(sources))


def firing_counts(table: CodeTable, n_units: int) -> torch.Tensor:
    """How many scored tokens each unit fires on: [n_units] int64."""
    live = (table.codes.values != 0) & table.scored[:, None]
    return torch.bincount(table.codes.indices[live], minlength=n_units)


def default_units(counts: torch.Tensor, n_top: int, n_random: int, seed: int = 0) -> list[int]:
    """The ``n_top`` most frequently firing units, then ``n_random`` other live units drawn with ``seed``."""
    order = torch.argsort(counts, descending=True, stable=True)
    top = [int(u) for u in order[:n_top] if counts[u] > 0]
    others = torch.tensor([u for u in torch.nonzero(counts > 0).flatten().tolist() if u not in set(top)],
                          dtype=torch.long)
    drawn = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))[:n_random]]
    return top + sorted(drawn.tolist())


def unit_activations(table: CodeTable, units: list[int]) -> torch.Tensor:
    """Each chosen unit's code at every token (0 where it was not selected): [n*T, len(units)]."""
    if len(set(units)) != len(units):
        raise ValueError(f"units must be distinct, got {units}")
    size = max(int(table.codes.indices.max()) + 1, max(units) + 1)
    column = torch.full((size,), len(units), dtype=torch.long)  # unchosen units go to a spare column
    column[torch.tensor(units)] = torch.arange(len(units))
    out = torch.zeros(len(table.codes.indices), len(units) + 1)
    out.scatter_add_(1, column[table.codes.indices], table.codes.values)
    return out[:, :-1]


@dataclass
class Context:
    """A window of one held-out context around a token where the unit fired."""

    row: int
    position: int  # of the firing token within its context
    activation: float
    token_ids: list[int]
    activations: list[float]  # the unit's code on each token of the window
    focus: int  # index of the firing token within the window


@dataclass
class UnitStats:
    unit: int
    frequency: float  # fraction of scored tokens the unit fires on
    n_fired: int
    n_scored: int
    max_activation: float
    mean_activation: float  # over the tokens it fires on
    histogram: list[int]  # counts of its non-zero codes in equal-width bins over (0, max]
    bin_edges: list[float]
    top_contexts: list[Context]


def unit_stats(table: CodeTable, units: list[int], activations: torch.Tensor, n_contexts: int = 10,
               before: int = 10, after: int = 4, bins: int = 20) -> list[UnitStats]:
    """Summaries of each unit from its column of ``activations`` (``unit_activations``), scored tokens only."""
    n_rows, length = table.input_ids.shape
    n_scored = int(table.scored.sum())
    out = []
    for j, unit in enumerate(units):
        column = torch.where(table.scored, activations[:, j], torch.zeros(()))
        fired = column != 0
        firing_values = column[fired]
        top = max(float(firing_values.max()), 0.0) if len(firing_values) else 0.0
        counts = torch.histc(firing_values, bins=bins, min=0.0, max=top) if top > 0 else torch.zeros(bins)
        order = torch.argsort(column, descending=True, stable=True)[:n_contexts]
        contexts = []
        for flat in order[fired[order]].tolist():
            row, position = divmod(flat, length)
            start, stop = max(0, position - before), min(length, position + after + 1)
            contexts.append(Context(row, position, float(column[flat]),
                                    table.input_ids[row, start:stop].tolist(),
                                    activations[row * length + start:row * length + stop, j].tolist(),
                                    position - start))
        out.append(UnitStats(unit, int(fired.sum()) / max(n_scored, 1), int(fired.sum()), n_scored, top,
                             float(firing_values.mean()) if len(firing_values) else 0.0,
                             [int(c) for c in counts.tolist()],
                             torch.linspace(0.0, top, bins + 1).tolist(), contexts))
    return out
