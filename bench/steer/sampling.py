"""Sampling for the steering protocol: temperature, a frequency penalty, nucleus (top-p), seeded.

Order per step, as in the TransformerLens sampler that steering studies use:
    logits / temperature  ->  - penalty * count(token in the sequence so far)  ->  top-p  ->  sample
The frequency penalty subtracts ``penalty`` once per earlier occurrence of a token (prompt
included): a token seen three times loses 3 * penalty. It is NOT transformers'
``repetition_penalty``, which divides (or multiplies) a seen token's logit once, however often
it was seen. No early stop at EOS: every sample has exactly ``new_tokens`` tokens.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn


class FrequencyPenalty:
    """A logits processor (transformers' ``(input_ids, scores) -> scores`` signature)."""

    def __init__(self, penalty: float) -> None:
        if penalty < 0:
            raise ValueError(f"frequency penalty must be >= 0, got {penalty}")
        self.penalty = penalty

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros_like(scores).scatter_add_(1, input_ids, torch.ones_like(input_ids, dtype=scores.dtype))
        return scores - self.penalty * counts


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most probable tokens until their mass reaches ``top_p`` (the top token always stays);
    the rest get -inf. A token is kept when the mass of the tokens ranked above it is <= top_p."""
    ranked, order = logits.sort(dim=-1, descending=True)
    mass_before = ranked.softmax(-1).cumsum(-1) - ranked.softmax(-1)
    drop_ranked = mass_before > top_p
    drop_ranked[..., 0] = False
    drop = torch.zeros_like(drop_ranked).scatter(-1, order, drop_ranked)
    return logits.masked_fill(drop, float("-inf"))


@torch.no_grad()
def sample(model: nn.Module, prompt_ids: torch.Tensor, n_samples: int, new_tokens: int, temperature: float,
           top_p: float, frequency_penalty: float, seed: int) -> torch.Tensor:
    """``n_samples`` continuations of ``prompt_ids`` ([S]) as one [n_samples, S + new_tokens] tensor."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    penalty = FrequencyPenalty(frequency_penalty)
    ids = prompt_ids.to(device).expand(n_samples, -1).clone()
    step, cache = ids, None
    for _ in range(new_tokens):
        logits, cache = _last_logits(model, step, cache)
        probs = top_p_filter(penalty(ids, logits / temperature), top_p).softmax(-1)
        step = torch.multinomial(probs, 1, generator=generator)
        ids = torch.cat([ids, step], dim=1)
    return ids.cpu()


def _last_logits(model: nn.Module, step: torch.Tensor, cache) -> tuple[torch.Tensor, object]:
    """Next-token logits after ``step`` (the new tokens), reusing and returning the KV cache.

    transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (the old name warns,
    then goes), so the keyword is read off this version's signature; ``logits_to_keep=1`` spares
    the LM head every position but the last (a 262k-token head costs more than Gemma's layers).
    """
    accepted = inspect.signature(model.forward).parameters
    kwargs = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
    if cache is not None:
        kwargs["cache" if "cache" in accepted else "past_key_values"] = cache
    out = model(input_ids=step, use_cache=True, **kwargs)
    cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    return out.logits[:, -1].float(), cache


@torch.no_grad()
def continuation_nll(model: nn.Module, sequences: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Per-sample mean negative log-likelihood of the tokens after the prompt: [n_samples] float64."""
    ids = sequences.to(next(model.parameters()).device)
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return nll[:, prompt_length - 1:].mean(1).double().cpu()
