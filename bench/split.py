"""The train/eval split: documents cut into chunks, each chunk assigned by a hash.

A split by whole documents fails on a corpus of a few long documents: with 130 documents and
an eval fraction of 5%, about 7 land in eval, and the first few thousand eval tokens (the CE
sequences) all come from the first of them, so every standard error measures the spread within
one text. Here each document is cut into chunks of about ``CHUNK_CHARS`` characters (at
whitespace, so words stay whole), and chunk i of a document belongs to eval when a hash of
(the document's key, i) falls below the eval fraction. Eval chunks are then served round-robin
over ``EVAL_WINDOW`` documents at a time (``round_robin``), so consecutive eval chunks come from
different documents.

What is disjoint: chunks. An eval chunk's text is never trained on, but the chunks before and
after it in the same document may be. A document no longer than one chunk is hashed by its own
key, exactly as the whole-document split did, so a corpus of short documents (the embedded
Wikipedia lead sections: median 460 characters) splits as before.

The split depends on the text and the key only: not on the tokenizer, the context length or the
order documents arrive in, so every model and every run sees the same eval text. ``SPLIT_RULE``
names it; caches and rows that depend on the split should record it, so a change is noticed.
"""
from __future__ import annotations

import hashlib
from typing import Iterator

DEFAULT_EVAL_FRACTION = 0.05
# ~1,000 characters is ~250 tokens, two 128-token contexts: a few thousand eval tokens then come
# from tens of documents. Changing either number changes the split: change SPLIT_RULE with it.
CHUNK_CHARS = 1000
EVAL_WINDOW = 64  # documents whose eval chunks are interleaved, one chunk of each per round
SPLIT_RULE = f"chunks-{CHUNK_CHARS}c-window{EVAL_WINDOW}"


def is_eval_document(key: str, eval_fraction: float = DEFAULT_EVAL_FRACTION) -> bool:
    """Deterministic membership of the eval split, from a stable hash of a document's (or a
    chunk's, see ``chunk_key``) key."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < eval_fraction


def text_chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """``text`` in pieces of at most ``size`` characters, each ending after a whitespace when its
    second half has one (so words stay whole); joined, the pieces give ``text`` back."""
    chunks, start = [], 0
    while len(text) - start > size:
        window = text[start + size // 2:start + size]
        cut = max(window.rfind(c) for c in " \n\t\r")
        end = start + size // 2 + cut + 1 if cut >= 0 else start + size
        chunks.append(text[start:end])
        start = end
    return chunks + [text[start:]]


def chunk_key(key: str, index: int) -> str:
    """The key chunk ``index`` of a document is hashed by: the document's own for the first chunk
    (so a short document keeps its whole-document split), ``key#index`` for the others."""
    return key if index == 0 else f"{key}#{index}"


def split_document(key: str, text: str, eval_fraction: float = DEFAULT_EVAL_FRACTION) -> tuple[list[str], list[str]]:
    """(train pieces, eval chunks) of one document: each run of consecutive train chunks joined
    back together (so training text is broken only where an eval chunk was cut out), and each
    eval chunk on its own; blank pieces are left out."""
    train: list[str] = []
    held_out: list[str] = []
    run: list[str] = []
    for index, chunk in enumerate(text_chunks(text)):
        if is_eval_document(chunk_key(key, index), eval_fraction):
            held_out.append(chunk)
            train.append("".join(run))
            run = []
        else:
            run.append(chunk)
    train.append("".join(run))
    return [t for t in train if t.strip()], [c for c in held_out if c.strip()]


def round_robin(documents: list[tuple[str, list[str]]]) -> Iterator[tuple[str, str]]:
    """(key, chunk) pairs: the first chunk of every document, then every second chunk, and so on."""
    for i in range(max((len(chunks) for _, chunks in documents), default=0)):
        yield from ((key, chunks[i]) for key, chunks in documents if i < len(chunks))
