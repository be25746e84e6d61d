"""Where a run reports: stderr for the person watching, ``run.log`` in the run directory for later,
and Weights & Biases when the user asks for it (``--wandb``) and the package is installed."""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

LOGGER = logging.getLogger("mxbench")
LOG_FILE = "run.log"


def note(message: str) -> None:
    """A line for the user (printed without breaking the progress bars) and for the log."""
    tqdm.write(message, file=sys.stderr)
    LOGGER.info(message)


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[logging.Logger]:
    """Append this run's messages to ``run_dir/run.log`` while the block runs."""
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    try:
        yield LOGGER
    finally:
        LOGGER.removeHandler(handler)
        handler.close()


class MetricsSink:
    """Optional wandb logging; a no-op unless enabled. Never required to run the suite."""

    def __init__(self, enabled: bool, project: str, run_name: str, config: dict[str, Any]) -> None:
        self._run = None
        if not enabled:
            return
        try:
            import wandb
        except ImportError:
            raise ValueError("--wandb needs the wandb package: pip install wandb") from None
        self._run = wandb.init(project=project, name=run_name, config=config, reinit=True)

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if self._run is not None:
            self._run.log(values, step=step)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def progress(description: str, total: int) -> tqdm:
    """A progress bar on stderr: tokens (scaled, k/M) for big totals, items for small ones."""
    return tqdm(total=total, desc=description, unit="tok" if total > 1000 else "it", unit_scale=True,
                dynamic_ncols=True, leave=True)
