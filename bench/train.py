"""Batches of (x, y) -> trained cells, every cell stepping on the same batch.

One activation stream feeds all (method, K) cells of a model and layer, so the LM's forward
is paid once per batch, not once per cell. Each cell is scored by its own loss
(``bench.losses``: token-normalised by default). A cell whose loss turns NaN/inf or explodes is
stopped and marked failed; the others go on.

Length: a little over 250 lines: a cell, its optimiser step (loss, AuxK, micro-batching after an
out-of-memory error) and the unit counts must agree on one step, so they stay in one module.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

import methods
from bench.devices import synchronize
from bench.losses import ReconstructionLoss, TokenNormalisedLoss, auxk_loss, spread
from bench.unit_usage import dead_mask, record, selections
from methods.base import LayerSpec, SparseCodes, SparseLayer


@dataclass
class OptimiserSettings:
    """AdamW (no weight decay), linear warm-up over ``warmup_steps`` then a constant LR."""

    lr: float = 4e-4
    warmup_steps: int = 5000
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class AuxKSettings:
    """The opt-in dead-unit remedy (``bench.losses.auxk_loss``), off while ``coef`` is 0: the ``k``
    dead units with the largest pre-activations fit the residual, a unit being dead when no token
    selected it in the last ``dead_window`` training tokens."""

    coef: float = 0.0
    k: int = 512
    dead_window: int = 2**14


@dataclass
class Cell:
    """One (method, K) being trained, with its optimiser and bookkeeping."""

    method: str
    k: int
    layer: SparseLayer
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps: int = 0
    tokens: int = 0
    last_loss: float = math.nan
    train_time_s: float = 0.0
    status: str = "ok"
    error: str | None = None
    micro_batches: int = 1  # raised after an out-of-memory error; the effective batch stays the same
    resumed_at_tokens: int | None = None  # where an interrupted training was resumed (None: never interrupted)
    autocast_dtype: torch.dtype | None = None  # bf16 compute over fp32 master weights
    forward: Callable | None = None  # the layer's torch.compile'd twin, if any
    loss: ReconstructionLoss = field(default_factory=TokenNormalisedLoss)  # what train_step minimises
    aux: AuxKSettings = field(default_factory=AuxKSettings)
    last_aux_loss: float = math.nan  # the AuxK term of the last step (0 while no unit is dead)
    # Per unit: training tokens that selected it, and training tokens since it was last selected
    # (bench.unit_usage); and how many training tokens the counts cover (all of ``tokens`` unless a
    # resume could not restore them). Saved with the training state (``extra_state``).
    selection_counts: torch.Tensor | None = None
    tokens_since_selected: torch.Tensor | None = None
    counted_tokens: torch.Tensor | None = None

    def __post_init__(self) -> None:
        device = next(self.layer.parameters()).device
        if self.selection_counts is None:
            self.selection_counts = torch.zeros(self.layer.n_units, dtype=torch.long, device=device)
        if self.tokens_since_selected is None:
            self.tokens_since_selected = torch.zeros(self.layer.n_units, dtype=torch.long, device=device)
        if self.counted_tokens is None:
            self.counted_tokens = torch.zeros((), dtype=torch.long)

    @property
    def compute(self) -> Callable:
        """What a step calls: the compiled twin when there is one (never ``forward or layer``: a
        compiled module's truth value raises), else the layer itself."""
        return self.layer if self.forward is None else self.forward

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The cell's tensors beyond its layer and optimiser that a resumed run needs."""
        return {"selection_counts": self.selection_counts, "tokens_since_selected": self.tokens_since_selected,
                "counted_tokens": self.counted_tokens}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore ``extra_state()``; a name missing from ``tensors`` is left as it is."""
        for name in self.extra_state():
            if name not in tensors:
                continue
            value, current = tensors[name], getattr(self, name)
            if value.shape != current.shape:
                raise ValueError(f"saved {name} has shape {tuple(value.shape)}, the cell {tuple(current.shape)}")
            setattr(self, name, value.to(current.device, current.dtype))


# A loss this many times that of predicting the batch mean (NMSE 1) means the optimisation has blown up.
DIVERGED_RATIO = 1e6


def warmup_then_constant(warmup_steps: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def build_cell(method: str, spec: LayerSpec, k: int, expansion: int, settings: OptimiserSettings,
               seed: int, device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
               compile: bool = False, loss: ReconstructionLoss | None = None, aux: AuxKSettings | None = None,
               **overrides) -> Cell:
    """Create the method's layer (seeded, so a cell's init never depends on the others).

    Parameters stay fp32 (the master weights); ``autocast_dtype`` only lowers the compute.
    ``loss`` defaults to the token-normalised loss (``bench.losses.make_loss`` builds the others);
    ``aux`` (AuxK) is off by default, and refused for a method without ``forward_with_aux``.
    """
    torch.manual_seed(seed)
    layer = methods.create(method, spec, k=k, expansion=expansion, **overrides).to(device)
    aux = aux or AuxKSettings()
    if aux.coef > 0 and not layer.supports_aux():
        raise ValueError(f"--aux-k-coef {aux.coef:g} needs a method with an AuxK term; {method!r} has none")
    optimiser = adamw(layer.parameters(), settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_then_constant(settings.warmup_steps))
    forward = torch.compile(layer) if compile else layer
    loss = (loss or TokenNormalisedLoss()).to(device)
    return Cell(method, k, layer, optimiser, scheduler, autocast_dtype=autocast_dtype, forward=forward, loss=loss,
                aux=aux)


def adamw(parameters, settings: OptimiserSettings) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all tensors: about 7x faster than the per-tensor loop on CPU,
    see `bench perf`) where this torch and device support it, else torch's default."""
    parameters = list(parameters)
    options = dict(lr=settings.lr, betas=settings.betas, weight_decay=0.0)
    try:
        return torch.optim.AdamW(parameters, fused=True, **options)
    except (RuntimeError, ValueError):  # e.g. a device without a fused kernel
        return torch.optim.AdamW(parameters, **options)


