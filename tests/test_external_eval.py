"""`bench eval --load`: a dictionary exported from a trained cell scores exactly what the cell scored,
as a row beside trained cells; bad sources are one line and exit 2."""
from __future__ import annotations

from bench.cli import main
from bench.results import RunStore

SHAPE = ["--context-length", "16", "--eval-tokens", "256", "--ce-tokens", "64"]


def test_an_exported_tc_loaded_back_scores_the_cells_own_numbers(tmp_path, tiny_model_dir, corpus_file, capsys):
    data = ["--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--results-dir", str(tmp_path), *SHAPE]
    assert main(["run", *data, "--run-name", "trained", "--methods", "tc", "--k", "2", "--tokens", "1024",
                 "--batch-size", "128", "--expansion", "8", "--warmup-steps", "2", "--no-figures"]) == 0
    (cell,) = RunStore(tmp_path / "trained").rows()
    for fmt in ("sparsify", "sae-lens"):
        out = tmp_path / f"export-{fmt}"
        assert main(["export", str(tmp_path / "trained"), "--cell", "tc-k2", "--format", fmt, "--out", str(out)]) == 0
        assert main(["eval", "--load", str(out), *data, "--layer", str(cell["layer"]), "--run-name", "external"]) == 0
    rows = RunStore(tmp_path / "external").rows()
    assert sorted(r["format"] for r in rows) == ["sae-lens", "sparsify"]
    for row in rows:  # same eval tokens, same weights: the same numbers, to the last bit
        assert row["k"] == 2 and row["status"] == "ok" and row["trained_tokens"] == 0
        for metric in ("ce_clean", "ce_spliced", "delta_ce", "delta_ce_stderr", "nmse", "kl", "l0"):
            same = row[metric] == cell[metric] or (row[metric] != row[metric] and cell[metric] != cell[metric])
            assert same, (row["format"], metric, row[metric], cell[metric])  # NaN: one document, no stderr
    capsys.readouterr()
    assert main(["eval", "--load", str(tmp_path / "nowhere"), *data, "--layer", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error:") and len(err.splitlines()) == 1
    assert main(["eval", "--load", str(out)]) == 2
    assert "--load needs --model and --layer" in capsys.readouterr().err
