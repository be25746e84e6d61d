"""Figures regenerated from stored results alone: cells.jsonl in, PNG + PDF out, no model touched.

Per (model, layer): CE with the layer spliced vs K (the paper's main figure), each metric
``bench.metrics`` marks for figures vs K (NMSE, ...), the Pareto frontier of CE increase vs L0
(and vs parameter count when the methods' sizes differ by PARAMS_MATCHED or more; parameter-matched
methods would stand in a thin vertical strip there), task accuracy vs K, each cell's firing-frequency
histogram (small multiples); plus one overview grid of delta CE vs K over every model/layer. Anything a
run did not record is skipped, never guessed, so partial or in-progress runs still plot. Models are
named by ``figure_names.display_name``: a local path by its directory's name, not the whole path.

Length: about 340 lines, one function per figure kind plus the axes helpers they share; splitting
the figures across modules would separate each from the helpers that give them one look.
"""
from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display, and renders identically everywhere

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from bench.figure_names import OVERVIEW_STEM, display_name, figure_stem  # noqa: E402
from bench.metrics import FIGURE, HISTOGRAM_BUCKETS, MetricSpec, shown_in  # noqa: E402
from bench.results_frame import load_results, ordered_methods, task_metrics  # noqa: E402
from bench.style import (  # noqa: E402
    RC, MethodStyle, k_axis, legend_entries, legend_right, log_y_if_wide, method_styles, pad_y,
    save_figure,
)

log = logging.getLogger(__name__)

PARAMS_MATCHED = 0.05  # max/min - 1 of the parameter counts below which the params panel is left out


# ----------------------------------------------------------------------------- axes helpers

