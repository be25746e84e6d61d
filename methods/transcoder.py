"""TopK transcoder (neuron-level sparsity).

    z     = TopK_K(ReLU(W_enc x + b_enc))          in R^H,  H = expansion * d
    y_hat = W_dec z + b_out

Each latent's decoder direction (a row of ``decoder``) is kept at unit norm: the parallel
gradient component is projected out before each step and rows renormalised after it.
The decode only touches the K selected rows (``sparse_decode``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import (
    LayerSpec,
    MethodConfig,
    SparseCodes,
    SparseLayer,
    normalise_rows_,
    remove_parallel_gradient_,
    sparse_decode,
    topk_relu,
)
from methods.registry import register


@dataclass
class TranscoderConfig(MethodConfig):
    """``width`` overrides expansion * d_model (then the budget is that of this width)."""

    width: int | None = None


@register("tc")
class Transcoder(SparseLayer):
    Config = TranscoderConfig
    description = "TopK transcoder: x -> W_dec TopK(ReLU(W_enc x + b)) + b, unit-norm decoder rows"

    def __init__(self, spec: LayerSpec, config: TranscoderConfig) -> None:
        super().__init__(spec, config)
        d = spec.d_model
        self.n_units = self.width_for(spec, config)
        if not 1 <= config.k <= self.n_units:
            raise ValueError(f"k={config.k} must be between 1 and the width {self.n_units}")
        self.encoder = nn.Linear(d, self.n_units)
        self.decoder = nn.Parameter(torch.empty(self.n_units, d))  # row i: latent i's output direction
        self.b_out = nn.Parameter(torch.zeros(d))
        with torch.no_grad():
            self.encoder.bias.zero_()
            nn.init.uniform_(self.decoder, -1.0, 1.0)
            normalise_rows_(self.decoder)

    @staticmethod
    def width_for(spec: LayerSpec, config: TranscoderConfig) -> int:
        return config.width if config.width is not None else config.expansion * spec.d_model

    def encode(self, x: torch.Tensor) -> SparseCodes:
        return topk_relu(self.encoder(x), self.config.k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SparseCodes]:
        codes = self.encode(x)
        return sparse_decode(codes, self.decoder) + self.b_out, codes

    def project_gradients(self) -> None:
        remove_parallel_gradient_(self.decoder)

    @torch.no_grad()
    def constrain(self) -> None:
        normalise_rows_(self.decoder)

    @classmethod
    def expected_n_params(cls, spec: LayerSpec, config: TranscoderConfig) -> int:
        width, d = cls.width_for(spec, config), spec.d_model
        return 2 * d * width + width + d
