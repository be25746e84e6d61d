"""``probe_run``: score every saved cell of a run, and the baselines that frame it, on every dataset.

Per (model, layer) of the run and per dataset: the LM runs once over the texts (activations of the
MLP at that layer, kept in memory), then each cell's pooled codes are computed once and scored by
every probe. Baselines on the same texts: the base MLP's own hidden neurons, a seeded random
projection of the MLP input as wide as each cell width in the run, and a dense probe on the pooled
MLP input (the ceiling). Rows land in ``<run>/probing.jsonl`` after each (source, dataset), so an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.cell_scores import weights_digest
from bench.devices import resolve_device, resolve_dtype
from bench.logs import note
from bench.probing.codes import (MIN_TEXT_TOKENS, TextActivations, collect_text_activations, pooled_codes,
                                 pooled_mlp_neurons, random_projection, segment_mean)
from bench.probing.datasets import (DEFAULT_DATASETS, DEFAULT_TEXTS_PER_CLASS, ProbeDataError, ProbeDataset,
                                    load_probe_dataset)
from bench.probing.metrics import stratified_split
from bench.probing.probes import PROBE_KS
from bench.probing.scoring import score_features
from bench.probing.store import ProbeStore, row_key
from bench.results import CELL_KEY, RunStore

COPIED_FROM_CELL = ("delta_ce", "delta_ce_stderr", "ce_recovered", "nmse", "l0", "dead_fraction", "n_params")


class ProbeError(ValueError):
    """A run directory or setting that probing cannot use."""


@dataclass
class Source:
    """Something whose pooled features get probed: a saved cell or a baseline."""

    fields: dict[str, Any]  # identity and context copied into every row
    features: Callable[[TextActivations, Any], torch.Tensor]  # (activations, loaded LM) -> [texts, units]
    dense: bool = False
    reads_output: bool = False  # needs the MLP's output (an SAE), not only its input


def saved_cells(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``cells.jsonl`` with status ok whose checkpoint directory exists."""
    rows = [r for r in RunStore(run_dir).rows() if r.get("status") == "ok" and r.get("checkpoint")]
    missing = [r for r in rows if not (run_dir / r["checkpoint"] / "config.json").is_file()]
    for row in missing:
        note(f"probing: skipping {row['method']} k={row['k']}: no checkpoint at {run_dir / row['checkpoint']}")
    return [r for r in rows if r not in missing]


def probe_run(run_dir: Path, datasets: list[str] | None = None, device: str = "auto",
              max_per_class: int = DEFAULT_TEXTS_PER_CLASS, seed: int = 0,
              ks: tuple[int, ...] = PROBE_KS) -> list[dict[str, Any]]:
    """Score every saved cell of ``run_dir`` and the baselines; write and return the probing rows."""
    run_dir = Path(run_dir)
    names = list(datasets or DEFAULT_DATASETS)
    cells = saved_cells(run_dir)
    if not cells:
        raise ProbeError(f"{run_dir}: no saved cells to probe (cells.jsonl rows with status ok and a checkpoint)")
    settings = {"texts_per_class": max_per_class, "probe_seed": seed}
    store = ProbeStore(run_dir)
    wanted: set[tuple] = set()
    loaded: dict[str, ProbeDataset] = {}
    target = resolve_device(device)
    groups: dict[tuple, list[dict]] = {}
    for row in cells:
        groups.setdefault((row["model"], row["layer"]), []).append(row)
    for (model_name, layer), group in groups.items():
        sources = [_cell_source(run_dir, row, target) for row in group] + _baselines(group, target, seed)
        lm = None
        for name in names:
            expected = [_expected_keys(source, name, settings, ks) for source in sources]
            wanted |= {key for keys in expected for key in keys}
            done = store.keys()
            todo = [source for source, keys in zip(sources, expected) if not set(keys) <= done]
            if not todo:
                continue
            if name not in loaded:
                loaded[name] = load_probe_dataset(name, max_per_class, seed)
            if lm is None:
                from bench.models import load_model

                lm = load_model(model_name, str(target), resolve_dtype("auto", target),
                                trust_remote_code=bool(group[0].get("trust_remote_code")))
            _probe_dataset(loaded[name], lm, layer, todo, store, {**settings, "probe_dataset": name}, ks, seed)
    runs = RunStore(run_dir)
    runs.write_summary(runs.rows())  # summary.csv shows the cells' probing scores (bench.cell_scores)
    return [row for row in store.rows() if row_key(row) in wanted]


