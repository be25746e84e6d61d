"""End-to-end: `bench run` on a tiny random Llama and a local JSONL corpus, then resume and errors."""

import contextlib
import json

import pytest
import torch

from bench.cli import main
from bench.results import RunStore

TINY = ["--tokens", "2048", "--eval-tokens", "256", "--ce-tokens", "64", "--context-length", "16",
        "--batch-size", "128", "--expansion", "8", "--k", "2,4", "--warmup-steps", "2", "--seed", "1"]


def _run(tmp_path, model_dir, corpus, *extra):
    return main(["run", "--model", str(model_dir), "--dataset", str(corpus), "--results-dir", str(tmp_path),
                 "--run-name", "tiny", "--figures-dir", str(tmp_path / "figures"), *TINY, *extra])


def held_out_contexts(model_dir, corpus, n_contexts: int, length: int = 16) -> torch.Tensor:
    """The run's first held-out contexts rebuilt from docs/PROTOCOL.md, without bench.data: every
    fixture document is shorter than one 1,000-character chunk, so it is held out whole or not at
    all; held-out documents in file order, joined by EOS, served BOS + length - 1 tokens a row."""
    from transformers import AutoTokenizer

    from bench.split import is_eval_document

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    documents = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert max(len(d["text"]) for d in documents) < 1000
    stream: list[int] = []
    for i, text in enumerate(d["text"] for d in documents if is_eval_document(d["id"])):
        stream += ([tokenizer.eos_token_id] if i else []) + tokenizer(text, add_special_tokens=False)["input_ids"]
    body = length - 1
    return torch.tensor([[tokenizer.bos_token_id] + stream[r * body:(r + 1) * body] for r in range(n_contexts)])


@contextlib.contextmanager
def mlp_output_swapped(model, mlp_output=None, layer: int = 2):
    """Within the block, the Llama's layer-``layer`` MLP output is ``mlp_output(x, y)`` (None: left as
    it is), through a forward hook: no bench.splice code involved."""
    hook = None
    if mlp_output is not None:
        mlp = model.model.layers[layer].mlp
        hook = mlp.register_forward_hook(lambda module, args, out: mlp_output(args[0], out))
    try:
        with torch.no_grad():
            yield
    finally:
        if hook is not None:
            hook.remove()


def mean_ce(model, contexts: torch.Tensor, mlp_output=None) -> float:
    """Next-token CE over every predicted position (the one at BOS included), mean per row, then over
    rows, with the MLP output swapped as in ``mlp_output_swapped``."""
    with mlp_output_swapped(model, mlp_output):
        logits = model(input_ids=contexts).logits
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), contexts[:, 1:], reduction="none")
    assert losses.shape == (len(contexts), contexts.shape[1] - 1)
    return losses.mean(dim=1).mean().item()


def test_bench_run_writes_a_row_per_cell(tmp_path, tiny_model_dir, corpus_file, capsys):
    # CE in batches of 3 contexts: 4 CE contexts make one full batch and one short one
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc,mxd", "--ce-batch-size", "3") == 0
    rows = RunStore(tmp_path / "tiny").rows()
    assert sorted((r["method"], r["k"]) for r in rows) == [("mxd", 2), ("mxd", 4), ("tc", 2), ("tc", 4)]
    for row in rows:
        assert row["status"] == "ok" and row["error"] is None
        assert row["layer"] == 2 and row["train_tokens"] == 2048 and row["seed"] == 1
        assert row["ce_tokens"] == 4 * 15 and row["eval_tokens"] == 256
        assert row["l0"] <= row["k"] and 0 <= row["dead_fraction"] <= 1
        assert row["nmse"] > 0 and row["n_params"] > 0
        assert row["versions"]["torch"] and row["hardware"] and row["device"] == "cpu"
        assert row["versions"]["mxbench_source"] != "unknown"  # the code that made the number
        assert row["train_steps"] == 2048 // 128 and row["resumed_at_tokens"] is None
    assert len({r["ce_clean"] for r in rows}) == 1  # one clean baseline per run
    _check_ce_against_a_plain_forward(tmp_path / "tiny", rows, tiny_model_dir, corpus_file)
    summary = (tmp_path / "tiny" / "summary.csv").read_text().splitlines()
    assert len(summary) == 5 and summary[0].startswith("model,layer,method,k")
    assert "mxd" in capsys.readouterr().out


