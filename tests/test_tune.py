"""`bench tune`: the learning rate with the lowest held-out loss wins; diverged ones never do."""
from __future__ import annotations

import json
import math

import pytest
import torch

from bench.cli import main
from bench.tune import choose_lr


def test_choose_lr_takes_the_lowest_finite_loss():
    assert choose_lr([1e-4, 1e-3, 1e-2], [0.5, 0.2, 0.3]) == 1e-3
    assert choose_lr([1e-4, 1e-3, 1e-2], [0.5, 0.4, math.inf]) == 1e-3
    assert choose_lr([1e-4, 1e-3], [0.3, 0.3]) == 1e-4  # a tie keeps the smaller, safer rate
    with pytest.raises(ValueError, match="every learning rate of the grid"):
        choose_lr([1.0, 10.0], [math.inf, math.inf])


def test_tune_end_to_end_picks_the_argmin_of_its_own_heldout_scores(tmp_path, tiny_model_dir, corpus_file, capsys):
    out = tmp_path / "tune.json"
    code = main(["tune", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--methods", "tc,mxd",
                 "--grid", "1e-7,3e-3,1e4", "--tune-k", "2", "--tune-tokens", "2048", "--context-length", "16",
                 "--batch-size", "64", "--expansion", "8", "--eval-tokens", "256", "--ce-tokens", "256", "--warmup-steps", "0",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["layer"] == 2  # the layer tuned, not the unset --layer: the middle of the tiny Llama's 4
    for entry in record["methods"]:
        losses = entry["heldout_nmse"]
        assert len(losses) == 3 and not math.isfinite(losses[2]) or losses[2] > min(losses[:2])
        finite = [(loss, lr) for lr, loss in zip(entry["grid"], losses) if math.isfinite(loss)]
        assert entry["chosen_lr"] == min(finite)[1] != 1e4
    chosen = ",".join(f"{e['method']}={e['chosen_lr']:g}" for e in record["methods"])
    assert record["method_lr"] == chosen
    assert f"bench run --method-lr {chosen}" in capsys.readouterr().out


def test_tuning_scores_on_heldout_tokens_that_no_reported_metric_uses(corpus_file):
    """The reported NMSE/CE take the first eval-split contexts; tuning takes the next ones, so choosing an
    LR never looks at the tokens the run then reports on."""
    from types import SimpleNamespace

    from bench import eval_set
    from bench.config import RunConfig
    from tests.conftest import tiny_tokenizer

    T = 16
    cfg = RunConfig(dataset=str(corpus_file), context_length=T, eval_tokens=6 * T, ce_tokens=10 * T)
    ctx = SimpleNamespace(cfg=cfg, tokenizer=tiny_tokenizer())
    reported, _ = eval_set.documented_eval_contexts(ctx)
    validation = eval_set.validation_contexts(ctx)
    stream = eval_set.eval_contexts(ctx, 16 * T)  # the eval split's first 16 contexts, read independently
    assert reported.shape == (10, T) and validation.shape == (6, T)
    assert torch.equal(reported, stream[:10]) and torch.equal(validation, stream[10:])
    assert not {tuple(r) for r in reported.tolist()} & {tuple(r) for r in validation.tolist()}
