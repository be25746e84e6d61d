"""Results where every node of a cluster sees them: a shared directory, or a URL that fsspec opens.

A plain path (NFS, Lustre, any shared filesystem) needs nothing from this module. A URL
(``s3://bucket/mxbench``, ``gs://...``, ``file://...``) is not a directory the harness can lock
and rewrite, so a run against one works in a local scratch copy of its run directory:

- ``RunMirror.pull`` fetches the rows (``cells.jsonl``, ``summary.csv``, ``run.log``) and the latest
  training state, so finished cells are skipped and training resumes where it was last saved;
- ``RunMirror.push`` uploads what changed: each finished cell's layer checkpoint, then the rows that
  point at it, then the training state. The state goes to a fresh ``checkpoints/_training-<id>/``
  and is named in ``checkpoints/_training.json`` only once complete (one small object, replaced
  whole), so a half-finished upload is never restored; older snapshots are then deleted.

One writer per run is assumed, as Ray gives it (a task's retry starts after its attempt died); the
scratch copy is locked on its node, but nothing locks a URL across machines.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

from bench.config import RunConfig
from bench.logs import LOG_FILE
from bench.results import ROWS_FILE, SUMMARY_FILE, RunStore
from bench.runlock import RunLock
from bench.training_state import PROGRESS_FILE

TRAINING_DIR = "checkpoints/_training"  # the harness's training state, relative to the run directory
POINTER_FILE = "checkpoints/_training.json"  # names the complete snapshot of TRAINING_DIR at the URL
SNAPSHOT_PREFIX = "_training-"  # snapshots are checkpoints/_training-<id>/
ROW_FILES = (ROWS_FILE, SUMMARY_FILE, LOG_FILE)


def is_url(results_dir: str) -> bool:
    """``s3://...``, ``gs://...``, ``file://...``: anything for fsspec rather than a local path."""
    return "://" in str(results_dir)


def scratch_root() -> Path:
    """Where URL runs keep their local copies: ``$MXBENCH_SCRATCH``, else the system temp dir."""
    return Path(os.environ.get("MXBENCH_SCRATCH") or Path(tempfile.gettempdir()) / "mxbench-scratch")


