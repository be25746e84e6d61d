"""REPORT.md's "Sparse probing" and "Steering" sections, from ``probing.jsonl`` and ``steering/*.json``.

Kept apart from ``bench.report`` (the sections of what training measured) because these scores come
from later commands and are read through the same join as every other view (``bench.cell_scores``):
a number here is the number summary.csv and the results frame hold for that cell. A run without
the file gets one line saying which command adds the section.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.cell_scores import (REPORTED_KS, current_probing_rows, f1_by_dataset, mean_with_se, source_identity,
                               steering_files, steering_summary)
from bench.figure_names import display_name, figure_stem
from bench.metrics import metric
from bench.results_frame import method_sort_key

DASH = "—"
PROBING_FIGURE, STEERING_FIGURE = "probing_vs_delta_ce", "steering_vs_delta_ce"  # drawn by bench.probing_figure
# (probe, probe_k) of each probing table; the dense probe appears in each as the ceiling row.
PROBING_TABLES = (*(("k-sparse", k) for k in REPORTED_KS), ("best-unit", 1), ("best-unit-on-test", 1))
BASELINE_NAMES = {"baseline:mlp-neurons": "base MLP neurons", "baseline:random-projection": "random projection",
                  "baseline:dense-probe": "dense probe on the MLP input (ceiling)"}


def _pm(value: float | None, err: float | None, spec: str = ".3f") -> str:
    if value is None:
        return DASH
    return format(value, spec) + ("" if err is None else f" ± {format(err, spec)}")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]


def _figure(figures_dir: Path, report_dir: Path, model: str, layer: int, kind: str, title: str) -> list[str]:
    png = figures_dir / f"{figure_stem(model, layer, kind)}.png"
    if not png.is_file():
        return []
    rel = Path(os.path.relpath(png, report_dir)).as_posix()
    return [f"![{title}](<{rel}>)", ""]


def _source_order(row: dict[str, Any]) -> tuple:
    """Cells by method and K, then the baselines: neurons, random projections by width, the ceiling."""
    if row.get("kind") == "cell":
        return (0, method_sort_key(row["method"]), row.get("k") or 0, str(row.get("source") or ""))
    return (1, list(BASELINE_NAMES).index(row["method"]) if row["method"] in BASELINE_NAMES else 9,
            row.get("n_units") or 0)


def _source_name(row: dict[str, Any]) -> list[str]:
    """The table's first three columns: what was probed, its K, its number of units."""
    if row.get("kind") == "cell":
        return [str(row["method"]), str(row.get("k")), f"{row['n_units']:,}" if row.get("n_units") else DASH]
    units = f"{row['n_units']:,}" if row.get("n_units") else DASH
    return [BASELINE_NAMES.get(row["method"], row["method"]), DASH, units]


def _probing_table(rows: list[dict[str, Any]], probe: str, probe_k: int, datasets: list[str]) -> list[str]:
    """One probe's class-mean test F1 per dataset and averaged, one row per source; the ceiling last."""
    scores = f1_by_dataset(rows, probe, probe_k)
    scores.update(f1_by_dataset(rows, "dense", None))
    firsts: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        firsts.setdefault(source_identity(row), row)
    body = []
    for source, row in sorted(firsts.items(), key=lambda item: _source_order(item[1])):
        found = scores.get(source)
        if not found:
            continue
        mean = mean_with_se([found[d] for d in datasets]) if all(d in found for d in datasets) else (None, None)
        body.append(_source_name(row) + [_pm(*found[d]) if d in found else DASH for d in datasets] + [_pm(*mean)])
    label = next(r["probe_label"] for r in rows if r["probe"] == probe and r.get("probe_k") == probe_k)
    title = f"**{probe}{f' k={probe_k}' if probe == 'k-sparse' else ''}**: {label}"
    return [title, ""] + _table(["source", "K", "units", *datasets, "mean"], body) + [""]


def score_sections(run_dir: Path, figures_dir: Path) -> list[str]:
    """Both sections, for ``bench.report.write_report`` (figures are linked relative to ``run_dir``)."""
    from bench.results import RunStore

    cells = [r for r in RunStore(run_dir).rows() if r.get("status") == "ok"]
    return probing_section(run_dir, cells, figures_dir) + steering_section(run_dir, cells, figures_dir)


