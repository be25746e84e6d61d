"""Warnings in words: an eval set from too few documents (checked on a real eval set built from a
tiny model and a corpus of a few long documents), and a cell whose dictionary is mostly dead."""
from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from bench.config import RunConfig
from bench.eval_set import build_eval_set
from bench.row_checks import DEAD_FRACTION_LIMIT, dead_units_warning, few_documents_warning
from bench.sequence_store import read_sequences
from tests.conftest import sentence, tiny_model


def _eval_context(tmp_path, tokenizer, n_documents: int, sentences: int, ce_tokens: int = 256):
    rng = random.Random(5)
    records = [{"id": f"d{i}", "text": " ".join(sentence(rng) for _ in range(sentences))} for i in range(n_documents)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = RunConfig(dataset=str(corpus), eval_tokens=512, ce_tokens=ce_tokens, context_length=32, lm_batch_size=8)
    return SimpleNamespace(cfg=cfg, tokenizer=tokenizer, model=tiny_model("llama"), layer=2, run_dir=tmp_path)


def test_eval_set_stores_a_document_per_ce_sequence_and_warns_when_they_are_few(tmp_path, tokenizer, capsys):
    eval_set = build_eval_set(_eval_context(tmp_path, tokenizer, n_documents=6, sentences=400))
    stored = read_sequences(tmp_path, eval_set.baseline_file)
    assert len(stored["document"]) == len(stored["ce_clean"]) == 8  # 256 tokens / 32 per context
    assert stored["document"] == eval_set.documents
    assert len(set(eval_set.documents)) <= eval_set.ce_documents <= eval_set.eval_documents <= 6
    err = capsys.readouterr().err
    assert f"the 8 CE eval sequences come from only {eval_set.ce_documents} documents" in err
    assert "Raise --ce-tokens" in err and "Raise --eval-tokens" in err


def test_no_warning_from_many_short_documents(tmp_path, tokenizer, capsys):
    eval_set = build_eval_set(_eval_context(tmp_path, tokenizer, n_documents=3000, sentences=1, ce_tokens=512))
    assert eval_set.ce_documents >= 20  # one sentence, ~12 tokens, per document: ~40 in 512 tokens
    assert eval_set.eval_documents >= eval_set.ce_documents
    assert "warning" not in capsys.readouterr().err


def test_few_documents_warning_threshold():
    assert few_documents_warning("CE", 32, 20, "--ce-tokens") is None
    message = few_documents_warning("CE", 32, 1, "--ce-tokens")
    assert "32 CE eval sequences come from only 1 document;" in message and "at most 0 degrees" in message


def _row(**overrides) -> dict:
    row = {"method": "mxd", "k": 16, "status": "ok", "dead_fraction": 0.75, "n_units": 3070,
           "eval_tokens": 16384, "l0": 16.0}
    row.update(overrides)
    return row


def test_mostly_dead_cell_gets_a_warning_with_its_remedies():
    message = dead_units_warning(_row())
    assert message.startswith("warning: mxd K=16: 75% of its 3,070 units never fired")
    assert "--aux-k-coef" in message and "bench tune" in message
    assert "eval window is short" not in message  # 16,384 x 16 / 3,070 = 85 firings expected per unit


@pytest.mark.parametrize("row", [_row(dead_fraction=DEAD_FRACTION_LIMIT), _row(dead_fraction=0.1),
                                 _row(status="failed"), _row(dead_fraction=None)])
def test_no_dead_unit_warning_at_or_below_the_limit_or_without_a_result(row):
    assert dead_units_warning(row) is None


def test_a_short_eval_window_is_named_as_the_possible_cause():
    message = dead_units_warning(_row(eval_tokens=256, l0=16.0, n_units=3070))  # 1.3 firings per unit
    assert "would fire 1.3 times in it" in message and "--eval-tokens" in message
    assert "eval window" not in dead_units_warning(_row(eval_tokens=1024))  # 1,024 x 16 / 3,070 = 5.3 >= 5
