"""The held-out side of a run: eval contexts -> MLP activations (NMSE, L0, dead units) and the
cached CE evaluator with the clean and zero-ablated model's per-sequence CE."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench import data
from bench.activations import collect_all
from bench.evaluate import CrossEntropyEvaluator
from bench.logs import progress
from bench.run_context import RunContext
from bench.sequence_store import write_sequences
from bench.splice import ZeroMLP


@dataclass
class EvalSet:
    x: torch.Tensor  # MLP inputs of the eval tokens
    y: torch.Tensor  # MLP outputs of the same tokens
    ce: CrossEntropyEvaluator
    clean: torch.Tensor  # per-sequence CE of the clean model
    zero: torch.Tensor  # per-sequence CE with the MLP zero-ablated
    baseline_file: str  # where clean and zero CE per sequence are stored, relative to the run directory

    def nbytes(self) -> int:
        return self.x.nbytes + self.y.nbytes + self.ce.nbytes()


def build_eval_set(ctx: RunContext) -> EvalSet:
    """Held-out contexts (documents the training stream never sees), their activations and baselines."""
    cfg = ctx.cfg
    contexts = data.take_contexts(
        data.pack_contexts(data.iter_documents(cfg.dataset, "eval"), ctx.tokenizer, cfg.context_length),
        max(cfg.eval_tokens, cfg.ce_tokens), cfg.context_length, split="eval")
    nmse_contexts = contexts[: -(-cfg.eval_tokens // cfg.context_length)]
    ce_contexts = contexts[: -(-cfg.ce_tokens // cfg.context_length)]
    with progress("collecting eval activations", nmse_contexts.numel()) as bar:
        x, y = collect_all(ctx.model, ctx.layer, nmse_contexts, cfg.lm_batch_size, bar.update)
    with progress("caching the eval prefix and clean/zero CE", 3 * ce_contexts.numel()) as bar:
        evaluator = CrossEntropyEvaluator(ctx.model, ctx.layer, ce_contexts, cfg.ce_batch_size, bar.update)
        bar.update(ce_contexts.numel())
        clean, zero = evaluator.capture_clean(), evaluator.per_sequence_ce(ZeroMLP())
    name = f"baseline-L{ctx.layer}-ce{len(clean)}x{cfg.context_length}"
    baseline_file = write_sequences(ctx.run_dir, name, {"ce_clean": clean, "ce_zero": zero})
    return EvalSet(x, y, evaluator, clean, zero, baseline_file)
