"""Sweeps on a cluster: results at a URL (bench/storage.py) and runs as Ray tasks (bench/executors.py).

The storage tests use fsspec's in-process ``memory://`` filesystem and run without Ray. The Ray
tests start a real Ray cluster on this machine (a head and two one-CPU worker nodes), SIGKILL a
worker of each run mid-training, and check that the retries resume from the last checkpoint and
that every cell is written exactly once.
"""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from bench import storage
from bench.config import RunConfig
from bench.executors import SweepError, group_by_run_dir, run_sweep, task_gpus
from bench.results import RunStore


def _config(model_dir, corpus, results_dir, run_name, layer, tokens=1024, **extra) -> RunConfig:
    return RunConfig(methods=["tc", "mxd"], model=str(model_dir), layer=layer, ks=[2], expansion=8,
                     dataset=str(corpus), train_tokens=tokens, eval_tokens=128, ce_tokens=64, context_length=16,
                     batch_size=64, lm_batch_size=8, buffer_tokens=1024, warmup_steps=2, device="cpu",
                     results_dir=str(results_dir), run_name=run_name, **extra)


def _cells(rows) -> list[tuple]:
    return sorted((r["run"], r["layer"], r["method"], r["k"]) for r in rows)


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    """Each test's URL runs keep their local copies under its own tmp dir (Ray workers inherit it)."""
    monkeypatch.setenv("MXBENCH_SCRATCH", str(tmp_path / "scratch"))
    return tmp_path / "scratch"


@pytest.fixture
def memory_url():
    from fsspec.implementations.memory import MemoryFileSystem

    yield "memory://bucket/results"
    if MemoryFileSystem().exists("/bucket"):
        MemoryFileSystem().rm("/bucket", recursive=True)


def _fake_run(run_dir: Path, tokens_served: int) -> None:
    """A run directory as the harness leaves it mid-way: one finished row, training state for the rest."""
    (run_dir / "checkpoints" / "tc-k2").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "tc-k2" / "weights.safetensors").write_bytes(b"tc weights")
    row = {"run": "r", "model": "m", "layer": 1, "method": "tc", "k": 2, "status": "ok", "checkpoint": "checkpoints/tc-k2"}
    (run_dir / "cells.jsonl").write_text(json.dumps(row) + "\n")
    (run_dir / "run.log").write_text(f"log at {tokens_served}\n")
    state = run_dir / "checkpoints" / "_training"
    (state / "mxd-k2").mkdir(parents=True, exist_ok=True)
    (state / "mxd-k2" / "state.json").write_text(json.dumps({"tokens": tokens_served}))
    (state / "progress.json").write_text(json.dumps({"tokens_served": tokens_served}))


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_then_pull_restores_rows_layers_and_training_state(tmp_path, memory_url):
    _fake_run(tmp_path / "a", 256)
    storage.RunMirror(f"{memory_url}/r", tmp_path / "a").push()
    storage.RunMirror(f"{memory_url}/r", tmp_path / "b").pull()
    pulled = _tree(tmp_path / "b")
    assert pulled == {k: v for k, v in _tree(tmp_path / "a").items() if not k.startswith("checkpoints/tc-k2")}
    from fsspec.implementations.memory import MemoryFileSystem

    assert MemoryFileSystem().cat_file("/bucket/results/r/checkpoints/tc-k2/weights.safetensors") == b"tc weights"


def test_a_half_uploaded_state_is_never_restored(tmp_path, memory_url, monkeypatch):
    mirror = storage.RunMirror(f"{memory_url}/r", tmp_path / "a")
    _fake_run(tmp_path / "a", 256)
    mirror.push()
    _fake_run(tmp_path / "a", 512)
    real = mirror.fs.put_file
    monkeypatch.setattr(mirror.fs, "put_file", lambda *a, **k: (_ for _ in ()).throw(OSError("network down")))
    with pytest.raises(OSError):
        mirror.push()  # the rows went up; the new state did not
    monkeypatch.setattr(mirror.fs, "put_file", real)
    storage.RunMirror(f"{memory_url}/r", tmp_path / "b").pull()
    state = tmp_path / "b" / "checkpoints" / "_training"
    assert json.loads((state / "progress.json").read_text())["tokens_served"] == 256
    assert json.loads((state / "mxd-k2" / "state.json").read_text())["tokens"] == 256

    mirror.push()  # the next push completes the snapshot and deletes the old one
    snapshots = [p for p in mirror.fs.ls("/bucket/results/r/checkpoints", detail=False) if "_training-" in p]
    assert len(snapshots) == 1
    storage.RunMirror(f"{memory_url}/r", tmp_path / "c").pull()
    assert json.loads((tmp_path / "c" / "checkpoints" / "_training" / "progress.json").read_text()) == {
        "tokens_served": 512}


