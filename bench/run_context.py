"""The load stage: settings resolved against this machine, the LM loaded and its layer located.

``RunContext`` is what every later stage of a run is handed, instead of a dozen loose arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench.config import RunConfig
from bench.devices import resolve_device, resolve_dtype, resolve_precision
from bench.logs import MetricsSink
from bench.losses import make_loss
from bench.model_shapes import random_model
from bench.models import LoadedModel, check_layer, default_layer, layer_spec, load_model
from bench.random_tokenizer import offline_tokenizer
from bench.results import RunStore
from bench.rows import settings_row
from methods.base import LayerSpec


@dataclass
class RunContext:
    """One run (one model and layer): its settings, where it writes, the LM and the layer's shape."""

    cfg: RunConfig
    run_dir: Path
    device: torch.device
    autocast: torch.dtype | None  # the sparse layers' compute dtype (None: plain fp32/tf32)
    lm: LoadedModel
    layer: int
    spec: LayerSpec
    store: RunStore
    metrics: MetricsSink
    on_saved: Callable[[], None]  # called after each saved checkpoint or row (URL results upload then)
    base_row: dict  # what every row of this run carries

    @property
    def model(self) -> nn.Module:
        return self.lm.model

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    @property
    def training_dir(self) -> Path:
        """Mid-training state of the cells being trained (removed when the run finishes)."""
        return self.run_dir / "checkpoints" / "_training"


def load_lm(cfg: RunConfig, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """The LM of ``--model``; with ``--random-weights``, its architecture with seeded random weights and
    an offline tokenizer (``bench/random_tokenizer.py``): a whole run rehearsed with no download."""
    if not cfg.random_weights:
        return load_model(cfg.model, device=str(device), dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    lm = random_model(cfg.model, device=device, dtype=dtype, seed=cfg.seed)
    lm.tokenizer = offline_tokenizer(lm.model.get_input_embeddings().num_embeddings)
    return lm


def load_run(cfg: RunConfig, run_dir: Path, metrics: MetricsSink, on_saved: Callable[[], None]) -> RunContext:
    """Resolve device and dtypes, load the LM, check the layer; nothing is trained or written here."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    autocast = resolve_precision(cfg.precision, device)
    lm = load_lm(cfg, device, dtype)
    layer = check_layer(lm.model, cfg.layer if cfg.layer is not None else default_layer(lm.model))
    make_loss(cfg.loss, lm.model, layer)  # a loss the architecture cannot have is refused before any work
    return RunContext(cfg, run_dir, device, autocast, lm, layer, layer_spec(lm.model, layer), RunStore(run_dir),
                      metrics, on_saved, settings_row(cfg, lm.model_id, layer, device, dtype, autocast))
