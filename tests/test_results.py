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


def test_a_failed_first_row_does_not_blank_the_tables_baselines():
    from bench.results import format_table

    rows = [{"model": "m", "layer": 1, "method": "tc", "k": 16, "status": "failed", "error": "diverged"},
            {"model": "m", "layer": 1, "method": "mxd", "k": 16, "status": "ok", "ce_clean": 4.2058, "ce_zero": 4.4566,
             "train_tokens": 65536, "ce_tokens": 4064, "ce_spliced": 4.23, "delta_ce": 0.024}]
    title = format_table(rows).splitlines()[0]
    assert "clean CE 4.2058, zero-ablated CE 4.4566, 65,536 train tokens" in title
