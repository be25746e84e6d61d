"""probe_run end to end on a tiny run directory: three saved cells on a tiny Llama, a local dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.activations import collect_mlp_io
from bench.probing import runner
from bench.probing.codes import collect_text_activations, pooled_codes
from bench.probing.store import PROBING_FILE
from methods import create, save_layer
from methods.base import dense_codes
from tests.conftest import make_documents

LAYER = 1


@pytest.fixture
def tiny_run(tmp_path, tiny_model_dir):
    """A run directory with TC, MxD and SAE cells saved for layer 1 of the tiny Llama, and a 2-class dataset."""
    from transformers import AutoModelForCausalLM

    from bench.models import layer_spec

    spec = layer_spec(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LAYER)
    rows = []
    for method in ("tc", "mxd", "sae"):  # the SAE reads the MLP output, the others its input
        torch.manual_seed(0)
        layer = create(method, spec, expansion=4, k=4)
        save_layer(layer, tmp_path / "run" / "checkpoints" / f"{method}-k4")
        rows.append({"model": str(tiny_model_dir), "layer": LAYER, "method": method, "k": 4, "expansion": 4,
                     "train_tokens": 1024, "seed": 0, "dataset": "local", "status": "ok", "n_units": layer.n_units,
                     "checkpoint": f"checkpoints/{method}-k4", "delta_ce": 0.5})
    rows.append({**rows[0], "method": "stc", "status": "failed", "checkpoint": None})
    (tmp_path / "run" / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = make_documents(80, seed=3)
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"text": d["text"], "label": "cat" if "cat" in d["text"] else "none"}) + "\n"
                            for d in docs))
    return tmp_path / "run", data


def test_probe_run_scores_every_saved_cell_and_the_baselines_then_reuses_them(tiny_run, monkeypatch):
    run_dir, data = tiny_run
    rows = runner.probe_run(run_dir, [str(data)], device="cpu", max_per_class=20, seed=0, ks=(1, 2))
    sources = {(r["kind"], r["method"], r.get("n_units")) for r in rows}
    widths = sorted({r["n_units"] for r in rows if r["kind"] == "cell"})
    assert {s[1] for s in sources} == {"tc", "mxd", "sae", "baseline:mlp-neurons", "baseline:random-projection",
                                       "baseline:dense-probe"}
    assert sorted(n for kind, method, n in sources if method == "baseline:random-projection") == widths
    per_source = {}
    for r in rows:
        per_source.setdefault((r["method"], r.get("n_units")), set()).add((r["probe"], r["probe_k"]))
    sparse_probes = {("k-sparse", 1), ("k-sparse", 2), ("best-unit", 1), ("best-unit-on-test", 1)}
    assert per_source.pop(("baseline:dense-probe", None)) == {("dense", None)}
    assert all(probes == sparse_probes for probes in per_source.values())
    neurons = next(r for r in rows if r["method"] == "baseline:mlp-neurons")
    assert neurons["n_features"] == 3 * 32  # the tiny Llama's intermediate size
    cell = next(r for r in rows if r["method"] == "tc" and r["probe"] == "k-sparse" and r["probe_k"] == 1)
    assert cell["delta_ce"] == 0.5 and cell["probe_dataset"] == str(data) and set(cell["per_class"]) == {"cat", "none"}
    assert 0 <= cell["f1"] <= 1 and cell["f1_se"] >= 0
    on_disk = [json.loads(line) for line in (run_dir / PROBING_FILE).read_text().splitlines()]
    assert len(on_disk) == len(rows)

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not load the LM again")

    monkeypatch.setattr("bench.models.load_model", no_model)
    again = runner.probe_run(run_dir, [str(data)], device="cpu", max_per_class=20, seed=0, ks=(1, 2))
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(json.dumps(r, sort_keys=True) for r in rows)


def test_pooled_codes_of_padded_batches_equal_one_text_at_a_time(tiny_model_dir):
    from bench.activations import collect_mlp_io
    from bench.models import layer_spec, load_model

    lm = load_model(str(tiny_model_dir))
    torch.manual_seed(0)
    spec_layer = create("tc", layer_spec(lm.model, LAYER), expansion=4, k=4)
    texts = [d["text"] for d in make_documents(6, seed=1)] + ["cat sat"]  # the last has < 5 tokens: dropped
    acts = collect_text_activations(lm.model, LAYER, lm.tokenizer, texts, batch_size=4)
    pooled = pooled_codes(spec_layer, acts)
    assert acts.kept == [0, 1, 2, 3, 4, 5]
    for row, text in enumerate(texts[:6]):
        ids = [lm.tokenizer.bos_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"][:127]
        x, _ = collect_mlp_io(lm.model, LAYER, torch.tensor([ids]))
        _, codes = spec_layer(x[1:])  # every position but the BOS
        expected = dense_codes(codes, spec_layer.n_units).mean(0)
        torch.testing.assert_close(pooled[row], expected, atol=1e-5, rtol=1e-4)


def test_boundary_tokens_a_text_spells_out_are_not_pooled(tiny_model_dir):
    """A text holding the EOS string (as code files hold "<|endoftext|>") tokenizes to the EOS id; a huge
    code planted at that position must not reach the text's mean, nor count among its tokens."""
    from bench.models import layer_spec, load_model

    lm = load_model(str(tiny_model_dir))
    eos = lm.tokenizer.eos_token_id
    texts = ["the cat sat on the mat <eos> a dog ran", "the old king ran on the mat"]
    acts = collect_text_activations(lm.model, LAYER, lm.tokenizer, texts, batch_size=2)
    tokens = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert eos in tokens[0]
    assert torch.bincount(acts.text_index).tolist() == [len(t) - t.count(eos) for t in tokens]
    torch.manual_seed(0)
    layer = create("tc", layer_spec(lm.model, LAYER), expansion=4, k=4)
    ids = torch.tensor([[lm.tokenizer.bos_token_id] + tokens[0]])
    x, _ = collect_mlp_io(lm.model, LAYER, ids)
    at_eos = x[tokens[0].index(eos) + 1]
    with torch.no_grad():  # unit 0 peaks at the EOS position (normed inputs share one norm)
        layer.encoder.weight[0] = at_eos * (1000 / at_eos.square().sum())
        layer.encoder.bias[0] = 0.0
    pooled = pooled_codes(layer, acts)
    content = torch.tensor([0] + [token != eos for token in tokens[0]])  # neither the BOS nor the EOS
    _, codes = layer(x[content.bool()])
    torch.testing.assert_close(pooled[0], dense_codes(codes, layer.n_units).mean(0), atol=1e-4, rtol=1e-4)
    assert pooled[0, 0] < 1000 / len(tokens[0])


