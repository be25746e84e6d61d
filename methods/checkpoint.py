"""Save and load a trained layer as ``weights.safetensors`` + ``config.json`` in one directory.

``config.json`` is ``layer.to_config()`` plus ``n_params``, ``format_version`` and the
weights file's SHA-256, so a weights file from another run, or a half-written one, is
refused instead of loading silently. Tensors are read with safetensors only: a checkpoint
never executes code (no torch.load, no pickle). Each file is written under a temporary
name and moved into place with ``os.replace``, so a crash never leaves a torn file behind.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from methods.base import SparseLayer
from methods.registry import build_from_config

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"


def save_layer(layer: SparseLayer, directory: str | Path) -> Path:
    """Write ``layer`` to ``directory`` (created if needed); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in layer.state_dict().items()}
    tmp_weights = weights_path.with_name(f".{WEIGHTS_FILE}.tmp")
    save_file(tensors, str(tmp_weights), metadata={"format_version": str(FORMAT_VERSION)})
    blob = {
        **layer.to_config(),
        "n_params": layer.n_params(),
        "format_version": FORMAT_VERSION,
        "weights_sha256": _sha256(tmp_weights),
    }
    tmp_config = config_path.with_name(f".{CONFIG_FILE}.tmp")
    tmp_config.write_text(json.dumps(blob, indent=2) + "\n")
    # Weights first: a crash in between leaves a new weights file whose hash the old config refuses.
    os.replace(tmp_weights, weights_path)
    os.replace(tmp_config, config_path)
    return directory


def load_layer(directory: str | Path, device: str | torch.device = "cpu") -> SparseLayer:
    """Rebuild the layer saved in ``directory`` through the registry and load its weights.

    Raises ValueError naming the offending file when a file is missing, truncated, or does
    not belong with the other. A plugin method must be registered (``load_plugin``) first.
    """
    directory = Path(directory)
    weights_path, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    blob = _read_config(config_path)
    if not weights_path.is_file():
        raise ValueError(f"{weights_path}: missing (a checkpoint needs {WEIGHTS_FILE} beside {CONFIG_FILE})")
    if _sha256(weights_path) != blob.get("weights_sha256"):
        raise ValueError(
            f"{weights_path}: contents do not match the SHA-256 recorded in {config_path} "
            "(truncated, or from another checkpoint)"
        )
    try:
        layer = build_from_config(blob)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: cannot rebuild the layer: {err}") from err
    if layer.n_params() != blob.get("n_params"):
        raise ValueError(f"{config_path}: records n_params={blob['n_params']}, rebuilt layer has {layer.n_params()}")
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({err})") from err
    try:
        layer.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())  # torch's message spans lines
        raise ValueError(f"{weights_path}: tensors do not fit the layer in {config_path}: {detail}") from err
    return layer.to(device)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: missing (not a checkpoint directory?)")
    try:
        blob = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON (truncated?): {err}") from err
    version = blob.get("format_version") if isinstance(blob, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    missing = {"method", "spec", "config", "n_params", "weights_sha256"} - set(blob)
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)}")
    return blob


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
