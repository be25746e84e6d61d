"""The steering intervention: one unit's post-TopK code raised by ``strength`` at every token.

    codes'  = codes + strength * e_u        (whether or not TopK selected unit u)
    y_hat'  = decode(x, codes')             the layer's own decoder, ``bench.inspect.decode``

Because every family is linear in its codes, y_hat' - y_hat = strength * (unit u's contribution
at x): for a TC/SAE strength * W_dec[u]; for MxD strength * (D^T z) * c_u; nothing else moves.
"""
from __future__ import annotations

import torch
from torch import nn

from bench.inspect.decode import check_supported, decode
from methods.base import SparseCodes, SparseLayer


def steer_codes(codes: SparseCodes, unit: int, strength: float) -> SparseCodes:
    """``codes`` with ``strength`` added to unit ``unit``: [.., K] -> [.., K + 1].

    Where TopK selected the unit its value grows in place and the extra column holds (unit, 0);
    elsewhere the extra column holds (unit, strength). Decoding sums a unit's entries.
    """
    hit = codes.indices == unit
    values = codes.values + strength * hit.to(codes.values.dtype)
    extra = torch.where(hit.any(-1, keepdim=True), torch.zeros((), dtype=values.dtype, device=values.device),
                        torch.full((), strength, dtype=values.dtype, device=values.device))
    return SparseCodes(torch.cat([values, extra], -1),
                       torch.cat([codes.indices, torch.full_like(codes.indices[..., :1], unit)], -1))


class SteeredLayer(nn.Module):
    """Wraps a trained layer for ``bench.splice.spliced``: same input site, same parameters,
    its codes steered by ``steer_codes`` and its output recomputed from them."""

    def __init__(self, layer: SparseLayer, unit: int, strength: float) -> None:
        super().__init__()
        check_supported(layer)
        if not 0 <= unit < layer.n_units:
            raise ValueError(f"unit {unit} does not exist: this layer has units 0..{layer.n_units - 1}")
        self.layer, self.unit, self.strength = layer, unit, float(strength)
        self.input_site = layer.input_site
        self.n_units = layer.n_units

    def forward(self, source: torch.Tensor) -> tuple[torch.Tensor, SparseCodes]:
        lead, d = source.shape[:-1], source.shape[-1]
        flat = source.reshape(-1, d)
        _, codes = self.layer(flat)
        steered = steer_codes(codes, self.unit, self.strength)
        out = decode(self.layer, flat, steered)
        return out.reshape(*lead, out.shape[-1]), SparseCodes(steered.values.reshape(*lead, -1),
                                                              steered.indices.reshape(*lead, -1))
