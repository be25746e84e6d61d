"""Standard errors of a mean over eval sequences that respect where the sequences came from.

Sequences cut from one document share its topic, style and difficulty, so they are not
independent draws: with 32 sequences from 3 documents, the plain standard error (sd / sqrt(n))
pretends to 32 independent draws and is far too small. The cluster-robust standard error of a
mean treats each document as one draw:

    SE = sqrt( G / (G - 1) * sum_g ( sum_{i in g} (d_i - mean(d)) )^2 ) / n

over n values d_i in G documents (clusters) g. The factor G / (G - 1) is the usual small-sample
correction; with one sequence per document it makes SE equal sd(d, ddof=1) / sqrt(n) exactly.
A t-test on the mean then has G - 1 degrees of freedom, not n - 1.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def clustered_stderr(values: Sequence[float] | np.ndarray, clusters: Sequence[int] | np.ndarray | None) -> float:
    """Cluster-robust standard error of ``mean(values)``; ``clusters[i]`` names value i's document.

    ``clusters=None`` treats every value as its own document (the plain SE). nan with fewer
    than two documents, where no spread between documents can be seen.
    """
    values = np.asarray(values, dtype=np.float64)
    ids = np.arange(len(values)) if clusters is None else np.asarray(clusters)
    if ids.shape != values.shape:
        raise ValueError(f"{len(values)} values but {len(ids)} cluster ids; they must pair up one to one")
    _, index = np.unique(ids, return_inverse=True)
    n_clusters = int(index.max()) + 1 if len(index) else 0
    if n_clusters < 2:
        return math.nan
    sums = np.bincount(index, weights=values - values.mean(), minlength=n_clusters)
    return float(math.sqrt(n_clusters / (n_clusters - 1) * float(np.sum(sums**2))) / len(values))


def n_clusters(clusters: Sequence[int] | np.ndarray | None, n_values: int) -> int:
    """How many distinct documents ``clusters`` names (``n_values`` when there are no ids)."""
    return n_values if clusters is None else len(set(np.asarray(clusters).tolist()))


def clustered_test(values: Sequence[float] | np.ndarray,
                   clusters: Sequence[int] | np.ndarray | None) -> tuple[float, float, float, float]:
    """(mean, clustered SE, t, two-sided p from Student's t with G - 1 degrees of freedom)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else math.nan
    stderr = clustered_stderr(values, clusters)
    if math.isnan(stderr):
        return mean, math.nan, math.nan, math.nan
    if stderr == 0:
        return mean, 0.0, math.copysign(math.inf, mean) if mean else math.nan, 0.0 if mean else 1.0
    t = mean / stderr
    return mean, stderr, t, float(2 * stats.t.sf(abs(t), df=n_clusters(clusters, len(values)) - 1))
