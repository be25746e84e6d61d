"""MxD and MxD-GLU against materialised experts, plain and GLU MLPs, and the MxD paper's matching rule."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Gemma3TextConfig, LlamaConfig
from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP
from transformers.models.llama.modeling_llama import LlamaMLP

from methods import LayerSpec, create
from methods.base import transcoder_budget
from methods.mxd import MixtureOfDecoders, MixtureOfDecodersGLU, MxDConfig, MxDGLUConfig

SPEC = LayerSpec(d_model=8, d_mlp=12)


def randomise_(layer: torch.nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)  # D random too: at its zero init every expert is the zero map


def materialised_experts_output(layer: MixtureOfDecoders, x: torch.Tensor) -> torch.Tensor:
    """y = sum_n a_n W_n^T z + b_out with W_n = D diag(c_n) built explicitly, one token at a time."""
    z = layer.hidden_activations(x)
    gate = (x @ layer.gate.weight.T + layer.gate.bias).relu()
    kth = gate.topk(layer.config.k, dim=-1).values[:, -1:]
    a = torch.where(gate >= kth, gate, torch.zeros_like(gate))
    rows = []
    for t in range(x.shape[0]):
        y = layer.b_out.clone()
        for n in range(layer.n_units):
            if a[t, n] != 0:
                expert = layer.decoder @ torch.diag(layer.expert_weights[n])  # H x d
                y = y + a[t, n] * (expert.T @ z[t])
        rows.append(y)
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["mxd", "mxd-glu"])
def test_factorised_output_equals_sum_over_materialised_experts(name: str) -> None:
    layer = create(name, SPEC, n_experts=5, k=3)
    randomise_(layer)
    x = torch.randn(6, 8)
    fast, _ = layer(x)
    slow = materialised_experts_output(layer, x)
    torch.testing.assert_close(fast, slow)
    params = [layer.decoder, layer.expert_weights, layer.gate.weight, layer.b_out]
    upstream = torch.randn_like(fast)
    for g_fast, g_slow in zip(torch.autograd.grad((fast * upstream).sum(), params),
                              torch.autograd.grad((slow * upstream).sum(), params)):
        torch.testing.assert_close(g_fast, g_slow)


def force_single_unit_expert_(layer: MixtureOfDecoders) -> None:
    """N = 1, c = 1, and a = ReLU(0 x + 1) = 1 for every token."""
    with torch.no_grad():
        layer.expert_weights.fill_(1.0)
        layer.gate.weight.zero_()
        layer.gate.bias.fill_(1.0)


def test_one_expert_with_unit_weights_is_a_plain_mlp() -> None:
    layer = create("mxd", SPEC, n_experts=1, k=1)
    randomise_(layer)
    force_single_unit_expert_(layer)
    x = torch.randn(10, 8)
    mlp = F.gelu(x @ layer.encoder.weight.T + layer.encoder.bias) @ layer.decoder + layer.b_out
    torch.testing.assert_close(layer(x)[0], mlp)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_glu_variant_initialised_from_a_glu_mlp_is_that_mlp(family: str) -> None:
    torch.manual_seed(0)
    if family == "llama":
        config = LlamaConfig(hidden_size=8, intermediate_size=12, hidden_act="silu", num_attention_heads=2)
        mlp, act = LlamaMLP(config), "silu"
    else:
        config = Gemma3TextConfig(
            hidden_size=8, intermediate_size=12, hidden_activation="gelu_pytorch_tanh",
            num_attention_heads=2, num_key_value_heads=1, head_dim=4,
        )
        mlp, act = Gemma3MLP(config), "gelu_pytorch_tanh"
    spec = LayerSpec(d_model=8, d_mlp=12, gated=True, activation=act)
    layer = create("mxd-glu", spec, n_experts=1, k=1)
    assert layer.act.__class__ is mlp.act_fn.__class__  # activation taken from the spec
    with torch.no_grad():
        layer.gate_proj.weight.copy_(mlp.gate_proj.weight)
        layer.up_proj.weight.copy_(mlp.up_proj.weight)
        layer.decoder.copy_(mlp.down_proj.weight.T)
    force_single_unit_expert_(layer)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(layer(x)[0], mlp(x))


def test_paper_matching_rule_gives_21490_experts_for_gpt2_small() -> None:
    spec = LayerSpec(d_model=768, d_mlp=3072)
    config = MxDConfig(expansion=32)
    assert MixtureOfDecoders.n_experts_for(spec, config) == 21_490
    budget = transcoder_budget(spec, 32)  # 37,774,080: GPT-2's "38M each"
    assert abs(MixtureOfDecoders.expected_n_params(spec, config) - budget) / budget < 0.001


def test_glu_variant_pays_3dH_for_its_dense_branch() -> None:
    spec = LayerSpec(640, 2048, gated=True, activation="gelu_pytorch_tanh")  # Gemma 3 270M
    # expansion 8: P_tc = 6,559,360; (6,559,360 - 3*640*2048 - 5,120 - 640) / 1281 = 2046.4
    assert MixtureOfDecodersGLU.n_experts_for(spec, MxDGLUConfig(expansion=8)) == 2046
    # expansion 32: (26,235,520 - 3,932,160 - 20,480 - 640) / 1281 = 17394.4
    assert MixtureOfDecodersGLU.n_experts_for(spec, MxDGLUConfig(expansion=32)) == 17394
    layer = create("mxd-glu", LayerSpec(8, 12, gated=True, activation="silu"), n_experts=3, k=2)
    assert layer.gate_proj.bias is None and layer.up_proj.bias is None
    assert layer.n_params() == 3 * 8 * 12 + 8 + 3 * (2 * 8 + 1)


def test_matching_needs_room_for_experts() -> None:
    with pytest.raises(ValueError, match="expansion"):
        create("mxd", LayerSpec(16, 64), expansion=4)  # 2 d H alone is the whole budget
    with pytest.raises(ValueError, match="n_experts"):
        create("mxd", SPEC, match_params=False)
    assert create("mxd", SPEC, match_params=False, n_experts=7, k=2).n_units == 7


def test_expert_columns_stay_unit_norm() -> None:
    layer = create("mxd", LayerSpec(16, 64), expansion=16, k=4)
    randomise_(layer)
    layer.constrain()
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.05)
    x = torch.randn(64, 16)
    for _ in range(3):
        optimiser.zero_grad()
        ((layer(x)[0] - torch.randn(64, 16)) ** 2).sum().backward()
        layer.project_gradients()
        grad, c = layer.expert_weights.grad, layer.expert_weights.detach()
        cos = (grad * c).sum(-1) / (grad.norm(dim=-1) * c.norm(dim=-1)).clamp_min(1e-12)
        assert cos.abs().max() < 1e-4
        optimiser.step()
        layer.constrain()
    torch.testing.assert_close(layer.expert_weights.norm(dim=-1), torch.ones(layer.n_units))


def test_init_follows_the_paper() -> None:
    layer = create("mxd", LayerSpec(16, 64), expansion=16, k=4)
    assert torch.equal(layer.decoder, torch.zeros_like(layer.decoder))
    assert not layer.gate.bias.any() and not layer.encoder.bias.any() and not layer.b_out.any()
    torch.testing.assert_close(layer.expert_weights.norm(dim=-1), torch.ones(layer.n_units))
