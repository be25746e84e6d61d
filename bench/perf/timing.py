"""Timing and peak memory of a block of work on CPU or GPU, and the machine's dense-matmul ceiling."""
from __future__ import annotations

import ctypes
import gc
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench.devices import synchronize


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def warm_up(fn: Callable[[], Any], device: torch.device, seconds: float) -> int:
    """Call ``fn`` until ``seconds`` of it have run (at least once); returns the number of calls.

    An idle GPU clocks down (an H200 idles at 345 MHz): a few milliseconds of work measure the
    clock ramp, not the chip.
    """
    start, calls = time.perf_counter(), 0
    while calls == 0 or time.perf_counter() - start < seconds:
        fn()
        synchronize(device)
        calls += 1
    return calls


def _proc_status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class PeakMemory:
    """Peak memory while the block runs, above what was in use when it started.

    cuda: ``torch.cuda.max_memory_allocated`` (exact, tensors only).
    cpu: peak resident set size (VmHWM, reset through /proc/self/clear_refs) minus the RSS at the
    start, after freeing what the allocator can return: an estimate that includes allocator slack.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes, self.method = device, None, "unavailable"

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated - allocated at start"
        else:
            _trim_malloc()
            self.start = _proc_status_kib("VmRSS")
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self.method = "cpu peak RSS (VmHWM after /proc/self/clear_refs) - RSS at start"
            except OSError:
                self.start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.start
        elif self.start is not None:
            peak = _proc_status_kib("VmHWM")
            self.bytes = None if peak is None else max(0, peak - self.start) * 1024


def _trim_malloc() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> dict[str, Any]:
    """FLOP/s of an n x n x n ``torch.mm`` (2 n^3 FLOPs), median over ``repeats``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    warm_up(lambda: torch.mm(a, b), device, 0.5 if device.type == "cuda" else 0.0)
    times = time_calls(lambda: torch.mm(a, b), 1, repeats, device)
    flops = 2 * n ** 3
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "repeats": repeats,
            "flops_per_s": flops / statistics.median(times), "best_flops_per_s": flops / min(times)}


def say(message: str, command: str = "perf") -> None:
    """A progress line of ``bench perf`` (or ``bench cost``) on stderr; the table goes to stdout."""
    print(f"[{command}] {message}", file=sys.stderr, flush=True)
