"""The one-pass speed-up: all cells from one activation stream vs one stream per cell.

The harness trains every (method, K) cell of a model and layer on the same batches, so the
LM's forward is paid once per batch. ``measure_one_pass`` measures what that saves, in one
run on this machine: the same cells, the same tokens and seeds, trained both ways from the
embedded corpus (random token ids for a ``--random-lm`` model). ``bench perf`` reports it.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from bench import data as data_mod
from bench.activations import lm_chunks, shuffled_batches
from bench.config import preset_config
from bench.devices import synchronize
from bench.models import LoadedModel, default_layer, layer_spec
from bench.train import OptimiserSettings, build_cell, train_cells

SMOKE = preset_config("smoke")  # context length, batch, budget, LR and buffer of `bench run`'s default


def _contexts(loaded: LoadedModel) -> Iterator[torch.Tensor]:
    """Contexts of the embedded corpus; endless seeded random ids for a random-weight LM (no tokenizer)."""
    if loaded.tokenizer is None:
        generator = torch.Generator().manual_seed(SMOKE.seed)
        vocab = loaded.model.get_input_embeddings().num_embeddings
        return iter(lambda: torch.randint(0, vocab, (SMOKE.context_length,), generator=generator), None)
    return data_mod.pack_contexts(data_mod.iter_documents(data_mod.EMBEDDED_CORPUS, "train"), loaded.tokenizer,
                                  SMOKE.context_length)


def _batches(loaded: LoadedModel, layer: int, tokens: int, device: torch.device):
    """A fresh activation stream: contexts through the LM up to layer L."""
    contexts = _contexts(loaded)
    chunks = lm_chunks(loaded.model, layer, contexts, SMOKE.lm_batch_size)
    return shuffled_batches(chunks, tokens, SMOKE.batch_size, SMOKE.buffer_tokens, seed=SMOKE.seed, device=device)


def _train_seconds(loaded: LoadedModel, layer: int, cells: list[tuple[str, int]], tokens: int,
                   device: torch.device, autocast_dtype: torch.dtype | None, compile: bool) -> float:
    spec = layer_spec(loaded.model, layer)
    settings = OptimiserSettings(lr=SMOKE.lr, warmup_steps=SMOKE.warmup_steps)
    start = time.perf_counter()
    built = [build_cell(method, spec, k, SMOKE.expansion, settings, seed=SMOKE.seed, device=device,
                        autocast_dtype=autocast_dtype, compile=compile) for method, k in cells]
    train_cells(built, _batches(loaded, layer, tokens, device))
    synchronize(device)
    return time.perf_counter() - start


def measure_one_pass(loaded: LoadedModel, cells: list[tuple[str, int]], tokens: int, device: torch.device,
                     autocast_dtype: torch.dtype | None = None, compile: bool = False) -> dict[str, Any]:
    """Seconds to train ``cells`` together from one stream, and one at a time, and their ratio;
    the cells compute as `bench run`'s do on this device (``autocast_dtype``, ``compile``)."""
    layer = default_layer(loaded.model)
    train = lambda group: _train_seconds(loaded, layer, group, tokens, device, autocast_dtype, compile)  # noqa: E731
    one_pass = train(cells)
    one_by_one = sum(train([cell]) for cell in cells)
    return {"model": loaded.model_id, "layer": layer, "cells": [f"{m}/k{k}" for m, k in cells],
            "tokens_per_cell": tokens, "context_length": SMOKE.context_length, "batch_size": SMOKE.batch_size,
            "expansion": SMOKE.expansion, "one_pass_s": one_pass, "one_stream_per_cell_s": one_by_one,
            "speedup": one_by_one / one_pass}
