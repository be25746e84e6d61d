"""The held-out side of a run: eval contexts -> MLP activations (NMSE, L0, dead units) and the
cached CE evaluator with the clean and zero-ablated model's per-sequence CE."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench import data
from bench.activations import collect_all
from bench.clustered import clustered_stderr
from bench.evaluate import CrossEntropyEvaluator
from bench.logs import note, progress
from bench.provenance import context_documents, count_documents, take_documented_contexts
from bench.row_checks import few_documents_warning
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
    documents: list[int] | None = None  # per CE sequence: the document most of its tokens came from
    eval_documents: int | None = None  # documents the NMSE/L0 tokens come from
    ce_documents: int | None = None  # documents the CE tokens come from

    def nbytes(self) -> int:
        return self.x.nbytes + self.y.nbytes + self.ce.nbytes()

    def document_stats(self, scores: dict[str, torch.Tensor]) -> dict:
        """A cell's ΔCE and KL standard errors clustered by the document each CE sequence came from
        (sequences of one document are not independent draws), and the eval set's document counts."""
        stats = {"delta_ce_stderr": clustered_stderr((scores["ce"] - self.clean).tolist(), self.documents),
                 "eval_documents": self.eval_documents, "ce_documents": self.ce_documents}
        if "kl" in scores:
            stats["kl_stderr"] = clustered_stderr(scores["kl"].tolist(), self.documents)
        return stats


def eval_contexts(ctx: RunContext, n_tokens: int | None = None) -> torch.Tensor:
    """Held-out contexts (text the training stream never sees): ``n_tokens`` of them, by default
    enough for NMSE and for CE."""
    cfg = ctx.cfg
    return data.take_contexts(
        data.pack_contexts(data.iter_documents(cfg.dataset, "eval"), ctx.tokenizer, cfg.context_length),
        n_tokens or max(cfg.eval_tokens, cfg.ce_tokens), cfg.context_length, split="eval")


def heldout_activations(ctx: RunContext, contexts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MLP inputs and outputs of the first ``eval_tokens`` held-out tokens (NMSE, L0, dead units)."""
    contexts = eval_contexts(ctx, ctx.cfg.eval_tokens) if contexts is None else contexts
    nmse_contexts = contexts[: -(-ctx.cfg.eval_tokens // ctx.cfg.context_length)]
    with progress("collecting eval activations", nmse_contexts.numel()) as bar:
        return collect_all(ctx.model, ctx.layer, nmse_contexts, ctx.cfg.lm_batch_size, bar.update)


def validation_contexts(ctx: RunContext) -> torch.Tensor:
    """``eval_tokens`` held-out tokens that no reported metric uses: the eval-split contexts after the
    ones the run scores NMSE and CE on. Choosing a setting (``bench tune``'s learning rates) on them
    keeps the reported numbers free of selection on their own tokens."""
    cfg = ctx.cfg
    reported = -(-max(cfg.eval_tokens, cfg.ce_tokens) // cfg.context_length)
    wanted = -(-cfg.eval_tokens // cfg.context_length)
    return eval_contexts(ctx, (reported + wanted) * cfg.context_length)[reported:]


def documented_eval_contexts(ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    """``eval_contexts`` (enough for NMSE and CE) and each of their tokens' document (provenance.py)."""
    cfg = ctx.cfg
    return take_documented_contexts(data.iter_pieces(cfg.dataset, "eval"), ctx.tokenizer,
                                    max(cfg.eval_tokens, cfg.ce_tokens), cfg.context_length)


def build_eval_set(ctx: RunContext) -> EvalSet:
    """Held-out activations, the CE evaluator on held-out contexts, and the clean/zero baselines."""
    cfg = ctx.cfg
    contexts, token_documents = documented_eval_contexts(ctx)
    x, y = heldout_activations(ctx, contexts)
    ce_contexts = contexts[: -(-cfg.ce_tokens // cfg.context_length)]
    ce_documents = context_documents(token_documents[:len(ce_contexts)])
    n_eval = -(-cfg.eval_tokens // cfg.context_length)
    counts = {"eval_documents": count_documents(token_documents[:n_eval]),
              "ce_documents": count_documents(token_documents[:len(ce_contexts)])}
    for warning in (few_documents_warning("NMSE/L0", n_eval, counts["eval_documents"], "--eval-tokens"),
                    few_documents_warning("CE", len(ce_contexts), counts["ce_documents"], "--ce-tokens")):
        if warning:
            note(warning)
    with progress("caching the eval prefix and clean/zero CE", 3 * ce_contexts.numel()) as bar:
        evaluator = CrossEntropyEvaluator(ctx.model, ctx.layer, ce_contexts, cfg.ce_batch_size, bar.update)
        bar.update(ce_contexts.numel())
        clean, zero = evaluator.capture_clean(), evaluator.per_sequence_ce(ZeroMLP())
    name = f"baseline-L{ctx.layer}-ce{len(clean)}x{cfg.context_length}"
    baseline_file = write_sequences(ctx.run_dir, name, {"ce_clean": clean, "ce_zero": zero, "document": ce_documents})
    return EvalSet(x, y, evaluator, clean, zero, baseline_file, ce_documents, **counts)