def test_a_run_without_saved_cells_is_refused(tmp_path):
    (tmp_path / "cells.jsonl").write_text(json.dumps({"method": "tc", "k": 4, "status": "failed"}) + "\n")
    with pytest.raises(runner.ProbeError, match="no saved cells"):
        runner.probe_run(tmp_path, ["sentiment"], device="cpu")


def test_scores_are_numbers_the_table_can_print(tiny_run):
    from bench.probing import format_probe_table

    run_dir, data = tiny_run
    rows = runner.probe_run(run_dir, [str(data)], device="cpu", max_per_class=20, seed=0, ks=(1,))
    table = format_probe_table(rows)
    assert "baseline:dense-probe" in table and "on-test*" in table and "tc" in table
    assert all(np.isfinite(r["f1"]) for r in rows)


def test_the_probe_command_prints_a_table_and_refuses_bad_input(tiny_run, capsys, monkeypatch):
    import argparse

    from bench.probing import add_probe_arguments, run_probe_command

    parser = argparse.ArgumentParser()
    add_probe_arguments(parser)
    run_dir, data = tiny_run
    args = parser.parse_args([str(run_dir), "--datasets", str(data), "--texts-per-class", "20", "--device", "cpu"])
    assert run_probe_command(args) == 0
    assert "baseline:mlp-neurons" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--texts-per-class must be at least 2, got 1"):
        run_probe_command(parser.parse_args([str(run_dir), "--texts-per-class", "1"]))
    with pytest.raises(ValueError, match="not a run directory"):
        run_probe_command(parser.parse_args([str(run_dir.parent)]))
    monkeypatch.chdir(run_dir.parent)  # no results/ here: nothing to probe by default
    with pytest.raises(ValueError, match="no runs with saved checkpoints under results/"):
        run_probe_command(parser.parse_args([]))


def test_summary_csv_gains_the_probing_scores_and_a_retrained_cell_is_probed_again(tiny_run):
    import pandas as pd
    from transformers import AutoModelForCausalLM

    from bench.models import layer_spec

    run_dir, data = tiny_run
    rows = runner.probe_run(run_dir, [str(data)], device="cpu", max_per_class=20, seed=0, ks=(1,))
    summary = pd.read_csv(run_dir / "summary.csv").set_index("method")
    for r in rows:
        if r["kind"] == "cell" and r["probe"] == "k-sparse":
            assert summary.loc[r["method"], f"probing.{data}.f1_k1"] == pytest.approx(r["f1"], abs=1e-12)
    before = {r["method"]: r for r in rows if r["kind"] == "cell" and r["probe"] == "k-sparse"}
    model_dir = json.loads((run_dir / "cells.jsonl").read_text().splitlines()[0])["model"]
    torch.manual_seed(7)  # tc retrained: the same checkpoint path, other weights
    spec = layer_spec(AutoModelForCausalLM.from_pretrained(model_dir), LAYER)
    save_layer(create("tc", spec, expansion=4, k=4), run_dir / "checkpoints" / "tc-k4")
    again = runner.probe_run(run_dir, [str(data)], device="cpu", max_per_class=20, seed=0, ks=(1,))
    after = {r["method"]: r for r in again if r["kind"] == "cell" and r["probe"] == "k-sparse"}
    config = json.loads((run_dir / "checkpoints" / "tc-k4" / "config.json").read_text())
    assert after["tc"]["weights_sha256"] == config["weights_sha256"] != before["tc"]["weights_sha256"]
    assert after["mxd"] == before["mxd"]  # untouched cells are reused as they were