def _human(value: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _median(frame: pd.DataFrame, column: str) -> float | None:
    if column not in frame.columns or frame[column].isna().all():
        return None
    return float(frame[column].median())


def _title(model: str, layer: int, frame: pd.DataFrame) -> str:
    title = f"{display_name(model)} · layer {layer}"
    if "train_tokens" in frame.columns and frame["train_tokens"].notna().any():
        lo, hi = frame["train_tokens"].min(), frame["train_tokens"].max()
        tokens = _human(lo) if lo == hi else f"{_human(lo)}–{_human(hi)}"
        title += f" · {tokens} train tokens"
    if "random_weights" in frame.columns and frame["random_weights"].fillna(False).astype(bool).any():
        title += " · RANDOM WEIGHTS"
    return title


def _method_lines(ax: Axes, frame: pd.DataFrame, y: str, yerr: str | None,
                  styles: dict[str, MethodStyle], dodge: float = 0.0) -> None:
    """One line per method over K, with error bars where a stderr was recorded.

    ``dodge`` shifts method i by a fraction of an octave so overlapping error bars stay apart.
    """
    methods = ordered_methods(frame["method"])
    for i, method in enumerate(methods):
        sub = frame[frame["method"] == method].dropna(subset=[y]).sort_values("k")
        if sub.empty:
            continue
        err = None
        if yerr and yerr in sub.columns and sub[yerr].notna().any():
            err = sub[yerr].fillna(0).clip(lower=0).to_numpy()
        style = styles[method]
        shift = 2.0 ** (dodge * (i - (len(methods) - 1) / 2))
        ax.errorbar(sub["k"] * shift, sub[y], yerr=err, color=style.color, marker=style.marker, label=method,
                    lw=1.6, ms=5.5, capsize=2.5, elinewidth=1)


def _with_errors(frame: pd.DataFrame, y: str, yerr: str) -> list[float]:
    """Every y value and error-bar end, so axis limits can be set to include them all."""
    values = frame[y].dropna()
    err = frame[yerr].reindex(values.index).fillna(0) if yerr in frame.columns else 0 * values
    return [*values, *(values + err), *(values - err)]


def _legend_below(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend for every panel, below them: at the upper right it climbs into a figure title
    that is wider than the panels (one narrow panel under a long title)."""
    handles, labels = legend_entries(axes)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), frameon=False)


def _has(frame: pd.DataFrame, *columns: str) -> bool:
    return all(c in frame.columns for c in columns) and frame[list(columns)].notna().all(axis=1).any()


# ----------------------------------------------------------------------------- figures

def plot_ce_vs_k(frame: pd.DataFrame, styles: dict[str, MethodStyle], title: str) -> Figure | None:
    """The paper's main figure: spliced CE per method over K, against the clean model's CE."""
    if not _has(frame, "ce_spliced"):
        return None
    fig, ax = plt.subplots(figsize=(6.8, 4.2), layout="constrained")
    _method_lines(ax, frame, "ce_spliced", "delta_ce_stderr", styles)
    clean, zero = _median(frame, "ce_clean"), _median(frame, "ce_zero")
    if clean is not None:
        ax.axhline(clean, color="black", ls="--", lw=1.2, label=f"clean model ({clean:.4f})")
    shown = _with_errors(frame, "ce_spliced", "delta_ce_stderr") + ([clean] if clean is not None else [])
    span = max(max(shown) - min(shown), 1e-3)
    if zero is not None and zero <= max(shown) + 2 * span:  # only if it leaves the data readable
        ax.axhline(zero, color="0.3", ls=":", lw=1.4, label=f"zero-ablated ({zero:.4f})")
        shown.append(zero)
    elif zero is not None:
        title += f"\nzero-ablated MLP: CE {zero:.4f} (off this scale)"
    pad_y(ax, shown)
    ax.ticklabel_format(axis="y", useOffset=False)
    k_axis(ax, frame["k"])
    ax.set_ylabel("CE with layer spliced (nats/token)")
    ax.set_title(title)
    legend_right(ax)
    return fig


def plot_metric_vs_k(spec: MetricSpec, frame: pd.DataFrame, styles: dict[str, MethodStyle],
                     title: str) -> Figure | None:
    """One metric over K (NMSE, KL, ...); log y when methods differ by orders of magnitude."""
    if not _has(frame, spec.name):
        return None
    fig, ax = plt.subplots(figsize=(6.8, 4.2), layout="constrained")
    _method_lines(ax, frame, spec.name, spec.stderr, styles)
    log_y_if_wide(ax, frame[spec.name])
    k_axis(ax, frame["k"])
    ax.set_ylabel(spec.axis_label)
    ax.set_title(title)
    legend_right(ax)
    return fig


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats on both x and y (lower is better on both)."""
    mask = np.zeros(len(x), dtype=bool)
    best = math.inf
    for i in np.lexsort((y, x)):
        if y[i] < best:
            mask[i], best = True, y[i]
    return mask


def _pareto_panel(ax: Axes, frame: pd.DataFrame, x: str, styles: dict[str, MethodStyle]) -> None:
    points = frame.dropna(subset=[x, "delta_ce"]).copy()
    if x == "n_params":
        points[x] = points[x] / 1e6  # millions: parameter-matched methods differ in the 4th digit
    for method in ordered_methods(points["method"]):
        sub = points[points["method"] == method]
        style = styles[method]
        ax.scatter(sub[x], sub["delta_ce"], color=style.color, marker=style.marker, s=42, label=method, zorder=3)
    front = points[pareto_front(points[x].to_numpy(float), points["delta_ce"].to_numpy(float))].sort_values(x)
    ax.step(front[x], front["delta_ce"], where="post", color="black", lw=1.0, alpha=0.7, zorder=2,
            label="Pareto frontier")
    ax.scatter(front[x], front["delta_ce"], s=130, facecolors="none", edgecolors="black", lw=1.0, zorder=4)
    if (points[x] > 0).all() and points[x].max() / points[x].min() >= 4:
        ax.set_xscale("log", base=2 if x == "l0" else 10)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.locator_params(axis="x", nbins=5)
    log_y_if_wide(ax, points["delta_ce"])
    ax.set_xlabel("L0 (mean active units per token)" if x == "l0" else "parameters (millions)")
    ax.set_ylabel("ΔCE (spliced − clean)")


def _params_spread(frame: pd.DataFrame) -> tuple[float, float] | None:
    """(smallest, largest) parameter count of the plotted cells, None when none was recorded."""
    if not _has(frame, "n_params", "delta_ce"):
        return None
    params = frame.dropna(subset=["n_params", "delta_ce"])["n_params"]
    return (float(params.min()), float(params.max())) if (params > 0).all() else None


def plot_pareto(frame: pd.DataFrame, styles: dict[str, MethodStyle], title: str) -> Figure | None:
    """CE increase against sparsity (L0) and against size (params); circled points are the frontier.

    Parameter-matched methods (sizes within PARAMS_MATCHED of each other) get no params panel: its
    points would share one x and say nothing; the title gives the matched size instead."""
    axes_x = [x for x in ("l0", "n_params") if _has(frame, x, "delta_ce")]
    spread = _params_spread(frame)
    if spread and spread[1] / spread[0] - 1 < PARAMS_MATCHED and len(axes_x) > 1:
        axes_x.remove("n_params")
        low, high = _human(spread[0]), _human(spread[1])
        title += f"\nparameter-matched: {low if low == high else f'{low}–{high}'} parameters per cell"
    if not axes_x:
        return None
    fig, axes = plt.subplots(1, len(axes_x), figsize=(4.4 * len(axes_x) + 1.6, 4.0), layout="constrained",
                             squeeze=False)
    for ax, x in zip(axes[0], axes_x):
        _pareto_panel(ax, frame, x, styles)
    _legend_below(fig, axes[0])
    fig.suptitle(title)
    return fig


def plot_tasks_vs_k(frame: pd.DataFrame, styles: dict[str, MethodStyle], title: str) -> Figure | None:
    """Downstream accuracy per task over K, between the clean and zero-ablated model's scores."""
    pairs = task_metrics(frame)
    if not pairs:
        return None
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols + 1.6, 3.3 * nrows + 0.5),
                             layout="constrained", squeeze=False)
    for ax, (task, metric) in zip(axes.flat, pairs):
        _method_lines(ax, frame, f"tasks.{task}.{metric}", f"tasks.{task}.{metric}_stderr", styles, dodge=0.06)
        shown = _with_errors(frame, f"tasks.{task}.{metric}", f"tasks.{task}.{metric}_stderr")
        for group, style, name in (("tasks_clean", "--", "clean model"), ("tasks_zero", ":", "zero-ablated")):
            value = _median(frame, f"{group}.{task}.{metric}")
            if value is not None:
                ax.axhline(value, color="black" if group == "tasks_clean" else "0.3", ls=style, lw=1.2, label=name)
                shown.append(value)
        pad_y(ax, shown)
        ax.ticklabel_format(axis="y", useOffset=False)
        k_axis(ax, frame["k"])
        ax.set_title(task)
        ax.set_ylabel(f"{metric} (layer spliced)")
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    _legend_below(fig, list(axes.flat))
    fig.suptitle(title)
    return fig


