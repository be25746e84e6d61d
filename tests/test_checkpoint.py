"""Checkpoints: exact round trips for every method; bad files refused with the file's name."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from methods import LayerSpec, create, load_layer, method_names, save_layer
from methods.checkpoint import CONFIG_FILE, WEIGHTS_FILE

SPEC = LayerSpec(d_model=16, d_mlp=64, gated=True, activation="gelu_pytorch_tanh")


def trained_looking(name: str, **config) -> torch.nn.Module:
    """Random weights everywhere: else a loader that skipped a zero-initialised tensor would pass."""
    layer = create(name, SPEC, **{"expansion": 8, "k": 4, **config})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer


@pytest.mark.parametrize("name", method_names())
def test_round_trip_is_exact(name: str, tmp_path) -> None:
    layer = trained_looking(name)
    save_layer(layer, tmp_path / "ckpt")
    loaded = load_layer(tmp_path / "ckpt")
    assert type(loaded) is type(layer) and loaded.name == name and loaded.config == layer.config
    x = torch.randn(11, SPEC.d_model)
    y_hat, codes = layer(x)
    y_loaded, codes_loaded = loaded(x)
    assert torch.equal(y_hat, y_loaded) and torch.equal(codes.indices, codes_loaded.indices)
    for (key, a), (_, b) in zip(layer.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), key


def test_directory_holds_exactly_the_two_files(tmp_path) -> None:
    layer = trained_looking("lowrank-moe-r4", k=2)
    save_layer(layer, tmp_path)
    save_layer(layer, tmp_path)  # overwriting in place works too
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temp files left
    blob = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert blob["method"] == "lowrank-moe-r4" and blob["config"]["rank"] == 4 and blob["config"]["k"] == 2
    assert blob["n_params"] == layer.n_params() and blob["format_version"] == 1


def test_loading_never_unpickles(tmp_path, monkeypatch) -> None:
    save_layer(trained_looking("mxd"), tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_layer(tmp_path)


@pytest.fixture
def saved(tmp_path):
    save_layer(trained_looking("tc"), tmp_path / "a")
    return tmp_path / "a"


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, CONFIG_FILE])
def test_missing_file_is_named(saved, missing: str) -> None:
    (saved / missing).unlink()
    with pytest.raises(ValueError, match=f"{missing}.*missing"):
        load_layer(saved)


@pytest.mark.parametrize("truncated", [WEIGHTS_FILE, CONFIG_FILE])
def test_truncated_file_is_named(saved, truncated: str) -> None:
    path = saved / truncated
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=truncated):
        load_layer(saved)


def test_weights_from_another_checkpoint_are_refused(saved, tmp_path) -> None:
    save_layer(trained_looking("tc", expansion=4), tmp_path / "b")
    shutil.copy(tmp_path / "b" / WEIGHTS_FILE, saved / WEIGHTS_FILE)
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE}.*SHA-256"):
        load_layer(saved)
    # Even with the hash made to agree, tensors of the wrong shape are refused, naming the file.
    blob = json.loads((saved / CONFIG_FILE).read_text())
    blob["weights_sha256"] = json.loads((tmp_path / "b" / CONFIG_FILE).read_text())["weights_sha256"]
    (saved / CONFIG_FILE).write_text(json.dumps(blob))
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE}.*do not fit"):
        load_layer(saved)


def test_weights_missing_a_tensor_are_refused(saved) -> None:
    tensors = load_file(str(saved / WEIGHTS_FILE))
    del tensors["b_out"]
    save_file(tensors, str(saved / WEIGHTS_FILE))
    blob = json.loads((saved / CONFIG_FILE).read_text())
    blob["weights_sha256"] = hashlib.sha256((saved / WEIGHTS_FILE).read_bytes()).hexdigest()
    (saved / CONFIG_FILE).write_text(json.dumps(blob))
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE}.*b_out"):
        load_layer(saved)


def test_config_that_cannot_be_rebuilt_is_named(saved) -> None:
    blob = json.loads((saved / CONFIG_FILE).read_text())
    for bad in [{"method": "not-registered"}, {"config": {**blob["config"], "bogus": 1}}, {"n_params": 3}]:
        (saved / CONFIG_FILE).write_text(json.dumps({**blob, **bad}))
        with pytest.raises(ValueError, match=CONFIG_FILE):
            load_layer(saved)
