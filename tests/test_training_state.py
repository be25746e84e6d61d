"""Mid-training snapshots: a save cut short leaves the previous snapshot whole and in force."""
import errno
import json
import os

import pytest
import torch

from bench import training_state
from bench.train import OptimiserSettings, build_cell, train_step
from bench.training_state import PROGRESS_FILE, StateNotSaved, load_progress, restore_cells, save_training_state
from methods import LayerSpec

SPEC = LayerSpec(16, 32, gated=True, activation="gelu_pytorch_tanh")
KEY = {"model": "tiny", "seed": 0}


def _cells():
    return [build_cell(method, SPEC, 4, 4, OptimiserSettings(warmup_steps=2), seed=0) for method in ("tc", "mxd")]


def _snapshot(cells):
    return [{name: p.detach().clone() for name, p in cell.layer.named_parameters()} for cell in cells]


def test_a_save_killed_before_its_progress_file_leaves_the_last_snapshot_in_force(tmp_path, monkeypatch):
    torch.manual_seed(0)
    batches = [(torch.randn(64, 16), torch.randn(64, 16)) for _ in range(3)]
    cells = _cells()
    for x, y in batches[:2]:
        for cell in cells:
            train_step(cell, x, y)
    save_training_state(tmp_path, cells, 128, 128, KEY)
    saved = _snapshot(cells)

    for cell in cells:  # one more step, then a save that dies after the first cell's files
        train_step(cell, *batches[2])
    real = training_state.atomic_write_text

    def die_at_progress(path, text):
        if path.name == PROGRESS_FILE:
            raise KeyboardInterrupt  # stands in for SIGKILL between the cell files and the progress file
        real(path, text)

    monkeypatch.setattr(training_state, "atomic_write_text", die_at_progress)
    with pytest.raises(KeyboardInterrupt):
        save_training_state(tmp_path, cells, 192, 192, KEY)
    monkeypatch.undo()

    resumed = _cells()
    progress = load_progress(tmp_path, resumed, KEY)
    assert progress["tokens_served"] == 128
    restore_cells(tmp_path, resumed, progress)
    for cell, params in zip(resumed, saved):
        assert cell.steps == 2 and cell.tokens == 128
        for name, p in cell.layer.named_parameters():
            torch.testing.assert_close(p, params[name], rtol=0, atol=0)

    save_training_state(tmp_path, resumed, 128, 128, KEY)  # the next save clears the orphaned files
    assert sorted(p.name.split(".")[-1] for p in (tmp_path / "tc-k4").iterdir()) == ["json", "safetensors"]


def test_progress_without_a_snapshot_is_not_restored(tmp_path):
    cells = _cells()
    save_training_state(tmp_path, cells, 64, 64, KEY)
    assert load_progress(tmp_path, cells, KEY) is not None
    assert load_progress(tmp_path, cells, {**KEY, "seed": 1}) is None  # other settings
    (tmp_path / PROGRESS_FILE).write_text('{"tokens_served": 64, "cells": ["mxd-k4", "tc-k4"], "settings": '
                                          '{"model": "tiny", "seed": 0}}')  # the layout before snapshots
    assert load_progress(tmp_path, cells, KEY) is None


def _trained_and_saved(tmp_path):
    torch.manual_seed(0)
    cells = _cells()
    for cell in cells:
        train_step(cell, torch.randn(64, 16), torch.randn(64, 16))
    save_training_state(tmp_path, cells, 64, 64, KEY)
    return cells


