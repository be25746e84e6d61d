"""Surgery on a loaded LM: swap one MLP for a trained layer, and replay a cached prefix.

Both are reversible context managers on the same model object, so evaluation (CE, lm-eval)
sees an ordinary Hugging Face model and no weights are ever copied.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from bench.models import decoder_layers, mlp_module
from methods.base import SparseLayer


class SplicedMLP(nn.Module):
    """Stands in for an MLP: returns the sparse layer's estimate of the MLP output.

    A layer whose ``input_site`` is ``mlp_output`` (an SAE) is fed the real MLP's output,
    so the LM sees SAE(MLP(x)). Dtypes are bridged so a bf16 LM can host an fp32 layer.
    """

    def __init__(self, layer: SparseLayer, base_mlp: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.base_mlp = base_mlp

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        source = self.base_mlp(hidden_states, *args, **kwargs) if self.layer.input_site == "mlp_output" else hidden_states
        dtype = next(self.layer.parameters()).dtype
        estimate, _ = self.layer(source.to(dtype))
        return estimate.to(hidden_states.dtype)


class ZeroMLP(nn.Module):
    """The zero-ablated MLP: contributes nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


@contextlib.contextmanager
def replaced_mlp(model: nn.Module, layer: int, replacement: nn.Module | None) -> Iterator[nn.Module]:
    """Within the block, layer ``layer``'s MLP is ``replacement`` (None: leave it as it is)."""
    block = decoder_layers(model)[layer]
    original = mlp_module(model, layer)
    if replacement is not None:
        block.mlp = replacement
    try:
        yield model
    finally:
        block.mlp = original


def spliced(model: nn.Module, layer: int, sparse_layer: SparseLayer) -> contextlib.AbstractContextManager:
    """``with spliced(model, L, trained): ...`` runs the model with the trained layer in place."""
    return replaced_mlp(model, layer, SplicedMLP(sparse_layer, mlp_module(model, layer)))


def zero_ablated(model: nn.Module, layer: int) -> contextlib.AbstractContextManager:
    return replaced_mlp(model, layer, ZeroMLP())


class _StopForward(Exception):
    pass


@torch.no_grad()
def capture_block_output(model: nn.Module, block_index: int, input_ids: torch.Tensor):
    """Run the model only up to decoder block ``block_index`` and return that block's output."""
    captured = {}

    def hook(module, args, output):
        captured["output"] = output
        raise _StopForward

    handle = decoder_layers(model)[block_index].register_forward_hook(hook)
    try:
        model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["output"]


@contextlib.contextmanager
def replayed_prefix(model: nn.Module, first_live_block: int, prefix_output) -> Iterator[nn.Module]:
    """Skip blocks ``0..first_live_block-1``: each returns ``prefix_output`` (the cached output of
    the last skipped block for this exact batch) instead of computing. Embeddings, masks and rotary
    tables are still built by the model, so this works for any architecture whose blocks are
    called in order. Instance ``forward`` attributes keep every other attribute of the blocks.
    """
    blocks = list(decoder_layers(model))[:first_live_block]

    def replay(*args, **kwargs):
        return prefix_output

    for block in blocks:
        block.forward = replay
    try:
        yield model
    finally:
        for block in blocks:
            del block.forward
