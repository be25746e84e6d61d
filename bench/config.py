"""Run settings as one dataclass, with named presets that fill in everything not given."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bench.data import EMBEDDED_CORPUS
from bench.models import EMBEDDED_MODEL


@dataclass
class RunConfig:
    methods: list[str] = field(default_factory=lambda: ["all"])
    model: str = EMBEDDED_MODEL
    layer: int | None = None  # None: the middle layer
    ks: list[int] = field(default_factory=lambda: [16, 64])
    expansion: int = 8  # budget: a TC of width expansion * d_model
    dataset: str = EMBEDDED_CORPUS
    train_tokens: int = 2**16
    eval_tokens: int = 2**14  # NMSE / L0 / dead units
    ce_tokens: int = 2**12  # spliced CE (contexts of context_length)
    context_length: int = 128
    batch_size: int = 512  # tokens per optimiser step
    lm_batch_size: int = 32  # contexts per LM forward while collecting
    ce_batch_size: int = 4  # contexts per LM forward while evaluating CE (bounds logits memory)
    buffer_tokens: int = 2**15
    lr: float = 1e-3
    warmup_steps: int = 20
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # the LM's dtype: bf16 on GPU, fp32 on CPU
    preset: str = "smoke"
    results_dir: str = "results"
    run_name: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    # Minutes on a laptop CPU: the embedded Gemma, a small budget, two K values.
    "smoke": {},
    # PAPER.md's reference setup, for GPU users with hub access.
    "paper": dict(
        ks=[16, 32, 64, 128, 256], expansion=32, dataset="Skylion007/openwebtext",
        train_tokens=480_000_000, eval_tokens=2**20, ce_tokens=3_276_800, batch_size=4096,
        lm_batch_size=64, ce_batch_size=16, buffer_tokens=2**21, lr=2e-4, warmup_steps=5000,
    ),
}


def preset_config(name: str, **overrides) -> RunConfig:
    """The preset's settings, then every override that is not None."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return RunConfig(preset=name, **values)
