"""Rows on disk: atomic writes that others can read, and one row per cell."""
import os
import stat

from bench.results import RunStore, atomic_write_text


def test_atomic_write_leaves_a_file_readable_as_the_umask_allows(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "sub" / "cells.jsonl", "{}\n")
    finally:
        os.umask(previous)
    path = tmp_path / "sub" / "cells.jsonl"
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0o600
    assert [p.name for p in path.parent.iterdir()] == ["cells.jsonl"]  # no temporary left behind


def test_append_replaces_the_row_of_the_same_cell(tmp_path):
    store = RunStore(tmp_path)
    cell = {"model": "m", "layer": 1, "method": "tc", "k": 4, "expansion": 8, "train_tokens": 64, "seed": 0,
            "dataset": "d"}
    store.append({**cell, "status": "failed"})
    store.append({**cell, "k": 8, "status": "ok"})
    store.append({**cell, "status": "ok"})
    assert [(r["k"], r["status"]) for r in store.rows()] == [(8, "ok"), (4, "ok")]
    assert (tmp_path / "summary.csv").read_text().count("\n") == 3  # header and two rows
