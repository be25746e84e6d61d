"""Mixture of Decoders (MxD): layer-level sparsity with full-rank experts.

    z     = phi(W_enc x + b_enc)              in R^H, dense (H = the base MLP's hidden width)
    a     = TopK_K(ReLU(G x + b_g))           in R^N, sparse expert coefficients
    y_hat = (D^T z) * (C a) + b_out           D in R^{H x d}, C in R^{d x N}

which equals sum_n a_n W_n^T z with W_n = D diag(c_n): N full-rank H x d experts kept in
factorised form (H d + N d parameters, not N H d). Only the K selected columns of C are
read (``sparse_decode``), so the expert branch costs O(K d) per token after the gate.
Init: D = 0, C ~ U(-1, 1) with unit-norm columns (kept so), biases 0.

Parameter matching to a TC of width H_tc = expansion * d (the MxD paper's rule):
    N = round((P_tc - (2 d H + H_tc + d)) / (2 d + 1)),   P_tc = 2 d H_tc + H_tc + d
(GPT-2 small: N = 21,490). The MxD then has 2 d H + H + d + N (2 d + 1) parameters.
(The rule subtracts the TC's H_tc encoder biases, not the MxD's own H, so an MxD lands about
H_tc - H parameters under the budget: 0.06 % for GPT-2 small.)

``mxd-glu`` keeps the base model's GLU for the dense branch (Llama, Gemma):
    z = act(W_gate x) * (W_up x)              no biases; act = the base MLP's activation
costing 3 d H weights and no biases; N follows the same rule with 3 d H as the dense cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN

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
class MxDConfig(MethodConfig):
    """``hidden`` defaults to the base MLP's width; ``n_experts`` defaults to the matched N."""

    hidden: int | None = None
    n_experts: int | None = None
    activation: str = "gelu"


def matched_n_experts(spec: LayerSpec, expansion: int, hidden: int, dense_params: int) -> int:
    """The MxD paper's rule, with ``dense_params`` the 2 d H weights of the dense hidden branch."""
    tc_width = expansion * spec.d_model
    spare = transcoder_budget(spec, expansion) - (dense_params + tc_width + spec.d_model)
    n = round(spare / (2 * spec.d_model + 1))
    if n < 1:
        raise ValueError(
            f"expansion={expansion} leaves no parameters for experts (dense branch of hidden width "
            f"{hidden} already costs {dense_params:,}); use a larger expansion or set n_experts"
        )
    return n


