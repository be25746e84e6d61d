"""`bench tune`: the learning rate with the lowest held-out loss wins; diverged ones never do."""
from __future__ import annotations

import json
import math

import pytest

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
                 "--batch-size", "64", "--expansion", "8", "--eval-tokens", "256", "--warmup-steps", "0",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    for entry in record["methods"]:
        losses = entry["heldout_nmse"]
        assert len(losses) == 3 and not math.isfinite(losses[2]) or losses[2] > min(losses[:2])
        finite = [(loss, lr) for lr, loss in zip(entry["grid"], losses) if math.isfinite(loss)]
        assert entry["chosen_lr"] == min(finite)[1] != 1e4
    chosen = ",".join(f"{e['method']}={e['chosen_lr']:g}" for e in record["methods"])
    assert record["method_lr"] == chosen
    assert f"bench run --method-lr {chosen}" in capsys.readouterr().out
