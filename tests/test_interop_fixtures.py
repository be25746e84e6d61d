"""Dictionaries in each format, written from known weights, and the equations they stand for,
computed densely by hand (no code from bench.interop), for the test_interop_* tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.interop import SpliceSite
from methods.base import LayerSpec

D, N, K, LAYER = 16, 48, 5, 1


def site(post_mlp_norm: bool = False, gain=None, bias=None) -> SpliceSite:
    """Layer 1 of a Llama-shaped model with d_model 16 (no model needed to load a dictionary)."""
    return SpliceSite(LAYER, LayerSpec(D, 4 * D), f"model.layers.{LAYER}.mlp",
                      f"model.layers.{LAYER}.post_attention_layernorm", f"layers.{LAYER}.mlp", post_mlp_norm,
                      gain, bias)


def weights(seed: int = 0, skip: bool = False, threshold: bool = False) -> dict[str, torch.Tensor]:
    """SAELens-layout weights: W_enc [d, N], W_dec [N, d]; thresholds partly negative (a JumpReLU edge)."""
    g = torch.Generator().manual_seed(seed)
    out = {"W_enc": torch.randn(D, N, generator=g) / D**0.5, "b_enc": torch.randn(N, generator=g) * 0.3,
           "W_dec": torch.randn(N, D, generator=g) / N**0.5, "b_dec": torch.randn(D, generator=g) * 0.5}
    if threshold:
        out["threshold"] = torch.rand(N, generator=g) * 0.8 - 0.1
    if skip:
        out["W_skip"] = torch.randn(D, D, generator=g) * 0.1
    return out


def inputs(seed: int = 1, n: int = 64) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def hand_codes(x, w, activation: str, k: int = K, centre: bool = False) -> torch.Tensor:
    """The dense code z [n, N] of the textbook equation."""
    pre = (x - w["b_dec"] if centre else x) @ w["W_enc"] + w["b_enc"]
    if activation == "topk":
        values, indices = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())
    if activation == "jumprelu":
        return pre.relu() * (pre > w["threshold"]).float()
    return pre.relu()


def hand_output(x, w, activation: str, k: int = K, centre: bool = False) -> torch.Tensor:
    y = hand_codes(x, w, activation, k, centre) @ w["W_dec"] + w["b_dec"]
    return y + x @ w["W_skip"].T if "W_skip" in w else y


def write_saelens(directory: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "sae_weights.safetensors"))
    return directory


def saelens_cfg(architecture: str, hook: str, hook_out: str | None = None, **extra) -> dict:
    """A SAELens 6 cfg.json: fields at the top level, hooks in ``metadata``."""
    metadata = {"sae_lens_version": "6.5.0", "model_name": "tiny", "hook_name": hook}
    if hook_out:
        metadata["hook_name_out"] = hook_out
    cfg = {"architecture": architecture, "d_in": D, "d_sae": N, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": False, "normalize_activations": "none", "metadata": metadata}
    if hook_out:
        cfg["d_out"] = D
    return {**cfg, **extra}


def write_sparsify(root: Path, hookpoint: str, tensors: dict[str, torch.Tensor], transcode: bool, **extra) -> Path:
    """sparsify layout: encoder.weight [N, d] (= W_enc^T), W_dec [N, d]."""
    directory = root / hookpoint
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"activation": "topk", "expansion_factor": 3, "normalize_decoder": True, "num_latents": N, "k": K,
           "multi_topk": False, "skip_connection": "W_skip" in tensors, "transcode": transcode, "d_in": D, **extra}
    (directory / "cfg.json").write_text(json.dumps(cfg))
    renamed = {"encoder.weight": tensors["W_enc"].T.contiguous(), "encoder.bias": tensors["b_enc"],
               "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]}
    if "W_skip" in tensors:
        renamed["W_skip"] = tensors["W_skip"]
    save_file(renamed, str(directory / "sae.safetensors"))
    return directory
