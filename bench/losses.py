"""The training loss of every cell: how a layer's error on one batch of T tokens is scored.

    token-normalised  L = 1/(T d) sum_t sum_i (y_hat_ti - y_ti)^2 / max(||y_t||, eps)   (the default)
    nmse              L = sum_t ||y_hat_t - y_t||^2 / sum_t ||y_t - mean(y)||^2
    post-norm         L = 1/(T d) sum_t ||N(y_hat_t) - N(y_t)||^2,   N = the block's norm after the MLP

``token-normalised`` is the MxD reference's loss: each token's squared error is divided by its
own output norm (not the squared norm), so a token with a small MLP output still carries weight.
A batch ratio (``nmse``) gives such tokens almost none; NMSE stays the reported METRIC.
``post-norm`` is for blocks that normalise the MLP's output before adding it to the residual
stream (Gemma 2/3's ``post_feedforward_layernorm``): the error is measured on what the residual
stream receives, through a frozen fp32 copy of that norm. The norm already puts every token on one
scale, so no further per-token division is needed there.

Every loss is (a sum of per-token terms) / (a constant of the whole batch), so a batch split into
micro-batches (after an out-of-memory error) sums to the same loss and the same gradient when each
piece is divided by the whole batch's constant.

The opt-in AuxK term (``--aux-k-coef``, TopK-SAE practice) is added to any of them:

    L_aux = ||e_hat - e||^2 / ||e - mean(e)||^2,    e = sg(y - y_hat),  total loss L + coef * L_aux

where e_hat is what the k_aux dead units with the largest pre-activations write (each method's
``forward_with_aux``), "dead" meaning not selected in the last ``dead_window`` training tokens, and
sg() stops the gradient. It is defined as 0 while no unit is dead. Like the NMSE, it is divided by
the whole batch's spread of e.
"""
from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn

from bench.models import decoder_layers

LOSSES = ("token-normalised", "nmse", "post-norm")
DEFAULT_LOSS = "token-normalised"
POST_MLP_NORM = "post_feedforward_layernorm"  # Gemma 2/3's norm between the MLP and the residual add

# Floor of a token's output norm in the token-normalised loss. It guards an exactly-zero output
# (0 / 0 for a perfect estimate, inf otherwise: one such token would end the cell as diverged) and
# sits orders of magnitude below the output norm of any token a trained MLP produces, so it never
# changes a real token's weight.
NORM_FLOOR = 1e-6


class LossError(ValueError):
    """A loss that this model or layer cannot use."""


class ReconstructionLoss:
    """``__call__(estimate, target)``: the loss of a whole batch; ``token_terms`` and ``denominator``
    let a micro-batched step divide each piece's terms by the whole batch's constant."""

    name: ClassVar[str] = ""

    def token_terms(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """One non-negative number per token, [tokens]."""
        raise NotImplementedError

    def denominator(self, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """A positive scalar depending on the whole batch's targets only."""
        raise NotImplementedError

    def __call__(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.token_terms(estimate, target).sum() / self.denominator(target)

    def to(self, device: torch.device | str) -> "ReconstructionLoss":
        return self


class TokenNormalisedLoss(ReconstructionLoss):
    name = "token-normalised"

    def token_terms(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scale = torch.linalg.vector_norm(target, dim=-1).clamp_min(NORM_FLOOR)
        return (estimate - target).pow(2).sum(dim=-1) / scale

    def denominator(self, target: torch.Tensor) -> torch.Tensor:
        return target.new_tensor(float(target.numel()))  # T d: a mean over tokens and dimensions


class NormalisedMSELoss(ReconstructionLoss):
    name = "nmse"

    def token_terms(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (estimate - target).pow(2).sum(dim=-1)

    def denominator(self, target: torch.Tensor) -> torch.Tensor:
        return (target - target.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(1e-12)


class PostNormLoss(ReconstructionLoss):
    """Mean squared error after ``norm``, a frozen fp32 copy of the block's post-MLP norm."""

    name = "post-norm"

    def __init__(self, norm: nn.Module) -> None:
        self.norm = copy.deepcopy(norm).float().requires_grad_(False).eval()

    def token_terms(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.norm(estimate) - self.norm(target)).pow(2).sum(dim=-1)

    def denominator(self, target: torch.Tensor) -> torch.Tensor:
        return target.new_tensor(float(target.numel()))

    def to(self, device: torch.device | str) -> "PostNormLoss":
        self.norm.to(device)
        return self


def post_mlp_norm(model: nn.Module, layer: int) -> nn.Module:
    """The norm block ``layer`` applies to its MLP's output, or LossError for blocks without one."""
    block = decoder_layers(model)[layer]
    norm = getattr(block, POST_MLP_NORM, None)
    if not isinstance(norm, nn.Module):
        raise LossError(f"--loss post-norm needs a norm after the MLP (Gemma 2/3's {POST_MLP_NORM}); "
                        f"{type(model).__name__} has none: use token-normalised or nmse")
    return norm


def make_loss(name: str, model: nn.Module | None = None, layer: int | None = None) -> ReconstructionLoss:
    """The loss called ``name``; ``post-norm`` reads the norm off ``model``'s block ``layer``."""
    if name == "token-normalised":
        return TokenNormalisedLoss()
    if name == "nmse":
        return NormalisedMSELoss()
    if name == "post-norm":
        if model is None or layer is None:
            raise LossError("--loss post-norm needs the model and layer whose post-MLP norm it applies")
        return PostNormLoss(post_mlp_norm(model, layer))
    raise LossError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")


def spread(values: torch.Tensor) -> torch.Tensor:
    """||v - mean(v)||^2 over a batch of vectors: the denominator of the NMSE and of the AuxK term."""
    return (values - values.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(1e-12)


def auxk_loss(dead_estimate: torch.Tensor, residual: torch.Tensor, denominator: torch.Tensor | None = None) -> torch.Tensor:
    """||e_hat - e||^2 / ||e - mean(e)||^2 (``residual`` is e, already detached); ``denominator`` is the
    whole batch's spread of e when these are a micro-batch's rows."""
    return (dead_estimate - residual).pow(2).sum() / (spread(residual) if denominator is None else denominator)
