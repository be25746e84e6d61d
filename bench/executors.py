"""Where a sweep's runs execute: one after another in this process (``local``), or as Ray tasks (``ray``).

A sweep is a list of RunConfigs. Each run directory becomes one task, which calls ``run_benchmark``
on whichever node Ray picks: the node loads the model and streams the data itself and writes its
rows to results every node sees (a shared directory, or a URL: see ``bench/storage.py``). A task
that dies (worker killed, node lost, out of memory) is retried, and the retry resumes: the harness
skips finished cells and restores the last training-state checkpoint, so no finished cell is
computed twice. A restarted driver resumes the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from bench import storage
from bench.config import RunConfig
from bench.logs import note
from bench.runlock import RunDirectoryBusy

EXECUTORS = ("local", "ray")
MAX_RETRIES = 3  # attempts after the first, for a task whose worker or node died
LOCK_WAIT_S = 300.0  # a retry may start before a dead attempt's lock is dropped (an NFS lease, say)


class SweepError(RuntimeError):
    """Some runs of a sweep failed after every retry; the other runs' rows are saved."""


def run_sweep(configs: list[RunConfig], executor: str = "local", address: str | None = None,
              gpus_per_task: float | None = None, plugins: Sequence[str] = ()) -> list[dict]:
    """Run every config; returns the rows of every run directory, in the order of ``configs``.

    ``address`` (Ray only): ``auto``, ``HOST:PORT`` or None (``$RAY_ADDRESS``, else a cluster
    started on this machine, else a new local one). ``gpus_per_task`` overrides the GPUs each task asks for (1 for CUDA runs, else 0).
    ``plugins``: method files to import on each worker (the driver has imported them already).
    """
    groups = group_by_run_dir(configs)
    if executor == "local":
        return [row for group in groups for row in run_group(group)]
    if executor == "ray":
        return _run_on_ray(groups, address, gpus_per_task, plugins)
    raise ValueError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")


def group_by_run_dir(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """Configs that share a run directory go to one task, in order: a run directory has one writer."""
    groups: dict[str, list[RunConfig]] = {}
    for cfg in configs:
        groups.setdefault(run_location(cfg), []).append(cfg)
    return list(groups.values())


def run_location(cfg: RunConfig) -> str:
    """The run directory, as a URL or an absolute path."""
    name = cfg.run_name_or_default()
    return f"{cfg.results_dir.rstrip('/')}/{name}" if storage.is_url(cfg.results_dir) else str(
        Path(cfg.results_dir).resolve() / name)


def run_group(group: list[RunConfig], lock_wait_s: float = 0.0) -> list[dict]:
    """Run the configs of one run directory in order; returns that directory's rows."""
    rows: list[dict] = []
    for cfg in group:
        rows = run_config(cfg, lock_wait_s)
    return rows


def run_config(cfg: RunConfig, lock_wait_s: float = 0.0) -> list[dict]:
    """One run against its results wherever they live, waiting up to ``lock_wait_s`` for a busy lock."""
    deadline = time.monotonic() + lock_wait_s
    while True:
        try:
            return _run_once(cfg)
        except RunDirectoryBusy as busy:
            if time.monotonic() >= deadline:
                raise
            note(f"{busy}; trying again for up to {deadline - time.monotonic():.0f} s")
            time.sleep(min(5.0, lock_wait_s))


def _run_once(cfg: RunConfig) -> list[dict]:
    from bench.harness import run_benchmark

    if not storage.is_url(cfg.results_dir):
        return run_benchmark(cfg)
    with storage.mirrored(cfg, cfg.run_name_or_default()) as (local_cfg, push):
        return run_benchmark(local_cfg, on_saved=push)  # uploads after each checkpoint and row


def task_gpus(device: str, cluster_has_gpus: bool) -> float:
    """The GPUs a run asks Ray for: one for CUDA (``auto`` means CUDA where the cluster has GPUs)."""
    if device.startswith("cuda"):
        return 1.0
    return 1.0 if device == "auto" and cluster_has_gpus else 0.0


def _run_on_ray(groups: list[list[RunConfig]], address: str | None, gpus_per_task: float | None,
                plugins: Sequence[str]) -> list[dict]:
    import ray

    if not ray.is_initialized():
        ray.init(address=address)
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    shipped = [(Path(p).name, Path(p).read_text(encoding="utf-8")) for p in plugins]
    pending = {}
    for index, group in enumerate(groups):
        gpus = gpus_per_task if gpus_per_task is not None else task_gpus(group[0].device, has_gpus)
        if gpus > 0 and not has_gpus:
            print(f"bench: warning: {run_location(group[0])} asks for {gpus:g} GPU but the Ray cluster has none "
                  "yet; it waits for a GPU node (or pass --device cpu / --gpus-per-task 0)", file=sys.stderr)
        pending[_submit(group, gpus, shipped)] = index
    results: dict[int, list[dict]] = {}
    failed: list[str] = []
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ref)
        where = run_location(groups[index][0])
        try:
            results[index] = ray.get(ref)
        except Exception as error:  # the run's own error, or its worker's death after every retry
            failed.append(f"{where}: {_first_line(error)}")
            print(f"bench: FAILED {where}: {_first_line(error)}", file=sys.stderr)
            continue
        print(f"bench: finished {where} ({len(groups) - len(pending)}/{len(groups)})", file=sys.stderr)
        if not storage.is_url(where) and not Path(where).is_dir():
            print(f"bench: warning: {where} is not on this machine; give --results-dir a path every node "
                  "sees (a shared filesystem) or a URL", file=sys.stderr)
    if failed:
        raise SweepError(f"{len(failed)} of {len(groups)} runs failed (re-run to resume): " + "; ".join(failed))
    return [row for index in range(len(groups)) for row in results[index]]


def _submit(group: list[RunConfig], gpus: float, plugins: list[tuple[str, str]]):
    import ray
    import torch

    return ray.remote(_ray_task).options(
        name=f"bench-run:{Path(run_location(group[0])).name}", num_gpus=gpus, max_retries=MAX_RETRIES,
        # A dead worker or node is retried whatever this says; these are the exceptions worth a retry.
        retry_exceptions=[OSError, torch.cuda.OutOfMemoryError],
        runtime_env={"env_vars": {"TQDM_DISABLE": "1"}},  # bars do not survive Ray's line-based logs
    ).remote([dataclasses.asdict(cfg) for cfg in group], plugins, os.getcwd())


def _ray_task(settings: list[dict], plugins: list[tuple[str, str]], cwd: str) -> list[dict]:
    """One Ray task: the runs of one run directory, on whichever node Ray picked."""
    import ray

    import methods

    if Path(cwd).is_dir():  # relative paths (--results-dir results, a local model) mean what they meant to the driver
        os.chdir(cwd)
    for name, source in plugins:  # the driver's --plugin files, written out on this node
        folder = storage.scratch_root() / "plugins" / hashlib.sha256(source.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(source, encoding="utf-8")
        methods.load_plugin(folder / name)
    methods.load_entry_points()
    group = [RunConfig(**cfg) for cfg in settings]
    if ray.get_gpu_ids():  # Ray shows this task only its own GPU(s), numbered from 0
        group = [dataclasses.replace(c, device="cuda") if c.device.startswith("cuda:") else c for c in group]
    return run_group(group, lock_wait_s=LOCK_WAIT_S)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if type(error).__name__.startswith("RayTaskError") else lines[0]