def _probe_dataset(data: ProbeDataset, lm, layer: int, sources: list[Source], store: ProbeStore,
                   context: dict[str, Any], ks: tuple[int, ...], seed: int) -> None:
    started = time.perf_counter()
    acts = collect_text_activations(lm.model, layer, lm.tokenizer, data.texts,
                                    keep_output=any(source.reads_output for source in sources))
    labels = np.array([data.classes.index(data.labels[i]) for i in acts.kept])
    present = sorted(set(labels.tolist()))
    if len(present) < 2 or min(np.bincount(labels)[present]) < 2:
        raise ProbeDataError(f"dataset {data.name!r}: too few texts of {MIN_TEXT_TOKENS}+ tokens per class to split")
    train, test = stratified_split(labels, seed=seed)
    note(f"probing {data.name}: {acts.n_texts:,} texts ({len(data.texts) - acts.n_texts} under 5 tokens dropped), "
         f"{len(data.classes)} classes, {len(acts.x):,} tokens; LM pass {time.perf_counter() - started:.0f} s")
    context = {**context, "n_texts": acts.n_texts, "n_train": len(train), "n_classes": len(data.classes),
               "probe_source": data.source}
    for source in sources:
        started = time.perf_counter()
        features = source.features(acts, lm).numpy()
        rows = score_features(features, labels, data.classes, train, test, ks, dense=source.dense, seed=seed)
        rows = [{**source.fields, **context, **row, "n_features": features.shape[1]} for row in rows]
        store.add(rows)
        summary = ", ".join(f"{r['probe']}{'@' + str(r['probe_k']) if r['probe'] == 'k-sparse' else ''} "
                            f"{r['f1']:.3f}" for r in rows if r["probe"] != "k-sparse" or r["probe_k"] in (1, 5))
        note(f"  {source.fields['method']} k={source.fields.get('k')}: F1 {summary} "
             f"({time.perf_counter() - started:.1f} s)")


def _expected_keys(source: Source, dataset: str, settings: dict, ks: tuple[int, ...]) -> list[tuple]:
    probes = [("dense", None)] if source.dense else [("k-sparse", k) for k in ks] + [("best-unit", 1),
                                                                                     ("best-unit-on-test", 1)]
    return [row_key({**source.fields, **settings, "probe_dataset": dataset, "probe": probe, "probe_k": k})
            for probe, k in probes]


def _cell_source(run_dir: Path, row: dict[str, Any], device: torch.device) -> Source:
    from methods.checkpoint import load_layer

    fields = {"kind": "cell", **{name: row.get(name) for name in CELL_KEY}, "checkpoint": row["checkpoint"],
              "n_units": row.get("n_units"), **{name: row.get(name) for name in COPIED_FROM_CELL},
              "weights_sha256": weights_digest(run_dir, row["checkpoint"])}  # which weights the scores belong to

    def features(acts: TextActivations, lm) -> torch.Tensor:
        layer = load_layer(run_dir / row["checkpoint"], device).eval()
        return pooled_codes(layer, acts, device)

    return Source(fields, features, reads_output=_reads_output(run_dir / row["checkpoint"]))


def _reads_output(checkpoint: Path) -> bool:
    """Whether the saved layer's method reads the MLP output (unknown methods: assume it does)."""
    from methods.registry import layer_class

    try:
        method = json.loads((checkpoint / "config.json").read_text())["method"]
        return layer_class(method).input_site == "mlp_output"
    except (OSError, ValueError, KeyError):
        return True


def _baselines(group: list[dict[str, Any]], device: torch.device, seed: int) -> list[Source]:
    """The base MLP's neurons, random projections as wide as each cell width, and the dense ceiling."""
    from bench.models import mlp_module

    model, layer = group[0]["model"], group[0]["layer"]

    def base(method: str, n_units: int | None) -> dict[str, Any]:
        return {"kind": "baseline", **{name: None for name in CELL_KEY}, "model": model, "layer": layer,
                "method": method, "checkpoint": None, "n_units": n_units}

    def neurons(acts: TextActivations, lm) -> torch.Tensor:
        return pooled_mlp_neurons(mlp_module(lm.model, layer), acts, device)

    def projection(width: int) -> Callable[[TextActivations, Any], torch.Tensor]:
        # Pooling is linear, so projecting the pooled input equals pooling the projected tokens.
        return lambda acts, lm: segment_mean(acts.x, acts.text_index, acts.n_texts) @ random_projection(
            width, acts.x.shape[1], seed + width)

    widths = sorted({row["n_units"] for row in group if row.get("n_units")})
    return ([Source(base("baseline:mlp-neurons", None), neurons)]
            + [Source(base("baseline:random-projection", w), projection(w)) for w in widths]
            + [Source(base("baseline:dense-probe", None),
                      lambda acts, lm: segment_mean(acts.x, acts.text_index, acts.n_texts), dense=True)])
