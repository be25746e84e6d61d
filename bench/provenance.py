"""Which document each packed eval context came from, for standard errors clustered by document.

``data.pack_contexts`` turns a stream of texts into token contexts and forgets where each token
came from. Rather than teach the packer to carry document ids (one more thing to keep right in
every packing rule), the pieces are packed a second time through a stand-in tokenizer that
replaces every token of a piece by a code for the piece's document and every special token by
-1: the second pass lays out document codes exactly as the first laid out tokens, whatever the
packing rule is (BOS per document or per context, EOS between documents, ...). For standard
errors a context belongs to the document most of its tokens came from (``context_documents``);
for "how many documents does the eval set span" every token counts (``count_documents``).
"""
from __future__ import annotations

import itertools
from collections import Counter
from typing import Iterable

import torch

from bench.data import pack_contexts, take_contexts

NO_DOCUMENT = -1  # a special token (BOS, EOS, padding): it belongs to no document


class _Piece(str):
    """A text that knows its document's ordinal; the packer handles it as the plain string it is."""

    document: int


class _DocumentCodes:
    """Stands in for the tokenizer: each token of a piece becomes -2 - its document's ordinal (so
    codes never clash with NO_DOCUMENT or with a real token id the packer looks up)."""

    bos_token_id = eos_token_id = pad_token_id = NO_DOCUMENT

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)

    def __call__(self, texts, **kwargs) -> dict[str, list[list[int]]]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, _Piece) for t in texts):
            raise RuntimeError("pack_contexts changed its texts before tokenizing them; "
                               "bench/provenance.py can no longer tell their documents")
        ids = self._tokenizer(texts, **kwargs)["input_ids"]
        return {"input_ids": [[-2 - text.document] * len(row) for text, row in zip(texts, ids)]}


def context_documents(documents: torch.Tensor) -> list[int]:
    """Per context (row of ``take_documented_contexts``'s document map), the document most of its
    tokens came from (the earlier one on a tie): the cluster its sequence belongs to."""
    out = []
    for row in documents.tolist():
        owned = [d for d in row if d != NO_DOCUMENT]
        if not owned:
            raise RuntimeError("a packed context holds no document's tokens; bench/provenance.py cannot place it")
        out.append(Counter(owned).most_common(1)[0][0])
    return out


def count_documents(documents: torch.Tensor) -> int:
    """How many documents the tokens of these contexts come from (any token counts)."""
    return len(set(documents[documents != NO_DOCUMENT].tolist()))


def take_documented_contexts(pieces: Iterable[tuple[str, str]], tokenizer, n_tokens: int, context_length: int,
                             split: str = "eval") -> tuple[torch.Tensor, torch.Tensor]:
    """``take_contexts`` of the packed texts of ``pieces`` ((document key, text) pairs), and beside it
    a tensor of the same shape holding each token's document: 0 for the first document seen, 1 for
    the next, ..., NO_DOCUMENT for a special token."""
    ordinals: dict[str, int] = {}

    def texts() -> Iterable[_Piece]:
        for key, text in pieces:
            piece = _Piece(text)
            piece.document = ordinals.setdefault(key, len(ordinals))
            yield piece

    first, second = itertools.tee(texts())
    contexts = take_contexts(pack_contexts(first, tokenizer, context_length), n_tokens, context_length, split)
    codes = take_contexts(pack_contexts(second, _DocumentCodes(tokenizer), context_length), n_tokens,
                          context_length, split)
    if codes.shape != contexts.shape:  # cannot happen while packing depends on token counts alone
        raise RuntimeError(f"document codes {tuple(codes.shape)} do not match contexts {tuple(contexts.shape)}")
    return contexts, torch.where(codes <= -2, -2 - codes, torch.full_like(codes, NO_DOCUMENT))
