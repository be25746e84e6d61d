"""Where a dictionary reads and writes, checked against the two sites our splice uses.

The splice replaces the ``mlp`` module of one decoder block, so a dictionary is usable only if
it reads the MLP INPUT (a transcoder: the output of the norm in front of the MLP) or the MLP
OUTPUT (an SAE, which is then run on MLP(x)), and writes the MLP output. Hook names come in
three dialects, all mapped here:

- TransformerLens (SAELens's default): ``blocks.L.hook_mlp_out`` is the MLP output, except on
  Gemma 2/3 where it comes after the post-feed-forward norm; ``blocks.L.ln2.hook_normalized``
  is the norm's output BEFORE its per-channel gain and bias (x_n = (x - b) / g), which is
  converted exactly when the model's gain has no zero; ``blocks.L.hook_mlp_in`` and
  ``hook_resid_*`` are the residual stream (before the norm), which we do not splice.
- Hugging Face module names (SAELens's ``hf_hook_name`` and its AutoModelForCausalLM models):
  ``<...>.L.mlp`` (output; ``.mlp.input`` is its input) and ``<...>.L.<norm>`` (MLP input).
- sparsify hookpoints, module names relative to the base model: ``layers.L.mlp`` / ``h.L.mlp``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from bench.interop.files import InteropError
from bench.models import decoder_layers, layer_spec
from methods.base import LayerSpec

# The norm whose output the MLP reads, by the attribute name each architecture gives it (Gemma
# 2/3 first: their post_attention_layernorm normalises the attention output, not the MLP input).
MLP_INPUT_NORMS = ("pre_feedforward_layernorm", "ln_2", "post_attention_layernorm")
POST_MLP_NORM = "post_feedforward_layernorm"

MLP_INPUT, MLP_OUTPUT, NORMALISED = "mlp_input", "mlp_output", "normalised_mlp_input"


@dataclass(frozen=True, eq=False)
class SpliceSite:
    """One layer of one model, as far as loading and exporting dictionaries needs to know it."""

    layer: int
    spec: LayerSpec
    mlp_name: str  # full module name of the MLP, e.g. transformer.h.6.mlp
    norm_name: str  # full module name of the norm whose output the MLP reads
    hookpoint: str  # the MLP's name relative to the base model (sparsify's hookpoint), e.g. h.6.mlp
    post_mlp_norm: bool  # the block normalises the MLP output before adding it (Gemma 2/3)
    norm_gain: torch.Tensor | None = None  # MLP input = x_n * gain + bias (None: weights not at hand)
    norm_bias: torch.Tensor | None = None


def splice_site(model: nn.Module, layer: int) -> SpliceSite:
    """Read the site of ``layer`` off a loaded model (a meta-device model gives names only)."""
    block = decoder_layers(model)[layer]
    norm_attr = next((n for n in MLP_INPUT_NORMS if hasattr(block, n)), None)
    if norm_attr is None:
        raise InteropError(f"layer {layer} of {type(model).__name__} has none of the MLP-input norms {MLP_INPUT_NORMS}")
    names = {id(m): n for n, m in model.named_modules()}
    base_names = {id(m): n for n, m in model.base_model.named_modules()}
    norm = getattr(block, norm_attr)
    gain, bias = _norm_affine(norm) if not _on_meta(norm) else (None, None)
    return SpliceSite(layer, layer_spec(model, layer), names[id(block.mlp)], names[id(norm)],
                      base_names.get(id(block.mlp), names[id(block.mlp)]), hasattr(block, POST_MLP_NORM), gain, bias)


def site_for_model(name: str, layer: int, trust_remote_code: bool = False) -> SpliceSite:
    """The site from the model's config alone: the model is built on the meta device (no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from bench.models import model_source

    config = AutoConfig.from_pretrained(model_source(name), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return splice_site(model, layer)


@dataclass(frozen=True)
class Hook:
    layer: int
    role: str  # MLP_INPUT, MLP_OUTPUT or NORMALISED


_TL = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF = re.compile(r"^(?:.*\.)?(?:h|layers)\.(\d+)(?:\.(.+))?$")
_TL_REFUSED = {
    "hook_mlp_in": "the residual stream before the MLP's norm (TransformerLens's hook_mlp_in is not the MLP input)",
    "hook_resid_pre": "the residual stream", "hook_resid_mid": "the residual stream",
    "hook_resid_post": "the residual stream", "mlp.hook_pre": "the MLP's hidden pre-activations (d_mlp wide)",
    "mlp.hook_post": "the MLP's hidden activations (d_mlp wide)", "hook_attn_out": "the attention output",
}


def parse_hook(name: str, site: SpliceSite) -> Hook:
    """Map a hook name in any dialect to the site it reads or writes, or refuse it in one line."""
    where = f"hook {name!r}"
    if (tl := _TL.match(name)) is not None:
        layer, tail = int(tl.group(1)), tl.group(2)
        if tail == "hook_mlp_out":
            if site.post_mlp_norm:
                raise InteropError(f"{where}: on this model TransformerLens takes hook_mlp_out after the "
                                   "post-feed-forward norm, not at the MLP output our splice replaces")
            return Hook(layer, MLP_OUTPUT)
        if tail == "ln2.hook_normalized":
            return Hook(layer, NORMALISED)
        reason = _TL_REFUSED.get(tail) or ("attention" if tail.startswith("attn") else "a site")
        raise InteropError(f"{where}: is {reason}, which the MLP splice cannot use; supported: "
                           "blocks.L.ln2.hook_normalized (transcoder input) and blocks.L.hook_mlp_out")
    if (hf := _HF.match(name)) is not None:
        layer, tail = int(hf.group(1)), hf.group(2) or ""
        tail = tail.removesuffix(".output")
        norm_attr = site.norm_name.rsplit(".", 1)[-1]
        if tail == "mlp":
            return Hook(layer, MLP_OUTPUT)
        if tail in ("mlp.input", norm_attr):
            return Hook(layer, MLP_INPUT)
        if tail == POST_MLP_NORM:
            raise InteropError(f"{where}: comes after the post-feed-forward norm, not at the MLP output our "
                               "splice replaces")
        if tail == "":
            raise InteropError(f"{where}: is the residual stream (a decoder block's output), which the MLP "
                               "splice cannot use")
        raise InteropError(f"{where}: is not the MLP's input ({norm_attr} or mlp.input) or output (mlp) on this model")
    raise InteropError(f"{where}: unrecognised; expected blocks.L.hook_mlp_out / blocks.L.ln2.hook_normalized "
                       "(TransformerLens) or a module name ending in layers.L.mlp / h.L.mlp")


def check_layer(hook: Hook, site: SpliceSite, name: str) -> None:
    if hook.layer != site.layer:
        raise InteropError(f"hook {name!r} is at layer {hook.layer}, but layer {site.layer} was asked for")


def _on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


@torch.no_grad()
def _norm_affine(norm: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The norm's per-channel gain g and bias b (its output is x_n * g + b), or (None, None).

    The stored weight is g for LayerNorm and Llama's RMSNorm but 1 + weight for Gemma's, so the
    formula is chosen by probing: for a mean-zero input u of large RMS, x_n = u, so the module
    returns u g + b. A probe that fits neither formula leaves the gain unknown (conversion refused).
    """
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None, None
    bias = getattr(norm, "bias", None)
    bias = bias.detach().float().cpu() if isinstance(bias, torch.Tensor) else torch.zeros(weight.shape[-1])
    d = weight.shape[-1]
    u = torch.ones(d)
    u[1::2] = -1.0
    if d % 2:
        u[-1] = 0.0
    probe = lambda s: norm((s * 1e3 * u).to(weight.dtype).to(weight.device)).float().cpu()  # noqa: E731
    plus, minus = probe(1.0), probe(-1.0)
    measured_gain = ((plus - minus) / 2)[u != 0] / u[u != 0]
    measured_bias = (plus + minus) / 2
    for gain in (weight.detach().float().cpu(), 1.0 + weight.detach().float().cpu()):
        if torch.allclose(gain[u != 0], measured_gain, rtol=1e-2, atol=1e-3) and \
                torch.allclose(bias, measured_bias, rtol=1e-2, atol=1e-3):
            return gain, bias
    return None, None