def test_finished_run_drops_its_remote_training_state(tmp_path, memory_url):
    mirror = storage.RunMirror(f"{memory_url}/r", tmp_path / "a")
    _fake_run(tmp_path / "a", 256)
    mirror.push()
    import shutil

    shutil.rmtree(tmp_path / "a" / "checkpoints" / "_training")  # as the harness does once every row is written
    mirror.push()
    assert not any("_training" in p for p in mirror.fs.find("/bucket/results/r"))
    storage.RunMirror(f"{memory_url}/r", tmp_path / "b").pull()
    assert not (tmp_path / "b" / "checkpoints").exists()
    assert RunStore(tmp_path / "b").rows()[0]["method"] == "tc"


def test_url_results_skip_finished_cells_and_resume_after_ctrl_c(
        tmp_path, tiny_model_dir, corpus_file, memory_url, scratch, monkeypatch, capsys):
    import bench.train as train

    real, steps = train.train_step, []

    def interrupt_after_five(cell, x, y):
        steps.append(1)
        if len(steps) == 11:  # two cells per batch: five whole batches in
            raise KeyboardInterrupt
        real(cell, x, y)

    cfg = _config(tiny_model_dir, corpus_file, memory_url, "r", layer=1)
    monkeypatch.setattr(train, "train_step", interrupt_after_five)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([cfg])
    monkeypatch.undo()
    capsys.readouterr()
    rows = run_sweep([cfg])
    assert "resuming 2 cells at 320 of 1,024 tokens" in capsys.readouterr().err
    assert _cells(rows) == [("r", 1, "mxd", 2), ("r", 1, "tc", 2)]
    assert all(r["status"] == "ok" and r["trained_tokens"] == 1024 for r in rows)
    assert not any(scratch.glob("*/r")), "the local copy is removed after the run"

    assert run_sweep([cfg]) == rows  # a second sweep pulls the rows and finds nothing to do
    assert "nothing to do" in capsys.readouterr().err
    from fsspec.implementations.memory import MemoryFileSystem

    remote = MemoryFileSystem().find("/bucket/results/r")
    assert {p.rsplit("/", 2)[-2] for p in remote if p.endswith("weights.safetensors")} == {"tc-k2", "mxd-k2"}
    assert not any("_training" in p for p in remote)


def test_configs_sharing_a_run_directory_form_one_task(tmp_path):
    a, b, c = (RunConfig(results_dir=str(tmp_path), run_name=n, layer=i) for i, n in enumerate("xyx"))
    assert group_by_run_dir([a, b, c]) == [[a, c], [b]]
    assert task_gpus("cuda", False) == task_gpus("cuda:1", False) == task_gpus("auto", True) == 1
    assert task_gpus("auto", False) == task_gpus("cpu", True) == 0


# ----------------------------------------------------------------------------------------------- Ray

