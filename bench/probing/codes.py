"""Texts -> per-text feature vectors: the LM's MLP activations once per dataset, then each sparse
layer's codes (or a baseline's features) mean-pooled over every text's content tokens.

A text becomes ``[BOS] + its first 127 tokens``; texts with fewer than 5 tokens of their own are
dropped. Pooling averages positions 1..n of each text: the BOS position (the same input for every
text, with a huge norm in most LMs) and the padding are left out, and so is any BOS, EOS or special
padding token a text spells out itself (``bench.data.unscored_token_ids``; a code file holding
"<|endoftext|>" tokenizes to the EOS id). Texts are right-padded, so under causal attention the
padding never changes a content token's activations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.activations import collect_mlp_io
from bench.data import boundary_tokens, unscored_token_ids
from methods.base import SparseCodes, SparseLayer

MAX_TEXT_TOKENS = 127  # plus BOS: 128-token contexts, as in the reference
MIN_TEXT_TOKENS = 5
DOWN_PROJECTIONS = ("down_proj", "c_proj", "dense_4h_to_h")  # Llama/Gemma, GPT-2, GPT-NeoX


@dataclass
class TextActivations:
    """MLP input ``x`` and output ``y`` of every content token (BOS and padding removed), and the
    text each token belongs to; ``kept`` indexes the dataset's texts that survived the length cut."""

    x: torch.Tensor  # [tokens, d] fp32, CPU
    y: torch.Tensor  # [tokens, d]
    text_index: torch.Tensor  # [tokens] long
    kept: list[int]

    @property
    def n_texts(self) -> int:
        return len(self.kept)


def tokenize_texts(tokenizer, texts: list[str], max_tokens: int = MAX_TEXT_TOKENS,
                   min_tokens: int = MIN_TEXT_TOKENS) -> tuple[list[list[int]], list[int]]:
    """``[BOS] + first max_tokens tokens`` of each text with at least ``min_tokens``; and which texts those were."""
    bos = boundary_tokens(tokenizer)[0]  # the token every training context starts with
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids, kept = [], []
    for i, tokens in enumerate(encoded):
        if len(tokens) >= min_tokens:
            ids.append([bos] + list(tokens[:max_tokens]))
            kept.append(i)
    return ids, kept


def padded_batch(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T] ids and the matching 0/1 attention mask."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, :len(tokens)] = torch.tensor(tokens)
        mask[row, :len(tokens)] = 1
    return input_ids, mask


def content_mask(attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                 unscored_ids: tuple[int, ...] = ()) -> torch.Tensor:
    """True at each text's own tokens: attended positions except position 0 (the BOS) and, given the
    ids, any position holding one of ``unscored_ids``."""
    mask = attention_mask.bool().clone()
    mask[:, 0] = False
    if input_ids is not None and unscored_ids:
        mask &= ~torch.isin(input_ids, torch.tensor(unscored_ids, dtype=input_ids.dtype))
    return mask


