"""Sparse probing statistics: train-only selection, pooling, unit ranking, logistic fits, bootstrap SEs,
and the dataset reader, each against an independent computation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score

from bench.probing import datasets as probe_datasets
from bench.probing.codes import pool_padded_codes
from bench.probing.metrics import bootstrap_indices, bootstrap_standard_errors, stratified_split
from bench.probing.probes import fit_logistic, fit_logistic_1d, probe_class
from bench.probing.scoring import score_features
from methods.base import SparseCodes


def leaky_features(seed: int = 0):
    """200 texts, 2 classes, 30 units. Units 0-24 carry real signals (strongest first) on both splits;
    unit 29 equals the label (x5) on the TEST split only and is weakly aligned noise on the train split."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], 100)
    train, test = stratified_split(labels, seed=seed)
    features = rng.normal(size=(200, 30))
    features[:, :25] += np.linspace(1.5, 0.8, 25) * labels[:, None]
    leak = 29
    features[train, leak] = rng.normal(size=len(train)) + 0.2 * labels[train]
    features[test, leak] = np.where(labels[test] == 1, 5.0, -5.0)
    return features, labels, train, test, leak


def test_train_only_selection_never_picks_a_unit_that_leaks_test_labels():
    features, labels, train, test, leak = leaky_features()
    found = probe_class(features[train], labels[train] == 1, features[test], ks=(1, 2, 5, 10, 20))
    for name, units in found.units.items():
        if name != "best-unit-on-test":
            assert leak not in units, name
    assert found.units["best-unit"][0] < 25
    rows = {r["probe"]: r for r in score_features(features, labels, ["a", "b"], train, test)}
    # The reference's figure does find the leak: a unit that separates the test split perfectly.
    assert rows["best-unit-on-test"]["per_class"]["b"]["units"] == [leak]
    assert rows["best-unit-on-test"]["f1"] == pytest.approx(1.0)
    assert rows["best-unit"]["f1"] < 0.95


def test_pooling_averages_content_tokens_only():
    # Two texts padded to 5 positions: text 0 has 4 content tokens, text 1 has 2; BOS and padding
    # carry huge values that must not reach the means.
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    indices = torch.tensor([[[0, 1], [2, 3], [0, 2], [1, 3], [0, 1]],
                            [[3, 2], [0, 1], [0, 3], [2, 1], [2, 1]]])
    values = torch.tensor([[[1e6, 1e6], [1., 2.], [3., 4.], [5., 6.], [7., 8.]],
                           [[1e6, 1e6], [1., 1.], [2., 4.], [1e6, 1e6], [1e6, 1e6]]])
    pooled = pool_padded_codes(SparseCodes(values, indices), attention, n_units=4)
    # Text 0, positions 1-4: unit 0 gets 3+7, unit 1 gets 5+8, unit 2 gets 1+4, unit 3 gets 2+6; / 4 tokens.
    # Text 1, positions 1-2: unit 0 gets 1+2, unit 1 gets 1, unit 3 gets 4; / 2 tokens.
    expected = torch.tensor([[10 / 4, 13 / 4, 5 / 4, 8 / 4], [3 / 2, 1 / 2, 0, 4 / 2]])
    torch.testing.assert_close(pooled, expected)


def test_k_sparse_units_are_the_top_mean_difference_units_of_the_train_split():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(120, 40)) * rng.uniform(0.5, 3, size=40)
    labels = (rng.random(120) < 0.4).astype(int)
    features[labels == 1, 7] += 2.0
    features[labels == 1, 13] -= 1.5
    train, test = stratified_split(labels, seed=3)
    found = probe_class(features[train], labels[train] == 1, features[test], ks=(1, 2, 5, 10, 20))
    gaps = []
    for unit in range(40):
        pos = [features[i, unit] for i in train if labels[i] == 1]
        neg = [features[i, unit] for i in train if labels[i] == 0]
        gaps.append(abs(sum(pos) / len(pos) - sum(neg) / len(neg)))
    by_gap = sorted(range(40), key=lambda u: -gaps[u])
    for k in (1, 2, 5, 10, 20):
        assert found.units[f"k-sparse:{k}"] == by_gap[:k]
    assert by_gap[:2] == [7, 13]


