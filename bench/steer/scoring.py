"""Scores of steered samples: fluency (clean-model perplexity), and concept coherence either from an
LLM judge or from an offline proxy.

The PROXY (``coherence_proxy``, labelled "proxy" in every output) asks: does the steered text
make the steered unit itself fire, more than unsteered text does? With
    g  = fraction of the generated tokens on which unit u fires (read by the clean LM and the
         unsteered layer: in TopK with a non-zero code), in the steered samples,
    g0 = the same fraction in the baseline samples (same prompt and seed, layer spliced, no steering),
    proxy = clip((g - g0) / (1 - g0), 0, 1)         (0 when g0 = 1)
0: the unit fires no more on the steered text than on ordinary continuations; 1: it fires on
every generated token. It measures whether the text carries what the unit detects, not whether
a reader would call it one coherent concept (see docs/INSPECT.md for its limits).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from bench.activations import collect_mlp_io
from methods.base import SparseLayer


@torch.no_grad()
def firing_fraction(model: nn.Module, layer_index: int, layer: SparseLayer, unit: int, sequences: torch.Tensor,
                    prompt_length: int) -> float:
    """Fraction of the generated tokens of ``sequences`` on which ``unit`` fires (unsteered layer, clean LM)."""
    x, y = collect_mlp_io(model, layer_index, sequences)
    source = (y if layer.input_site == "mlp_output" else x).to(next(layer.parameters()).device)
    _, codes = layer(source)
    fires = ((codes.indices == unit) & (codes.values != 0)).any(-1).reshape(sequences.shape)
    return float(fires[:, prompt_length:].float().mean())


def coherence_proxy(steered_fraction: float, baseline_fraction: float) -> float:
    if baseline_fraction >= 1.0:
        return 0.0
    return min(1.0, max(0.0, (steered_fraction - baseline_fraction) / (1.0 - baseline_fraction)))


def token_share(sequences: torch.Tensor, prompt_length: int, token_ids: list[int]) -> float:
    """Fraction of generated tokens that are among ``token_ids`` (e.g. the unit's top promoted tokens)."""
    generated = sequences[:, prompt_length:]
    return float(torch.isin(generated, torch.tensor(token_ids, dtype=generated.dtype)).float().mean())


JUDGE_PROMPTS = {
    "coherence": ("Here is a short text:\n\n{text}\n\nOn a scale from 0 to 1, how clearly is this text about one "
                  "single concept or theme? 0 means no identifiable concept, 1 means all of it is about the same "
                  "concept. Answer with only the number."),
    "fluency": ("Here is a short text:\n\n{text}\n\nOn a scale from 0 to 1, how fluent and grammatical is this "
                "text? 0 means word salad, 1 means natural, well-formed language. Answer with only the number."),
}
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def parse_score(answer: str) -> float | None:
    """The first number in [0, 1] in a judge's answer ("0.7", "Score: 1", ".25"), else None."""
    for match in _NUMBER.finditer(answer):
        value = float(match.group())
        if 0.0 <= value <= 1.0:
            return value
    return None


class Judge:
    """A local or hub chat model asked to rate texts 0-1; greedy, a few tokens per answer."""

    def __init__(self, name: str, device: str) -> None:
        from bench.models import load_model

        loaded = load_model(name, device=device)
        self.name, self.model, self.tokenizer = name, loaded.model, loaded.tokenizer

    @torch.no_grad()
    def rate(self, text: str, question: str) -> tuple[float | None, str]:
        prompt = JUDGE_PROMPTS[question].format(text=text)
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                     return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = self.tokenizer(prompt + "\nAnswer:", return_tensors="pt")["input_ids"]
        ids = ids.to(self.model.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                  do_sample=False, pad_token_id=pad)
        answer = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return parse_score(answer), answer

    def score(self, texts: list[str]) -> dict:
        """Mean coherence and fluency over the texts whose answers held a number, and the raw answers."""
        result: dict = {"judge": self.name}
        for question in JUDGE_PROMPTS:
            rated = [self.rate(text, question) for text in texts]
            scores = [s for s, _ in rated if s is not None]
            result[question] = sum(scores) / len(scores) if scores else None
            result[f"{question}_parsed"] = len(scores)
            result[f"{question}_answers"] = [answer for _, answer in rated]
        return result
