"""``bench probe RUN_DIR...``: the flags, the command, and the table it prints."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench.parsing import name_list
from bench.probing.datasets import DEFAULT_DATASETS, DEFAULT_TEXTS_PER_CLASS, dataset_names
from bench.probing.probes import PROBE_KS


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*",
                        help="run directories (default: every run under results/ with saved checkpoints)")
    parser.add_argument("--datasets", type=name_list, default=None,
                        help=f"comma-separated: {', '.join(dataset_names())} (hub), or a local .jsonl/.parquet/.csv "
                             f"with text and label columns (default: {','.join(DEFAULT_DATASETS)}, all offline)")
    parser.add_argument("--texts-per-class", type=int, default=DEFAULT_TEXTS_PER_CLASS,
                        help=f"at most this many texts per class, 80%% train / 20%% test (default {DEFAULT_TEXTS_PER_CLASS}, "
                             "sized for the default run on 2 CPU cores in under 10 minutes)")
    parser.add_argument("--seed", type=int, default=0, help="sampling, split, bootstrap and random-projection seed")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def run_probe_command(args: argparse.Namespace) -> int:
    """Probe each run directory in turn and print its table; returns the exit code (0)."""
    from bench.probing.runner import ProbeError, probe_run

    if args.texts_per_class < 2:
        raise ProbeError(f"--texts-per-class must be at least 2, got {args.texts_per_class}")
    runs = [Path(run) for run in args.runs] or sorted(
        path.parent for path in Path("results").glob("*/cells.jsonl") if (path.parent / "checkpoints").is_dir())
    if not runs:
        raise ProbeError("no runs with saved checkpoints under results/; give run directories (results/<run>)")
    for run_dir in runs:
        if not (run_dir / "cells.jsonl").is_file():
            raise ProbeError(f"{run_dir}: not a run directory (no cells.jsonl)")
    for run_dir in runs:
        started = time.perf_counter()
        rows = probe_run(run_dir, args.datasets, args.device, args.texts_per_class, args.seed)
        print(f"{run_dir}:\n{format_probe_table(rows)}\n")
        print(f"{run_dir}: {len(rows)} probing rows in {run_dir / 'probing.jsonl'} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


def format_probe_table(rows: list[dict[str, Any]], ks: tuple[int, ...] = PROBE_KS) -> str:
    """Per dataset: class-mean test F1 of each cell and baseline at each probe size, with the SE of k=1."""
    by_source: dict[tuple, dict[tuple, dict]] = {}
    for row in rows:
        source = (row["probe_dataset"], row["kind"] != "cell", row["method"], row.get("k") or 0, row.get("n_units") or 0)
        by_source.setdefault(source, {})[(row["probe"], row["probe_k"])] = row
    columns = [("k-sparse", k) for k in ks] + [("best-unit", 1), ("best-unit-on-test", 1), ("dense", None)]
    names = [f"F1@{k}" for k in ks] + ["best", "on-test*", "dense"]
    lines, current = [], None
    for source in sorted(by_source):
        dataset, _, method, k, width = source
        if dataset != current:
            current = dataset
            first = next(iter(by_source[source].values()))
            lines += ["", f"{dataset}: {first['n_classes']} classes, {first['n_texts']:,} texts "
                          f"({first['n_train']:,} train), test F1 averaged over classes",
                      f"{'source':<30}{'K':>5}{'units':>7}" + "".join(f"{n:>9}" for n in names) + f"{'±@1':>7}{'dCE':>8}"]
        found = by_source[source]
        cells = "".join(f"{found[c]['f1']:>9.3f}" if c in found else f"{'-':>9}" for c in columns)
        se = found.get(("k-sparse", 1), found.get(("dense", None), {})).get("f1_se")
        delta = next(iter(found.values())).get("delta_ce")
        lines.append(f"{method:<30}{k or '':>5}{width or '':>7}{cells}{_f(se, 3):>7}{_f(delta, 3):>8}")
    lines.append("* on-test: the unit chosen on the test split itself (reference protocol, optimistic)")
    return "\n".join(lines).lstrip("\n")


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
