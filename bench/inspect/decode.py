"""A sparse layer's output recomputed from given codes, per method family, from its public parameters.

``SparseLayer.forward`` computes its codes itself; steering and the dashboards need the
output for codes WE choose (one unit pushed up, one unit alone). Every built-in family is
linear in its code values once the input x is fixed:

    TC / STC / SAE:   y = sum_i z_i W_dec[i] + b_out (+ W_skip x)
    MxD:              y = (D^T phi(x)) * (sum_n a_n c_n) + b_out
    low-rank MoE:     y = sum_n a_n U_n V_n^T x + b_out

so one unit's contribution at a token is ``decode(x, that unit's code alone) - decode(x, no codes)``.
A plugin method whose family is not listed here cannot be steered or lensed (a clear error).
"""
from __future__ import annotations

import torch

from methods.base import SparseCodes, SparseLayer, sparse_decode
from methods.lowrank_moe import LowRankMoE, gather_dot
from methods.mxd import MixtureOfDecoders
from methods.transcoder import SkipTranscoder, Transcoder

SUPPORTED = (Transcoder, MixtureOfDecoders, LowRankMoE)


class UnsupportedLayer(ValueError):
    pass


def check_supported(layer: SparseLayer) -> None:
    if not isinstance(layer, SUPPORTED):
        names = ", ".join(cls.__name__ for cls in SUPPORTED)
        raise UnsupportedLayer(f"{type(layer).__name__} ({layer.name or 'plugin'}) has no known decode; "
                               f"supported families: {names} and their subclasses")


def decode(layer: SparseLayer, source: torch.Tensor, codes: SparseCodes) -> torch.Tensor:
    """The layer's output for input ``source`` ([T, d]) when its post-TopK codes are ``codes``
    ([T, K'], any K'; a unit listed twice counts with the sum of its values)."""
    check_supported(layer)
    if isinstance(layer, Transcoder):
        out = sparse_decode(codes, layer.decoder) + layer.b_out
        return out + layer.skip(source) if isinstance(layer, SkipTranscoder) else out
    if isinstance(layer, MixtureOfDecoders):
        dense = layer.hidden_activations(source) @ layer.decoder  # D^T z
        return dense * sparse_decode(codes, layer.expert_weights) + layer.b_out
    return _lowrank_decode(layer, source, codes) + layer.b_out


def _lowrank_decode(layer: LowRankMoE, source: torch.Tensor, codes: SparseCodes) -> torch.Tensor:
    """sum_j a_j U_{n_j} V_{n_j}^T x: ``LowRankMoE.expert_sum`` for a code width other than its K."""
    d, rank, width = source.shape[-1], layer.config.rank, codes.indices.shape[-1]
    rows = (codes.indices[..., None] * rank + torch.arange(rank, device=source.device)).reshape(-1, width * rank)
    projections = gather_dot(source.reshape(-1, d), rows, layer.in_factors.reshape(-1, d))
    weights = (codes.values.reshape(-1, width, 1) * projections.reshape(-1, width, rank)).reshape(-1, width * rank)
    out = sparse_decode(SparseCodes(weights, rows), layer.out_factors.reshape(-1, d))
    return out.reshape(*source.shape[:-1], d)


def unit_contribution(layer: SparseLayer, source: torch.Tensor, unit: int, values: torch.Tensor) -> torch.Tensor:
    """What unit ``unit`` with code ``values`` ([T]) adds to the output at each token: [T, d]."""
    alone = SparseCodes(values[:, None], torch.full_like(values, unit, dtype=torch.long)[:, None])
    none = SparseCodes(torch.zeros_like(alone.values), alone.indices)
    return decode(layer, source, alone) - decode(layer, source, none)


@torch.no_grad()
def unit_output_sums(layer: SparseLayer, source: torch.Tensor, units: list[int],
                     activations: torch.Tensor) -> torch.Tensor:
    """sum over tokens t of ``unit_contribution(source[t], unit_j, activations[t, j])``: [len(units), d].

    Closed forms, one matmul per family, because a dashboard sums over thousands of tokens:
    TC: (sum_t a_t) W_dec[u];  MxD: (sum_t a_t D^T z_t) * c_u;  low-rank: U_u V_u^T (sum_t a_t x_t).
    """
    check_supported(layer)
    index = torch.tensor(units, dtype=torch.long, device=source.device)
    activations = activations.to(source.dtype)
    if isinstance(layer, Transcoder):
        return activations.sum(0)[:, None] * layer.decoder[index]
    if isinstance(layer, MixtureOfDecoders):
        dense = layer.hidden_activations(source) @ layer.decoder
        return (activations.T @ dense) * layer.expert_weights[index]
    weighted_inputs = activations.T @ source  # sum_t a_t x_t, [units, d]
    projections = torch.einsum("jrd,jd->jr", layer.in_factors[index], weighted_inputs)
    return torch.einsum("jr,jrd->jd", projections, layer.out_factors[index])
