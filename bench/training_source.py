"""Where training activations come from: the activation cache when it is usable, else the LM
(filling the cache on the way when one was asked for), always in document order so a resumed
run can skip exactly the rows it already drew."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import torch

from bench import data
from bench.activation_cache import CacheKey, CacheWriter, StaleCache, open_cache, read_chunks
from bench.activations import lm_chunks
from bench.logs import note
from bench.run_context import RunContext
from bench.data import PACKING
from bench.split import SPLIT_RULE

Chunks = Iterator[tuple[torch.Tensor, torch.Tensor]]


class TokenCounter:
    """Counts the activation rows drawn from a source, so a resume knows where to continue."""

    def __init__(self, chunks: Chunks, start: int = 0) -> None:
        self._chunks = chunks
        self.tokens = start

    def __iter__(self):
        return self

    def __next__(self):
        x, y = next(self._chunks)
        self.tokens += len(x)
        return x, y


def _teed(chunks: Chunks, writer: CacheWriter) -> Chunks:
    for x, y in chunks:
        writer.add(x, y)
        yield x, y


def _live(ctx: RunContext, drawn: int) -> Chunks:
    cfg = ctx.cfg
    stream = data.pack_contexts(data.iter_documents(cfg.dataset, "train"), ctx.tokenizer, cfg.context_length)
    contexts = itertools.islice(stream, drawn // cfg.context_length, None)
    return lm_chunks(ctx.model, ctx.layer, contexts, cfg.lm_batch_size)


def cache_key(ctx: RunContext) -> CacheKey:
    """Everything that changes the cached activations."""
    cfg, tokenizer = ctx.cfg, ctx.tokenizer
    # The LM's dtype and device kind change the activations; the split and packing rules change the rows.
    model = f"{ctx.lm.model_id}|{ctx.base_row['lm_dtype']}|{ctx.device.type}"
    return CacheKey(model, ctx.layer, cfg.dataset, f"train:{SPLIT_RULE}:{PACKING}", cfg.context_length,
                    f"{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}", cfg.activation_cache_dtype)


def _cache_location(ctx: RunContext) -> tuple[CacheKey, Path]:
    """The run's cache key and the directory under ``--activation-cache`` that holds it."""
    key = cache_key(ctx)
    return key, key.directory(Path(ctx.cfg.activation_cache))


def training_source(ctx: RunContext, drawn: int) -> tuple[Chunks, CacheWriter | None]:
    """(x, y) chunks in document order, ``drawn`` rows skipped, and the cache writer if one fills."""
    if not ctx.cfg.activation_cache:
        return _live(ctx, drawn), None
    key, directory = _cache_location(ctx)
    try:
        manifest = open_cache(directory, key, ctx.cfg.train_tokens)
    except StaleCache as reason:
        if drawn:
            note(f"{reason}; this resumed run reads the LM without caching")
            return _live(ctx, drawn), None
        note(f"{reason}; building it during this run")
        writer = CacheWriter(directory, key)
        return _teed(_live(ctx, drawn), writer), writer
    note(f"reading activations from the cache at {directory}")
    return read_chunks(directory, manifest, skip_tokens=drawn), None


def check_training_split(ctx: RunContext) -> None:
    """Refuse a ``--tokens`` that a local corpus's training split cannot hold, before any LM pass.

    Without it, the run found out when the split ran dry, after it had spent the LM pass on all it
    held (70 minutes for the embedded corpus's 986k tokens on two cores). A local corpus (the
    embedded one, a file or a folder) is tokenized and packed here, stopping as soon as it holds
    enough: seconds, against the LM pass. A hub dataset streams and is not counted, and neither is a
    split whose activations a usable cache already holds: the run reads them from there.
    """
    cfg = ctx.cfg
    if not data.is_local(cfg.dataset) or _cache_holds_budget(ctx):
        return
    wanted = -(-cfg.train_tokens // cfg.context_length)
    stream = data.pack_contexts(data.iter_documents(cfg.dataset, "train"), ctx.tokenizer, cfg.context_length)
    held = sum(1 for _ in itertools.islice(stream, wanted))
    if held < wanted:
        most = held * cfg.context_length
        raise data.DataError(f"--tokens {cfg.train_tokens}: the training split of {cfg.dataset!r} holds "
                             f"{most:,} tokens ({held:,} contexts of {cfg.context_length}); ask for at most "
                             f"{most} or use a larger --dataset")


def _cache_holds_budget(ctx: RunContext) -> bool:
    if not ctx.cfg.activation_cache:
        return False
    key, directory = _cache_location(ctx)
    try:
        open_cache(directory, key, ctx.cfg.train_tokens)
    except StaleCache:
        return False
    return True