def _check_ce_against_a_plain_forward(run_dir, rows, model_dir, corpus):
    """Clean, zero-ablated and spliced CE recomputed with transformers alone: the MLP's output swapped
    by a forward hook on the held-out contexts, full forwards (no prefix replay), F.cross_entropy."""
    from transformers import AutoModelForCausalLM

    from methods.checkpoint import load_layer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    contexts = held_out_contexts(model_dir, corpus, n_contexts=4)  # --ce-tokens 64 at --context-length 16
    clean = mean_ce(model, contexts)
    zero = mean_ce(model, contexts, mlp_output=lambda x, y: torch.zeros_like(y))
    assert abs(zero - clean) > 1e-4  # ten times the tolerance below: a check of the ablation can fail
    for row in rows:
        layer = load_layer(run_dir / row["checkpoint"])
        spliced = mean_ce(model, contexts, mlp_output=lambda x, y: layer(x)[0])
        assert row["ce_clean"] == pytest.approx(clean, rel=1e-5, abs=1e-6)
        assert row["ce_zero"] == pytest.approx(zero, rel=1e-5, abs=1e-6)
        assert row["ce_spliced"] == pytest.approx(spliced, rel=1e-5, abs=1e-6), row["method"]
        assert row["delta_ce"] == pytest.approx(spliced - clean, rel=1e-4, abs=1e-6), row["method"]


def test_rerun_skips_finished_cells_and_adds_new_ones(tmp_path, tiny_model_dir, corpus_file, capsys):
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc") == 0
    first = {(r["method"], r["k"]): r["timestamp"] for r in RunStore(tmp_path / "tiny").rows()}
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc") == 0
    assert "nothing to do" in capsys.readouterr().err
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc,mxd") == 0
    rows = RunStore(tmp_path / "tiny").rows()
    assert len(rows) == 4
    assert {(r["method"], r["k"]): r["timestamp"] for r in rows if r["method"] == "tc"} == first


