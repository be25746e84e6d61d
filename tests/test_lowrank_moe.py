"""Low-rank MoE: gathered fast path vs materialised experts, the R = 1 neuron limit, matching."""
from __future__ import annotations

import pytest
import torch

from methods import LayerSpec, create
from methods import lowrank_moe
from methods.base import transcoder_budget
from methods.lowrank_moe import LowRankMoE, LowRankMoEConfig, gather_dot, gather_dot_reference

SPEC = LayerSpec(d_model=8, d_mlp=32)


def randomise_(layer: torch.nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)


def dense_gate(layer: LowRankMoE, x: torch.Tensor) -> torch.Tensor:
    """The N-wide code a = TopK_K(ReLU(G x + b_g)), written densely."""
    gate = (x @ layer.gate.weight.T + layer.gate.bias).relu()
    return torch.where(gate >= gate.topk(layer.config.k, dim=-1).values[:, -1:], gate, torch.zeros_like(gate))


def test_fast_path_equals_loop_over_materialised_experts() -> None:
    layer = create("lowrank-moe", SPEC, rank=3, n_experts=6, k=2)
    randomise_(layer)
    x = torch.randn(5, 8, requires_grad=True)
    fast, _ = layer(x)

    a = dense_gate(layer, x)
    rows = []
    for t in range(x.shape[0]):
        y = layer.b_out.clone()
        for n in range(layer.n_units):
            if a[t, n] != 0:
                expert = layer.out_factors[n].T @ layer.in_factors[n]  # U_n V_n^T, d x d
                y = y + a[t, n] * (expert @ x[t])
        rows.append(y)
    slow = torch.stack(rows)

    torch.testing.assert_close(fast, slow)
    inputs = [x, *layer.parameters()]
    upstream = torch.randn_like(fast)
    for g_fast, g_slow in zip(torch.autograd.grad((fast * upstream).sum(), inputs),
                              torch.autograd.grad((slow * upstream).sum(), inputs)):
        torch.testing.assert_close(g_fast, g_slow)


def test_token_blocks_give_the_same_output_and_gradients(monkeypatch) -> None:
    layer = create("lowrank-moe", SPEC, rank=3, n_experts=6, k=2)
    randomise_(layer)
    x = torch.randn(11, 8)

    def run() -> list[torch.Tensor]:
        layer.zero_grad()
        source = x.clone().requires_grad_()
        y, codes = layer(source)
        (y * torch.arange(8.0)).sum().backward()
        return [y, codes.indices, source.grad] + [p.grad.clone() for p in layer.parameters()]

    whole = run()
    monkeypatch.setattr(lowrank_moe, "MAX_GATHERED_ROWS", 4 * 2 * 3)  # 4 tokens per call: blocks of 4, 4, 3
    block_sizes, expert_sum = [], layer.expert_sum
    monkeypatch.setattr(layer, "expert_sum", lambda x, codes: block_sizes.append(len(x)) or expert_sum(x, codes))
    blocked = run()
    assert block_sizes == [4, 4, 3]
    for a, b in zip(whole, blocked):
        torch.testing.assert_close(a, b)


def test_rank_one_is_a_neuron_level_sparse_glu() -> None:
    layer = create("lowrank-moe-r1", SPEC, k=4)
    randomise_(layer)
    x = torch.randn(2, 7, 8)
    a = dense_gate(layer, x.reshape(-1, 8))  # [T, N]
    w_dec = layer.out_factors[:, 0, :].T  # d x N: column n is u_n
    v = layer.in_factors[:, 0, :]  # N x d: row n is v_n
    neuron = (a * (x.reshape(-1, 8) @ v.T)) @ w_dec.T + layer.b_out  # W_dec (a * (V x)) + b
    torch.testing.assert_close(layer(x)[0], neuron.reshape(2, 7, 8))


