"""Probing and steering scores joined to cell rows at read time: the results frame and summary.csv hold
exactly the numbers of probing.jsonl and steering/*.json (read back here on their own), only for the
weights they were measured on, and only with the run's latest probing settings."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.results import RunStore
from bench.results_frame import read_cells
from methods import create, save_layer
from methods.base import LayerSpec

SPEC = LayerSpec(8, 32)
DATASETS = ("alpha", "beta")
PROBES = (("k-sparse", 1), ("k-sparse", 5), ("best-unit", 1), ("best-unit-on-test", 1))
LABELS = {"k-sparse": "k-sparse probe", "best-unit": "best single unit, train split",
          "best-unit-on-test": "best-on-test (reference, optimistic)", "dense": "dense probe (ceiling)"}


def save_cell(run: Path, method: str, seed: int = 0) -> tuple[str, str, int]:
    """A saved layer: its checkpoint path, the weights' SHA-256 its config records, its width."""
    torch.manual_seed(seed)
    layer = create(method, SPEC, k=4, expansion=8)
    save_layer(layer, run / "checkpoints" / f"{method}-k4")
    digest = json.loads((run / "checkpoints" / f"{method}-k4" / "config.json").read_text())["weights_sha256"]
    return f"checkpoints/{method}-k4", digest, layer.n_units


def probing_row(source: dict, dataset: str, probe: str, probe_k: int | None, f1: float, se: float,
                texts: int = 100) -> dict:
    return {**source, "probe_dataset": dataset, "probe": probe, "probe_k": probe_k, "f1": f1, "f1_se": se,
            "balanced_accuracy": 0.5, "balanced_accuracy_se": 0.01, "probe_label": LABELS[probe],
            "texts_per_class": texts, "probe_seed": 0, "n_texts": 40, "n_train": 32, "n_test": 8, "n_classes": 2}


def scored_run(root: Path) -> Path:
    """tc and mxd probed on two datasets (after an older probing at other settings), tc steered on two
    units; sae saved but never probed; one failed cell."""
    run = root / "run"
    cells, sources = [], []
    for i, method in enumerate(("tc", "mxd", "sae")):
        checkpoint, digest, width = save_cell(run, method)
        cell = {"model": "m", "layer": 1, "method": method, "k": 4, "expansion": 8, "train_tokens": 1024, "seed": 0,
                "dataset": "d", "status": "ok", "checkpoint": checkpoint, "n_units": width,
                "delta_ce": 0.05 * (i + 1), "delta_ce_stderr": 0.01, "nmse": 0.2}
        cells.append(cell)
        if method != "sae":
            sources.append({"kind": "cell", **{k: cell[k] for k in ("model", "layer", "method", "k", "expansion",
                                                                     "train_tokens", "seed", "dataset")},
                            "source": None, "checkpoint": checkpoint, "n_units": width, "weights_sha256": digest,
                            "delta_ce": cell["delta_ce"]})
    cells.append({**cells[0], "method": "stc", "status": "failed", "checkpoint": None})
    (run / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    baselines = [{"kind": "baseline", "model": "m", "layer": 1, "method": name, "k": None, "checkpoint": None,
                  "n_units": width} for name, width in (("baseline:mlp-neurons", None),
                                                        ("baseline:random-projection", sources[0]["n_units"]))]
    dense = {"kind": "baseline", "model": "m", "layer": 1, "method": "baseline:dense-probe", "k": None,
             "checkpoint": None, "n_units": None}
    rows = []
    for s, source in enumerate(sources + baselines):
        for d, dataset in enumerate(DATASETS):
            for p, (probe, k) in enumerate(PROBES):
                rows.append(probing_row(source, dataset, probe, k, 0.5 + 0.1 * s + 0.03 * d + 0.01 * p,
                                        0.02 + 0.01 * d + 0.001 * p))
    rows += [probing_row(dense, dataset, "dense", None, 0.9 + 0.01 * d, 0.015) for d, dataset in enumerate(DATASETS)]
    # A probe at other settings between two at the latest (a dataset re-probed later): never read.
    rows.insert(3, probing_row(sources[0], "alpha", "k-sparse", 1, 0.111, 0.011, texts=50))
    (run / "probing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    units = {str(u): {"perplexity": ppl, "coherence": proxy, "coherence_source": "proxy", "coherence_proxy": proxy,
                      "baseline": {"perplexity": 12.0}} for u, ppl, proxy in ((3, 20.0, 0.2), (7, 30.0, 0.5))}
    steering = {"cell": "tc-4", "model": "m", "layer": 1, "checkpoint": sources[0]["checkpoint"],
                "weights_sha256": sources[0]["weights_sha256"], "units": units}
    (run / "steering").mkdir()
    (run / "steering" / "tc-4.json").write_text(json.dumps(steering))
    return run


