"""``bench inspect``: a static HTML dashboard of a trained cell's units, from the run's held-out text.

Flow: held-out contexts of the run's dataset -> the LM up to layer L's MLP -> the cell's codes
(``stats``) -> per-unit frequency, histogram, top contexts; each unit's mean output where it
fires -> promoted tokens (``lens``) -> one HTML page (``render``) plus the same numbers as JSON.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from bench.data import DataError, boundary_tokens, iter_documents, pack_contexts, unscored_token_ids
from bench.inspect.cells import check_units, load_cell
from bench.inspect.decode import SUPPORTED, unit_output_sums
from bench.inspect.lens import top_tokens
from bench.inspect.render import DashboardPage, UnitPanel, render_page
from bench.inspect.stats import CodeTable, collect_codes, default_units, firing_counts, unit_activations, unit_stats
from bench.results import atomic_write_text
from methods.base import SparseLayer
from methods.lowrank_moe import LowRankMoE
from methods.mxd import MixtureOfDecoders

DEFAULT_N_TEXTS = 128  # held-out contexts (of the run's context length) read per dashboard
N_TOP_UNITS, N_RANDOM_UNITS = 8, 4
HOW_TO_READ = [
    "Fires on: the fraction of scored tokens (held-out text; the BOS, EOS and padding positions excluded) on which "
    "the unit is among the token's TopK codes with a non-zero value.",
    "Histogram: the unit's non-zero codes in 20 equal bins from 0 to its largest code; hover a bar for its count.",
    "Top-activating contexts: the 10 scored tokens with the largest code, each with 10 tokens before and 4 after "
    "from its own context. The outlined token is where the unit fired; shading is the unit's code on each token "
    "relative to its largest.",
    "Output direction: the unit's mean output on the tokens where it fires, read through the final norm's gain and "
    "the unembedding (the direct path to the logits only; later layers are ignored). Scores compare tokens within "
    "one unit, not across units.",
]


def held_out_contexts(dataset: str, tokenizer, context_length: int, n_texts: int) -> torch.Tensor:
    """The first ``n_texts`` packed contexts of the eval split (documents the layer never trained on)."""
    contexts = [c for _, c in zip(range(n_texts), pack_contexts(iter_documents(dataset, "eval"), tokenizer,
                                                                context_length))]
    if not contexts:
        raise DataError(f"the eval split of {dataset!r} holds less than one {context_length}-token context")
    return torch.stack(contexts)


def separator_id(tokenizer) -> int:
    """The token ``pack_contexts`` starts every context with (a steering prompt starts with it too)."""
    return boundary_tokens(tokenizer)[0]


def lens_note(layer: SparseLayer) -> str:
    """How the output direction of this family's unit is defined (shown once, under "how to read")."""
    if isinstance(layer, MixtureOfDecoders):
        return ("MxD: an expert's output a_n (D^T z) * c_n depends on the input through D^T z; c_n alone is a "
                "per-dimension gain, not a direction. Shown: its mean output over the tokens where it fires.")
    if isinstance(layer, LowRankMoE):
        return "Low-rank expert: its output a_n U_n V_n^T x depends on x; shown: its mean output where it fires."
    return "Equal in direction to the unit's decoder row W_dec[i] (its mean output is mean(z_i) W_dec[i])."


@torch.no_grad()
def mean_outputs(layer: SparseLayer, table: CodeTable, units: list[int], activations: torch.Tensor,
                 batch_tokens: int = 4096) -> torch.Tensor:
    """Each unit's mean output over the scored tokens where it fires: [len(units), d]."""
    device = next(layer.parameters()).device
    masked = activations * table.scored[:, None]
    total = None
    for start in range(0, len(masked), batch_tokens):
        part = unit_output_sums(layer, table.sources[start:start + batch_tokens].to(device), units,
                                masked[start:start + batch_tokens].to(device))
        total = part if total is None else total + part
    fired = (masked != 0).sum(0).clamp_min(1).to(total.device)
    return (total / fired[:, None]).cpu()


def build_dashboard(model: nn.Module, tokenizer, layer_index: int, layer: SparseLayer, input_ids: torch.Tensor,
                    units: list[int] | None = None, seed: int = 0) -> tuple[list[int], list[UnitPanel]]:
    """The panels of ``units`` (default: the most frequent units plus a few random live ones)."""
    table = collect_codes(model, layer_index, layer, input_ids, unscored_token_ids(tokenizer))
    if units is None:
        units = default_units(firing_counts(table, layer.n_units), N_TOP_UNITS, N_RANDOM_UNITS, seed)
        if not units:
            raise DataError("no unit fired on the held-out tokens: nothing to show (is the checkpoint trained?)")
    activations = unit_activations(table, units)
    stats = unit_stats(table, units, activations)
    if not isinstance(layer, SUPPORTED):
        note = f"no output decode is known for {type(layer).__name__}"
        return units, [UnitPanel(s, None, note) for s in stats]
    scores = top_tokens(model, tokenizer, mean_outputs(layer, table, units, activations))
    return units, [UnitPanel(s, t) for s, t in zip(stats, scores)]


def write_dashboard(run_dir: str | Path, cell: str, units: list[int] | None = None,
                    n_texts: int = DEFAULT_N_TEXTS, device: str = "auto") -> Path:
    """Write ``RUN/dashboards/<method>-<k>/index.html`` (and ``units.json``); returns the HTML path."""
    if n_texts < 1:
        raise DataError(f"--n-texts must be a positive integer, got {n_texts}")
    run_dir = Path(run_dir)
    loaded = load_cell(run_dir, cell, device)
    layer, row, tokenizer = loaded.layer, loaded.row, loaded.lm.tokenizer
    if units is not None:
        units = check_units(units, layer.n_units)
    input_ids = held_out_contexts(row["dataset"], tokenizer, int(row.get("context_length") or 128), n_texts)
    units, panels = build_dashboard(loaded.lm.model, tokenizer, loaded.layer_index, layer, input_ids, units)
    meta = {"run": run_dir.name, "model": f"{row['model']} layer {loaded.layer_index}",
            "method": f"{row['method']} (K = {row['k']}, {layer.n_units:,} units)",
            "text": f"{input_ids.shape[0]} held-out contexts of {input_ids.shape[1]} tokens from {row['dataset']} "
                    "(BOS, EOS and padding positions not scored)",
            "units shown": ", ".join(map(str, units))}
    notes = HOW_TO_READ + ([lens_note(layer)] if isinstance(layer, SUPPORTED) else [])
    page = DashboardPage(f"{loaded.label}: unit dashboard", meta, panels, notes)
    out = run_dir / "dashboards" / loaded.label
    atomic_write_text(out / "units.json", json.dumps({"cell": loaded.label, "meta": meta, "units": [
        dataclasses.asdict(p) for p in panels]}, indent=1) + "\n")
    path = out / "index.html"
    atomic_write_text(path, render_page(page, lambda token: tokenizer.decode([token])))
    return path
