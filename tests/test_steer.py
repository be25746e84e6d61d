"""bench steer: the intervention changes exactly one unit, the sampler's frequency penalty and
nucleus against hand computations, the scores, and the protocol end to end on a tiny run."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bench.models import layer_spec, load_model, mlp_module
from bench.splice import spliced
from bench.steer import steer
from bench.steer.hook import SteeredLayer, steer_codes
from bench.steer.protocol import SteeringError
from bench.steer.sampling import FrequencyPenalty, continuation_nll, sample, top_p_filter
from bench.steer.scoring import coherence_proxy, parse_score, token_share
from methods.base import LayerSpec, SparseCodes
from tests.conftest import tiny_model
from tests.test_inspect import build_tiny_run, randomised
from tests.test_inspect_decode import by_hand

SPEC = LayerSpec(d_model=16, d_mlp=32, gated=True, activation="silu")


def summed_codes(codes: SparseCodes, n_units: int) -> torch.Tensor:
    """Each unit's total code per token (entries listing the same unit add up)."""
    flat_values, flat_indices = codes.values.reshape(-1, codes.values.shape[-1]), codes.indices.reshape(
        -1, codes.indices.shape[-1])
    return torch.zeros(len(flat_values), n_units).scatter_add_(1, flat_indices, flat_values)


def test_steer_codes_adds_strength_to_one_unit_selected_or_not():
    codes = SparseCodes(torch.tensor([[2.0, 0.5], [1.0, 0.0]]), torch.tensor([[3, 1], [0, 2]]))
    steered = steer_codes(codes, unit=3, strength=100.0)
    expected = torch.zeros(2, 5)
    expected[0, 3], expected[0, 1], expected[1, 0] = 102.0, 0.5, 1.0  # token 0 had unit 3 selected
    expected[1, 3] = 100.0  # token 1 did not
    torch.testing.assert_close(summed_codes(steered, 5), expected)


@pytest.mark.parametrize("name", ["tc", "sae", "mxd", "mxd-glu", "lowrank-moe-r4"])
@pytest.mark.parametrize("strength", [100.0, -3.5])
def test_steering_changes_exactly_one_unit_and_the_output_by_its_contribution(name, strength):
    layer = randomised(name, SPEC)
    x = torch.randn(3, 4, 16)
    plain_out, plain_codes = layer(x)
    unit = int(plain_codes.indices[0, 0, 0])  # selected at the first token, not necessarily elsewhere
    out, codes = SteeredLayer(layer, unit, strength)(x)
    difference = summed_codes(codes, layer.n_units) - summed_codes(plain_codes, layer.n_units)
    expected = torch.zeros_like(difference)
    expected[:, unit] = strength
    torch.testing.assert_close(difference, expected)
    contribution = by_hand(layer, name, x.reshape(-1, 16), unit).reshape(3, 4, 16)
    torch.testing.assert_close(out - plain_out, strength * contribution, rtol=1e-4, atol=1e-3)


def test_a_steered_splice_changes_the_lm_only_through_that_unit():
    model = tiny_model("llama")
    layer = randomised("tc", layer_spec(model, 1))
    ids = torch.randint(4, 96, (2, 9))
    captured = []
    with spliced(model, 1, SteeredLayer(layer, 7, 0.0)):
        zero = model(input_ids=ids).logits
    with spliced(model, 1, layer):
        torch.testing.assert_close(model(input_ids=ids).logits, zero)
    with spliced(model, 1, SteeredLayer(layer, 7, 5.0)):
        hook = mlp_module(model, 1).register_forward_hook(lambda m, a, out: captured.append((a[0], out)))
        model(input_ids=ids)
        hook.remove()
    x, out = captured[0]
    torch.testing.assert_close(out, layer(x)[0] + 5.0 * layer.decoder[7], rtol=1e-5, atol=1e-5)


