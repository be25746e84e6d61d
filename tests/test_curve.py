"""`bench curve`: ΔCE vs training tokens from runs that differ only in --tokens. The table holds the
rows' own values, the figure's lines are the points, re-runs give the same bytes, and runs that differ
in anything else (or hold nothing) are refused in one line with exit code 2."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from bench.cli import main
from bench.curve_figure import CURVE_STEM, draw_learning_curve
from bench.learning_curve import TABLE_STEM, default_out_dir, learning_curve
from tests.test_plots import REPO, make_row, write_cells

CURVE_METHODS = ("tc", "stc", "mxd", "mxd-glu")
BUDGETS = {"65k": 65_536, "262k": 262_144, "1m": 1_048_576}


def curve_row(method: str, tokens: int, k: int = 32, **overrides: object) -> dict:
    """One finished cell; every number depends on method and budget, so a mixed-up point shows."""
    i = CURVE_METHODS.index(method) if method in CURVE_METHODS else 7
    delta = (0.04 - 0.008 * i) * (65_536 / tokens) ** 0.37 + 1e-4 * k
    row = make_row("gpt2", "tc", k, train_tokens=tokens, delta_ce=delta, delta_ce_stderr=delta / (7 + i),
                   kl=delta * 1.3, kl_stderr=delta / 20, nmse=0.3 + 0.01 * i + tokens / 1e8,
                   method_config={"k": k, "family": method})
    return {**row, "method": method, **overrides}


def write_curve_runs(results: Path, ks: tuple[int, ...] = (32,), methods: tuple[str, ...] = CURVE_METHODS,
                     **overrides: object) -> list[Path]:
    """The three runs a user makes for a curve: results/gpt2-curve-65k, -262k and -1m."""
    runs = []
    for name, tokens in BUDGETS.items():
        rows = [curve_row(m, tokens, k, **overrides) for m in methods for k in ks]
        runs.append(write_cells(results / f"gpt2-curve-{name}", rows).parent)
    return runs


def rows_of(runs: list[Path]) -> list[dict]:
    """The rows as written, read back from disk independently of bench's readers."""
    return [json.loads(line) for run in runs for line in (run / "cells.jsonl").read_text().splitlines()]


def bench_curve(*args: object) -> int:
    return main(["curve", *map(str, args)])


def test_the_table_holds_the_rows_values(tmp_path: Path) -> None:
    runs = write_curve_runs(tmp_path / "results")
    assert bench_curve(*runs) == 0
    out = tmp_path / "figures" / "gpt2-curve"  # the default: beside results/, named after the runs
    with (out / f"{TABLE_STEM}.csv").open() as handle:
        table = {(r["method"], int(r["k"]), int(r["train_tokens"])): r for r in csv.DictReader(handle)}
    rows = rows_of(runs)
    assert len(table) == len(rows) == len(CURVE_METHODS) * len(BUDGETS)
    markdown = (out / f"{TABLE_STEM}.md").read_text()
    for row in rows:
        point = table[(row["method"], row["k"], row["train_tokens"])]
        for column in ("delta_ce", "delta_ce_stderr", "kl", "kl_stderr", "nmse"):
            assert float(point[column]) == row[column], (column, point, row)
        assert point["run"] == f"gpt2-curve-{next(n for n, t in BUDGETS.items() if t == row['train_tokens'])}"
        line = (f"| {row['method']} | 32 | {row['train_tokens']:,} | {row['delta_ce']:+.4f} ± "
                f"{row['delta_ce_stderr']:.4f} | {row['kl']:.4f} ± {row['kl_stderr']:.4f} | {row['nmse']:#.3g} |")
        assert line in markdown.splitlines(), line
    assert (out / f"{CURVE_STEM}.png").stat().st_size > 1000 and (out / f"{CURVE_STEM}.pdf").is_file()


def test_the_figure_draws_one_line_per_method_and_k_through_the_points(tmp_path: Path) -> None:
    runs = write_curve_runs(tmp_path / "results", ks=(16, 64))
    fig = draw_learning_curve(learning_curve(runs))
    try:
        ax = fig.axes[0]
        drawn = {container.get_label(): container for container in ax.containers}
        assert sorted(drawn) == sorted(f"{m} K={k}" for m in CURVE_METHODS for k in (16, 64))
        for label, container in drawn.items():
            method, k = label.split(" K=")
            mine = sorted((r for r in rows_of(runs) if r["method"] == method and r["k"] == int(k)),
                          key=lambda r: r["train_tokens"])
            x, y = container.lines[0].get_data()
            assert list(y) == [r["delta_ce"] for r in mine]
            ratio = np.asarray(x) / [r["train_tokens"] for r in mine]  # each line dodged by one constant factor
            assert np.allclose(ratio, ratio[0]) and abs(np.log2(ratio[0])) < 0.2
            bars = container.lines[2][0].get_segments()  # the vertical error bars, one per point
            assert [seg[1][1] - seg[0][1] for seg in bars] == pytest.approx([2 * r["delta_ce_stderr"] for r in mine])
        assert ax.get_xscale() == "log" and list(ax.get_xticks()) == sorted(BUDGETS.values())
        assert "gpt2 · layer 8" in ax.get_title()
    finally:
        plt.close(fig)


