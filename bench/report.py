"""REPORT.md for one run, rebuilt from its cells.jsonl: settings, per-layer tables, failures, figures.

The report is the run's readable record: everything in it comes from the stored rows, so it can be
regenerated at any time (after a resumed run, or with new figures) without touching a model.

Length: about 300 lines, one function per section of REPORT.md plus the table formatting
they share; the metric columns themselves come from bench/metrics.py.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from bench.figure_names import OVERVIEW_STEM, display_name, figure_stem, figure_titles
from bench.metrics import HISTOGRAM_BUCKETS, REPORT, shown_in
from bench.report_scores import score_sections
from bench.results_frame import REQUIRED, method_sort_key, read_cells, task_metrics

DASH = "—"  # a value the run did not record
SETTINGS = (  # (column, label, formatter)
    ("preset", "preset", str),
    ("random_weights", "random weights (a rehearsal of shapes and time, not a result)",
     lambda v: "yes" if v is True or v == 1.0 else "no"),
    ("dataset", "dataset", str),
    ("seed", "seed", lambda v: f"{int(v)}"),
    ("train_tokens", "train tokens", lambda v: f"{int(v):,}"),
    ("eval_tokens", "eval tokens (NMSE, L0, dead units)", lambda v: f"{int(v):,}"),
    ("eval_documents", "documents the eval tokens come from", lambda v: f"{int(v):,}"),
    ("ce_tokens", "CE tokens", lambda v: f"{int(v):,}"),
    ("ce_documents", "documents the CE tokens come from", lambda v: f"{int(v):,}"),
    ("lr", "learning rate", lambda v: f"{v:g}"),
    ("batch_size", "batch size", lambda v: f"{int(v):,}"),
    ("context_length", "context length", lambda v: f"{int(v):,}"),
    ("device", "device", str),
    ("hardware", "hardware", str),
    ("versions.python", "python", str),
    ("versions.torch", "torch", str),
    ("versions.transformers", "transformers", str),
    ("versions.mxbench", "mxbench", str),
)
# ----------------------------------------------------------------------------- formatting

def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value))


def _fmt(value: object, spec: str) -> str:
    return DASH if _missing(value) else format(value, spec)


def _cell(text: object) -> str:
    """Table-safe text: one line, no column-breaking pipes."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _pm(value: object, err: object, spec: str) -> str:
    if _missing(value):
        return DASH
    return format(value, spec) + ("" if _missing(err) else f" ± {format(err, spec.lstrip('+'))}")


def _duration(seconds: object) -> str:
    if _missing(seconds):
        return DASH
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _unique(frame: pd.DataFrame, column: str, fmt: Callable[[object], str]) -> str:
    """Every distinct value in order of appearance: a setting that varied shows all its values."""
    if column not in frame.columns:
        return DASH
    values = [fmt(v) for v in frame[column] if not _missing(v)]
    return ", ".join(dict.fromkeys(values)) or DASH


def _median(frame: pd.DataFrame, column: str) -> float | None:
    if column not in frame.columns or frame[column].isna().all():
        return None
    return float(frame[column].median())


# ----------------------------------------------------------------------------- sections

def _settings(rows: pd.DataFrame, cells: pd.DataFrame, cells_file: Path) -> list[str]:
    n_ok = int((cells["status"] == "ok").sum())
    lines = [
        f"Regenerated from `{cells_file.name}`: {len(cells)} cells, {n_ok} ok, {len(cells) - n_ok} failed.",
        "",
        "## Settings",
        "",
    ]
    table = [[label, _unique(rows, column, fmt)] for column, label, fmt in SETTINGS]
    table = [entry for entry in table if entry[1] != DASH]  # settings this run never recorded
    span = _span(rows)
    if span:
        table.append(["cells trained and evaluated", span])
    return lines + _table(["setting", "value"], table) + [""]


def _span(rows: pd.DataFrame) -> str | None:
    """First cell's training start to last cell's finish. A row's timestamp is taken when its cell's
    evaluation begins (eval_time_s follows), after its training, so a cell started training by
    timestamp - train_time_s (its own optimiser time: the true start is earlier, never later) and
    finished at timestamp + eval_time_s. Loading the model and the eval set come before and are not in it."""
    if "timestamp" not in rows.columns:
        return None
    starts, ends = [], []
    for _, row in rows.iterrows():
        try:
            stamp = datetime.fromisoformat(str(row["timestamp"]))
        except ValueError:
            continue
        seconds = {key: 0.0 if _missing(row.get(key)) else float(row[key]) for key in ("train_time_s", "eval_time_s")}
        starts.append(stamp - timedelta(seconds=seconds["train_time_s"]))
        ends.append(stamp + timedelta(seconds=seconds["eval_time_s"]))
    if not starts:
        return None
    first, last = min(starts), max(ends)
    took = _duration((last - first).total_seconds())
    return f"{first.isoformat(timespec='seconds')} to {last.isoformat(timespec='seconds')} ({took})"


