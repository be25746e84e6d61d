"""Bad inputs found by the models, data and plugin modules reach the user as the CLI's one line
(``bench: error: ...``, exit 2), never as a traceback or a long retry."""
import time

from bench.cli import main
from tests.test_cli import TINY

USAGE_EXIT = 2


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: "), err
    return err[0][len("bench: error: "):]


def _run(tmp_path, model, dataset, *extra):
    return main(["run", "--model", str(model), "--dataset", str(dataset), "--results-dir", str(tmp_path / "results"),
                 "--run-name", "r", "--methods", "tc", "--k", "2", "--no-figures", *TINY, *extra])


def test_plugins_that_share_a_file_name_and_a_method_name(scratch_registry, tmp_path, capsys):
    plugins = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        plugins.append(tmp_path / folder / "p.py")
        plugins[-1].write_text("from methods import register\nfrom methods.transcoder import Transcoder\n\n\n"
                               "@register('foo')\nclass Foo(Transcoder):\n    pass\n")
    assert main(["--plugin", str(plugins[0]), "--plugin", str(plugins[1]), "methods"]) == USAGE_EXIT
    assert _one_error_line(capsys) == (f"plugin {plugins[1]} registers method 'foo', which {plugins[0]} already "
                                       "registers; rename one of them")
    plugins[1].write_text("def broken(:\n")
    assert main(["--plugin", str(plugins[1]), "methods"]) == USAGE_EXIT
    assert _one_error_line(capsys) == f"plugin {plugins[1]} has a syntax error at line 1: invalid syntax"


def test_an_unreachable_hub_model_is_one_line_and_quick(monkeypatch, tmp_path, corpus_file, capsys):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.monotonic()
    assert _run(tmp_path, "no/such-model-anywhere", corpus_file) == USAGE_EXIT
    assert time.monotonic() - started < 20  # the retrying path took 35 s; a loaded machine needs slack
    assert _one_error_line(capsys).startswith("model 'no/such-model-anywhere' is not a local directory, not an alias")
    assert not (tmp_path / "results" / "r").exists()


def test_a_dataset_that_is_not_utf8_is_one_line(tmp_path, tiny_model_dir, capsys):
    dataset = tmp_path / "docs.jsonl"
    dataset.write_bytes(b'{"text": "the cat sat on the mat"}\n{"text": "\xff"}\n')
    assert _run(tmp_path, tiny_model_dir, dataset) == USAGE_EXIT
    assert _one_error_line(capsys) == f"dataset file {dataset} is not UTF-8 text (invalid byte 0xff at offset 45, line 2)"
