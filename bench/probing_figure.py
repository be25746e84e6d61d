"""The figures no peer draws: each cell's probing F1 against its CE increase, so faithfulness and
interpretability are read off one plot. One point per cell (labelled by K) with error bars on both
axes; the base MLP's neurons and random projections of the cells' widths are horizontal reference
lines; the dense probe on the MLP input is the ceiling. Drawn only for runs with ``probing.jsonl``.

Beside it, for runs where ``bench steer`` has run, each steered cell's steering scores against its
ΔCE (``plot_steering``), read from the joined results frame: the coherence PROXY (labelled so on the
axis; a judge's score is in REPORT.md's table, not plotted, since few cells get judged) and the
steered samples' perplexity, with the unsteered samples' perplexity as the reference line.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from bench.figure_names import figure_stem  # noqa: E402
from bench.metrics import metric  # noqa: E402
from bench.probing.store import ProbeStore  # noqa: E402
from bench.probing.summary import probing_points  # noqa: E402
from bench.report_scores import PROBING_FIGURE, STEERING_FIGURE  # noqa: E402
from bench.results_frame import load_results, ordered_methods  # noqa: E402
from bench.style import RC, legend_right, method_styles, save_figure  # noqa: E402

PROBING_KIND, STEERING_KIND = PROBING_FIGURE, STEERING_FIGURE  # named where REPORT.md links them
REFERENCE_LINES = {"baseline:mlp-neurons": ("MLP neurons", "--"), "baseline:random-projection": ("random projection", ":")}


def plot_probing(run_dir: Path, out_dir: Path, probe: str = "k-sparse", probe_k: int = 1) -> list[Path]:
    """Write the probing-vs-ΔCE figure of each (model, layer) of ``run_dir``; returns the files."""
    rows = ProbeStore(run_dir).rows()
    if not rows:
        return []
    written: list[Path] = []
    points = probing_points(rows, probe, probe_k)
    ceiling = {(p["model"], p["layer"]): p["f1"] for p in probing_points(rows, "dense", None)}
    for model, layer in sorted({(p["model"], p["layer"]) for p in points}):
        here = [p for p in points if (p["model"], p["layer"]) == (model, layer)]
        cells = [p for p in here if p["kind"] == "cell" and p.get("delta_ce") is not None]
        if not cells:
            continue
        with plt.rc_context(RC):
            fig, ax = plt.subplots(figsize=(6.8, 4.4), layout="constrained")
            styles = method_styles(p["method"] for p in cells)
            for method in ordered_methods(p["method"] for p in cells):
                mine = sorted((p for p in cells if p["method"] == method), key=lambda p: p["k"] or 0)
                style = styles[method]
                ax.errorbar([p["delta_ce"] for p in mine], [p["f1"] for p in mine],
                            xerr=[p.get("delta_ce_stderr") or 0 for p in mine], yerr=[p["f1_se"] for p in mine],
                            color=style.color, marker=style.marker, lw=1.2, capsize=2.5, label=method)
                for p in mine:
                    ax.annotate(f"K={p['k']}", (p["delta_ce"], p["f1"]), textcoords="offset points", xytext=(4, 3),
                                fontsize=7.5, color=style.color)
            for key, (label, dash) in REFERENCE_LINES.items():
                levels = [p["f1"] for p in here if p["method"] == key]
                if levels:
                    ax.axhline(sum(levels) / len(levels), color="0.35", ls=dash, lw=1.1, label=label)
            if (model, layer) in ceiling:
                ax.axhline(ceiling[(model, layer)], color="black", ls="-.", lw=1.1, label="dense probe (ceiling)")
            ax.set_xlabel("ΔCE with the layer spliced (lower: more faithful)")
            ax.set_ylabel(f"probing F1, {probe} k={probe_k} (higher: more interpretable)")
            ax.set_title(f"{model} · layer {layer}: interpretability vs faithfulness")
            legend_right(ax)
            written += save_figure(fig, Path(out_dir) / figure_stem(model, layer, PROBING_KIND))
            plt.close(fig)
    return written


def plot_steering(run_dir: Path, out_dir: Path) -> list[Path]:
    """Write the steering-vs-ΔCE figure of each (model, layer) with steered cells; returns the files."""
    frame = load_results(run_dir)
    if "steering.units" not in frame.columns:
        return []
    steered = frame[frame["steering.units"].notna() & frame["delta_ce"].notna()]
    written: list[Path] = []
    for (model, layer), cells in steered.groupby(["model", "layer"], sort=True):
        with plt.rc_context(RC):
            fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), layout="constrained")
            styles = method_styles(cells["method"])
            for ax, spec in zip(axes, (metric("steering.coherence_proxy"), metric("steering.perplexity"))):
                for method in ordered_methods(cells["method"]):
                    mine = cells[cells["method"] == method].sort_values("k")
                    ax.errorbar(mine["delta_ce"], mine[spec.name], xerr=_errors(mine, "delta_ce_stderr"),
                                yerr=_errors(mine, spec.stderr), color=styles[method].color,
                                marker=styles[method].marker, lw=1.2, capsize=2.5, label=method)
                    for _, p in mine.iterrows():
                        ax.annotate(f"K={p['k']}", (p["delta_ce"], p[spec.name]), textcoords="offset points",
                                    xytext=(4, 3), fontsize=7.5, color=styles[method].color)
                ax.set_xlabel("ΔCE with the layer spliced (lower: more faithful)")
                ax.set_ylabel(spec.axis_label)
            baseline = cells["steering.baseline_perplexity"].mean() if "steering.baseline_perplexity" in cells else None
            if baseline is not None and baseline == baseline:
                axes[1].axhline(baseline, color="0.35", ls="--", lw=1.1, label="unsteered samples")
            axes[0].set_title("coherence (offline proxy, not a judge), mean over steered units")
            axes[1].set_title("fluency: clean-model perplexity (lower: more fluent)")
            fig.suptitle(f"{model} · layer {layer}: steering vs faithfulness")
            legend_right(axes[1])
            written += save_figure(fig, Path(out_dir) / figure_stem(model, layer, STEERING_KIND))
            plt.close(fig)
    return written


def _errors(frame, column: str | None):
    """A column of standard errors for error bars, 0 where missing; None when the frame has none."""
    return frame[column].fillna(0) if column and column in frame else None
