"""The figure no peer draws: each cell's probing F1 against its CE increase, so faithfulness and
interpretability are read off one plot. One point per cell (labelled by K) with error bars on both
axes; the base MLP's neurons and random projections of the cells' widths are horizontal reference
lines; the dense probe on the MLP input is the ceiling. Drawn only for runs with ``probing.jsonl``.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from bench.figure_names import figure_stem  # noqa: E402
from bench.probing.store import ProbeStore  # noqa: E402
from bench.probing.summary import probing_points  # noqa: E402
from bench.results_frame import ordered_methods  # noqa: E402
from bench.style import RC, legend_right, method_styles, save_figure  # noqa: E402

PROBING_KIND = "probing_vs_delta_ce"
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
