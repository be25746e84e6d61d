"""Pooled features of one dataset -> one score row per probe: per-class and class-mean F1 and balanced
accuracy on the test split, each with a bootstrap standard error over test examples.

Probe names: ``k-sparse`` (with ``probe_k``), ``best-unit`` (the reference's single best unit of the
top 100, chosen on the train split), ``best-unit-on-test`` (the same, chosen on the test split: the
reference's own, optimistic figure) and ``dense`` (all features: the ceiling).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bench.probing.metrics import balanced_accuracies, bootstrap_standard_errors, f1_scores
from bench.probing.probes import PROBE_KS, TOP_UNITS, dense_probe, probe_class

PROBE_LABELS = {
    "k-sparse": "k-sparse probe (units ranked and fitted on the train split)",
    "best-unit": "best single unit of the top 100, chosen on the train split",
    "best-unit-on-test": "best-on-test (reference, optimistic)",
    "dense": "dense logistic probe on every feature (ceiling)",
}


def pick_on_test(predictions: np.ndarray, truth: np.ndarray) -> int:
    """The column of [n_test, m] predictions with the best test F1: what the reference reports."""
    return int(np.argmax(f1_scores(truth[:, None], predictions, axis=0)))


def score_features(features: np.ndarray, labels: np.ndarray, classes: list[str], train: np.ndarray,
                   test: np.ndarray, ks: tuple[int, ...] = PROBE_KS, dense: bool = False,
                   seed: int = 0) -> list[dict[str, Any]]:
    """Score rows for every probe on ``features`` [texts, units]; ``labels`` index ``classes``.

    With ``dense`` only the dense probe is scored (the pooled-MLP-input ceiling); otherwise the
    k-sparse probes for every k and both single-unit figures.
    """
    per_probe: dict[str, list[np.ndarray]] = {}
    units: dict[str, list[list[int]]] = {}
    truth = np.stack([labels[test] == c for c in range(len(classes))])  # [classes, n_test]
    for c in range(len(classes)):
        positive = labels[train] == c
        if dense:
            per_probe.setdefault("dense", []).append(dense_probe(features[train], positive, features[test]))
            continue
        found = probe_class(features[train], positive, features[test], ks)
        for name, predicted in found.predictions.items():
            chosen = found.units[name]
            if name == "best-unit-on-test":
                column = pick_on_test(predicted, truth[c])
                predicted, chosen = predicted[:, column], [chosen[column]]
            per_probe.setdefault(name, []).append(predicted)
            units.setdefault(name, []).append(chosen)
    return [_row(name, np.stack(predicted), truth, classes, units.get(name), seed)
            for name, predicted in per_probe.items()]


def _row(name: str, predicted: np.ndarray, truth: np.ndarray, classes: list[str],
         units: list[list[int]] | None, seed: int) -> dict[str, Any]:
    probe, _, k = name.partition(":")
    f1 = f1_scores(truth, predicted)
    balanced = balanced_accuracies(truth, predicted)
    se = bootstrap_standard_errors(truth, predicted, seed=seed)
    per_class = {}
    for c, label in enumerate(classes):
        entry = {"f1": float(f1[c]), "f1_se": float(se["f1"][c]), "balanced_accuracy": float(balanced[c]),
                 "balanced_accuracy_se": float(se["balanced_accuracy"][c]), "n_test_positive": int(truth[c].sum())}
        if units is not None:
            entry["units"] = units[c]
        per_class[label] = entry
    return {
        "probe": probe,
        "probe_k": int(k) if k else (1 if probe.startswith("best-unit") else None),
        "probe_label": PROBE_LABELS[probe],
        "f1": float(f1.mean()),
        "f1_se": se["f1_mean"],
        "balanced_accuracy": float(balanced.mean()),
        "balanced_accuracy_se": se["balanced_accuracy_mean"],
        "n_test": int(truth.shape[1]),
        "top_units": TOP_UNITS if probe.startswith("best-unit") else None,
        "per_class": per_class,
    }
