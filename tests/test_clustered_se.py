"""Standard errors clustered by document: against a direct computation, the plain SE when every
sequence is its own document, the SE of document means when documents repeat one value, and
`bench compare` reading the document ids a run stores."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bench.clustered import clustered_stderr, clustered_test
from bench.compare import compare_run, format_comparison
from bench.eval_set import EvalSet
from bench.results import RunStore
from bench.sequence_store import write_sequences


def direct_clustered_se(values: list[float], clusters: list[int]) -> float:
    """sqrt(G/(G-1) * sum over documents of (sum of deviations from the grand mean)^2) / n, by loops."""
    n = len(values)
    grand = sum(values) / n
    totals: dict[int, float] = {}
    for value, cluster in zip(values, clusters):
        totals[cluster] = totals.get(cluster, 0.0) + (value - grand)
    g = len(totals)
    return math.sqrt(g / (g - 1) * sum(t * t for t in totals.values())) / n


def test_clustered_se_matches_a_direct_computation():
    rng = np.random.default_rng(3)
    clusters = rng.integers(0, 9, size=57).tolist()  # unequal document sizes, ids in no order
    values = (rng.normal(0, 1, 57) + np.array(clusters) * 0.3).tolist()
    assert clustered_stderr(values, clusters) == pytest.approx(direct_clustered_se(values, clusters), rel=1e-12)


def test_one_sequence_per_document_is_the_plain_stderr():
    values = np.random.default_rng(4).normal(2.0, 0.7, 40)
    plain = stats.sem(values)  # sd(ddof=1) / sqrt(n): the small-sample factor G/(G-1) makes them equal
    assert clustered_stderr(values, list(range(40))) == pytest.approx(plain, rel=1e-12)
    assert clustered_stderr(values, None) == pytest.approx(plain, rel=1e-12)
    assert clustered_stderr(values, [7 * i + 100 for i in range(40)]) == pytest.approx(plain, rel=1e-12)


def test_repeating_a_document_does_not_shrink_its_error_bar():
    """32 sequences from 4 documents that each repeat one value carry 4 draws' worth of evidence:
    the clustered SE is the SE of the 4 document means, and the t-test has 3 degrees of freedom."""
    means = np.array([0.10, 0.30, 0.05, 0.25])
    values = np.repeat(means, 8)
    clusters = np.repeat([0, 1, 2, 3], 8)
    assert clustered_stderr(values, clusters) == pytest.approx(stats.sem(means), rel=1e-12)
    assert stats.sem(values) < clustered_stderr(values, clusters) / 2  # what the plain SE would claim
    _, _, t, p = clustered_test(values, clusters)
    reference = stats.ttest_1samp(means, 0.0)
    assert t == pytest.approx(reference.statistic, rel=1e-12) and p == pytest.approx(reference.pvalue, rel=1e-9)


def test_one_document_has_no_error_bar_and_mismatched_ids_are_refused():
    assert math.isnan(clustered_stderr([1.0, 2.0, 3.0], [5, 5, 5]))
    with pytest.raises(ValueError, match="3 values but 2 cluster ids"):
        clustered_stderr([1.0, 2.0, 3.0], [0, 1])


def _run(tmp_path, documents: list[int] | None, n: int = 32):
    """tc and mxd on n sequences whose mxd - tc difference is one value per document."""
    run = tmp_path / "run"
    store = RunStore(run)
    rng = np.random.default_rng(0)
    doc = np.array(documents if documents is not None else range(n))
    per_document = rng.normal(-0.05, 0.03, doc.max() + 1)
    hardness = rng.normal(4.0, 0.5, n)
    baseline = {"ce_clean": hardness.tolist(), "ce_zero": (hardness + 1).tolist()}
    if documents is not None:
        baseline["document"] = documents
    base_file = write_sequences(run, "baseline", baseline)
    for method, ce in (("tc", hardness + 0.08), ("mxd", hardness + 0.08 + per_document[doc])):
        path = write_sequences(run, f"{method}-k16", {"ce": ce.tolist(), "kl": (ce - hardness).tolist()})
        store.append({"model": "m", "layer": 1, "method": method, "k": 16, "seed": 0, "status": "ok",
                      "expansion": 8, "train_tokens": 100, "dataset": "d", "sequences": path,
                      "baseline_sequences": base_file})
    return run, per_document


def test_compare_clusters_by_the_stored_documents(tmp_path):
    documents = [i // 8 for i in range(32)]  # 4 documents, 8 sequences each
    run, per_document = _run(tmp_path, documents)
    (ce,) = [r for r in compare_run(run, "tc") if r.metric == "ce"]
    reference = stats.ttest_1samp(per_document, 0.0)
    assert ce.n_documents == 4 and ce.n_sequences == 32
    assert ce.stderr == pytest.approx(stats.sem(per_document), rel=1e-9)
    assert ce.p_value == pytest.approx(reference.pvalue, rel=1e-6)
    assert "from 4 documents (SE clustered by document)" in format_comparison(compare_run(run, "tc"))


def test_compare_without_document_ids_says_it_takes_sequences_as_independent(tmp_path):
    run, _ = _run(tmp_path, None)
    (ce,) = [r for r in compare_run(run, "tc") if r.metric == "ce"]
    assert ce.n_documents is None
    assert "sequences taken as independent" in format_comparison([ce])


def test_eval_set_gives_clustered_delta_ce_and_kl_stderrs():
    clean = torch.tensor([3.0, 3.2, 2.9, 3.1, 3.3, 3.0], dtype=torch.float64)
    shift = torch.tensor([0.1, 0.1, 0.3, 0.3, 0.2, 0.2], dtype=torch.float64)  # one value per document
    documents = [0, 0, 1, 1, 2, 2]
    eval_set = EvalSet(torch.zeros(1), torch.zeros(1), None, clean, clean + 1, "baseline.json", documents, 9, 3)
    stats_row = eval_set.document_stats({"ce": clean + shift, "kl": shift * 2})
    assert stats_row["delta_ce_stderr"] == pytest.approx(stats.sem([0.1, 0.3, 0.2]), rel=1e-9)
    assert stats_row["kl_stderr"] == pytest.approx(stats.sem([0.2, 0.6, 0.4]), rel=1e-9)
    assert stats_row["eval_documents"] == 9 and stats_row["ce_documents"] == 3