@register("mxd")
class MixtureOfDecoders(SparseLayer):
    Config = MxDConfig
    description = "Mixture of Decoders: (D^T phi(W x)) * (C TopK(ReLU(G x))) + b, N full-rank experts"

    def __init__(self, spec: LayerSpec, config: MxDConfig) -> None:
        super().__init__(spec, config)
        d = spec.d_model
        self.hidden = self.hidden_for(spec, config)
        self.n_units = self.n_experts_for(spec, config)
        if not 1 <= config.k <= self.n_units:
            raise ValueError(f"k={config.k} must be between 1 and the number of experts {self.n_units}")
        self.build_hidden(d)
        self.decoder = nn.Parameter(torch.zeros(self.hidden, d))  # D
        self.gate = nn.Linear(d, self.n_units)  # G, b_g
        self.expert_weights = nn.Parameter(torch.empty(self.n_units, d))  # row n: c_n
        self.b_out = nn.Parameter(torch.zeros(d))
        with torch.no_grad():
            self.gate.bias.zero_()
            nn.init.uniform_(self.expert_weights, -1.0, 1.0)
            normalise_rows_(self.expert_weights)

    # The dense hidden branch; mxd-glu overrides these three to keep the base model's GLU.
    def build_hidden(self, d: int) -> None:
        self.encoder = nn.Linear(d, self.hidden)
        self.act = ACT2FN[self.config.activation]
        with torch.no_grad():
            self.encoder.bias.zero_()

    def hidden_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.encoder(x))

    @classmethod
    def dense_branch_params(cls, spec: LayerSpec, hidden: int) -> int:
        """Weights of the encoder and D: 2 d H (the encoder bias is counted separately)."""
        return 2 * spec.d_model * hidden

    @classmethod
    def dense_branch_biases(cls, hidden: int) -> int:
        return hidden

    @staticmethod
    def hidden_for(spec: LayerSpec, config: MxDConfig) -> int:
        return config.hidden if config.hidden is not None else spec.d_mlp

    @classmethod
    def n_experts_for(cls, spec: LayerSpec, config: MxDConfig) -> int:
        if config.n_experts is not None:
            return config.n_experts
        if not config.match_params:
            raise ValueError("mxd needs n_experts when match_params is off")
        hidden = cls.hidden_for(spec, config)
        return matched_n_experts(spec, config.expansion, hidden, cls.dense_branch_params(spec, hidden))

    def gate_codes(self, x: torch.Tensor) -> SparseCodes:
        return topk_relu(self.gate(x), self.config.k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SparseCodes]:
        codes = self.gate_codes(x)
        expert_mix = sparse_decode(codes, self.expert_weights)  # C a, from K columns of C
        return (self.hidden_activations(x) @ self.decoder) * expert_mix + self.b_out, codes

    def forward_with_aux(self, x: torch.Tensor, dead: torch.Tensor,
                         k_aux: int) -> tuple[torch.Tensor, SparseCodes, torch.Tensor]:
        """AuxK for the gate: the k_aux dead experts with the largest gate logits fit the residual
        through the shared dense branch, held fixed:

            a_aux = TopK_{k_aux}(ReLU(G_dead x + b_g,dead)),    e_hat = sg(D^T z) * (C a_aux)

        sg() stops the gradient, so the term moves only dead experts' gate rows, gate biases and
        columns c_n, never W_enc or D (which every live expert shares).
        """
        logits = self.gate(x)
        codes = topk_relu(logits, self.config.k)
        dense = self.hidden_activations(x) @ self.decoder  # D^T z
        y_hat = dense * sparse_decode(codes, self.expert_weights) + self.b_out
        dead_mix = sparse_decode(dead_unit_codes(logits, dead, k_aux), self.expert_weights)
        return y_hat, codes, dense.detach() * dead_mix

    def project_gradients(self) -> None:
        remove_parallel_gradient_(self.expert_weights)

    @torch.no_grad()
    def constrain(self) -> None:
        normalise_rows_(self.expert_weights)

    @classmethod
    def expected_n_params(cls, spec: LayerSpec, config: MxDConfig) -> int:
        hidden, n, d = cls.hidden_for(spec, config), cls.n_experts_for(spec, config), spec.d_model
        return cls.dense_branch_params(spec, hidden) + cls.dense_branch_biases(hidden) + d + n * (2 * d + 1)


@dataclass
class MxDGLUConfig(MxDConfig):
    """``activation`` None means the base MLP's own (``spec.activation``)."""

    activation: str | None = None


@register("mxd-glu")
class MixtureOfDecodersGLU(MixtureOfDecoders):
    """MxD whose dense branch is the base model's GLU, so it can start from the MLP's weights:
    copy gate_proj, up_proj and D = down_proj^T; with N = 1, c = 1 and a = 1 it IS that MLP."""

    Config = MxDGLUConfig
    description = "MxD with a GLU hidden layer: (D^T (act(W_g x) * W_u x)) * (C TopK(ReLU(G x))) + b"

    def build_hidden(self, d: int) -> None:
        # HF names, so a base MLP's weights copy over by name; ``self.gate`` is the expert gate G.
        self.gate_proj = nn.Linear(d, self.hidden, bias=False)
        self.up_proj = nn.Linear(d, self.hidden, bias=False)
        self.act = ACT2FN[self.config.activation or self.spec.activation]

    def hidden_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.gate_proj(x)) * self.up_proj(x)

    @classmethod
    def dense_branch_params(cls, spec: LayerSpec, hidden: int) -> int:
        """W_gate, W_up and D: 3 d H."""
        return 3 * spec.d_model * hidden

    @classmethod
    def dense_branch_biases(cls, hidden: int) -> int:
        return 0
