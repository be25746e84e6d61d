"""One bad line of cells.jsonl costs that line, with a warning naming it, not the run."""
from __future__ import annotations

import json
import logging

from bench.cli import main
from bench.results import RunStore

GOOD = {"model": "m", "layer": 1, "method": "tc", "k": 16, "status": "ok", "delta_ce": 0.01, "ce_spliced": 3.0,
        "ce_clean": 2.99, "nmse": 0.2, "l0": 16.0}


def test_bad_lines_are_skipped_with_their_line_numbers(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps(GOOD).encode(), b"\xff\xfe not utf-8", b"[1, 2, 3]", b"{}", b'{"model": "m"',
             json.dumps({**GOOD, "k": 64, "nmse": float("nan")}).encode()]
    (run / "cells.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="mxbench"):
        rows = RunStore(run).rows()
    assert [r["k"] for r in rows] == [16, 64]
    text = caplog.text
    assert ":2: skipped, not UTF-8 (byte 0xff at column 1)" in text
    assert ":3: skipped, a JSON list, not a row object" in text
    assert ":4: skipped, a row without 'model', 'layer', 'method', 'k'" in text
    assert ":5: skipped, not JSON" in text
    assert ":6: nmse is non-finite (nan)" in text


def test_plot_and_report_survive_a_bad_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "cells.jsonl").write_bytes(json.dumps(GOOD).encode() + b"\n\xff\n[1]\n{}\n")
    assert main(["plot", str(run), "--out", str(tmp_path / "figures")]) == 0
    assert main(["report", str(run), "--figures", str(tmp_path / "figures")]) == 0
    assert "| tc | 16 |" in (run / "REPORT.md").read_text()


def test_a_refused_run_leaves_no_results_directory(tmp_path, tiny_model_dir, corpus_file, capsys):
    results = tmp_path / "new" / "results"
    code = main(["run", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--results-dir",
                 str(results), "--layer", "99", "--no-figures"])
    assert code == 2 and "layer 99" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