def _reference_lines(ok: pd.DataFrame) -> list[str]:
    clean, zero = _median(ok, "ce_clean"), _median(ok, "ce_zero")
    lines = [f"Clean model CE: **{_fmt(clean, '.4f')}**; zero-ablated MLP CE: **{_fmt(zero, '.4f')}** "
             "(nats/token on the CE tokens)."]
    scores = []
    for task, metric in task_metrics(ok):
        clean_score = _median(ok, f"tasks_clean.{task}.{metric}")
        zero_score = _median(ok, f"tasks_zero.{task}.{metric}")
        scores.append(f"{task} {metric} {_fmt(clean_score, '.3f')} / {_fmt(zero_score, '.3f')}")
    if scores:
        lines.append(f"Task scores, clean / zero-ablated model: {'; '.join(scores)}.")
    return lines + [""]


def _ce_grid(cells: pd.DataFrame, ok: pd.DataFrame) -> list[str]:
    """Spliced CE as method x K, laid out like the paper's headline table; 'failed' where no result."""
    ks = sorted(cells["k"].unique())
    rows = []
    for method in sorted(cells["method"].unique(), key=method_sort_key):
        row = [method]
        for k in ks:
            done = ok[(ok["method"] == method) & (ok["k"] == k)]
            tried = cells[(cells["method"] == method) & (cells["k"] == k)]
            value = _fmt(done.iloc[0].get("ce_spliced"), ".4f") if len(done) else "failed" if len(tried) else ""
            row.append(value)
        rows.append(row)
    header = ["method"] + [f"K={k}" for k in ks]
    return ["CE with the layer spliced (method × K):", ""] + _table(header, rows) + [""]


def _metrics_table(ok: pd.DataFrame) -> list[str]:
    tasks = task_metrics(ok)
    specs = shown_in(REPORT)
    header = ["method", "K"] + [spec.header for spec in specs]
    header += [f"{task} {metric}" for task, metric in tasks] + ["train time"]
    rows = []
    order = ok.assign(_order=ok["method"].map(method_sort_key)).sort_values(["_order", "k"])
    for _, row in order.iterrows():
        values = [row["method"], str(row["k"])] + [spec.format(row.to_dict()) for spec in specs]
        values += [_pm(row.get(f"tasks.{t}.{m}"), row.get(f"tasks.{t}.{m}_stderr"), ".3f") for t, m in tasks]
        rows.append(values + [_duration(row.get("train_time_s"))])
    return [_stderr_caption(ok), ""] + _table(header, rows) + [""]


def _stderr_caption(ok: pd.DataFrame) -> str:
    """What the ± of ΔCE and KL are over: sequences clustered by document when the run recorded
    documents, else sequences taken as independent."""
    documents = _unique(ok, "ce_documents", lambda v: f"{int(v):,}")
    if documents == DASH:
        return "Every metric, one row per cell (ΔCE and KL stderrs are over the CE sequences, taken as independent):"
    noun = "document it comes" if documents == "1" else "documents they come"
    return ("Every metric, one row per cell (ΔCE and KL stderrs are over the CE sequences, clustered by the "
            f"{documents} {noun} from):")


def _histogram(value: object) -> list[int] | None:
    """A row's selection_frequency_histogram, or None where the row predates it (or holds something else)."""
    if isinstance(value, (list, tuple)) and len(value) == len(HISTOGRAM_BUCKETS):
        return [int(count) for count in value]
    return None


def _firing_table(ok: pd.DataFrame) -> list[str]:
    """Units per bucket of training selection frequency, one row per cell: whether a method leaves units
    unused, or spreads its selections over all of them, where a single never-selected count cannot say.
    Left out when no cell recorded it (rows from before the histogram existed)."""
    histograms = ok.get("selection_frequency_histogram", pd.Series(None, index=ok.index)).map(_histogram)
    if histograms.isna().all():
        return []
    # The f = 0 bucket is the row's never_selected count, so it is headed as such.
    header = ["method", "K", "units", f"{HISTOGRAM_BUCKETS[0]} selected", *HISTOGRAM_BUCKETS[1:]]
    rows = []
    order = ok.assign(_order=ok["method"].map(method_sort_key)).sort_values(["_order", "k"])
    for index, row in order.iterrows():
        counts = histograms[index]
        rows.append([row["method"], str(row["k"]), _fmt(row.get("n_units"), ",.0f"),
                     *([f"{c:,}" for c in counts] if counts else [DASH] * len(HISTOGRAM_BUCKETS))])
    caption = ("Firing frequency in training, units per bucket of f = selections / training tokens over the "
               "whole training stream (bucket a..b: a ≤ f < b; the last includes 1):")
    return [caption, ""] + _table(header, rows) + [""]


