"""Where a run reports: stderr for the person watching, ``run.log`` in the run directory for later,
and Weights & Biases when the user asks for it (``--wandb``) and the package is installed."""
from __future__ import annotations

import contextlib
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

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


def progress(description: str, total: int, initial: int = 0, smoothing: float = 0.3) -> tqdm:
    """A progress bar on stderr: tokens (scaled, k/M) for big totals, items for small ones.

    ``initial`` is work done before this bar (a resumed run): shown, but not counted in the rate.
    ``smoothing=0`` makes the rate (and so the ETA) the average since the bar started, which is
    the honest one for work that stalls in bursts (the training bar, between buffer refills)."""
    return tqdm(total=total, initial=initial, desc=description, unit="tok" if total > 1000 else "it",
                unit_scale=True, dynamic_ncols=True, leave=True, smoothing=smoothing)


ROTATE_SECONDS = 2.0  # how long the training bar shows each cell's loss before the next one's


def loss_postfix(losses: Sequence[tuple[str, float]], turn: int) -> str:
    """The training bar's loss readout. Up to three cells: each one's last loss. More: the lowest,
    median and highest (naming the cells at the ends), how many are not finite, and one cell in
    ``turn`` (the caller advances it every ROTATE_SECONDS), so that every cell is seen in time."""
    if len(losses) <= 3:
        return " ".join(f"{name}:{loss:.3f}" for name, loss in losses)
    finite = sorted((loss, name) for name, loss in losses if math.isfinite(loss))
    parts = []
    if finite:
        median = statistics.median(loss for loss, _ in finite)
        parts.append(f"loss min {finite[0][0]:.3f} ({finite[0][1]}) med {median:.3f} "
                     f"max {finite[-1][0]:.3f} ({finite[-1][1]})")
    if len(finite) < len(losses):
        parts.append(f"{len(losses) - len(finite)} not finite")
    name, loss = losses[turn % len(losses)]
    parts.append(f"{name}:{loss:.3f} [{turn % len(losses) + 1}/{len(losses)}]")
    return " | ".join(parts)


Item = TypeVar("Item")


class BufferFill:
    """Says on the training bar when the shuffle buffer is filling (LM forwards, no training step),
    so a bar at 0% for minutes, or one that stops at each refill, is explained rather than frozen.

    ``watch`` wraps the activation source: every chunk drawn from it while no training step has
    come since is buffer filling. ``first_target`` is the rows the first fill needs; refills
    draw about half a buffer, which is shown as rows drawn so far."""

    def __init__(self, bar: tqdm, first_target: int, interval: float = 0.5) -> None:
        self.bar, self.target, self.interval = bar, first_target, interval
        self.rows, self.first, self._shown = 0, True, -math.inf

    def watch(self, chunks: Iterator[Item]) -> Iterator[Item]:
        for chunk in chunks:
            self.drawn(len(chunk[0]))
            yield chunk

    def drawn(self, rows: int) -> None:
        self.rows += rows
        if time.monotonic() - self._shown < self.interval:
            return
        self._shown = time.monotonic()
        unit = lambda n: tqdm.format_sizeof(n)  # noqa: E731  (12.3k, as the bar writes tokens)
        amount = f"{unit(self.rows)}/{unit(self.target)}" if self.first else unit(self.rows)
        what = "filling" if self.first else "refilling"
        self.bar.set_postfix_str(f"{what} the shuffle buffer: {amount} activation rows", refresh=True)

    def served(self) -> None:
        """A training step came: the fill (if any) is over."""
        self.rows, self.first = 0, False
