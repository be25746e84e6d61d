"""REPORT.md's probing and steering sections hold the numbers of probing.jsonl and steering/*.json, read
back here on their own; a run without them gets a one-line pointer (or nothing, with no saved cell)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from bench.report import write_report
from tests.test_cell_scores import DATASETS, scored_run

NAMES = {"baseline:mlp-neurons": "base MLP neurons", "baseline:random-projection": "random projection",
         "baseline:dense-probe": "dense probe on the MLP input (ceiling)"}


def table_rows(text: str, title: str) -> dict[str, list[str]]:
    """The markdown table under the line starting with ``title``: first column -> the other columns."""
    block = text.split(title, 1)[1].split("\n\n", 2)[1]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]
    return {row[0]: row[1:] for row in cells}


def expected_rows(run: Path, probe: str, probe_k: int) -> dict[str, list[str]]:
    """Per source, the F1 ± SE of each dataset and of their mean, from the file at the latest settings."""
    rows = [json.loads(line) for line in (run / "probing.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["texts_per_class"] == 100 and ((r["probe"], r["probe_k"]) == (probe, probe_k)
                                                                or r["probe"] == "dense")]
    found: dict[str, dict[str, tuple[float, float]]] = {}
    for r in rows:
        found.setdefault(NAMES.get(r["method"], r["method"]), {})[r["probe_dataset"]] = (r["f1"], r["f1_se"])
    out = {}
    for name, scores in found.items():
        pairs = [scores[d] for d in DATASETS]
        mean = (sum(f for f, _ in pairs) / len(pairs), math.sqrt(sum(s * s for _, s in pairs)) / len(pairs))
        out[name] = [f"{f:.3f} ± {s:.3f}" for f, s in pairs + [mean]]
    return out


def test_probing_tables_hold_the_files_numbers_with_baselines_and_the_optimistic_figure_labelled(tmp_path):
    run = scored_run(tmp_path)
    text = write_report(run, tmp_path / "figures").read_text()
    section = text.split("## Sparse probing", 1)[1].split("\n## ", 1)[0]
    for probe, k, title in (("k-sparse", 1, "**k-sparse k=1**"), ("k-sparse", 5, "**k-sparse k=5**"),
                            ("best-unit-on-test", 1, "**best-unit-on-test**: best-on-test (reference, optimistic)")):
        shown = table_rows(section, title)
        expected = expected_rows(run, probe, k)
        assert set(shown) == set(expected) == {"tc", "mxd", *NAMES.values()}  # never-probed sae: no row
        for name, values in expected.items():
            assert shown[name][2:] == values, (title, name)  # after K and units
    assert table_rows(section, "**k-sparse k=1**")["tc"][:2] == ["4", "64"]
    assert "0.111" not in section  # the probe at other settings


def test_the_steering_table_holds_the_files_means_labelled_as_proxy(tmp_path):
    run = scored_run(tmp_path)
    text = write_report(run, tmp_path / "figures").read_text()
    section = text.split("## Steering", 1)[1].split("\n## ", 1)[0]
    units = json.loads((run / "steering" / "tc-4.json").read_text())["units"].values()
    ppl, proxy = [u["perplexity"] for u in units], [u["coherence_proxy"] for u in units]
    header = section.split("\n\n", 2)[2].splitlines()[0]
    assert "coherence (proxy)" in header and "PROXY" in section
    (row,) = table_rows(section, "Per steered cell").values()
    assert row[:4] == ["m L1", "2", f"{sum(ppl) / 2:.1f} ± {abs(ppl[0] - ppl[1]) / 2:.1f}", "12.0"]
    assert row[4] == f"{sum(proxy) / 2:.3f} ± {abs(proxy[0] - proxy[1]) / 2:.3f}" and row[5:7] == ["—", "—"]


def test_a_run_without_results_gets_a_pointer_or_nothing(tmp_path):
    run = scored_run(tmp_path)
    (run / "probing.jsonl").unlink()
    (run / "steering" / "tc-4.json").unlink()
    text = write_report(run, tmp_path / "figures").read_text()
    assert f"_Not probed yet: `bench probe {run}` adds this section._" in text and "## Steering" not in text
    rows = [json.loads(line) for line in (run / "cells.jsonl").read_text().splitlines()]
    (run / "cells.jsonl").write_text("".join(json.dumps({**r, "checkpoint": None}) + "\n" for r in rows))
    assert "Sparse probing" not in write_report(run, tmp_path / "figures").read_text()