def test_a_rerun_writes_the_same_bytes(tmp_path: Path) -> None:
    runs = write_curve_runs(tmp_path / "results")
    assert bench_curve(*runs, "--out-dir", tmp_path / "a") == 0
    assert bench_curve(*runs, "--out-dir", tmp_path / "b") == 0
    first = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert first == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(first) == 4
    assert all((tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes() for name in first)


@pytest.mark.parametrize(("setting", "value"), [
    ("layer", 9), ("model", "EleutherAI/pythia-70m"), ("seed", 1), ("lr", 3e-4), ("batch_size", 1024),
    ("random_weights", True), ("method_config", {"k": 32, "family": "other"}),
])
def test_runs_that_differ_in_more_than_tokens_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                          setting: str, value: object) -> None:
    runs = write_curve_runs(tmp_path / "results")
    changed = [{**row, setting: value} for row in rows_of(runs[1:2])]
    write_cells(runs[1], changed)
    assert bench_curve(*runs) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"the runs differ in {setting}:" in err and "gpt2-curve-262k" in err, err
    assert not (tmp_path / "figures").exists()


def test_runs_with_different_ks_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = write_curve_runs(tmp_path / "results")
    write_cells(runs[2], [curve_row(m, BUDGETS["1m"], k=64) for m in CURVE_METHODS])
    assert bench_curve(*runs) == 2
    assert "the runs differ in k: " in capsys.readouterr().err


def test_runs_may_hold_different_methods(tmp_path: Path) -> None:
    runs = write_curve_runs(tmp_path / "results")
    write_cells(runs[2], [curve_row("tc", BUDGETS["1m"])])  # the largest budget only for tc
    lines = learning_curve(runs).lines()
    assert [len(lines[(m, 32)]) for m in CURVE_METHODS] == [3, 2, 2, 2]


@pytest.mark.parametrize("contents", ["empty", "failed", "missing"])
def test_an_empty_or_missing_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, contents: str) -> None:
    runs = write_curve_runs(tmp_path / "results")
    bad = tmp_path / "results" / "gpt2-curve-4m"
    if contents != "missing":
        rows = [] if contents == "empty" else [curve_row("tc", 4 * BUDGETS["1m"], status="failed", error="boom")]
        write_cells(bad, rows)
    assert bench_curve(*runs, bad) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: {bad}") and err.count("\n") == 1, err
    assert ("no such directory" if contents == "missing" else "no finished cells") in err


def test_one_budget_or_a_budget_given_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = write_curve_runs(tmp_path / "results")
    assert bench_curve(runs[0]) == 2
    assert "every cell was trained on 65,536 tokens" in capsys.readouterr().err
    again = write_cells(tmp_path / "results" / "gpt2-curve-65k-again", rows_of(runs[:1])).parent
    assert bench_curve(*runs, again) == 2
    assert "both hold tc K=32 at 65,536 training tokens" in capsys.readouterr().err


def test_a_retried_cell_keeps_its_later_row(tmp_path: Path) -> None:
    runs = write_curve_runs(tmp_path / "results")
    retried = curve_row("tc", BUDGETS["65k"], delta_ce=0.5)
    write_cells(runs[0], rows_of(runs[:1]) + [retried])
    points = {(p["method"], p["train_tokens"]): p for p in learning_curve(runs).points}
    assert points[("tc", BUDGETS["65k"])]["delta_ce"] == 0.5


def test_random_weight_runs_are_titled_as_such(tmp_path: Path) -> None:
    runs = write_curve_runs(tmp_path / "results", random_weights=True)
    assert "RANDOM WEIGHTS" in learning_curve(runs).title


def test_the_default_out_dir_is_named_after_what_the_runs_share(tmp_path: Path) -> None:
    results = tmp_path / "results"
    curve_runs = [results / f"gemma-3-270m-curve-{n}" for n in BUDGETS]
    assert default_out_dir(curve_runs) == tmp_path / "figures" / "gemma-3-270m-curve"
    assert default_out_dir([results / "g-65k", results / "g-1m"]) == tmp_path / "figures" / "g-curve"
    assert default_out_dir([results / "small", results / "large"]) == tmp_path / "figures" / "small-curve"


# ----------------------------------------------------------------------------- the committed curve

COMMITTED_CURVES = sorted(p.parent for p in (REPO / "figures").glob("*/learning_curve.csv"))


@pytest.mark.parametrize("committed", COMMITTED_CURVES, ids=lambda p: p.name)
def test_committed_curves_regenerate_from_committed_results(committed: Path, tmp_path: Path) -> None:
    """`bench curve` over the runs a committed learning_curve.csv names rebuilds its tables byte for byte
    and the same figure files (the README's curve table is read from them)."""
    with open(committed / f"{TABLE_STEM}.csv", newline="") as handle:
        tokens = {row["run"]: int(row["train_tokens"]) for row in csv.DictReader(handle)}
    ordered = sorted(tokens, key=tokens.get)
    assert bench_curve(*[REPO / "results" / run for run in ordered], "--out-dir", tmp_path) == 0
    names = sorted(p.name for p in committed.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir()), "stale: run `bench curve` again and commit it"
    for suffix in (".csv", ".md"):
        name = f"{TABLE_STEM}{suffix}"
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), f"{name} differs: rerun `bench curve`"


def test_a_learning_curve_is_committed() -> None:
    assert COMMITTED_CURVES, "no figures/<curve>/learning_curve.csv committed: the README's curve table has no source"
