"""decode(layer, x, codes) against each method's own forward, and one unit's contribution
against the family's equation written out by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.inspect.decode import UnsupportedLayer, decode, unit_contribution, unit_output_sums
from methods.base import LayerSpec, MethodConfig, SparseCodes, SparseLayer
from tests.test_inspect import randomised

SPEC = LayerSpec(d_model=16, d_mlp=32, gated=True, activation="silu")
FAMILIES = ["tc", "stc", "sae", "mxd", "mxd-glu", "lowrank-moe-r1", "lowrank-moe-r4"]


@pytest.mark.parametrize("name", FAMILIES)
def test_decode_of_the_layers_own_codes_is_its_forward(name):
    layer = randomised(name, SPEC)
    x = torch.randn(2, 5, 16)
    y_hat, codes = layer(x)
    torch.testing.assert_close(decode(layer, x.reshape(-1, 16), SparseCodes(codes.values.reshape(10, -1),
                                                                          codes.indices.reshape(10, -1))),
                               y_hat.reshape(-1, 16), rtol=1e-5, atol=1e-5)


def by_hand(layer, name: str, x: torch.Tensor, unit: int) -> torch.Tensor:
    """What unit ``unit`` with code 1 writes at each token, from the method's equation."""
    if name in ("tc", "stc", "sae"):
        return layer.decoder[unit].expand(len(x), -1)
    if name == "mxd":
        z = F.gelu(x @ layer.encoder.weight.T + layer.encoder.bias)
        return (z @ layer.decoder) * layer.expert_weights[unit]
    if name == "mxd-glu":
        z = F.silu(x @ layer.gate_proj.weight.T) * (x @ layer.up_proj.weight.T)
        return (z @ layer.decoder) * layer.expert_weights[unit]
    U, V = layer.out_factors[unit].T, layer.in_factors[unit].T  # [d, R] each
    return x @ V @ U.T


@pytest.mark.parametrize("name", FAMILIES)
def test_one_units_contribution_is_its_equation(name):
    layer = randomised(name, SPEC)
    x, values = torch.randn(7, 16), torch.rand(7) * 3
    expected = values[:, None] * by_hand(layer, name, x, unit=5)
    torch.testing.assert_close(unit_contribution(layer, x, 5, values), expected, rtol=1e-4, atol=1e-5)
    activations = torch.stack([values, values.flip(0)], 1)
    sums = unit_output_sums(layer, x, [5, 2], activations)
    torch.testing.assert_close(sums[0], expected.sum(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sums[1], (values.flip(0)[:, None] * by_hand(layer, name, x, 2)).sum(0),
                               rtol=1e-4, atol=1e-4)


def test_a_plugin_family_without_a_decode_is_refused():
    class Opaque(SparseLayer):
        def forward(self, x):
            return x, SparseCodes(x[..., :1], torch.zeros_like(x[..., :1], dtype=torch.long))

    with pytest.raises(UnsupportedLayer, match="Opaque .* has no known decode; supported families: Transcoder"):
        decode(Opaque(SPEC, MethodConfig(k=1)), torch.zeros(1, 16), SparseCodes(torch.zeros(1, 1),
                                                                               torch.zeros(1, 1, dtype=torch.long)))
