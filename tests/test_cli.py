"""End-to-end: `bench run` on a tiny random Llama and a local JSONL corpus, then resume and errors."""

import pytest

from bench.cli import main
from bench.results import RunStore

TINY = ["--tokens", "2048", "--eval-tokens", "256", "--ce-tokens", "64", "--context-length", "16",
        "--batch-size", "128", "--expansion", "8", "--k", "2,4", "--warmup-steps", "2", "--seed", "1"]


def _run(tmp_path, model_dir, corpus, *extra):
    return main(["run", "--model", str(model_dir), "--dataset", str(corpus), "--results-dir", str(tmp_path),
                 "--run-name", "tiny", "--figures-dir", str(tmp_path / "figures"), *TINY, *extra])


def test_bench_run_writes_a_row_per_cell(tmp_path, tiny_model_dir, corpus_file, capsys):
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc,mxd") == 0
    rows = RunStore(tmp_path / "tiny").rows()
    assert sorted((r["method"], r["k"]) for r in rows) == [("mxd", 2), ("mxd", 4), ("tc", 2), ("tc", 4)]
    for row in rows:
        assert row["status"] == "ok" and row["error"] is None
        assert row["layer"] == 2 and row["train_tokens"] == 2048 and row["seed"] == 1
        assert row["ce_tokens"] == 4 * 15 and row["eval_tokens"] == 256
        assert row["l0"] <= row["k"] and 0 <= row["dead_fraction"] <= 1
        assert row["nmse"] > 0 and row["n_params"] > 0
        assert abs(row["delta_ce"] - (row["ce_spliced"] - row["ce_clean"])) < 1e-9
        assert row["versions"]["torch"] and row["hardware"] and row["device"] == "cpu"
        assert row["versions"]["mxbench_source"] != "unknown"  # the code that made the number
        assert row["train_steps"] == 2048 // 128 and row["resumed_at_tokens"] is None
    assert len({r["ce_clean"] for r in rows}) == 1  # one clean baseline per run
    summary = (tmp_path / "tiny" / "summary.csv").read_text().splitlines()
    assert len(summary) == 5 and summary[0].startswith("model,layer,method,k")
    assert "mxd" in capsys.readouterr().out


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


def test_tasks_are_scored_per_cell_and_bench_eval_rescores_checkpoints(tmp_path, tiny_model_dir, corpus_file):
    task_args = ["--tasks", "mxbench_social_iqa", "--task-limit", "6"]
    assert _run(tmp_path, tiny_model_dir, corpus_file, "--methods", "tc", "--k", "2", "--no-figures", *task_args) == 0
    (row,) = RunStore(tmp_path / "tiny").rows()
    for key in ("tasks", "tasks_clean", "tasks_zero"):
        assert 0.0 <= row[key]["mxbench_social_iqa"]["acc"] <= 1.0
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
    for key in ("tasks", "tasks_clean", "tasks_zero"):
        assert 0.0 <= scored[key]["mxbench_social_iqa"]["acc"] <= 1.0

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
