"""Scores of binary predictions: F1 of the positive class, balanced accuracy, their bootstrap standard
errors over test examples, and the stratified train/test split they are measured on."""
from __future__ import annotations

import numpy as np

N_BOOTSTRAP = 1000
TEST_FRACTION = 0.2


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, ``test_fraction`` of every class in the test split (at least one each side)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(max(1, round(test_fraction * len(members))), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def f1_scores(truth: np.ndarray, predicted: np.ndarray, axis: int = -1) -> np.ndarray:
    """F1 of the positive class along ``axis`` (0 where there are neither positives nor predicted positives)."""
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    tp = (truth & predicted).sum(axis)
    wrong = (truth ^ predicted).sum(axis)  # false positives + false negatives
    return np.divide(2 * tp, 2 * tp + wrong, out=np.zeros(np.shape(tp), dtype=float), where=(2 * tp + wrong) > 0)


def balanced_accuracies(truth: np.ndarray, predicted: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of the true-positive and true-negative rates along ``axis`` (a missing class counts as 0.5 there)."""
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    positives, negatives = truth.sum(axis), (~truth).sum(axis)
    tpr = np.divide((truth & predicted).sum(axis), positives, out=np.full(np.shape(positives), 0.5), where=positives > 0)
    tnr = np.divide((~truth & ~predicted).sum(axis), negatives, out=np.full(np.shape(negatives), 0.5), where=negatives > 0)
    return (tpr + tnr) / 2


def bootstrap_indices(n: int, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """[n_boot, n] resamples (with replacement) of n test examples."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_standard_errors(truth: np.ndarray, predicted: np.ndarray, n_boot: int = N_BOOTSTRAP,
                              seed: int = 0) -> dict[str, np.ndarray | float]:
    """Bootstrap SEs of per-class and class-mean F1 and balanced accuracy.

    ``truth`` and ``predicted`` are [classes, n_test]: one-vs-rest labels and predictions of every
    class on the SAME test examples, so one resample of examples serves all classes and the SE of the
    mean keeps the classes' correlation. SE = the standard deviation (ddof 1) over resamples.
    """
    idx = bootstrap_indices(truth.shape[1], n_boot, seed)
    f1 = np.stack([f1_scores(t[idx], p[idx]) for t, p in zip(truth, predicted)])  # [classes, n_boot]
    balanced = np.stack([balanced_accuracies(t[idx], p[idx]) for t, p in zip(truth, predicted)])
    return {"f1": f1.std(axis=1, ddof=1), "f1_mean": float(f1.mean(axis=0).std(ddof=1)),
            "balanced_accuracy": balanced.std(axis=1, ddof=1),
            "balanced_accuracy_mean": float(balanced.mean(axis=0).std(ddof=1))}
