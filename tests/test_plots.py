"""Figures from a synthetic results directory: every file appears, re-runs are byte-identical, and
partial or malformed results either still plot or fail with a message naming the problem."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import matplotlib.pyplot as plt

from bench.cli import draw_run_figures
from bench.figure_names import OVERVIEW_STEM, display_name, figure_stem, figures_dir_for, find_run_dirs, sanitize
from bench.plots import _title, pareto_front, plot_ce_vs_k, plot_overview, plot_pareto, plot_results, plot_tasks_vs_k
from bench.results_frame import METHOD_ORDER, load_results, read_cells, task_metrics
from bench.style import RC, method_styles

MODELS = {"gpt2": (8, 3.6011, 3.9500), "EleutherAI/pythia-70m": (3, 3.3222, 3.6100)}
METHODS = {"tc": 0.030, "mxd": 0.003, "my-plugin": 0.012}  # delta CE at K=16
KS = (16, 64)


def make_row(model: str, method: str, k: int, **overrides: object) -> dict:
    """One cell as the harness writes it, with numbers shaped like the paper's (TC >> MxD in delta CE)."""
    layer, clean, zero = MODELS[model]
    delta = METHODS[method] * (16 / k) ** 0.5
    spliced = clean + delta
    row = {
        "run": "synthetic", "model": model, "model_id": f"hf/{model}", "layer": layer, "method": method,
        "k": k, "status": "ok", "error": None, "n_params": 38_597_376 + 1000 * len(method),
        "n_units": 24576, "method_config": {"k": k}, "nmse": 0.02 + delta, "l0": float(k),
        "dead_units": 12, "dead_fraction": 12 / 24576, "ce_clean": clean, "ce_spliced": spliced,
        "ce_zero": zero, "delta_ce": delta, "delta_ce_stderr": delta / 10,
        "ce_recovered": (zero - spliced) / (zero - clean), "train_tokens": 480_000_000,
        "eval_tokens": 1_000_000, "ce_tokens": 3_300_000, "seed": 0, "lr": 1e-4, "batch_size": 4096,
        "context_length": 128, "preset": "paper", "train_time_s": 1234.5, "eval_time_s": 56.7,
        "device": "cuda", "hardware": "NVIDIA H100", "timestamp": "2025-01-01T00:00:00",
        "versions": {"python": "3.11.2", "torch": "2.5.0", "transformers": "5.0.0", "mxbench": "0.1.0"},
        "tasks": {
            "social_iqa": {"acc": 0.41 - delta, "acc_stderr": 0.01, "acc_norm": 0.43, "acc_norm_stderr": 0.01},
            "piqa": {"acc": 0.62 - 2 * delta, "acc_stderr": 0.011},
        },
        "tasks_clean": {"social_iqa": {"acc": 0.412, "acc_norm": 0.431}, "piqa": {"acc": 0.625}},
        "tasks_zero": {"social_iqa": {"acc": 0.36, "acc_norm": 0.38}, "piqa": {"acc": 0.55}},
    }
    row.update(overrides)
    return row


