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
    flag, value = argv[1], argv[2]  # refused for its own bad value: the flag, the value or its bad part named
    parts = {p for p in (value, *value.split(",")) if p.strip()}
    assert flag in err or any(repr(p) in err or (len(p) > 1 and p in err) for p in parts), err
    assert not (tmp_path / "out").exists()


# Each fragment of a garbage config and the reason it alone is refused, naming the bad value (None: valid;
# "TOML": the file no longer parses). A file holding several bad fragments is refused for one of theirs.
CONFIG_FRAGMENTS = {
    "[[runs]]": None,
    "k = ": "TOML",
    "= =": "TOML",
    "\x00": "TOML",
    "\"": "TOML",
    "tokens = -1": "--tokens must be a positive integer, got -1",
    "layer = -4": "--layer must be >= 0, got -4",
    "methods = 3": "--methods must be a list of names, got [3]",
    "k = [1, \"a\"]": "--k must be a list of integers, got [1, 'a']",
    "lr = \"x\"": "--lr must be float, got 'x'",
    "trust_remote_code = \"yes\"": "--trust-remote-code must be true or false, got 'yes'",
    "preset = \"nope\"": "unknown preset 'nope'; choose from smoke, paper",
    "unknown_key = 1": "unknown setting 'unknown_key'",
    "[runs]": "`runs` must be an array of tables ([[runs]])",
}


def _garbage_configs(n, seed=1):
    rng = random.Random(seed)
    fragments = list(CONFIG_FRAGMENTS)
    for _ in range(n):
        yield [rng.choice(fragments) for _ in range(rng.randint(1, 4))]
    yield ["[[runs]]", "[[runs]]"]  # the valid kind, whatever the draws


@pytest.mark.parametrize("fragments", list(_garbage_configs(25)), ids=lambda f: repr("\n".join(f)))
def test_malformed_config_files_fail_cleanly(fragments, tmp_path, capsys, tiny_model_dir, corpus_file, monkeypatch):
    """Each garbage file on its own: only one made of nothing but [[runs]] headers is valid (one run per
    header, every setting from the flags), and that one must reach the executor; every other exits 2 in
    one line that gives its own reason: tomllib's complaint for a file that does not parse, else the
    refusal of one of its bad fragments, naming the bad value."""
    import tomllib

    import bench.executors

    reached = []
    monkeypatch.setattr(bench.executors, "run_sweep", lambda configs, *a, **k: reached.extend(configs) or [])
    text = "\n".join(fragments)
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    code = main(["run", "--config", str(path), "--model", str(tiny_model_dir), "--dataset", str(corpus_file),
                 "--results-dir", str(tmp_path / "out"), "--no-figures"])
    err = capsys.readouterr().err.strip()
    assert not (tmp_path / "out").exists()
    if all(f == "[[runs]]" for f in fragments):
        assert code == 0 and len(reached) == len(fragments), err
        return
    assert code == 2 and not reached, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("bench")
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        assert err.endswith(f"config file {path} is not valid TOML: {error}"), err
        return
    reasons = {CONFIG_FRAGMENTS[f] for f in fragments} - {None, "TOML"}
    assert any(reason in err for reason in reasons), (err, reasons)


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
