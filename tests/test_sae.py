"""The TopK SAE: reads the MLP output, subtracts b_dec before encoding, matches the TC's size."""
from __future__ import annotations

import torch

from methods import LayerSpec, create
from methods.base import dense_codes, transcoder_budget
from methods.sae import SparseAutoencoder

SPEC = LayerSpec(d_model=16, d_mlp=64)


def test_sae_reads_the_mlp_output() -> None:
    assert SparseAutoencoder.input_site == "mlp_output"
    assert create("tc", SPEC).input_site == "mlp_input"  # the override must not leak to the parent


def test_sae_equals_dense_formula_with_pre_encoder_bias() -> None:
    layer = create("sae", SPEC, expansion=4, k=6)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)  # b_dec far from 0, so a missing "y - b_dec" shows
    y = torch.randn(25, 16)
    y_hat, codes = layer(y)
    pre = (y - layer.b_out) @ layer.encoder.weight.T + layer.encoder.bias
    z = pre.relu()
    z = torch.where(z >= z.topk(6, dim=-1).values[..., -1:], z, torch.zeros_like(z))
    torch.testing.assert_close(dense_codes(codes, layer.n_units), z)
    torch.testing.assert_close(y_hat, z @ layer.decoder + layer.b_out)


def test_sae_has_the_tc_budget_and_tied_unit_norm_init() -> None:
    layer = create("sae", SPEC, expansion=4, k=6)
    assert layer.n_units == 4 * 16 and layer.n_params() == transcoder_budget(SPEC, 4)
    torch.testing.assert_close(layer.encoder.weight, layer.decoder)
    torch.testing.assert_close(layer.decoder.norm(dim=-1), torch.ones(layer.n_units))


def test_sae_decoder_stays_unit_norm_while_training() -> None:
    layer = create("sae", SPEC, expansion=4, k=6)
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.05)
    y = torch.randn(64, 16)
    for _ in range(3):
        optimiser.zero_grad()
        ((layer(y)[0] - y) ** 2).sum().backward()
        layer.project_gradients()
        optimiser.step()
        layer.constrain()
    torch.testing.assert_close(layer.decoder.norm(dim=-1), torch.ones(layer.n_units))
    assert not torch.equal(layer.encoder.weight, layer.decoder)  # it did train


def test_sae_gradients_match_the_dense_formula() -> None:
    """The per-batch W_enc b_dec shift is a fast path: every gradient equals that of W_enc (y - b_dec)."""
    torch.manual_seed(0)
    fast = create("sae", SPEC, expansion=4, k=6)
    with torch.no_grad():
        for p in fast.parameters():
            p.normal_(0.0, 0.5)
    y, upstream = torch.randn(25, 16), torch.randn(25, 16)
    (fast(y)[0] * upstream).sum().backward()

    params = {name: p.detach().clone().requires_grad_() for name, p in fast.named_parameters()}
    pre = (y - params["b_out"]) @ params["encoder.weight"].T + params["encoder.bias"]
    values, indices = pre.topk(6, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    ((z @ params["decoder"] + params["b_out"]) * upstream).sum().backward()
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, msg=name)
    assert fast.b_out.grad.abs().sum() > 0 and fast.encoder.weight.grad.abs().sum() > 0
