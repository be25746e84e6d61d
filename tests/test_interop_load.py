"""Loading SAELens and sparsify dictionaries reproduces their equations computed by hand."""
from __future__ import annotations

import pytest
import torch

from bench.interop import load_dictionary
from methods.base import dense_codes
from tests.test_interop_fixtures import (D, K, LAYER, N, hand_codes, hand_output, inputs, saelens_cfg, site, weights,
                                         write_saelens, write_sparsify)

MLP_IN, MLP_OUT = f"model.layers.{LAYER}.post_attention_layernorm", f"model.layers.{LAYER}.mlp"
TL_OUT = f"blocks.{LAYER}.hook_mlp_out"


def _check(loaded, x, expected_y, expected_z):
    y_hat, codes = loaded.layer(x)
    torch.testing.assert_close(y_hat, expected_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense_codes(codes, N), expected_z, rtol=1e-5, atol=1e-5)
    # exactly the active units are listed: the non-zero codes per token match the hand count
    assert torch.equal((codes.values != 0).sum(-1), (expected_z != 0).sum(-1))


# (architecture, hooks, activation, skip, the cfg's apply_b_dec_to_input, reads the MLP output)
SAELENS_CASES = [
    ("topk", (TL_OUT, None), "topk", False, True, True),
    ("topk", (TL_OUT, None), "topk", False, False, True),
    ("topk", (MLP_IN, MLP_OUT), "topk", False, False, False),  # our export convention for a TC
    ("jumprelu", (TL_OUT, None), "jumprelu", False, True, True),
    ("jumprelu", (MLP_OUT, None), "jumprelu", False, False, True),
    ("standard", (TL_OUT, None), "relu", False, True, True),
    ("transcoder", (MLP_IN, MLP_OUT), "relu", False, False, False),
    ("skip_transcoder", (MLP_IN, MLP_OUT), "relu", True, False, False),
    ("jumprelu_transcoder", (MLP_IN, MLP_OUT), "jumprelu", False, False, False),
    ("jumprelu_skip_transcoder", (MLP_IN, MLP_OUT), "jumprelu", True, False, False),
]


@pytest.mark.parametrize("architecture,hooks,activation,skip,centre,sae", SAELENS_CASES)
def test_saelens_dictionary_computes_its_equation(tmp_path, architecture, hooks, activation, skip, centre, sae):
    w = weights(skip=skip, threshold=activation == "jumprelu")
    extra = {"k": K} if activation == "topk" else {}
    cfg = saelens_cfg(architecture, *hooks, apply_b_dec_to_input=centre, **extra)
    directory = write_saelens(tmp_path / "d", cfg, w)
    loaded = load_dictionary(str(directory), site())
    x = inputs()
    _check(loaded, x, hand_output(x, w, activation, centre=centre), hand_codes(x, w, activation, centre=centre))
    assert loaded.layer.input_site == ("mlp_output" if sae else "mlp_input")
    suffix = "-transcoder" if not sae and "transcoder" not in architecture else ""  # a topk SAE used as a TC
    assert loaded.method == f"saelens:{architecture}{suffix}" and loaded.d_sae == N
    assert loaded.k == (K if activation == "topk" else None)


def test_saelens_5_topk_config_with_old_key_names(tmp_path):
    """SAELens < 6: hooks at the top level as hook_point, TopK as standard + activation_fn_str."""
    w = weights()
    cfg = {"architecture": "standard", "d_in": D, "d_sae": N, "hook_point": TL_OUT, "hook_point_layer": LAYER,
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": True,
           "normalize_activations": False, "sae_lens_version": "3.20.0"}
    loaded = load_dictionary(str(write_saelens(tmp_path / "d", cfg, w)), site())
    x = inputs()
    _check(loaded, x, hand_output(x, w, "topk", centre=True), hand_codes(x, w, "topk", centre=True))


