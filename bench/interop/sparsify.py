"""EleutherAI sparsify checkpoints: one directory per hookpoint holding ``cfg.json`` + ``sae.safetensors``.

cfg.json: ``d_in``, ``k``, ``num_latents`` (0: ``expansion_factor * d_in``), ``transcode``,
``skip_connection``, ``activation`` ("topk"). sae.safetensors: ``encoder.weight`` [N, d],
``encoder.bias`` [N], ``W_dec`` [N, d], ``b_dec`` [d] and, with a skip, ``W_skip`` [d, d].

    SAE:        z = TopK(ReLU(W_enc (y - b_dec) + b_enc)),  y_hat = W_dec z + b_dec
    transcoder: z = TopK(ReLU(W_enc x + b_enc)),            y_hat = W_dec z + b_dec (+ W_skip x)

The directory's name is the hookpoint, a module name relative to the base model. A transcoder
at ``layers.L.mlp`` reads that module's input and predicts its output; an SAE there reads and
writes its output. Both are exactly our ``tc`` / ``stc`` / ``sae``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.interop.dictionary import Dictionary
from bench.interop.files import InteropError, expect_shape, read_json, read_tensors, write_json, write_tensors
from bench.interop.sites import MLP_INPUT, MLP_OUTPUT, SpliceSite, check_layer, parse_hook
from methods.base import SparseLayer

CONFIG_FILE, WEIGHTS_FILE = "cfg.json", "sae.safetensors"
# Flags of sparsify forks and older versions that change the forward pass; refused when set.
_UNSUPPORTED_FLAGS = ("signed", "jumprelu", "batch_topk", "sample_topk", "input_unit_norm", "scale_encoder_k")


def hookpoint_of(directory: Path) -> str:
    """The hookpoint a checkpoint directory was saved under (``.../layers.6.mlp[/seedN]``)."""
    return directory.parent.name if re.fullmatch(r"seed\d+", directory.name) else directory.name


def find_hookpoint(directory: Path, site: SpliceSite) -> Path | None:
    """In a directory of hookpoints, the one at this layer's MLP, if there is exactly one."""
    candidates = []
    for child in sorted(p for p in directory.iterdir() if (p / CONFIG_FILE).is_file()):
        try:
            hook = parse_hook(hookpoint_of(child), site)
        except InteropError:
            continue
        if hook.layer == site.layer and hook.role == MLP_OUTPUT:
            candidates.append(child)
    if len(candidates) > 1:
        raise InteropError(f"{directory}: several hookpoints at layer {site.layer}'s MLP: "
                           f"{[c.name for c in candidates]}; name one (e.g. DIR/layers.6.mlp)")
    return candidates[0] if candidates else None


def load(directory: Path, site: SpliceSite) -> tuple[Dictionary, dict[str, Any]]:
    cfg = read_json(directory / CONFIG_FILE)
    where = directory / CONFIG_FILE
    hookpoint = hookpoint_of(directory)
    hook = parse_hook(hookpoint, site)
    check_layer(hook, site, hookpoint)
    transcode = bool(cfg.get("transcode", False))
    if hook.role != MLP_OUTPUT or not hookpoint.endswith("mlp"):
        raise InteropError(f"{where}: hookpoint {hookpoint!r} is not the MLP module "
                           f"(expected e.g. layers.{site.layer}.mlp)")
    flags = [f for f in _UNSUPPORTED_FLAGS if cfg.get(f)]
    if flags:
        raise InteropError(f"{where}: {', '.join(flags)} set: a variant of sparsify that is not supported "
                           "(plain TopK only)")
    if cfg.get("activation", "topk") != "topk":
        raise InteropError(f"{where}: activation {cfg['activation']!r} is not supported (topk only)")
    d, k = cfg.get("d_in"), cfg.get("k")
    if d != site.spec.d_model:
        raise InteropError(f"{where}: d_in={d!r}, but the model's d_model is {site.spec.d_model}")
    width = cfg.get("num_latents") or d * cfg.get("expansion_factor", 0)
    if not isinstance(width, int) or width < 1 or not isinstance(k, int):
        raise InteropError(f"{where}: needs integer k and num_latents (or expansion_factor), "
                           f"got k={k!r}, width={width!r}")
    skip = bool(cfg.get("skip_connection", False))
    if skip and not transcode:
        raise InteropError(f"{where}: an SAE with a skip connection has no counterpart here")
    weights = directory / WEIGHTS_FILE
    tensors = read_tensors(weights)
    dictionary = Dictionary(
        encoder=expect_shape(tensors, "encoder.weight", (width, d), weights),
        b_enc=expect_shape(tensors, "encoder.bias", (width,), weights),
        decoder=expect_shape(tensors, "W_dec", (width, d), weights),
        b_dec=expect_shape(tensors, "b_dec", (d,), weights),
        reads=MLP_INPUT if transcode else MLP_OUTPUT, activation="topk", centre_input=not transcode, k=k,
        skip=expect_shape(tensors, "W_skip", (d, d), weights) if skip else None,
    )
    architecture = ("skip-transcoder" if skip else "transcoder") if transcode else "sae"
    side = "input" if transcode else "output"
    provenance = {"architecture": f"topk-{architecture}", "hook_in": f"{hookpoint} ({side})",
                  "hook_out": f"{hookpoint} (output)", "d_sae": width, "threshold": None}
    return dictionary, provenance


def write(layer: SparseLayer, site: SpliceSite, directory: Path) -> Path:
    """Write our ``tc`` / ``stc`` / ``sae`` under ``directory/<hookpoint>/``; returns that hookpoint directory."""
    transcode = layer.input_site == "mlp_input"
    skip = getattr(layer, "skip", None)
    d = site.spec.d_model
    target = directory / site.hookpoint
    write_json({"activation": "topk", "d_in": d, "k": layer.config.k, "num_latents": layer.n_units,
                "expansion_factor": max(layer.n_units // d, 1), "normalize_decoder": True, "multi_topk": False,
                "skip_connection": skip is not None, "transcode": transcode}, target / CONFIG_FILE)
    tensors = {"encoder.weight": layer.encoder.weight, "encoder.bias": layer.encoder.bias, "W_dec": layer.decoder,
               "b_dec": layer.b_out}
    if skip is not None:
        tensors["W_skip"] = skip.weight
    write_tensors(tensors, target / WEIGHTS_FILE)
    return target
