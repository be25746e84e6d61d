"""Trained cells -> metrics on held-out tokens: NMSE, L0, dead units, cosine similarity, spliced CE
and KL(clean || spliced).

CE evaluation caches the residual stream entering layer L once (the output of block L-1 for
each eval batch); every cell then runs only blocks L.. and the head (``replayed_prefix``).
CE differences get a paired standard error over eval sequences, which respects the
correlation between tokens of one context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bench.head_kl import clean_summary, kl_from_head_inputs, linear_head_weight
from bench.splice import capture_block_output, replaced_mlp, replayed_prefix
from methods.base import SparseLayer


@dataclass
class Reconstruction:
    nmse: float
    fve: float  # fraction of variance explained, 1 - NMSE
    cosine: float  # mean over tokens of cos(y_hat, y)
    l0: float
    dead_units: int
    dead_fraction: float


@torch.no_grad()
def reconstruction_metrics(layer: SparseLayer, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> Reconstruction:
    """NMSE = sum ||y_hat - y||^2 / sum ||y - mean(y)||^2 over all tokens; L0 = mean non-zero codes;
    a unit is dead if it is never active on these tokens."""
    device = next(layer.parameters()).device
    squared_error, l0_total, cosine_total = 0.0, 0.0, 0.0
    active = torch.zeros(layer.n_units, dtype=torch.bool, device=device)
    source_all = y if layer.input_site == "mlp_output" else x
    for source, target in zip(source_all.split(batch_size), y.split(batch_size)):
        source, target = source.to(device), target.to(device)
        estimate, codes = layer(source)
        squared_error += (estimate - target).pow(2).sum().item()
        cosine_total += torch.nn.functional.cosine_similarity(estimate.float(), target.float(), dim=-1).sum().item()
        live = codes.values != 0
        l0_total += live.sum().item()
        active[codes.indices[live]] = True
    variance = (y - y.mean(dim=0, keepdim=True)).pow(2).sum().item()
    dead = int((~active).sum().item())
    nmse = squared_error / max(variance, 1e-12)
    return Reconstruction(nmse, 1.0 - nmse, cosine_total / len(y), l0_total / len(y), dead, dead / layer.n_units)


class CrossEntropyEvaluator:
    """Next-token CE of the LM on fixed eval contexts with layer L's MLP replaced (or not), and the
    KL divergence of the replaced model's next-token distribution from the clean model's.

    ``capture_clean()`` runs the clean model once and keeps the input of its output head (the final
    hidden states: small), so every later ``score`` recomputes the clean logits with one head
    product instead of storing [tokens x vocabulary] log-probabilities.
    """

    def __init__(self, model: nn.Module, layer: int, contexts: torch.Tensor, batch_size: int = 4,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.model, self.layer = model, layer
        self.batches = [b.to(model.device) for b in contexts.split(batch_size)]
        self.n_tokens = contexts.shape[0] * (contexts.shape[1] - 1)  # predicted positions
        # Block L-1's output for each batch: every later evaluation starts at block L.
        self.prefix = [capture_block_output(model, layer - 1, b) for b in self.batches] if layer > 0 else None
        self._on_batch = on_batch
        self.clean_head_inputs: list[torch.Tensor] | None = None
        # per batch, (lse of the clean logits, W^T p): KL without recomputing the clean logits (head_kl.py)
        self.clean_summaries: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def nbytes(self) -> int:
        """Memory held for the whole run: the eval batches, the cached residual stream, the clean
        model's final hidden states."""
        tensors = list(self.batches) + list(self.clean_head_inputs or [])
        tensors += [t for summary in self.clean_summaries or [] for t in summary]
        for output in self.prefix or []:
            tensors += [output] if isinstance(output, torch.Tensor) else [t for t in output if isinstance(t, torch.Tensor)]
        return sum(t.nbytes for t in tensors)

    def _logits(self, i: int, batch: torch.Tensor) -> torch.Tensor:
        if self.prefix is None:
            return self.model(input_ids=batch, use_cache=False).logits
        with replayed_prefix(self.model, self.layer, self.prefix[i]):
            return self.model(input_ids=batch, use_cache=False).logits

    @torch.no_grad()
    def capture_clean(self) -> torch.Tensor:
        """Per-sequence CE of the clean model; keeps its final hidden states for ``score``'s KL."""
        head = self.model.get_output_embeddings()
        captured: list[torch.Tensor] = []
        handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
        try:
            ce = self.per_sequence_ce(None)
        finally:
            handle.remove()
        self.clean_head_inputs = captured
        weight = linear_head_weight(self.model)
        self.clean_summaries = None if weight is None else [
            clean_summary(weight, self._clean_logits(i)) for i in range(len(self.batches))]
        return ce

    def _clean_logits(self, i: int) -> torch.Tensor:
        """The clean model's logits of batch i from its cached final hidden states (as the causal-LM
        forward computes them: the head, then Gemma 2's soft-capping where the config sets it)."""
        logits = self.model.get_output_embeddings()(self.clean_head_inputs[i])
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @torch.no_grad()
    def per_sequence_ce(self, replacement: nn.Module | None) -> torch.Tensor:
        """Mean CE of each context (float64, [n_contexts]) with the MLP replaced by ``replacement``."""
        return self.score(replacement, kl=False)["ce"]

    @torch.no_grad()
    def score(self, replacement: nn.Module | None, kl: bool = True) -> dict[str, torch.Tensor]:
        """Per-context means (float64, [n_contexts]) of next-token CE and, once the clean model was
        captured, of KL(clean || replaced) in nats, computed in fp32 from log-softmaxes."""
        ce, divergence = [], []
        kl = kl and self.clean_head_inputs is not None
        summarised = kl and self.clean_summaries is not None
        head_inputs: list[torch.Tensor] = []
        head = self.model.get_output_embeddings()
        hook = head.register_forward_pre_hook(lambda module, args: head_inputs.append(args[0])) if summarised else None
        try:
            with replaced_mlp(self.model, self.layer, replacement):
                for i, batch in enumerate(self.batches):
                    head_inputs.clear()
                    logits = self._logits(i, batch)
                    if summarised:  # one logsumexp serves CE and KL
                        losses, lse = next_token_losses_and_lse(logits, batch)
                        clean_lse, m = self.clean_summaries[i]
                        divergence.append(kl_from_head_inputs(self.clean_head_inputs[i], head_inputs[0], m,
                                                              clean_lse, lse).mean(dim=1).cpu())
                    else:
                        losses = next_token_losses(logits, batch)
                        if kl:
                            divergence.append(next_token_kl(self._clean_logits(i), logits).mean(dim=1).double().cpu())
                    ce.append(losses.mean(dim=1).double().cpu())
                    if self._on_batch:
                        self._on_batch(batch.numel())
        finally:
            if hook is not None:
                hook.remove()
        out = {"ce": torch.cat(ce)}
        if kl:
            out["kl"] = torch.cat(divergence)
        return out


