"""Exporting a trained cell and loading it back gives the same layer, outputs and spliced CE."""
from __future__ import annotations

import json

import pytest
import torch

from bench.activations import collect_mlp_io
from bench.evaluate import CrossEntropyEvaluator
from bench.interop import export_cell, load_dictionary, push_to_hub, splice_site
from bench.models import layer_spec, mlp_module
from bench.results import RunStore
from bench.splice import SplicedMLP
from bench.train import OptimiserSettings, build_cell, train_step
from methods import create, save_layer
from tests.conftest import VOCAB, tiny_model

LAYER = 1
METRICS = {"nmse": 0.1234, "l0": 4.0, "dead_fraction": 0.25, "ce_clean": 3.5, "ce_spliced": 3.75, "delta_ce": 0.25,
           "delta_ce_stderr": 0.01, "ce_zero": 4.5, "ce_recovered": 0.75}


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def site(model):
    return splice_site(model, LAYER)


def _trained_tc(model, steps: int = 8):
    """A TC trained for a few steps on the tiny model's own MLP input/output (non-trivial biases)."""
    ids = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(0))
    x, y = collect_mlp_io(model, LAYER, ids)
    cell = build_cell("tc", layer_spec(model, LAYER), k=4, expansion=2, settings=OptimiserSettings(1e-2, 0), seed=0)
    for _ in range(steps):
        train_step(cell, x, y)
    return cell.layer.eval()


def _randomised(layer):
    """Every parameter non-zero and distinct (a freshly built layer has zero biases and decoders)."""
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return layer.eval()


def _run(tmp_path, model_name, layers: dict):
    """A run folder with one finished row and checkpoint per (name -> layer), as bench run writes them."""
    run_dir = tmp_path / "run"
    store = RunStore(run_dir)
    for cell, layer in layers.items():
        method, k = cell.rsplit("-k", 1)
        save_layer(layer, run_dir / "checkpoints" / cell)
        store.append({"run": "run", "model": model_name, "model_id": model_name, "layer": LAYER, "method": method,
                      "k": int(k), "expansion": 2, "train_tokens": 1000, "seed": 0, "dataset": "wiki-offline",
                      "status": "ok", "checkpoint": f"checkpoints/{cell}", "n_params": layer.n_params(),
                      "n_units": layer.n_units, "versions": {"torch": torch.__version__, "mxbench_source": "abc123"},
                      **METRICS})
    return run_dir


def _cells(spec):
    return {"tc-k4": _randomised(create("tc", spec, k=4, expansion=2)),
            "stc-k4": _randomised(create("stc", spec, k=4, expansion=2)),
            "sae-k4": _randomised(create("sae", spec, k=4, expansion=2)),
            "mxd-k4": _randomised(create("mxd", spec, k=4, expansion=8)),
            "lowrank-moe-k4": _randomised(create("lowrank-moe", spec, k=4, expansion=8))}


ROUND_TRIPS = [("tc-k4", "sae-lens"), ("tc-k4", "sparsify"), ("tc-k4", "mxbench"), ("stc-k4", "sparsify"),
               ("stc-k4", "mxbench"), ("sae-k4", "sae-lens"), ("sae-k4", "sparsify"), ("sae-k4", "mxbench"),
               ("mxd-k4", "mxbench"), ("lowrank-moe-k4", "mxbench")]


