"""Gemma 1 (gemma-2b) and Gemma 2 (gemma-2-2b): where their MLP sits, and a whole `bench run` on each.

The architecture-parametrised tests elsewhere (MLP location, splice, KL, replayed prefix) cover both
through ``tests/conftest.py``'s ARCHITECTURES; this file checks what is particular to them: Gemma 2
wraps its MLP in two norms (pre- and post-feedforward) and soft-caps its output logits.
"""
from __future__ import annotations

import math

import pytest
import torch

from bench.activations import collect_mlp_io
from bench.cli import main
from bench.models import decoder_layers, layer_spec, mlp_module
from bench.results import RunStore
from tests.conftest import tiny_model, tiny_tokenizer

GEMMAS = ("gemma", "gemma2")
TINY = ["--tokens", "1024", "--eval-tokens", "128", "--ce-tokens", "64", "--context-length", "16",
        "--batch-size", "128", "--expansion", "8", "--k", "2", "--warmup-steps", "2", "--methods", "tc,mxd-glu,sae"]


@pytest.mark.parametrize("arch", GEMMAS)
def test_the_mlp_reads_the_pre_mlp_norm_and_feeds_the_residual_or_the_post_mlp_norm(arch):
    """x is the output of the norm before the MLP; y is what the block adds to the residual stream
    (Gemma 1) or hands to its post-feedforward norm first (Gemma 2)."""
    model = tiny_model(arch)
    block = decoder_layers(model)[2]
    before = block.pre_feedforward_layernorm if arch == "gemma2" else block.post_attention_layernorm
    seen = {}
    handles = [before.register_forward_hook(lambda m, a, out: seen.__setitem__("normed", out))]
    if arch == "gemma2":
        handles.append(block.post_feedforward_layernorm.register_forward_pre_hook(
            lambda m, a: seen.__setitem__("post_input", a[0])))
    ids = torch.randint(0, 96, (2, 12))
    try:
        x, y = collect_mlp_io(model, 2, ids)
        with torch.no_grad():
            model(input_ids=ids)  # the hooks see the full forward too
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(x, seen["normed"].reshape(-1, 32))
    if arch == "gemma2":
        torch.testing.assert_close(y, seen["post_input"].reshape(-1, 32))
    spec = layer_spec(model, 2)
    assert (spec.d_model, spec.d_mlp, spec.gated, spec.activation) == (32, 96, True, "gelu_pytorch_tanh")
    assert type(mlp_module(model, 2)).__name__ == {"gemma": "GemmaMLP", "gemma2": "Gemma2MLP"}[arch]


def test_gemma2_logits_are_soft_capped_in_the_tiny_model():
    """The fixture's cap must bind, or the KL tests' Gemma 2 case would not exercise the capping."""
    model = tiny_model("gemma2")
    ids = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        raw = model.lm_head(hidden)
        logits = model(input_ids=ids).logits
    cap = model.config.final_logit_softcapping
    assert raw.abs().max() > 1.5 * cap  # well into tanh's flat part
    torch.testing.assert_close(logits, cap * torch.tanh(raw / cap))


@pytest.fixture(scope="module", params=GEMMAS)
def gemma_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    tiny_model(request.param).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return request.param, path


def test_bench_run_end_to_end(gemma_dir, corpus_file, tmp_path):
    arch, model_dir = gemma_dir
    argv = ["run", "--model", str(model_dir), "--dataset", str(corpus_file), "--results-dir", str(tmp_path),
            "--run-name", arch, "--figures-dir", str(tmp_path / "figures"), *TINY]
    assert main(argv) == 0
    rows = RunStore(tmp_path / arch).rows()
    assert sorted(r["method"] for r in rows) == ["mxd-glu", "sae", "tc"]
    for row in rows:
        assert row["status"] == "ok" and row["layer"] == 2
        assert all(math.isfinite(row[m]) for m in ("nmse", "ce_clean", "ce_spliced", "ce_zero", "kl"))
        assert row["kl"] >= 0 and row["ce_zero"] != row["ce_clean"]
        # the 96-word vocabulary bounds any model's CE by a uniform guess, log 96, up to the model's confidence
        assert 0 < row["ce_clean"] < 2 * math.log(96)
    assert (tmp_path / arch / "REPORT.md").is_file()