class RunMirror:
    """A local copy (``local``) of the run directory at ``remote`` (a URL)."""

    def __init__(self, remote: str, local: Path) -> None:
        from fsspec.core import url_to_fs

        self.remote = remote.rstrip("/")
        self.fs, self.root = url_to_fs(self.remote)
        self.local = Path(local)
        self._uploaded: dict[str, bytes] = {}  # small files, as last uploaded
        self._uploaded_layers: set[str] = set()
        self._uploaded_progress: bytes | None = None

    def pull(self) -> None:
        """Replace the local copy with the remote run: rows, log and the latest training state."""
        shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True)
        for name in ROW_FILES:
            if self.fs.isfile(self._path(name)):
                self.fs.get_file(self._path(name), str(self.local / name))
                self._uploaded[name] = (self.local / name).read_bytes()
        snapshot = self._current_snapshot()
        if snapshot is not None:
            self._download_tree(snapshot, self.local / TRAINING_DIR)
            self._uploaded_progress = (self.local / TRAINING_DIR / PROGRESS_FILE).read_bytes()
        self._uploaded_layers = {row["checkpoint"] for row in RunStore(self.local).rows() if row.get("checkpoint")}

    def push(self, *_: object) -> None:
        """Upload what changed since the last push (callable as a harness hook: arguments ignored)."""
        rows_text = (self.local / ROWS_FILE).read_bytes() if (self.local / ROWS_FILE).is_file() else b""
        for line in rows_text.decode("utf-8").splitlines():  # a row's checkpoint goes up before the row
            layer = _checkpoint_of(line)
            if layer and layer not in self._uploaded_layers and (self.local / layer).is_dir():
                self._upload_tree(self.local / layer, layer)
                self._uploaded_layers.add(layer)
        for name in ROW_FILES:
            data = rows_text if name == ROWS_FILE else _read_or_none(self.local / name)
            if data and self._uploaded.get(name) != data:
                self._write_atomic(name, data)
                self._uploaded[name] = data
        self._push_training_state()

    def _push_training_state(self) -> None:
        progress = _read_or_none(self.local / TRAINING_DIR / PROGRESS_FILE)
        if progress is None:
            if self._current_snapshot() is not None:  # the harness drops its state once every row is written
                self.fs.rm(self._path(POINTER_FILE))
                self._remove_snapshots(keep=None)
            return
        if progress == self._uploaded_progress:
            return
        snapshot = f"checkpoints/{SNAPSHOT_PREFIX}{uuid.uuid4().hex[:12]}"
        self._upload_tree(self.local / TRAINING_DIR, snapshot, skip=PROGRESS_FILE)
        self._write_atomic(f"{snapshot}/{PROGRESS_FILE}", progress)  # the file that vouches for the rest
        self._write_atomic(POINTER_FILE, json.dumps({"snapshot": snapshot}).encode())
        self._uploaded_progress = progress
        self._remove_snapshots(keep=snapshot)

    def _current_snapshot(self) -> str | None:
        pointer = self._path(POINTER_FILE)
        if not self.fs.isfile(pointer):
            return None
        snapshot = json.loads(self.fs.cat_file(pointer))["snapshot"]
        return snapshot if self.fs.isfile(self._path(f"{snapshot}/{PROGRESS_FILE}")) else None

    def _remove_snapshots(self, keep: str | None) -> None:
        folder = self._path("checkpoints")
        if not self.fs.isdir(folder):
            return
        for path in self.fs.ls(folder, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(SNAPSHOT_PREFIX) and f"checkpoints/{name}" != keep:
                self.fs.rm(path, recursive=True)

    def _upload_tree(self, folder: Path, relative: str, skip: str | None = None) -> None:
        for path in sorted(folder.rglob("*")):
            inside = path.relative_to(folder).as_posix()
            if path.is_file() and not path.name.startswith(".") and inside != skip:
                target = self._path(f"{relative}/{inside}")
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(path), target)

    def _download_tree(self, relative: str, folder: Path) -> None:
        prefix = self._path(relative).rstrip("/") + "/"
        for path in self.fs.find(prefix):
            target = folder / path[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(target))

    def _write_atomic(self, relative: str, data: bytes) -> None:
        """Write under a temporary name, then move: an object store's copy appears whole or not at all."""
        target = self._path(relative)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(temporary, data)
        self.fs.mv(temporary, target)

    def _path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"


def scratch_dir(remote_run: str) -> Path:
    """The local results directory that holds the copy of the run at ``remote_run``."""
    return scratch_root() / hashlib.sha256(remote_run.rstrip("/").encode()).hexdigest()[:16]


@contextlib.contextmanager
def mirrored(cfg: RunConfig, run_name: str) -> Iterator[tuple[RunConfig, Callable[..., None]]]:
    """``cfg`` pointed at a fresh local copy of its URL run, and the function that uploads it.

    The copy is pulled first and pushed last (also when the run raises); the run may push in
    between, after each checkpoint and row. The scratch copy is removed afterwards.
    """
    remote = f"{cfg.results_dir.rstrip('/')}/{run_name}"
    scratch = scratch_dir(remote)
    with RunLock(scratch):  # one attempt at a time per node; the run's own lock is one level down
        mirror = RunMirror(remote, scratch / run_name)
        mirror.pull()
        try:
            yield dataclasses.replace(cfg, results_dir=str(scratch), run_name=run_name), mirror.push
        finally:
            try:
                mirror.push()
            finally:
                shutil.rmtree(scratch / run_name, ignore_errors=True)


def _checkpoint_of(line: str) -> str | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row.get("checkpoint") if row.get("status") == "ok" else None


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