@pytest.mark.parametrize("cell,fmt", ROUND_TRIPS)
def test_export_then_load_reproduces_the_cell_exactly(tmp_path, model, site, cell, fmt):
    cells = _cells(site.spec)
    run_dir = _run(tmp_path, "tiny-llama", cells)
    out = export_cell(run_dir, cell, fmt, tmp_path / "out", site=site)
    loaded = load_dictionary(str(out), site)
    original = cells[cell]
    assert type(loaded.layer) is type(original) and loaded.layer.input_site == original.input_site
    x = torch.randn(50, site.spec.d_model, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        (y0, c0), (y1, c1) = original(x), loaded.layer(x)
    assert torch.equal(y0, y1)
    assert torch.equal(c0.values, c1.values) and torch.equal(c0.indices, c1.indices)
    assert loaded.k == 4 and loaded.layer.n_params() == original.n_params()


def test_a_sparsify_or_saelens_tc_from_our_trained_tc_gives_the_same_spliced_ce(tmp_path, model, site):
    tc = _trained_tc(model)
    run_dir = _run(tmp_path, "tiny-llama", {"tc-k4": tc})
    contexts = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
    evaluator = CrossEntropyEvaluator(model, LAYER, contexts, batch_size=4)
    ours = evaluator.per_sequence_ce(SplicedMLP(tc, mlp_module(model, LAYER)))
    clean = evaluator.per_sequence_ce(None)
    assert not torch.equal(ours, clean)  # the splice changes the CE, so equality below means something
    for fmt in ("sparsify", "sae-lens"):
        loaded = load_dictionary(str(export_cell(run_dir, "tc-k4", fmt, tmp_path / fmt, site=site)), site)
        assert torch.equal(evaluator.per_sequence_ce(SplicedMLP(loaded.layer, mlp_module(model, LAYER))), ours), fmt


def test_export_reads_the_site_from_the_rows_model_config(tmp_path, tiny_model_dir, site):
    """Without a site, export builds the model on the meta device from its config (no weights read)."""
    run_dir = _run(tmp_path, str(tiny_model_dir), {"tc-k4": _randomised(create("tc", site.spec, k=4, expansion=2))})
    out = export_cell(run_dir, "tc-k4", "sae-lens", tmp_path / "out")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == f"model.layers.{LAYER}.post_attention_layernorm"
    assert cfg["metadata"]["hook_name_out"] == f"model.layers.{LAYER}.mlp"
    assert cfg["architecture"] == "topk" and cfg["k"] == 4 and cfg["apply_b_dec_to_input"] is False
    sparsify_out = export_cell(run_dir, "tc-k4", "sparsify", tmp_path / "sp")
    assert (sparsify_out / f"layers.{LAYER}.mlp" / "sae.safetensors").is_file()


def test_the_model_card_carries_metrics_settings_and_versions(tmp_path, site):
    run_dir = _run(tmp_path, "org/tiny", {"sae-k4": _randomised(create("sae", site.spec, k=4, expansion=2))})
    card = (export_cell(run_dir, "sae-k4", "sparsify", tmp_path / "out", site=site) / "README.md").read_text()
    assert "library_name: sparsify" in card and "base_model: org/tiny" in card
    assert "| NMSE (held-out) | 0.1234 |" in card and "| ΔCE paired standard error | 0.01 |" in card
    assert "| train_tokens | 1000 |" in card and "| mxbench_source | abc123 |" in card
    assert f"layers.{LAYER}.mlp" in card


@pytest.mark.parametrize("cell,fmt,expected", [
    ("mxd-k4", "sae-lens", "use --format mxbench"), ("mxd-k4", "sparsify", "use --format mxbench"),
    ("lowrank-moe-k4", "sparsify", "use --format mxbench"), ("stc-k4", "sae-lens", "no TopK skip transcoder"),
    ("tc-k8", "sparsify", "no finished cell 'tc-k8'"), ("tc-k4", "onnx", "format 'onnx'"),
])
def test_what_a_format_cannot_express_is_refused_in_one_line(tmp_path, site, cell, fmt, expected):
    run_dir = _run(tmp_path, "tiny-llama", _cells(site.spec))
    with pytest.raises(ValueError) as err:
        export_cell(run_dir, cell, fmt, tmp_path / "out", site=site)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_folder_and_a_wrong_layer(tmp_path, model, site):
    run_dir = _run(tmp_path, "tiny-llama", {"tc-k4": _randomised(create("tc", site.spec, k=4, expansion=2))})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        export_cell(run_dir, "tc-k4", "mxbench", tmp_path / "busy", site=site)
    out = export_cell(run_dir, "tc-k4", "mxbench", tmp_path / "out", site=site)
    with pytest.raises(ValueError, match=f"exported from layer {LAYER}, but layer 2"):
        load_dictionary(str(out), splice_site(model, 2))


class _FakeApi:
    def __init__(self, token=None):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/1"})()


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(tmp_path, site, monkeypatch):
    import huggingface_hub

    made = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: made.append(_FakeApi(token)) or made[-1])
    run_dir = _run(tmp_path, "tiny-llama", {"tc-k4": _randomised(create("tc", site.spec, k=4, expansion=2))})
    out = export_cell(run_dir, "tc-k4", "sparsify", tmp_path / "out", site=site)
    url = push_to_hub(out, "me/tiny-tc")
    (created, upload), = [made[0].calls]
    assert created[:2] == ("create_repo", "me/tiny-tc")
    assert created[2]["exist_ok"] and created[2]["repo_type"] == "model"
    assert upload[1]["folder_path"] == str(out) and upload[1]["repo_id"] == "me/tiny-tc"
    assert url.endswith("/commit/1")
    with pytest.raises(ValueError, match="not an export"):
        push_to_hub(tmp_path, "me/x", api=_FakeApi())


def test_their_loader_reads_our_sparsify_export(tmp_path, site):
    """Optional: EleutherAI sparsify's own loader (eai-sparsify) computes what our layer computes."""
    sparsify = pytest.importorskip("sparsify")
    cells = _cells(site.spec)
    run_dir = _run(tmp_path, "tiny-llama", cells)
    x = torch.randn(40, site.spec.d_model, generator=torch.Generator().manual_seed(6))
    for cell in ("tc-k4", "stc-k4", "sae-k4"):
        out = export_cell(run_dir, cell, "sparsify", tmp_path / cell, site=site)
        coder = sparsify.SparseCoder.load_from_disk(out / site.hookpoint)
        with torch.no_grad():
            theirs = coder(x).sae_out
        torch.testing.assert_close(theirs, cells[cell](x)[0], rtol=1e-5, atol=1e-5)


def test_their_loader_reads_our_saelens_export(tmp_path, site):
    """Optional: SAELens's own loader (sae-lens) computes what our layer computes."""
    sae_lens = pytest.importorskip("sae_lens")
    cells = _cells(site.spec)
    run_dir = _run(tmp_path, "tiny-llama", cells)
    x = torch.randn(40, site.spec.d_model, generator=torch.Generator().manual_seed(7))
    for cell in ("tc-k4", "sae-k4"):
        sae = sae_lens.SAE.load_from_disk(export_cell(run_dir, cell, "sae-lens", tmp_path / cell, site=site))
        with torch.no_grad():
            theirs = sae(x)
        torch.testing.assert_close(theirs, cells[cell](x)[0], rtol=1e-5, atol=1e-5)
