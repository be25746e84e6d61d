"""The named models' architectures, to build them with random weights.

A forward pass costs the same whatever the weights are, so ``bench perf --random-lm`` measures
activation collection and CE evaluation on a model of the real shape built here from its config:
no hub download, no tokenizer, no embedded package. That is what a lent GPU box without network
access can run, and what a cost estimate for a model not yet downloaded needs. The fields are
the public ``config.json`` values that set the compute (widths, depths, heads, vocabulary);
anything else is left at transformers' defaults. Any other model is built from its own
config.json (a local directory, or the hub's file alone).
"""
from __future__ import annotations

import torch

from bench.models import EMBEDDED_MODEL, LoadedModel, default_layer, layer_spec, model_source, resolve_model_name
from methods.base import LayerSpec

_GEMMA3_270M_LAYER_TYPES = (["sliding_attention"] * 5 + ["full_attention"]) * 3

ARCHITECTURES: dict[str, dict] = {
    "gpt2": dict(model_type="gpt2", n_layer=12, n_embd=768, n_head=12, n_inner=None, vocab_size=50257,
                 n_positions=1024),
    "pythia-410m": dict(model_type="gpt_neox", num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                        intermediate_size=4096, vocab_size=50304, rotary_pct=0.25, max_position_embeddings=2048),
    "pythia-1.4b": dict(model_type="gpt_neox", num_hidden_layers=24, hidden_size=2048, num_attention_heads=16,
                        intermediate_size=8192, vocab_size=50304, rotary_pct=0.25, max_position_embeddings=2048),
    "llama-3.2-3b": dict(model_type="llama", num_hidden_layers=28, hidden_size=3072, num_attention_heads=24,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                         tie_word_embeddings=True, max_position_embeddings=131072),
    "gemma-2b": dict(model_type="gemma", num_hidden_layers=18, hidden_size=2048, num_attention_heads=8,
                     num_key_value_heads=1, head_dim=256, intermediate_size=16384, vocab_size=256000,
                     hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192),
    "gemma-2-2b": dict(model_type="gemma2", num_hidden_layers=26, hidden_size=2304, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=256, intermediate_size=9216, vocab_size=256000,
                       hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, sliding_window=4096),
    EMBEDDED_MODEL: dict(model_type="gemma3_text", num_hidden_layers=18, hidden_size=640, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=256, intermediate_size=2048, vocab_size=262144,
                         hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768,
                         sliding_window=512, layer_types=_GEMMA3_270M_LAYER_TYPES, query_pre_attn_scalar=256),
}


def architecture_alias(name: str) -> str | None:
    """The key of ``ARCHITECTURES`` for an alias or its hub id, else None."""
    return next((a for a in ARCHITECTURES if name in (a, resolve_model_name(a))), None)


def model_config(name: str):
    """The transformers config of ``name``: stored here for the named models, else read from a local
    directory or the hub (config.json only, no weights). A one-line error when there is none."""
    from transformers import AutoConfig

    alias = architecture_alias(name)
    if alias is not None:
        fields = dict(ARCHITECTURES[alias])
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    try:
        return AutoConfig.from_pretrained(model_source(name))
    except (OSError, ValueError):
        raise ValueError(f"no architecture for --model {name!r}: not one of {', '.join(ARCHITECTURES)}, "
                         f"and no config.json could be read for it") from None


def random_model(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> LoadedModel:
    """``name``'s architecture with seeded random weights, built on ``device``. The tokenizer is None:
    callers feed random token ids."""
    from transformers import AutoModelForCausalLM

    config = model_config(name)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: a 3B model is built on the GPU, not copied there
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return LoadedModel(model, None, f"{architecture_alias(name) or name} (random weights)")


def architecture_layer(name: str, layer: int | None = None) -> tuple[int, LayerSpec]:
    """``name``'s layer (default: the middle one) and its shape, from the architecture alone: the model is
    built on the meta device (no weights, no memory), so a run's cells can be checked before any download."""
    model = random_model(name, device="meta").model
    layer = default_layer(model) if layer is None else layer
    return layer, layer_spec(model, layer)
