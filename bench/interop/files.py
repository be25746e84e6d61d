"""Reading and writing the files of a dictionary: JSON and safetensors only, never pickle.

Every problem with a file (missing, not JSON, not safetensors, a pickle) is an ``InteropError``
(a ValueError, so the CLI prints its one line and exits with code 2).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# Extensions of files that torch.load would unpickle, i.e. run code from: never opened here.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


class InteropError(ValueError):
    """A dictionary that cannot be loaded, checked or exported faithfully (one-line message)."""


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InteropError(f"{path}: refusing a pickle file ({path.suffix}); only safetensors + JSON are read "
                           "(convert it with its own library to safetensors first)")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InteropError(f"{path}: missing")
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InteropError(f"{path}: not valid JSON: {' '.join(str(err).split())}") from None
    if not isinstance(blob, dict):
        raise InteropError(f"{path}: expected a JSON object, got {type(blob).__name__}")
    return blob


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, as float32 on the CPU (bf16/fp16 widen exactly)."""
    refuse_pickle(path)
    if not path.is_file():
        pickles = sorted(p.name for p in path.parent.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = f" (found only pickle files {pickles}, which are never read)" if pickles else ""
        raise InteropError(f"{path}: missing{hint}")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise InteropError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())})") from None
    return {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}


def write_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def write_json(blob: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(blob, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def expect_shape(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], where: Path) -> torch.Tensor:
    """The tensor ``name``, checked to be ``shape``; a missing or misshapen tensor is refused."""
    if name not in tensors:
        raise InteropError(f"{where}: no tensor {name!r} (has {sorted(tensors)})")
    tensor = tensors[name]
    if tuple(tensor.shape) != shape:
        raise InteropError(f"{where}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape}")
    return tensor