@pytest.mark.parametrize("shape", [(9, 4, 7, 5), (1, 1, 1, 3), (33, 16, 5, 11)])  # tokens, J, rows, d
def test_gather_dot_matches_its_reference_twin(shape) -> None:
    """The embedding-bag fast path against the materialised gather, values and both gradients."""
    tokens, per_token, n_rows, d = shape
    torch.manual_seed(0)
    x = torch.randn(tokens, d, dtype=torch.float64, requires_grad=True)
    table = torch.randn(n_rows, d, dtype=torch.float64, requires_grad=True)
    rows = torch.randint(0, n_rows, (tokens, per_token))  # repeats within and across tokens: gradients accumulate
    fast, slow = gather_dot(x, rows, table), gather_dot_reference(x, rows, table)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(slow, (table[rows] * x[:, None, :]).sum(-1))
    upstream = torch.randn_like(fast)
    for g_fast, g_slow in zip(torch.autograd.grad((fast * upstream).sum(), (x, table)),
                              torch.autograd.grad((slow * upstream).sum(), (x, table))):
        torch.testing.assert_close(g_fast, g_slow)
    assert torch.autograd.gradcheck(lambda x_, t_: gather_dot(x_, rows, t_), (x, table))


def test_gather_dot_skips_gradients_nobody_asked_for() -> None:
    """Training data x carries no gradient; the table's gradient must still be right."""
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    table = torch.randn(7, 5, requires_grad=True)
    rows = torch.randint(0, 7, (6, 3))
    gather_dot(x, rows, table).sum().backward()
    reference = table.detach().clone().requires_grad_()
    gather_dot_reference(x, rows, reference).sum().backward()
    torch.testing.assert_close(table.grad, reference.grad)


def test_gather_dot_with_bf16_activations_and_fp32_weights() -> None:
    """The harness feeds bf16 activations to fp32 master weights under autocast."""
    torch.manual_seed(0)
    x = torch.randn(6, 5).bfloat16().requires_grad_()
    table = torch.randn(7, 5, requires_grad=True)
    rows = torch.randint(0, 7, (6, 3))
    out = gather_dot(x, rows, table)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and table.grad.dtype == torch.float32
    x32 = x.detach().float().requires_grad_()
    table32 = table.detach().clone().requires_grad_()
    (table32[rows] * x32[:, None, :]).sum().backward()
    torch.testing.assert_close(table.grad, table32.grad)  # accumulated in fp32
    torch.testing.assert_close(x.grad.float(), x32.grad, atol=0.05, rtol=0.02)


VARIANTS = [("lowrank-moe", 4), ("lowrank-moe-r1", 1), ("lowrank-moe-r4", 4), ("lowrank-moe-r16", 16)]
SHAPES = [(LayerSpec(16, 64), 8), (LayerSpec(768, 3072), 32), (LayerSpec(640, 2048), 8)]


@pytest.mark.parametrize("name,rank", VARIANTS)
@pytest.mark.parametrize("spec,expansion", SHAPES)
def test_matching_rule_is_the_closest_expert_count(name: str, rank: int, spec: LayerSpec, expansion: int) -> None:
    d, budget = spec.d_model, transcoder_budget(spec, expansion)
    per_expert = 2 * d * rank + d + 1
    config = LowRankMoEConfig(rank=rank, expansion=expansion)
    n = LowRankMoE.n_experts_for(spec, config)
    assert LowRankMoE.expected_n_params(spec, config) == n * per_expert + d
    assert abs(n * per_expert + d - budget) <= per_expert / 2  # no other N lands closer
    assert create(name, LayerSpec(16, 64), expansion=8, k=1).config.rank == rank


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="rank"):
        create("lowrank-moe", SPEC, rank=0)
    with pytest.raises(ValueError, match="n_experts"):
        create("lowrank-moe", SPEC, match_params=False)
    assert create("lowrank-moe", SPEC, match_params=False, n_experts=3, k=3).n_units == 3


def test_output_factors_stay_unit_norm() -> None:
    layer = create("lowrank-moe-r4", SPEC, k=3)
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.05)
    x = torch.randn(32, 8)
    for _ in range(3):
        optimiser.zero_grad()
        ((layer(x)[0] - torch.randn(32, 8)) ** 2).sum().backward()
        layer.project_gradients()
        grad, u = layer.out_factors.grad, layer.out_factors.detach()
        cos = (grad * u).sum(-1) / (grad.norm(dim=-1) * u.norm(dim=-1)).clamp_min(1e-12)
        assert cos.abs().max() < 1e-4, "parallel gradient component survived"
        optimiser.step()
        layer.constrain()
    norms = layer.out_factors.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