def test_bootstrap_standard_errors_match_a_direct_loop_with_sklearn_metrics():
    rng = np.random.default_rng(2)
    truth = np.stack([rng.random(150) < p for p in (0.2, 0.5, 0.7)])
    predicted = np.where(rng.random(truth.shape) < 0.75, truth, ~truth)
    se = bootstrap_standard_errors(truth, predicted, n_boot=40, seed=5)
    f1, balanced = [], []
    for idx in bootstrap_indices(150, 40, seed=5):
        f1.append([f1_score(t[idx], p[idx], zero_division=0) for t, p in zip(truth, predicted)])
        balanced.append([balanced_accuracy_score(t[idx], p[idx]) for t, p in zip(truth, predicted)])
    f1, balanced = np.array(f1), np.array(balanced)
    np.testing.assert_allclose(se["f1"], f1.std(axis=0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(se["balanced_accuracy"], balanced.std(axis=0, ddof=1), rtol=1e-10)
    assert se["f1_mean"] == pytest.approx(f1.mean(axis=1).std(ddof=1), rel=1e-10)


def test_bootstrap_standard_error_of_f1_matches_the_delta_method():
    # Predicting "positive" everywhere gives F1 = 2p / (1 + p) at prevalence p, so its standard error
    # is 2 / (1 + p)^2 * sqrt(p (1 - p) / n) to first order.
    n, p = 2000, 0.3
    truth = (np.arange(n) < p * n)[None, :]
    se = bootstrap_standard_errors(truth, np.ones_like(truth), n_boot=2000, seed=0)
    assert se["f1"][0] == pytest.approx(2 / (1 + p) ** 2 * np.sqrt(p * (1 - p) / n), rel=0.08)


@pytest.mark.parametrize("separable", [False, True])
def test_batched_one_unit_logistic_fits_match_sklearn(separable):
    rng = np.random.default_rng(4)
    labels = rng.random(90) < 0.3
    features = rng.normal(size=(90, 6)) + labels[:, None] * np.array([0.0, 0.5, 1.0, 2.0, -1.5, 0.2])
    if separable:
        features[:, 0] = np.where(labels, 1.0, -1.0) + 0.01 * rng.normal(size=90)
    slopes, intercepts = fit_logistic_1d(features, labels)
    for unit in range(6):
        reference = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10000)
        reference.fit(features[:, [unit]], labels)
        assert slopes[unit] == pytest.approx(reference.coef_[0, 0], abs=1e-5)
        assert intercepts[unit] == pytest.approx(reference.intercept_[0], abs=1e-5)


@pytest.mark.parametrize("n_features", [1, 5, 40])
def test_joint_logistic_fit_matches_sklearn(n_features):
    rng = np.random.default_rng(n_features)
    labels = rng.random(200) < 0.2
    features = rng.normal(size=(200, n_features)) + labels[:, None] * rng.uniform(-1, 2, n_features)
    coefficients, intercept = fit_logistic(features, labels)
    reference = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10000).fit(features, labels)
    np.testing.assert_allclose(coefficients, reference.coef_[0], atol=1e-5)
    assert intercept == pytest.approx(reference.intercept_[0], abs=1e-5)


def test_stratified_split_holds_out_a_fifth_of_every_class():
    labels = np.array([0] * 50 + [1] * 20 + [2] * 10)
    train, test = stratified_split(labels, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == 80
    assert [int((labels[test] == c).sum()) for c in range(3)] == [10, 4, 2]


def test_a_local_file_goes_through_the_hub_reader(tmp_path, monkeypatch):
    import datasets

    rows = [{"text": f"sentence number {i} about {'cats' if i % 2 else 'dogs'}", "label": "cat" if i % 2 else "dog"}
            for i in range(40)]
    path = tmp_path / "pets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    data = probe_datasets.load_probe_dataset(str(path), max_per_class=15, seed=0)
    assert calls and calls[0][0][0] == "json" and calls[0][1]["streaming"] is True
    assert data.classes == ["cat", "dog"] and len(data.texts) == 30
    by_text = {r["text"]: r["label"] for r in rows}
    assert all(by_text[t] == label for t, label in zip(data.texts, data.labels))
    again = probe_datasets.load_probe_dataset(str(path), max_per_class=15, seed=0)
    assert again.texts == data.texts  # seeded


def test_nested_fields_and_fixed_labels_read_like_europarl(tmp_path):
    # Europarl rows are {"translation": {"en": ..., "fr": ...}}: one table per language, a fixed label each.
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"translation": {"en": f"hello number {i}", "fr": f"bonjour numero {i}"}}) + "\n"
                            for i in range(12)))
    table = probe_datasets.HubTable(str(path), text_field="translation.fr", fixed_label="fr")
    pairs = list(probe_datasets.read_table(table, per_class_limit=5))
    assert pairs == [(f"bonjour numero {i}", "fr") for i in range(5)]
    with pytest.raises(probe_datasets.ProbeDataError, match="no field 'translation.de'"):
        list(probe_datasets.read_table(probe_datasets.HubTable(str(path), text_field="translation.de", fixed_label="de")))


def test_offline_datasets_have_the_promised_classes():
    topics = probe_datasets.load_probe_dataset("wiki-topic", 5)
    assert len(topics.classes) == 11 and probe_datasets.WIKI_CATCH_ALL not in topics.classes
    assert probe_datasets.load_probe_dataset("wiki-language", 5).classes == ["en", "es", "fr"]
    assert probe_datasets.load_probe_dataset("code-language", 5).classes == ["C", "C++", "Markdown", "Python", "YAML"]
    sentiment = probe_datasets.load_probe_dataset("sentiment", 300)
    assert sentiment.classes == ["negative", "positive"] and len(sentiment.texts) == 600


def test_bad_dataset_names_are_one_line_value_errors():
    with pytest.raises(probe_datasets.ProbeDataError, match="does not exist"):
        probe_datasets.load_probe_dataset("missing/file.jsonl", 10)
    with pytest.raises(probe_datasets.ProbeDataError, match="at least 2|>= 2"):
        probe_datasets.load_probe_dataset("sentiment", 1)


def test_probing_points_average_datasets_and_combine_their_standard_errors():
    from bench.probing.summary import probing_points

    def row(method, dataset, f1, se, k=16, probe_k=1):
        return {"kind": "cell", "model": "m", "layer": 3, "method": method, "k": k, "n_units": 100,
                "checkpoint": f"checkpoints/{method}", "delta_ce": 0.1, "delta_ce_stderr": 0.01,
                "probe_dataset": dataset, "probe": "k-sparse", "probe_k": probe_k, "f1": f1, "f1_se": se}

    rows = [row("tc", "a", 0.6, 0.03), row("tc", "b", 0.8, 0.04), row("tc", "a", 0.9, 0.01, probe_k=5),
            row("mxd", "a", 0.5, 0.02)]  # mxd lacks dataset b: left out rather than averaged over fewer
    points = probing_points(rows)
    assert [p["method"] for p in points] == ["tc"]
    assert points[0]["f1"] == pytest.approx(0.7)
    assert points[0]["f1_se"] == pytest.approx(0.025)  # sqrt(0.03^2 + 0.04^2) / 2
    assert probing_points(rows, datasets=["a"], probe_k=1)[1]["f1"] == pytest.approx(0.5)
