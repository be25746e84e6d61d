"""Low-rank mixture of experts: the contrast MxD argues against (rank-R experts, TopK-gated).

    a     = TopK_K(ReLU(G x + b_g))                          in R^N
    y_hat = sum_{n in TopK} a_n U_n V_n^T x + b_out          U_n, V_n in R^{d x R}

With R = 1 it is a neuron-level sparse GLU, y_hat = sum_n a_n (v_n . x) u_n (the PEER limit).
Storage: ``in_factors[n, r] = V_n[:, r]`` and ``out_factors[n, r] = U_n[:, r]``, both [N, R, d],
so the K*R factor vectors a token uses are rows n*R + r of an [N*R, d] table. The forward
gathers only those rows (never loops over N, never builds a d x d expert): K R d multiply-adds
each way per token, plus the gate's N d.

Each output direction u_{n,r} is kept at unit norm (as the TC's decoder rows), so a unit
cannot win the TopK by shrinking what it writes while inflating its gate.

Parameter matching: an expert costs 2 d R (U_n, V_n) + d + 1 (its gate row and bias), so
    N = round((P_tc - d) / (2 d R + d + 1)),     P_tc = 2 d H_tc + H_tc + d,
and the layer has N (2 d R + d + 1) + d parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from methods.base import (
    LayerSpec,
    MethodConfig,
    SparseCodes,
    SparseLayer,
    normalise_rows_,
    remove_parallel_gradient_,
    sparse_decode,
    topk_relu,
    transcoder_budget,
)
from methods.registry import register

# Elements of a gathered [tokens, K*R, d] block per chunk (2^24 floats = 64 MiB in fp32).
_CHUNK_ELEMENTS = 1 << 24


class _GatherDot(torch.autograd.Function):
    """out[t, j] = table[rows[t, j]] . x[t], computed in token chunks.

    A plain ``(table[rows] * x[:, None]).sum(-1)`` would keep the gathered [T, K*R, d] block
    for backward (5 GiB at T = 4096, K = 32, R = 16, d = 640); this keeps only x, rows, table.
    x and table may differ in dtype (bf16 activations, fp32 master weights): the forward
    computes in x's dtype, the backward accumulates in the table's and returns each input's.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, rows, table)
        out = x.new_empty(rows.shape)
        for chunk in _token_chunks(rows, table.shape[1]):
            out[chunk] = torch.einsum("tjd,td->tj", table[rows[chunk]].to(x.dtype), x[chunk])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        x, rows, table = ctx.saved_tensors
        grad = grad.to(table.dtype).contiguous()
        grad_x = grad_table = None
        if ctx.needs_input_grad[0]:  # sum_j grad[t, j] table[rows[t, j]]: an embedding bag
            grad_x = F.embedding_bag(rows, table, per_sample_weights=grad, mode="sum").to(x.dtype)
        if ctx.needs_input_grad[2]:  # table[rows[t, j]] += grad[t, j] x[t]
            grad_table = torch.zeros_like(table)
            for chunk in _token_chunks(rows, table.shape[1]):
                outer = grad[chunk, :, None] * x[chunk, None, :].to(table.dtype)
                grad_table.index_add_(0, rows[chunk].reshape(-1), outer.reshape(-1, table.shape[1]))
        return grad_x, None, grad_table


def _token_chunks(rows: torch.Tensor, width: int) -> list[slice]:
    """Token slices whose gathered [tokens, J, width] block stays under _CHUNK_ELEMENTS."""
    step = max(1, _CHUNK_ELEMENTS // max(1, rows.shape[1] * width))
    return [slice(i, i + step) for i in range(0, rows.shape[0], step)]


def gather_dot(x: torch.Tensor, rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[T, J] dot products of each token x[t] with its J table rows ``table[rows[t]]``."""
    return _GatherDot.apply(x, rows, table)


@dataclass
class LowRankMoEConfig(MethodConfig):
    """``rank`` R of each expert; ``n_experts`` defaults to the parameter-matched N."""

    rank: int = 4
    n_experts: int | None = None


@register("lowrank-moe-r16", rank=16)
@register("lowrank-moe-r4", rank=4)
@register("lowrank-moe-r1", rank=1)
@register("lowrank-moe")  # innermost, so the class's own name is the family's
class LowRankMoE(SparseLayer):
    Config = LowRankMoEConfig
    description = "Low-rank MoE: sum over TopK(ReLU(G x + b)) of a_n U_n V_n^T x + b, rank-R experts"

    def __init__(self, spec: LayerSpec, config: LowRankMoEConfig) -> None:
        super().__init__(spec, config)
        if config.rank < 1:
            raise ValueError(f"rank must be >= 1, got {config.rank}")
        d, rank = spec.d_model, config.rank
        self.n_units = self.n_experts_for(spec, config)
        if not 1 <= config.k <= self.n_units:
            raise ValueError(f"k={config.k} must be between 1 and the number of experts {self.n_units}")
        self.gate = nn.Linear(d, self.n_units)  # G, b_g
        self.in_factors = nn.Parameter(torch.empty(self.n_units, rank, d))  # V_n^T
        self.out_factors = nn.Parameter(torch.empty(self.n_units, rank, d))  # U_n^T
        self.b_out = nn.Parameter(torch.zeros(d))
        with torch.no_grad():
            self.gate.bias.zero_()
            bound = d**-0.5  # nn.Linear's scale for a d -> R map
            nn.init.uniform_(self.in_factors, -bound, bound)
            nn.init.uniform_(self.out_factors, -1.0, 1.0)
            normalise_rows_(self.out_factors)

    @classmethod
    def n_experts_for(cls, spec: LayerSpec, config: LowRankMoEConfig) -> int:
        if config.n_experts is not None:
            return config.n_experts
        if not config.match_params:
            raise ValueError("lowrank-moe needs n_experts when match_params is off")
        d = spec.d_model
        n = round((transcoder_budget(spec, config.expansion) - d) / (2 * d * config.rank + d + 1))
        if n < 1:
            raise ValueError(f"expansion={config.expansion} cannot pay for a rank-{config.rank} expert at d={d}")
        return n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SparseCodes]:
        lead, d, rank, k = x.shape[:-1], x.shape[-1], self.config.rank, self.config.k
        flat = x.reshape(-1, d)
        codes = topk_relu(self.gate(flat), k)
        # Expert n's r-th factor is row n*R + r of the [N*R, d] tables.
        rows = (codes.indices[..., None] * rank + torch.arange(rank, device=x.device)).reshape(-1, k * rank)
        projections = gather_dot(flat, rows, self.in_factors.reshape(-1, d))  # v_{n,r} . x
        weights = (codes.values[..., None] * projections.reshape(-1, k, rank)).reshape(-1, k * rank)
        y_hat = sparse_decode(SparseCodes(weights, rows), self.out_factors.reshape(-1, d)) + self.b_out
        codes = SparseCodes(codes.values.reshape(*lead, k), codes.indices.reshape(*lead, k))
        return y_hat.reshape(*lead, d), codes

    def project_gradients(self) -> None:
        remove_parallel_gradient_(self.out_factors)

    @torch.no_grad()
    def constrain(self) -> None:
        normalise_rows_(self.out_factors)

    @classmethod
    def expected_n_params(cls, spec: LayerSpec, config: LowRankMoEConfig) -> int:
        d = spec.d_model
        return cls.n_experts_for(spec, config) * (2 * d * config.rank + d + 1) + d
