"""A disk that fills up during a run costs the checkpoints it cannot hold, not the measured rows."""
from __future__ import annotations

import errno

from bench.cli import main
from bench.results import RunStore


def test_a_checkpoint_the_disk_refuses_keeps_the_row(tmp_path, tiny_model_dir, corpus_file, monkeypatch, capsys):
    import bench.cell_eval

    def full_disk(layer, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(bench.cell_eval, "save_layer", full_disk)
    code = main(["run", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--results-dir", str(tmp_path),
                 "--run-name", "r", "--methods", "tc,mxd", "--k", "2", "--tokens", "512", "--context-length", "16",
                 "--batch-size", "128", "--expansion", "8", "--eval-tokens", "128", "--ce-tokens", "64",
                 "--warmup-steps", "1", "--no-figures"])
    assert code == 0
    rows = RunStore(tmp_path / "r").rows()
    assert sorted(r["method"] for r in rows) == ["mxd", "tc"]
    assert all(r["checkpoint"] is None and r["checkpoint_error"] == "No space left on device" for r in rows)
    assert all(r["delta_ce"] is not None for r in rows)
    assert capsys.readouterr().err.count("its checkpoint could not be saved") == 2
