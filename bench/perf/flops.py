"""Analytic FLOP counts of each method's training step, for FLOP/s as a fraction of the machine's ceiling.

A multiply-add is 2 FLOPs; only matrix products and gathered dot products count (bias adds,
activations, TopK, norms are left out). A layer's forward is a list of terms; ``step_flops`` =
3 x forward (the usual convention: backward = 2 x forward). ``executed_step_flops`` counts what
the step really runs: a term whose input is the data (x, or y for an SAE) needs no input
gradient, so its backward is 1 x its forward, not 2 x.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from methods.base import SparseLayer
from methods.lowrank_moe import LowRankMoE
from methods.mxd import MixtureOfDecoders, MixtureOfDecodersGLU
from methods.transcoder import SkipTranscoder, Transcoder


@dataclass(frozen=True)
class FlopTerm:
    """One product in a layer's forward: ``per_token`` FLOPs (multiply-add = 2) for each token.
    ``reads_data``: its input is the training data, so the backward computes no input gradient."""

    name: str
    per_token: int
    reads_data: bool


def _transcoder_terms(layer: Transcoder) -> list[FlopTerm]:
    d, width, k = layer.spec.d_model, layer.n_units, layer.config.k
    return [FlopTerm("encoder W_enc x", 2 * d * width, True), FlopTerm("sparse decode (K rows)", 2 * k * d, False)]


def _skip_transcoder_terms(layer: SkipTranscoder) -> list[FlopTerm]:
    return _transcoder_terms(layer) + [FlopTerm("skip W_skip x", 2 * layer.spec.d_model ** 2, True)]


def _mxd_terms(layer: MixtureOfDecoders) -> list[FlopTerm]:
    d, hidden, n, k = layer.spec.d_model, layer.hidden, layer.n_units, layer.config.k
    glu = isinstance(layer, MixtureOfDecodersGLU)
    dense = FlopTerm("gate_proj, up_proj" if glu else "encoder W_enc x", (4 if glu else 2) * d * hidden, True)
    return [dense, FlopTerm("decoder D^T z", 2 * hidden * d, False), FlopTerm("expert gate G x", 2 * d * n, True),
            FlopTerm("expert mix C a (K columns)", 2 * k * d, False)]


def _lowrank_terms(layer: LowRankMoE) -> list[FlopTerm]:
    d, n, k, rank = layer.spec.d_model, layer.n_units, layer.config.k, layer.config.rank
    return [FlopTerm("expert gate G x", 2 * d * n, True), FlopTerm("in-projections V^T x (K R rows)", 2 * k * rank * d, True),
            FlopTerm("decode U (a p) (K R rows)", 2 * k * rank * d, False)]


# Looked up along the class's MRO, so a subclass (sae is a Transcoder) inherits its family's count.
# A plugin adds its own: ``FLOP_COUNTERS[MyLayer] = lambda layer: [FlopTerm(...), ...]``.
FLOP_COUNTERS: dict[type, Callable[[Any], list[FlopTerm]]] = {
    Transcoder: _transcoder_terms,
    SkipTranscoder: _skip_transcoder_terms,
    MixtureOfDecoders: _mxd_terms,
    LowRankMoE: _lowrank_terms,
}


def flop_terms(layer: SparseLayer) -> list[FlopTerm] | None:
    """The forward's products for this layer's family, or None for a family nobody counted."""
    for cls in type(layer).__mro__:
        if cls in FLOP_COUNTERS:
            return FLOP_COUNTERS[cls](layer)
    return None


def forward_flops(layer: SparseLayer, tokens: int) -> int | None:
    terms = flop_terms(layer)
    return None if terms is None else tokens * sum(t.per_token for t in terms)


def step_flops(layer: SparseLayer, tokens: int) -> int | None:
    """Training-step FLOPs by the usual convention: 3 x forward (backward = 2 x forward)."""
    fwd = forward_flops(layer, tokens)
    return None if fwd is None else 3 * fwd


def executed_step_flops(layer: SparseLayer, tokens: int) -> int | None:
    """What the step runs: forward + weight gradients + input gradients of terms not reading the data."""
    terms = flop_terms(layer)
    if terms is None:
        return None
    return tokens * sum(t.per_token * (2 if t.reads_data else 3) for t in terms)