def _histograms(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells that recorded a selection-frequency histogram (rows from before it existed have none)."""
    if "selection_frequency_histogram" not in frame.columns:
        return frame.iloc[:0]
    recorded = frame["selection_frequency_histogram"].map(
        lambda h: isinstance(h, (list, tuple)) and len(h) == len(HISTOGRAM_BUCKETS) and sum(h) > 0)
    return frame[recorded]


def plot_firing_frequency(frame: pd.DataFrame, styles: dict[str, MethodStyle], title: str) -> Figure | None:
    """Small multiples, method x K: each cell's share of units per decade of training selection frequency,
    so a cell that leaves units unused and one that spreads selections evenly look different at a glance.
    Shares, not counts: methods select among different numbers of units (latents or experts)."""
    cells = _histograms(frame)
    if cells.empty:
        return None
    methods, ks = ordered_methods(cells["method"]), sorted(cells["k"].unique())
    fig, axes = plt.subplots(len(methods), len(ks), figsize=(2.6 * len(ks) + 0.8, 1.45 * len(methods) + 1.4),
                             layout="constrained", squeeze=False, sharex=True, sharey=True)
    positions = np.arange(len(HISTOGRAM_BUCKETS))
    for (i, method), (j, k) in ((m, c) for m in enumerate(methods) for c in enumerate(ks)):
        ax = axes[i, j]
        cell = cells[(cells["method"] == method) & (cells["k"] == k)]
        ax.set_title(f"{method} · K={k}", fontsize=8.5)
        if cell.empty:  # a cell that failed, or one from before the histogram existed
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="0.4")
            continue
        counts = np.asarray(cell.iloc[0]["selection_frequency_histogram"], dtype=float)
        ax.bar(positions, counts / counts.sum(), color=styles[method].color, width=0.8)
        ax.set_ylim(0, 1)
        ax.grid(axis="x", visible=False)
    for ax in axes[-1]:
        ax.set_xticks(positions, HISTOGRAM_BUCKETS, rotation=60, ha="right", fontsize=7)
    fig.supxlabel("selection frequency in training (selections / training tokens)", fontsize=9)
    fig.supylabel("share of units", fontsize=9)
    fig.suptitle(title)
    return fig


def plot_overview(frame: pd.DataFrame, styles: dict[str, MethodStyle]) -> Figure | None:
    """One panel per (model, layer): delta CE over K, the quickest read of a whole run."""
    groups = [(key, g) for key, g in frame.groupby(["model", "layer"], sort=True) if _has(g, "delta_ce")]
    if not groups:
        return None
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols + 1.6, 3.3 * nrows + 0.6),
                             layout="constrained", squeeze=False)
    for ax, ((model, layer), group) in zip(axes.flat, groups):
        _method_lines(ax, group, "delta_ce", "delta_ce_stderr", styles)
        log_y_if_wide(ax, group["delta_ce"])
        if ax.get_yscale() == "linear":
            ax.axhline(0.0, color="black", ls="--", lw=1.0)
        k_axis(ax, group["k"])
        ax.set_title(_title(model, layer, group), fontsize=9.5)
        ax.set_ylabel("ΔCE (spliced − clean)")
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    _legend_below(fig, list(axes.flat))
    fig.suptitle("CE increase with the MLP layer spliced in, every model")
    return fig


def figure_makers() -> dict[str, Callable[[pd.DataFrame, dict[str, MethodStyle], str], Figure | None]]:
    """Figure kind -> the function that draws it, one "<metric>_vs_k" per metric marked for figures."""
    return {
        "ce_vs_k": plot_ce_vs_k,
        **{f"{spec.name}_vs_k": partial(plot_metric_vs_k, spec) for spec in shown_in(FIGURE)},
        "pareto": plot_pareto,
        "tasks_vs_k": plot_tasks_vs_k,
        "firing_frequency": plot_firing_frequency,
    }


def _save(fig: Figure | None, stem: Path) -> list[Path]:
    if fig is None:
        return []
    try:
        return save_figure(fig, stem)
    finally:
        plt.close(fig)


def plot_results(paths: Sequence[Path] | Path, out_dir: Path) -> list[Path]:
    """Write every figure the stored rows support to out_dir; returns the PNG and PDF paths written."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    frame = load_results(paths)
    out_dir = Path(out_dir)
    if frame.empty:
        log.warning("no successful cells in %s: nothing to plot", ", ".join(map(str, paths)))
        return []
    styles = method_styles(frame["method"])
    written: list[Path] = []
    with plt.rc_context(RC):
        for (model, layer), group in frame.groupby(["model", "layer"], sort=True):
            title = _title(model, layer, group)
            for kind, make in figure_makers().items():
                written += _save(make(group, styles, title), out_dir / figure_stem(model, layer, kind))
        written += _save(plot_overview(frame, styles), out_dir / OVERVIEW_STEM)
    return written
