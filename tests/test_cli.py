"""End-to-end: `bench run` on a tiny random Llama and a local JSONL corpus, then resume and errors."""
import json

import pytest

from bench.cli import main
from bench.results import RunStore

TINY = ["--tokens", "2048", "--eval-tokens", "256", "--ce-tokens", "64", "--context-length", "16",
        "--batch-size", "128", "--expansion", "8", "--k", "2,4", "--warmup-steps", "2", "--seed", "1"]


def _run(tmp_path, model_dir, corpus, *extra):
    return main(["run", "--model", str(model_dir), "--dataset", str(corpus), "--results-dir", str(tmp_path),
                 "--run-name", "tiny", *TINY, *extra])


def test_bench_run_writes_a_row_per_cell(tmp_path, tiny_model_dir, corpus_file, capsys):
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc,mxd") == 0
    rows = RunStore(tmp_path / "tiny").rows()
    assert sorted((r["method"], r["k"]) for r in rows) == [("mxd", 2), ("mxd", 4), ("tc", 2), ("tc", 4)]
    for row in rows:
        assert row["status"] == "ok" and row["error"] is None
        assert row["layer"] == 2 and row["train_tokens"] == 2048 and row["seed"] == 1
        assert row["ce_tokens"] == 4 * 15 and row["eval_tokens"] == 256
        assert row["l0"] <= row["k"] and 0 <= row["dead_fraction"] <= 1
        assert row["nmse"] > 0 and row["n_params"] > 0
        assert abs(row["delta_ce"] - (row["ce_spliced"] - row["ce_clean"])) < 1e-9
        assert row["versions"]["torch"] and row["hardware"] and row["device"] == "cpu"
        assert row["train_steps"] == 2048 // 128
    assert len({r["ce_clean"] for r in rows}) == 1  # one clean baseline per run
    summary = (tmp_path / "tiny" / "summary.csv").read_text().splitlines()
    assert len(summary) == 5 and summary[0].startswith("model,layer,method,k")
    assert "mxd" in capsys.readouterr().out


def test_rerun_skips_finished_cells_and_adds_new_ones(tmp_path, tiny_model_dir, corpus_file, capsys):
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc") == 0
    first = {(r["method"], r["k"]): r["timestamp"] for r in RunStore(tmp_path / "tiny").rows()}
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc") == 0
    assert "nothing to do" in capsys.readouterr().err
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc,mxd") == 0
    rows = RunStore(tmp_path / "tiny").rows()
    assert len(rows) == 4
    assert {(r["method"], r["k"]): r["timestamp"] for r in rows if r["method"] == "tc"} == first


@pytest.mark.parametrize("args, message", [
    (["--methods", "tc,nope"], "unknown method 'nope'"),
    (["--k", "0"], "--k values must be >= 1, got 0"),
    (["--tokens", "-5"], "--train-tokens must be a positive integer, got -5"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--layer", "99"], "layer 99 is out of range"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_model_dir, corpus_file, capsys, args, message):
    assert _run(tmp_path, tiny_model_dir, corpus_file, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "tiny" / "cells.jsonl").exists()


def test_methods_lists_every_registered_method(capsys):
    import methods

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in methods.method_names():
        assert name in out
    assert "expansion=" in out
