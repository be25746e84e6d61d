"""A --tokens larger than a local corpus's training split is refused before any LM pass, naming how
many tokens the split holds; asking for exactly that many passes; a hub dataset is not counted."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import data, harness
from bench.activation_cache import CacheWriter
from bench.cli import main
from bench.data import DataError
from bench.training_source import cache_key, check_training_split


def _context(dataset: str, tokens: int, tokenizer, context_length: int = 16,
             activation_cache: Path | None = None) -> SimpleNamespace:
    cfg = SimpleNamespace(dataset=dataset, train_tokens=tokens, context_length=context_length,
                          activation_cache=activation_cache and str(activation_cache), activation_cache_dtype="fp32")
    return SimpleNamespace(cfg=cfg, tokenizer=tokenizer, lm=SimpleNamespace(model_id="tiny"),
                           base_row={"lm_dtype": "torch.float32"}, device=torch.device("cpu"), layer=2)


def _fill_cache(ctx: SimpleNamespace, tokens: int) -> None:
    """A real activation cache of ``tokens`` rows under the context's key, as a finished run leaves it."""
    writer = CacheWriter(cache_key(ctx).directory(Path(ctx.cfg.activation_cache)), cache_key(ctx))
    writer.add(torch.zeros(tokens, 4), torch.zeros(tokens, 4))
    writer.finish()


def _held(corpus: Path, tokenizer) -> int:
    with pytest.raises(DataError) as refused:
        check_training_split(_context(str(corpus), 10**9, tokenizer))
    return int(re.search(r"ask for at most (\d+) ", str(refused.value)).group(1))


def test_the_largest_budget_the_split_holds_passes_and_one_token_more_is_refused(corpus_file, tokenizer):
    most = _held(corpus_file, tokenizer)
    assert most > 0 and most % 16 == 0  # whole contexts
    check_training_split(_context(str(corpus_file), most, tokenizer))
    with pytest.raises(DataError, match=rf"^--tokens {most + 1}: the training split of .* holds {most:,} tokens"):
        check_training_split(_context(str(corpus_file), most + 1, tokenizer))


def test_the_count_is_of_the_training_split_alone(corpus_file, tokenizer):
    """Counted by hand: every context of the training split, packed as the run packs it."""
    contexts = list(data.pack_contexts(data.iter_documents(str(corpus_file), "train"), tokenizer, 16))
    everything = list(data.pack_contexts(data.iter_documents(str(corpus_file), "eval"), tokenizer, 16))
    assert everything  # the eval split is not empty, so counting it too would show
    assert _held(corpus_file, tokenizer) == 16 * len(contexts)


def test_a_hub_dataset_is_not_counted(tokenizer, monkeypatch):
    monkeypatch.setattr(data, "iter_documents", lambda *a, **k: pytest.fail("a hub dataset was read"))
    check_training_split(_context("some-org/some-dataset", 10**12, tokenizer))


def test_a_cache_that_holds_the_budget_spares_the_count_and_a_short_one_does_not(corpus_file, tokenizer,
                                                                                  tmp_path, monkeypatch):
    most = _held(corpus_file, tokenizer)
    short = _context(str(corpus_file), most + 16, tokenizer, activation_cache=tmp_path / "short")
    _fill_cache(short, most)  # one context fewer than asked: the split must still be counted, and refuse
    with pytest.raises(DataError, match=rf"holds {most:,} tokens"):
        check_training_split(short)
    full = _context(str(corpus_file), most, tokenizer, activation_cache=tmp_path / "full")
    _fill_cache(full, most)
    monkeypatch.setattr(data, "iter_documents", lambda *a, **k: pytest.fail("the split was read beside a full cache"))
    check_training_split(full)


def test_bench_run_refuses_before_the_heldout_pass_and_leaves_no_run(tiny_model_dir, corpus_file, tokenizer,
                                                                    tmp_path, monkeypatch, capsys):
    most = _held(corpus_file, tokenizer)
    monkeypatch.setattr(harness, "build_eval_set", lambda ctx: pytest.fail("the eval set was built"))
    code = main(["run", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--methods", "tc",
                 "--k", "2", "--expansion", "8", "--context-length", "16", "--tokens", str(most + 16),
                 "--results-dir", str(tmp_path / "results"), "--run-name", "too-big"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert f"holds {most:,} tokens" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "results" / "too-big").exists()
