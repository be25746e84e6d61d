"""TopK transcoder (neuron-level sparsity) and skip transcoder.

TC:     z     = TopK_K(ReLU(W_enc x + b_enc))          in R^H,  H = expansion * d
        y_hat = W_dec z + b_out
STC:    y_hat = W_dec z + b_out + W_skip x             W_skip in R^{d x d}, no bias

Each latent's decoder direction (a row of ``decoder``) is kept at unit norm: the parallel
gradient component is projected out before each step and rows renormalised after it.
The decode only touches the K selected rows (``sparse_decode``).

AuxK (opt-in, ``forward_with_aux``): e_hat = W_dec TopK_{k_aux}(ReLU(W_enc x + b_enc) over dead latents),
no bias and no skip path, so its gradient reaches only dead latents' encoder rows, biases and decoder rows.
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
    dead_unit_codes,
    normalise_rows_,
    remove_parallel_gradient_,
    sparse_decode,
    topk_relu,
    transcoder_budget,
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

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> SparseCodes:
        return topk_relu(self.pre_activations(x), self.config.k)

    def decode(self, x: torch.Tensor, codes: SparseCodes) -> torch.Tensor:
        return sparse_decode(codes, self.decoder) + self.b_out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SparseCodes]:
        codes = self.encode(x)
        return self.decode(x, codes), codes

    def forward_with_aux(self, x: torch.Tensor, dead: torch.Tensor,
                         k_aux: int) -> tuple[torch.Tensor, SparseCodes, torch.Tensor]:
        """AuxK (TopK-SAE practice): e_hat = W_dec TopK_{k_aux}(ReLU(pre of the dead latents)), one encoder pass."""
        pre = self.pre_activations(x)
        codes = topk_relu(pre, self.config.k)
        return self.decode(x, codes), codes, sparse_decode(dead_unit_codes(pre, dead, k_aux), self.decoder)

    def project_gradients(self) -> None:
        remove_parallel_gradient_(self.decoder)

    @torch.no_grad()
    def constrain(self) -> None:
        normalise_rows_(self.decoder)

    @classmethod
    def expected_n_params(cls, spec: LayerSpec, config: TranscoderConfig) -> int:
        width, d = cls.width_for(spec, config), spec.d_model
        return 2 * d * width + width + d


# Rows whose norm is within this of 1 count as on the unit sphere (float32 renormalisation
# leaves norms a few ulps either side of 1).
_ON_SPHERE = 1e-4


@register("stc")
class SkipTranscoder(Transcoder):
    """Skip transcoder: a TC plus a linear skip path W_skip x; W_skip and W_dec start at zero.

    Decoder constraint: rows are kept in the unit BALL (norm <= 1), not on the sphere. A
    zero-initialised row has no direction to renormalise (dividing by its zero norm is
    undefined, and renormalising the first tiny update would jump it to norm 1, undoing the
    zero init). So rows grow freely from zero; a row that reaches norm 1 is clipped back to
    it and from then on is treated exactly like a TC row (parallel gradient projected out).

    Parameter matching: the skip costs d^2, so the width shrinks to
        H = round((P_tc - d - d^2) / (2 d + 1))          (about H_tc - d / 2)
    with ``match_params``; otherwise H = expansion * d (or ``width``).
    """

    description = "Skip transcoder: TC + W_skip x (both zero-init), decoder rows kept in the unit ball"

    def __init__(self, spec: LayerSpec, config: TranscoderConfig) -> None:
        super().__init__(spec, config)
        self.skip = nn.Linear(spec.d_model, spec.d_model, bias=False)
        with torch.no_grad():
            self.skip.weight.zero_()
            self.decoder.zero_()

    @staticmethod
    def width_for(spec: LayerSpec, config: TranscoderConfig) -> int:
        if config.width is not None or not config.match_params:
            return Transcoder.width_for(spec, config)
        d = spec.d_model
        width = round((transcoder_budget(spec, config.expansion) - d - d * d) / (2 * d + 1))
        if width < 1:
            raise ValueError(f"expansion={config.expansion} cannot pay for the d x d skip at d={d}")
        return width

    def decode(self, x: torch.Tensor, codes: SparseCodes) -> torch.Tensor:
        return super().decode(x, codes) + self.skip(x)

    def project_gradients(self) -> None:
        remove_parallel_gradient_(self.decoder, min_norm=1 - _ON_SPHERE)  # rows inside the ball are free

    @torch.no_grad()
    def constrain(self) -> None:
        self.decoder.div_(self.decoder.norm(dim=-1, keepdim=True).clamp_min(1.0))

    @classmethod
    def expected_n_params(cls, spec: LayerSpec, config: TranscoderConfig) -> int:
        return super().expected_n_params(spec, config) + spec.d_model**2
