"""One writer per run directory: an advisory ``flock`` that the OS drops when its holder dies.

A second ``bench run`` on the same directory is refused at once; a run killed with SIGKILL
leaves no stale lock behind, because the lock belongs to the open file, not to the file's existence.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class RunDirectoryBusy(ValueError):
    """Another live process is writing this run directory."""


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._handle = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryBusy(
                f"results directory {self.path.parent} is in use by {holder}; wait for it or pick another --run-name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"bench run pid {os.getpid()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
