"""Run settings as one dataclass, with named presets that fill in everything not given."""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.data import EMBEDDED_CORPUS
from bench.devices import DTYPES, PRECISIONS
from bench.losses import DEFAULT_LOSS, LOSSES
from bench.models import EMBEDDED_MODEL


PRESET_NAMES = ("smoke", "paper")  # PRESETS below holds their settings


def setting(default: Any = None, help: str = "", flag: str | None = None, choices: tuple | None = None,
            factory: Callable[[], Any] | None = None) -> Any:
    """A RunConfig field with what its command-line flag needs: the flags are generated from these
    (``bench/config_flags.py``), so a setting and its flag cannot drift apart."""
    metadata = {"help": help, "flag": flag, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    """Every setting of one run (one model and layer); presets fill in what is not given."""

    methods: list[str] = setting(factory=lambda: ["all"], help="comma-separated method names, or 'all' (see `bench methods`)")
    model: str = setting(EMBEDDED_MODEL, "alias (gemma-3-270m, gpt2, gemma-2b, ...), hub id or local dir")
    layer: int | None = setting(None, "layer index (default: the middle layer)")
    ks: list[int] = setting(factory=lambda: [16, 64], help="comma-separated K values", flag="--k")
    expansion: int = setting(8, "parameter budget: every method matches a TC of width expansion*d")
    dataset: str = setting(EMBEDDED_CORPUS, "wiki-offline, a hub dataset name, or a local .jsonl/.txt path")
    train_tokens: int = setting(2**16, "training tokens per cell", flag="--tokens")
    eval_tokens: int = setting(2**14, "held-out tokens for NMSE, L0 and dead units")
    ce_tokens: int = setting(2**12, "held-out tokens for spliced CE (contexts of --context-length)")
    context_length: int = setting(128, "tokens per context (training, NMSE and CE)")
    batch_size: int = setting(512, "tokens per optimiser step")
    lm_batch_size: int = setting(32, "contexts per LM forward while collecting activations")
    ce_batch_size: int = setting(4, "contexts per LM forward while evaluating CE (bounds the logits' memory)")
    buffer_tokens: int = setting(2**15, "activation rows in the shuffle buffer")
    lr: float = setting(1e-3, "AdamW learning rate (after warm-up; constant) of every method --method-lr leaves out")
    method_lr: str | None = setting(None, "per-method learning rates, e.g. tc=1e-3,mxd=3e-4 (`bench tune` finds "
                                          "them); a method not named uses --lr")
    warmup_steps: int = setting(20, "linear learning-rate warm-up steps")
    loss: str = setting(DEFAULT_LOSS, "training loss: token-normalised (each token's squared error over its own "
                                      "output norm), nmse (one ratio over the batch) or post-norm (the error after "
                                      "the block's post-MLP norm: Gemma 2/3)", choices=LOSSES)
    aux_k_coef: float = setting(0.0, "AuxK dead-unit remedy (0 = off; TopK-SAE practice uses 1/32): adds this "
                                     "times the dead units' fit of the residual to the loss; see docs/PROTOCOL.md")
    aux_k: int = setting(512, "AuxK: how many dead units (largest pre-activations) fit the residual per token")
    dead_window: int = setting(2**14, "AuxK: a unit no training token selected in this many tokens counts as dead")
    seed: int = setting(0, "seed of every cell's initialisation and of the data shuffle")
    checkpoint_minutes: float = setting(10.0, "save training state this often so an interrupted run resumes")
    device: str = setting("auto", "auto (CUDA when torch sees a GPU), cpu, cuda or cuda:N")
    dtype: str = setting("auto", "the LM's dtype (auto: bf16 on GPU, fp32 on CPU)", choices=DTYPES)
    precision: str = setting("auto", "sparse layers' compute (auto: bf16 autocast with fp32 master weights on GPU, "
                                     "fp32 on CPU)", choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile each sparse layer's forward")
    random_weights: bool = setting(False, "build --model's architecture with seeded random weights and an offline "
                                          "tokenizer: a rehearsal of the run's shapes, memory and time, not a result")
    trust_remote_code: bool = setting(False, "allow a hub model's own Python code to run (only for models you trust)")
    tasks: str | None = setting(None, "lm-eval task accuracy with each layer spliced in: 'default' (offline, "
                                      "shipped) or task names")
    task_limit: int | None = setting(None, "at most this many examples per task")
    activation_cache: str | None = setting(None, "store the training activations in this directory and reuse them "
                                                 "in later runs (checked, never stale)")
    activation_cache_dtype: str = setting("fp32", "storage dtype of the activation cache", choices=("fp32", "bf16"))
    memory_budget_gb: float | None = setting(None, "memory the sparse layers may use together (default: what the "
                                                   "device has free); cells beyond it train in groups, one LM pass each")
    wandb: bool = setting(False, "also log losses and metrics to Weights & Biases (needs `pip install wandb`)")
    preset: str = setting("smoke", "fills in every setting not given: smoke (minutes on a CPU) or "
                                    "paper (the reference budget; see docs/PROTOCOL.md)", choices=tuple(PRESET_NAMES))
    results_dir: str = setting("results", "where run directories go; on a cluster, a path every node sees or a URL "
                                          "(s3://, gs://, ...)")
    run_name: str | None = setting(None, "the run directory's name (default: <model>-<preset>)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_name_or_default(self) -> str:
        """The run directory's name: ``--run-name``, else ``<model>-<preset>``."""
        if self.run_name:
            return self.run_name
        from bench.figure_names import display_name, sanitize  # one naming rule for runs, titles and files

        return f"{sanitize(display_name(self.model))}-{self.preset}"


# Each method's learning rate at the smoke budget, the lowest held-out NMSE of `bench tune` (grid
# 3e-4 ... 1e-2, extended to 3e-2 for the two that chose 1e-2); the scores are in results/tune/.
SMOKE_METHOD_LR = ("tc=0.003,stc=0.001,sae=0.01,mxd=0.01,mxd-glu=0.003,"
                   "lowrank-moe-r1=0.003,lowrank-moe-r4=0.003,lowrank-moe-r16=0.003")

PRESETS: dict[str, dict] = {  # keys: PRESET_NAMES
    # Minutes on a laptop CPU: the embedded Gemma, a small budget, two K values, tuned LRs.
    "smoke": dict(method_lr=SMOKE_METHOD_LR),
    # the MxD paper's reference setup, for GPU users with hub access.
    "paper": dict(
        ks=[16, 32, 64, 128, 256], expansion=32, dataset="Skylion007/openwebtext",
        train_tokens=480_000_000, eval_tokens=2**20, ce_tokens=3_276_800, batch_size=4096,
        lm_batch_size=64, ce_batch_size=4, lr=2e-4, warmup_steps=5000,
        # 32 steps' worth of shuffled rows: the reference names no size, and 2^21 rows (16 GiB a tensor at
        # d = 2048, about 7 such tensors while refilling) do not fit an 80 or 141 GB GPU beside the LM
        buffer_tokens=2**17,
        dead_window=10_000_000,  # AuxK's window in TopK-SAE practice (used only with --aux-k-coef > 0)
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
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory; give a .toml file") from None
    except PermissionError:
        raise ConfigError(f"config file {str(path)!r} cannot be read (permission denied)") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text (invalid byte 0x{error.object[error.start]:02x} "
                          f"at offset {error.start})") from None
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
    given = {k: v for k, v in overrides.items() if v is not None}
    values = {**PRESETS[name], **given, "method_lr": _method_lr(PRESETS[name].get("method_lr"), given)}
    return RunConfig(preset=name, **values)


def _method_lr(preset: str | None, given: dict[str, Any]) -> str | None:
    """The per-method LRs a run uses: a given ``--lr`` is the LR of every method a given ``--method-lr``
    does not name (the preset's tuned ones no longer apply); without ``--lr``, a given ``--method-lr``
    overrides the preset's entries it names."""
    base = {} if "lr" in given else parse_method_lr(preset)
    merged = {**base, **parse_method_lr(given.get("method_lr"))}
    return ",".join(f"{method}={lr:g}" for method, lr in merged.items()) or None


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


def parse_method_lr(text: str | None) -> dict[str, float]:
    """``"tc=1e-3,mxd=3e-4"`` -> ``{"tc": 0.001, "mxd": 0.0003}``; a one-line ValueError otherwise."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--method-lr items must be METHOD=LR, got {item.strip()!r}") from None
    return out


def lr_for(cfg: RunConfig, method: str) -> float:
    """The learning rate method ``method`` trains with: its --method-lr entry, else --lr."""
    return parse_method_lr(cfg.method_lr).get(method, cfg.lr)


def flag_name(name: str) -> str:
    """The command-line flag of RunConfig field ``name`` (``train_tokens`` -> ``--tokens``)."""
    metadata = {f.name: f.metadata for f in dataclasses.fields(RunConfig)}[name]
    return metadata.get("flag") or "--" + name.replace("_", "-")


def setting_types() -> dict[str, tuple[Any, bool]]:
    """Each RunConfig field's type without ``| None``, and whether None is allowed."""
    out = {}
    for name, hint in typing.get_type_hints(RunConfig).items():
        args = typing.get_args(hint)
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
        out[name] = ([a for a in args if a is not type(None)][0] if optional else hint, optional)
    return out