def test_rescale_acts_by_decoder_norm_is_folded(tmp_path):
    """TopK on pre * ||W_dec_i||, decoded with W_dec_i / ||W_dec_i|| (SAELens's rescaled TopK)."""
    w = weights()
    w["W_dec"] = w["W_dec"] * torch.linspace(0.2, 3.0, N)[:, None]  # rows far from unit norm
    cfg = saelens_cfg("topk", TL_OUT, k=K, apply_b_dec_to_input=True, rescale_acts_by_decoder_norm=True)
    loaded = load_dictionary(str(write_saelens(tmp_path / "d", cfg, w)), site())
    x = inputs()
    norms = w["W_dec"].norm(dim=1)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms
    values, indices = pre.topk(K, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    expected = (z / norms) @ w["W_dec"] + w["b_dec"]
    _check(loaded, x, expected, z)
    assert any("rescale_acts_by_decoder_norm" in c for c in loaded.conversions)


@pytest.mark.parametrize("architecture,activation", [("topk", "topk"), ("jumprelu", "jumprelu")])
def test_dataset_norm_scaling_factor_is_folded_into_the_weights(tmp_path, architecture, activation):
    """Trained on s*y, reconstructing s*y: with s folded in it maps y to (SAE(s y)) / s exactly."""
    w, s = weights(threshold=activation == "jumprelu"), 2.5
    cfg = saelens_cfg(architecture, TL_OUT, apply_b_dec_to_input=True, normalize_activations="expected_average_only_in",
                      **({"k": K} if activation == "topk" else {}))
    loaded = load_dictionary(str(write_saelens(tmp_path / "d", cfg, w)), site(), norm_scaling_factor=s)
    y = inputs()
    expected = hand_output(s * y, w, activation, centre=True) / s
    _check(loaded, y, expected, hand_codes(s * y, w, activation, centre=True))
    assert loaded.conversions and "2.5" in loaded.conversions[0]


def test_finetuning_scaling_factor_is_folded_into_the_decoder(tmp_path):
    w = weights()
    scale = torch.linspace(0.5, 2.0, N)
    cfg = saelens_cfg("standard", TL_OUT, apply_b_dec_to_input=True, finetuning_scaling_factor=True)
    loaded = load_dictionary(str(write_saelens(tmp_path / "d", cfg, {**w, "finetuning_scaling_factor": scale})), site())
    x = inputs()
    z = hand_codes(x, w, "relu", centre=True)
    _check(loaded, x, (z * scale) @ w["W_dec"] + w["b_dec"], z)


def test_transformerlens_normalised_input_is_converted_to_the_mlp_input(tmp_path):
    """blocks.L.ln2.hook_normalized is the norm's output before its gain g and bias b: the loaded
    transcoder, fed the MLP input x = x_n g + b, must compute what the original did on x_n."""
    gain, bias = torch.linspace(0.5, 1.5, D), torch.linspace(-0.2, 0.3, D)
    w = weights(threshold=True)
    cfg = saelens_cfg("jumprelu_transcoder", f"blocks.{LAYER}.ln2.hook_normalized", TL_OUT)
    loaded = load_dictionary(str(write_saelens(tmp_path / "d", cfg, w)), site(gain=gain, bias=bias))
    x_n = inputs()
    x = x_n * gain + bias
    _check(loaded, x, hand_output(x_n, w, "jumprelu"), hand_codes(x_n, w, "jumprelu"))


def test_hf_hook_name_wins_over_the_transformerlens_name(tmp_path):
    """Gemma Scope style: hook_name says ln2.hook_normalized, hf_hook_name says the norm's output."""
    w = weights(threshold=True)
    cfg = saelens_cfg("jumprelu_transcoder", f"blocks.{LAYER}.ln2.hook_normalized", TL_OUT,
                      hf_hook_name=f"model.layers.{LAYER}.post_attention_layernorm.output")
    loaded = load_dictionary(str(write_saelens(tmp_path / "d", cfg, w)), site())  # no gain needed: no conversion
    x = inputs()
    _check(loaded, x, hand_output(x, w, "jumprelu"), hand_codes(x, w, "jumprelu"))


@pytest.mark.parametrize("transcode,skip", [(False, False), (True, False), (True, True)])
def test_sparsify_dictionary_computes_its_equation(tmp_path, transcode, skip):
    w = weights(skip=skip)
    directory = write_sparsify(tmp_path, f"layers.{LAYER}.mlp", w, transcode)
    loaded = load_dictionary(str(directory), site())
    x = inputs()
    _check(loaded, x, hand_output(x, w, "topk", centre=not transcode), hand_codes(x, w, "topk", centre=not transcode))
    assert loaded.layer.input_site == ("mlp_input" if transcode else "mlp_output")
    assert loaded.method.startswith("sparsify:topk-") and loaded.k == K


def test_sparsify_folder_of_hookpoints_picks_this_layers_mlp(tmp_path):
    for layer in (0, LAYER, 2):
        write_sparsify(tmp_path, f"layers.{layer}.mlp", weights(seed=layer), transcode=True)
    write_sparsify(tmp_path, f"layers.{LAYER}", weights(seed=9), transcode=False)  # the residual stream: skipped
    loaded = load_dictionary(str(tmp_path), site())
    x, w = inputs(), weights(seed=LAYER)
    assert loaded.directory.name == f"layers.{LAYER}.mlp"
    _check(loaded, x, hand_output(x, w, "topk"), hand_codes(x, w, "topk"))


@pytest.mark.parametrize("reference", ["hf://org/dicts/{sub}", "org/dicts:{sub}", "hf://org/dicts@v1/{sub}"])
def test_hub_reference_downloads_then_loads_like_a_local_folder(tmp_path, monkeypatch, reference):
    import huggingface_hub

    w = weights(threshold=True)
    write_saelens(tmp_path / "snapshot" / "mlp" / "L1", saelens_cfg("jumprelu", TL_OUT), w)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)  # "org/dicts:..." must not exist as a local path
    loaded = load_dictionary(reference.format(sub="mlp/L1"), site())
    x = inputs()
    _check(loaded, x, hand_output(x, w, "jumprelu"), hand_codes(x, w, "jumprelu"))
    (repo, revision, patterns), = calls
    assert repo == "org/dicts" and revision == ("v1" if "@" in reference else None)
    assert all(p.startswith("mlp/L1/") and not p.endswith((".pt", ".bin")) for p in patterns)


