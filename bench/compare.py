"""``bench compare``: paired differences between methods, the test "MxD beats TC" needs.

Every cell of a run is scored on the same eval sequences, so a method's per-sequence CE minus the
baseline method's per-sequence CE at the same K cancels the variation between sequences (some
texts are simply harder). Sequences cut from one document are not independent draws either, so
the mean difference gets a standard error clustered by the document each sequence came from
(``bench/clustered.py``) and a two-sided p-value from Student's t with G - 1 degrees of freedom
for G documents. Runs that stored no document ids (older runs) treat each sequence as its own
document: the plain paired test, with n - 1 degrees of freedom. With several seeds, the
per-sequence differences are averaged over seeds first, and the spread of the per-seed means
across seeds is reported beside them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.clustered import clustered_test
from bench.results import RunStore
from bench.results_frame import method_sort_key
from bench.sequence_store import read_sequences

GROUP_KEYS = ("model", "layer", "k", "expansion", "train_tokens", "dataset")  # what must match to compare


@dataclass
class PairedDifference:
    model: str
    layer: int
    k: int
    method: str
    baseline: str
    metric: str  # "ce" (spliced CE) or "kl"
    difference: float  # mean over sequences of method - baseline (negative: the method is better)
    stderr: float  # clustered by document where the run stored document ids
    t: float
    p_value: float
    n_sequences: int
    n_seeds: int
    seed_sd: float | None  # sd across seeds of the per-seed mean difference (None with one seed)
    n_documents: int | None = None  # documents the sequences come from (None: the run stored no ids)


def paired_test(differences: np.ndarray, documents: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """(mean, stderr, t, two-sided p) of per-sequence differences; the stderr is clustered by
    ``documents`` (one id per sequence) when given, else each sequence counts as independent."""
    return clustered_test(differences, documents)


def _documents(run_dir: Path, row: dict, n_sequences: int) -> np.ndarray | None:
    """The document id of each eval sequence, from the baseline file the row points at (None when
    the run predates document ids)."""
    if not row.get("baseline_sequences"):
        return None
    ids = read_sequences(run_dir, row["baseline_sequences"]).get("document")
    if ids is None:
        return None
    if len(ids) != n_sequences:
        raise ValueError(f"{row['baseline_sequences']} names the documents of {len(ids)} sequences, "
                         f"but the cells hold {n_sequences}")
    return np.asarray(ids, dtype=np.int64)


def _per_sequence(run_dir: Path, row: dict, metric: str) -> np.ndarray | None:
    if not row.get("sequences"):
        return None
    values = read_sequences(run_dir, row["sequences"]).get(metric)
    return None if values is None else np.asarray(values, dtype=np.float64)


def compare_run(run_dir: Path, baseline: str = "tc", metrics: tuple[str, ...] = ("ce", "kl")) -> list[PairedDifference]:
    """Each method against ``baseline`` at every K (and budget) where both have per-sequence values."""
    run_dir = Path(run_dir)
    rows = [r for r in RunStore(run_dir).rows() if r.get("status") == "ok"]
    if not rows:
        raise ValueError(f"{run_dir} has no finished cells to compare")
    if not any(r["method"] == baseline for r in rows):
        found = ", ".join(sorted({r["method"] for r in rows}, key=method_sort_key))
        raise ValueError(f"baseline method {baseline!r} has no finished cell in {run_dir}; methods there: {found}")
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in GROUP_KEYS), {}).setdefault(row["method"], []).append(row)
    out = []
    for key, by_method in groups.items():
        base_rows = {r.get("seed"): r for r in by_method.get(baseline, [])}
        for method in sorted(by_method, key=method_sort_key):
            if method == baseline:
                continue
            for metric in metrics:
                result = _compare(run_dir, key, method, baseline, metric, by_method[method], base_rows)
                if result is not None:
                    out.append(result)
    return sorted(out, key=lambda d: (d.model, d.layer, d.metric, d.k, method_sort_key(d.method)))


def _compare(run_dir: Path, key: tuple, method: str, baseline: str, metric: str, rows: list[dict],
             base_rows: dict) -> PairedDifference | None:
    per_seed = []
    for row in rows:
        base = base_rows.get(row.get("seed"))
        if base is None:
            continue
        ours, theirs = _per_sequence(run_dir, row, metric), _per_sequence(run_dir, base, metric)
        if ours is None or theirs is None:
            continue
        if len(ours) != len(theirs):
            raise ValueError(f"{method} and {baseline} at K={row['k']} were scored on different eval sequences "
                             f"({len(ours)} vs {len(theirs)}); re-run both with the same --ce-tokens")
        per_seed.append(ours - theirs)
    if not per_seed:
        return None
    documents = _documents(run_dir, rows[0], len(per_seed[0]))
    mean, stderr, t, p = paired_test(np.mean(per_seed, axis=0), documents)
    seed_sd = float(np.std([d.mean() for d in per_seed], ddof=1)) if len(per_seed) > 1 else None
    model, layer, k = key[0], key[1], key[2]
    return PairedDifference(model, layer, k, method, baseline, metric, mean, stderr, t, p,
                            len(per_seed[0]), len(per_seed), seed_sd,
                            None if documents is None else len(set(documents.tolist())))


def _clusters(result: PairedDifference) -> str:
    if result.n_documents is None:
        return " (no document ids stored: sequences taken as independent)"
    return f" from {result.n_documents} documents (SE clustered by document)"


def _stars(p: float) -> str:
    return "" if math.isnan(p) else "**" if p < 0.01 else "*" if p < 0.05 else ""


def format_comparison(results: list[PairedDifference]) -> str:
    """One block per (model, layer, metric): method - baseline per K, with SE, t, p and stars."""
    if not results:
        return "(nothing to compare: no cells with per-sequence values beside the baseline)"
    lines = []
    blocks: dict[tuple, list[PairedDifference]] = {}
    for r in results:
        blocks.setdefault((r.model, r.layer, r.metric, r.baseline), []).append(r)
    for (model, layer, metric, baseline), block in blocks.items():
        what = "spliced CE" if metric == "ce" else "KL(clean || spliced)"
        lines.append(f"{model} layer {layer}: {what}, method - {baseline}, paired over {block[0].n_sequences} "
                     f"sequences{_clusters(block[0])} (negative: better than {baseline}; ** p < 0.01, * p < 0.05)")
        table = [["method", "K", "difference", "± stderr", "t", "p", "", "seeds"]]
        for r in block:
            seeds = str(r.n_seeds) + ("" if r.seed_sd is None else f" (sd {r.seed_sd:.4f})")
            table.append([r.method, str(r.k), f"{r.difference:+.4f}", f"{r.stderr:.4f}", f"{r.t:+.2f}",
                          f"{r.p_value:.2g}", _stars(r.p_value), seeds])
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for line in table:
            lines.append("  ".join([line[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(line[1:], widths[1:])]).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip()


def comparison_rows(results: list[PairedDifference]) -> list[dict]:
    return [asdict(r) for r in results]
