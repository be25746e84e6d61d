"""The probing-vs-ΔCE figure: drawn from probing.jsonl alone, one point per cell, baselines as lines."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt

from bench.figure_names import figure_stem
from bench.probing_figure import PROBING_KIND, plot_probing


def _row(kind, method, k, f1, dataset, delta=None, probe="k-sparse", probe_k=1, n_units=64):
    return {"kind": kind, "model": "m", "layer": 1, "method": method, "k": k, "n_units": n_units,
            "checkpoint": f"checkpoints/{method}-k{k}" if kind == "cell" else None, "probe": probe,
            "probe_k": probe_k, "probe_dataset": dataset, "f1": f1, "f1_se": 0.02, "delta_ce": delta,
            "delta_ce_stderr": 0.003 if delta is not None else None}


def test_probing_figure_has_a_point_per_cell_and_the_reference_lines(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for dataset in ("a", "b"):
        rows += [_row("cell", "tc", 16, 0.4, dataset, 0.08), _row("cell", "tc", 64, 0.45, dataset, 0.06),
                 _row("cell", "mxd", 16, 0.5, dataset, 0.01), _row("cell", "mxd", 64, 0.55, dataset, 0.01),
                 _row("baseline", "baseline:mlp-neurons", None, 0.3, dataset),
                 _row("baseline", "baseline:dense-probe", None, 0.9, dataset, probe="dense", probe_k=None)]
    (run / "probing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig) or real_close(fig))
    written = plot_probing(run, tmp_path / "figures")
    assert tmp_path / "figures" / f"{figure_stem('m', 1, PROBING_KIND)}.png" in written
    (ax,) = drawn[0].axes
    points = sorted((round(x, 4), round(y, 4)) for line in ax.lines
                    if line.get_marker() not in (None, "None", "", "_", "|")  # not the error bars' caps
                    for x, y in zip(line.get_xdata(), line.get_ydata()))
    assert points == [(0.01, 0.5), (0.01, 0.55), (0.06, 0.45), (0.08, 0.4)]
    levels = sorted(round(line.get_ydata()[0], 4) for line in ax.lines if line.get_linestyle() in ("--", "-."))
    assert levels == [0.3, 0.9]


def test_no_probing_rows_no_figure(tmp_path):
    (tmp_path / "run").mkdir()
    assert plot_probing(tmp_path / "run", tmp_path / "figures") == []


def test_steering_figure_has_each_steered_cells_proxy_and_perplexity_against_its_delta_ce(tmp_path, monkeypatch):
    from bench.probing_figure import STEERING_KIND, plot_steering
    from tests.test_cell_scores import scored_run

    run = scored_run(tmp_path)
    drawn = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig) or real_close(fig))
    written = plot_steering(run, tmp_path / "figures")
    assert tmp_path / "figures" / f"{figure_stem('m', 1, STEERING_KIND)}.png" in written
    units = json.loads((run / "steering" / "tc-4.json").read_text())["units"].values()
    cells = {json.loads(line)["method"]: json.loads(line) for line in (run / "cells.jsonl").read_text().splitlines()}
    proxy_ax, perplexity_ax = drawn[0].axes
    for ax, key in ((proxy_ax, "coherence_proxy"), (perplexity_ax, "perplexity")):
        points = [(x, y) for line in ax.lines if line.get_marker() not in (None, "None", "", "_", "|")
                  for x, y in zip(line.get_xdata(), line.get_ydata())]
        assert points == [(cells["tc"]["delta_ce"], sum(u[key] for u in units) / len(units))]  # tc alone was steered
    assert "proxy" in proxy_ax.get_ylabel().lower() and "proxy" in proxy_ax.get_title()
    assert [line.get_ydata()[0] for line in perplexity_ax.lines if line.get_linestyle() == "--"] == [12.0]
    (run / "steering" / "tc-4.json").unlink()
    assert plot_steering(run, tmp_path / "figures") == []