def normalised_mse(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||y_hat - y||^2 / ||y - mean(y)||^2 over the batch: scale-free, and equal to the NMSE metric."""
    centred = target - target.mean(dim=0, keepdim=True)
    return (estimate - target).pow(2).sum() / centred.pow(2).sum().clamp_min(1e-12)


def train_step(cell: Cell, x: torch.Tensor, y: torch.Tensor) -> None:
    """One AdamW step of one cell; marks the cell failed instead of raising on a bad loss.

    With ``micro_batches`` > 1 the batch is processed in pieces with gradients accumulated; each
    piece's per-token terms are divided by the whole batch's denominator (``ReconstructionLoss``),
    so the loss and its gradient are those of the whole batch. With AuxK on and some unit dead,
    each piece adds coef * its AuxK term, divided by the whole batch's spread of the residual.
    """
    start = time.perf_counter()
    source = y if cell.layer.input_site == "mlp_output" else x
    pieces = list(zip(source.chunk(cell.micro_batches), y.chunk(cell.micro_batches)))
    denominator, limit = cell.loss.denominator(y), divergence_limit(cell, y)
    dead = dead_units(cell)
    aux_denominator = residual_spread(cell, pieces) if dead is not None and len(pieces) > 1 else None
    cell.optimiser.zero_grad(set_to_none=True)
    total = aux_total = 0.0
    selected = torch.zeros_like(cell.selection_counts)  # committed only if the step completes (an OOM retries it)
    for part_source, part_y in pieces:
        estimate, codes, dead_estimate = _forward(cell, part_source, dead)
        loss = cell.loss.token_terms(estimate, part_y).sum() / denominator
        value = loss.item()
        if dead_estimate is not None:
            aux = auxk_loss(dead_estimate, (part_y - estimate).detach(), aux_denominator)
            aux_total += aux.item()
            loss = loss + cell.aux.coef * aux
        if not math.isfinite(value + aux_total) or value > limit:
            cell.status, cell.error = "failed", f"loss became {value + aux_total:.4g} at step {cell.steps} (diverged)"
            cell.optimiser.zero_grad(set_to_none=True)
            return
        loss.backward()
        total += value
        selected += selections(codes, cell.layer.n_units)
    cell.layer.project_gradients()
    cell.optimiser.step()
    cell.scheduler.step()
    cell.layer.constrain()
    cell.steps += 1
    cell.tokens += len(x)
    cell.last_loss, cell.last_aux_loss = total, aux_total
    record(cell.selection_counts, cell.tokens_since_selected, selected, len(x))
    cell.counted_tokens += len(x)
    synchronize(x.device)  # on a GPU the optimiser step is still queued: charge it to this cell, not the next
    cell.train_time_s += time.perf_counter() - start


def _forward(cell: Cell, source: torch.Tensor,
             dead: torch.Tensor | None) -> tuple[torch.Tensor, SparseCodes, torch.Tensor | None]:
    """(y_hat, codes, the dead units' estimate or None), in the cell's compute dtype; y_hat and the
    estimate come back as fp32 for the loss. With dead units the eager ``forward_with_aux`` runs."""
    with torch.autocast(source.device.type, dtype=cell.autocast_dtype or torch.float32,
                        enabled=cell.autocast_dtype is not None):
        if dead is None:
            estimate, codes = cell.compute(source)
            return estimate.float(), codes, None
        estimate, codes, dead_estimate = cell.layer.forward_with_aux(source, dead, cell.aux.k)
    return estimate.float(), codes, dead_estimate.float()


def dead_units(cell: Cell) -> torch.Tensor | None:
    """The [n_units] mask of units AuxK treats as dead, or None when AuxK is off or none is dead."""
    if cell.aux.coef <= 0:
        return None
    dead = dead_mask(cell.tokens_since_selected, cell.aux.dead_window)
    return dead if bool(dead.any()) else None


@torch.no_grad()
def residual_spread(cell: Cell, pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """||e - mean(e)||^2 of the whole batch's residual e = y - y_hat: AuxK's denominator, computed
    before a micro-batched step (each piece's backward needs it first); costs one more forward."""
    return spread(torch.cat([part_y - _forward(cell, part_source, None)[0] for part_source, part_y in pieces]))


@torch.no_grad()
def divergence_limit(cell: Cell, y: torch.Tensor) -> float:
    """DIVERGED_RATIO times the loss of predicting the batch mean: scale-free, so one threshold serves
    every loss (for the NMSE it is DIVERGED_RATIO itself). A cell whose loss passes it has blown up."""
    return DIVERGED_RATIO * max(cell.loss(y.mean(dim=0, keepdim=True).expand_as(y), y).item(), 1e-12)


def step_with_oom_retry(cell: Cell, x: torch.Tensor, y: torch.Tensor,
                        on_notice: Callable[[str], None] | None = None) -> None:
    """``train_step``, halving the micro-batch after an out-of-memory error until it fits."""
    while True:
        try:
            train_step(cell, x, y)
            return
        except torch.OutOfMemoryError:
            cell.optimiser.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if cell.micro_batches >= len(x):
                cell.status, cell.error = "failed", "out of memory even one token at a time"
                return
            cell.micro_batches *= 2
            if on_notice:
                on_notice(f"{cell.method} K={cell.k} ran out of memory: continuing with the batch of {len(x)} "
                          f"tokens in {cell.micro_batches} pieces (same effective batch)")


def train_cells(cells: list[Cell], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                on_batch: Callable[[int, list[Cell]], None] | None = None,
                on_notice: Callable[[str], None] | None = None) -> list[Cell]:
    """Step every live cell on every batch; ``on_batch(tokens, cells)`` reports progress."""
    for x, y in batches:
        for cell in cells:
            if cell.status == "ok":
                step_with_oom_retry(cell, x, y, on_notice)
        if on_batch:
            on_batch(len(x), cells)
    for cell in cells:
        cell.layer.eval()
    return cells
