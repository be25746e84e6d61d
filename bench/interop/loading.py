"""``load_dictionary``: any supported checkpoint -> a SparseLayer for our splice, with its provenance.

The layer is float32 on the CPU and in eval mode; move it with ``loaded.layer.to(device)``.
Its ``input_site`` says what the splice feeds it: ``mlp_input`` (transcoders) or ``mlp_output``
(SAEs, which the model then runs on MLP(x)). ``Loaded.row_fields()`` is what a result row
takes from the dictionary; the metrics come from the same evaluation as our own cells.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.interop import saelens, sources, sparsify
from bench.interop.files import InteropError, read_json
from bench.interop.sites import SpliceSite
from methods.base import SparseLayer
from methods.checkpoint import load_layer

EXPORT_FILE = "mxbench_export.json"  # written beside an mxbench export: the model and layer it belongs to
_PREFIX = {"sae-lens": "saelens", "sparsify": "sparsify", "mxbench": "mxbench"}


@dataclass
class Loaded:
    layer: SparseLayer
    format: str  # "sae-lens", "sparsify" or "mxbench"
    source: str  # as the user gave it
    directory: Path  # the local folder read
    architecture: str  # the format's own name for it, e.g. "topk", "jumprelu_transcoder", "tc"
    hook_in: str
    hook_out: str
    k: int | None  # TopK's K; None for JumpReLU/ReLU (their L0 is measured, not fixed)
    d_sae: int
    threshold: str | None = None  # "per-unit JumpReLU" when the dictionary thresholds instead of TopK
    conversions: list[str] = field(default_factory=list)  # normalisations folded into the weights

    @property
    def method(self) -> str:
        """The row's method name, e.g. ``saelens:jumprelu``, ``sparsify:topk-transcoder``, ``mxbench:mxd``; a
        SAELens SAE architecture used as a transcoder (our TC exports) says so: ``saelens:topk-transcoder``."""
        transcoder = self.format == "sae-lens" and "transcoder" not in self.architecture \
            and self.layer.input_site == "mlp_input"
        return f"{_PREFIX[self.format]}:{self.architecture}{'-transcoder' if transcoder else ''}"

    def row_fields(self) -> dict[str, Any]:
        """What a result row takes from the dictionary (the evaluation adds the metrics)."""
        return {
            "method": self.method, "k": self.k, "n_params": self.layer.n_params(), "n_units": self.layer.n_units,
            "input_site": self.layer.input_site, "source": self.source, "format": self.format,
            "architecture": self.architecture, "hook_in": self.hook_in, "hook_out": self.hook_out,
            "d_sae": self.d_sae, "threshold": self.threshold, "conversions": list(self.conversions),
            "method_config": self.layer.to_config()["config"],
        }


def load_dictionary(source: str, site: SpliceSite, *, norm_scaling_factor: float | None = None) -> Loaded:
    """Load the dictionary at ``source`` (local folder or hub reference) for layer ``site.layer``.

    Raises ``InteropError`` (a ValueError) in one line when a file is missing or unreadable, the
    format or architecture is unsupported, it was trained on another site, layer or width, or a
    normalisation cannot be folded exactly into its weights.
    """
    directory = sources.resolve(source)
    fmt = sources.detect_format(directory)
    if fmt == "mxbench":
        return _load_mxbench(source, directory, site)
    if fmt == "sparsify" and not (directory / sparsify.CONFIG_FILE).is_file():
        chosen = sparsify.find_hookpoint(directory, site)
        if chosen is None:
            raise InteropError(f"{directory}: no sparsify hookpoint at layer {site.layer}'s MLP "
                               f"(expected a folder named like {site.hookpoint})")
        directory = chosen
    if fmt == "sae-lens":
        dictionary, info = saelens.load(directory, site, norm_scaling_factor)
    else:
        if norm_scaling_factor is not None:
            raise InteropError("a norm scaling factor applies to SAELens checkpoints only")
        dictionary, info = sparsify.load(directory, site)
    try:
        layer = dictionary.to_layer(site.spec)
    except InteropError as err:
        raise InteropError(f"{directory}: {err}") from None
    return Loaded(layer, fmt, source, directory, info["architecture"], info["hook_in"], info["hook_out"],
                  dictionary.k, info["d_sae"], info["threshold"], dictionary.conversions)


def _load_mxbench(source: str, directory: Path, site: SpliceSite) -> Loaded:
    """One of our checkpoints; an export records its model and layer, which must match."""
    layer = load_layer(directory).eval().requires_grad_(False)
    exported = read_json(directory / EXPORT_FILE) if (directory / EXPORT_FILE).is_file() else {}
    if "layer" in exported and exported["layer"] != site.layer:
        raise InteropError(f"{directory}: exported from layer {exported['layer']}, but layer {site.layer} "
                           "was asked for")
    if layer.spec.d_model != site.spec.d_model:
        raise InteropError(f"{directory}: d_model={layer.spec.d_model}, but the model's d_model is {site.spec.d_model}")
    hook_in = site.norm_name if layer.input_site == "mlp_input" else site.mlp_name
    return Loaded(layer.float(), "mxbench", source, directory, layer.name, hook_in, site.mlp_name, layer.config.k,
                  layer.n_units, None, [])
