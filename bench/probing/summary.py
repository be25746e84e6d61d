"""Probing rows -> one point per cell for the "probing F1 vs delta CE" figure, and the baseline levels.

Datasets are scored on disjoint texts, so the SE of the mean over datasets combines the per-dataset
SEs as independent: sqrt(sum SE^2) / n.
"""
from __future__ import annotations

import math
from typing import Any


def probing_points(rows: list[dict[str, Any]], probe: str = "k-sparse", probe_k: int | None = 1,
                   datasets: list[str] | None = None) -> list[dict[str, Any]]:
    """One dict per source (cell or baseline): its class-mean F1 on each dataset and averaged over them.

    Keys: kind, method, k, n_units, delta_ce, delta_ce_stderr, f1, f1_se, per_dataset {name: (f1, se)}.
    A source missing a dataset is left out, so every point averages the same datasets.
    """
    chosen = [r for r in rows if r["probe"] == probe and r["probe_k"] == probe_k
              and (datasets is None or r["probe_dataset"] in datasets)]
    wanted = sorted(datasets or {r["probe_dataset"] for r in chosen})
    sources: dict[tuple, dict[str, Any]] = {}
    for row in chosen:
        key = (row["kind"], row["model"], row["layer"], row["method"], row.get("k"), row.get("n_units"),
               row.get("checkpoint"))
        entry = sources.setdefault(key, {
            "kind": row["kind"], "model": row["model"], "layer": row["layer"], "method": row["method"],
            "k": row.get("k"), "n_units": row.get("n_units"), "delta_ce": row.get("delta_ce"),
            "delta_ce_stderr": row.get("delta_ce_stderr"), "per_dataset": {}})
        entry["per_dataset"][row["probe_dataset"]] = (row["f1"], row["f1_se"])
    points = []
    for entry in sources.values():
        if sorted(entry["per_dataset"]) != wanted or not wanted:
            continue
        scores = [entry["per_dataset"][name] for name in wanted]
        entry["f1"] = sum(f1 for f1, _ in scores) / len(scores)
        entry["f1_se"] = math.sqrt(sum(se**2 for _, se in scores)) / len(scores)
        points.append(entry)
    return points
