"""The learning-curve figure: ΔCE ± its paired standard error against training tokens, one line per
(method, K), on a log-2 token axis whose ticks are exactly the budgets that were run. Same colours,
markers, fonts and deterministic saving as every other figure (``bench.style``).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display, and renders identically everywhere

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from bench.learning_curve import LearningCurve  # noqa: E402
from bench.style import RC, log_y_if_wide, method_styles, save_figure  # noqa: E402

CURVE_STEM = "learning_curve_delta_ce"
LINESTYLES = ("-", "--", ":", "-.")  # one per K, when a curve holds several
DODGE = 0.04  # octaves between neighbouring lines at one budget, so their error bars stay apart


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tokens_label(value: float) -> str:
    """65,536 -> '65.5k', 1,048,576 -> '1.05M': three digits are enough to tell budgets apart."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:g}"


def tokens_axis(ax: Axes, budgets: list[int]) -> None:
    """log2 x axis whose ticks are exactly the training budgets that were run."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(budgets))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tokens_label(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(budgets[0] / 1.4, budgets[-1] * 1.4)
    ax.set_xlabel("training tokens per cell")


def draw_learning_curve(curve: LearningCurve) -> Figure:
    """The figure; each line's data is its (method, K)'s finite ΔCE points, x shifted by a fraction of an
    octave per line (DODGE) so that error bars at one budget do not overlap."""
    lines = curve.lines()
    styles = method_styles(method for method, _ in lines)
    ks = sorted({k for _, k in lines})
    fig, ax = plt.subplots(figsize=(6.8, 4.2), layout="constrained")
    for i, ((method, k), points) in enumerate(lines.items()):
        shown = [p for p in points if _finite(p["delta_ce"])]
        if not shown:
            continue
        shift = 2.0 ** (DODGE * (i - (len(lines) - 1) / 2))
        errors = [p["delta_ce_stderr"] if _finite(p["delta_ce_stderr"]) else 0.0 for p in shown]
        style = styles[method]
        ax.errorbar([p["train_tokens"] * shift for p in shown], [p["delta_ce"] for p in shown], yerr=errors,
                    color=style.color, marker=style.marker, ls=LINESTYLES[ks.index(k) % len(LINESTYLES)],
                    label=method if len(ks) == 1 else f"{method} K={k}", lw=1.6, ms=5.5, capsize=2.5, elinewidth=1)
    tokens_axis(ax, sorted({p["train_tokens"] for p in curve.points}))
    log_y_if_wide(ax, pd.Series([p["delta_ce"] for p in curve.points if _finite(p["delta_ce"])], dtype=float))
    ax.set_ylabel("ΔCE (spliced − clean, nats/token)")
    ax.set_title(f"{curve.title}\nCE increase vs training tokens")
    # Lines in drawing order (methods in their fixed order, then K), outside the axes so none is covered.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, borderaxespad=0.0)
    return fig


def plot_learning_curve(curve: LearningCurve, out_dir: Path) -> list[Path]:
    """Write learning_curve_delta_ce.png and .pdf into out_dir; returns their paths."""
    with plt.rc_context(RC):
        fig = draw_learning_curve(curve)
        try:
            return save_figure(fig, Path(out_dir) / CURVE_STEM)
        finally:
            plt.close(fig)
