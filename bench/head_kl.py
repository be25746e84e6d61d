"""KL(clean || spliced) per token without the clean model's logits, when the head is linear.

With logits z = W h (no bias, no soft-capping), clean distribution p = softmax(z_c) and spliced
q = softmax(z_q):

    KL(p || q) = sum_v p_v (log p_v - log q_v) = (h_c - h_q) . m + lse(z_q) - lse(z_c),   m = W^T p

so the clean side is summarised once per position by m (d numbers) and lse(z_c), and each cell's
KL costs a dot product on top of the logsumexp its CE needs anyway. On a CPU that halves a cell's
evaluation: the clean logits over Gemma's 262k vocabulary were recomputed (one more head product
and five vocabulary-sized passes) for every cell. The difference form is exact when the replacement
changes nothing (h_q = h_c gives 0 bit for bit) and suffers no cancellation of two large
cross-entropies. It is used only for an fp32 head on a CPU: a bf16 head's logits carry rounding far
above a small KL, and m costs 4 d bytes a token, which on a GPU at the paper's CE budget is better
spent on batches (there the clean logits are recomputed, which a GPU does cheaply).
"""
from __future__ import annotations

import torch
from torch import nn


def linear_head_weight(model: nn.Module) -> torch.Tensor | None:
    """The head's weight [vocab, d] when the logits are exactly ``W h`` in fp32 on a CPU, else None."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if (weight is None or getattr(head, "bias", None) is not None
            or getattr(model.config, "final_logit_softcapping", None)
            or weight.dtype != torch.float32 or weight.device.type != "cpu"):
        return None
    return weight


def clean_summary(weight: torch.Tensor, clean_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lse(z_c) [batch, T-1] and m = W^T p [batch, T-1, d] of the predicted positions."""
    logits = clean_logits[:, :-1].float()
    lse = torch.logsumexp(logits, dim=-1)
    probabilities = torch.exp(logits - lse[..., None])
    return lse, probabilities @ weight


def kl_from_head_inputs(clean_inputs: torch.Tensor, inputs: torch.Tensor, m: torch.Tensor,
                        clean_lse: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """KL(p || q) [batch, T-1] in nats from the head inputs of both models (predicted positions only),
    summed in float64; clipped at 0, which only rounding can cross."""
    shift = ((clean_inputs[:, :-1] - inputs[:, :-1]).double() * m.double()).sum(dim=-1)
    return (shift + (lse.double() - clean_lse.double())).clamp_min(0.0)