def test_bfloat16_weights_are_widened_before_any_fold(tmp_path):
    """Folds are computed in float32 on the exactly widened bf16 weights (a fold in bf16 would lose ~3 digits)."""
    w = {k: v.to(torch.bfloat16) for k, v in weights().items()}
    w["W_dec"] = w["W_dec"] * torch.linspace(0.2, 3.0, N, dtype=torch.bfloat16)[:, None]
    cfg = saelens_cfg("topk", TL_OUT, k=K, apply_b_dec_to_input=True, rescale_acts_by_decoder_norm=True,
                      dtype="bfloat16")
    loaded = load_dictionary(str(write_saelens(tmp_path / "d", cfg, w)), site())
    w = {k: v.float() for k, v in w.items()}
    norms = w["W_dec"].norm(dim=1)
    x = inputs()
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms
    values, indices = pre.topk(K, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    _check(loaded, x, (z / norms) @ w["W_dec"] + w["b_dec"], z)


def test_a_loaded_dictionary_is_frozen_float32_and_reports_its_row_fields(tmp_path):
    w = {k: v.to(torch.bfloat16) for k, v in weights(threshold=True).items()}
    loaded = load_dictionary(str(write_saelens(tmp_path / "d", saelens_cfg("jumprelu", TL_OUT), w)), site())
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in loaded.layer.parameters())
    row = loaded.row_fields()
    assert row["method"] == "saelens:jumprelu" and row["k"] is None and row["format"] == "sae-lens"
    assert row["n_units"] == N and row["n_params"] == 2 * D * N + N + D + N  # W_enc, W_dec, b_enc, b_dec, threshold
    assert row["hook_in"] == TL_OUT and row["input_site"] == "mlp_output"