def test_frequency_penalty_subtracts_once_per_earlier_occurrence():
    ids = torch.tensor([[1, 2, 2, 3, 2], [4, 4, 4, 4, 4]])
    scores = torch.tensor([[0.5, 1.0, 2.0, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 3.0]])
    expected = torch.tensor([[0.5, 1.0 - 0.5, 2.0 - 1.5, -1.0 - 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 3.0 - 2.5]])
    torch.testing.assert_close(FrequencyPenalty(0.5)(ids, scores), expected)
    # Not transformers' repetition penalty, which divides a positive logit once however often it was seen.
    from transformers import RepetitionPenaltyLogitsProcessor

    assert not torch.allclose(RepetitionPenaltyLogitsProcessor(1.5)(ids, scores.clone()), expected)


def test_top_p_keeps_the_smallest_head_reaching_the_mass():
    logits = torch.tensor([[0.5, 0.05, 0.3, 0.15]]).log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.1) == [True, False, False, False]
    assert kept(0.6) == [True, False, True, False]
    assert kept(0.85) == [True, False, True, True]
    assert kept(1.0) == [True, True, True, True]


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2")


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_sampling_with_a_tiny_nucleus_is_greedy_on_penalised_logits(arch):
    """The sampler reuses a KV cache; the hand loop recomputes every step without one."""
    model = tiny_model(arch)
    prompt = torch.tensor([1, 5, 9])
    out = sample(model, prompt, n_samples=2, new_tokens=6, temperature=1.0, top_p=1e-9, frequency_penalty=2.0, seed=0)
    ids = prompt[None]
    for _ in range(6):  # by hand: argmax of logits - 2 * counts
        logits = model(input_ids=ids).logits[0, -1]
        counts = torch.bincount(ids[0], minlength=logits.shape[-1])
        ids = torch.cat([ids, (logits - 2.0 * counts).argmax()[None, None]], 1)
    assert out.tolist() == [ids[0].tolist()] * 2


def test_sampling_is_seeded(gpt2):
    draw = lambda seed: sample(gpt2, torch.tensor([1, 2]), 4, 6, 1.0, 0.9, 1.0, seed)  # noqa: E731
    assert torch.equal(draw(42), draw(42)) and not torch.equal(draw(42), draw(43))


def test_continuation_nll_is_the_mean_cross_entropy_after_the_prompt(gpt2):
    model = gpt2
    seqs = torch.randint(0, 96, (2, 10))
    logits = model(input_ids=seqs).logits
    expected = torch.stack([F.cross_entropy(logits[i, 3:-1], seqs[i, 4:]) for i in range(2)]).double()
    torch.testing.assert_close(continuation_nll(model, seqs, prompt_length=4), expected)


def test_scores():
    assert parse_score("0.7") == 0.7 and parse_score("Score: 1") == 1.0 and parse_score(" .25 out of 1") == 0.25
    assert parse_score("7/10 then 0.4") == 0.4 and parse_score("no idea") is None
    assert coherence_proxy(0.5, 0.0) == 0.5 and coherence_proxy(0.6, 0.2) == pytest.approx(0.5)
    assert coherence_proxy(0.1, 0.3) == 0.0 and coherence_proxy(1.0, 1.0) == 0.0
    assert token_share(torch.tensor([[9, 9, 1, 2], [9, 9, 2, 3]]), 2, [2, 7]) == 0.5


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, corpus_file):
    return build_tiny_run(tmp_path_factory.mktemp("run"), tiny_model_dir, corpus_file)