def _figure_link(path: Path, report_dir: Path, title: str) -> list[str]:
    rel = Path(os.path.relpath(path, report_dir)).as_posix()
    rel_pdf = rel[: -len(".png")] + ".pdf"
    wrap = (lambda p: f"<{p}>") if " " in rel else (lambda p: p)
    return [f"![{title}]({wrap(rel)})", f"[{title} (PDF)]({wrap(rel_pdf)})", ""]


def _figures(figures_dir: Path, report_dir: Path, model: str, layer: int) -> list[str]:
    lines = []
    for kind, title in figure_titles().items():
        png = figures_dir / f"{figure_stem(model, layer, kind)}.png"
        if png.is_file():
            lines += _figure_link(png, report_dir, title)
    return lines


def _failures(cells: pd.DataFrame) -> list[str]:
    failed = cells[cells["status"] != "ok"]
    lines = ["## Failed cells", ""]
    if failed.empty:
        return lines + ["None.", ""]
    errors = failed["error"] if "error" in failed.columns else pd.Series(DASH, index=failed.index)
    rows = [[r["model"], str(r["layer"]), r["method"], str(r["k"]), r["status"],
             DASH if _missing(err) else _shorten(str(err))] for (_, r), err in zip(failed.iterrows(), errors)]
    return lines + _table(["model", "layer", "method", "K", "status", "error"], rows) + [""]


def _resumed(cells: pd.DataFrame) -> list[str]:
    """Cells whose training was interrupted and resumed: their numbers may differ from an uninterrupted
    run's (the shuffle buffer's unserved tokens are skipped, within one SE as the README says)."""
    if "resumed_at_tokens" not in cells.columns:
        return []
    resumed = cells[cells["resumed_at_tokens"].notna()]
    if resumed.empty:
        return []
    rows = [[r["method"], str(r["k"]), f"{int(r['resumed_at_tokens']):,}"] for _, r in resumed.iterrows()]
    return ["## Resumed cells", ""] + _table(["method", "K", "resumed at tokens"], rows) + [""]


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------- entry point

def write_report(run_dir: Path, figures_dir: Path) -> Path:
    """Write run_dir/REPORT.md from run_dir/cells.jsonl, linking figures already in figures_dir.

    Figures are linked, not drawn: call ``bench.plots.plot_results`` into figures_dir first.
    A figure file that does not exist is simply not linked. Returns the report's path.
    """
    run_dir, figures_dir = Path(run_dir), Path(figures_dir)
    cells_file = run_dir / "cells.jsonl" if run_dir.is_dir() else run_dir
    report_dir = cells_file.parent
    rows = read_cells([cells_file])
    cells = rows.drop_duplicates(subset=list(REQUIRED), keep="last")  # latest attempt per cell
    ok_rows = rows[rows["status"] == "ok"].drop_duplicates(subset=list(REQUIRED), keep="last")
    run = _unique(rows, "run", str)
    lines = [f"# mxbench report: {report_dir.name if run == DASH else run}", ""]
    lines += _settings(rows, cells, cells_file)
    overview = figures_dir / f"{OVERVIEW_STEM}.png"
    if overview.is_file():
        lines += ["## Overview", ""]
        lines += _figure_link(overview, report_dir, "CE increase vs K, every model")
    for (model, layer), group in cells.groupby(["model", "layer"], sort=True):
        ok = ok_rows[(ok_rows["model"] == model) & (ok_rows["layer"] == layer)]
        lines += [f"## {display_name(model)} · layer {layer}", ""]
        model_ids = _unique(group, "model_id", str)
        if model_ids not in (DASH, display_name(model)):  # what was loaded, where the heading shortens it
            lines += [f"Model id: `{model_ids}`.", ""]
        lines += _reference_lines(ok) + _ce_grid(group, ok)
        if not ok.empty:
            lines += _metrics_table(ok) + _firing_table(ok)
        lines += _figures(figures_dir, report_dir, model, layer)
    lines += score_sections(report_dir, figures_dir)  # probing and steering, after training's own sections
    lines += _failures(cells) + _resumed(cells)
    if not any(figures_dir.glob("*.png")):
        lines += [f"_No figures found in `{figures_dir}`: run plot_results first to add them._", ""]
    report = report_dir / "REPORT.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report
