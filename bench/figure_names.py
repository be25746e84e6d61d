"""Which figures a run gets, what their files are called and where they go: shared by ``bench plot``
(which draws them), REPORT.md (which links them) and ``bench run``, without importing matplotlib.

Where figures go, one rule: the figures of run directory ``R/<run>`` go to ``figures/<run>/`` beside
the results directory ``R`` (``R/../figures/<run>``), the repository's own layout of ``results/`` and
``figures/`` side by side, for any ``--results-dir``: never under the current directory. A figures
root given on the command line (``--figures-dir`` of ``bench run``, ``--out`` of ``bench plot``,
``--figures`` of ``bench report``) sends them to ``<root>/<run name>/`` instead. ``bench run
--results-dir R`` and ``bench plot R/<run>`` agree because both ask ``figures_dir_for`` about the
same run directory.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

from bench.metrics import FIGURE, shown_in

OVERVIEW_STEM = "overview_delta_ce_vs_k"
FIGURES_SUBDIR = "figures"
DEFAULT_RESULTS = "results"


class RunsNotFound(ValueError):
    """A path given as a run or results directory holds no run."""


def figure_titles() -> dict[str, str]:
    """Figure kind -> its title in REPORT.md, in drawing order; every metric shown in figures gets
    its own "<metric>_vs_k" kind."""
    titles = {"ce_vs_k": "CE with the layer spliced vs K"}
    titles.update({f"{spec.name}_vs_k": f"{spec.label} vs K" for spec in shown_in(FIGURE)})
    titles["pareto"] = "Pareto frontier: CE increase vs L0 (and vs parameters where methods differ in size)"
    titles["tasks_vs_k"] = "Task accuracy vs K"
    titles["firing_frequency"] = "Firing frequency in training: share of units per decade of selection frequency"
    return titles


def figure_kinds() -> tuple[str, ...]:
    return tuple(figure_titles())


def sanitize(name: str) -> str:
    """A model name as a file-name fragment: 'EleutherAI/pythia-410m' -> 'EleutherAI_pythia-410m'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return cleaned or "model"


def display_name(model: str) -> str:
    """A model as titles and file names show it: an alias or hub id ('org/name') as given; a local
    path by its directory's own name ('/tmp/x/llama-3b' -> 'llama-3b'), and a Hugging Face cache
    snapshot ('.../models--org--name/snapshots/<hash>') by its repository id ('org/name').

    The directory's name, not the ``_name_or_path`` in its config.json: a model fine-tuned from a
    hub model keeps the base model's ``_name_or_path``, which would name it after its parent.
    """
    model = str(model)
    windows = "\\" in model or re.match(r"^[A-Za-z]:", model) is not None
    path = PureWindowsPath(model) if windows else PurePosixPath(model)
    if not (windows or model.startswith(("/", "~", ".")) or len(path.parts) > 2):
        return model  # an alias or a hub id
    for part in reversed(path.parts):
        if part.startswith("models--"):
            return "/".join(part.split("--")[1:])
    return path.name or model


def figure_stem(model: str, layer: int, kind: str) -> str:
    """File name without extension, e.g. 'EleutherAI_pythia-410m_L15_ce_vs_k'."""
    return f"{sanitize(display_name(model))}_L{int(layer)}_{kind}"


def figures_dir_for(run_dir: str | Path, figures_root: str | Path | None = None) -> Path:
    """Where the figures of ``run_dir`` go: ``figures/<run>`` beside its results directory by default,
    ``<figures_root>/<run name>`` when a root is given (see the module's docstring)."""
    run_dir = Path(run_dir)
    if run_dir.name == "cells.jsonl":
        run_dir = run_dir.parent
    root = run_dir.parent.parent / FIGURES_SUBDIR if figures_root is None else Path(figures_root)
    return root / run_dir.name


def find_run_dirs(paths: Sequence[str | Path] = ()) -> list[Path]:
    """The run directories ``paths`` name: a run directory (it holds cells.jsonl) stands for itself,
    a results directory for every run directly inside it; no paths means ./results."""
    given = [Path(p) for p in paths] or [Path(DEFAULT_RESULTS)]
    found: list[Path] = []
    for path in given:
        if (path / "cells.jsonl").is_file() or (path.name == "cells.jsonl" and path.is_file()):
            found.append(path.parent if path.name == "cells.jsonl" else path)
            continue
        runs = sorted(p.parent for p in path.glob("*/cells.jsonl"))
        if not runs:
            what = "no such directory" if not path.exists() else "neither a run directory (cells.jsonl) nor a " \
                                                                  "results directory holding runs"
            raise RunsNotFound(f"{path}: {what}; give results/<run> or a results directory")
        found += runs
    return list(dict.fromkeys(found))
