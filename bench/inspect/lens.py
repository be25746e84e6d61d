"""The tokens a unit promotes: its output direction read through the LM's final norm and unembedding.

This is the direct path only (what the direction would do to the logits if nothing between
layer L and the head changed it), the usual logit-lens reading of a decoder row.

The final norm is not linear, so a direction v is read as ``norm(v / rms(v)) - norm(0)``: for
LayerNorm that is gamma * centre(v) / std(v), for RMSNorm g * v / rms(v) (Gemma's 1 + w gain
included), i.e. the norm's own per-dimension gain and centring applied to v, with the bias
dropped (it is the same for every direction) and the scale set by v itself. Scores are the
resulting logits: comparable between tokens of one unit, not between units.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.models import first_submodule

# Where each supported architecture keeps the norm applied before the LM head.
_FINAL_NORM_PATHS = ("transformer.ln_f", "gpt_neox.final_layer_norm", "model.norm", "model.language_model.norm")


@dataclass
class TokenScores:
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    promoted_ids: list[int]


def final_norm(model: nn.Module) -> nn.Module | None:
    """The LM's norm before the unembedding, wherever its architecture keeps it."""
    return first_submodule(model, _FINAL_NORM_PATHS, lambda m: isinstance(m, nn.Module))


@torch.no_grad()
def direction_logits(model: nn.Module, directions: torch.Tensor) -> torch.Tensor:
    """[n, vocab] logits of each direction ([n, d]) after the final norm (when found) and the unembedding."""
    unembed = model.get_output_embeddings().weight  # [vocab, d]
    device, dtype = unembed.device, unembed.dtype
    v = directions.to(device, torch.float32)
    v = v / v.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    norm = final_norm(model)
    if norm is not None:
        v = norm(v.to(dtype)).float() - norm(torch.zeros_like(v, dtype=dtype)).float()
    return v @ unembed.float().T


def top_tokens(model: nn.Module, tokenizer, directions: torch.Tensor, n: int = 10) -> list[TokenScores]:
    """The ``n`` most promoted and suppressed tokens of each direction (rows of zeros give empty lists)."""
    logits = direction_logits(model, directions).cpu()[:, :len(tokenizer)]  # padded vocab rows name no token
    out = []
    for row, direction in zip(logits, directions):
        if not bool(direction.abs().sum() > 0):
            out.append(TokenScores([], [], []))
            continue
        high, low = row.topk(n), (-row).topk(n)
        out.append(TokenScores(_named(tokenizer, high.indices, high.values),
                               _named(tokenizer, low.indices, -low.values), high.indices.tolist()))
    return out


def _named(tokenizer, ids: torch.Tensor, scores: torch.Tensor) -> list[tuple[str, float]]:
    return [(tokenizer.decode([int(i)]), float(s)) for i, s in zip(ids, scores)]
