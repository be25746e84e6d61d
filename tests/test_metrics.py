"""One table of metric specs drives rows' summary, the printed table, REPORT.md and the figures."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import metrics
from bench.metrics import FIGURE, METRICS, REPORT, SUMMARY, TABLE, MetricSpec


def _rows(value_of) -> list[dict]:
    rows = []
    for method in ("tc", "mxd"):
        for k in (16, 64):
            rows.append({"model": "gpt2", "layer": 8, "method": method, "k": k, "status": "ok", "ce_clean": 3.6,
                         "ce_zero": 3.9, "ce_spliced": 3.61, "delta_ce": 0.01, "delta_ce_stderr": 0.002,
                         "ce_recovered": 0.97, "nmse": 0.2, "l0": float(k), "dead_units": 3, "dead_fraction": 0.1,
                         "n_params": 1000, "n_units": 30, "train_tokens": 4096, "ce_tokens": 508,
                         "train_time_s": 1.0, "placeholder": value_of(method, k), "placeholder_stderr": 0.125})
    return rows


@pytest.fixture
def placeholder(monkeypatch) -> MetricSpec:
    """A new metric added the way a contributor would: one spec in the table, nothing else."""
    spec = MetricSpec("placeholder", "Placeholder score", "plc", ".3f", True, "bits", stderr="placeholder_stderr",
                      shown=frozenset({TABLE, REPORT, SUMMARY, FIGURE}))
    monkeypatch.setattr(metrics, "METRICS", METRICS + (spec,))
    return spec


def test_a_metric_added_to_the_table_reaches_table_summary_report_and_figures(placeholder, tmp_path) -> None:
    from bench.figure_names import figure_stem
    from bench.plots import plot_results
    from bench.report import write_report
    from bench.results import RunStore, format_table

    rows = _rows(lambda method, k: 1.5 if method == "tc" else 2.25)
    printed = format_table(rows)
    assert printed.splitlines()[1].split()[-3] == "plc"  # its column sits before "train s"
    assert "2.250 ± 0.125" in printed and "1.500 ± 0.125" in printed

    run = tmp_path / "run"
    store = RunStore(run)
    for row in rows:
        store.append(row)
    summary = (run / "summary.csv").read_text().splitlines()
    assert "placeholder" in summary[0].split(",") and "placeholder_stderr" in summary[0].split(",")

    figures = tmp_path / "figures"
    written = plot_results([run], figures)
    assert figures / f"{figure_stem('gpt2', 8, 'placeholder_vs_k')}.png" in written
    report = write_report(run, figures).read_text()
    assert "Placeholder score (± stderr)" in report and "Placeholder score vs K" in report
    assert "| mxd | 16 |" in report and "2.250 ± 0.125" in report


def test_a_metric_left_out_of_a_place_stays_out(monkeypatch) -> None:
    from bench.results import format_table, summary_columns

    hidden = MetricSpec("hidden", "Hidden", "hid", ".3f", shown=frozenset({SUMMARY}))
    monkeypatch.setattr(metrics, "METRICS", METRICS + (hidden,))
    assert "hid" not in format_table(_rows(lambda m, k: 1.0)).split()
    assert "hidden" in summary_columns()


def test_format_shows_stderr_counts_and_missing_values() -> None:
    delta = metrics.metric("delta_ce")
    assert delta.format({"delta_ce": 0.0123, "delta_ce_stderr": 0.004}) == "+0.0123 ± 0.0040"
    assert delta.format({"delta_ce": float("nan")}) == "—"
    dead = metrics.metric("dead_fraction")
    assert dead.format({"dead_fraction": 0.25, "dead_units": 1200}) == "1,200 (25.0%)"


def test_reading_results_does_not_import_matplotlib(tmp_path) -> None:
    """A report or a comparison reads rows through results_frame, which needs pandas only."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(lambda m, k: 1.0)))
    code = ("import sys; from bench.results_frame import load_results; from bench.report import write_report; "
            f"frame = load_results([{str(run)!r}]); write_report({str(run)!r}, {str(tmp_path / 'f')!r}); "
            "assert len(frame) == 4; print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