def _snapshot_ids(directory):
    return {p.name.lstrip(".").split(".")[0] for p in directory.glob("*/*") if "state-" in p.name}


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _same_size_garbage(path):
    path.write_bytes(bytes(range(256)) * (path.stat().st_size // 256) + b"\0" * (path.stat().st_size % 256))


def _finite_garbage(path):  # a well-formed file of the same tensors, with other (finite) values
    from safetensors.torch import load_file, save_file

    save_file({k: v + 1 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}, str(path))


@pytest.mark.parametrize("damage", [_truncate, _same_size_garbage, _finite_garbage])
def test_a_damaged_snapshot_means_a_clean_restart(tmp_path, capsys, damage):
    _trained_and_saved(tmp_path)
    snapshot = _snapshot_ids(tmp_path).pop()
    damage(tmp_path / "tc-k4" / f"{snapshot}.safetensors")
    fresh = _cells()
    assert load_progress(tmp_path, fresh, KEY) is None  # nothing to resume, and no error
    assert capsys.readouterr().err.strip() == (
        f"training state at {tmp_path} is corrupt (checksum mismatch in tc-k4/{snapshot}.safetensors); "
        "retraining from the start")
    save_training_state(tmp_path, fresh, 0, 0, KEY)  # the restarted run's first save replaces it
    assert load_progress(tmp_path, fresh, KEY)["tokens_served"] == 0
    assert len(_snapshot_ids(tmp_path)) == 1


def test_a_missing_or_unchecked_snapshot_file_means_a_clean_restart(tmp_path, capsys):
    _trained_and_saved(tmp_path)
    snapshot = _snapshot_ids(tmp_path).pop()
    (tmp_path / "mxd-k4" / f"{snapshot}.json").unlink()
    assert load_progress(tmp_path, _cells(), KEY) is None
    assert f"(mxd-k4/{snapshot}.json is unreadable: No such file or directory)" in capsys.readouterr().err
    progress = json.loads((tmp_path / PROGRESS_FILE).read_text())
    del progress["checksums"]  # the layout before checksums: cannot be trusted
    (tmp_path / PROGRESS_FILE).write_text(json.dumps(progress))
    assert load_progress(tmp_path, _cells(), KEY) is None
    assert "no checksums" in capsys.readouterr().err


def test_at_most_the_valid_snapshot_and_the_one_being_written_are_on_disk(tmp_path, monkeypatch):
    cells = _trained_and_saved(tmp_path)
    seen_during_save = []
    real = training_state.atomic_write_text

    def count_then_write(path, text):
        seen_during_save.append(len(_snapshot_ids(tmp_path)))
        real(path, text)

    monkeypatch.setattr(training_state, "atomic_write_text", count_then_write)
    for served in (128, 192, 256):
        save_training_state(tmp_path, cells, served, served, KEY)
        assert len(_snapshot_ids(tmp_path)) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mxd-k4", PROGRESS_FILE, "tc-k4"]
    assert seen_during_save == [2, 2, 2]


def test_a_cell_state_is_the_layer_two_adam_moments_and_the_unit_counts(tmp_path):
    from safetensors.torch import load_file

    cells = _trained_and_saved(tmp_path)
    snapshot = _snapshot_ids(tmp_path).pop()
    for cell in cells:
        saved = load_file(str(tmp_path / training_state.cell_dir_name(cell) / f"{snapshot}.safetensors"))
        floats = sum(t.numel() for name, t in saved.items() if not name.endswith(".step") and not name.startswith("cell."))
        assert floats == 3 * sum(p.numel() for p in cell.layer.state_dict().values())
        counts = {name[len("cell."):]: t.numel() for name, t in saved.items() if name.startswith("cell.")}
        assert counts == {name: t.numel() for name, t in cell.extra_state().items()}  # per-unit selection counts


def test_a_full_disk_keeps_the_previous_snapshot_and_says_so(tmp_path, monkeypatch):
    cells = _trained_and_saved(tmp_path)
    kept = _snapshot(cells)
    old = _snapshot_ids(tmp_path)
    for cell in cells:
        train_step(cell, torch.randn(64, 16), torch.randn(64, 16))
    real_fsync = os.fsync
    for failing_write in range(5):  # each of the four state files, then the progress file
        calls = []

        def full_disk(fd):
            calls.append(fd)
            if len(calls) > failing_write:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", full_disk)
        with pytest.raises(StateNotSaved, match=rf"could not be saved in {tmp_path} \(No space left on device\)") as caught:
            save_training_state(tmp_path, cells, 128, 128, KEY)
        monkeypatch.undo()
        assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
        assert _snapshot_ids(tmp_path) == old  # the failed snapshot's files are gone, the old ones intact
        resumed = _cells()
        restore_cells(tmp_path, resumed, load_progress(tmp_path, resumed, KEY))
        for cell, params in zip(resumed, kept):
            for name, p in cell.layer.named_parameters():
                torch.testing.assert_close(p, params[name], rtol=0, atol=0)


def test_a_save_after_the_last_step_holds_only_the_layers_and_unit_counts(tmp_path):
    """No AdamW moments once training is done; the unit counts stay, since an evaluation interrupted
    after this save resumes from it and the rows need them."""
    from safetensors.torch import load_file

    cells = _trained_and_saved(tmp_path)
    trained = _snapshot(cells)
    save_training_state(tmp_path, cells, 64, 64, KEY, training_done=True)
    snapshot = _snapshot_ids(tmp_path).pop()
    saved = load_file(str(tmp_path / "tc-k4" / f"{snapshot}.safetensors"))
    assert not any(name.startswith("optim.") for name in saved)
    layers = sum(t.numel() for name, t in saved.items() if name.startswith("layer."))
    assert layers == sum(t.numel() for t in cells[0].layer.state_dict().values())
    assert {n[len("cell."):] for n in saved if n.startswith("cell.")} == set(cells[0].extra_state())
    resumed = _cells()
    restore_cells(tmp_path, resumed, load_progress(tmp_path, resumed, KEY))
    for cell, params in zip(resumed, trained):
        assert cell.steps == 1 and cell.optimiser.state_dict()["state"] == {}
        for name, p in cell.layer.named_parameters():
            torch.testing.assert_close(p, params[name], rtol=0, atol=0)
