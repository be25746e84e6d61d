import pytest
import torch

from bench.data import (
    DataError,
    embedded_documents,
    is_eval_document,
    iter_documents,
    pack_contexts,
    take_contexts,
)


def test_eval_membership_is_deterministic_and_near_the_fraction():
    keys = [f"doc-{i}" for i in range(20000)]
    first = [is_eval_document(k, 0.1) for k in keys]
    assert first == [is_eval_document(k, 0.1) for k in keys]
    assert 0.09 < sum(first) / len(keys) < 0.11
    assert not any(is_eval_document(k, 0.0) for k in keys[:100])


def test_local_jsonl_splits_are_disjoint_and_cover_everything(corpus_file):
    train = list(iter_documents(str(corpus_file), "train", eval_fraction=0.2))
    held_out = list(iter_documents(str(corpus_file), "eval", eval_fraction=0.2))
    assert len(train) + len(held_out) == 600
    assert 80 < len(held_out) < 160
    assert not set(train) & set(held_out)
    assert list(iter_documents(str(corpus_file), "eval", eval_fraction=0.2)) == held_out


def test_local_text_file_goes_through_the_same_path(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("first document line one\nline two\n\nsecond document\n\nthird one\n")
    docs = list(iter_documents(str(path), "train", eval_fraction=0.0))
    assert len(docs) == 3 and docs[0].startswith("first document")


def test_missing_field_and_bad_split_are_clear(tmp_path, corpus_file):
    with pytest.raises(DataError, match="no 'body' field"):
        list(iter_documents(str(corpus_file), "train", text_field="body"))
    with pytest.raises(DataError, match="split must be"):
        list(iter_documents(str(corpus_file), "test"))


def test_packing_starts_every_context_with_bos_and_joins_documents_with_eos(tokenizer):
    texts = ["the cat sat", "a dog ran on the mat", "old king"]
    contexts = list(pack_contexts(texts, tokenizer, context_length=4))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    expected = []  # the documents joined by EOS, served three tokens per context after a BOS
    for i, text in enumerate(texts):
        expected += ([eos] if i else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
    assert all(c.shape == (4,) and c[0] == bos for c in contexts)
    body = torch.cat([c[1:] for c in contexts]).tolist()
    assert body == expected[: len(body)]
    assert len(body) == len(expected) - len(expected) % 3


def test_take_contexts_reports_a_short_split(tokenizer):
    contexts = pack_contexts(["the cat sat on the mat"] * 3, tokenizer, context_length=4)
    with pytest.raises(DataError, match="only 24 tokens, fewer than the 400"):  # 6 contexts of BOS + 3
        take_contexts(contexts, 400, 4, split="eval")


def _tiles(text: str, pieces: list[str]) -> bool:
    """Whether ``pieces``, each used once, laid end to end in some order, give ``text`` back: a walk
    from the start that always takes an unused piece starting where the last one ended."""
    def walk(at: int, left: tuple[str, ...]) -> bool:
        if not left:
            return at == len(text)
        return any(text.startswith(piece, at) and walk(at + len(piece), left[:i] + left[i + 1:])
                   for i, piece in enumerate(left) if piece)
    return walk(0, tuple(sorted(pieces, key=len, reverse=True)))


def test_embedded_corpus_splits_share_no_text():
    """Each document's train pieces and eval chunks, as the split serves them, tile the document: no
    character is in both splits (nor twice in one), none is lost, and documents longer than one chunk
    (~1,000 characters) hold out part of their text and train on the rest."""
    from collections import defaultdict

    from bench.data import EMBEDDED_CORPUS, iter_pieces

    docs = embedded_documents()
    assert len(docs) > 9000
    titles = [t for t, _ in docs]
    assert len(set(titles)) == len(titles)
    assert titles != sorted(titles)  # the order is fixed by a hash, not alphabetical
    split = {name: defaultdict(list) for name in ("train", "eval")}
    for name, pieces in split.items():
        for title, text in iter_pieces(EMBEDDED_CORPUS, name):
            pieces[title].append(text)
    held_out = set(split["eval"])
    assert 0.03 < len(held_out) / len(docs) < 0.07  # about the 5% eval fraction
    for title, text in docs:
        assert _tiles(text, split["train"].get(title, []) + split["eval"].get(title, [])), title
    both = [title for title, text in docs if title in held_out and title in split["train"]]
    assert both and all(len(dict(docs)[title]) > 1000 for title in both)  # only a long document is in both


def _error(path, **kwargs):
    with pytest.raises(DataError) as caught:
        list(iter_documents(str(path), "train", eval_fraction=0.0, **kwargs))
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_file_that_is_not_utf8_is_named_with_the_offset_of_the_bad_byte(tmp_path):
    good = '{"text": "caf\u00e9 one"}\n'.encode()  # a two-byte character before the bad byte
    (tmp_path / "docs.jsonl").write_bytes(good + b'{"text": "two \xff"}\n')
    offset = len(good) + len(b'{"text": "two ')
    assert _error(tmp_path / "docs.jsonl") == (
        f"dataset file {tmp_path / 'docs.jsonl'} is not UTF-8 text (invalid byte 0xff at offset {offset}, line 2)")
    (tmp_path / "docs.txt").write_bytes(b"first paragraph\n\nsecond \xfe\n")
    assert _error(tmp_path / "docs.txt").endswith("docs.txt is not UTF-8 text (invalid byte 0xfe at offset 24, line 3)")
    (tmp_path / "docs.json").write_bytes(b'[{"text": "x \xff"}]')
    assert _error(tmp_path / "docs.json").endswith("docs.json is not UTF-8 text (invalid byte 0xff at offset 13, line 1)")


def test_bad_jsonl_rows_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("")
    assert _error(path) == f"dataset {str(path)!r} holds no documents (no record with a non-empty 'text')"
    path.write_text('{"text": "fine"}\n\n{"text": 12345}\n')
    assert _error(path) == f"dataset file {path} line 3: 'text' is int '12345', not a string"
    path.write_text('{"text": "fine"}\nnot json\n')
    assert _error(path) == f"dataset file {path} line 2 is not JSON (Expecting value, column 1)"
    path.write_text('["a", "list"]\n')
    assert _error(path) == f"dataset file {path} line 1 is a JSON list, not an object with a 'text' field"
    path.write_text('{"id": 1, "body": "x"}\n')
    assert _error(path) == f"dataset file {path} line 1 has no 'text' field (fields: id, body)"


def test_local_files_give_the_records_datasets_gives(tmp_path, corpus_file):
    import datasets

    text = "one\r\ntwo\r\n\r\n\r\nthree\rfour\n\n\n\nfive\n\nsix"
    (tmp_path / "docs.txt").write_bytes(text.encode())
    by_datasets = [r["text"] for r in datasets.load_dataset("text", data_files=[str(tmp_path / "docs.txt")],
                                                            split="train", streaming=True, sample_by="paragraph")]
    assert list(iter_documents(str(tmp_path / "docs.txt"), "train", eval_fraction=0.0)) == by_datasets
    assert by_datasets == ["one\ntwo", "\nthree\nfour", "five", "six"]
    by_datasets = [r["text"] for r in datasets.load_dataset("json", data_files=[str(corpus_file)], split="train",
                                                            streaming=True)]
    assert list(iter_documents(str(corpus_file), "train", eval_fraction=0.0)) == by_datasets
