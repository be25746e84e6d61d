"""`bench compare`: paired differences against a baseline method, checked against scipy's own
paired t-test and by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import torch
import pytest
from scipy import stats

from bench.cli import main
from bench.compare import compare_run, format_comparison, paired_test
from bench.results import RunStore
from bench.sequence_store import write_sequences


def _make_run(tmp_path, seeds=(0,), shift=-0.05, n=40):
    run = tmp_path / "run"
    store = RunStore(run)
    rng = np.random.default_rng(0)
    hardness = rng.normal(4.0, 0.5, n)  # shared by every method: pairing cancels it
    for seed in seeds:
        noise = np.random.default_rng(100 + seed)
        for method, offset in (("tc", 0.08), ("mxd", 0.08 + shift)):
            for k in (16, 64):
                ce = hardness + offset + noise.normal(0, 0.02, n)
                name = f"{method}-k{k}-s{seed}"
                path = write_sequences(run, name, {"ce": ce.tolist(), "kl": (ce - hardness).tolist()})
                store.append({"model": "m", "layer": 1, "method": method, "k": k, "seed": seed, "status": "ok",
                              "expansion": 8, "train_tokens": 100, "dataset": "d", "sequences": path})
    return run


def test_paired_test_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 30), rng.normal(0.3, 1, 30)
    mean, stderr, t, p = paired_test(a - b)
    reference = stats.ttest_rel(a, b)
    assert math.isclose(t, reference.statistic, rel_tol=1e-12) and math.isclose(p, reference.pvalue, rel_tol=1e-9)
    assert math.isclose(stderr, np.std(a - b, ddof=1) / math.sqrt(30))


def test_compare_run_reports_each_method_against_the_baseline(tmp_path):
    run = _make_run(tmp_path)
    results = compare_run(run, "tc")
    ce = [r for r in results if r.metric == "ce"]
    assert [(r.method, r.k) for r in ce] == [("mxd", 16), ("mxd", 64)]
    for r in ce:
        assert r.difference == pytest.approx(-0.05, abs=0.015) and r.p_value < 1e-6 and r.n_sequences == 40
    text = format_comparison(results)
    assert "method - tc, paired over 40 sequences" in text and "**" in text


def test_seeds_are_averaged_and_their_spread_reported(tmp_path):
    results = compare_run(_make_run(tmp_path, seeds=(0, 1, 2)), "tc")
    assert all(r.n_seeds == 3 and r.seed_sd is not None and r.seed_sd < 0.02 for r in results)


def test_no_difference_is_not_significant(tmp_path):
    results = compare_run(_make_run(tmp_path, shift=0.0), "tc")
    assert all(r.p_value > 0.01 for r in results if r.metric == "ce")


def test_cli_compare_prints_and_writes_json(tmp_path, capsys):
    run = _make_run(tmp_path)
    out = tmp_path / "cmp.json"
    assert main(["compare", str(run), "--json", str(out)]) == 0
    assert "mxd" in capsys.readouterr().out
    assert {r["method"] for r in json.loads(out.read_text())} == {"mxd"}
    assert main(["compare", str(run), "--baseline", "nope"]) == 2
    assert "baseline method 'nope' has no finished cell" in capsys.readouterr().err


def test_seeds_flag_trains_each_cell_per_seed_and_compare_averages_them(tmp_path, tiny_model_dir, corpus_file, capsys):
    args = ["run", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--results-dir", str(tmp_path),
            "--run-name", "s", "--methods", "tc,mxd", "--k", "2", "--tokens", "512", "--context-length", "16",
            "--batch-size", "128", "--expansion", "8", "--eval-tokens", "128", "--ce-tokens", "128",
            "--warmup-steps", "1", "--no-figures", "--seeds", "3,4"]
    assert main(args) == 0
    rows = RunStore(tmp_path / "s").rows()
    assert sorted((r["method"], r["seed"]) for r in rows) == [("mxd", 3), ("mxd", 4), ("tc", 3), ("tc", 4)]
    (ce,) = [r for r in compare_run(tmp_path / "s", "tc") if r.metric == "ce"]
    assert ce.n_seeds == 2 and ce.seed_sd is not None


def test_each_seed_of_a_run_keeps_its_own_checkpoint(tmp_path, tiny_model_dir, corpus_file, capsys):
    """`--seeds 0,1` trains each cell twice; each row points at the weights it was measured with
    (they used to share `checkpoints/<method>-k<K>`, the last seed overwriting the others)."""
    from safetensors.torch import load_file

    from tests.test_cli import TINY

    code = main(["run", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), *TINY, "--methods", "tc,mxd",
                 "--k", "2", "--seeds", "0,1", "--results-dir", str(tmp_path), "--run-name", "seeds"])
    assert code == 0, capsys.readouterr().err
    rows = RunStore(tmp_path / "seeds").rows()
    assert sorted((r["method"], r["seed"]) for r in rows) == [("mxd", 0), ("mxd", 1), ("tc", 0), ("tc", 1)]
    assert len({r["checkpoint"] for r in rows}) == 4
    for method in ("tc", "mxd"):
        weights = [load_file(next((tmp_path / "seeds" / r["checkpoint"]).glob("*.safetensors")))
                   for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == method]
        assert weights[0].keys() == weights[1].keys()
        assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
