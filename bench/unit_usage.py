"""How often the TopK selects each unit during training.

A unit is *selected* on a token when its index is among the token's codes with a non-zero value
(a zero value is a unit the TopK picked but ReLU clipped: it wrote nothing). Over the whole
training stream each cell counts, per unit, the tokens that selected it; from those counts a row
gets ``never_selected`` (units no training token selected: the MxD reference's dead units) and a
firing-frequency histogram. Each cell also keeps, per unit, the training tokens since it was last
selected: a unit idle for a whole window counts as dead for the AuxK term (``bench.losses``).
"""
from __future__ import annotations

import torch

from bench.metrics import HISTOGRAM_BUCKETS  # f = 0, then one bucket per decade of f, declared with the metrics
from methods.base import SparseCodes

_DECADES = range(1, 9)  # f >= 10^-e for e in 1..8, tested in integers (no rounding of log10)


def selections(codes: SparseCodes, n_units: int) -> torch.Tensor:
    """How many tokens of this batch selected each unit: int64 [n_units]."""
    return torch.bincount(codes.indices[codes.values != 0].flatten(), minlength=n_units)


def record(counts: torch.Tensor, since: torch.Tensor, selected: torch.Tensor, tokens: int) -> None:
    """Add one step's ``selected`` ([n_units]) to the running ``counts``; reset ``since`` (tokens since a
    unit's last selection) for the units selected in this step of ``tokens`` tokens."""
    counts += selected
    since += tokens
    since.masked_fill_(selected > 0, 0)


def dead_mask(since: torch.Tensor, window: int) -> torch.Tensor:
    """Units not selected in the last ``window`` training tokens."""
    return since >= window


def frequency_histogram(counts: torch.Tensor, tokens: int) -> list[int]:
    """Units per bucket of ``HISTOGRAM_BUCKETS`` for selection counts over ``tokens`` training tokens."""
    counts = counts.detach().cpu().long()
    fired = counts > 0
    bucket = fired.long()  # 0 never, 1 the lowest decade
    for e in _DECADES:  # each decade a unit's frequency reaches moves it one bucket up
        bucket += (fired & (counts * 10**e >= tokens)).long()
    return torch.bincount(bucket, minlength=len(HISTOGRAM_BUCKETS)).tolist()


def usage_fields(counts: torch.Tensor | None, counted_tokens: int, trained_tokens: int) -> dict:
    """The row fields of a cell's selection counts over ``counted_tokens`` training tokens.

    ``never_selected`` and the histogram are reported only when the counts cover every one of the
    ``trained_tokens`` (a resume that could not restore them would overstate the never-selected);
    ``selection_counted_tokens`` says what they cover either way.
    """
    if counts is None or counts.numel() == 0:
        return {}
    fields: dict = {"selection_counted_tokens": counted_tokens}
    if counted_tokens != trained_tokens or trained_tokens == 0:
        return fields
    never = int((counts == 0).sum().item())
    return {**fields, "never_selected": never, "never_selected_fraction": never / counts.numel(),
            "selection_frequency_histogram": frequency_histogram(counts, trained_tokens)}
