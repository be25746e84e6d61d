"""Contexts are BOS + T-1 tokens of the texts joined by EOS, for tokenizers of every kind, through the
train and eval stages' own calls; CE counts the T-1 predictions of each row, the one at BOS included."""
from types import SimpleNamespace

import pytest
import torch

from bench import eval_set, training_source
from bench.activations import collect_mlp_io
from bench.config import RunConfig
from bench.data import DataError, boundary_tokens, iter_documents, pack_contexts
from bench.evaluate import next_token_losses
from tests.conftest import tiny_model, tiny_tokenizer

T = 16


def _tokenizer(kind: str):
    """The fixture's word-level tokenizer with the special tokens of each family: Llama/Gemma (BOS and
    EOS differ), GPT-2 (one <|endoftext|> is both), EOS only, or neither."""
    tok = tiny_tokenizer()
    if kind == "gpt2":
        tok.bos_token = "<eos>"
    elif kind == "eos-only":
        tok.bos_token = None
    elif kind == "neither":
        tok.bos_token = tok.eos_token = None
    return tok


KINDS = ("bos-and-eos", "gpt2", "eos-only")


def _expected_stream(texts, tokenizer) -> list[int]:
    """The texts joined by the EOS token, each tokenized on its own (no special tokens)."""
    separator = tokenizer.convert_tokens_to_ids("<eos>")
    stream: list[int] = []
    for i, text in enumerate(texts):
        stream += ([separator] if i else []) + tokenizer.encode(text, add_special_tokens=False)
    return stream


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_contexts_start_with_bos_and_hold_the_eos_joined_stream_once(kind, split, corpus_file):
    tokenizer = _tokenizer(kind)
    texts = list(iter_documents(str(corpus_file), split))
    contexts = torch.stack(list(pack_contexts(iter(texts), tokenizer, T, tokenize_batch=7)))
    start = tokenizer.convert_tokens_to_ids("<eos>" if kind in ("gpt2", "eos-only") else "<bos>")
    assert contexts.shape[1] == T and (contexts[:, 0] == start).all()
    # Reconstruct the stream independently: every token exactly once, in order, only the last short tail dropped.
    expected = _expected_stream(texts, tokenizer)
    served = contexts[:, 1:].reshape(-1).tolist()
    assert served == expected[: len(served)]
    assert 0 <= len(expected) - len(served) < T - 1


def test_a_tokenizer_with_neither_bos_nor_eos_is_refused_in_one_line():
    with pytest.raises(DataError) as caught:
        list(pack_contexts(["the cat sat"] * 4, _tokenizer("neither"), T))
    assert "\n" not in str(caught.value) and "neither a BOS nor an EOS" in str(caught.value)


def test_boundary_tokens_of_each_family():
    tok = _tokenizer("bos-and-eos")
    bos, eos = tok.convert_tokens_to_ids("<bos>"), tok.convert_tokens_to_ids("<eos>")
    assert boundary_tokens(tok) == (bos, eos)
    assert boundary_tokens(_tokenizer("gpt2")) == (eos, eos)
    assert boundary_tokens(_tokenizer("eos-only")) == (eos, eos)


def test_a_row_boundary_on_a_document_boundary_keeps_both_tokens():
    tok = _tokenizer("bos-and-eos")
    bos, eos = tok.convert_tokens_to_ids("<bos>"), tok.convert_tokens_to_ids("<eos>")
    one = tok.encode("the cat sat", add_special_tokens=False)
    assert len(one) == 3
    rows = [r.tolist() for r in pack_contexts(["the cat sat", "the dog ran", "a mat"], tok, 4)]
    the, cat, sat, dog, ran = (tok.convert_tokens_to_ids(w) for w in ("the", "cat", "sat", "dog", "ran"))
    assert rows == [[bos, the, cat, sat], [bos, eos, the, dog], [bos, ran, eos, tok.convert_tokens_to_ids("a")]]


def _ctx(corpus_file, tokenizer, model=None):
    cfg = RunConfig(dataset=str(corpus_file), context_length=T, eval_tokens=20 * T, ce_tokens=10 * T,
                    lm_batch_size=4)
    return SimpleNamespace(cfg=cfg, tokenizer=tokenizer, model=model, layer=1)


@pytest.mark.parametrize("kind", KINDS)
def test_the_stages_own_train_and_eval_contexts_start_with_bos(kind, corpus_file, monkeypatch):
    tokenizer = _tokenizer(kind)
    start = boundary_tokens(tokenizer)[0]
    ctx = _ctx(corpus_file, tokenizer)
    held_out = eval_set.eval_contexts(ctx)
    assert held_out.shape == (20, T) and (held_out[:, 0] == start).all()
    monkeypatch.setattr(training_source, "lm_chunks", lambda model, layer, contexts, batch: contexts)
    train = list(training_source._live(ctx, 0))
    assert len(train) > 50 and all(c[0] == start for c in train)
    resumed = list(training_source._live(ctx, 7 * T))  # a resumed run skips whole BOS rows
    assert all(torch.equal(a, b) for a, b in zip(resumed, train[7:])) and len(resumed) == len(train) - 7


def test_ce_counts_every_prediction_of_a_row_including_the_one_at_bos():
    """T-1 predictions per row: position 0 (BOS) predicts token 1, ..., position T-2 predicts token T-1;
    the last position predicts nothing inside the row."""
    model = tiny_model("llama")
    tok = _tokenizer("bos-and-eos")
    rows = torch.stack(list(pack_contexts(["the cat sat on the mat . the dog ran"] * 6, tok, 8)))
    logits = model(input_ids=rows).logits
    losses = next_token_losses(logits, rows)
    assert losses.shape == (rows.shape[0], 7)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    at_bos = -log_probs[:, 0].gather(-1, rows[:, 1:2]).squeeze(-1)  # the prediction made at BOS
    torch.testing.assert_close(losses[:, 0].double(), at_bos, rtol=1e-5, atol=1e-5)
    manual = torch.stack([-log_probs[:, t].gather(-1, rows[:, t + 1:t + 2]).squeeze(-1) for t in range(7)], 1)
    torch.testing.assert_close(losses.mean(dim=1).double(), manual.mean(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_the_bos_positions_activations_are_in_the_training_stream(arch):
    """collect_mlp_io keeps every position: row 0 of each context is the MLP's input and output at BOS,
    which (causal attention) equal those of BOS alone."""
    model = tiny_model(arch)
    tok = _tokenizer("gpt2" if arch == "gpt2" else "bos-and-eos")
    rows = torch.stack(list(pack_contexts(["the cat sat on the mat . the dog ran"] * 6, tok, 8)))
    x, y = collect_mlp_io(model, 1, rows)
    assert x.shape[0] == rows.numel()
    alone_x, alone_y = collect_mlp_io(model, 1, rows[:1, :1])
    torch.testing.assert_close(x.view(len(rows), 8, -1)[:, 0], alone_x.expand(len(rows), -1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y.view(len(rows), 8, -1)[:, 0], alone_y.expand(len(rows), -1), rtol=1e-4, atol=1e-5)


def test_rows_record_the_packing_rule_as_identity():
    from bench.data import PACKING
    from bench.rows import IDENTITY_SETTINGS, settings_row

    row = settings_row(RunConfig(), "tiny", 1, torch.device("cpu"), torch.float32, None)
    assert row["packing"] == PACKING == "bos-row-start-eos-joined" and "packing" in IDENTITY_SETTINGS
