"""Run settings as one dataclass, with named presets that fill in everything not given."""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    checkpoint_minutes: float = 10.0  # training state is saved this often (and when training ends)
    device: str = "auto"
    dtype: str = "auto"  # the LM's dtype: bf16 on GPU, fp32 on CPU
    precision: str = "auto"  # sparse layers' compute: bf16 autocast on GPU (fp32 master weights), fp32 on CPU
    compile: bool = False  # torch.compile each sparse layer's forward
    trust_remote_code: bool = False  # run a hub model's own Python code (only for models you trust)
    tasks: str | None = None  # lm-eval tasks scored with each layer spliced in: "default" or names
    task_limit: int | None = None  # at most this many examples per task
    activation_cache: str | None = None  # directory of reusable training activations (off by default)
    activation_cache_dtype: str = "fp32"  # fp32 or bf16 (half the disk, rounded activations)
    memory_budget_gb: float | None = None  # None: free device memory; cells beyond it train in groups
    wandb: bool = False  # also log to Weights & Biases (needs `pip install wandb`)
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


# Friendlier spellings accepted in config files, mapped to RunConfig fields.
KEY_ALIASES = {"k": "ks", "tokens": "train_tokens"}


class ConfigError(ValueError):
    """A config file that cannot be read or names an unknown setting."""


def load_config_file(path: str | Path) -> list[dict[str, Any]]:
    """A TOML sweep file -> one settings dict per run.

    Top-level keys apply to every run; each ``[[runs]]`` table adds or overrides keys for one
    (model, layer) run. Without ``[[runs]]`` the file is a single run.
    """
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    runs = document.pop("runs", [{}])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ConfigError(f"config file {path}: `runs` must be an array of tables ([[runs]])")
    return [_checked_keys({**document, **run}, path) for run in runs]


def _checked_keys(settings: dict[str, Any], path: Path) -> dict[str, Any]:
    allowed = {f.name for f in dataclasses.fields(RunConfig)} - {"preset"}
    out = {}
    for key, value in settings.items():
        name = KEY_ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if name == "preset":
            out["preset"] = value
            continue
        if name not in allowed:
            raise ConfigError(f"config file {path}: unknown setting {key!r}; allowed: "
                              f"{', '.join(sorted(allowed | set(KEY_ALIASES) | {'preset'}))}")
        if name in ("ks", "methods") and not isinstance(value, list):
            value = [value]
        out[name] = value
    return out


def preset_config(name: str, **overrides) -> RunConfig:
    """The preset's settings, then every override that is not None."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return RunConfig(preset=name, **values)


def sweep_configs(runs: list[dict[str, Any]], preset: str | None = None,
                  overrides: dict[str, Any] | None = None) -> list[RunConfig]:
    """One RunConfig per run of ``load_config_file``'s output: the run's preset (or ``preset``), its
    settings, then every override that is not None (command-line flags)."""
    configs = []
    for settings in runs:
        settings = dict(settings)
        chosen = preset if preset is not None else settings.get("preset", "smoke")
        settings.pop("preset", None)
        configs.append(preset_config(chosen, **{**settings, **{k: v for k, v in (overrides or {}).items()
                                                               if v is not None}}))
    return configs
