"""Which figures a run gets and what their files are called: shared by ``bench plot`` (which draws
them) and REPORT.md (which links them), without importing matplotlib."""
from __future__ import annotations

import re

from bench.metrics import FIGURE, shown_in

OVERVIEW_STEM = "overview_delta_ce_vs_k"


def figure_titles() -> dict[str, str]:
    """Figure kind -> its title in REPORT.md, in drawing order; every metric shown in figures gets
    its own "<metric>_vs_k" kind."""
    titles = {"ce_vs_k": "CE with the layer spliced vs K"}
    titles.update({f"{spec.name}_vs_k": f"{spec.label} vs K" for spec in shown_in(FIGURE)})
    titles["pareto"] = "Pareto frontier: CE increase vs L0 and vs parameters"
    titles["tasks_vs_k"] = "Task accuracy vs K"
    return titles


def figure_kinds() -> tuple[str, ...]:
    return tuple(figure_titles())


def sanitize(name: str) -> str:
    """A model name as a file-name fragment: 'EleutherAI/pythia-410m' -> 'EleutherAI_pythia-410m'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return cleaned or "model"


def figure_stem(model: str, layer: int, kind: str) -> str:
    """File name without extension, e.g. 'EleutherAI_pythia-410m_L15_ce_vs_k'."""
    return f"{sanitize(model)}_L{int(layer)}_{kind}"