def next_token_kl(clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(P_clean || P) per predicted position [batch, T-1], in nats: sum_v p_v (log p_v - log q_v),
    from fp32 log-softmaxes (no exp of a difference of logs, so no overflow or 0 * inf)."""
    log_p = torch.log_softmax(clean_logits[:, :-1].float(), dim=-1)
    log_q = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def next_token_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token CE [batch, T-1]: logsumexp - target logit, 3x faster on CPU than
    F.cross_entropy over a 262k vocabulary (no log-softmax copy of the logits)."""
    return next_token_losses_and_lse(logits, input_ids)[0]


def next_token_losses_and_lse(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``next_token_losses`` and the logsumexp it used [batch, T-1] (the summarised KL needs it too)."""
    logits = logits[:, :-1].float()
    lse = torch.logsumexp(logits, dim=-1)
    return lse - logits.gather(-1, input_ids[:, 1:, None]).squeeze(-1), lse


@dataclass
class CrossEntropyComparison:
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    delta_ce: float
    delta_ce_stderr: float
    ce_recovered: float


def paired_stderr(values: torch.Tensor) -> float:
    """Standard error of the mean of per-sequence values (nan for fewer than two sequences)."""
    return values.std(unbiased=True).item() / math.sqrt(len(values)) if len(values) > 1 else math.nan


def compare_ce(clean: torch.Tensor, spliced: torch.Tensor, zero: torch.Tensor) -> CrossEntropyComparison:
    """CE means, the spliced-minus-clean difference with its paired stderr, and
    fraction recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)."""
    stderr = paired_stderr(spliced - clean)
    ce_clean, ce_spliced, ce_zero = clean.mean().item(), spliced.mean().item(), zero.mean().item()
    gap = ce_zero - ce_clean
    recovered = (ce_zero - ce_spliced) / gap if abs(gap) > 1e-12 else math.nan
    return CrossEntropyComparison(ce_clean, ce_spliced, ce_zero, ce_spliced - ce_clean, stderr, recovered)
