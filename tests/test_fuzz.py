"""Fuzz-style: malformed command lines and config files end in one clean line and exit code 2."""
import random

import pytest

from bench.cli import main

BAD_VALUES = {
    "--k": ["0", "-3", "x", "", "1,,a", "1.5"],
    "--tokens": ["0", "-1", "1e3", "lots", ""],
    "--eval-tokens": ["0", "-9", "nan"],
    "--ce-tokens": ["0", "x"],
    "--batch-size": ["0", "-64", "big"],
    "--lr": ["0", "-1", "fast"],
    "--layer": ["-2", "one", "99"],
    "--methods": ["nope", "tc,nope", "TC", ",", "mxd;tc"],
    "--preset": ["huge", "", "SMOKE"],
    "--device": ["tpu", "gpu0", "", "cuda:99"],
    "--dtype": ["int8", "half"],
    "--precision": ["fp8"],
    "--expansion": ["0", "-8", "eight"],
    "--context-length": ["0", "1"],
    "--tasks": ["no_such_task", ","],
    "--dataset": ["./missing.jsonl", "/nonexistent/dir/data.txt"],
    "--checkpoint-minutes": ["-1", "soon"],
    "--executor": ["spark", ""],
    "--gpus-per-task": ["1", "-1", "two"],  # 1 is fine for ray, but needs --executor ray
    "--address": ["auto"],
}


def _fuzzed_commands(seed=0):
    """Every bad value of every flag once, half of them among valid options."""
    rng = random.Random(seed)
    for bad_flag in sorted(BAD_VALUES):
        for value in BAD_VALUES[bad_flag]:
            argv = ["run", bad_flag, value]
            if rng.random() < 0.5:
                argv += ["--seed", str(rng.randint(0, 9)), "--no-figures"]
            yield argv


@pytest.mark.parametrize("argv", list(_fuzzed_commands()), ids=lambda a: " ".join(a))
def test_malformed_command_lines_fail_cleanly(argv, tmp_path, capsys, tiny_model_dir, corpus_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = argv + ["--results-dir", str(tmp_path / "out")]
    if "--model" not in argv:
        argv += ["--model", str(tiny_model_dir)]
    if "--dataset" not in argv:
        argv += ["--dataset", str(corpus_file)]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("bench")
    assert not (tmp_path / "out").exists()


def _garbage_configs(n, seed=1):
    rng = random.Random(seed)
    fragments = ["k = ", "[[runs]]", "tokens = -1", "methods = 3", "= =", "\x00", "trust_remote_code = \"yes\"",
                 "lr = \"x\"", "[runs]", "preset = \"nope\"", "unknown_key = 1", "k = [1, \"a\"]", "\"", "layer = -4"]
    for _ in range(n):
        yield "\n".join(rng.choice(fragments) for _ in range(rng.randint(1, 4)))


@pytest.mark.parametrize("text", list(_garbage_configs(25)))
def test_malformed_config_files_fail_cleanly(text, tmp_path, capsys, tiny_model_dir, corpus_file, monkeypatch):
    """Each garbage file on its own: only one made of nothing but [[runs]] headers is valid (one run per
    header, every setting from the flags), and that one must reach the executor; every other exits 2."""
    import bench.executors

    reached = []
    monkeypatch.setattr(bench.executors, "run_sweep", lambda configs, *a, **k: reached.extend(configs) or [])
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    code = main(["run", "--config", str(path), "--model", str(tiny_model_dir), "--dataset", str(corpus_file),
                 "--results-dir", str(tmp_path / "out"), "--no-figures"])
    err = capsys.readouterr().err.strip()
    valid = all(line == "[[runs]]" for line in text.splitlines())
    if valid:
        assert code == 0 and len(reached) == text.count("[[runs]]"), err
    else:
        assert code == 2 and not reached, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["run", "--config", "{dir}"], "is a directory; give a .toml file"),
    (["perf", "--threads", "-1"], "--threads must be a positive integer, got -1"),
    (["plot", "{rows}", "--out", "{file}/figures"], "figures directory"),
])
def test_file_system_and_perf_mistakes_are_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    run = tmp_path / "run"
    run.mkdir()
    (run / "cells.jsonl").write_text('{"model": "m", "layer": 1, "method": "tc", "k": 2, "delta_ce": 0.1}\n')
    argv = [a.format(dir=tmp_path, rows=run, file=tmp_path / "afile") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
