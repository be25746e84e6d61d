"""A third-party method in one file: ``dense-mlp``, the base MLP's shape trained from scratch.

    h     = GELU(W_1 x + b_1)              in R^W
    y_hat = W_2 TopK_K(h) + b_2            TopK by value; k = W gives the dense, TopK-free MLP

How well a freshly trained MLP of the base model's own size fits the layer is the ceiling
the sparse methods are compared with. W = d_mlp by default (registered with
match_params=False); with match_params=True, W = round((P_tc - d) / (2 d + 1)) = H_tc.

Load it with ``bench --plugin tests/plugins/dense_mlp_plugin.py run ...`` or
``methods.load_plugin(path)``; nothing else in the repository needs to know it exists.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods import LayerSpec, MethodConfig, SparseCodes, SparseLayer, register
from methods.base import sparse_decode, transcoder_budget


@dataclass
class DenseMLPConfig(MethodConfig):
    """``width`` overrides the hidden width W outright."""

    width: int | None = None


@register("dense-mlp", match_params=False)
class DenseMLP(SparseLayer):
    Config = DenseMLPConfig
    description = "Dense GELU MLP of the base MLP's width, TopK on its hidden units (k = width: dense)"

    def __init__(self, spec: LayerSpec, config: DenseMLPConfig) -> None:
        super().__init__(spec, config)
        self.n_units = self.width_for(spec, config)
        if not 1 <= config.k <= self.n_units:
            raise ValueError(f"k={config.k} must be between 1 and the width {self.n_units}")
        self.up = nn.Linear(spec.d_model, self.n_units)
        self.down = nn.Parameter(torch.empty(self.n_units, spec.d_model))  # row i: unit i's output
        self.b_out = nn.Parameter(torch.zeros(spec.d_model))
        nn.init.uniform_(self.down, -self.n_units**-0.5, self.n_units**-0.5)

    @staticmethod
    def width_for(spec: LayerSpec, config: DenseMLPConfig) -> int:
        if config.width is not None:
            return config.width
        if config.match_params:
            d = spec.d_model
            return round((transcoder_budget(spec, config.expansion) - d) / (2 * d + 1))
        return spec.d_mlp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SparseCodes]:
        values, indices = F.gelu(self.up(x)).topk(self.config.k, dim=-1, sorted=False)
        codes = SparseCodes(values, indices)
        return sparse_decode(codes, self.down) + self.b_out, codes

    @classmethod
    def expected_n_params(cls, spec: LayerSpec, config: DenseMLPConfig) -> int:
        width, d = cls.width_for(spec, config), spec.d_model
        return 2 * d * width + width + d
