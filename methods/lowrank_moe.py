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
    dead_unit_codes,
    normalise_rows_,
    remove_parallel_gradient_,
    sparse_decode,
    topk_relu,
    transcoder_budget,
)
from methods.registry import register

class _GatherDot(torch.autograd.Function):
    """out[t, j] = table[rows[t, j]] . x[t], without ever building the gathered [T, J, d] block.

    It is the transpose of an embedding bag E(w)[t] = sum_j w[t, j] table[rows[t, j]]:
    out = d<x, E(w)>/dw, the x-gradient is E(grad), and the table-gradient is d<x, E(grad)>/dtable.
    So all three run as embedding_bag's own kernels, which stream the J rows of each token
    (memory O(T J), no [T, J, d] block): the forward is embedding_bag's per-sample-weights
    gradient kernel, the table-gradient its weight-gradient kernel (a sorted scatter-add).
    A plain ``(table[rows] * x[:, None]).sum(-1)`` keeps the gathered block for backward
    (5 GiB at T = 4096, K = 32, R = 16, d = 640) and is several times slower.
    x and table may differ in dtype (bf16 activations, fp32 master weights): the products run
    in the table's dtype and each gradient is returned in its input's.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        flat_rows, bag_of_row = rows.reshape(-1), _bag_of_each_row(rows)
        offsets = torch.arange(0, flat_rows.numel(), rows.shape[1], device=rows.device)
        x_wide = x.to(table.dtype).contiguous()
        ctx.save_for_backward(x_wide, rows, table, bag_of_row)
        ctx.x_dtype = x.dtype
        out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            x_wide, table, flat_rows, offsets, bag_of_row, _SUM_MODE)
        return out.reshape(rows.shape).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        x_wide, rows, table, bag_of_row = ctx.saved_tensors
        grad = grad.to(table.dtype).contiguous()
        grad_x = grad_table = None
        if ctx.needs_input_grad[0]:  # sum_j grad[t, j] table[rows[t, j]]: an embedding bag
            grad_x = F.embedding_bag(rows, table, per_sample_weights=grad, mode="sum").to(ctx.x_dtype)
        if ctx.needs_input_grad[2]:  # table[rows[t, j]] += grad[t, j] x[t]
            per_bag = torch.full((rows.shape[0],), rows.shape[1], dtype=rows.dtype, device=rows.device)
            grad_table = torch.ops.aten._embedding_bag_dense_backward(
                x_wide, rows.reshape(-1), bag_of_row, per_bag, rows.new_empty(0), table.shape[0],
                False, _SUM_MODE, grad.reshape(-1))
        return grad_x, None, grad_table


_SUM_MODE = 0  # embedding_bag's mode="sum" in the aten ops' integer encoding


def _bag_of_each_row(rows: torch.Tensor) -> torch.Tensor:
    """For the flattened [T * J] rows, the token (bag) each belongs to: 0,..,0, 1,..,1, ..."""
    return torch.arange(rows.shape[0], device=rows.device).repeat_interleave(rows.shape[1])


def gather_dot(x: torch.Tensor, rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[T, J] dot products of each token x[t] with its J table rows ``table[rows[t]]``."""
    return _GatherDot.apply(x, rows, table)


def gather_dot_reference(x: torch.Tensor, rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The slow twin of ``gather_dot``: builds the [T, J, d] block (for tests)."""
    return torch.einsum("tjd,td->tj", table[rows].to(x.dtype), x)


# Gathered factor rows (tokens x K x R) per call of the embedding-bag kernels: CUDA's index their
# samples with 32-bit ints, so a larger batch (16,384 tokens at K = 256, R = 16) runs in token blocks.
MAX_GATHERED_ROWS = 2**24


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
        lead, d, k = x.shape[:-1], x.shape[-1], self.config.k
        flat = x.reshape(-1, d)
        codes = topk_relu(self.gate(flat), k)
        y_hat = self.blocked_expert_sum(flat, codes)
        codes = SparseCodes(codes.values.reshape(*lead, k), codes.indices.reshape(*lead, k))
        return (y_hat + self.b_out).reshape(*lead, d), codes

    def forward_with_aux(self, x: torch.Tensor, dead: torch.Tensor,
                         k_aux: int) -> tuple[torch.Tensor, SparseCodes, torch.Tensor]:
        """AuxK: e_hat = sum over the k_aux dead experts with the largest gate logits of a_n U_n V_n^T x
        (their own factors and gate rows are all it moves)."""
        lead, d, k = x.shape[:-1], x.shape[-1], self.config.k
        flat = x.reshape(-1, d)
        logits = self.gate(flat)
        codes = topk_relu(logits, k)
        y_hat = self.blocked_expert_sum(flat, codes) + self.b_out
        dead_estimate = self.blocked_expert_sum(flat, dead_unit_codes(logits, dead, k_aux))
        codes = SparseCodes(codes.values.reshape(*lead, k), codes.indices.reshape(*lead, k))
        return y_hat.reshape(*lead, d), codes, dead_estimate.reshape(*lead, d)

    def blocked_expert_sum(self, flat: torch.Tensor, codes: SparseCodes) -> torch.Tensor:
        """``expert_sum`` in token blocks small enough for the gather kernels' 32-bit sample index."""
        per_call = max(1, MAX_GATHERED_ROWS // (max(1, codes.indices.shape[-1]) * self.config.rank))
        if len(flat) <= per_call:
            return self.expert_sum(flat, codes)
        return torch.cat([self.expert_sum(flat[i:i + per_call], SparseCodes(codes.values[i:i + per_call],
                                                                           codes.indices[i:i + per_call]))
                          for i in range(0, len(flat), per_call)])

    def expert_sum(self, x: torch.Tensor, codes: SparseCodes) -> torch.Tensor:
        """sum_{n in TopK} a_n U_n V_n^T x for a [T, d] block, reading only the K R factor rows each token uses
        (K is the codes' width: the layer's k, or k_aux for AuxK)."""
        d, rank, k = x.shape[-1], self.config.rank, codes.indices.shape[-1]
        # Expert n's r-th factor is row n*R + r of the [N*R, d] tables.
        rows = (codes.indices[..., None] * rank + torch.arange(rank, device=x.device)).reshape(-1, k * rank)
        projections = gather_dot(x, rows, self.in_factors.reshape(-1, d))  # v_{n,r} . x
        weights = (codes.values[..., None] * projections.reshape(-1, k, rank)).reshape(-1, k * rank)
        return sparse_decode(SparseCodes(weights, rows), self.out_factors.reshape(-1, d))

    def project_gradients(self) -> None:
        remove_parallel_gradient_(self.out_factors)

    @torch.no_grad()
    def constrain(self) -> None:
        normalise_rows_(self.out_factors)

    @classmethod
    def expected_n_params(cls, spec: LayerSpec, config: LowRankMoEConfig) -> int:
        d = spec.d_model
        return cls.n_experts_for(spec, config) * (2 * d * config.rank + d + 1) + d
