"""The chunked train/eval split (bench/split.py) and the document of each eval context
(bench/provenance.py): a corpus of a few long documents gives eval contexts from many of them,
train and eval share no chunk, and each context is traced to the document its tokens came from."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from bench.data import iter_documents, iter_pieces, pack_contexts, take_contexts
from bench.provenance import NO_DOCUMENT, context_documents, count_documents, take_documented_contexts
from bench.split import CHUNK_CHARS, is_eval_document, split_document, text_chunks
from tests.conftest import sentence


def long_documents(n: int, sentences: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"book-{i}", "text": " ".join(sentence(rng) for _ in range(sentences))} for i in range(n)]


def write_jsonl(path, records: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """30 documents of ~34,000 characters each: few, long texts, as in a user's own corpus."""
    records = long_documents(30, 600)
    return write_jsonl(tmp_path_factory.mktemp("books") / "books.jsonl", records), records


def test_chunks_are_bounded_keep_words_whole_and_give_the_text_back():
    text = " ".join(sentence(random.Random(1)) for _ in range(300))
    chunks = text_chunks(text)
    assert "".join(chunks) == text
    assert all(0 < len(c) <= CHUNK_CHARS for c in chunks) and len(chunks) >= len(text) // CHUNK_CHARS
    assert all(c.endswith(" ") for c in chunks[:-1])  # every cut falls after a space, never inside a word
    assert text_chunks("x" * 2500) == ["x" * 1000, "x" * 1000, "x" * 500]  # no whitespace: a hard cut


def test_few_long_documents_give_eval_contexts_from_many_of_them(books, tokenizer):
    path, records = books
    pieces = list(iter_pieces(path, "eval"))
    most_tokens = max(len(tokenizer(text)["input_ids"]) for _, text in pieces)
    assert most_tokens <= 256  # a piece is at most one chunk: 1,000 characters, here <= 256 tokens
    _, token_documents = take_documented_contexts(iter(pieces), tokenizer, 4096, 128)
    # 32 contexts of 128 tokens; a piece of <= 256 tokens is the majority of at most 3 contexts, and
    # round-robin serves one piece per document before any document's second: >= 32 / 3 documents.
    assert len(set(context_documents(token_documents))) >= 11
    assert count_documents(token_documents) >= len(set(context_documents(token_documents)))
    # The whole-document split this replaces holds out at most a few books (here none), and any one
    # of them alone fills all 32 contexts: one document, however many sequences.
    assert sum(is_eval_document(r["id"]) for r in records) <= 3
    assert min(len(tokenizer(r["text"])["input_ids"]) for r in records) > 4096


def test_train_and_eval_share_no_chunk_and_lose_no_text(books):
    _, records = books
    n_eval = n_chunks = 0
    for record in records:
        train, held_out = split_document(record["id"], record["text"])
        assert sum(map(len, train)) + sum(map(len, held_out)) == len(record["text"])  # nothing lost or doubled
        assert not any(chunk in piece for chunk in held_out for piece in train)
        assert all(piece in record["text"] for piece in train + held_out)
        n_eval, n_chunks = n_eval + len(held_out), n_chunks + len(text_chunks(record["text"]))
    assert 0.025 < n_eval / n_chunks < 0.08  # about the 5% eval fraction, over ~1,000 chunks
    assert sum(1 for r in records if split_document(r["id"], r["text"])[1]) >= 20  # most books hold out a chunk


def test_a_short_document_keeps_its_whole_document_split():
    keys = [f"doc-{i}" for i in range(400)]
    for key in keys:
        train, held_out = split_document(key, "a short text of a few words")
        assert (held_out == ["a short text of a few words"]) == is_eval_document(key)
        assert (train == []) == is_eval_document(key)


def test_the_split_is_deterministic_and_does_not_depend_on_document_order(books, tmp_path):
    path, records = books
    reversed_path = write_jsonl(tmp_path / "reversed.jsonl", records[::-1])
    first = list(iter_pieces(path, "eval"))
    assert first == list(iter_pieces(path, "eval"))
    assert sorted(first) == sorted(iter_pieces(reversed_path, "eval"))
    assert sorted(iter_documents(path, "train")) == sorted(iter_documents(reversed_path, "train"))


def test_eval_pieces_take_turns_between_documents(books):
    path, _ = books
    keys = [key for key, _ in iter_pieces(path, "eval")]
    first_round = keys[: len(set(keys))]
    assert len(set(first_round)) == len(first_round)  # every document's first eval chunk before any second


def test_each_token_and_context_is_traced_to_its_document(tokenizer):
    """Documents made of one word each: every token's document is its word's, a special token's is
    none, and a context's document is the one whose word fills most of it."""
    words = ["cat", "dog", "river", "king", "music", "water", "light", "city"]
    pieces = [(f"doc-{w}", " ".join([w] * n)) for w, n in zip(words, (50, 7, 130, 20, 64, 3, 90, 40))]
    contexts, token_documents = take_documented_contexts(iter(pieces), tokenizer, 32 * 12, 32)
    word_of_id = {tokenizer.convert_tokens_to_ids(w): w for w in words}
    expected = [[words.index(word_of_id[t]) if t in word_of_id else NO_DOCUMENT for t in row]
                for row in contexts.tolist()]
    assert token_documents.tolist() == expected
    assert count_documents(token_documents) == 8  # the 12 contexts reach into every document
    for context, document in zip(contexts, context_documents(token_documents)):
        counts = Counter(word_of_id[t] for t in context.tolist() if t in word_of_id)
        top = max(counts.values())
        first_top = next(word_of_id[t] for t in context.tolist() if t in word_of_id and counts[word_of_id[t]] == top)
        assert words[document] == first_top  # ordinals follow first appearance, which is word order here


def test_documented_contexts_are_the_plain_contexts(books, tokenizer):
    path, _ = books
    plain = take_contexts(pack_contexts(iter_documents(path, "eval"), tokenizer, 64), 2048, 64)
    documented, token_documents = take_documented_contexts(iter_pieces(path, "eval"), tokenizer, 2048, 64)
    assert documented.equal(plain) and token_documents.shape == plain.shape
