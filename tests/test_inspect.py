"""bench inspect: unit statistics against a direct computation, unit choice, lens, the written
dashboard's numbers, escaping and bad input. (The browser check is test_inspect_browser.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import methods
from bench.data import iter_documents, pack_contexts
from bench.inspect.cells import CellError, find_cell, parse_cell_name
from bench.inspect.dashboard import write_dashboard
from bench.inspect.lens import direction_logits
from bench.inspect.render import DashboardPage, UnitPanel, render_page
from bench.inspect.stats import Context, UnitStats, collect_codes, default_units, unit_activations, unit_stats
from bench.models import layer_spec, load_model, mlp_module
from methods.base import dense_codes
from tests.conftest import tiny_model

LAYER, CONTEXT = 1, 32


def randomised(name: str, spec, seed: int = 1, **config):
    """A layer with every parameter drawn at random (MxD's D starts at zero, which would hide bugs)."""
    torch.manual_seed(seed)
    layer = methods.create(name, spec, k=4, expansion=4, **config)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
    return layer.eval().requires_grad_(False)


def build_tiny_run(root: Path, model_dir: Path, corpus: Path, names=("tc", "mxd")) -> Path:
    """A run directory as bench run leaves it: cells.jsonl rows pointing at saved checkpoints."""
    model = load_model(str(model_dir)).model
    rows = []
    for name in names:
        methods.save_layer(randomised(name, layer_spec(model, LAYER)), root / "checkpoints" / f"{name}-k4")
        rows.append({"method": name, "k": 4, "model": str(model_dir), "layer": LAYER, "dataset": str(corpus),
                     "context_length": CONTEXT, "checkpoint": f"checkpoints/{name}-k4", "status": "ok"})
    (root / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, corpus_file):
    return build_tiny_run(tmp_path_factory.mktemp("run"), tiny_model_dir, corpus_file)


def mlp_inputs(model, layer: int, input_ids: torch.Tensor) -> torch.Tensor:
    """The MLP's input at every token, captured by a pre-hook over a full forward: [n*T, d]."""
    seen = []
    handle = mlp_module(model, layer).register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        model(input_ids=input_ids)
    handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


def test_unit_statistics_match_a_direct_computation():
    model = tiny_model("llama")
    layer = randomised("tc", layer_spec(model, LAYER))
    torch.manual_seed(0)
    ids = torch.randint(4, 96, (3, 20))
    ids[:, 0], ids[1, 9], ids[2, 5] = 1, 2, 0  # BOS, an EOS between documents and a pad: never scored
    table = collect_codes(model, LAYER, layer, ids, unscored_ids=(0, 1, 2), batch_size=2)
    dense = dense_codes(layer(mlp_inputs(model, LAYER, ids))[1], layer.n_units)
    scored = (ids > 2).reshape(-1)
    ranked = torch.argsort((dense[scored] > 0).sum(0), descending=True).tolist()
    units = ranked[:3] + ranked[-1:]  # the three most frequent and a rare (or dead) one
    stats = unit_stats(table, units, unit_activations(table, units), n_contexts=5, before=3, after=2)
    for unit, s in zip(units, stats):
        column = torch.where(scored, dense[:, unit], torch.zeros(()))
        assert s.frequency == pytest.approx((column > 0).sum().item() / scored.sum().item())
        assert s.n_fired == sum(s.histogram)
        expected = sorted(((v, i) for i, v in enumerate(column.tolist()) if v > 0), key=lambda t: -t[0])[:5]
        assert [c.activation for c in s.top_contexts] == pytest.approx([v for v, _ in expected], rel=1e-5)
        for context, (_, flat) in zip(s.top_contexts, expected):
            row, position = divmod(flat, ids.shape[1])
            assert (context.row, context.position) == (row, position)
            assert context.token_ids[context.focus] == ids[row, position].item()
            assert context.token_ids == ids[row, max(0, position - 3):position + 3].tolist()


def test_a_huge_activation_at_an_eos_separator_is_neither_a_top_context_nor_counted(tokenizer):
    """Packed contexts start with BOS and join documents with EOS. Unit 0 is built to peak exactly at one
    EOS position (code 1000 there; less everywhere else, as the tiny Llama's normed MLP inputs all have
    norm sqrt(d)): a dashboard that scored EOS positions would list that one first."""
    from bench.inspect.dashboard import build_dashboard
    from tests.conftest import make_documents

    model = tiny_model("llama")
    texts = [d["text"][:60] for d in make_documents(40, seed=5)]  # short documents: several EOS per context
    ids = torch.stack([c for _, c in zip(range(4), pack_contexts(texts, tokenizer, CONTEXT))])
    eos = tokenizer.eos_token_id
    row, position = map(int, torch.nonzero(ids == eos)[0])
    x = mlp_inputs(model, LAYER, ids).reshape(*ids.shape, -1)[row, position]
    layer = randomised("tc", layer_spec(model, LAYER))
    with torch.no_grad():
        layer.encoder.weight[0] = x * (1000 / x.square().sum())
        layer.encoder.bias[0] = 0.0
    units, (panel,) = build_dashboard(model, tokenizer, LAYER, layer, ids, units=[0])
    assert panel.stats.max_activation < 999  # the EOS's 1000 is not among the scored codes
    focus = [c.token_ids[c.focus] for c in panel.stats.top_contexts]
    assert focus and not {tokenizer.bos_token_id, eos} & set(focus)
    assert panel.stats.n_scored == int(((ids != eos) & (ids != tokenizer.bos_token_id)).sum())


def test_default_units_are_the_most_frequent_then_random_live_ones():
    counts = torch.tensor([0, 5, 9, 0, 1, 7, 2, 3, 0, 4])
    chosen = default_units(counts, n_top=2, n_random=3, seed=0)
    assert chosen[:2] == [2, 5]
    assert len(chosen) == 5 and set(chosen[2:]) <= {1, 4, 6, 7, 9}
    assert chosen == default_units(counts, n_top=2, n_random=3, seed=0)
    assert default_units(counts, n_top=20, n_random=3) == [2, 5, 1, 9, 7, 6, 4]  # dead units never shown


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lens_applies_the_final_norm_gain_then_the_unembedding(arch):
    model = tiny_model(arch)
    v = torch.randn(3, 32)
    unit = v / v.pow(2).mean(-1, keepdim=True).sqrt()
    if arch == "gpt2":
        norm = model.transformer.ln_f
        expected = F.layer_norm(unit, (32,), norm.weight, None, norm.eps)
    else:
        norm = model.model.norm
        expected = norm.weight * unit / (unit.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
    torch.testing.assert_close(direction_logits(model, v), expected @ model.get_output_embeddings().weight.T,
                               rtol=1e-4, atol=1e-4)


def held_out(run_row: dict, tokenizer, n: int) -> torch.Tensor:
    chosen = [c for _, c in zip(range(n), pack_contexts(iter_documents(run_row["dataset"], "eval"), tokenizer,
                                                        run_row["context_length"]))]
    return torch.stack(chosen)


def test_written_dashboard_numbers_match_a_direct_computation(tiny_run):
    path = write_dashboard(tiny_run, "tc-4", units=[3, 7, 3], n_texts=4, device="cpu")
    assert path == tiny_run / "dashboards" / "tc-4" / "index.html"
    blob = json.loads((path.parent / "units.json").read_text())
    assert [u["stats"]["unit"] for u in blob["units"]] == [3, 7]
    row = find_cell(tiny_run, "tc-4")
    loaded = load_model(row["model"])
    layer = methods.load_layer(tiny_run / row["checkpoint"])
    ids = held_out(row, loaded.tokenizer, 4)
    dense = dense_codes(layer(mlp_inputs(loaded.model, LAYER, ids))[1], layer.n_units)
    boundaries = torch.tensor([loaded.tokenizer.bos_token_id, loaded.tokenizer.eos_token_id])
    scored = ~torch.isin(ids, boundaries).reshape(-1)  # BOS starts each context, EOS joins documents
    html = path.read_text()
    for unit_blob in blob["units"]:
        stats = unit_blob["stats"]
        column = torch.where(scored, dense[:, stats["unit"]], torch.zeros(()))
        assert stats["n_scored"] == scored.sum().item()
        assert stats["n_fired"] == (column > 0).sum().item()
        assert stats["top_contexts"][0]["activation"] == pytest.approx(column.max().item(), rel=1e-5)
        top_row, top_position = divmod(int(column.argmax()), ids.shape[1])
        assert (stats["top_contexts"][0]["row"], stats["top_contexts"][0]["position"]) == (top_row, top_position)
        assert f'id="unit-{stats["unit"]}"' in html
        assert f"fires on {stats['n_fired']:,} of {stats['n_scored']:,} scored tokens" in html
        # A TC unit's mean output is a positive multiple of its decoder row: same promoted tokens.
        row_logits = direction_logits(loaded.model, layer.decoder[stats["unit"]][None])[0]
        expected = [loaded.tokenizer.decode([i]) for i in row_logits[:len(loaded.tokenizer)].topk(3).indices]
        assert [t for t, _ in unit_blob["tokens"]["promoted"][:3]] == expected


def test_default_dashboard_shows_the_8_most_frequent_experts_then_4_random_live_ones(tiny_run):
    path = write_dashboard(tiny_run, "mxd-k4", units=None, n_texts=4, device="cpu")
    shown = [u["stats"]["unit"] for u in json.loads((path.parent / "units.json").read_text())["units"]]
    row = find_cell(tiny_run, "mxd-4")
    loaded = load_model(row["model"])
    layer = methods.load_layer(tiny_run / row["checkpoint"])
    ids = held_out(row, loaded.tokenizer, 4)
    scored = (ids != loaded.tokenizer.bos_token_id).reshape(-1)
    counts = (dense_codes(layer(mlp_inputs(loaded.model, LAYER, ids))[1], layer.n_units)[scored] > 0).sum(0)
    assert len(shown) == 12 == len(set(shown)) and (counts > 0).sum() >= 12
    assert sorted(counts[shown[:8]].tolist()) == sorted(counts.tolist())[-8:]
    assert all(counts[u] > 0 for u in shown[8:])
    html = path.read_text()
    assert html.count('<section class="unit"') == 12 and "c_n alone is a per-dimension gain" in html


def test_text_from_the_data_is_escaped():
    stats = UnitStats(5, 0.5, 1, 2, 1.0, 1.0, [1, 0], [0.0, 0.5, 1.0],
                      [Context(0, 1, 1.0, [10, 11], [0.0, 1.0], 1)])
    page = DashboardPage("cell <b>", {"run": "<img src=x>"}, [UnitPanel(stats, None, "why <i>")], ["note <u>"])
    html = render_page(page, lambda token: "<script>alert(1)</script>" if token == 11 else "&")
    for raw in ("<script>alert", "<img src=x>", "cell <b>", "why <i>", "note <u>"):
        assert raw not in html
    assert "<title>cell &lt;b&gt;</title>" in html and "&lt;img src=x&gt;" in html
    assert '>&lt;script&gt;alert(1)&lt;/script&gt;</span>' in html
    assert "n/a: why &lt;i&gt;" in html and "<li>note &lt;u&gt;</li>" in html


@pytest.mark.parametrize("name, expected", [("mxd-32", ("mxd", 32)), ("tc-k64", ("tc", 64)),
                                            ("lowrank-moe-r4-16", ("lowrank-moe-r4", 16))])
def test_cell_names(name, expected):
    assert parse_cell_name(name) == expected


def test_bad_cells_and_units_are_one_line_value_errors(tiny_run, tmp_path):
    with pytest.raises(CellError, match=r"'mxd' is not METHOD-K"):
        parse_cell_name("mxd")
    with pytest.raises(CellError, match=r"cell 'sae-4' is not a finished cell .*cells: mxd-4, tc-4"):
        find_cell(tiny_run, "sae-4")
    with pytest.raises(CellError, match="not a run directory"):
        find_cell(tmp_path, "tc-4")
    with pytest.raises(CellError, match=r"unit 128 does not exist: this layer has units 0\.\.127"):
        write_dashboard(tiny_run, "tc-4", units=[1, 128], n_texts=2, device="cpu")
    with pytest.raises(ValueError, match="--n-texts must be a positive integer"):
        write_dashboard(tiny_run, "tc-4", units=None, n_texts=0, device="cpu")


def test_command_functions_parse_and_write(tiny_run, capsys):
    import argparse

    from bench.inspect import add_inspect_arguments, run_inspect

    parser = argparse.ArgumentParser()
    add_inspect_arguments(parser)
    args = parser.parse_args([str(tiny_run), "--cell", "tc-k4", "--units", "1,2", "--n-texts", "2", "--device", "cpu"])
    assert run_inspect(args) == 0
    assert "tc-4/index.html" in capsys.readouterr().err
    assert 'id="unit-2"' in (tiny_run / "dashboards" / "tc-4" / "index.html").read_text()