def write_cells(run_dir: Path, rows: list[dict]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "cells.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def synthetic_rows() -> list[dict]:
    rows = [make_row(model, method, k) for model in MODELS for method in METHODS for k in KS]
    failed = {key: rows[0][key] for key in ("run", "model", "model_id", "layer")}
    rows.append({**failed, "method": "mxd", "k": 256, "status": "failed",
                 "error": "CUDA out of memory | tried to allocate 2 GiB"})
    return rows


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    write_cells(tmp_path / "results" / "synthetic", synthetic_rows())
    return tmp_path / "results" / "synthetic"


def expected_stems() -> set[str]:
    stems = {figure_stem(m, layer, kind) for m, (layer, _, _) in MODELS.items()
             for kind in ("ce_vs_k", "nmse_vs_k", "pareto", "tasks_vs_k")}
    return stems | {OVERVIEW_STEM}


@pytest.fixture(scope="module")
def plotted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The synthetic run plotted once; tests that only read the figures share it."""
    root = tmp_path_factory.mktemp("plotted")
    run = root / "results" / "synthetic"
    write_cells(run, synthetic_rows())
    return run, plot_results([run], root / "figs")


def test_every_figure_written_as_png_and_pdf(plotted: tuple[Path, list[Path]]) -> None:
    run, written = plotted
    out = written[0].parent
    expected = {out / f"{stem}.{ext}" for stem in expected_stems() for ext in ("png", "pdf")}
    assert set(written) == expected
    assert all(p.stat().st_size > 1000 for p in written)
    assert (out / "EleutherAI_pythia-70m_L3_ce_vs_k.png").exists()  # model name sanitised


def test_rerun_gives_identical_files(plotted: tuple[Path, list[Path]], tmp_path: Path) -> None:
    run, first = plotted
    second = {p.name: p.read_bytes() for p in plot_results([run], tmp_path / "again")}
    assert sorted(second) == sorted(p.name for p in first)
    changed = [p.name for p in first if p.read_bytes() != second[p.name]]
    assert not [name for name in changed if name.endswith(".png")]
    assert not changed  # PDFs too, now that their dates are stripped


def test_ce_figure_shows_clean_line_and_keeps_legend_off_the_data(run_dir: Path) -> None:
    frame = load_results([run_dir])
    gpt2 = frame[frame.model == "gpt2"]
    fig = plot_ce_vs_k(gpt2, method_styles(frame.method), "gpt2")
    try:
        ax = fig.axes[0]
        clean = [line for line in ax.get_lines() if line.get_label().startswith("clean model")]
        assert clean and clean[0].get_ydata()[0] == pytest.approx(3.6011)
        assert "zero-ablated MLP: CE 3.9500" in ax.get_title()  # far off the spliced-CE scale
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend, axes_box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        assert legend.x0 >= axes_box.x1  # beside the axes, never over a line
        low, high = ax.get_ylim()
        assert low < 3.6011 < high and high > gpt2.ce_spliced.max()
    finally:
        plt.close(fig)


def test_loader_keeps_ok_rows_and_last_duplicate(run_dir: Path) -> None:
    rerun = make_row("gpt2", "tc", 16, ce_spliced=3.7777, delta_ce=0.1766)
    with (run_dir / "cells.jsonl").open("a") as f:
        f.write(json.dumps(rerun) + "\n")
    frame = load_results([run_dir])
    assert len(frame) == len(MODELS) * len(METHODS) * len(KS)
    assert set(frame["status"]) == {"ok"}
    cell = frame[(frame.model == "gpt2") & (frame.method == "tc") & (frame.k == 16)]
    assert cell["ce_spliced"].tolist() == [3.7777]
    assert cell["tasks_clean.social_iqa.acc"].tolist() == [0.412]
    assert len(read_cells([run_dir])) == len(MODELS) * len(METHODS) * len(KS) + 2  # failed row kept there


def test_repeated_cells_with_different_seeds_warn(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = write_cells(run_dir.parent / "seed1", [make_row("gpt2", "tc", 16, seed=1)])
    assert len(load_results([run_dir, other])) == len(MODELS) * len(METHODS) * len(KS)
    assert "different seed" in caplog.text


def test_several_runs_combine_and_accept_jsonl_paths(run_dir: Path, tmp_path: Path) -> None:
    other = write_cells(tmp_path / "other", [make_row("gpt2", "tc", 256)])
    frame = load_results([run_dir, other])
    assert sorted(frame[(frame.model == "gpt2") & (frame.method == "tc")]["k"]) == [16, 64, 256]


def test_extra_unknown_columns_still_plot(tmp_path: Path) -> None:
    rows = [make_row("gpt2", m, k, surprise={"nested": [1, 2]}, another_new_metric=7)
            for m in METHODS for k in KS]
    written = plot_results([write_cells(tmp_path / "r", rows)], tmp_path / "out")
    assert any(p.name == "gpt2_L8_ce_vs_k.png" for p in written)


def test_single_k_single_method_without_nmse_or_tasks(tmp_path: Path) -> None:
    row = make_row("gpt2", "tc", 64)
    for key in ("nmse", "tasks", "tasks_clean", "tasks_zero", "delta_ce_stderr"):
        row.pop(key)
    written = plot_results([write_cells(tmp_path / "r", [row])], tmp_path / "out")
    names = {p.name for p in written}
    assert "gpt2_L8_ce_vs_k.png" in names and "gpt2_L8_pareto.pdf" in names
    assert not any("nmse" in n or "tasks" in n for n in names)


def test_infinite_and_missing_values_are_skipped(tmp_path: Path) -> None:
    rows = [make_row("gpt2", "tc", 16, ce_spliced=float("inf"), delta_ce=float("inf"), nmse=None),
            make_row("gpt2", "mxd", 16, nmse=None)]
    written = plot_results([write_cells(tmp_path / "r", rows)], tmp_path / "out")
    assert "gpt2_L8_ce_vs_k.png" in {p.name for p in written}
    assert not any("nmse" in p.name for p in written)


def test_only_keys_present_plots_nothing_but_does_not_crash(tmp_path: Path) -> None:
    rows = [{"model": "gpt2", "layer": 8, "method": "tc", "k": k} for k in KS]
    assert plot_results([write_cells(tmp_path / "r", rows)], tmp_path / "out") == []


@pytest.mark.parametrize("column", ["model", "layer", "method", "k"])
def test_missing_required_column_names_it(tmp_path: Path, column: str) -> None:
    rows = [make_row("gpt2", "tc", k) for k in KS]
    for row in rows:
        row.pop(column)
    path = write_cells(tmp_path / "r", rows)
    with pytest.raises(ValueError, match=f"'{column}'") as info:
        load_results([path])
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = write_cells(tmp_path / "r", [])
    with pytest.raises(ValueError, match="no result rows"):
        plot_results([path], tmp_path / "out")


def test_unparseable_line_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_cells(tmp_path / "r", [make_row("gpt2", "tc", 16)])
    with path.open("a") as f:
        f.write('{"model": "gpt2", "lay\n')
    assert len(load_results([path])) == 1
    assert "cells.jsonl:2" in caplog.text


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cells.jsonl"):
        load_results([tmp_path / "nope"])


def test_task_metric_prefers_acc() -> None:
    columns = {"tasks.social_iqa.acc_norm": [0.4], "tasks.social_iqa.acc": [0.3], "tasks.gsm8k.exact_match": [0.1],
               "tasks.piqa.acc_stderr": [0.01]}
    assert task_metrics(pd.DataFrame(columns)) == [("gsm8k", "exact_match"), ("social_iqa", "acc")]


def test_pareto_front_marks_undominated_points() -> None:
    x = np.array([16, 16, 64, 64, 256.0])
    y = np.array([0.03, 0.01, 0.02, 0.005, 0.006])
    assert pareto_front(x, y).tolist() == [False, True, False, True, False]


def test_method_styles_fixed_and_distinct() -> None:
    a = method_styles(["mxd", "zeta-plugin", "alpha-plugin"])
    b = method_styles(["alpha-plugin", "tc", "zeta-plugin"])
    assert a["mxd"] == b["mxd"] and a["alpha-plugin"] == b["alpha-plugin"]
    every = method_styles(list(METHOD_ORDER) + ["alpha-plugin", "zeta-plugin"])
    assert len({s.color for s in every.values()}) == len(every)  # 10 colour-blind-safe colours
    assert len({s.marker for s in every.values()}) == len(every)


def test_sanitize_makes_file_safe_names() -> None:
    assert sanitize("meta-llama/Llama-3.2-3B") == "meta-llama_Llama-3.2-3B"
    assert sanitize("../x y") == "x_y"


REPO = Path(__file__).resolve().parents[1]
COMMITTED_RUNS = sorted(p.parent for p in (REPO / "results").glob("*/cells.jsonl"))


@pytest.mark.parametrize("run", COMMITTED_RUNS, ids=lambda p: p.name)
def test_committed_figures_regenerate_from_committed_results(run: Path, tmp_path: Path) -> None:
    """`bench plot results/<run>` on a fresh clone rebuilds figures/<run>/: the same files, and
    the same bytes wherever the matplotlib that drew them is the one installed (its version is in each PNG)."""
    from PIL import Image

    committed = {p.name: p for p in figures_dir_for(run).iterdir() if p.suffix in (".png", ".pdf")}
    fresh = {p.name: p for p in draw_run_figures(run, tmp_path)}
    assert sorted(fresh) == sorted(committed), "figures are stale: run `bench plot` and commit what it writes"
    writers = set()
    for name in (n for n in committed if n.endswith(".png")):
        with Image.open(committed[name]) as old, Image.open(fresh[name]) as new:
            assert old.size == new.size, name
            writers |= {old.info.get("Software"), new.info.get("Software")}
    if len(writers) == 1:  # drawn by this very matplotlib: nothing may differ
        for name, path in committed.items():
            assert path.read_bytes() == fresh[name].read_bytes(), f"{name} differs: regenerate {figures_dir_for(run)}"


def test_committed_reference_run_exists() -> None:
    """The README shows figures of a committed run; the test above is only as good as its presence."""
    assert COMMITTED_RUNS, "no results/<run>/cells.jsonl committed"


# ----------------------------------------------------------------------------- legends, panels, names

def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("models", [["gpt2"], list(MODELS)], ids=["one panel", "two panels"])
def test_figure_legends_never_cover_the_title(tmp_path: Path, models: list[str]) -> None:
    """A figure-wide legend at the upper right climbed into the title of a one-panel overview."""
    rows = [make_row(m, method, k) for m in models for method in METHODS for k in KS]
    frame = load_results([write_cells(tmp_path / "r", rows)])
    styles = method_styles(frame.method)
    one = frame[frame.model == "gpt2"]
    with plt.rc_context(RC):
        figures = [plot_overview(frame, styles), plot_pareto(one, styles, "gpt2 · layer 8 · a title this long"),
                   plot_tasks_vs_k(one, styles, "gpt2 · layer 8")]
    for fig in figures:
        try:
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            title = fig._suptitle.get_window_extent(renderer)
            (legend,) = fig.legends
            assert not _overlaps(legend.get_window_extent(renderer), title)
            for ax in fig.axes:
                if ax.get_visible():
                    assert not _overlaps(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
        finally:
            plt.close(fig)


def test_parameter_matched_methods_get_no_parameter_panel(run_dir: Path) -> None:
    frame = load_results([run_dir])
    gpt2 = frame[frame.model == "gpt2"]  # n_params within 0.01% of each other
    fig = plot_pareto(gpt2, method_styles(frame.method), "gpt2")
    try:
        assert [ax.get_xlabel() for ax in fig.axes] == ["L0 (mean active units per token)"]
        assert "parameter-matched: 38.6M parameters per cell" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_methods_of_different_sizes_keep_the_parameter_panel(run_dir: Path) -> None:
    frame = load_results([run_dir])
    gpt2 = frame[frame.model == "gpt2"].copy()
    gpt2.loc[gpt2.method == "mxd", "n_params"] *= 1.06  # 6% larger: no longer matched
    fig = plot_pareto(gpt2, method_styles(frame.method), "gpt2")
    try:
        assert [ax.get_xlabel() for ax in fig.axes] == ["L0 (mean active units per token)", "parameters (millions)"]
        assert "parameter-matched" not in fig._suptitle.get_text()
    finally:
        plt.close(fig)


@pytest.mark.parametrize("model, shown", [
    ("gpt2", "gpt2"),
    ("EleutherAI/pythia-410m", "EleutherAI/pythia-410m"),
    ("/tmp/tmpa81x/checkpoints/my-llama", "my-llama"),
    ("./models/my-llama/", "my-llama"),
    ("~/m/llama-3b-ft", "llama-3b-ft"),
    ("/home/u/.cache/huggingface/hub/models--meta-llama--Llama-3.2-3B/snapshots/0cb88a4f", "meta-llama/Llama-3.2-3B"),
    ("C:\\Users\\u\\llama", "llama"),
])
def test_display_name_of_aliases_hub_ids_and_paths(model: str, shown: str) -> None:
    assert display_name(model) == shown


def test_a_local_model_path_is_named_by_its_directory_in_titles_and_files(tmp_path: Path) -> None:
    path = "/tmp/tmpa81x/run/L15/my-llama"
    rows = [{**make_row("gpt2", m, k), "model": path, "model_id": path} for m in METHODS for k in KS]
    written = plot_results([write_cells(tmp_path / "r", rows)], tmp_path / "out")
    names = {p.name for p in written}
    assert "my-llama_L8_ce_vs_k.png" in names and not any("tmp" in n for n in names)
    assert _title(path, 8, load_results([tmp_path / "r"])).startswith("my-llama · layer 8")


def test_figures_go_beside_their_run_unless_a_root_is_given(tmp_path: Path) -> None:
    run = tmp_path / "somewhere" / "my-run"
    assert figures_dir_for(run) == run.parent.parent / "figures" / "my-run"
    assert figures_dir_for(run / "cells.jsonl") == run.parent.parent / "figures" / "my-run"
    assert figures_dir_for(Path("results/my-run")) == Path("figures/my-run")  # the repository's layout
    assert figures_dir_for(run, "figures") == Path("figures") / "my-run"


def test_a_results_directory_stands_for_every_run_in_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    for name in ("b-run", "a-run"):
        write_cells(results / name, [make_row("gpt2", "tc", 16)])
    (results / "perf").mkdir()  # not a run: no cells.jsonl
    assert find_run_dirs([results]) == [results / "a-run", results / "b-run"]
    assert find_run_dirs([results / "b-run", results]) == [results / "b-run", results / "a-run"]
    monkeypatch.chdir(tmp_path)
    assert find_run_dirs([]) == [Path("results/a-run"), Path("results/b-run")]
    with pytest.raises(ValueError, match="perf: neither a run directory"):
        find_run_dirs([results / "perf"])
    with pytest.raises(ValueError, match="nope: no such directory"):
        find_run_dirs([tmp_path / "nope"])


def test_firing_frequency_panels_show_each_cells_share_of_units(tmp_path: Path) -> None:
    from bench.plots import plot_firing_frequency

    histograms = {("tc", 16): [5, 0, 0, 0, 0, 1, 20, 300, 600, 98], ("mxd", 16): [0, 0, 0, 0, 0, 0, 3, 40, 500, 9],
                  ("mxd", 64): [12, 0, 0, 0, 2, 7, 70, 80, 90, 100]}
    rows = [make_row("gpt2", m, k, selection_frequency_histogram=h) for (m, k), h in histograms.items()]
    rows.append(make_row("gpt2", "tc", 64))  # from before the histogram existed: its panel says so
    run = write_cells(tmp_path / "r", rows).parent
    frame = load_results([run])
    fig = plot_firing_frequency(frame, method_styles(frame.method), "gpt2")
    try:
        panels = {ax.get_title(): ax for ax in fig.axes}
        assert sorted(panels) == ["mxd · K=16", "mxd · K=64", "tc · K=16", "tc · K=64"]
        for (method, k), counts in histograms.items():
            heights = [bar.get_height() for bar in panels[f"{method} · K={k}"].patches]
            assert heights == pytest.approx(np.array(counts) / sum(counts))
        assert not panels["tc · K=64"].patches and [t.get_text() for t in panels["tc · K=64"].texts] == ["not recorded"]
    finally:
        plt.close(fig)
    assert "gpt2_L8_firing_frequency.png" in {p.name for p in plot_results([run], tmp_path / "figs")}
