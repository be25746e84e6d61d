import pytest
import torch
from torch import nn

from bench.models import (
    MODEL_ALIASES,
    ModelError,
    check_layer,
    decoder_layers,
    default_layer,
    layer_spec,
    load_model,
    mlp_module,
    resolve_model_name,
)
from tests.conftest import tiny_model

EXPECTED_MLP = {"gpt2": "GPT2MLP", "gpt_neox": "GPTNeoXMLP", "llama": "LlamaMLP", "gemma3": "Gemma3MLP"}


def test_locates_the_mlp_of_every_architecture(any_arch_model):
    arch, model = any_arch_model
    assert len(decoder_layers(model)) == 4
    assert type(mlp_module(model, 2)).__name__ == EXPECTED_MLP[arch]
    assert mlp_module(model, 2) is not mlp_module(model, 1)


def test_layer_spec_reads_widths_and_gating(any_arch_model):
    arch, model = any_arch_model
    spec = layer_spec(model, 0)
    assert spec.d_model == 32
    assert spec.d_mlp == (128 if arch in ("gpt2", "gpt_neox") else 96)
    assert spec.gated == (arch in ("llama", "gemma3"))
    x = torch.randn(3, 32)
    assert mlp_module(model, 0)(x).shape == (3, spec.d_model)


def test_activation_names_are_known_to_transformers(any_arch_model):
    from transformers.activations import ACT2FN

    _, model = any_arch_model
    ACT2FN[layer_spec(model, 0).activation]


def test_default_layer_is_the_middle_and_out_of_range_is_an_error():
    model = tiny_model("llama", n_layers=6)
    assert default_layer(model) == 3
    assert check_layer(model, 5) == 5
    with pytest.raises(ModelError, match="layer 6 is out of range.*0..5"):
        check_layer(model, 6)
    with pytest.raises(ModelError, match="layer -1"):
        mlp_module(model, -1)


def test_unsupported_architecture_is_named():
    class Strange(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ModelError, match="unsupported architecture Strange"):
        decoder_layers(Strange())


def test_aliases():
    assert resolve_model_name("gemma-2b") == "google/gemma-2b"
    assert resolve_model_name("gpt2") == "openai-community/gpt2"
    assert resolve_model_name("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"
    for alias in ("gpt2", "pythia-410m", "pythia-1.4b", "llama-3.2-3b", "gemma-2b", "gemma-3-270m"):
        assert alias in MODEL_ALIASES


def test_loads_a_local_directory(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.model_id == str(tiny_model_dir)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.training
    assert loaded.tokenizer.bos_token == "<bos>"
