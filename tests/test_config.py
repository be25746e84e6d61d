import pytest

from bench.cli import main
from bench.config import PRESETS, ConfigError, load_config_file, preset_config
from tests.test_cli import TINY


def test_presets_fill_in_and_overrides_win():
    smoke = preset_config("smoke")
    assert smoke.ks == [16, 64] and smoke.model == "gemma-3-270m" and smoke.dataset == "wiki-offline"
    paper = preset_config("paper", train_tokens=1000, lr=None)
    assert paper.ks == [16, 32, 64, 128, 256] and paper.expansion == 32 and paper.batch_size == 4096
    assert paper.train_tokens == 1000 and paper.lr == PRESETS["paper"]["lr"]


def test_shipped_sweeps_load_and_validate():
    from pathlib import Path

    from bench.validation import validate

    files = sorted(Path("sweeps").glob("*.toml"))
    assert {f.stem for f in files} >= {"paper-gpt2", "paper-pythia-410m", "paper-pythia-1.4b",
                                      "paper-llama-3.2-3b", "gemma-2b"}
    for path in files:
        for settings in load_config_file(path):
            preset = settings.pop("preset")
            validate(preset_config(preset, **settings))
    gpt2 = load_config_file("sweeps/paper-gpt2.toml")[0]
    assert gpt2["model"] == "gpt2" and gpt2["layer"] == 8 and gpt2["preset"] == "paper"
    assert len(load_config_file("sweeps/paper-all.toml")) == 4


def test_runs_tables_inherit_top_level_keys(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('preset = "smoke"\nk = 8\ntokens = 99\n[[runs]]\nlayer = 1\n[[runs]]\nlayer = 2\nk = [2, 4]\n')
    runs = load_config_file(path)
    assert runs == [{"preset": "smoke", "ks": [8], "train_tokens": 99, "layer": 1},
                    {"preset": "smoke", "ks": [2, 4], "train_tokens": 99, "layer": 2}]


@pytest.mark.parametrize("text, message", [
    ("model = \n", "is not valid TOML"),
    ("learning_rate = 0.1\n", "unknown setting 'learning_rate'; allowed:"),
    ("runs = 3\n", "`runs` must be an array of tables"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config_file(path)


@pytest.mark.parametrize("text, message", [
    ("tokens = \"lots\"\n", "--tokens must be int, got 'lots'"),
    ("k = [2, \"x\"]\n", "--k must be a list of integers"),
    ("lr = -1.0\n", "--lr must be a finite number > 0, got -1.0"),
    ("methods = [\"tc\", \"nope\"]\n", "unknown method 'nope'"),
    ("model = \n", "is not valid TOML"),
])
def test_bad_config_values_exit_2_without_writing(tmp_path, capsys, text, message, tiny_model_dir, corpus_file):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code = main(["run", "--config", str(path), "--model", str(tiny_model_dir), "--dataset", str(corpus_file),
                 "--results-dir", str(tmp_path / "out"), "--no-figures"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_config_file_runs_every_entry_and_flags_override(tmp_path, tiny_model_dir, corpus_file):
    from bench.results import RunStore

    path = tmp_path / "sweep.toml"
    path.write_text(f'methods = ["tc"]\nk = [2]\nmodel = "{tiny_model_dir}"\ndataset = "{corpus_file}"\n'
                    '[[runs]]\nlayer = 1\nrun_name = "a"\n[[runs]]\nlayer = 3\nrun_name = "b"\n')
    flags = [a for a in TINY if a not in ("--k", "2,4")]
    assert main(["run", "--config", str(path), "--results-dir", str(tmp_path), *flags, "--seed", "5", "--no-figures"]) == 0
    a, b = RunStore(tmp_path / "a").rows(), RunStore(tmp_path / "b").rows()
    assert [(r["layer"], r["method"], r["k"], r["seed"]) for r in a + b] == [(1, "tc", 2, 5), (3, "tc", 2, 5)]


def test_smoke_runs_each_method_at_its_tuned_lr_unless_the_user_sets_one():
    from bench.config import lr_for

    smoke = preset_config("smoke")
    assert (lr_for(smoke, "tc"), lr_for(smoke, "stc"), lr_for(smoke, "mxd")) == (0.003, 0.001, 0.01)
    assert lr_for(smoke, "my-plugin") == 1e-3  # a method the preset does not name: --lr's default
    shared = preset_config("smoke", lr=5e-4)  # a given --lr is every method's
    assert (lr_for(shared, "tc"), lr_for(shared, "mxd")) == (5e-4, 5e-4)
    one = preset_config("smoke", method_lr="mxd=0.002")  # a given --method-lr overrides what it names
    assert (lr_for(one, "tc"), lr_for(one, "mxd")) == (0.003, 0.002)
    both = preset_config("smoke", lr=5e-4, method_lr="mxd=0.002")
    assert (lr_for(both, "tc"), lr_for(both, "mxd")) == (5e-4, 0.002)
    assert preset_config("paper").method_lr is None and lr_for(preset_config("paper"), "mxd") == 2e-4
