"""SAELens checkpoints: ``cfg.json`` + ``sae_weights.safetensors``, read and written.

Read: architectures ``topk``, ``jumprelu``, ``standard`` (ReLU; or TopK when SAELens < 6 wrote
``activation_fn_str: "topk"``), ``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder`` and
``jumprelu_skip_transcoder``. Config keys are read from the top level (SAELens < 6) or from
``metadata`` (SAELens 6), with the old names (``hook_point``, ``activation_fn_str``) accepted.
Weights: W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out], b_dec, threshold, W_skip [d_out, d_in].

Written: our ``tc`` and ``sae`` as the ``topk`` architecture (SAELens has no TopK transcoder class;
a ``topk`` SAE with apply_b_dec_to_input=false computes exactly the TC's function, and
``hook_name_out`` records that it writes the MLP output), with Hugging Face module names as hooks
(``model_class_name: AutoModelForCausalLM``), so SAELens itself hooks the very modules we splice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.interop.dictionary import Dictionary
from bench.interop.files import InteropError, expect_shape, read_json, read_tensors, write_json, write_tensors
from bench.interop.sites import MLP_INPUT, MLP_OUTPUT, NORMALISED, SpliceSite, check_layer, parse_hook
from methods.base import SparseLayer

CONFIG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
ARCHITECTURES = {  # architecture -> (activation, is a transcoder, has a skip)
    "topk": ("topk", False, False), "jumprelu": ("jumprelu", False, False), "standard": ("relu", False, False),
    "transcoder": ("relu", True, False), "skip_transcoder": ("relu", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False), "jumprelu_skip_transcoder": ("jumprelu", True, True),
}
_OLD_NAMES = {"hook_point": "hook_name", "hook_point_layer": "hook_layer", "activation_fn_str": "activation_fn"}
# TransformerLens processing that changes what hook_mlp_out holds (fold_ln leaves both our sites alone).
_PROCESSING = ("center_writing_weights",)


def read_config(directory: Path) -> dict[str, Any]:
    """cfg.json with SAELens 6's ``metadata`` merged into the top level and old key names renamed."""
    raw = read_json(directory / CONFIG_FILE)
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    merged = {**metadata, **{k: v for k, v in raw.items() if k != "metadata"}}
    return {_OLD_NAMES.get(k, k): v for k, v in merged.items()}


def load(directory: Path, site: SpliceSite,
         norm_scaling_factor: float | None = None) -> tuple[Dictionary, dict[str, Any]]:
    """The dictionary in ``directory`` as it acts on our splice site, and its provenance."""
    cfg = read_config(directory)
    where = directory / CONFIG_FILE
    architecture = _architecture(cfg, where)
    activation, transcoder, has_skip = ARCHITECTURES[architecture]
    if architecture == "standard" and cfg.get("activation_fn") == "topk":
        activation = "topk"
    elif architecture == "standard" and cfg.get("activation_fn", "relu") != "relu":
        raise InteropError(f"{where}: activation_fn {cfg['activation_fn']!r} is not supported (relu or topk)")
    hook_in, hook_out = _hooks(cfg, where, transcoder)
    roles = _check_sites(cfg, hook_in, hook_out, site, where)
    d_in, d_sae = _int(cfg, "d_in", where), _int(cfg, "d_sae", where)
    d_out = int(cfg.get("d_out") or d_in)
    for name, value in (("d_in", d_in), ("d_out", d_out)):
        if value != site.spec.d_model:
            raise InteropError(f"{where}: {name}={value}, but the model's d_model is {site.spec.d_model}")
    tensors = read_tensors(directory / WEIGHTS_FILE)
    weights = directory / WEIGHTS_FILE
    d = site.spec.d_model
    dictionary = Dictionary(
        encoder=expect_shape(tensors, "W_enc", (d, d_sae), weights).T.contiguous(),
        b_enc=expect_shape(tensors, "b_enc", (d_sae,), weights),
        decoder=expect_shape(tensors, "W_dec", (d_sae, d), weights),
        b_dec=expect_shape(tensors, "b_dec", (d,), weights),
        reads=MLP_INPUT if roles[0] != MLP_OUTPUT else MLP_OUTPUT, activation=activation,
        centre_input=bool(cfg.get("apply_b_dec_to_input", not transcoder)), k=_k(cfg, activation, where),
        threshold=expect_shape(tensors, "threshold", (d_sae,), weights) if activation == "jumprelu" else None,
        skip=expect_shape(tensors, "W_skip", (d, d), weights) if has_skip else None,
    )
    _apply_normalisations(dictionary, cfg, tensors, roles[0], site, norm_scaling_factor, where)
    provenance = {"architecture": architecture, "hook_in": hook_in, "hook_out": hook_out or hook_in, "d_sae": d_sae,
                  "threshold": "per-unit JumpReLU" if activation == "jumprelu" else None}
    return dictionary, provenance


def _architecture(cfg: dict[str, Any], where: Path) -> str:
    architecture = cfg.get("architecture", "standard")
    if architecture not in ARCHITECTURES:
        raise InteropError(f"{where}: architecture {architecture!r} is not supported; "
                           f"supported: {', '.join(ARCHITECTURES)}")
    return architecture


