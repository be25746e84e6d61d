"""Every malformed or unusable checkpoint is refused with a one-line ValueError naming the problem."""
from __future__ import annotations

import json

import pytest
import torch

from bench.interop import load_dictionary
from tests.test_interop_fixtures import D, LAYER, saelens_cfg, site, weights, write_saelens, write_sparsify

TL_OUT = f"blocks.{LAYER}.hook_mlp_out"


def _hook(name, out=None, architecture="jumprelu"):
    return lambda path: write_saelens(path / "d", saelens_cfg(architecture, name, out), weights(threshold=True))


def _with_cfg(**fields):
    cfg = {**saelens_cfg("jumprelu", TL_OUT), **fields}
    return lambda path: write_saelens(path / "d", cfg, weights(threshold=True))


def _missing_weights(path):
    directory = path / "d"
    directory.mkdir()
    (directory / "cfg.json").write_text(json.dumps(saelens_cfg("jumprelu", TL_OUT)))
    return directory


def _bad_json(path):
    directory = write_saelens(path / "d", saelens_cfg("jumprelu", TL_OUT), weights(threshold=True))
    (directory / "cfg.json").write_text('{"architecture": "jumprelu", "d_in": ')
    return directory


def _truncated_weights(path):
    directory = write_saelens(path / "d", saelens_cfg("jumprelu", TL_OUT), weights(threshold=True))
    blob = (directory / "sae_weights.safetensors").read_bytes()
    (directory / "sae_weights.safetensors").write_bytes(blob[: len(blob) // 2])
    return directory


def _pickle_file(path):
    target = path / "sae.pt"
    target.write_bytes(b"\x80\x04not really a pickle")  # never opened: the suffix alone is refused
    return target


def _pickle_folder(path):
    directory = path / "d"
    directory.mkdir()
    (directory / "sae_weights.pt").write_bytes(b"\x80\x04")
    return directory


def _tensors(**changes):
    tensors = weights(threshold=True)
    for name, value in changes.items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value
    return lambda path: write_saelens(path / "d", saelens_cfg("jumprelu", TL_OUT), tensors)


def _sparsify(hookpoint=f"layers.{LAYER}.mlp", **extra):
    return lambda path: write_sparsify(path, hookpoint, weights(), transcode=True, **extra)


def _sparsify_other_layers(path):
    write_sparsify(path, "layers.3.mlp", weights(), transcode=True)
    return path


CASES = {
    "no such folder": (lambda path: path / "nowhere", {}, "no such directory"),
    "missing weights file": (_missing_weights, {}, "no weights"),
    "not JSON": (_bad_json, {}, "not valid JSON"),
    "truncated safetensors": (_truncated_weights, {}, "not a readable safetensors"),
    "a .pt file": (_pickle_file, {}, "pickle"),
    "a folder of pickles": (_pickle_folder, {}, "pickle"),
    "wrong width": (_with_cfg(d_in=D + 1), {}, f"d_in={D + 1}"),
    "wrong d_out": (_with_cfg(d_out=D * 2), {}, f"d_out={2 * D}"),
    "misshapen tensor": (_tensors(W_enc=torch.zeros(48, D)), {}, "shape"),
    "missing tensor": (_tensors(threshold=None), {}, "no tensor 'threshold'"),
    "unknown architecture": (_with_cfg(architecture="gated"), {}, "architecture 'gated' is not supported"),
    "residual hook": (_hook(f"blocks.{LAYER}.hook_resid_post"), {}, "residual stream"),
    "hook_mlp_in is the residual": (_hook(f"blocks.{LAYER}.hook_mlp_in"), {}, "residual stream before"),
    "MLP hidden activations": (_hook(f"blocks.{LAYER}.mlp.hook_post"), {}, "d_mlp"),
    "HF residual (block output)": (_hook(f"model.layers.{LAYER}"), {}, "residual stream"),
    "another layer": (_hook("blocks.2.hook_mlp_out"), {}, "layer 2"),
    "an SAE on the MLP input": (_hook(f"model.layers.{LAYER}.post_attention_layernorm"), {}, "not the MLP output"),
    "a transcoder without output hook": (_hook(f"model.layers.{LAYER}.post_attention_layernorm",
                                               architecture="jumprelu_transcoder"), {}, "without hook_name_out"),
    "an attention head": (_with_cfg(hook_head_index=3), {}, "attention head"),
    "hook_layer disagrees": (_with_cfg(hook_layer=3), {}, "hook_layer=3"),
    "unscaled dataset norm": (_with_cfg(normalize_activations="expected_average_only_in"), {}, "scaling factor"),
    "per-token norm": (_with_cfg(normalize_activations="constant_norm_rescale"), {}, "cannot be folded"),
    "layer_norm": (_with_cfg(normalize_activations="layer_norm"), {}, "cannot be folded"),
    "a factor for an unscaled SAE": (_with_cfg(), {"norm_scaling_factor": 2.0}, "normalize_activations is 'none'"),
    "centred MLP output weights": (
        _with_cfg(metadata={"hook_name": TL_OUT, "model_class_name": "HookedTransformer",
                            "model_from_pretrained_kwargs": {"center_writing_weights": True}}),
        {}, "center_writing_weights"),
    "Gemma's hook_mlp_out is after its post-norm": (_hook(TL_OUT), {"post_mlp_norm": True}, "post-feed-forward"),
    "Gemma Scope's hf_hook_name_out": (_hook(f"model.layers.{LAYER}.post_attention_layernorm.output",
                                             f"model.layers.{LAYER}.post_feedforward_layernorm.output",
                                             "jumprelu_transcoder"), {}, "post-feed-forward"),
    "normalised input without the model's gain": (_hook(f"blocks.{LAYER}.ln2.hook_normalized", TL_OUT,
                                                        "jumprelu_transcoder"), {}, "gain could not be read"),
    "TopK without k": (lambda path: write_saelens(path / "d", saelens_cfg("topk", TL_OUT), weights()), {}, "integer k"),
    "sparsify residual hookpoint": (_sparsify(f"layers.{LAYER}"), {}, "residual stream"),
    "sparsify groupmax": (_sparsify(activation="groupmax"), {}, "not supported"),
    "sparsify JumpReLU fork": (_sparsify(jumprelu=True), {}, "not supported"),
    "sparsify wrong width": (_sparsify(d_in=D * 2), {}, f"d_in={2 * D}"),
    "sparsify, no hookpoint at this layer": (_sparsify_other_layers, {}, "no sparsify hookpoint"),
    "sparsify TopK over the width": (_sparsify(k=10_000), {}, "k=10000"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_unusable_checkpoint_is_refused_in_one_line(tmp_path, name):
    make, options, expected = CASES[name]
    options = dict(options)
    source = make(tmp_path)
    site_options = {k: options.pop(k) for k in list(options) if k == "post_mlp_norm"}
    with pytest.raises(ValueError) as err:
        load_dictionary(str(source), site(**site_options), **options)
    message = str(err.value)
    assert expected in message, message
    assert "\n" not in message and len(message) < 400


def test_a_pickle_is_never_opened(tmp_path, monkeypatch):
    """Refused by suffix before any reader runs (torch.load is never called), even when the folder
    around it holds a loadable dictionary: naming the pickle must not load its neighbour instead."""
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    directory = write_saelens(tmp_path / "d", saelens_cfg("jumprelu", TL_OUT), weights(threshold=True))
    (directory / "sae_weights.pt").write_bytes(b"\x80\x04")
    load_dictionary(str(directory), site())  # the folder itself loads (from its safetensors)
    with pytest.raises(ValueError, match="refusing a pickle file"):
        load_dictionary(str(directory / "sae_weights.pt"), site())
