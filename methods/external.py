"""Dictionaries trained elsewhere whose activation no registered method has: JumpReLU and ReLU.

    pre   = W_enc (x - s) + b_enc                 s = b_dec for SAEs that centre their input, else 0
    z     = pre * [pre > max(theta, 0)]           JumpReLU; theta = 0 gives the plain ReLU
    y_hat = W_dec z + b_dec (+ W_skip x)

The threshold rule ``[pre > max(theta, 0)]`` is ReLU(pre) * [pre > theta] for every theta
(a negative threshold leaves the ReLU in charge), as SAELens computes it.

These classes exist only so that ``bench.interop`` can score such dictionaries beside our
methods; they are deliberately NOT registered, so ``--methods all`` never tries to train them
and they have no training constraint. They are registered as load-only instead, under the names
``bench.interop`` gives them, so a converted dictionary saved as a checkpoint loads back. The number of active units varies per token, so
``forward`` returns codes as wide as the busiest token of the batch: every active unit is
listed, and narrower tokens are padded with value 0 (which ``SparseCodes`` reads as inactive).
``config.k`` is the width, the only bound on how many units can be active.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import LayerSpec, MethodConfig, SparseCodes, SparseLayer, sparse_decode
from methods.registry import register_load_only


@dataclass
class ThresholdConfig(MethodConfig):
    """``width`` units; ``jump`` adds a per-unit threshold; ``skip`` adds W_skip x; ``k`` is set to the width."""

    width: int = 0
    jump: bool = True
    skip: bool = False
    match_params: bool = False


@register_load_only("external-jumprelu-transcoder", "external-relu-transcoder")
class ThresholdTranscoder(SparseLayer):
    """JumpReLU (or ReLU) transcoder: MLP input -> MLP output, optionally with a linear skip."""

    Config = ThresholdConfig
    description = "external JumpReLU/ReLU transcoder: x -> W_dec JumpReLU(W_enc x + b) + b_dec (+ W_skip x)"
    input_site = "mlp_input"

    def __init__(self, spec: LayerSpec, config: ThresholdConfig) -> None:
        if config.width < 1:
            raise ValueError(f"width must be >= 1, got {config.width}")
        config.k = config.width
        super().__init__(spec, config)
        d = spec.d_model
        self.n_units = config.width
        self.encoder = nn.Linear(d, config.width)
        self.decoder = nn.Parameter(torch.zeros(config.width, d))  # row i: unit i's output direction
        self.b_out = nn.Parameter(torch.zeros(d))
        self.threshold = nn.Parameter(torch.zeros(config.width)) if config.jump else None
        self.skip = nn.Linear(d, d, bias=False) if config.skip else None
        # Subtracted from the input before encoding (an SAE's b_dec); a buffer, so not counted twice.
        self.register_buffer("input_shift", torch.zeros(d))

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The dense code z [..., width]; exactly the active units are non-zero."""
        pre = self.encoder(x - self.input_shift)
        floor = pre.new_zeros(()) if self.threshold is None else self.threshold.clamp_min(0)
        return pre * (pre > floor)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SparseCodes]:
        z = self.activations(x)
        widest = max(int((z != 0).sum(dim=-1).max().item()) if z.numel() else 0, 1)
        values, indices = z.topk(widest, dim=-1, sorted=False)  # the active units, then zero padding
        codes = SparseCodes(values, indices)
        y_hat = sparse_decode(codes, self.decoder) + self.b_out
        if self.skip is not None:
            y_hat = y_hat + self.skip(x)
        return y_hat, codes

    @classmethod
    def expected_n_params(cls, spec: LayerSpec, config: ThresholdConfig) -> int:
        d, width = spec.d_model, config.width
        return 2 * d * width + width + d + (width if config.jump else 0) + (d * d if config.skip else 0)


@register_load_only("external-jumprelu-sae", "external-relu-sae")
class ThresholdAutoencoder(ThresholdTranscoder):
    """JumpReLU (or ReLU) SAE on the MLP output: spliced, the model computes SAE(MLP(x))."""

    description = "external JumpReLU/ReLU SAE on the MLP output: y -> W_dec JumpReLU(W_enc (y - s) + b) + b_dec"
    input_site = "mlp_output"
