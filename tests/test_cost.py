"""bench cost: a sweep's hours from rates measured at its own shapes; bad input to cost and perf."""
from __future__ import annotations

import json
import math

import pytest
import torch

from bench import model_shapes
from bench.cli import main
from bench.config import RunConfig, preset_config
from bench.perf import cost

TINY = dict(model_type="llama", num_hidden_layers=4, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, vocab_size=96, max_position_embeddings=256)
SWEEP = """
train_tokens = 100000
eval_tokens = 2048
ce_tokens = 512
context_length = 64
batch_size = 128
lm_batch_size = 4
ce_batch_size = 2
ks = [4, 8]
expansion = 4

[[runs]]
model = "tiny-llama"
layer = 1
methods = ["tc", "mxd"]
run_name = "tiny-L1"

[[runs]]
model = "tiny-llama"
layer = 2
methods = ["stc"]
train_tokens = 50000
"""


@pytest.fixture
def tiny_architecture(monkeypatch):
    monkeypatch.setitem(model_shapes.ARCHITECTURES, "tiny-llama", TINY)


def test_estimate_adds_up_the_measured_rates(tiny_architecture, tmp_path, capsys) -> None:
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(SWEEP)
    out = tmp_path / "cost.json"
    assert main(["cost", str(sweep), "--device", "cpu", "--steps", "1", "--warmup", "0", "--lm-contexts", "4",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    first, second = result["runs"]
    assert (first["run"], first["layer"], second["layer"]) == ("tiny-L1", 1, 2)
    assert [(c["method"], c["k"]) for c in first["cells"]] == [("tc", 4), ("tc", 8), ("mxd", 4), ("mxd", 8)]
    assert [(c["method"], c["k"]) for c in second["cells"]] == [("stc", 4), ("stc", 8)]
    assert (first["train_tokens"], second["train_tokens"]) == (100_000, 50_000)  # a run's own value wins
    # Parameters at d = 32, budget a TC of width 4d = 128: 2*32*128 + 128 + 32 = 8,352; the MxD's dense
    # branch at the LM's d_mlp = 96 (96*32 + 96 + 96*32) plus 32 experts (32*32 + 32 + 32*32) and b_out
    # (32) = 8,352; the STC at width 112 plus its 32 x 32 skip: 2*32*112 + 112 + 32 + 1,024 = 8,336.
    assert [c["n_params"] for c in first["cells"]] == [8_352, 8_352, 8_352, 8_352]
    assert [c["n_params"] for c in second["cells"]] == [8_336, 8_336]
    for run, tokens, n_cells in ((first, 100_000, 4), (second, 50_000, 2)):
        lm = run["lm"]
        assert lm["model"] == "tiny-llama (random weights)" and lm["layer"] == run["layer"]
        assert lm["context_length"] == 64 and lm["contexts"] == 4 and lm["collect_mlp_io_tokens_per_s"] > 0
        assert all(c["status"] == "ok" and c["tokens_per_s"] > 0 for c in run["cells"])
        # The docstring's sum over the rates the JSON reports: one LM pass over the train and 2,048 eval
        # tokens; each cell's train tokens at its step rate; CE of the cells and the clean and zero-ablated
        # baselines over 512 tokens, plus the prefix capture timed on 4 x 64 = 256 tokens, scaled to 512.
        assert run["collect_s"] == pytest.approx((tokens + 2_048) / lm["collect_mlp_io_tokens_per_s"])
        assert run["train_s"] == pytest.approx(sum(tokens / c["tokens_per_s"] for c in run["cells"]))
        assert run["ce_s"] == pytest.approx((n_cells + 2) * 512 / lm["ce_with_replay_tokens_per_s"]
                                            + lm["ce_prefix_capture_s"] * 2)
        assert run["total_s"] == pytest.approx(run["collect_s"] + run["train_s"] + run["ce_s"])
        assert run["complete"] and run["precision"] == "fp32"
    assert result["total_hours"] == pytest.approx((first["total_s"] + second["total_s"]) / 3_600)
    assert result["complete"] and result["machine"]["device"] == "cpu" and result["versions"]["torch"]
    assert "lm-eval tasks" in result["left_out"]
    table = capsys.readouterr().out
    assert "tiny-L1" in table and "total:" in table and "not included: lm-eval tasks" in table


def test_without_a_file_it_estimates_the_default_run(monkeypatch, tmp_path) -> None:
    seen = []

    def fake_estimate(cfg, device, steps, warmup, lm_contexts):
        seen.append(cfg)
        return {"run": None, "model": cfg.model, "layer": 9, "train_tokens": cfg.train_tokens, "cells": [],
                "lm": {"collect_mlp_io_tokens_per_s": 1.0, "ce_with_replay_tokens_per_s": 1.0},
                "collect_s": 60.0, "train_s": 120.0, "ce_s": 270.0, "total_s": 450.0, "complete": True}

    monkeypatch.setattr(cost, "estimate_run", fake_estimate)
    monkeypatch.chdir(tmp_path)
    assert main(["cost", "--device", "cpu"]) == 0
    (cfg,) = seen
    assert cfg == preset_config("smoke")  # exactly what plain `bench run` runs
    assert json.loads((tmp_path / "results/perf/cost-default-cpu.json").read_text())["total_hours"] == 450 / 3600


def test_durations_read_in_the_unit_that_fits() -> None:
    assert [cost._duration(s) for s in (45, 450, 4_061_000)] == ["45 s", "7.5 min", "1,128.1 h"]


def test_more_train_tokens_cost_proportionally_more_training() -> None:
    cfg_small = RunConfig(train_tokens=1000, eval_tokens=0, ce_tokens=0)
    cfg_large = RunConfig(train_tokens=3000, eval_tokens=0, ce_tokens=0)
    lm = {"contexts": 1, "context_length": 10, "collect_mlp_io_tokens_per_s": 100.0,
          "ce_with_replay_tokens_per_s": 50.0, "ce_prefix_capture_s": 0.0}
    small, large = (cost.run_seconds(c, 2, lm, [10.0, 20.0]) for c in (cfg_small, cfg_large))
    # 1,000 tokens at 10 and at 20 tokens/s: 100 s + 50 s; three times the tokens, three times the time
    assert small["train_s"] == pytest.approx(150.0) and large["train_s"] == pytest.approx(450.0)
    assert small["collect_s"] == pytest.approx(10.0) and small["ce_s"] == 0 and math.isclose(small["total_s"], 160.0)


def test_a_run_costs_its_measured_rates_multiplied_out(tiny_architecture, monkeypatch) -> None:
    """estimate_run on stand-in rates: every second below is worked out by hand from the module
    docstring's formula, so a wrong token count, rate or cell count changes a figure."""
    lm = {"contexts": 4, "context_length": 64, "collect_mlp_io_tokens_per_s": 1000.0,
          "ce_with_replay_tokens_per_s": 256.0, "ce_prefix_capture_s": 0.5}
    rates = {("tc", 4): 500.0, ("tc", 8): 250.0}
    measured = []
    monkeypatch.setattr(cost, "measure_lm", lambda loaded, device, contexts, length, batch, repeats, layer: dict(lm))
    monkeypatch.setattr(cost, "measure_ceilings", lambda *args: {"fp32": {"flops_per_s": 1.0}})

    def fake_cell(method, shape, k, tokens, warmup, steps, device, autocast, compile, ceilings):
        measured.append((method, k, tokens, shape.expansion))
        return {"method": method, "k": k, "status": "ok", "tokens_per_s": rates[(method, k)], "step_s": 1.0}

    monkeypatch.setattr(cost, "measure_cell", fake_cell)
    cfg = RunConfig(model="tiny-llama", layer=3, methods=["tc"], ks=[4, 8], expansion=4, batch_size=128,
                    train_tokens=100_000, eval_tokens=2_000, ce_tokens=512, context_length=64)
    run = cost.estimate_run(cfg, torch.device("cpu"), steps=1, warmup=0, lm_contexts=4)
    assert measured == [("tc", 4, 128, 4), ("tc", 8, 128, 4)]  # the run's own batch and budget
    assert (run["layer"], run["d_model"]) == (3, 32)
    # collection: 102,000 tokens at 1,000/s; training: 100,000 tokens at 500/s and at 250/s;
    # CE: (2 cells + clean + zero-ablated) x 512 tokens at 256/s, plus the 0.5 s prefix capture of
    # 256 tokens scaled to 512
    assert run["collect_s"] == pytest.approx(102.0)
    assert run["train_s"] == pytest.approx(200.0 + 400.0)
    assert run["ce_s"] == pytest.approx(8.0 + 1.0)
    assert run["total_s"] == pytest.approx(711.0) and run["complete"]


@pytest.mark.parametrize("argv, text", [
    (["cost", "{dir}/missing.toml"], None),
    (["cost", "{sweep}"], "model = [1, 2"),
    (["cost", "{sweep}"], 'model = "tiny-llama"\nmethods = ["nope"]'),
    (["cost", "{sweep}"], 'model = "tiny-llama"\nunknown_key = 3'),
    (["cost", "{sweep}", "--preset", "huge"], 'model = "tiny-llama"'),
    (["cost", "{sweep}", "--steps", "0"], 'model = "tiny-llama"'),
    (["cost", "{sweep}", "--device", "tpu"], 'model = "tiny-llama"'),
    (["cost", "{sweep}", "--device", "cuda:99"], 'model = "tiny-llama"'),
    (["cost", "{sweep}"], 'model = "{dir}/no-such-model"'),
    (["perf", "--device", "tpu"], None),
    (["perf", "--device", "cuda:99"], None),
    (["perf", "--quick", "--random-lm", "--model", "{dir}/no-such-model"], None),
    (["perf", "--quick", "--steps", "0"], None),
    (["perf", "--quick", "--warmup", "-1"], None),
    (["perf", "--quick", "--tokens-per-step", "0"], None),
    (["perf", "--quick", "--k", "0"], None),
    (["perf", "--quick", "--k", "x"], None),
])
def test_bad_input_fails_in_one_line_and_writes_nothing(argv, text, tiny_architecture, tmp_path, capsys) -> None:
    sweep = tmp_path / "sweep.toml"
    if text is not None:
        sweep.write_text(text.replace("{dir}", str(tmp_path)))
    out = tmp_path / "out.json"
    argv = [a.replace("{dir}", str(tmp_path)).replace("{sweep}", str(sweep)) for a in argv] + ["--out", str(out)]
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("bench") and "Traceback" not in err[0]
    assert not out.exists()
