"""One-vs-rest probes on pooled features: unit ranking, k-sparse logistic probes and single-unit probes.

Everything that chooses (the unit ranking, the probe weights, the best single unit) sees the TRAIN
split only; the test split is only scored. The one exception is ``best_on_test``, the reference's
figure, kept so the two can be compared: it picks, among the same 100 units, the one whose probe
scores best on the test split itself, which overstates what a unit can do on new data.

Features are standardised with the train split's mean and standard deviation before any fit, so
the L2 penalty (sklearn's default C = 1) treats units on different scales alike. The fits minimise
sklearn's balanced logistic-regression objective with small numpy Newton solvers (tested against
sklearn): thousands of fits per run, each on at most a few hundred features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from bench.probing.metrics import f1_scores

PROBE_KS = (1, 2, 5, 10, 20)
TOP_UNITS = 100  # candidates for the best single unit, as in the reference
C = 1.0


def mean_difference_ranking(features: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """All unit indices, largest |mean over positives - mean over negatives| first (ties: lower index)."""
    positive = positive.astype(bool)
    gap = np.abs(features[positive].mean(axis=0) - features[~positive].mean(axis=0))
    return np.argsort(-gap, kind="stable")


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both splits scaled by the TRAIN split's per-unit mean and std (a constant unit keeps std 1)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def balanced_weights(positive: np.ndarray) -> np.ndarray:
    """sklearn's ``class_weight="balanced"``: n / (2 n_class) for each example's class."""
    n, n_pos = len(positive), int(positive.sum())
    return np.where(positive, n / (2 * max(n_pos, 1)), n / (2 * max(n - n_pos, 1)))


def fit_logistic_1d(features: np.ndarray, positive: np.ndarray, c: float = C,
                    max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """One balanced L2 logistic regression per column, all columns at once: (slopes, intercepts).

    Minimises 0.5 a^2 + c sum_i w_i log(1 + exp(-s_i (a x_i + b))), s_i = +-1, w balanced, b free:
    sklearn's objective, solved by damped Newton steps on the 2x2 problem of every column. (numpy,
    not torch: these arrays are small, and torch's threaded kernels only add latency here.)
    """
    x = np.asarray(features, dtype=np.float64)
    y = positive.astype(np.float64)[:, None]
    w = balanced_weights(positive.astype(bool))[:, None] * c
    a = np.zeros(x.shape[1])
    b = np.zeros_like(a)

    def objective(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        z = x * a + b
        return 0.5 * a**2 + (w * (np.logaddexp(0.0, z) - y * z)).sum(0)

    current = objective(a, b)
    for _ in range(max_iter):
        p = expit(x * a + b)
        r, s = w * (p - y), w * p * (1 - p)
        g_a, g_b = a + (r * x).sum(0), r.sum(0)
        h_aa, h_ab, h_bb = 1 + (s * x * x).sum(0), (s * x).sum(0), np.maximum(s.sum(0), 1e-12)
        det = h_aa * h_bb - h_ab**2
        step_a, step_b = (h_bb * g_a - h_ab * g_b) / det, (h_aa * g_b - h_ab * g_a) / det
        scale = np.ones_like(a)
        for _ in range(30):  # halve each column's step until its objective does not rise
            trial = objective(a - scale * step_a, b - scale * step_b)
            worse = trial > current + 1e-12
            if not worse.any():
                break
            scale = np.where(worse, scale / 2, scale)
        a, b, current = a - scale * step_a, b - scale * step_b, trial
        if max(np.abs(scale * step_a).max(), np.abs(scale * step_b).max()) < 1e-10:
            break
    return a, b


def fit_logistic(features: np.ndarray, positive: np.ndarray, c: float = C,
                 max_iter: int = 100) -> tuple[np.ndarray, float]:
    """A balanced L2 logistic regression on a few (standardised) units: (coefficients, intercept).

    The same objective as ``fit_logistic_1d`` (sklearn's, intercept unpenalised) over all columns
    jointly, by damped Newton steps; tests compare it with sklearn's lbfgs fit.
    """
    x = np.hstack([np.asarray(features, dtype=np.float64), np.ones((len(features), 1))])
    y = positive.astype(np.float64)
    w = balanced_weights(positive.astype(bool)) * c
    penalty = np.r_[np.ones(x.shape[1] - 1), 0.0]
    beta = np.zeros(x.shape[1])

    def objective(beta: np.ndarray) -> float:
        z = x @ beta
        return 0.5 * float(penalty @ beta**2) + float(w @ (np.logaddexp(0.0, z) - y * z))

    current = objective(beta)
    for _ in range(max_iter):
        p = expit(x @ beta)
        gradient = penalty * beta + x.T @ (w * (p - y))
        hessian = np.diag(penalty) + (x * (w * p * (1 - p))[:, None]).T @ x
        step = np.linalg.solve(hessian + 1e-12 * np.eye(len(beta)), gradient)
        scale = 1.0
        while scale > 1e-9 and objective(beta - scale * step) > current + 1e-12:
            scale /= 2
        beta = beta - scale * step
        current = objective(beta)
        if np.abs(scale * step).max() < 1e-10:
            break
    return beta[:-1], float(beta[-1])


def predict(features: np.ndarray, coefficients: np.ndarray, intercept: float) -> np.ndarray:
    return features @ coefficients + intercept > 0


@dataclass
class ClassProbes:
    """Test predictions of every probe for one class, and the units each used."""

    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # probe name -> [n_test] bool
    units: dict[str, list[int]] = field(default_factory=dict)


def probe_class(train: np.ndarray, train_positive: np.ndarray, test: np.ndarray,
                ks: tuple[int, ...] = PROBE_KS, top: int = TOP_UNITS) -> ClassProbes:
    """k-sparse probes for each k, the train-chosen best unit and the test-chosen one (reference)."""
    out = ClassProbes()
    ranking = mean_difference_ranking(train, train_positive)
    # Only the top-ranked units are ever fitted: standardise just those columns.
    shortlist = ranking[:min(max(top, *ks), train.shape[1])]
    train_z, test_z = standardise(train[:, shortlist], test[:, shortlist])
    for k in ks:
        columns = np.arange(min(k, len(shortlist)))
        coefficients, intercept = fit_logistic(train_z[:, columns], train_positive)
        out.predictions[f"k-sparse:{k}"] = predict(test_z[:, columns], coefficients, intercept)
        out.units[f"k-sparse:{k}"] = shortlist[columns].tolist()
    candidates = np.arange(min(top, len(shortlist)))
    slope, intercept = fit_logistic_1d(train_z[:, candidates], train_positive)
    train_f1 = f1_scores(train_positive[:, None], train_z[:, candidates] * slope + intercept > 0, axis=0)
    test_predictions = test_z[:, candidates] * slope + intercept > 0
    chosen = int(np.argmax(train_f1))  # first maximum: ties go to the higher-ranked unit
    out.predictions["best-unit"] = test_predictions[:, chosen]
    out.units["best-unit"] = [int(shortlist[chosen])]
    out.predictions["best-unit-on-test"] = test_predictions  # [n_test, top]: chosen once test labels are known
    out.units["best-unit-on-test"] = shortlist[candidates].tolist()
    return out


def dense_probe(train: np.ndarray, train_positive: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Test predictions of a balanced logistic probe on every feature (the dense ceiling)."""
    train_z, test_z = standardise(train, test)
    return predict(test_z, *fit_logistic(train_z, train_positive))