@pytest.fixture(scope="module")
def ray_scratch(tmp_path_factory):
    """A Ray cluster on this machine: a head and two worker nodes of one CPU each.

    Returns where its workers keep the local copies of URL runs."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    from ray.cluster_utils import Cluster

    small = {"object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **small})
    for _ in range(2):
        cluster.add_node(num_cpus=1, **small)
    scratch = tmp_path_factory.mktemp("ray-scratch")
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"MXBENCH_SCRATCH": str(scratch)}})
    cluster.wait_for_nodes()
    yield scratch
    ray.shutdown()
    cluster.shutdown()


def _kill_when_training(run_dir: Path, at_tokens: int, killed: list, done: threading.Event) -> threading.Thread:
    """SIGKILL the process holding ``run_dir``'s lock once its saved training state passes ``at_tokens``
    (watching until ``done``: on a loaded machine a worker can take minutes to reach training)."""
    def watch():
        while not done.is_set():
            try:
                served = json.loads((run_dir / "checkpoints" / "_training" / "progress.json").read_text())
                pid = int((run_dir / ".lock").read_text().split()[-1])
            except (OSError, ValueError, IndexError):
                served, pid = {}, 0
            if served.get("tokens_served", 0) >= at_tokens:
                os.kill(pid, signal.SIGKILL)
                killed.append((run_dir.name, served["tokens_served"]))
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _as_text(rows: list[dict]) -> list[str]:
    """Rows as sorted JSON text: a NaN (a standard error over one document) never equals itself as a float."""
    return sorted(json.dumps(row, sort_keys=True) for row in rows)


def test_ray_sweep_survives_killed_workers_and_a_restarted_driver(ray_scratch, tmp_path, tiny_model_dir, monkeypatch):
    from tests.conftest import make_documents

    corpus = tmp_path / "big.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in make_documents(1500, seed=1)))
    shared, url, tokens = tmp_path / "shared", f"file://{tmp_path}/bucket", 8192
    configs = [_config(tiny_model_dir, corpus, shared, "a", layer=1, tokens=tokens, checkpoint_minutes=0.0),
               _config(tiny_model_dir, corpus, url, "b", layer=2, tokens=tokens, checkpoint_minutes=0.0)]
    monkeypatch.setenv("MXBENCH_SCRATCH", str(ray_scratch))  # to find the workers' copy of run b
    killed: list = []  # one worker per run, each killed once, after its third saved state or so
    done = threading.Event()
    watchers = [_kill_when_training(run_dir, 2048, killed, done)
                for run_dir in (shared / "a", storage.scratch_dir(f"{url}/b") / "b")]
    rows = run_sweep(configs, executor="ray")
    done.set()
    for watcher in watchers:
        watcher.join()
    assert sorted(run for run, _ in killed) == ["a", "b"] and all(served < tokens for _, served in killed)
    assert _cells(rows) == [("a", 1, "mxd", 2), ("a", 1, "tc", 2), ("b", 2, "mxd", 2), ("b", 2, "tc", 2)]
    assert all(r["status"] == "ok" and r["trained_tokens"] == tokens for r in rows)
    assert "resuming 2 cells at" in (shared / "a" / "run.log").read_text()
    assert "resuming 2 cells at" in (tmp_path / "bucket" / "b" / "run.log").read_text()  # uploaded at each save
    stored = RunStore(shared / "a").rows() + RunStore(tmp_path / "bucket" / "b").rows()
    # each cell exactly once, as returned; compared as JSON text because a NaN standard error (one document)
    # is never equal to itself once read back
    assert _as_text(stored) == _as_text(rows)
    assert not list((tmp_path / "bucket" / "b" / "checkpoints").glob("_training*"))

    assert _as_text(run_sweep(configs, executor="ray")) == _as_text(rows)  # a restarted driver finds every cell finished

    with pytest.raises(SweepError, match="layer 9 is out of range"):
        run_sweep([_config(tiny_model_dir, corpus, shared, "c", layer=9)], executor="ray")


def test_bench_run_with_the_ray_executor(ray_scratch, tmp_path, tiny_model_dir, corpus_file, capsys):
    from bench.cli import main

    args = ["run", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--methods", "tc", "--k", "2",
            "--tokens", "512", "--eval-tokens", "128", "--ce-tokens", "64", "--context-length", "16",
            "--batch-size", "64", "--device", "cpu", "--no-figures"]
    assert main([*args, "--results-dir", str(tmp_path), "--gpus-per-task", "0"]) == 2
    assert "--address and --gpus-per-task need --executor ray" in capsys.readouterr().err
    assert main([*args, "--results-dir", str(tmp_path), "--run-name", "cli", "--executor", "ray"]) == 0
    assert f"bench: finished {tmp_path / 'cli'} (1/1)" in capsys.readouterr().err
    (row,) = RunStore(tmp_path / "cli").rows()
    assert row["status"] == "ok" and row["trained_tokens"] == 512
