"""KL(clean || spliced) per token: exact zero for the clean model, and the textbook formula on the
full forward (no prefix replay, no cached head inputs) for a real replacement."""
from __future__ import annotations

import torch

from bench.evaluate import CrossEntropyEvaluator, next_token_kl
from bench.models import mlp_module
from bench.splice import replaced_mlp


class Amplified(torch.nn.Module):
    """The layer's own MLP with its output rotated and scaled up: moves the next-token distribution a lot
    (rotated too, since Gemma's norm after the MLP undoes a pure scaling)."""

    def __init__(self, mlp: torch.nn.Module, gain: float = 30.0) -> None:
        super().__init__()
        self.mlp, self.gain = mlp, gain

    def forward(self, hidden_states, *args, **kwargs):
        return torch.roll(self.mlp(hidden_states), 1, dims=-1) * self.gain


def _full_forward_kl(model, layer: int, contexts: torch.Tensor, replacement) -> torch.Tensor:
    """Per-sequence mean KL from two plain forwards and torch's kl_div (an independent formula)."""
    with torch.no_grad():
        clean = model(input_ids=contexts, use_cache=False).logits[:, :-1].double()
        with replaced_mlp(model, layer, replacement):
            other = model(input_ids=contexts, use_cache=False).logits[:, :-1].double()
    per_token = torch.nn.functional.kl_div(other.log_softmax(-1), clean.log_softmax(-1), log_target=True,
                                           reduction="none").sum(-1)
    return per_token.mean(dim=1)


def test_kl_of_the_clean_model_is_zero_and_of_a_replacement_matches_the_full_forward(any_arch_model):
    _, model = any_arch_model
    contexts = torch.randint(0, 96, (5, 16))
    for layer in (0, 2):
        evaluator = CrossEntropyEvaluator(model, layer, contexts, batch_size=2)
        evaluator.capture_clean()
        assert evaluator.score(None)["kl"].abs().max().item() < 1e-6
        replacement = Amplified(mlp_module(model, layer))
        scores = evaluator.score(replacement)
        expected = _full_forward_kl(model, layer, contexts, replacement)
        assert expected.min().item() > 1e-3, "the replacement must move the distribution for this test to mean anything"
        torch.testing.assert_close(scores["kl"], expected, rtol=1e-4, atol=1e-6)


def test_kl_direction_is_clean_first():
    """KL(P || Q) with P the clean distribution: a peaked P against a flat Q, by hand."""
    clean = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # the last position is never scored
    flat = torch.zeros(1, 2, 3)
    p = torch.softmax(clean[0, 0], -1)
    by_hand = (p * (p.log() - torch.log(torch.tensor(1 / 3)))).sum()
    torch.testing.assert_close(next_token_kl(clean, flat)[0, 0], by_hand)
    reverse = (torch.full((3,), 1 / 3) * (torch.log(torch.tensor(1 / 3)) - p.log())).sum()
    assert not torch.isclose(next_token_kl(flat, clean)[0, 0], by_hand) and torch.isclose(
        next_token_kl(flat, clean)[0, 0], reverse)


def test_kl_is_finite_for_extreme_logits():
    clean = torch.tensor([[[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]]])
    other = torch.tensor([[[-1e4, 1e4, 0.0], [0.0, 0.0, 0.0]]])
    value = next_token_kl(clean, other)[0, 0]
    assert torch.isfinite(value) and value.item() > 1e4


def test_an_fp32_linear_head_takes_the_summarised_path_and_a_soft_capped_one_does_not(any_arch_model):
    """The summarised KL (bench/head_kl.py) is used exactly where the head is W h in fp32 on a CPU, and
    gives the full-forward KL there; Gemma 2's soft-capped logits keep the recomputed clean logits."""
    arch, model = any_arch_model
    contexts = torch.randint(0, 96, (4, 16))
    evaluator = CrossEntropyEvaluator(model, 1, contexts, batch_size=3)
    evaluator.capture_clean()
    assert (evaluator.clean_summaries is None) == bool(getattr(model.config, "final_logit_softcapping", None))
    replacement = Amplified(mlp_module(model, 1), gain=3.0)
    torch.testing.assert_close(evaluator.score(replacement)["kl"], _full_forward_kl(model, 1, contexts, replacement),
                               rtol=1e-4, atol=1e-6)
    assert torch.equal(evaluator.score(None)["kl"], torch.zeros(4, dtype=torch.float64))
