"""Shared look of every mxbench figure: one colour and marker per method, fonts, deterministic saving.

A method keeps the same colour and marker in every figure of a run, so a reader learns the key
once. Colours come from seaborn's colour-blind-safe palette, assigned by a fixed method order;
methods the suite does not know (plugins) follow in alphabetical order, so the assignment never
depends on the order rows happen to arrive in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatter, NullLocator

from bench.results_frame import METHOD_ORDER, ordered_methods

# Palette slot per built-in method in seaborn's "colorblind" palette: method families get related
# hues (tc/stc blues, mxd/mxd-glu vermillion/orange); plugins take the leftover slots 7, 8, then cycle.
_SLOTS: tuple[int, ...] = (0, 9, 2, 3, 1, 4, 5, 6)
_PLUGIN_SLOTS: tuple[int, ...] = (7, 8, 0, 9, 2, 3, 1, 4, 5, 6)
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
DPI = 150
K_LABEL = "K (active units per token)"
REFERENCE_LABELS = ("clean model", "zero-ablated", "Pareto frontier")  # legend labels that are not methods

# Fonts sized for a figure read at its saved size; used through plt.rc_context, never globally.
RC: dict[str, object] = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 11.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "mxbench",
}

# Timestamps and version strings in file metadata are what make re-saved figures differ.
# No dates or paths: the same rows give the same bytes. The matplotlib version is kept, since
# another version may draw the same figure with different bytes (tests compare bytes only then).
_WRITER = f"mxbench, matplotlib {matplotlib.__version__}"
_METADATA = {
    "png": {"Software": _WRITER},
    "pdf": {"CreationDate": None, "ModDate": None, "Creator": _WRITER, "Producer": None},
}


class MethodStyle(NamedTuple):
    color: str
    marker: str


def method_styles(methods: Iterable[str]) -> dict[str, MethodStyle]:
    """Colour and marker per method: built-ins keep fixed slots, plugins take the next ones."""
    palette = sns.color_palette("colorblind", 10).as_hex()
    palette[8] = "#c9b800"  # the palette's yellow, darkened: the original vanishes on white
    styles = {m: MethodStyle(palette[_SLOTS[i]], MARKERS[i]) for i, m in enumerate(METHOD_ORDER)}
    extra = [m for m in ordered_methods(methods) if m not in METHOD_ORDER]
    for i, m in enumerate(extra):
        n = len(METHOD_ORDER) + i
        styles[m] = MethodStyle(palette[_PLUGIN_SLOTS[i % len(_PLUGIN_SLOTS)]], MARKERS[n % len(MARKERS)])
    return styles


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write stem.png and stem.pdf with volatile metadata stripped, so re-runs give identical files."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{ext}")
        fig.savefig(path, dpi=DPI, metadata=_METADATA[ext])
        written.append(path)
    return written


# ----------------------------------------------------------------------------- axes and legends

def k_axis(ax: Axes, ks: Iterable[float]) -> None:
    """log2 x axis whose ticks are exactly the K values that were run."""
    values = sorted({int(k) for k in ks if k > 0})
    if not values:
        return
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(values[0] / 1.4, values[-1] * 1.4)
    ax.set_xlabel(K_LABEL)


class _PlainLogFormatter(LogFormatter):
    """Matplotlib's choice of which log ticks to label, written '0.03' rather than '3e-02'."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def log_y_if_wide(ax: Axes, values: pd.Series) -> None:
    """Log y when positive values span >= 20x (e.g. MxD vs TC delta CE); plain numbers otherwise."""
    values = values.dropna()
    if len(values) and (values > 0).all() and values.max() / values.min() >= 20:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_PlainLogFormatter())
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))
    else:
        ax.ticklabel_format(axis="y", useOffset=False)  # never a '+3.6' offset on CE ticks


def pad_y(ax: Axes, values: list[float], pad: float = 0.06) -> None:
    """Limits that leave reference lines off the axis spines (axhline alone can land on them)."""
    if not values:
        return
    lo, hi = min(values), max(values)
    margin = pad * (hi - lo) if hi > lo else max(abs(hi) * 0.01, 1e-3)
    ax.set_ylim(lo - margin, hi + margin)


def legend_entries(axes: Sequence[Axes]) -> tuple[list, list[str]]:
    """Handles and labels of all panels, methods first in their fixed order, reference lines after."""
    entries: dict[str, object] = {}
    for ax in axes:
        entries.update(zip(*reversed(ax.get_legend_handles_labels())))
    methods = ordered_methods(label for label in entries if not label.startswith(REFERENCE_LABELS))
    labels = methods + [label for label in entries if label not in methods]
    return [entries[label] for label in labels], labels


def figure_legend(fig: Figure, axes: Sequence[Axes]) -> None:
    fig.legend(*legend_entries(axes), loc="outside right upper", frameon=False)


def legend_right(ax: Axes) -> None:
    """Outside the axes, so it can never cover a line."""
    ax.legend(*legend_entries([ax]), loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              borderaxespad=0.0)