def probing_section(run_dir: Path, cells: list[dict[str, Any]], figures_dir: Path) -> list[str]:
    """The "Sparse probing" section; a one-line pointer to ``bench probe`` when saved cells were never probed."""
    rows = current_probing_rows(run_dir)
    if not rows:
        probe_able = any(c.get("checkpoint") for c in cells)
        return ["## Sparse probing", "", f"_Not probed yet: `bench probe {run_dir}` adds this section._", ""] \
            if probe_able else []
    first = rows[-1]
    lines = ["## Sparse probing", "",
             f"Class-mean test F1 of one-vs-rest probes (± bootstrap SE over test texts; the mean over datasets "
             f"combines the SEs as independent), at most {first['texts_per_class']:,} texts per class, probing seed "
             f"{first['probe_seed']}. Protocol and how to read it: docs/PROBING.md. "
             "best-unit-on-test is the reference's figure, chosen on the test split itself: optimistic.", ""]
    for model, layer in sorted({(r["model"], r["layer"]) for r in rows}):
        here = [r for r in rows if (r["model"], r["layer"]) == (model, layer)]
        datasets = sorted({r["probe_dataset"] for r in here})
        lines += [f"### {display_name(model)} · layer {layer}", ""]
        sizes = {r["probe_dataset"]: r for r in here}
        lines += ["Datasets: " + "; ".join(f"`{d}` {sizes[d]['n_classes']} classes, {sizes[d]['n_texts']:,} texts, "
                                           f"{sizes[d]['n_test']:,} test" for d in datasets) + ".", ""]
        for probe, probe_k in PROBING_TABLES:
            if any(r["probe"] == probe and r.get("probe_k") == probe_k for r in here):
                lines += _probing_table(here, probe, probe_k, datasets)
        lines += _figure(figures_dir, run_dir, model, layer, PROBING_FIGURE, "probing F1 vs ΔCE")
    return lines


def steering_section(run_dir: Path, cells: list[dict[str, Any]], figures_dir: Path) -> list[str]:
    """The "Steering" section: one row per steered cell, means over its steered units; none without results."""
    files = steering_files(run_dir)
    if not files:
        return []
    delta = {(c.get("model"), c.get("layer"), c.get("checkpoint")): c for c in cells if c.get("checkpoint")}
    specs = [metric(name) for name in ("steering.perplexity", "steering.coherence_proxy", "steering.coherence_judge")]
    lines = ["## Steering", "",
             "Per steered cell, means over its steered units (± SE over units when two or more). Perplexity is the "
             "clean model's, of the steered samples, beside the unsteered baseline's. Coherence (proxy) is the "
             "offline PROXY, not a judgement: how much more often the unit fires on its steered text than on "
             "unsteered text (docs/INSPECT.md); coherence (judge) only where `--judge` rated every unit.", ""]
    body = []
    for stored in sorted(files, key=lambda s: (str(s.get("model")), s.get("layer") or 0, str(s.get("cell")))):
        summary, cell = steering_summary(stored), delta.get((stored.get("model"), stored.get("layer"),
                                                               stored.get("checkpoint")), {})
        body.append([str(stored.get("cell")), f"{display_name(str(stored.get('model')))} L{stored.get('layer')}",
                     str(summary["steering.units"]), *(spec.format(summary) for spec in specs[:1]),
                     _pm(summary.get("steering.baseline_perplexity"), None, ".1f"),
                     *(spec.format(summary) for spec in specs[1:]), summary.get("steering.judge") or DASH,
                     metric("delta_ce").format(cell)])
    header = ["cell", "layer", "units steered", specs[0].header, "baseline perplexity", specs[1].header,
              specs[2].label, "judge", metric("delta_ce").label]
    lines += _table(header, body) + [""]
    for model, layer in sorted({(str(s.get("model")), s.get("layer")) for s in files if s.get("layer") is not None}):
        lines += _figure(figures_dir, run_dir, model, layer, STEERING_FIGURE, "steering scores vs ΔCE")
    return lines
