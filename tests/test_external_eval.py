"""`bench eval --load`: a dictionary exported from a trained cell scores exactly what the cell scored,
as a row beside trained cells; bad sources are one line and exit 2."""
from __future__ import annotations

import pytest
import torch

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


def write_jumprelu_transcoder(directory, d: int = 32, width: int = 48, layer: int = 1):
    """A SAELens JumpReLU transcoder for the tiny Llama's layer ``layer`` (d_model 32), seeded weights."""
    from tests.test_interop_fixtures import saelens_cfg, write_saelens

    g = torch.Generator().manual_seed(3)
    tensors = {"W_enc": torch.randn(d, width, generator=g) / d**0.5, "b_enc": torch.randn(width, generator=g) * 0.1,
               "W_dec": torch.randn(width, d, generator=g) / width**0.5, "b_dec": torch.zeros(d),
               "threshold": torch.rand(width, generator=g) * 0.3}
    cfg = saelens_cfg("jumprelu_transcoder", f"model.layers.{layer}.post_attention_layernorm",
                      f"model.layers.{layer}.mlp", d_in=d, d_out=d, d_sae=width)
    return write_saelens(directory, cfg, tensors)


def test_a_loaded_dictionary_is_saved_in_the_run_and_probed_like_a_trained_cell(tmp_path, tiny_model_dir,
                                                                                corpus_file):
    """bench eval --load keeps the converted layer as a checkpoint of the run (safetensors + JSON); bench probe
    then scores it from there: the features it probes are the dictionary's own codes, loaded independently."""
    import json

    import numpy as np

    from bench.interop import load_dictionary, splice_site
    from bench.models import load_model
    from bench.probing import runner
    from bench.probing.codes import collect_text_activations, pooled_codes
    from bench.probing.datasets import load_probe_dataset
    from bench.probing.metrics import stratified_split
    from bench.probing.scoring import score_features
    from methods import load_layer
    from tests.conftest import make_documents

    source = write_jumprelu_transcoder(tmp_path / "jumprelu")
    data = ["--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--results-dir", str(tmp_path), *SHAPE]
    assert main(["eval", "--load", str(source), *data, "--layer", "1", "--run-name", "external"]) == 0
    run = tmp_path / "external"
    (row,) = RunStore(run).rows()
    assert row["method"] == "saelens:jumprelu_transcoder" and row["checkpoint"].startswith("checkpoints/")
    assert sorted(p.name for p in (run / row["checkpoint"]).iterdir()) == ["config.json", "weights.safetensors"]
    lm = load_model(str(tiny_model_dir))
    direct = load_dictionary(str(source), splice_site(lm.model, 1)).layer
    saved = load_layer(run / row["checkpoint"])
    x = torch.randn(50, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(saved(x)[0], direct(x)[0])

    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": d["text"], "label": "cat" if "cat" in d["text"] else "none"})
                                + "\n" for d in make_documents(60, seed=3)))
    rows = runner.probe_run(run, [str(labelled)], device="cpu", max_per_class=15, seed=0, ks=(1,))
    probed = {(r["probe"], r["probe_k"]): r for r in rows if r["kind"] == "cell"}
    assert probed[("k-sparse", 1)]["source"] == str(source) and probed[("k-sparse", 1)]["n_units"] == 48
    dataset = load_probe_dataset(str(labelled), 15, 0)
    acts = collect_text_activations(lm.model, 1, lm.tokenizer, dataset.texts)
    labels = np.array([dataset.classes.index(dataset.labels[i]) for i in acts.kept])
    train, test = stratified_split(labels, seed=0)
    expected = score_features(pooled_codes(direct, acts).numpy(), labels, dataset.classes, train, test, (1,))
    for want in expected:
        assert probed[(want["probe"], want["probe_k"])]["f1"] == pytest.approx(want["f1"])