@pytest.mark.parametrize("args, message", [
    (["--methods", "tc,nope"], "unknown method 'nope'"),
    (["--k", "0"], "--k values must be >= 1, got 0"),
    (["--tokens", "-5"], "--tokens must be a positive integer, got -5"),
    (["--preset", "huge"], "invalid choice: 'huge' (choose from 'smoke', 'paper')"),
    (["--layer", "99"], "layer 99 is out of range"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_model_dir, corpus_file, capsys, args, message):
    assert _run(tmp_path, tiny_model_dir, corpus_file, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "tiny").exists(), "a refused run must write nothing"


def test_methods_lists_every_registered_method(capsys):
    import methods

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in methods.method_names():
        assert name in out
    assert "expansion=" in out


def test_unwritable_results_dir_and_missing_dataset_are_refused(tmp_path, tiny_model_dir, corpus_file, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--model", str(tiny_model_dir), "--dataset", str(corpus_file),
                 "--results-dir", str(blocker / "sub"), *TINY]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert _run(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl") == 2
    assert "missing.jsonl' does not exist" in capsys.readouterr().err


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path, tiny_model_dir, corpus_file, capsys):
    from bench.runlock import RunLock

    with RunLock(tmp_path / "tiny"):
        assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc") == 2
        assert "is in use by bench run pid" in capsys.readouterr().err
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc") == 0


def test_checkpoints_are_written_and_reload_to_the_same_layer(tmp_path, tiny_model_dir, corpus_file):
    import torch

    from methods.checkpoint import load_layer

    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "mxd", "--k", "2") == 0
    (row,) = RunStore(tmp_path / "tiny").rows()
    layer = load_layer(tmp_path / "tiny" / row["checkpoint"])
    assert layer.n_params() == row["n_params"] and layer.config.k == 2
    out, _ = layer(torch.randn(3, 32))
    assert out.shape == (3, 32)


@pytest.mark.parametrize("argv, message", [
    (["run", "--k", "a,b"], "argument --k: expected comma-separated integers, got 'a,b'"),
    (["run", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "--tokens", "many"], "argument --tokens: invalid int value: 'many'"),
])
def test_argument_errors_are_one_line(capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_a_shortened_flag_is_not_taken_for_another(capsys):
    assert main(["run", "--results", "elsewhere"]) == 2
    assert "unrecognized arguments: --results elsewhere" in capsys.readouterr().err


def test_all_runs_each_distinct_method_once():
    import methods
    from methods import expand_method_names as expand_methods

    names = expand_methods(["all"])
    assert "lowrank-moe-r4" in names and "lowrank-moe" not in names  # the same class and settings
    assert {"tc", "stc", "sae", "mxd", "mxd-glu", "lowrank-moe-r1", "lowrank-moe-r16"} <= set(names)
    assert set(names) <= set(methods.method_names())
    assert expand_methods(["tc", "tc", "mxd"]) == ["tc", "mxd"]


def test_each_run_keeps_a_log_file(tmp_path, tiny_model_dir, corpus_file):
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc", "--k", "2") == 0
    log = (tmp_path / "tiny" / "run.log").read_text()
    assert "bench run {" in log and '"method": "tc"' in log


def test_wandb_without_the_package_is_a_clear_error(tmp_path, tiny_model_dir, corpus_file, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc", "--wandb") == 2
    assert "--wandb needs the wandb package" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()


def test_run_ends_with_figures_and_a_report_that_plot_can_regenerate(tmp_path, tiny_model_dir, corpus_file):
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc,mxd") == 0
    figures = tmp_path / "figures" / "tiny"
    first = {p.name: p.read_bytes() for p in figures.glob("*.png")}
    assert any(name.endswith("_ce_vs_k.png") for name in first) and len(first) >= 4
    assert "## " in (tmp_path / "tiny" / "REPORT.md").read_text()
    for path in figures.iterdir():
        path.unlink()
    assert main(["plot", str(tmp_path / "tiny"), "--out", str(tmp_path / "figures")]) == 0
    assert {p.name: p.read_bytes() for p in figures.glob("*.png")} == first
    assert main(["report", str(tmp_path / "tiny"), "--figures", str(tmp_path / "figures")]) == 0


def test_plot_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err


def test_cells_beyond_the_memory_budget_train_in_groups(tmp_path, tiny_model_dir, corpus_file, capsys):
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc,mxd", "--memory-budget-gb", "0.0001") == 0
    assert "training them in 4 groups" in capsys.readouterr().err
    rows = RunStore(tmp_path / "tiny").rows()
    assert len(rows) == 4 and all(r["status"] == "ok" and r["trained_tokens"] == 2048 for r in rows)


def test_k_above_the_number_of_units_is_refused_before_training(tmp_path, tiny_model_dir, corpus_file, capsys):
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc", "--k", "100000") == 2
    err = capsys.readouterr().err
    assert "k=100000 must be between 1 and the width" in err and "collecting" not in err
    assert not (tmp_path / "tiny").exists(), "an input error found after loading leaves nothing behind"


def social_iqa_correct(model, tokenizer, limit: int, mlp_output=None) -> tuple[int, int]:
    """How many of the first ``limit`` mxbench_social_iqa questions the model answers right, counted
    without lm-eval, by the choice's summed log-probability after the question and a space (acc) and
    by that sum over the choice's length in characters (acc_norm), the first of equals winning;
    ``mlp_output`` as in ``mlp_output_swapped``."""
    from bench.tasks import TASK_DIR

    lines = (TASK_DIR / "mxbench_social_iqa.jsonl").read_text().splitlines()[:limit]
    correct = [0, 0]
    for question in map(json.loads, lines):
        context = tokenizer(question["text"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in question["choices"]:
            whole = tokenizer(question["text"] + " " + choice, add_special_tokens=False)["input_ids"]
            assert whole[:len(context)] == context  # a word-level tokenizer: the choice's tokens follow on
            ids = torch.tensor([whole])
            with mlp_output_swapped(model, mlp_output):
                log_probs = torch.log_softmax(model(input_ids=ids[:, :-1]).logits[0].float(), dim=-1)
            targets = ids[0, len(context):]
            scores.append(log_probs[len(context) - 1:].gather(-1, targets[:, None]).sum().item())
        for i, score in enumerate((scores, [s / len(c) for s, c in zip(scores, question["choices"])])):
            correct[i] += max(range(len(score)), key=lambda j: (score[j], -j)) == question["label"]
    return correct[0], correct[1]


def _check_task_scores(run_dir, row, model_dir, limit: int = 6):
    """The row's clean, zero-ablated and spliced social_iqa scores are lm-eval's counts of right answers,
    as ``social_iqa_correct`` counts them. (The fixture's word-level vocabulary makes most task words
    <unk>, so on this LM the counts follow the choices' lengths and cannot tell which MLP was in place:
    the spliced model itself is checked through CE, in ``_check_ce_against_a_plain_forward``.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from methods.checkpoint import load_layer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    layer = load_layer(run_dir / row["checkpoint"])
    expected = {"tasks_clean": social_iqa_correct(model, tokenizer, limit),
                "tasks_zero": social_iqa_correct(model, tokenizer, limit, lambda x, y: torch.zeros_like(y)),
                "tasks": social_iqa_correct(model, tokenizer, limit, lambda x, y: layer(x)[0])}
    for key, correct in expected.items():
        scores = row[key]["mxbench_social_iqa"]
        assert scores["n_samples"] == limit, scores
        assert (scores["acc"] * limit, scores["acc_norm"] * limit) == pytest.approx(correct), (key, scores, correct)


def test_tasks_are_scored_per_cell_and_bench_eval_rescores_checkpoints(tmp_path, tiny_model_dir, corpus_file):
    task_args = ["--tasks", "mxbench_social_iqa", "--task-limit", "6"]
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc", "--k", "2", "--no-figures", *task_args) == 0
    (row,) = RunStore(tmp_path / "tiny").rows()
    _check_task_scores(tmp_path / "tiny", row, tiny_model_dir)
    assert row["task_names"] == ["mxbench_social_iqa"] and row["task_limit"] == 6

    assert main(["eval", str(tmp_path / "tiny"), "--tasks", "mxbench_social_iqa", "--task-limit", "6",
                 "--device", "cpu"]) == 0
    (again,) = RunStore(tmp_path / "tiny").rows()
    assert again["tasks"]["mxbench_social_iqa"] == row["tasks"]["mxbench_social_iqa"]  # same checkpoint, same seeds
    assert again["tasks_clean"] == row["tasks_clean"]


def test_adding_tasks_to_a_finished_run_scores_its_checkpoints(tmp_path, tiny_model_dir, corpus_file, capsys):
    args = ("--methods", "tc", "--k", "2", "--no-figures")
    assert _run(tmp_path, tiny_model_dir, corpus_file, *args) == 0
    (plain,) = RunStore(tmp_path / "tiny").rows()
    assert plain["task_names"] is None and "tasks" not in plain
    capsys.readouterr()

    assert _run(tmp_path, tiny_model_dir, corpus_file, *args, "--tasks", "mxbench_social_iqa", "--task-limit", "6") == 0
    assert "training" not in capsys.readouterr().err, "a finished cell is scored, never retrained"
    (scored,) = RunStore(tmp_path / "tiny").rows()
    assert scored["timestamp"] == plain["timestamp"] and scored["delta_ce"] == plain["delta_ce"]
    assert scored["task_names"] == ["mxbench_social_iqa"] and scored["task_limit"] == 6
    _check_task_scores(tmp_path / "tiny", scored, tiny_model_dir)

    assert _run(tmp_path, tiny_model_dir, corpus_file, *args, "--tasks", "mxbench_social_iqa", "--task-limit", "6") == 0
    assert "nothing to do" in capsys.readouterr().err
    assert _run(tmp_path, tiny_model_dir, corpus_file, *args, "--tasks", "mxbench_social_iqa", "--task-limit", "5") == 0
    assert RunStore(tmp_path / "tiny").rows()[0]["task_limit"] == 5  # another limit is another measurement

    import shutil  # a run copied without its checkpoints (a fresh clone of committed results) says so

    shutil.rmtree(tmp_path / "tiny" / "checkpoints")
    capsys.readouterr()
    assert _run(tmp_path, tiny_model_dir, corpus_file, *args, "--tasks", "mxbench_social_iqa", "--task-limit", "4") == 0
    assert "cell tc K=2 has no checkpoint to score tasks with" in capsys.readouterr().err


def test_unknown_task_is_refused_before_loading(tmp_path, tiny_model_dir, corpus_file, capsys):
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--tasks", "no_such_task") == 2
    err = capsys.readouterr().err.strip()
    assert "unknown task 'no_such_task'" in err and len(err.splitlines()) == 1


def test_readme_plugin_example_registers_runs_and_plots(tmp_path, tiny_model_dir, corpus_file, capsys,
                                                          scratch_registry):
    """The README's worked example: a method in one file, run next to tc, then plotted."""
    from pathlib import Path

    plugin = Path(__file__).parent / "plugins" / "dense_mlp_plugin.py"
    assert main(["--plugin", str(plugin), "methods"]) == 0
    assert "dense-mlp" in capsys.readouterr().out
    argv = ["--plugin", str(plugin), "run", "--methods", "dense-mlp,tc", "--model", str(tiny_model_dir),
            "--dataset", str(corpus_file), "--results-dir", str(tmp_path), "--run-name", "plugin",
            "--figures-dir", str(tmp_path / "figures"), *TINY]
    assert main(argv) == 0
    rows = RunStore(tmp_path / "plugin").rows()
    assert {r["method"] for r in rows} == {"dense-mlp", "tc"} and all(r["status"] == "ok" for r in rows)
    dense = next(r for r in rows if r["method"] == "dense-mlp")
    assert dense["n_units"] == 96  # the tiny Llama's d_mlp: registered with match_params=False
    assert main(["plot", str(tmp_path / "plugin"), "--out", str(tmp_path / "figures")]) == 0
    report = (tmp_path / "plugin" / "REPORT.md").read_text()
    assert "dense-mlp" in report