def _hooks(cfg: dict[str, Any], where: Path, transcoder: bool) -> tuple[str, str | None]:
    """Input and output hook; the Hugging Face names SAELens records beside its own win when present."""
    hook_in = cfg.get("hf_hook_name") or cfg.get("hook_name")
    hook_out = cfg.get("hf_hook_name_out") or cfg.get("hook_name_out") or None
    if not isinstance(hook_in, str):
        raise InteropError(f"{where}: no hook_name, so the site it was trained on is unknown")
    if transcoder and not hook_out:
        raise InteropError(f"{where}: a transcoder without hook_name_out, so the site it writes is unknown")
    if cfg.get("hook_head_index") is not None or cfg.get("reshape_activations", "none") != "none":
        raise InteropError(f"{where}: reads one attention head (hook_head_index / hook_z), not an MLP site")
    return hook_in, (hook_out if hook_out != hook_in else None)


def _check_sites(cfg, hook_in: str, hook_out: str | None, site: SpliceSite, where: Path) -> tuple[str, str]:
    """Roles (input, output): (MLP input or its normalised form, MLP output) or (MLP output, MLP output)."""
    first = parse_hook(hook_in, site)
    check_layer(first, site, hook_in)
    recorded = cfg.get("hook_layer")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded != first.layer:
        raise InteropError(f"{where}: hook_layer={recorded} disagrees with hook {hook_in!r}")
    second = parse_hook(hook_out, site) if hook_out else first
    check_layer(second, site, hook_out or hook_in)
    if second.role != MLP_OUTPUT:
        raise InteropError(f"{where}: writes {hook_out or hook_in}, not the MLP output; an SAE must read the MLP "
                           "output and a transcoder must write it")
    kwargs = cfg.get("model_from_pretrained_kwargs") or {}
    processed = [k for k in _PROCESSING if kwargs.get(k)]
    if processed and (cfg.get("model_class_name") or "HookedTransformer") == "HookedTransformer":
        raise InteropError(f"{where}: trained on a TransformerLens model loaded with {processed}=True, which changes "
                           "hook_mlp_out; it cannot be scored on the unprocessed model")
    return first.role, second.role


def _apply_normalisations(dictionary: Dictionary, cfg: dict[str, Any], tensors, read_role: str, site: SpliceSite,
                          scaling: float | None, where: Path) -> None:
    mode = cfg.get("normalize_activations") or "none"
    mode = {True: "expected_average_only_in", False: "none"}.get(mode, mode)  # booleans of old SAELens
    given = scaling is not None
    scaling = scaling if given else cfg.get("norm_scaling_factor")
    if mode == "expected_average_only_in":
        if dictionary.reads != MLP_OUTPUT:
            raise InteropError(f"{where}: normalize_activations='expected_average_only_in' on a transcoder is "
                               "not supported")
        if scaling is None:
            raise InteropError(f"{where}: normalize_activations='expected_average_only_in' needs the dataset scaling "
                               "factor SAELens keeps outside the checkpoint; pass it (--norm-scaling-factor)")
        dictionary.fold_input_scale(float(scaling))
    elif mode != "none":
        raise InteropError(f"{where}: normalize_activations={mode!r} rescales each token at run time and cannot be "
                           "folded into the weights; supported: none, expected_average_only_in")
    elif given:
        raise InteropError(f"{where}: a norm scaling factor was given but normalize_activations is 'none'")
    for name in ("finetuning_scaling_factor", "scaling_factor"):
        if name in tensors and not bool((tensors[name] == 1).all()):
            scale = expect_shape(tensors, name, (dictionary.width,), where)
            dictionary.fold_unit_scale(scale, f"{name} folded into W_dec")
    if cfg.get("rescale_acts_by_decoder_norm") and dictionary.activation == "topk":
        dictionary.fold_decoder_norm()
    if read_role == NORMALISED:
        dictionary.fold_input_norm(site.norm_gain, site.norm_bias)


def _int(cfg: dict[str, Any], key: str, where: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InteropError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _k(cfg: dict[str, Any], activation: str, where: Path) -> int | None:
    if activation != "topk":
        return None
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if not isinstance(k, int) or isinstance(k, bool):
        raise InteropError(f"{where}: a TopK dictionary without an integer k (k or activation_fn_kwargs.k), got {k!r}")
    return k


def write(layer: SparseLayer, site: SpliceSite, directory: Path, model_name: str) -> Path:
    """Write our ``tc`` or ``sae`` as a SAELens ``topk`` checkpoint that reads and writes our splice sites."""
    transcoder = layer.input_site == "mlp_input"
    d = site.spec.d_model
    cfg = {
        "architecture": "topk", "d_in": d, "d_sae": layer.n_units, "k": layer.config.k, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": not transcoder, "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": False, "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.0.0", "model_name": model_name, "model_class_name": "AutoModelForCausalLM",
            "hook_name": site.norm_name if transcoder else site.mlp_name, "hook_layer": site.layer,
            **({"hook_name_out": site.mlp_name, "d_out": d} if transcoder else {}), "exported_by": "mxbench",
        },
    }
    write_json(cfg, directory / CONFIG_FILE)
    write_tensors({"W_enc": layer.encoder.weight.T, "b_enc": layer.encoder.bias, "W_dec": layer.decoder,
                   "b_dec": layer.b_out}, directory / WEIGHTS_FILE)
    return directory
