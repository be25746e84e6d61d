"""Mid-training snapshots: a save cut short leaves the previous snapshot whole and in force."""
import pytest
import torch

from bench import training_state
from bench.train import OptimiserSettings, build_cell, train_step
from bench.training_state import PROGRESS_FILE, load_progress, restore_cells, save_training_state
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
