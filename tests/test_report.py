"""REPORT.md from a synthetic run: settings, every method, a known row's numbers, failures, links."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.figure_names import OVERVIEW_STEM, figure_kinds, figure_stem
from bench.report import write_report
from tests.test_plots import METHODS, MODELS, make_row, synthetic_rows, write_cells


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_cells(tmp_path / "results" / "synthetic", synthetic_rows()).parent


@pytest.fixture
def figures_dir(tmp_path: Path) -> Path:
    """Stand-in figure files: the report only links them, so their content does not matter."""
    figures = tmp_path / "figures" / "synthetic"
    figures.mkdir(parents=True)
    stems = [figure_stem(m, layer, kind) for m, (layer, _, _) in MODELS.items() for kind in figure_kinds()]
    for stem in stems + [OVERVIEW_STEM]:
        for ext in ("png", "pdf"):
            (figures / f"{stem}.{ext}").write_bytes(b"fake")
    return figures


def row_line(text: str, model_heading: str, method: str, k: int) -> str:
    """The metrics-table line of one cell inside one model's section."""
    section = text.split(f"## {model_heading}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith(f"| {method} | {k} |")]
    assert len(lines) == 1, section
    return lines[0]


def test_report_lists_settings_methods_and_a_known_row(run_dir: Path, figures_dir: Path) -> None:
    report = write_report(run_dir, figures_dir)
    assert report == run_dir / "REPORT.md"
    text = report.read_text()
    for expected in ("preset | paper", "train tokens | 480,000,000", "torch | 2.5.0", "NVIDIA H100",
                     "learning rate | 0.0001", "batch size | 4,096"):
        assert expected in text
    for method in METHODS:
        assert f"| {method} |" in text
    known = make_row("gpt2", "tc", 16)
    line = row_line(text, "gpt2 · layer 8", "tc", 16)
    for number in (f"{known['ce_spliced']:.4f}", "+0.0300 ± 0.0030", f"{known['ce_recovered']:.3f}",
                   "0.0500", f"{known['n_params']:,}", "0.560 ± 0.011", "20.6 min", "16.0"):
        assert number in line, (number, line)
    assert "Clean model CE: **3.6011**; zero-ablated MLP CE: **3.9500**" in text
    assert "piqa acc 0.625 / 0.550" in text


def test_failed_cells_are_listed_with_their_error(run_dir: Path, figures_dir: Path) -> None:
    text = write_report(run_dir, figures_dir).read_text()
    failures = text.split("## Failed cells", 1)[1]
    assert "| gpt2 | 8 | mxd | 256 | failed | CUDA out of memory \\| tried to allocate 2 GiB |" in failures
    assert re.search(r"\| mxd \| 3\.\d{4} \| 3\.\d{4} \| failed \|", text)  # the CE grid marks it too


def test_figures_are_linked_relative_to_the_report(run_dir: Path, figures_dir: Path) -> None:
    report = write_report(run_dir, figures_dir)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    assert len(links) == len(MODELS) * len(figure_kinds()) + 1
    assert all(not Path(link).is_absolute() and (report.parent / link).is_file() for link in links)
    assert "../../figures/synthetic/gpt2_L8_ce_vs_k.png" in links


def test_report_without_figures_says_so(run_dir: Path, tmp_path: Path) -> None:
    text = write_report(run_dir / "cells.jsonl", tmp_path / "empty").read_text()
    assert "![" not in text and "No figures found" in text


def test_run_where_every_cell_failed_still_reports(tmp_path: Path) -> None:
    rows = [{"model": "gpt2", "layer": 8, "method": m, "k": 16, "status": "failed", "error": "boom"}
            for m in METHODS]
    run = write_cells(tmp_path / "r", rows).parent
    text = write_report(run, tmp_path / "figs").read_text()
    assert text.count("| boom |") == len(METHODS)
    assert "0 ok, 3 failed" in text


def test_a_later_successful_retry_replaces_the_failure(tmp_path: Path) -> None:
    rows = [{"model": "gpt2", "layer": 8, "method": "tc", "k": 16, "status": "failed", "error": "boom"},
            make_row("gpt2", "tc", 16)]
    text = write_report(write_cells(tmp_path / "r", rows).parent, tmp_path / "figs").read_text()
    assert "boom" not in text and "3.6311" in text


def test_settings_name_the_dataset_and_the_span_from_first_start_to_last_finish(tmp_path: Path) -> None:
    rows = [make_row("gpt2", "tc", 16, dataset="my-corpus.jsonl", timestamp="2025-01-01T10:00:00+00:00",
                     train_time_s=600.0, eval_time_s=30.0),
            make_row("gpt2", "mxd", 16, dataset="my-corpus.jsonl", timestamp="2025-01-01T10:20:00+00:00",
                     train_time_s=100.0, eval_time_s=45.0)]
    text = write_report(write_cells(tmp_path / "r", rows).parent, tmp_path / "figs").read_text()
    assert "| dataset | my-corpus.jsonl |" in text
    # tc started training by 10:00 - 10 min = 09:50; mxd finished evaluating at 10:20 + 45 s.
    assert "| cells trained and evaluated | 2025-01-01T09:50:00+00:00 to 2025-01-01T10:20:45+00:00 (30.8 min) |" in text


def test_the_stderr_caption_says_what_the_error_bars_are_over(tmp_path: Path) -> None:
    old = [make_row("gpt2", m, 16) for m in METHODS]
    text = write_report(write_cells(tmp_path / "old", old).parent, tmp_path / "figs").read_text()
    assert "stderrs are over the CE sequences, taken as independent" in text
    new = [make_row("gpt2", m, 16, ce_documents=37, eval_documents=120) for m in METHODS]
    text = write_report(write_cells(tmp_path / "new", new).parent, tmp_path / "figs").read_text()
    assert "clustered by the 37 documents they come from" in text
    assert "| documents the CE tokens come from | 37 |" in text
    assert "| documents the eval tokens come from | 120 |" in text


def test_a_local_model_path_is_headed_by_its_directory_name(tmp_path: Path) -> None:
    path = "/tmp/tmpa81x/my-llama"
    rows = [{**make_row("gpt2", m, 16), "model": path, "model_id": path} for m in METHODS]
    text = write_report(write_cells(tmp_path / "r", rows).parent, tmp_path / "figs").read_text()
    assert "## my-llama · layer 8" in text and f"Model id: `{path}`" in text


def test_resumed_cells_are_listed(tmp_path: Path) -> None:
    import json

    run = tmp_path / "r"
    run.mkdir()
    rows = [{"model": "m", "layer": 1, "method": "tc", "k": 16, "status": "ok", "resumed_at_tokens": 1024},
            {"model": "m", "layer": 1, "method": "mxd", "k": 16, "status": "ok", "resumed_at_tokens": None}]
    (run / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(run, tmp_path / "figures").read_text()
    assert "## Resumed cells" in text and "| tc | 16 | 1,024 |" in text and "| mxd | 16 | 1,0" not in text


def firing_rows() -> list[dict]:
    """Cells with a training selection-frequency histogram each, and one row from before it existed."""
    rows = []
    for i, method in enumerate(METHODS):
        for k in (16, 64):
            histogram = [7 * i + k, 0, 0, 0, 1, 2 + i, 30 * k, 900 + i, 1_500 - k, 40 * (i + 1)]
            rows.append(make_row("gpt2", method, k, selection_frequency_histogram=histogram,
                                 never_selected=histogram[0], never_selected_fraction=histogram[0] / sum(histogram)))
    return rows + [make_row("gpt2", "tc", 256)]  # an older row: neither field


def test_the_firing_frequency_table_shows_each_cells_histogram(tmp_path: Path) -> None:
    import json

    run = write_cells(tmp_path / "r", firing_rows()).parent
    text = write_report(run, tmp_path / "figs").read_text()
    section = text.split("Firing frequency in training", 1)[1].split("\n\n", 2)[1]
    assert section.splitlines()[0] == ("| method | K | units | never selected | <1e-8 | 1e-8..1e-7 | 1e-7..1e-6 | "
                                       "1e-6..1e-5 | 1e-5..1e-4 | 1e-4..1e-3 | 1e-3..1e-2 | 1e-2..1e-1 | 1e-1..1 |")
    written = [json.loads(line) for line in (run / "cells.jsonl").read_text().splitlines()]
    for row in written:
        counts = row.get("selection_frequency_histogram")
        shown = [f"{c:,}" for c in counts] if counts else ["—"] * 10
        line = f"| {row['method']} | {row['k']} | {row['n_units']:,} | " + " | ".join(shown) + " |"
        assert line in section.splitlines(), line
    assert len(section.splitlines()) == 2 + len(written)


def test_a_run_from_before_the_histogram_has_no_firing_table(run_dir: Path, figures_dir: Path) -> None:
    text = write_report(run_dir, figures_dir).read_text()
    assert "units per bucket of f" not in text and "| never selected |" not in text
    assert "firing_frequency.png" in text  # a figure already drawn is still linked