@torch.no_grad()
def collect_text_activations(model: nn.Module, layer: int, tokenizer, texts: list[str],
                             batch_size: int = 16, keep_output: bool = True) -> TextActivations:
    """One LM pass per batch of texts (sorted by length, so little padding), stopping after ``layer``'s MLP.

    Without ``keep_output`` the MLP outputs are not kept (``y`` is empty): half the memory when no
    probed layer reads them.
    """
    ids, kept = tokenize_texts(tokenizer, texts)
    if not ids:
        raise ValueError(f"no text has at least {MIN_TEXT_TOKENS} tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    unscored = unscored_token_ids(tokenizer)
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    xs, ys, owners = [], [], []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        input_ids, attention = padded_batch([ids[i] for i in rows], pad)
        x, y = collect_mlp_io(model, layer, input_ids)
        content = content_mask(attention, input_ids, unscored)
        keep = content.reshape(-1).to(x.device)
        xs.append(x[keep].cpu())
        ys.append(y[keep].cpu() if keep_output else y.new_empty(0, y.shape[-1]).cpu())
        owners.append(torch.tensor(rows).repeat_interleave(content.sum(1)))
    return TextActivations(torch.cat(xs), torch.cat(ys), torch.cat(owners), kept)


def segment_mean(values: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Row ``s`` of the result is the mean of ``values`` rows whose ``segment`` is s ([n_segments, ...])."""
    total = values.new_zeros((n_segments, *values.shape[1:])).index_add_(0, segment, values)
    counts = torch.bincount(segment, minlength=n_segments).clamp_min(1).to(values.dtype)
    return total / counts.reshape(-1, *([1] * (values.dim() - 1)))


def sum_sparse(codes: SparseCodes, segment: torch.Tensor, n_segments: int, n_units: int) -> torch.Tensor:
    """Sum over each segment's tokens of the N-wide code, without building it per token: [n_segments, n_units]."""
    values = codes.values.reshape(len(segment), -1).float()
    indices = codes.indices.reshape(len(segment), -1)
    total = values.new_zeros(n_segments, n_units)
    return total.index_put_((segment[:, None].expand_as(indices), indices), values, accumulate=True)


def pool_sparse(codes: SparseCodes, segment: torch.Tensor, n_segments: int, n_units: int) -> torch.Tensor:
    """Mean over each segment's tokens of the N-wide code: [n_segments, n_units]."""
    counts = torch.bincount(segment, minlength=n_segments).clamp_min(1)
    return sum_sparse(codes, segment, n_segments, n_units) / counts[:, None]


def pool_padded_codes(codes: SparseCodes, attention_mask: torch.Tensor, n_units: int) -> torch.Tensor:
    """Codes laid out like a padded batch ([B, T, K]) -> [B, n_units] means over content tokens only."""
    keep = content_mask(attention_mask)
    segment = torch.arange(keep.shape[0]).unsqueeze(1).expand_as(keep)[keep]
    return pool_sparse(SparseCodes(codes.values[keep], codes.indices[keep]), segment, keep.shape[0], n_units)


@torch.no_grad()
def pooled_codes(layer: SparseLayer, acts: TextActivations, device: torch.device | str = "cpu",
                 chunk_tokens: int = 8192) -> torch.Tensor:
    """[texts, n_units] mean codes of ``layer``, fed x or y as its ``input_site`` says."""
    source = acts.y if layer.input_site == "mlp_output" else acts.x
    if len(source) != len(acts.text_index):
        raise ValueError(f"layer {layer.name!r} reads the MLP {layer.input_site}, which was not collected")
    total = torch.zeros(acts.n_texts, layer.n_units)
    dtype = next(layer.parameters()).dtype
    for start in range(0, len(source), chunk_tokens):
        _, codes = layer(source[start:start + chunk_tokens].to(device, dtype))
        total += sum_sparse(SparseCodes(codes.values.cpu(), codes.indices.cpu()),
                            acts.text_index[start:start + chunk_tokens], acts.n_texts, layer.n_units)
    return total / torch.bincount(acts.text_index, minlength=acts.n_texts).clamp_min(1)[:, None]


@torch.no_grad()
def pooled_mlp_neurons(mlp: nn.Module, acts: TextActivations, device: torch.device | str = "cpu",
                       chunk_tokens: int = 8192) -> torch.Tensor:
    """[texts, d_mlp] mean hidden activations of the base MLP: the input of its down projection
    (act(W x) for GPT-2/NeoX; act(W_gate x) * W_up x for a GLU), its own "neurons"."""
    down = next((getattr(mlp, name) for name in DOWN_PROJECTIONS if hasattr(mlp, name)), None)
    if down is None:
        raise ValueError(f"cannot find the down projection of {type(mlp).__name__} (looked for {DOWN_PROJECTIONS})")
    captured: list[torch.Tensor] = []
    handle = down.register_forward_pre_hook(lambda module, args: captured.append(args[0].float().cpu()))
    dtype = next(mlp.parameters()).dtype
    try:
        for start in range(0, len(acts.x), chunk_tokens):
            mlp(acts.x[start:start + chunk_tokens].to(device, dtype))
    finally:
        handle.remove()
    return segment_mean(torch.cat(captured), acts.text_index, acts.n_texts)


def random_projection(width: int, d: int, seed: int) -> torch.Tensor:
    """A seeded [d, width] Gaussian matrix with variance 1/d: random directions of the MLP input."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(d, width, generator=generator) / d**0.5