def test_steer_writes_samples_and_scores_and_keeps_earlier_units(tiny_run, tiny_model_dir):
    first = steer(tiny_run, "mxd-4", [3], device="cpu", n_samples=3, new_tokens=4)
    stored = steer(tiny_run, "mxd-k4", [11], judge=str(tiny_model_dir), device="cpu", n_samples=2, new_tokens=3)
    path = tiny_run / "steering" / "mxd-4.json"
    assert json.loads(path.read_text()) == stored and not list(path.parent.glob(".*tmp"))
    assert set(stored["units"]) == {"3", "11"} and stored["units"]["3"] == first["units"]["3"]
    entry = first["units"]["3"]
    assert len(entry["samples"]) == 3 and entry["coherence_source"] == "proxy"
    assert entry["coherence"] == entry["coherence_proxy"] and 0.0 <= entry["coherence"] <= 1.0
    assert entry["perplexity"] > 1.0 and len(entry["sample_perplexities"]) == 3
    assert entry["settings"]["strength"] == 100.0 and entry["settings"]["top_p"] == 0.1
    assert entry["baseline"]["samples"] != entry["samples"]
    judged = stored["units"]["11"]
    assert judged["coherence_source"] == f"judge:{tiny_model_dir}"
    assert len(judged["judge"]["coherence_answers"]) == 2  # a random model rarely answers with a number
    assert judged["coherence"] is None or 0.0 <= judged["coherence"] <= 1.0


def test_bad_settings_are_value_errors(tiny_run):
    with pytest.raises(SteeringError, match="0 < top-p <= 1"):
        steer(tiny_run, "tc-4", [1], device="cpu", top_p=0.0)
    with pytest.raises(SteeringError, match="unknown steering setting"):
        steer(tiny_run, "tc-4", [1], device="cpu", topp=0.5)
    with pytest.raises(ValueError, match="unit 500 does not exist"):
        steer(tiny_run, "tc-4", [500], device="cpu")


def test_command_functions_parse_and_print(tiny_run, tiny_model_dir, capsys):
    import argparse

    from bench.steer import add_steer_arguments, run_steer

    parser = argparse.ArgumentParser()
    add_steer_arguments(parser)
    args = parser.parse_args([str(tiny_run), "--cell", "tc-4", "--units", "4", "--samples", "2", "--new-tokens", "2",
                              "--strength", "50", "--device", "cpu"])
    assert (args.top_p, args.frequency_penalty, args.seed, args.prompt) == (0.1, 1.0, 42, "Let's talk about ")
    assert run_steer(args) == 0
    assert capsys.readouterr().out.startswith("unit 4: perplexity ")
    entry = json.loads((tiny_run / "steering" / "tc-4.json").read_text())["units"]["4"]
    assert entry["settings"]["strength"] == 50.0 and len(entry["samples"]) == 2
    # A TC latent always writes along its decoder row, so steering promotes that row's tokens.
    from bench.inspect.lens import direction_logits
    from methods import load_layer

    loaded = load_model(str(tiny_model_dir))
    row_logits = direction_logits(loaded.model, load_layer(tiny_run / "checkpoints" / "tc-k4").decoder[4][None])[0]
    assert entry["promoted_tokens"] == [loaded.tokenizer.decode([i])
                                        for i in row_logits[:len(loaded.tokenizer)].topk(10).indices]


def test_steering_scores_reach_summary_csv_and_a_retrained_cells_old_units_are_dropped(tmp_path, tiny_model_dir,
                                                                                       corpus_file):
    import methods

    run = build_tiny_run(tmp_path / "run", tiny_model_dir, corpus_file, names=("tc",))
    first = steer(run, "tc-4", [2], device="cpu", n_samples=2, new_tokens=3)
    summary = (run / "summary.csv").read_text().splitlines()
    header, values = summary[0].split(","), summary[1].split(",")
    assert float(values[header.index("steering.perplexity")]) == pytest.approx(first["units"]["2"]["perplexity"])
    assert float(values[header.index("steering.coherence_proxy")]) == pytest.approx(
        first["units"]["2"]["coherence_proxy"])
    model = load_model(str(tiny_model_dir)).model
    methods.save_layer(randomised("tc", layer_spec(model, 1), seed=9), run / "checkpoints" / "tc-k4")  # retrained
    second = steer(run, "tc-4", [5], device="cpu", n_samples=2, new_tokens=3)
    assert set(second["units"]) == {"5"}  # unit 2 was steered with weights the cell no longer has