def file_scores(run: Path) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(method, dataset, k) -> (F1, SE) of each cell's k-sparse probe at the run's latest settings."""
    rows = [json.loads(line) for line in (run / "probing.jsonl").read_text().splitlines()]
    return {(r["method"], r["probe_dataset"], r["probe_k"]): (r["f1"], r["f1_se"]) for r in rows
            if r["kind"] == "cell" and r["probe"] == "k-sparse" and r["texts_per_class"] == 100}


def absent(frame: pd.DataFrame, method: str, column: str) -> bool:
    """The cell has no value in ``column`` (the column may not exist when no cell has one)."""
    return column not in frame.columns or pd.isna(frame.loc[method, column])


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return scored_run(tmp_path)


def test_the_frame_holds_each_cells_probing_and_steering_scores_as_the_files_do(run: Path) -> None:
    frame = read_cells(run).set_index("method")
    expected = file_scores(run)
    for method in ("tc", "mxd"):
        for k in (1, 5):
            for dataset in DATASETS:
                f1, se = expected[(method, dataset, k)]
                assert frame.loc[method, f"probing.{dataset}.f1_k{k}"] == f1
                assert frame.loc[method, f"probing.{dataset}.f1_k{k}_stderr"] == se
            pairs = [expected[(method, d, k)] for d in DATASETS]
            assert frame.loc[method, f"probing.mean.f1_k{k}"] == pytest.approx((pairs[0][0] + pairs[1][0]) / 2)
            assert frame.loc[method, f"probing.mean.f1_k{k}_stderr"] == pytest.approx(
                math.hypot(pairs[0][1], pairs[1][1]) / 2)
        assert frame.loc[method, "probing.texts_per_class"] == 100
    assert absent(frame, "sae", "probing.mean.f1_k1") and absent(frame, "stc", "probing.mean.f1_k1")
    units = json.loads((run / "steering" / "tc-4.json").read_text())["units"].values()
    perplexities, proxies = [u["perplexity"] for u in units], [u["coherence_proxy"] for u in units]
    assert frame.loc["tc", "steering.units"] == 2
    assert frame.loc["tc", "steering.perplexity"] == pytest.approx(sum(perplexities) / 2)
    assert frame.loc["tc", "steering.perplexity_stderr"] == pytest.approx(abs(perplexities[0] - perplexities[1]) / 2)
    assert frame.loc["tc", "steering.coherence_proxy"] == pytest.approx(sum(proxies) / 2)
    assert frame.loc["tc", "steering.baseline_perplexity"] == 12.0
    assert absent(frame, "mxd", "steering.perplexity")
    assert "steering.coherence_judge" not in frame.columns  # a proxy is never shown as a judge's score


def test_summary_csv_carries_the_same_scores(run: Path) -> None:
    store = RunStore(run)
    store.write_summary(store.rows())
    summary = pd.read_csv(run / "summary.csv").set_index("method")
    expected = file_scores(run)
    assert summary.loc["tc", "probing.alpha.f1_k1"] == expected[("tc", "alpha", 1)][0]
    assert summary.loc["mxd", "probing.beta.f1_k5_stderr"] == expected[("mxd", "beta", 5)][1]
    assert summary.loc["tc", "steering.coherence_proxy"] == pytest.approx(0.35)
    assert "ce_spliced" not in summary.columns or summary.columns.get_loc("probing.alpha.f1_k1") > \
        summary.columns.get_loc("ce_spliced")  # after the cell's own metrics


def test_scores_of_a_retrained_cell_are_not_joined_to_its_new_row(run: Path) -> None:
    save_cell(run, "tc", seed=1)  # same checkpoint path, new weights: the old scores are not its scores
    frame = read_cells(run).set_index("method")
    assert absent(frame, "tc", "probing.alpha.f1_k1") and absent(frame, "tc", "steering.perplexity")
    assert frame.loc["mxd", "probing.alpha.f1_k1"] == file_scores(run)[("mxd", "alpha", 1)][0]


def test_a_run_never_probed_or_steered_reads_as_before(run: Path) -> None:
    (run / "probing.jsonl").unlink()
    (run / "steering" / "tc-4.json").unlink()
    columns = read_cells(run).columns
    assert not [c for c in columns if c.startswith(("probing.", "steering."))]


def test_a_judge_score_is_joined_only_when_one_judge_rated_every_unit(run: Path) -> None:
    path = run / "steering" / "tc-4.json"
    stored = json.loads(path.read_text())
    for entry, score in zip(stored["units"].values(), (0.8, 0.6)):
        entry.update(coherence=score, coherence_source="judge:qwen")
    path.write_text(json.dumps(stored))
    frame = read_cells(run).set_index("method")
    assert frame.loc["tc", "steering.coherence_judge"] == pytest.approx(0.7)
    assert frame.loc["tc", "steering.judge"] == "qwen"
    assert frame.loc["tc", "steering.coherence_proxy"] == pytest.approx(0.35)  # the proxy stays the proxy
    stored["units"]["7"]["coherence_source"] = "proxy"
    path.write_text(json.dumps(stored))
    assert absent(read_cells(run).set_index("method"), "tc", "steering.coherence_judge")
