"""--random-weights: a named model's architecture with seeded random weights and an offline tokenizer,
through the whole run path (bench/run_context.py load_lm, bench/random_tokenizer.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import data
from bench.config import preset_config
from bench.random_tokenizer import EMBEDDED_VOCAB, WordHashTokenizer, offline_tokenizer
from bench.run_context import load_lm
from tests.conftest import make_documents, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The cat sat on the mat, and the dog ran quickly to the old city."


def test_words_map_to_ids_inside_the_vocabulary_above_the_special_tokens():
    tokenizer = WordHashTokenizer(1000)
    assert len(tokenizer) == 1000
    specials = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    assert specials == (0, 1, 2, 3)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == 17  # 15 words, a comma and a full stop
    assert all(4 <= i < 1000 for i in ids)
    assert ids.count(ids[4]) == 3 and ids[0] != ids[4]  # "the" three times; "The" is another word


def test_ids_do_not_depend_on_the_process():
    """Python's own str hash is salted per process; a resumed run or an activation cache needs the same ids."""
    script = ("import json, sys; from bench.random_tokenizer import WordHashTokenizer; "
              "print(json.dumps(WordHashTokenizer(256000)(sys.argv[1], add_special_tokens=False)['input_ids']))")
    seen = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", script, TEXT], capture_output=True, text=True, env=env, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-1000:]
        seen.append(json.loads(done.stdout))
    assert seen[0] == seen[1] == WordHashTokenizer(256000)(TEXT, add_special_tokens=False)["input_ids"]


def test_distinct_words_spread_over_the_vocabulary():
    """2,000 words into 256,000 buckets: about 8 collisions expected (n^2 / 2V), never hundreds."""
    tokenizer = WordHashTokenizer(256_000)
    ids = tokenizer(" ".join(f"w{i}" for i in range(2000)), add_special_tokens=False)["input_ids"]
    assert len(ids) == 2000 and len(set(ids)) >= 1970
    assert max(ids) > 200_000 and min(ids) < 50_000  # the whole range, not a corner of it


def test_a_vocabulary_without_room_for_words_is_refused():
    with pytest.raises(ValueError, match="above 4 ids.*got 4"):
        WordHashTokenizer(4)


def test_packed_contexts_start_with_bos_and_stay_in_the_vocabulary():
    tokenizer = WordHashTokenizer(500)
    contexts = list(data.pack_contexts([d["text"] for d in make_documents(20)], tokenizer, 16))
    assert len(contexts) > 5
    for context in contexts:
        assert context.shape == (16,) and int(context.max()) < 500
    assert any(int(c[0]) == tokenizer.bos_token_id for c in contexts)


def test_the_embedded_tokenizer_is_used_only_when_all_its_ids_fit(tmp_path, monkeypatch):
    import bench.models

    tiny_tokenizer().save_pretrained(tmp_path)  # stands in for the embedded Gemma 3 directory
    monkeypatch.setattr(bench.models, "embedded_model_dir", lambda: tmp_path)
    assert not isinstance(offline_tokenizer(EMBEDDED_VOCAB), WordHashTokenizer)
    assert isinstance(offline_tokenizer(EMBEDDED_VOCAB - 1), WordHashTokenizer)


def _random_weights_config(model: str, **settings):
    return preset_config("smoke", model=model, random_weights=True, **settings)


def test_load_lm_builds_the_architecture_with_seeded_weights_and_an_offline_tokenizer(tiny_model_dir):
    first = load_lm(_random_weights_config(str(tiny_model_dir), seed=3), torch.device("cpu"), torch.float32)
    again = load_lm(_random_weights_config(str(tiny_model_dir), seed=3), torch.device("cpu"), torch.float32)
    real = load_lm(preset_config("smoke", model=str(tiny_model_dir)), torch.device("cpu"), torch.float32)
    weight = lambda lm: lm.model.get_input_embeddings().weight  # noqa: E731
    assert torch.equal(weight(first), weight(again)) and not torch.equal(weight(first), weight(real))
    assert first.model_id.endswith("(random weights)") and isinstance(first.tokenizer, WordHashTokenizer)
    assert len(first.tokenizer) == weight(first).shape[0] == 96
    assert real.model_id == str(tiny_model_dir) and not isinstance(real.tokenizer, WordHashTokenizer)


def test_bench_run_random_weights_trains_and_scores_every_cell(tiny_model_dir, corpus_file, tmp_path):
    from bench.cli import main
    from bench.results import RunStore

    argv = ["run", "--random-weights", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--methods",
            "tc,mxd", "--k", "2", "--tokens", "1024", "--eval-tokens", "128", "--ce-tokens", "64", "--context-length",
            "16", "--batch-size", "128", "--expansion", "8", "--warmup-steps", "2", "--results-dir", str(tmp_path),
            "--run-name", "random", "--figures-dir", str(tmp_path / "figures")]
    assert main(argv) == 0
    rows = RunStore(tmp_path / "random").rows()
    assert sorted(r["method"] for r in rows) == ["mxd", "tc"]
    for row in rows:
        assert row["status"] == "ok" and row["random_weights"] is True
        assert row["model_id"] == f"{tiny_model_dir} (random weights)"
        assert row["ce_zero"] != row["ce_clean"] and row["kl"] >= 0


def test_random_weight_rows_are_never_one_cell_or_figure_with_real_ones(tmp_path):
    """The same model, layer, method and K from a real run and a rehearsal, plotted together: two cells in two
    figure groups, not one row silently replacing the other."""
    from bench.results_frame import load_results

    for name, random in (("real", False), ("rehearsal", True)):
        (tmp_path / name).mkdir()
        row = {"model": "gemma-2b", "layer": 9, "method": "tc", "k": 32, "status": "ok", "ce_clean": 2.0,
               "ce_spliced": 2.5 if random else 2.1, "random_weights": random}
        (tmp_path / name / "cells.jsonl").write_text(json.dumps(row) + "\n")
    frame = load_results([tmp_path / "real", tmp_path / "rehearsal"])
    assert len(frame) == 2 and frame.groupby(["model", "layer"]).ngroups == 2
    real = frame[~frame["random_weights"].astype(bool)]
    assert real["ce_spliced"].tolist() == [2.1] and real["model"].tolist() == ["gemma-2b"]


def test_a_cell_that_cannot_exist_is_refused_from_the_architecture_before_any_load(tmp_path, capsys):
    """gemma-2b's MLP is 8 d wide: at expansion 8 an MxD's dense branch alone spends the whole TC
    budget (2 d x 8 d = 67,108,864 weights), at 16 it fits. Checked on the meta device, so the
    refusal costs no weights and leaves no run directory."""
    from bench.cli import main

    results = tmp_path / "results"
    code = main(["run", "--methods", "tc,mxd", "--model", "gemma-2b", "--random-weights", "--k", "16",
                 "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "mxd K=16 cannot be built at --expansion 8" in err and "67,108,864" in err
    assert "--expansion 16 is the smallest that builds them all" in err
    assert not results.exists()
