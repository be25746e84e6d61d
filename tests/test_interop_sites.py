"""Splice sites read off real (tiny) models, and the TransformerLens normalised-input conversion on one."""
from __future__ import annotations

import pytest
import torch

from bench.interop import load_dictionary, site_for_model, splice_site
from bench.interop.sites import MLP_INPUT, MLP_OUTPUT, NORMALISED, parse_hook
from bench.models import decoder_layers
from tests.conftest import VOCAB, tiny_model
from tests.test_interop_fixtures import hand_output, saelens_cfg, write_saelens

LAYER = 1
EXPECTED = {  # arch -> (MLP, norm in front of it, sparsify hookpoint, post-MLP norm)
    "gpt2": ("transformer.h.1.mlp", "transformer.h.1.ln_2", "h.1.mlp", False),
    "gpt_neox": ("gpt_neox.layers.1.mlp", "gpt_neox.layers.1.post_attention_layernorm", "layers.1.mlp", False),
    "llama": ("model.layers.1.mlp", "model.layers.1.post_attention_layernorm", "layers.1.mlp", False),
    "gemma3": ("model.layers.1.mlp", "model.layers.1.pre_feedforward_layernorm", "layers.1.mlp", True),
}


def _randomise_norm(model):
    norm = _mlp_norm(model)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=torch.Generator().manual_seed(2)) + 0.5)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(3)) * 0.3)
    return norm


def _mlp_norm(model):
    block = decoder_layers(model)[LAYER]
    names = ("pre_feedforward_layernorm", "ln_2", "post_attention_layernorm")  # Gemma's first: see sites.py
    return next(getattr(block, n) for n in names if hasattr(block, n))


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_site_names_and_norm_gain_of_each_architecture(arch):
    model = tiny_model(arch)
    norm = _randomise_norm(model)
    site = splice_site(model, LAYER)
    assert (site.mlp_name, site.norm_name, site.hookpoint, site.post_mlp_norm) == EXPECTED[arch]
    # Gemma's RMSNorm multiplies by 1 + weight; the others by weight
    expected_gain = 1 + norm.weight if arch == "gemma3" else norm.weight
    torch.testing.assert_close(site.norm_gain, expected_gain.detach())
    expected_bias = norm.bias.detach() if getattr(norm, "bias", None) is not None else torch.zeros_like(norm.weight)
    torch.testing.assert_close(site.norm_bias, expected_bias)


def test_site_from_the_config_alone_has_the_same_names_and_no_weights(tiny_model_dir):
    from_config = site_for_model(str(tiny_model_dir), LAYER)
    from_model = splice_site(tiny_model("llama"), LAYER)
    assert (from_config.mlp_name, from_config.norm_name, from_config.hookpoint) == \
        (from_model.mlp_name, from_model.norm_name, from_model.hookpoint)
    assert from_config.norm_gain is None and from_config.spec == from_model.spec


def test_hook_dialects_map_to_sites():
    site = splice_site(tiny_model("gpt2"), LAYER)
    assert parse_hook("blocks.1.hook_mlp_out", site).role == MLP_OUTPUT
    assert parse_hook("blocks.1.ln2.hook_normalized", site).role == NORMALISED
    assert parse_hook("transformer.h.1.ln_2", site).role == MLP_INPUT
    assert parse_hook("transformer.h.1.mlp.input", site).role == MLP_INPUT
    assert parse_hook("h.1.mlp", site).role == MLP_OUTPUT
    assert parse_hook("transformer.h.3.mlp.output", site).layer == 3


def test_normalised_input_transcoder_on_a_real_gpt2_layer(tmp_path):
    """A transcoder trained on TransformerLens's ln2.hook_normalized, i.e. LayerNorm's (r - mean) / std
    before its gain and bias, computed here from the residual r by LayerNorm's definition."""
    model = tiny_model("gpt2")
    norm = _randomise_norm(model)
    captured = {}
    mlp = decoder_layers(model)[LAYER].mlp
    hooks = [norm.register_forward_pre_hook(lambda m, args: captured.__setitem__("r", args[0])),
             mlp.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0]))]
    model(input_ids=torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4)))
    for hook in hooks:
        hook.remove()
    r, x = captured["r"].reshape(-1, 32), captured["x"].reshape(-1, 32)
    x_n = (r - r.mean(-1, keepdim=True)) / (r.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    g = torch.Generator().manual_seed(0)
    w = {"W_enc": torch.randn(32, 64, generator=g) / 6, "b_enc": torch.randn(64, generator=g) * 0.2,
         "W_dec": torch.randn(64, 32, generator=g) / 8, "b_dec": torch.randn(32, generator=g),
         "threshold": torch.rand(64, generator=g) * 0.3}
    cfg = {**saelens_cfg("jumprelu_transcoder", "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"),
           "d_in": 32, "d_out": 32, "d_sae": 64}
    loaded = load_dictionary(str(write_saelens(tmp_path / "tc", cfg, w)), splice_site(model, LAYER))
    with torch.no_grad():
        torch.testing.assert_close(loaded.layer(x)[0], hand_output(x_n, w, "jumprelu"), rtol=1e-4, atol=1e-4)
    assert any("hook_normalized" in c for c in loaded.conversions)


def test_an_external_jumprelu_transcoder_goes_through_our_evaluation(tmp_path):
    """NMSE, L0 and dead units from bench.evaluate match the hand-computed code; the splice runs."""
    from bench.activations import collect_mlp_io
    from bench.evaluate import CrossEntropyEvaluator, reconstruction_metrics
    from bench.models import mlp_module
    from bench.splice import SplicedMLP

    model = tiny_model("llama")
    site = splice_site(model, LAYER)
    g = torch.Generator().manual_seed(5)
    w = {"W_enc": torch.randn(32, 64, generator=g) / 4, "b_enc": torch.randn(64, generator=g) * 0.2 - 0.3,
         "W_dec": torch.randn(64, 32, generator=g) / 8, "b_dec": torch.randn(32, generator=g) * 0.1,
         "threshold": torch.rand(64, generator=g) * 0.5}
    w["threshold"][:8] = 1e6  # eight units that never fire: dead
    cfg = {**saelens_cfg("jumprelu_transcoder", site.norm_name, site.mlp_name), "d_in": 32, "d_out": 32, "d_sae": 64}
    loaded = load_dictionary(str(write_saelens(tmp_path / "tc", cfg, w)), site)
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(6))
    x, y = collect_mlp_io(model, LAYER, ids)
    pre = x @ w["W_enc"] + w["b_enc"]
    z = pre.relu() * (pre > w["threshold"])
    y_hat = z @ w["W_dec"] + w["b_dec"]
    rec = reconstruction_metrics(loaded.layer, x, y, batch_size=20)  # several batches of different code widths
    assert rec.l0 == pytest.approx((z != 0).sum(-1).float().mean().item())
    assert rec.dead_units == int(((z != 0).sum(0) == 0).sum()) >= 8
    expected_nmse = ((y_hat - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert rec.nmse == pytest.approx(expected_nmse.item(), rel=1e-4)
    evaluator = CrossEntropyEvaluator(model, LAYER, ids, batch_size=4)
    spliced = evaluator.per_sequence_ce(SplicedMLP(loaded.layer, mlp_module(model, LAYER)))
    assert torch.isfinite(spliced).all() and not torch.equal(spliced, evaluator.per_sequence_ce(None))
