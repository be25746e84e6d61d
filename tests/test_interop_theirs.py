"""Optional: dictionaries saved by SAELens and sparsify themselves load here and compute what
their own forward computes. Skipped unless ``sae-lens`` / ``eai-sparsify`` are installed."""
from __future__ import annotations

import pytest
import torch

from bench.interop import load_dictionary
from tests.test_interop_fixtures import D, K, LAYER, N, site

TL_OUT, MLP_IN, MLP_OUT = f"blocks.{LAYER}.hook_mlp_out", f"model.layers.{LAYER}.post_attention_layernorm", \
    f"model.layers.{LAYER}.mlp"


def _randomise(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.rand(p.shape, generator=generator) * 0.3 if "threshold" in name
                    else torch.randn(p.shape, generator=generator) / 4)
    return module


def _saelens_cases(sae_lens):
    from sae_lens.saes.sae import SAEMetadata

    hooks = {"metadata": SAEMetadata(hook_name=TL_OUT)}
    tc_hooks = {"metadata": SAEMetadata(hook_name=MLP_IN, hook_name_out=MLP_OUT,
                                        model_class_name="AutoModelForCausalLM")}
    common = {"d_in": D, "d_sae": N}
    return {
        "topk": lambda: sae_lens.TopKSAE(sae_lens.TopKSAEConfig(**common, k=K, **hooks)),
        "topk rescaled": lambda: sae_lens.TopKSAE(
            sae_lens.TopKSAEConfig(**common, k=K, rescale_acts_by_decoder_norm=True, **hooks)),
        "jumprelu": lambda: sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(**common, **hooks)),
        "standard": lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(**common, **hooks)),
        "transcoder": lambda: sae_lens.Transcoder(
            sae_lens.TranscoderConfig(**common, d_out=D, apply_b_dec_to_input=False, **tc_hooks)),
        "skip_transcoder": lambda: sae_lens.SkipTranscoder(
            sae_lens.SkipTranscoderConfig(**common, d_out=D, apply_b_dec_to_input=False, **tc_hooks)),
        "jumprelu_transcoder": lambda: sae_lens.JumpReLUTranscoder(
            sae_lens.JumpReLUTranscoderConfig(**common, d_out=D, apply_b_dec_to_input=False, **tc_hooks)),
    }


@pytest.mark.parametrize("case", ["topk", "topk rescaled", "jumprelu", "standard", "transcoder", "skip_transcoder",
                                  "jumprelu_transcoder"])
def test_a_dictionary_saelens_saved_loads_and_computes_what_saelens_computes(tmp_path, case):
    sae_lens = pytest.importorskip("sae_lens")
    theirs = _randomise(_saelens_cases(sae_lens)[case]())
    theirs.save_model(tmp_path / "sae")
    loaded = load_dictionary(str(tmp_path / "sae"), site())
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(x)
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(loaded.layer(x)[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transcode,skip", [(False, False), (True, False), (True, True)])
def test_a_dictionary_sparsify_saved_loads_and_computes_what_sparsify_computes(tmp_path, transcode, skip):
    sparsify = pytest.importorskip("sparsify")
    cfg = sparsify.SparseCoderConfig(num_latents=N, k=K, transcode=transcode, skip_connection=skip)
    theirs = _randomise(sparsify.SparseCoder(D, cfg))
    theirs.save_to_disk(tmp_path / f"layers.{LAYER}.mlp")
    loaded = load_dictionary(str(tmp_path), site())  # the folder of hookpoints: layer 1's MLP is picked
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.layer(x)[0], theirs(x).sae_out, rtol=1e-5, atol=1e-5)
