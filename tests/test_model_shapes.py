"""The stored architectures behind `bench perf --random-lm`: the real models' sizes, built offline."""
from __future__ import annotations

import pytest
import torch

from bench import model_shapes
from bench.models import decoder_layers, layer_spec, resolve_model_name

# Parameter totals published with each model (model cards, the Pythia README), counted independently
# of the stored fields: a wrong width, depth, head count or vocabulary changes them.
PUBLISHED_PARAMETERS = {
    "gpt2": 124_439_808,
    "pythia-410m": 405_334_016,
    "pythia-1.4b": 1_414_647_808,
    "llama-3.2-3b": 3_212_749_824,
    "gemma-2b": 2_506_172_416,
    "gemma-2-2b": 2_614_341_888,
    "gemma-3-270m": 268_098_176,
}
# (d_model, MLP width, gated, layers) as the public configs give them.
PUBLISHED_LAYERS = {
    "gpt2": (768, 3072, False, 12),
    "pythia-410m": (1024, 4096, False, 24),
    "pythia-1.4b": (2048, 8192, False, 24),
    "llama-3.2-3b": (3072, 8192, True, 28),
    "gemma-2b": (2048, 16384, True, 18),
    "gemma-2-2b": (2304, 9216, True, 26),
    "gemma-3-270m": (640, 2048, True, 18),
}


def test_every_alias_has_an_architecture() -> None:
    assert set(model_shapes.ARCHITECTURES) == set(PUBLISHED_PARAMETERS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_architecture_matches_the_published_model(name: str) -> None:
    loaded = model_shapes.random_model(name, device="meta")
    assert sum(p.numel() for p in loaded.model.parameters()) == PUBLISHED_PARAMETERS[name]
    d, width, gated, n_layers = PUBLISHED_LAYERS[name]
    spec = layer_spec(loaded.model, 1)
    assert (spec.d_model, spec.d_mlp, spec.gated, len(decoder_layers(loaded.model))) == (d, width, gated, n_layers)


def test_random_model_is_seeded_and_answers_to_its_hub_id() -> None:
    first = model_shapes.random_model("gpt2", seed=3)
    again = model_shapes.random_model(resolve_model_name("gpt2"), seed=3)
    other = model_shapes.random_model("gpt2", seed=4)
    weight = lambda m: m.model.get_input_embeddings().weight  # noqa: E731
    assert torch.equal(weight(first), weight(again)) and not torch.equal(weight(first), weight(other))
    assert first.tokenizer is None and first.model_id == "gpt2 (random weights)"
    assert not any(p.requires_grad for p in first.model.parameters()) and not first.model.training
    ids = torch.randint(0, 50257, (1, 8))
    assert first.model(input_ids=ids).logits.shape == (1, 8, 50257)


def test_a_local_model_directory_is_built_from_its_config(tiny_model_dir) -> None:
    loaded = model_shapes.random_model(str(tiny_model_dir))
    assert loaded.model.config.hidden_size == 32 and loaded.model_id == f"{tiny_model_dir} (random weights)"


def test_unknown_name_is_refused_with_the_choices(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"--model '.*nowhere'.*not one of gpt2, pythia-410m"):
        model_shapes.random_model(str(tmp_path / "nowhere"))
