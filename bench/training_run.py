"""The train stage: every cell of a group steps on one shuffled activation stream, with the
training state saved every few minutes (and on Ctrl-C) so an interrupted run resumes."""
from __future__ import annotations

import time

from bench.activations import shuffled_batches
from bench.config import lr_for
from bench.logs import LOGGER, ROTATE_SECONDS, BufferFill, loss_postfix, note, progress
from bench.losses import make_loss
from bench.rows import identity
from bench.run_context import RunContext
from bench.train import AuxKSettings, Cell, OptimiserSettings, build_cell, train_cells
from bench.training_source import TokenCounter, training_source
from bench.training_state import StateNotSaved, load_progress, restore_cells, save_training_state


def build_cells(ctx: RunContext, group: list[tuple[str, int]]) -> list[Cell]:
    cfg = ctx.cfg
    loss = make_loss(cfg.loss, ctx.model, ctx.layer)  # stateless (a frozen norm at most): one for all cells
    aux = AuxKSettings(cfg.aux_k_coef, cfg.aux_k, cfg.dead_window)
    return [build_cell(m, ctx.spec, k, cfg.expansion, OptimiserSettings(lr=lr_for(cfg, m), warmup_steps=cfg.warmup_steps),
                       cfg.seed, ctx.device, ctx.autocast, cfg.compile, loss=loss, aux=aux) for m, k in group]


def resume_key(ctx: RunContext) -> dict:
    """The settings a saved training state must match to be resumed: a cell's identity (rows.identity)
    less what differs between the cells of one group."""
    key = {k: v for k, v in identity(ctx.base_row).items() if k not in ("method", "k", "method_config")}
    return {**key, "method_lr": ctx.base_row.get("method_lr")}


class CheckpointedTraining:
    """Trains one group of cells; owns the stepping schedule, the progress bar and the saves."""

    def __init__(self, ctx: RunContext, cells: list[Cell], step_offset: int = 0) -> None:
        self.ctx, self.cells, self.step_offset = ctx, cells, step_offset
        self.served = self.drawn = 0
        self.last_save = time.monotonic()

    def resume(self) -> None:
        saved = load_progress(self.ctx.training_dir, self.cells, resume_key(self.ctx))
        if saved:
            restore_cells(self.ctx.training_dir, self.cells, saved)
            self.served, self.drawn = saved["tokens_served"], saved["tokens_drawn"]
            for cell in self.cells:  # the rows say so: a resumed cell skipped the lost shuffle buffer's tokens
                cell.resumed_at_tokens = self.served
            note(f"resuming {len(self.cells)} cells at {self.served:,} of {self.ctx.cfg.train_tokens:,} tokens")

    def save(self, counter: TokenCounter, training_done: bool = False) -> bool:
        """Snapshot every cell; a save the disk refuses keeps the previous snapshot and training goes on."""
        try:
            save_training_state(self.ctx.training_dir, self.cells, self.served, counter.tokens, resume_key(self.ctx),
                                training_done=training_done)
        except StateNotSaved as error:
            note(f"warning: {error}; training goes on and the next save tries again")
            return False
        return True

    def run(self) -> None:
        cfg = self.ctx.cfg
        self.resume()
        source, writer = training_source(self.ctx, self.drawn)
        counter = TokenCounter(source, start=self.drawn)
        # ETA from the average rate since the start (smoothing=0): buffer refills are part of the work.
        with progress(f"training {len(self.cells)} cells", cfg.train_tokens, initial=self.served, smoothing=0) as bar:
            fill = BufferFill(bar, min(cfg.buffer_tokens, cfg.train_tokens - self.served))
            batches = shuffled_batches(fill.watch(counter), cfg.train_tokens - self.served, cfg.batch_size,
                                       cfg.buffer_tokens, cfg.seed + self.drawn, self.ctx.device)
            try:
                train_cells(self.cells, batches,
                            lambda tokens, live: self._on_batch(tokens, live, bar, counter, fill), note)
            finally:  # also on Ctrl-C: keep the work done so far (each file is replaced atomically)
                self.save(counter, training_done=self.served >= cfg.train_tokens)
        if writer is not None and writer.tokens >= cfg.train_tokens:
            writer.finish()
            note(f"saved {writer.tokens:,} tokens of activations to the cache at {writer.directory}")

    def _on_batch(self, tokens: int, live: list[Cell], bar, counter: TokenCounter, fill: BufferFill) -> None:
        self.served += tokens
        fill.served()
        turn = int(time.monotonic() / ROTATE_SECONDS)
        bar.set_postfix_str(loss_postfix([(f"{c.method}/{c.k}", c.last_loss) for c in live], turn), refresh=False)
        bar.update(tokens)
        self.ctx.metrics.log({f"loss/{c.method}/k{c.k}": c.last_loss for c in live}
                             | {f"aux_loss/{c.method}/k{c.k}": c.last_aux_loss for c in live if c.aux.coef > 0},
                             step=self.step_offset + self.served)
        if time.monotonic() - self.last_save >= self.ctx.cfg.checkpoint_minutes * 60:
            if self.save(counter):
                LOGGER.info("saved training state at %d tokens", self.served)
                self.ctx.on_saved()
            self.last_save = time.monotonic()


def train_group(ctx: RunContext, group: list[tuple[str, int]], index: int = 0) -> list[Cell]:
    """Build, resume and train the cells of memory group ``index``; returns them trained. W&B steps
    continue across groups (group i logs from i * train_tokens), so no group's curves overwrite another's."""
    cells = build_cells(ctx, group)
    CheckpointedTraining(ctx, cells, step_offset=index * ctx.cfg.train_tokens).run()
    return cells
